//! The QUIC clients: one endpoint (UDP socket) and one connection per simulated
//! device, each request on its own bidirectional stream as the protocol says (§2.1).
//! The same code drives the relay and the raw reference server.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tern_protocol::{CodecConfig, Durability, IngestOutcome, Message, ALPN};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::batches::Device;
use crate::pace::Pacer;
use crate::stats::{Outcome, Record, Report, RunInfo, Stats};

/// Largest reply read (replies are a few dozen bytes).
const MAX_REPLY: usize = 64 * 1024;

/// Where to connect and whom to trust.
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    pub server_name: String,
    pub ca_pem: String,
}

impl Target {
    pub fn resolve(addr: &str, server_name: &str, ca_pem: String) -> anyhow::Result<Target> {
        let addr = addr
            .to_socket_addrs()
            .with_context(|| format!("resolving {addr}"))?
            .next()
            .with_context(|| format!("{addr} resolves to nothing"))?;
        Ok(Target {
            addr,
            server_name: server_name.to_owned(),
            ca_pem,
        })
    }
}

/// The load to offer.
#[derive(Clone, Debug)]
pub struct Load {
    pub app: String,
    pub key: String,
    pub connections: usize,
    pub concurrency: usize,
    pub events_per_batch: usize,
    /// Events/s offered, open loop; 0 = closed loop, as fast as replies come.
    pub rate: u64,
    pub duration: Duration,
    pub warmup: Duration,
    pub drain_timeout: Duration,
}

pub async fn connect(target: &Target) -> anyhow::Result<(quinn::Endpoint, quinn::Connection)> {
    connect_from(target, None).await
}

/// [`connect`] from the local address `from` (any when `None`).
pub async fn connect_from(
    target: &Target,
    from: Option<std::net::IpAddr>,
) -> anyhow::Result<(quinn::Endpoint, quinn::Connection)> {
    let tls = tern_relay::listen::tls::client_config(&target.ca_pem, &[ALPN])?;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let bind: SocketAddr = match from {
        Some(ip) => SocketAddr::new(ip, 0),
        None if target.addr.is_ipv6() => "[::]:0".parse()?,
        None => "0.0.0.0:0".parse()?,
    };
    let mut endpoint = quinn::Endpoint::client(bind)?;
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let conn = endpoint
        .connect(target.addr, &target.server_name)?
        .await
        .with_context(|| format!("QUIC handshake with {}", target.addr))?;
    Ok((endpoint, conn))
}

/// Sends one request frame on a new stream and classifies the reply.
pub async fn request(conn: &quinn::Connection, frame: &[u8]) -> Outcome {
    let Ok((mut send, mut recv)) = conn.open_bi().await else {
        return Outcome::Transport;
    };
    if send.write_all(frame).await.is_err() || send.finish().is_err() {
        return Outcome::Transport;
    }
    match recv.read_to_end(MAX_REPLY).await {
        Ok(reply) => classify(&reply),
        Err(_) => Outcome::Transport,
    }
}

/// What a reply frame says, as the protocol tells a device to read it (§5.3).
pub fn classify(reply: &[u8]) -> Outcome {
    match Message::from_bytes(reply, &CodecConfig::device()) {
        Ok(Message::IngestReply(r)) => match r.outcome {
            IngestOutcome::Accepted {
                durability: Durability::Spooled,
            } => Outcome::Spooled,
            IngestOutcome::Accepted { .. } => Outcome::Forwarded,
            IngestOutcome::Rejected { .. } => Outcome::Rejected,
            // Retry, and outcomes this version does not know (treated as retry).
            _ => Outcome::Retry,
        },
        Ok(Message::ErrorReply(_)) => Outcome::ErrorReply,
        _ => Outcome::Transport,
    }
}

/// Waits until the server accepts a batch: the relay answers `Retry` until its app
/// registry is loaded. Returns the attempts it took.
async fn probe(conn: &quinn::Connection, load: &Load) -> anyhow::Result<u32> {
    let mut device = Device::new(&load.app, &load.key, 1, u64::MAX)?;
    // Like a device: the same batch until it is accepted.
    let frame = device.next_batch().frame;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut attempt = 0;
    loop {
        attempt += 1;
        match request(conn, &frame).await {
            Outcome::Forwarded | Outcome::Spooled => return Ok(attempt),
            Outcome::Retry if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            other => bail!("the probe batch was answered {other:?} after {attempt} attempts"),
        }
    }
}

/// Both halves of one connection's counts.
#[derive(Debug, Default)]
struct Counts {
    measured: Stats,
    warmup: Stats,
}

impl Counts {
    fn route(&mut self, r: Result<Record, tokio::task::JoinError>, window: (Instant, Instant)) {
        if let Ok(r) = &r {
            if r.done >= window.0 && r.done < window.1 {
                self.measured.count_in_window(r);
            }
        }
        match r {
            Ok(r) if r.due >= window.0 => self.measured.record(&r),
            Ok(r) => self.warmup.record(&r),
            // A request task that panicked or was cancelled: no reply.
            Err(_) => self.measured.record_timeout(0, 0),
        }
    }
}

/// One connection's share of the load.
struct Drive {
    conn: quinn::Connection,
    device: Device,
    pacer: Option<Pacer>,
    concurrency: usize,
    start: Instant,
    measure_from: Instant,
    end: Instant,
    drain_timeout: Duration,
    events_per_batch: u64,
}

impl Drive {
    async fn run(mut self) -> Counts {
        let mut counts = Counts::default();
        let streams = Arc::new(Semaphore::new(self.concurrency.max(1)));
        let mut tasks: JoinSet<Record> = JoinSet::new();
        let give_up = self.end + self.drain_timeout;
        tokio::time::sleep_until(self.start.into()).await;
        for k in 0.. {
            let due = match &self.pacer {
                Some(p) => {
                    let due = p.due(k);
                    if due >= self.end {
                        break;
                    }
                    tokio::time::sleep_until(due.into()).await;
                    Some(due)
                }
                None => None,
            };
            // Open loop: a batch that is due waits for a free stream, and that wait
            // counts in its latency. Closed loop: the next batch goes when one is free.
            let permit = tokio::select! {
                p = streams.clone().acquire_owned() => p,
                _ = tokio::time::sleep_until(give_up.into()) => break,
            };
            let Ok(permit) = permit else { break };
            let sent = Instant::now();
            if due.is_none() && sent >= self.end {
                break;
            }
            let due = due.unwrap_or(sent);
            let batch = self.device.next_batch();
            let conn = self.conn.clone();
            tasks.spawn(async move {
                let outcome = request(&conn, &batch.frame).await;
                drop(permit);
                Record {
                    due,
                    sent,
                    done: Instant::now(),
                    events: batch.events,
                    bytes: batch.frame.len() as u64,
                    outcome,
                }
            });
            while let Some(r) = tasks.try_join_next() {
                counts.route(r, (self.measure_from, self.end));
            }
        }
        let deadline = tokio::time::Instant::from_std(give_up.max(Instant::now()));
        loop {
            match tokio::time::timeout_at(deadline, tasks.join_next()).await {
                Ok(Some(r)) => counts.route(r, (self.measure_from, self.end)),
                Ok(None) => break,
                Err(_) => {
                    for _ in 0..tasks.len() {
                        counts.measured.record_timeout(self.events_per_batch, 0);
                    }
                    tasks.abort_all();
                    break;
                }
            }
        }
        counts
    }
}

/// Runs the load against `target` and reports.
pub async fn run(mode: &'static str, target: &Target, load: &Load) -> anyhow::Result<Report> {
    anyhow::ensure!(load.connections > 0, "--connections must be at least 1");
    let mut conns = Vec::with_capacity(load.connections);
    for _ in 0..load.connections {
        conns.push(connect(target).await?);
    }
    let probe_attempts = probe(&conns[0].1, load).await?;
    let devices = (0..load.connections)
        .map(|i| Device::new(&load.app, &load.key, load.events_per_batch, i as u64))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let start = Instant::now() + Duration::from_millis(50);
    let measure_from = start + load.warmup;
    let end = measure_from + load.duration;
    let drives: Vec<_> = conns
        .iter()
        .zip(devices)
        .enumerate()
        .map(|(i, ((_, conn), device))| {
            let pacer = (load.rate > 0).then(|| {
                Pacer::new(
                    start,
                    load.rate,
                    load.events_per_batch as u64,
                    i,
                    load.connections,
                )
            });
            tokio::spawn(
                Drive {
                    conn: conn.clone(),
                    device,
                    pacer,
                    concurrency: load.concurrency,
                    start,
                    measure_from,
                    end,
                    drain_timeout: load.drain_timeout,
                    events_per_batch: load.events_per_batch as u64,
                }
                .run(),
            )
        })
        .collect();
    let mut measured = Stats::default();
    let mut warmup = Stats::default();
    for d in drives {
        let c = d.await.context("a connection task failed")?;
        measured.merge(&c.measured);
        warmup.merge(&c.warmup);
    }
    let elapsed = measured
        .last_done
        .map(|t| t.saturating_duration_since(measure_from))
        .unwrap_or(load.duration);
    // Close every connection, then give the close frames a moment to leave, all
    // endpoints at once.
    for (_, conn) in &conns {
        conn.close(0u32.into(), b"load done");
    }
    let idle = futures_util::future::join_all(conns.iter().map(|(e, _)| e.wait_idle()));
    let _ = tokio::time::timeout(Duration::from_secs(1), idle).await;
    Ok(Report {
        info: RunInfo {
            mode,
            target: target.addr.to_string(),
            connections: load.connections,
            concurrency: load.concurrency,
            events_per_batch: load.events_per_batch,
            rate: load.rate,
            duration: load.duration,
            warmup: load.warmup,
        },
        measured,
        warmup,
        elapsed,
        window: load.duration,
        probe_attempts,
        cpu: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_protocol::{BatchId, ErrorReply, IngestReply, RejectReason};

    fn reply(outcome: IngestOutcome) -> Vec<u8> {
        Message::IngestReply(IngestReply {
            shard_map_version: 1,
            batch_id: BatchId::new_v7(),
            outcome,
        })
        .encode(&CodecConfig::device())
        .unwrap()
    }

    #[test]
    fn replies_are_classified_as_a_device_reads_them() {
        let accepted = |durability| IngestOutcome::Accepted { durability };
        assert_eq!(
            classify(&reply(accepted(Durability::Forwarded))),
            Outcome::Forwarded
        );
        assert_eq!(
            classify(&reply(accepted(Durability::Spooled))),
            Outcome::Spooled
        );
        assert_eq!(
            classify(&reply(IngestOutcome::Retry { after_ms: 5 })),
            Outcome::Retry
        );
        assert_eq!(
            classify(&reply(IngestOutcome::Rejected {
                reason: RejectReason::Invalid,
                detail: String::new()
            })),
            Outcome::Rejected
        );
        let err = Message::ErrorReply(ErrorReply {
            shard_map_version: 0,
            reason: RejectReason::Malformed,
            detail: String::new(),
        })
        .encode(&CodecConfig::device())
        .unwrap();
        assert_eq!(classify(&err), Outcome::ErrorReply);
        assert_eq!(classify(b"garbage"), Outcome::Transport);
    }
}
