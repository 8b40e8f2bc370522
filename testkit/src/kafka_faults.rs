//! A Kafka-protocol proxy that makes partitions leaderless, for scenarios a single
//! broker cannot produce by itself.
//!
//! The broker ([`crate::kafka::Broker::start_behind`]) advertises the proxy's address,
//! so every client connection after the bootstrap one goes through it. Requests and
//! responses are passed on byte for byte, except `Metadata` responses: a partition
//! marked down with [`Faults::set_leader_down`] is reported as a Kafka cluster reports
//! a partition whose leader is gone — error `LEADER_NOT_AVAILABLE`, leader `-1`, no
//! in-sync replica — so clients hold its records and keep asking for metadata until it
//! has a leader again. Records for other partitions flow as usual.
//!
//! Frames are read with the Kafka framing (a 4-byte big-endian size, then the
//! message); `Metadata` responses are decoded and encoded with the `kafka-protocol`
//! crate at the version the client asked for.

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, MetadataResponse, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{io_err, Result};

/// `LEADER_NOT_AVAILABLE`.
const LEADER_NOT_AVAILABLE: i16 = 5;
/// Largest frame passed on (the broker's and librdkafka's own limits are far lower).
const MAX_FRAME: usize = 256 * 1024 * 1024;

/// The partitions reported leaderless. Cheap to clone; clones share the set.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    down: Arc<Mutex<HashSet<(String, i32)>>>,
}

impl Faults {
    /// Marks `partition` of `topic` leaderless (`down`) or back.
    pub fn set_leader_down(&self, topic: &str, partition: i32, down: bool) {
        let mut set = self.down.lock().unwrap_or_else(|p| p.into_inner());
        if down {
            set.insert((topic.to_owned(), partition));
        } else {
            set.remove(&(topic.to_owned(), partition));
        }
    }

    fn is_down(&self, topic: &str, partition: i32) -> bool {
        self.down
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&(topic.to_owned(), partition))
    }

    fn any(&self) -> bool {
        !self
            .down
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }
}

/// The proxy: a listener on loopback forwarding to the broker's port, on its own
/// thread and runtime. Stops when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    faults: Faults,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl FaultProxy {
    /// Binds the proxy on a free loopback port and picks a free port for the broker
    /// behind it ([`FaultProxy::upstream`]); connections are accepted at once and
    /// reach the broker once it listens.
    pub fn start() -> Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(io_err("binding the proxy"))?;
        let addr = listener
            .local_addr()
            .map_err(io_err("reading the proxy's address"))?;
        let upstream = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(io_err("picking a port for the broker"))?;
        listener
            .set_nonblocking(true)
            .map_err(io_err("setting the proxy's listener non-blocking"))?;
        let faults = Faults::default();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let shared = faults.clone();
        std::thread::Builder::new()
            .name("kafka-fault-proxy".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        eprintln!("kafka fault proxy: no runtime: {e}");
                        return;
                    }
                };
                rt.block_on(serve(listener, upstream, shared, stopped));
            })
            .map_err(io_err("starting the proxy's thread"))?;
        Ok(FaultProxy {
            addr,
            upstream,
            faults,
            stop: Some(stop),
        })
    }

    /// Where clients connect (what the broker advertises).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the broker listens.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// The faults it injects.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn serve(
    listener: TcpListener,
    upstream: SocketAddr,
    faults: Faults,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("kafka fault proxy: {e}");
            return;
        }
    };
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                let faults = faults.clone();
                conns.spawn(async move {
                    if let Ok(broker) = TcpStream::connect(upstream).await {
                        relay_conn(client, broker, faults).await;
                    }
                });
            }
        }
    }
    conns.abort_all();
}

/// Requests in flight on one connection: correlation id -> (API key, version).
type InFlight = Arc<Mutex<HashMap<i32, (i16, i16)>>>;

async fn relay_conn(client: TcpStream, broker: TcpStream, faults: Faults) {
    let _ = client.set_nodelay(true);
    let _ = broker.set_nodelay(true);
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut broker_rx, mut broker_tx) = broker.into_split();
    let inflight = InFlight::default();
    let requests = {
        let inflight = inflight.clone();
        async move {
            while let Some(frame) = read_frame(&mut client_rx).await {
                if frame.len() >= 8 {
                    let mut head = &frame[..8];
                    let (key, version, correlation) =
                        (head.get_i16(), head.get_i16(), head.get_i32());
                    inflight
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(correlation, (key, version));
                }
                if write_frame(&mut broker_tx, &frame).await.is_err() {
                    break;
                }
            }
        }
    };
    let responses = async move {
        while let Some(frame) = read_frame(&mut broker_rx).await {
            let asked = (frame.len() >= 4)
                .then(|| i32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]))
                .and_then(|c| {
                    inflight
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&c)
                });
            let frame = match asked {
                Some((key, version)) if key == ApiKey::Metadata as i16 && faults.any() => {
                    rewrite_metadata(&frame, version, &faults).unwrap_or(frame)
                }
                _ => frame,
            };
            if write_frame(&mut client_tx, &frame).await.is_err() {
                break;
            }
        }
    };
    tokio::join!(requests, responses);
}

/// The `Metadata` response `frame` (version `version`) with the partitions marked down
/// leaderless; `None` if it does not decode (passed on unchanged).
fn rewrite_metadata(frame: &Bytes, version: i16, faults: &Faults) -> Option<Bytes> {
    let header_version = ApiKey::Metadata.response_header_version(version);
    let mut buf = frame.clone();
    let header = ResponseHeader::decode(&mut buf, header_version).ok()?;
    let mut body = MetadataResponse::decode(&mut buf, version).ok()?;
    for topic in &mut body.topics {
        let Some(name) = topic.name.as_ref().map(|n| n.0.to_string()) else {
            continue;
        };
        for p in &mut topic.partitions {
            if faults.is_down(&name, p.partition_index) {
                p.error_code = LEADER_NOT_AVAILABLE;
                p.leader_id = (-1).into();
                p.isr_nodes.clear();
            }
        }
    }
    let mut out = BytesMut::new();
    header.encode(&mut out, header_version).ok()?;
    body.encode(&mut out, version).ok()?;
    Some(out.freeze())
}

async fn read_frame(rx: &mut (impl AsyncReadExt + Unpin)) -> Option<Bytes> {
    let len = rx.read_u32().await.ok()? as usize;
    if len > MAX_FRAME {
        return None;
    }
    let mut buf = vec![0u8; len];
    rx.read_exact(&mut buf).await.ok()?;
    Some(Bytes::from(buf))
}

async fn write_frame(tx: &mut (impl AsyncWriteExt + Unpin), frame: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(frame.len()).map_err(std::io::Error::other)?;
    tx.write_all(&len.to_be_bytes()).await?;
    tx.write_all(frame).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::metadata_response::{
        MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
    };
    use kafka_protocol::messages::{BrokerId, TopicName};
    use kafka_protocol::protocol::StrBytes;

    fn response(version: i16) -> Bytes {
        let partition = |i: i32| {
            MetadataResponsePartition::default()
                .with_partition_index(i)
                .with_leader_id(BrokerId(1))
                .with_replica_nodes(vec![BrokerId(1)])
                .with_isr_nodes(vec![BrokerId(1)])
        };
        let body = MetadataResponse::default()
            .with_brokers(vec![MetadataResponseBroker::default()
                .with_node_id(BrokerId(1))
                .with_host(StrBytes::from_static_str("127.0.0.1"))
                .with_port(9092)])
            .with_topics(vec![MetadataResponseTopic::default()
                .with_name(Some(TopicName(StrBytes::from_static_str("t"))))
                .with_partitions(vec![partition(0), partition(1)])]);
        let header_version = ApiKey::Metadata.response_header_version(version);
        let mut out = BytesMut::new();
        ResponseHeader::default()
            .with_correlation_id(7)
            .encode(&mut out, header_version)
            .unwrap();
        body.encode(&mut out, version).unwrap();
        out.freeze()
    }

    #[test]
    fn a_partition_marked_down_is_reported_leaderless_and_the_rest_unchanged() {
        for version in [1i16, 9, 12] {
            let faults = Faults::default();
            faults.set_leader_down("t", 1, true);
            let out = rewrite_metadata(&response(version), version, &faults).unwrap();
            let mut buf = out.clone();
            let hv = ApiKey::Metadata.response_header_version(version);
            let header = ResponseHeader::decode(&mut buf, hv).unwrap();
            assert_eq!(header.correlation_id, 7);
            let body = MetadataResponse::decode(&mut buf, version).unwrap();
            let parts = &body.topics[0].partitions;
            assert_eq!((parts[0].error_code, parts[0].leader_id), (0, BrokerId(1)));
            assert_eq!(
                (parts[1].error_code, parts[1].leader_id),
                (LEADER_NOT_AVAILABLE, BrokerId(-1))
            );
            assert!(parts[1].isr_nodes.is_empty());
            faults.set_leader_down("t", 1, false);
            assert!(!faults.any());
        }
    }
}
