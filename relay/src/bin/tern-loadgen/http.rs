//! A minimal HTTP/1.1 client over TLS for the HTTPS good client and the HTTPS attacks:
//! exact control over what is sent when (a trickled head, a body left unfinished),
//! which a general client would not give.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Largest response head read.
const MAX_HEAD: usize = 16 * 1024;
/// Largest response body read.
const MAX_BODY: usize = 1 << 20;

/// A TCP connection from `bind` (any local address when `None`).
pub async fn tcp(addr: SocketAddr, bind: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = bind {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// TLS settings for HTTPS to a relay: its CA, ALPN `http/1.1`.
pub fn tls(ca_pem: &str) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    Ok(Arc::new(tern_relay::listen::tls::client_config(
        ca_pem,
        &[b"http/1.1"],
    )?))
}

/// TLS over `tcp`.
pub async fn handshake(
    tcp: TcpStream,
    tls: &Arc<rustls::ClientConfig>,
    server_name: &str,
) -> std::io::Result<TlsStream<TcpStream>> {
    let name = rustls_pki_types::ServerName::try_from(server_name.to_owned())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    TlsConnector::from(tls.clone()).connect(name, tcp).await
}

/// The head of a request with a body of `len` bytes.
pub fn request_head(path: &str, len: usize) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: relay\r\nContent-Type: {}\r\nContent-Length: {len}\r\n\r\n",
        tern_protocol::FRAME_CONTENT_TYPE
    )
}

/// A response head.
#[derive(Debug)]
pub struct Head {
    pub status: u16,
    pub content_length: Option<usize>,
    pub chunked: bool,
}

/// Reads a response head; bytes read past it stay in `buf`.
pub async fn read_head<S: AsyncReadExt + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> anyhow::Result<Head> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).context("response head not UTF-8")?;
            let mut lines = head.split("\r\n");
            let status = lines
                .next()
                .and_then(|l| l.split(' ').nth(1))
                .and_then(|s| s.parse().ok())
                .context("no status line")?;
            let mut content_length = None;
            let mut chunked = false;
            for line in lines {
                let Some((name, value)) = line.split_once(':') else {
                    continue;
                };
                let value = value.trim();
                if name.eq_ignore_ascii_case("content-length") {
                    content_length = value.parse().ok();
                } else if name.eq_ignore_ascii_case("transfer-encoding") {
                    chunked = value.eq_ignore_ascii_case("chunked");
                }
            }
            buf.drain(..end + 4);
            return Ok(Head {
                status,
                content_length,
                chunked,
            });
        }
        if buf.len() > MAX_HEAD {
            bail!("response head over {MAX_HEAD} bytes");
        }
        if read_more(stream, buf).await? == 0 {
            bail!("connection closed before a response");
        }
    }
}

async fn read_more<S: AsyncReadExt + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> std::io::Result<usize> {
    let mut chunk = [0u8; 8192];
    let n = stream.read(&mut chunk).await?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

/// Reads the body of a response with a `Content-Length` (or a chunked one, to its end).
pub async fn read_body<S: AsyncReadExt + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    head: &Head,
) -> anyhow::Result<Vec<u8>> {
    if head.chunked {
        let mut body = Vec::new();
        loop {
            let Some(line_end) = buf.windows(2).position(|w| w == b"\r\n") else {
                if read_more(stream, buf).await? == 0 {
                    bail!("connection closed inside a chunked body");
                }
                continue;
            };
            let size = usize::from_str_radix(
                std::str::from_utf8(&buf[..line_end])?
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim(),
                16,
            )
            .context("bad chunk size")?;
            if body.len() + size > MAX_BODY {
                bail!("response body over {MAX_BODY} bytes");
            }
            while buf.len() < line_end + 2 + size + 2 {
                if read_more(stream, buf).await? == 0 {
                    bail!("connection closed inside a chunk");
                }
            }
            body.extend_from_slice(&buf[line_end + 2..line_end + 2 + size]);
            buf.drain(..line_end + 2 + size + 2);
            if size == 0 {
                return Ok(body);
            }
        }
    }
    let len = head.content_length.unwrap_or(0);
    if len > MAX_BODY {
        bail!("response body of {len} bytes");
    }
    while buf.len() < len {
        if read_more(stream, buf).await? == 0 {
            bail!("connection closed inside the body");
        }
    }
    Ok(buf.drain(..len).collect())
}

/// One keep-alive HTTPS connection to a relay.
pub struct Client {
    stream: TlsStream<TcpStream>,
    buf: Vec<u8>,
}

impl Client {
    /// Connects (TCP from `bind`, then TLS).
    pub async fn connect(
        addr: SocketAddr,
        bind: Option<IpAddr>,
        tls: &Arc<rustls::ClientConfig>,
        server_name: &str,
    ) -> anyhow::Result<Client> {
        let tcp = tcp(addr, bind).await.context("TCP connect")?;
        let stream = handshake(tcp, tls, server_name)
            .await
            .context("TLS handshake")?;
        Ok(Client {
            stream,
            buf: Vec::new(),
        })
    }

    /// `POST path` with `body`: the status and the response body.
    pub async fn post(&mut self, path: &str, body: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
        let mut request = request_head(path, body.len()).into_bytes();
        request.extend_from_slice(body);
        self.stream.write_all(&request).await?;
        self.stream.flush().await?;
        let head = read_head(&mut self.stream, &mut self.buf).await?;
        let body = read_body(&mut self.stream, &mut self.buf, &head).await?;
        Ok((head.status, body))
    }
}
