//! Userspace network impairment, for kernels without `tc netem`.
//!
//! [`UdpProxy`] sits between devices and a relay's QUIC port: every datagram, in each
//! direction, is dropped with probability `loss` (or always while `blocked`), otherwise
//! delivered after `delay` plus a uniform draw in `0..=jitter` — a jitter larger than the
//! packet spacing reorders packets. [`TcpProxy`] does the same for a relay's HTTPS port
//! minus loss (TCP hides loss as delay): a constant added delay per direction, and
//! `blocked` refuses new connections and cuts open ones.
//!
//! Both share one [`Impairment`], adjustable while traffic flows.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinSet;

use crate::Result;

/// Impairment settings, shared by the proxies that use them and changeable at any time.
#[derive(Debug, Default)]
pub struct Impairment {
    loss_ppm: AtomicU32,
    delay_us: AtomicU64,
    jitter_us: AtomicU64,
    blocked: AtomicBool,
    /// Datagrams (or TCP chunks) passed on.
    pub forwarded: AtomicU64,
    /// Datagrams dropped (loss or block).
    pub dropped: AtomicU64,
}

impl Impairment {
    /// No impairment.
    pub fn new() -> Arc<Impairment> {
        Arc::new(Impairment::default())
    }

    /// Drops each datagram with probability `loss` (0.0..=1.0).
    pub fn set_loss(&self, loss: f64) {
        let ppm = (loss.clamp(0.0, 1.0) * 1_000_000.0).round() as u32;
        self.loss_ppm.store(ppm, Ordering::Relaxed);
    }

    /// Adds `delay` plus a uniform `0..=jitter` to every datagram or chunk.
    pub fn set_delay(&self, delay: Duration, jitter: Duration) {
        self.delay_us
            .store(delay.as_micros() as u64, Ordering::Relaxed);
        self.jitter_us
            .store(jitter.as_micros() as u64, Ordering::Relaxed);
    }

    /// Blocks everything (like a firewall dropping the protocol) or lets it pass.
    pub fn set_blocked(&self, blocked: bool) {
        self.blocked.store(blocked, Ordering::Relaxed);
    }

    /// Whether everything is blocked.
    pub fn is_blocked(&self) -> bool {
        self.blocked.load(Ordering::Relaxed)
    }

    fn drop_now(&self) -> bool {
        if self.is_blocked() {
            return true;
        }
        let ppm = self.loss_ppm.load(Ordering::Relaxed);
        ppm > 0 && rand::rng().random_range(0..1_000_000) < ppm
    }

    fn hold(&self) -> Duration {
        let delay = self.delay_us.load(Ordering::Relaxed);
        let jitter = self.jitter_us.load(Ordering::Relaxed);
        let extra = if jitter > 0 {
            rand::rng().random_range(0..=jitter)
        } else {
            0
        };
        Duration::from_micros(delay + extra)
    }
}

/// A UDP proxy on a loopback port forwarding to `upstream` through an [`Impairment`].
/// Each client address gets its own upstream socket, so the relay sees distinct peers.
#[derive(Debug)]
pub struct UdpProxy {
    addr: SocketAddr,
    tasks: JoinSet<()>,
}

impl UdpProxy {
    /// Binds `listen` (port 0 picks one) and starts forwarding.
    pub async fn start(
        listen: SocketAddr,
        upstream: SocketAddr,
        imp: Arc<Impairment>,
    ) -> Result<UdpProxy> {
        let front = Arc::new(
            UdpSocket::bind(listen)
                .await
                .map_err(crate::io_err(format!("binding the UDP proxy on {listen}")))?,
        );
        let addr = front.local_addr().map_err(crate::io_err("local addr"))?;
        let mut tasks = JoinSet::new();
        tasks.spawn(run_udp(front, upstream, imp));
        Ok(UdpProxy { addr, tasks })
    }

    /// The address devices send to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops forwarding.
    pub fn stop(&mut self) {
        self.tasks.abort_all();
    }
}

async fn run_udp(front: Arc<UdpSocket>, upstream: SocketAddr, imp: Arc<Impairment>) {
    let mut sessions: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut replies = JoinSet::new();
    let mut buf = vec![0u8; 65_536];
    loop {
        let Ok((n, client)) = front.recv_from(&mut buf).await else {
            // ICMP errors surface here on some systems; keep serving.
            continue;
        };
        let up = match sessions.get(&client) {
            Some(up) => up.clone(),
            None => {
                let Ok(up) = UdpSocket::bind("127.0.0.1:0").await else {
                    continue;
                };
                if up.connect(upstream).await.is_err() {
                    continue;
                }
                let up = Arc::new(up);
                sessions.insert(client, up.clone());
                replies.spawn(relay_replies(
                    up.clone(),
                    front.clone(),
                    client,
                    imp.clone(),
                ));
                up
            }
        };
        forward(&imp, buf[..n].to_vec(), move |data| {
            let up = up.clone();
            async move {
                let _ = up.send(&data).await;
            }
        });
    }
}

async fn relay_replies(
    up: Arc<UdpSocket>,
    front: Arc<UdpSocket>,
    client: SocketAddr,
    imp: Arc<Impairment>,
) {
    let mut buf = vec![0u8; 65_536];
    loop {
        // A refused send (the relay is down) reports an error here once: keep going.
        let n = match up.recv(&mut buf).await {
            Ok(n) => n,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
        };
        let front = front.clone();
        forward(&imp, buf[..n].to_vec(), move |data| async move {
            let _ = front.send_to(&data, client).await;
        });
    }
}

fn forward<F, Fut>(imp: &Impairment, data: Vec<u8>, send: F)
where
    F: FnOnce(Vec<u8>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    if imp.drop_now() {
        imp.dropped.fetch_add(1, Ordering::Relaxed);
        return;
    }
    imp.forwarded.fetch_add(1, Ordering::Relaxed);
    let hold = imp.hold();
    tokio::spawn(async move {
        if !hold.is_zero() {
            tokio::time::sleep(hold).await;
        }
        send(data).await;
    });
}

/// A TCP proxy on a loopback port forwarding to `upstream` with the [`Impairment`]'s
/// delay (no loss: TCP would retransmit), refusing connections while blocked.
#[derive(Debug)]
pub struct TcpProxy {
    addr: SocketAddr,
    tasks: JoinSet<()>,
}

impl TcpProxy {
    /// Binds `listen` (port 0 picks one) and starts forwarding.
    pub async fn start(
        listen: SocketAddr,
        upstream: SocketAddr,
        imp: Arc<Impairment>,
    ) -> Result<TcpProxy> {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(crate::io_err(format!("binding the TCP proxy on {listen}")))?;
        let addr = listener.local_addr().map_err(crate::io_err("local addr"))?;
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                if imp.is_blocked() {
                    imp.dropped.fetch_add(1, Ordering::Relaxed);
                    drop(client);
                    continue;
                }
                let imp = imp.clone();
                conns.spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::join!(pipe(cr, sw, imp.clone()), pipe(sr, cw, imp.clone()));
                });
            }
        });
        Ok(TcpProxy { addr, tasks })
    }

    /// The address devices connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops forwarding (open connections are cut).
    pub fn stop(&mut self) {
        self.tasks.abort_all();
    }
}

/// Copies one direction: chunks are stamped when read and written when their delay has
/// passed, so the delay is constant and the stream keeps its order and throughput.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    imp: Arc<Impairment>,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let reader = {
        let imp = imp.clone();
        async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match from.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if imp.is_blocked() {
                            break;
                        }
                        let at = tokio::time::Instant::now() + imp.hold();
                        if tx.send((at, buf[..n].to_vec())).is_err() {
                            break;
                        }
                    }
                }
            }
        }
    };
    let writer = async move {
        while let Some((at, data)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&data).await.is_err() {
                break;
            }
            imp.forwarded.fetch_add(1, Ordering::Relaxed);
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> SocketAddr {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = s.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = s.recv_from(&mut buf).await {
                let _ = s.send_to(&buf[..n], from).await;
            }
        });
        addr
    }

    async fn round_trips(client: &UdpSocket, n: usize) -> usize {
        let mut got = 0;
        let mut buf = [0u8; 2048];
        for i in 0..n {
            client.send(&(i as u32).to_be_bytes()).await.unwrap();
        }
        while let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_millis(300), client.recv(&mut buf)).await
        {
            got += 1;
        }
        got
    }

    #[tokio::test]
    async fn udp_passes_blocks_and_loses() {
        let imp = Impairment::new();
        let proxy = UdpProxy::start(
            "127.0.0.1:0".parse().unwrap(),
            echo_server().await,
            imp.clone(),
        )
        .await
        .unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trips(&client, 50).await, 50);
        imp.set_blocked(true);
        assert_eq!(round_trips(&client, 20).await, 0);
        imp.set_blocked(false);
        // 50% loss each way: about a quarter of 400 round trips survive.
        imp.set_loss(0.5);
        let got = round_trips(&client, 400).await;
        assert!(
            (40..=170).contains(&got),
            "{got} of 400 survived 50% loss each way"
        );
        assert!(imp.dropped.load(Ordering::Relaxed) > 0);
    }

    #[tokio::test]
    async fn udp_delay_holds_datagrams() {
        let imp = Impairment::new();
        imp.set_delay(Duration::from_millis(100), Duration::ZERO);
        let proxy = UdpProxy::start("127.0.0.1:0".parse().unwrap(), echo_server().await, imp)
            .await
            .unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.connect(proxy.addr()).await.unwrap();
        let t = std::time::Instant::now();
        client.send(b"x").await.unwrap();
        let mut buf = [0u8; 8];
        client.recv(&mut buf).await.unwrap();
        // Delayed both ways: at least 200 ms (a lower bound, not a timing threshold
        // on the machine's speed).
        assert!(
            t.elapsed() >= Duration::from_millis(200),
            "{:?}",
            t.elapsed()
        );
    }

    #[tokio::test]
    async fn tcp_delays_in_order_and_blocks() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        let imp = Impairment::new();
        imp.set_delay(Duration::from_millis(50), Duration::ZERO);
        let proxy = TcpProxy::start("127.0.0.1:0".parse().unwrap(), upstream, imp.clone())
            .await
            .unwrap();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        let t = std::time::Instant::now();
        let data: Vec<u8> = (0..100_000u32).flat_map(|i| i.to_be_bytes()).collect();
        let (mut r, mut w) = s.split();
        let (_, echoed) = tokio::join!(w.write_all(&data), async {
            let mut got = vec![0u8; data.len()];
            r.read_exact(&mut got).await.unwrap();
            got
        });
        assert_eq!(echoed, data, "bytes arrive whole and in order");
        assert!(t.elapsed() >= Duration::from_millis(100));
        imp.set_blocked(true);
        let mut refused = TcpStream::connect(proxy.addr()).await.unwrap();
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), refused.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0, "a blocked proxy closes new connections");
    }
}
