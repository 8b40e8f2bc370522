//! A device's side of the wire, from `tern-protocol` types: a QUIC connection (one
//! request, one reply per stream; push subscriptions) and an HTTPS client.

use std::net::SocketAddr;
use std::sync::Arc;

use tern_protocol::{
    CodecConfig, ConfigRequest, DeviceId, EventBatch, FrameDecoder, IngestOutcome, Message,
    SubscribeRequest, ALPN, FRAME_CONTENT_TYPE, HTTP_RPC_PATH,
};

use crate::batches::{auth, ingest};
use crate::wait::DEADLINE;

/// A QUIC client endpoint on loopback trusting `ca_pem`, offering `alpn`.
pub fn quic_endpoint(ca_pem: &str, alpn: &[&[u8]]) -> quinn::Endpoint {
    endpoint(client_config(ca_pem, alpn))
}

/// [`quic_endpoint`] whose connections notice a dead relay within `idle` (keep-alives
/// every sixth of it) rather than quinn's default 30 s.
pub fn quic_endpoint_with_idle_timeout(
    ca_pem: &str,
    alpn: &[&[u8]],
    idle: std::time::Duration,
) -> quinn::Endpoint {
    let mut config = client_config(ca_pem, alpn);
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(Some(idle.try_into().expect("idle timeout")))
        .keep_alive_interval(Some(idle / 6));
    config.transport_config(Arc::new(transport));
    endpoint(config)
}

fn client_config(ca_pem: &str, alpn: &[&[u8]]) -> quinn::ClientConfig {
    let tls = tern_relay::listen::tls::client_config(ca_pem, alpn).expect("client tls");
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic tls");
    quinn::ClientConfig::new(Arc::new(crypto))
}

fn endpoint(config: quinn::ClientConfig) -> quinn::Endpoint {
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
    ep.set_default_client_config(config);
    ep
}

/// An HTTPS client trusting `ca_pem` (HTTP/2 or HTTP/1.1).
pub fn https_client(ca_pem: &str) -> reqwest::Client {
    let tls =
        tern_relay::listen::tls::client_config(ca_pem, &[b"h2", b"http/1.1"]).expect("client tls");
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .build()
        .expect("https client")
}

/// Encodes `msg` as a device frame.
pub fn frame(msg: &Message) -> Vec<u8> {
    msg.encode(&CodecConfig::device()).expect("encode")
}

/// `POST`s a frame to a relay's HTTPS listener at `addr`: the status and the reply
/// body.
pub async fn https_post(
    client: &reqwest::Client,
    addr: SocketAddr,
    body: Vec<u8>,
) -> Result<(u16, Vec<u8>), String> {
    let resp = client
        .post(format!("https://localhost:{}{HTTP_RPC_PATH}", addr.port()))
        .header("content-type", FRAME_CONTENT_TYPE)
        .body(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
    Ok((status, bytes.to_vec()))
}

/// A QUIC connection to `addr` trusting `ca_pem`, offering `alpn` (its endpoint is
/// released; the connection keeps the driver alive).
pub async fn connect(
    ca_pem: &str,
    addr: SocketAddr,
    alpn: &[&[u8]],
) -> Result<quinn::Connection, String> {
    Ok(Device::try_connect(ca_pem, addr, alpn).await?.conn)
}

/// Sends `frame` on a new stream of `conn`; the reply's bytes, or why there were none.
pub async fn try_roundtrip_bytes(
    conn: &quinn::Connection,
    frame: &[u8],
) -> Result<Vec<u8>, String> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    send.write_all(frame).await.map_err(|e| e.to_string())?;
    send.finish().map_err(|e| e.to_string())?;
    recv.read_to_end(1 << 20).await.map_err(|e| e.to_string())
}

/// Sends `frame` on a new stream of `conn`; the decoded reply (panics on a transport
/// or decoding failure).
pub async fn roundtrip(conn: &quinn::Connection, frame: &[u8]) -> Message {
    let reply = try_roundtrip_bytes(conn, frame)
        .await
        .unwrap_or_else(|e| panic!("roundtrip: {e}"));
    Message::from_bytes(&reply, &CodecConfig::device()).expect("decode reply")
}

/// Like [`roundtrip`], but a failed write is not an error: the relay may answer a frame
/// it refuses (too large, malformed) and stop reading before all of it was written.
pub async fn roundtrip_lenient(conn: &quinn::Connection, frame: &[u8]) -> Message {
    let (mut send, mut recv) = conn.open_bi().await.expect("open stream");
    let _ = send.write_all(frame).await;
    let _ = send.finish();
    let reply = recv.read_to_end(1 << 20).await.expect("a reply");
    Message::from_bytes(&reply, &CodecConfig::device()).expect("decode reply")
}

/// A device-side QUIC connection to a relay.
#[derive(Debug)]
pub struct Device {
    /// The connection.
    pub conn: quinn::Connection,
    /// Its endpoint (kept open with the connection).
    pub endpoint: quinn::Endpoint,
}

impl Device {
    /// Connects to `addr` trusting `ca_pem`, with the Tern ALPN; panics on failure.
    pub async fn connect(ca_pem: &str, addr: SocketAddr) -> Device {
        Device::try_connect(ca_pem, addr, &[ALPN])
            .await
            .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"))
    }

    /// Connects to `addr` trusting `ca_pem`, offering `alpn`.
    pub async fn try_connect(
        ca_pem: &str,
        addr: SocketAddr,
        alpn: &[&[u8]],
    ) -> Result<Device, String> {
        let endpoint = quic_endpoint(ca_pem, alpn);
        let conn = endpoint
            .connect(addr, "localhost")
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        Ok(Device { conn, endpoint })
    }

    /// Sends `frame` on a new stream; the reply's bytes, or why there were none.
    pub async fn try_roundtrip_bytes(&self, frame: &[u8]) -> Result<Vec<u8>, String> {
        try_roundtrip_bytes(&self.conn, frame).await
    }

    /// Sends `frame` on a new stream; the decoded reply, or why there was none.
    pub async fn try_roundtrip_frame(&self, frame: &[u8]) -> Result<Message, String> {
        let reply = self.try_roundtrip_bytes(frame).await?;
        Message::from_bytes(&reply, &CodecConfig::device()).map_err(|e| e.to_string())
    }

    /// Sends `frame`; the decoded reply (panics on a transport failure).
    pub async fn roundtrip_frame(&self, frame: &[u8]) -> Message {
        self.try_roundtrip_frame(frame)
            .await
            .unwrap_or_else(|e| panic!("roundtrip: {e}"))
    }

    /// One request, one reply.
    pub async fn roundtrip(&self, msg: &Message) -> Message {
        self.roundtrip_frame(&frame(msg)).await
    }

    /// Sends `batch` with `app`'s credentials; the outcome.
    pub async fn send(&self, app: &str, key: &str, batch: EventBatch) -> IngestOutcome {
        match self.roundtrip(&ingest(app, key, batch)).await {
            Message::IngestReply(r) => r.outcome,
            other => panic!("expected an IngestReply, got {other:?}"),
        }
    }

    /// Sends `batch`; `Err` (with the reason) when the stream or the connection failed
    /// instead of a reply.
    pub async fn try_send(
        &self,
        app: &str,
        key: &str,
        batch: EventBatch,
    ) -> Result<IngestOutcome, String> {
        match self
            .try_roundtrip_frame(&frame(&ingest(app, key, batch)))
            .await?
        {
            Message::IngestReply(r) => Ok(r.outcome),
            other => Err(format!("expected an IngestReply, got {other:?}")),
        }
    }

    /// The connection's close code, once closed by the relay.
    pub fn close_code(&self) -> Option<u64> {
        match self.conn.close_reason()? {
            quinn::ConnectionError::ApplicationClosed(c) => Some(c.error_code.into_inner()),
            _ => None,
        }
    }

    /// A config request.
    pub async fn config(&self, app: &str, key: &str) -> Message {
        self.roundtrip(&Message::ConfigRequest(ConfigRequest {
            auth: auth(app, key),
            device_id: DeviceId::random(),
            user_id: None,
            if_none_match: None,
        }))
        .await
    }

    /// Opens a push stream: the stream and its first frame.
    pub async fn subscribe(&self, app: &str, key: &str) -> (PushReader, Message) {
        let request = frame(&Message::SubscribeRequest(SubscribeRequest {
            auth: auth(app, key),
            device_id: DeviceId::random(),
            user_id: None,
            config_etag: None,
        }));
        let (mut send, recv) = self.conn.open_bi().await.expect("open stream");
        send.write_all(&request).await.expect("write");
        send.finish().expect("finish");
        let mut reader = PushReader::new(recv);
        let first = reader.next().await.expect("a first frame");
        (reader, first)
    }
}

/// The reading end of a push stream.
#[derive(Debug)]
pub struct PushReader {
    recv: quinn::RecvStream,
    decoder: FrameDecoder,
}

impl PushReader {
    /// Reads frames from `recv`.
    pub fn new(recv: quinn::RecvStream) -> PushReader {
        PushReader {
            recv,
            decoder: FrameDecoder::new(CodecConfig::device().max_payload),
        }
    }

    /// The next frame, or `None` once the relay finished the stream (within
    /// [`DEADLINE`]; panics after).
    pub async fn next(&mut self) -> Option<Message> {
        let cfg = CodecConfig::device();
        tokio::time::timeout(DEADLINE, async {
            loop {
                if let Some(frame) = self.decoder.next_frame().expect("frame") {
                    return Some(Message::decode(&frame, &cfg).expect("decode"));
                }
                match self.recv.read_chunk(64 * 1024, true).await {
                    Ok(Some(chunk)) => self.decoder.push(&chunk.bytes),
                    Ok(None) | Err(_) => return None,
                }
            }
        })
        .await
        .expect("a push frame or the end of the stream within the deadline")
    }
}
