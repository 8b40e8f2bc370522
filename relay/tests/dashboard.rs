//! The dashboard through the relay binary: the page and its assets served by the admin
//! listener without a token, with their content types and CSP; the API behind it still
//! refuses requests without the token. (The browser test is
//! `relay/scripts/test-dashboard.sh`.)

use tern_testkit::{demo_apps, Backend, RelayProc};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_is_served_and_the_api_still_needs_the_token() {
    let backend = Backend::start(&demo_apps()).await;
    let dir = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(&backend.url, dir.path(), &[], &[]);
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let base = &relay.admin;

    let r = http.get(format!("{base}/")).send().await.unwrap();
    assert!(r.status().is_redirection(), "{}", r.status());
    assert_eq!(r.headers()["location"], "/dashboard/");

    for (path, ty) in [
        ("/dashboard/", "text/html; charset=utf-8"),
        ("/dashboard/app.js", "text/javascript; charset=utf-8"),
        ("/dashboard/style.css", "text/css; charset=utf-8"),
        ("/dashboard/favicon.svg", "image/svg+xml"),
    ] {
        let r = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.headers()["content-type"], ty, "{path}");
        assert_eq!(
            r.headers()["content-security-policy"],
            tern_relay::ops::dashboard::CSP,
            "{path}"
        );
        assert_eq!(r.headers()["x-frame-options"], "DENY", "{path}");
        assert!(!r.bytes().await.unwrap().is_empty(), "{path}");
    }
    let page = http
        .get(format!("{base}/dashboard/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("/dashboard/app.js") && page.contains("token-input"));

    // The API: no token, a wrong token, a token in the wrong scheme — all 401, for
    // reads and changes alike; nothing changed.
    let token = std::fs::read_to_string(relay.ready["admin_token_file"].as_str().unwrap())
        .unwrap()
        .trim()
        .to_owned();
    for (method, path) in [
        (reqwest::Method::GET, "/admin/v1/status"),
        (reqwest::Method::GET, "/admin/v1/history"),
        (reqwest::Method::GET, "/admin/v1/audit"),
        (reqwest::Method::PUT, "/admin/v1/services/forwarding"),
    ] {
        for auth in [None, Some("Bearer wrong".to_owned()), Some(token.clone())] {
            let mut req = http
                .request(method.clone(), format!("{base}{path}"))
                .header("content-type", "application/json")
                .body(r#"{"degraded": true}"#);
            if let Some(a) = &auth {
                req = req.header("authorization", a);
            }
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 401, "{method} {path} with {auth:?}");
            let body: serde_json::Value = r.json().await.unwrap();
            assert_eq!(body["error"], "unauthorized");
        }
    }
    let r = http
        .get(format!("{base}/admin/v1/status"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let status: serde_json::Value = r.json().await.unwrap();
    assert_eq!(status["settings"]["switches"]["forwarding_degraded"], false);
    drop(relay);
    backend.stop().await;
}
