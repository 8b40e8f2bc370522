//! The operator dashboard: one web page served by the admin listener, its assets
//! embedded in the binary (no CDN, no external fonts, nothing fetched at runtime).
//!
//! | path | what |
//! |---|---|
//! | `GET /` | redirects to `/dashboard/` |
//! | `GET /dashboard/` | the page (`dashboard/index.html`) |
//! | `GET /dashboard/app.js`, `/dashboard/style.css`, `/dashboard/favicon.svg` | its assets |
//!
//! The page and its assets hold no secrets and are served without the admin token; the
//! page asks the operator for the token, keeps it in the tab's `sessionStorage`, and
//! sends it as `Authorization: Bearer` on every call to `/admin/v1/*` — which stay
//! authenticated exactly as without the dashboard. Every response carries a strict
//! Content-Security-Policy (same origin only: no inline script or style, no framing),
//! `X-Content-Type-Options: nosniff` and `Referrer-Policy: no-referrer`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

/// The Content-Security-Policy of every dashboard response: scripts, styles, images
/// and API calls from this origin only; nothing inline, no plugins, no framing.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
img-src 'self' data:; connect-src 'self'; form-action 'none'; frame-ancestors 'none'; \
base-uri 'none'";

const INDEX_HTML: &str = include_str!("../../dashboard/index.html");
const APP_JS: &str = include_str!("../../dashboard/app.js");
const STYLE_CSS: &str = include_str!("../../dashboard/style.css");
const FAVICON_SVG: &str = include_str!("../../dashboard/favicon.svg");

/// One embedded asset with its content type.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // The assets change with the binary: revalidate rather than run a stale page
    // against a newer API.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn style_css() -> Response {
    asset("text/css; charset=utf-8", STYLE_CSS)
}

async fn favicon() -> Response {
    asset("image/svg+xml", FAVICON_SVG)
}

/// The dashboard's routes (unauthenticated: static assets only). The admin router
/// merges them beside its authenticated API.
pub fn router() -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/dashboard/") }))
        .route("/dashboard", get(|| async { Redirect::to("/dashboard/") }))
        .route("/dashboard/", get(index))
        .route("/dashboard/index.html", get(index))
        .route("/dashboard/app.js", get(app_js))
        .route("/dashboard/style.css", get(style_css))
        .route("/dashboard/favicon.svg", get(favicon))
        .route("/favicon.ico", get(favicon))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn serve() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router()).await });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn assets_are_served_with_their_types_and_a_strict_policy() {
        let base = serve().await;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        for (path, ty, needle) in [
            ("/dashboard/", "text/html", "<title>"),
            ("/dashboard/app.js", "text/javascript", "sessionStorage"),
            ("/dashboard/style.css", "text/css", "--"),
            ("/dashboard/favicon.svg", "image/svg+xml", "<svg"),
        ] {
            let r = http.get(format!("{base}{path}")).send().await.unwrap();
            assert_eq!(r.status(), 200, "{path}");
            let h = r.headers().clone();
            assert!(
                h[header::CONTENT_TYPE].to_str().unwrap().starts_with(ty),
                "{path}"
            );
            assert_eq!(h[header::CONTENT_SECURITY_POLICY], CSP, "{path}");
            assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{path}");
            assert!(r.text().await.unwrap().contains(needle), "{path}");
        }
        let r = http.get(format!("{base}/")).send().await.unwrap();
        assert!(r.status().is_redirection());
        assert_eq!(r.headers()[header::LOCATION], "/dashboard/");
    }

    /// ` onclick=`, ` onload=`, ...: attributes the CSP would refuse to run.
    fn has_inline_handler(html: &str) -> bool {
        html.match_indices(" on").any(|(i, _)| {
            let rest = &html[i + 3..];
            let name_len = rest.bytes().take_while(u8::is_ascii_lowercase).count();
            name_len > 0 && rest[name_len..].starts_with('=')
        })
    }

    #[test]
    fn inline_handlers_are_detected() {
        assert!(has_inline_handler("<a onclick=\"x()\">"));
        assert!(!has_inline_handler("<p>turn it on here</p><b class=on>"));
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere_and_nothing_inline() {
        for (name, text) in [("index.html", INDEX_HTML), ("style.css", STYLE_CSS)] {
            for banned in ["http://", "https://", "//fonts.", "@import"] {
                // The SVG namespace is an identifier, not a fetch.
                let hits = text
                    .match_indices(banned)
                    .filter(|(i, _)| !text[*i..].starts_with("http://www.w3.org/"))
                    .count();
                assert_eq!(hits, 0, "{name} references {banned}");
            }
        }
        // CSP forbids inline script and style: the page must not need them.
        assert!(!INDEX_HTML.contains("<script>"), "inline script");
        assert!(!INDEX_HTML.contains("<style"), "inline style");
        assert!(!INDEX_HTML.contains(" style=\""), "inline style attribute");
        assert!(!has_inline_handler(INDEX_HTML), "inline event handler");
        assert!(!APP_JS.contains("eval("), "eval is refused by the CSP");
        assert!(
            !APP_JS.contains("innerHTML"),
            "build DOM nodes, never HTML strings"
        );
    }
}
