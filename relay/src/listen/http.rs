//! Serving HTTP connections (the HTTPS listener's, and the admin and metrics listeners'
//! plain ones) with deadlines: hyper reads a request head within the header deadline
//! (HTTP/1.1, including the wait for the next request on a keep-alive connection), and
//! a connection with no request open for as long is closed (HTTP/2 too). A shutdown
//! asks every connection to finish gracefully, then drops what is left at its grace
//! deadline.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use axum::body::Body;
use axum::Router;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::Service as _;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::sync::watch;

use super::budget::{Quota, Source};
use super::{deadline_exceeded, Peer};

/// Ends an HTTP listener: [`HttpHandle::graceful_shutdown`] stops accepting, lets
/// requests in progress finish (up to the grace period) and closes the connections;
/// [`HttpHandle::shutdown`] drops them at once. Clones share the signal.
#[derive(Clone, Debug, Default)]
pub struct HttpHandle {
    tx: Arc<watch::Sender<Option<Stop>>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    /// Finish what is in progress within this long (`None`: however long it takes).
    Graceful(Option<Duration>),
    /// Drop every connection.
    Now,
}

impl HttpHandle {
    /// A handle not yet signalled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stop accepting; close connections once their requests are answered, or at the
    /// end of `grace`.
    pub fn graceful_shutdown(&self, grace: Option<Duration>) {
        self.tx.send_replace(Some(Stop::Graceful(grace)));
    }

    /// Stop accepting and drop every connection now.
    pub fn shutdown(&self) {
        self.tx.send_replace(Some(Stop::Now));
    }

    fn subscribe(&self) -> watch::Receiver<Option<Stop>> {
        self.tx.subscribe()
    }
}

/// Deadlines and protocol limits of one HTTP listener.
#[derive(Clone, Debug)]
pub(crate) struct HttpSettings {
    /// A request head must arrive within this long; a connection with no request
    /// open for this long is closed.
    pub header_timeout: Duration,
    /// Concurrent HTTP/2 streams per connection.
    pub h2_max_streams: u32,
    /// The `transport` label of this listener's metrics.
    pub transport: &'static str,
}

/// The two connection builders of a listener (HTTP/1.1 and, chosen by ALPN, HTTP/2):
/// no protocol sniffing, so no read without a deadline before hyper's own.
pub(crate) struct Builders {
    h1: auto::Builder<TokioExecutor>,
    h2: auto::Builder<TokioExecutor>,
    settings: HttpSettings,
}

impl Builders {
    pub(crate) fn new(settings: HttpSettings) -> Builders {
        let mut h1 = auto::Builder::new(TokioExecutor::new()).http1_only();
        h1.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(settings.header_timeout)
            .keep_alive(true)
            .max_buf_size(64 * 1024)
            .max_headers(64);
        let mut h2 = auto::Builder::new(TokioExecutor::new()).http2_only();
        h2.http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(settings.h2_max_streams)
            .max_pending_accept_reset_streams(Some(16))
            .max_local_error_reset_streams(Some(64))
            .max_header_list_size(16 * 1024)
            .initial_stream_window_size(Some(256 * 1024))
            .initial_connection_window_size(Some(1024 * 1024))
            .max_send_buf_size(64 * 1024)
            .keep_alive_interval(Some(Duration::from_secs(20)))
            .keep_alive_timeout(Duration::from_secs(20));
        Builders { h1, h2, settings }
    }
}

/// Requests open on a connection, and when the last one ended.
#[derive(Debug)]
struct Activity {
    open: AtomicUsize,
    /// Milliseconds since `epoch` when the last request ended (or the connection began).
    last_ms: AtomicU64,
    epoch: Instant,
}

impl Activity {
    fn new() -> Arc<Activity> {
        Arc::new(Activity {
            open: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    fn begin(self: &Arc<Self>) -> Active {
        self.open.fetch_add(1, Ordering::AcqRel);
        Active(self.clone())
    }

    /// When the connection went idle, or `None` while a request is open.
    fn idle_since(&self) -> Option<Instant> {
        (self.open.load(Ordering::Acquire) == 0)
            .then(|| self.epoch + Duration::from_millis(self.last_ms.load(Ordering::Acquire)))
    }
}

/// A request open (until its response body is done or dropped).
#[derive(Debug)]
struct Active(Arc<Activity>);

impl Drop for Active {
    fn drop(&mut self) {
        let ms = u64::try_from(self.0.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.0.last_ms.store(ms, Ordering::Release);
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves one connection (TLS already done, or plain) with `router` until it ends,
/// idles past the header deadline, or `stop` says so. Every request carries the
/// [`Peer`] and `ConnectInfo<SocketAddr>` extensions.
pub(crate) async fn serve_connection<I>(
    io: I,
    h2: bool,
    peer: SocketAddr,
    router: Router,
    builders: &Builders,
    mut stop: watch::Receiver<Option<Stop>>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let activity = Activity::new();
    let service = {
        let activity = activity.clone();
        let inner = TowerToHyperService::new(router);
        hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            let active = activity.begin();
            req.extensions_mut().insert(Peer(Source::of(peer.ip())));
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            let call = inner.call(req);
            async move {
                let response = call.await?;
                // The request stays open until its response body is done (a push
                // subscription's lasts).
                Ok::<_, std::convert::Infallible>(response.map(move |body| {
                    Body::new(body.map_frame(move |frame| {
                        let _open = &active;
                        frame
                    }))
                }))
            }
        })
    };
    let settings = &builders.settings;
    let builder = if h2 { &builders.h2 } else { &builders.h1 };
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let idle = settings.header_timeout;
    let mut closing_at: Option<tokio::time::Instant> = None;
    let far = || tokio::time::Instant::now() + Duration::from_secs(86_400);
    let mut watching = true;
    loop {
        // A stop signalled (before this connection started, or just now) applies.
        if closing_at.is_none() {
            if let Some(s) = *stop.borrow_and_update() {
                conn.as_mut().graceful_shutdown();
                closing_at = Some(match s {
                    Stop::Now => tokio::time::Instant::now(),
                    Stop::Graceful(Some(grace)) => tokio::time::Instant::now() + grace,
                    Stop::Graceful(None) => far(),
                });
            }
        }
        let idle_check = match activity.idle_since() {
            Some(since) => since + idle,
            None => tokio::time::Instant::now() + idle,
        };
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    if is_header_timeout(e.as_ref()) {
                        deadline_exceeded(settings.transport, "header");
                    }
                    tracing::debug!(error = %e, %peer, "http connection ended");
                }
                return;
            }
            _ = tokio::time::sleep_until(idle_check), if closing_at.is_none() => {
                if activity.idle_since().is_some_and(|since| since.elapsed() >= idle) {
                    deadline_exceeded(settings.transport, "idle");
                    conn.as_mut().graceful_shutdown();
                    closing_at = Some(tokio::time::Instant::now() + idle);
                }
            }
            // The handle gone: nobody can stop this listener any more; keep serving.
            changed = stop.changed(), if watching && closing_at.is_none() => {
                watching = changed.is_ok();
            }
            _ = tokio::time::sleep_until(closing_at.unwrap_or_else(far)), if closing_at.is_some() => {
                return;
            }
        }
    }
}

fn is_header_timeout(e: &(dyn std::error::Error + Send + Sync + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if h.is_timeout() {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

/// Limits of a plain-HTTP operator listener (admin API, metrics).
#[derive(Clone, Debug)]
pub struct PlainLimits {
    /// Connections open at once; one source may hold half of them.
    pub max_connections: usize,
    /// Request head deadline, and how long a connection may sit without a request.
    pub header_timeout: Duration,
    /// The listener's name: the `transport` label of its metrics and the name of its
    /// connection limit (`<name>_connections`).
    pub name: &'static str,
}

/// Serves `router` over plain HTTP/1.1 on `listener` with a connection cap (half of
/// it per source, see [`Quota`]) and the header deadline, until `handle` stops it.
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: PlainLimits,
    handle: HttpHandle,
) {
    let quota_name: &'static str = match limits.name {
        "admin" => "admin_connections",
        "metrics" => "metrics_connections",
        _ => "http_connections",
    };
    let quota = Quota::new(
        quota_name,
        limits.max_connections.max(1),
        (limits.max_connections / 2).max(1),
    );
    let builders = Arc::new(Builders::new(HttpSettings {
        header_timeout: limits.header_timeout,
        h2_max_streams: 1,
        transport: limits.name,
    }));
    accept_loop(
        listener,
        handle,
        limits.name,
        quota,
        move |tcp, peer, stop| {
            let (router, builders) = (router.clone(), builders.clone());
            Box::pin(async move {
                serve_connection(tcp, false, peer, router, &builders, stop).await;
            })
        },
    )
    .await;
}

/// A connection's work once it is admitted.
pub(crate) type ConnFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Accepts connections on `listener` until `handle` stops it: each takes a unit of
/// `quota` (refused — closed at once — without one) held while `serve` runs. Accept
/// errors (out of descriptors) back off briefly instead of spinning. Returns once the
/// connections are done (or dropped at the end of a graceful shutdown's grace).
pub(crate) async fn accept_loop(
    listener: tokio::net::TcpListener,
    handle: HttpHandle,
    transport: &'static str,
    quota: Quota,
    serve: impl Fn(tokio::net::TcpStream, SocketAddr, watch::Receiver<Option<Stop>>) -> ConnFuture,
) {
    let mut stop = handle.subscribe();
    let mut tasks = tokio::task::JoinSet::new();
    let open = metrics::gauge!("tern_relay_connections", "transport" => transport);
    let mut watching = true;
    loop {
        while tasks.try_join_next().is_some() {}
        if stop.borrow_and_update().is_some() {
            break;
        }
        let accepted = tokio::select! {
            a = listener.accept() => a,
            // No handle left: serve until the process ends.
            changed = stop.changed(), if watching => {
                watching = changed.is_ok();
                continue;
            }
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                metrics::counter!("tern_relay_accept_errors_total", "transport" => transport)
                    .increment(1);
                tracing::warn!(error = %e, transport, "accept failed; backing off");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let unit = match quota.try_take(Source::of(peer.ip()), 1) {
            Ok(unit) => unit,
            Err(refusal) => {
                quota.count_refusal(refusal, transport);
                metrics::counter!("tern_relay_connections_refused_total", "transport" => transport)
                    .increment(1);
                tracing::debug!(%peer, %refusal, transport, "connection limit; closing");
                drop(tcp);
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        metrics::counter!("tern_relay_connections_total", "transport" => transport).increment(1);
        let open = open.clone();
        open.increment(1.0);
        let work = serve(tcp, peer, stop.clone());
        tasks.spawn(async move {
            work.await;
            open.decrement(1.0);
            drop(unit);
        });
    }
    drop(listener);
    let grace = match *stop.borrow() {
        Some(Stop::Graceful(g)) => g,
        _ => Some(Duration::ZERO),
    };
    let all_done = async { while tasks.join_next().await.is_some() {} };
    match grace {
        // Each connection drops itself at the end of the grace; this is a backstop.
        Some(g) => {
            let _ = tokio::time::timeout(g + Duration::from_secs(1), all_done).await;
        }
        None => all_done.await,
    }
}
