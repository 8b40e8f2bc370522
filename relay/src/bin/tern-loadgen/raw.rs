//! The reference server for `--raw`: the relay's QUIC listener with the request
//! handling taken out. Same TLS and ALPN, same transport config (it binds with
//! `tern_relay::listen::bind_quic` and the relay's default `ListenConfig`), the same
//! connection cap and the same task-per-connection, task-per-stream structure; each
//! request frame is read to the end (`read_to_end` with the relay's limit) and
//! answered with one fixed, pre-encoded `IngestReply{accepted, forwarded}`.
//!
//! Driven by exactly the client code and bytes used against the relay, it measures
//! what QUIC alone costs on this machine in the same run — the ceiling a relay could
//! reach if its request handling were free.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tern_protocol::{BatchId, CodecConfig, Durability, IngestOutcome, IngestReply, Message};
use tern_relay::listen::tls::TlsMaterial;
use tern_relay::listen::{bind_quic, max_request_frame, ListenConfig};
use tokio::sync::Semaphore;

/// A running reference server, on its own runtime (two worker threads, like the
/// relay's default runtime on this machine).
#[derive(Debug)]
pub struct RawServer {
    pub addr: SocketAddr,
    pub ca_pem: String,
    endpoint: quinn::Endpoint,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RawServer {
    pub fn start() -> anyhow::Result<RawServer> {
        let (tls, ca_pem) = TlsMaterial::self_signed(&["localhost", "127.0.0.1"])?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("raw-server")
            .enable_all()
            .build()
            .context("starting the raw server's runtime")?;
        let addr: SocketAddr = "127.0.0.1:0".parse()?;
        let listen = ListenConfig::new(addr, addr);
        let endpoint = {
            let _in_runtime = runtime.enter();
            bind_quic(&listen, &tls)?
        };
        let addr = endpoint.local_addr()?;
        let reply: Arc<[u8]> = Message::IngestReply(IngestReply {
            shard_map_version: 0,
            batch_id: BatchId::from_bytes([0; 16]),
            outcome: IngestOutcome::Accepted {
                durability: Durability::Forwarded,
            },
        })
        .encode(&CodecConfig::device())?
        .into();
        let ep = endpoint.clone();
        let max_connections = listen.max_connections;
        let thread = std::thread::Builder::new()
            .name("raw-server".into())
            .spawn(move || runtime.block_on(serve(ep, reply, max_connections)))?;
        Ok(RawServer {
            addr,
            ca_pem,
            endpoint,
            thread: Some(thread),
        })
    }

    pub fn stop(mut self) {
        self.endpoint.close(0u32.into(), b"done");
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `tern_relay::listen::serve_quic`, minus the ingest handler.
async fn serve(endpoint: quinn::Endpoint, reply: Arc<[u8]>, max_connections: usize) {
    let slots = Arc::new(Semaphore::new(max_connections.max(1)));
    while let Some(incoming) = endpoint.accept().await {
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            incoming.refuse();
            continue;
        };
        let reply = reply.clone();
        tokio::spawn(async move {
            if let Ok(conn) = incoming.await {
                while let Ok((send, recv)) = conn.accept_bi().await {
                    tokio::spawn(serve_stream(send, recv, reply.clone()));
                }
            }
            drop(slot);
        });
    }
}

async fn serve_stream(mut send: quinn::SendStream, mut recv: quinn::RecvStream, reply: Arc<[u8]>) {
    if recv.read_to_end(max_request_frame()).await.is_err() {
        return;
    }
    if send.write_all(&reply).await.is_ok() {
        let _ = send.finish();
    }
}
