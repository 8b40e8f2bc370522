//! The HTTPS fallback (docs/protocol.md §2.2): HTTP/1.1 over rustls, on hyper's client
//! connection API, with the idle connection to each relay kept for the next request.
//!
//! A device talks HTTPS only when QUIC is blocked, to a handful of relays, one small
//! frame per request plus at most one long-lived push stream: one kept-alive connection
//! per relay is the whole pool (like the QUIC side, which caches one connection per
//! relay). A request takes the relay's idle connection if there is one and it is still
//! open and not older than the idle timeout, otherwise it connects (DNS, TCP, TLS and
//! the HTTP/1.1 handshake, all within the connect timeout); the connection goes back to
//! the pool once the reply has been read whole. A request that fails on a reused
//! connection before any reply (the relay closed it while idle) is sent once more on a
//! new connection. Why not a general HTTP client: size — this replaces reqwest, which
//! with `url`, IDNA/ICU and tower cost the mobile library ≈ 0.2 MB (BENCHMARKS.md,
//! "Bindings library size").

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tern_protocol::FRAME_CONTENT_TYPE;

/// Why an HTTPS request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HttpsError {
    /// The relay's `https_url` is not usable.
    Address(String),
    /// No connection, a broken one, a bad status or an oversized reply.
    Transport(String),
    /// The relay answered but cannot take the request now: `503`, `429` or `408`
    /// (its limits or its read deadline, §2.3): up and pushing back.
    Busy(String),
}

/// Where a relay's HTTPS endpoint is, from its `https_url`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoint {
    /// `host:port` to resolve and connect to; also the pool key.
    authority: String,
    /// The TLS server name (a DNS name or an IP address).
    server_name: ServerName<'static>,
    /// The `Host` header.
    host_header: String,
    /// Path prefix before the protocol's paths (no trailing `/`).
    base_path: String,
}

impl Endpoint {
    fn parse(url: &str) -> Result<Endpoint, HttpsError> {
        let bad = |why: &str| HttpsError::Address(format!("https_url {url:?}: {why}"));
        let uri: Uri = url.parse().map_err(|e| bad(&format!("{e}")))?;
        if uri.scheme_str() != Some("https") {
            return Err(bad("the scheme must be https"));
        }
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        let host = authority.host();
        let name = host.trim_start_matches('[').trim_end_matches(']');
        let server_name = ServerName::try_from(name.to_owned()).map_err(|e| bad(&e.to_string()))?;
        let port = authority.port_u16().unwrap_or(443);
        Ok(Endpoint {
            authority: format!("{host}:{port}"),
            server_name,
            host_header: authority.as_str().to_owned(),
            base_path: uri.path().trim_end_matches('/').to_owned(),
        })
    }
}

/// A connection waiting for its next request.
struct Idle {
    sender: SendRequest<Full<Bytes>>,
    since: Instant,
}

/// HTTPS requests to relays. Must be used inside a tokio runtime (each connection is
/// driven by a task of its own).
pub(crate) struct HttpsClient {
    tls: tokio_rustls::TlsConnector,
    connect_timeout: Duration,
    idle_timeout: Duration,
    idle: Mutex<HashMap<String, Idle>>,
    /// Connections bind to this local address (`None`: the OS picks).
    local_address: Option<std::net::IpAddr>,
}

impl std::fmt::Debug for HttpsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpsClient")
            .field("idle", &lock(&self.idle).len())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A response whose connection goes back to the pool once its body is read whole.
pub(crate) struct Response {
    body: Incoming,
    conn: Option<(String, SendRequest<Full<Bytes>>)>,
}

impl HttpsClient {
    /// A client with `tls` (its ALPN should offer `http/1.1`).
    pub(crate) fn new(
        tls: rustls::ClientConfig,
        connect_timeout: Duration,
        idle_timeout: Duration,
    ) -> Self {
        HttpsClient {
            tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
            connect_timeout,
            idle_timeout,
            idle: Mutex::new(HashMap::new()),
            local_address: None,
        }
    }

    /// Binds connections to `address` (when given).
    pub(crate) fn with_local_address(mut self, address: Option<std::net::IpAddr>) -> Self {
        self.local_address = address;
        self
    }

    /// A TCP connection to `addr`, from the local address when one is set.
    async fn tcp_connect(
        &self,
        addr: std::net::SocketAddr,
    ) -> std::io::Result<tokio::net::TcpStream> {
        let Some(local) = self.local_address else {
            return tokio::net::TcpStream::connect(addr).await;
        };
        let socket = if local.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.bind(std::net::SocketAddr::new(local, 0))?;
        socket.connect(addr).await
    }

    /// `POST`s `body` (a frame) to `path` under `url`; fails unless the status is 200.
    pub(crate) async fn post(
        &self,
        url: &str,
        path: &str,
        body: &[u8],
    ) -> Result<Response, HttpsError> {
        let ep = Endpoint::parse(url)?;
        let body = Bytes::copy_from_slice(body);
        let request = || {
            Request::post(format!("{}{path}", ep.base_path))
                .header(HOST, &ep.host_header)
                .header(CONTENT_TYPE, FRAME_CONTENT_TYPE)
                .body(Full::new(body.clone()))
                .map_err(|e| HttpsError::Address(e.to_string()))
        };
        let response = match self.take_idle(&ep.authority) {
            Some(mut sender) => match sender.ready().await {
                // Sent nowhere if the relay closed the idle connection: a new one.
                Ok(()) => match sender.send_request(request()?).await {
                    Ok(response) => Some((response, sender)),
                    Err(e) if e.is_canceled() || e.is_closed() || e.is_incomplete_message() => None,
                    Err(e) => return Err(HttpsError::Transport(format!("{e}"))),
                },
                Err(_) => None,
            },
            None => None,
        };
        let (response, sender) = match response {
            Some(r) => r,
            None => {
                let mut sender = self.connect(&ep).await?;
                let response = sender
                    .send_request(request()?)
                    .await
                    .map_err(|e| HttpsError::Transport(format!("{e}")))?;
                (response, sender)
            }
        };
        let status = response.status();
        if status != StatusCode::OK {
            // Anything but 200 is a transport failure (§2.2): the request is resent;
            // a relay over its limits is busy rather than broken.
            let detail = format!("HTTP {status}");
            return Err(match status {
                StatusCode::SERVICE_UNAVAILABLE
                | StatusCode::TOO_MANY_REQUESTS
                | StatusCode::REQUEST_TIMEOUT => HttpsError::Busy(detail),
                _ => HttpsError::Transport(detail),
            });
        }
        Ok(Response {
            body: response.into_body(),
            conn: Some((ep.authority, sender)),
        })
    }

    fn take_idle(&self, authority: &str) -> Option<SendRequest<Full<Bytes>>> {
        let idle = lock(&self.idle).remove(authority)?;
        (!idle.sender.is_closed() && idle.since.elapsed() < self.idle_timeout)
            .then_some(idle.sender)
    }

    fn put_idle(&self, authority: String, sender: SendRequest<Full<Bytes>>) {
        if !sender.is_closed() {
            lock(&self.idle).insert(
                authority,
                Idle {
                    sender,
                    since: Instant::now(),
                },
            );
        }
    }

    /// A new connection to `ep`: every resolved address in turn, within the connect
    /// timeout as a whole.
    async fn connect(&self, ep: &Endpoint) -> Result<SendRequest<Full<Bytes>>, HttpsError> {
        let connect = async {
            let addrs = tokio::net::lookup_host(&ep.authority)
                .await
                .map_err(|e| HttpsError::Address(format!("{}: {e}", ep.authority)))?;
            let mut last = format!("{}: no address", ep.authority);
            for addr in addrs {
                let tcp = match self.tcp_connect(addr).await {
                    Ok(tcp) => tcp,
                    Err(e) => {
                        last = format!("connect {addr}: {e}");
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let tls = self
                    .tls
                    .connect(ep.server_name.clone(), tcp)
                    .await
                    .map_err(|e| HttpsError::Transport(format!("TLS with {addr}: {e}")))?;
                let (sender, conn) = http1::handshake(TokioIo::new(tls))
                    .await
                    .map_err(|e| HttpsError::Transport(format!("HTTP with {addr}: {e}")))?;
                // Drives the connection until both sides are done with it.
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                return Ok(sender);
            }
            Err(HttpsError::Transport(last))
        };
        match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(r) => r,
            Err(_) => Err(HttpsError::Transport(format!(
                "connecting to {} timed out",
                ep.authority
            ))),
        }
    }
}

impl Response {
    /// Reads the whole body (at most `limit` bytes) and returns the connection to
    /// `client`'s pool.
    pub(crate) async fn bytes(
        mut self,
        client: &HttpsClient,
        limit: usize,
    ) -> Result<Vec<u8>, HttpsError> {
        let body = Limited::new(&mut self.body, limit)
            .collect()
            .await
            .map_err(|e| {
                HttpsError::Transport(if e.is::<http_body_util::LengthLimitError>() {
                    "reply over the size limit".to_owned()
                } else {
                    format!("reading the reply: {e}")
                })
            })?
            .to_bytes();
        if let Some((authority, sender)) = self.conn.take() {
            client.put_idle(authority, sender);
        }
        Ok(body.to_vec())
    }

    /// The next chunk of a streamed body; `Ok(None)` at its end. The connection is
    /// not reused after a stream.
    pub(crate) async fn chunk(&mut self) -> Result<Option<Bytes>, HttpsError> {
        self.conn = None;
        loop {
            match self.body.frame().await {
                None => return Ok(None),
                Some(Err(e)) => return Err(HttpsError::Transport(format!("{e}"))),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        if !data.is_empty() {
                            return Ok(Some(data));
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};

    /// A loopback HTTPS server answering every `POST` with its body; counts the TCP
    /// connections it accepts and drops each `life` after accepting it (silently: no
    /// `Connection: close`).
    async fn echo_server(life: Duration) -> (String, Arc<AtomicUsize>, rustls::ClientConfig) {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let key = PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .unwrap();
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                count.fetch_add(1, Ordering::SeqCst);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                        let body = req.into_body().collect().await?.to_bytes();
                        Ok::<_, hyper::Error>(hyper::Response::new(Full::new(body)))
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service);
                    // Drops the connection `life` after it was accepted.
                    let _ = tokio::time::timeout(life, conn).await;
                });
            }
        });
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(cert.cert.pem().as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = vec![b"http/1.1".to_vec()];
        (format!("https://localhost:{port}/base/"), accepted, client)
    }

    #[tokio::test]
    async fn connections_are_reused_and_a_silently_closed_one_is_replaced() {
        let (url, accepted, tls) = echo_server(Duration::from_millis(1500)).await;
        let client = HttpsClient::new(tls, Duration::from_secs(5), Duration::from_secs(60));
        for i in 0..3u8 {
            let reply = client.post(&url, "/v1/rpc", &[i; 5]).await.unwrap();
            assert_eq!(reply.bytes(&client, 1024).await.unwrap(), vec![i; 5]);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "one connection, reused");

        // The server drops the idle connection; the next request still goes through.
        tokio::time::sleep(Duration::from_millis(2000)).await;
        let reply = client.post(&url, "/v1/rpc", b"again").await.unwrap();
        assert_eq!(reply.bytes(&client, 1024).await.unwrap(), b"again");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);

        // Over the limit: refused, and that connection is not pooled.
        let reply = client.post(&url, "/v1/rpc", &[0; 2048]).await.unwrap();
        let err = reply.bytes(&client, 1024).await.unwrap_err();
        assert_eq!(
            err,
            HttpsError::Transport("reply over the size limit".into())
        );
        assert!(lock(&client.idle).is_empty());
    }

    #[tokio::test]
    async fn unreachable_and_untrusted_relays_are_transport_errors() {
        let (url, _, _) = echo_server(Duration::from_secs(5)).await;
        // Our client trusts no one: the TLS handshake fails.
        let (_, _, other_ca) = echo_server(Duration::from_secs(5)).await;
        let client = HttpsClient::new(other_ca, Duration::from_secs(5), Duration::from_secs(60));
        let Err(HttpsError::Transport(detail)) = client.post(&url, "/v1/rpc", b"x").await else {
            panic!("a certificate from another CA must be refused");
        };
        assert!(detail.starts_with("TLS with"), "{detail}");

        // Nothing listening.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let url = format!("https://127.0.0.1:{port}");
        let Err(HttpsError::Transport(detail)) = client.post(&url, "/v1/rpc", b"x").await else {
            panic!("nothing listens there");
        };
        assert!(detail.starts_with("connect 127.0.0.1"), "{detail}");
    }

    #[test]
    fn endpoints_parse_from_https_urls() {
        let ep = Endpoint::parse("https://relay-1.example.com:8443").unwrap();
        assert_eq!(ep.authority, "relay-1.example.com:8443");
        assert_eq!(ep.host_header, "relay-1.example.com:8443");
        assert_eq!(ep.base_path, "");
        assert!(matches!(ep.server_name, ServerName::DnsName(_)));

        let ep = Endpoint::parse("https://relay.example.com/tern/").unwrap();
        assert_eq!(ep.authority, "relay.example.com:443");
        assert_eq!(ep.host_header, "relay.example.com");
        assert_eq!(ep.base_path, "/tern");

        let ep = Endpoint::parse("https://127.0.0.1:9443/").unwrap();
        assert_eq!(ep.authority, "127.0.0.1:9443");
        assert!(matches!(ep.server_name, ServerName::IpAddress(_)));

        let ep = Endpoint::parse("https://[::1]:9443").unwrap();
        assert_eq!(ep.authority, "[::1]:9443");
        assert!(matches!(ep.server_name, ServerName::IpAddress(_)));

        for bad in ["http://relay:80", "relay:443", "https://", "not a url", ""] {
            assert!(
                matches!(Endpoint::parse(bad), Err(HttpsError::Address(_))),
                "{bad:?}"
            );
        }
    }
}
