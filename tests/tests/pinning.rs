//! Certificate pinning (sdk-core/src/net/pinning.rs) against the local stack: real relays
//! in-process on loopback, QUIC and HTTPS. Verdicts from the stub's counters and the
//! device's own (`pin_failures`, `queued_events`, `batches_rejected`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tern_protocol::ShardMap;
use tern_sdk::pinning::Pin;
use tern_sdk::Tern;
use tern_testkit::wait::until;
use tern_tests::device::{self, track};
use tern_tests::stack::Stack;

const DEADLINE: Duration = Duration::from_secs(30);

/// A well-formed pin of no key the stack uses (SHA-256 of the empty string).
const STRANGER: &str = "sha256/47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";

/// The pin of the relays' certificate (self-signed: it is also the root).
fn relay_pin(stack: &Stack) -> String {
    let der = CertificateDer::from_pem_slice(stack.ca_pem.as_bytes()).unwrap();
    Pin::of_certificate(&der).unwrap().to_string()
}

fn start_device(
    dir: &std::path::Path,
    map: ShardMap,
    ca: &str,
    pins: &[&str],
    expire_at: Option<SystemTime>,
) -> Tern {
    let mut b = device::builder(dir, "demo-key", map, ca)
        .flush_policy(device::flush(50))
        .upload(device::upload(ca).with_transport(device::transport(
            ca,
            Duration::from_secs(2),
            Duration::from_secs(5),
        )))
        .certificate_pins(pins.iter().copied());
    if let Some(at) = expire_at {
        b = b.certificate_pins_expire_at(at);
    }
    device::start(b)
}

/// QUIC aimed at a UDP port nobody serves, as if UDP were blocked: HTTPS only.
fn https_only(stack: &Stack) -> ShardMap {
    let dead_udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut map = stack.shard_map(1);
    map.nodes[0].quic_addr = dead_udp.local_addr().unwrap().to_string();
    map
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_pin_set_with_the_relay_key_delivers_over_quic_and_https() {
    let stack = Stack::start(1).await;
    let pin = relay_pin(&stack);
    // The app ships the old key (no longer served) and the new one.
    let rotated = [STRANGER, pin.as_str()];
    let dir = tempfile::tempdir().unwrap();
    let tern = start_device(
        dir.path(),
        stack.shard_map(1),
        &stack.ca_pem,
        &rotated,
        None,
    );
    track(&tern, 200);
    tern.flush();
    let s = stack.backend.wait_events(200, DEADLINE).await;
    assert_eq!(s["events_unique"], 200, "{s}");
    until("the acks", DEADLINE, || {
        tern.stats().upload.events_acked == 200
    })
    .await;
    let st = tern.stats().upload;
    assert!(st.router.quic_ok > 0, "{st:?}");
    assert_eq!(st.pin_failures, 0, "{st:?}");
    tern.shutdown(Duration::from_secs(5));

    let dir = tempfile::tempdir().unwrap();
    let tern = start_device(dir.path(), https_only(&stack), &stack.ca_pem, &[&pin], None);
    track(&tern, 100);
    tern.flush();
    let s = stack.backend.wait_events(300, DEADLINE).await;
    assert_eq!(s["events_unique"], 300, "{s}");
    until("the acks", DEADLINE, || {
        tern.stats().upload.events_acked == 100
    })
    .await;
    let st = tern.stats().upload;
    assert!(st.router.https_ok > 0, "{st:?}");
    assert_eq!(st.router.quic_ok, 0, "{st:?}");
    assert_eq!(st.pin_failures, 0, "{st:?}");
    tern.shutdown(Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_mismatch_is_a_counted_transport_failure_and_the_batches_are_kept() {
    let stack = Stack::start(1).await;
    let dir = tempfile::tempdir().unwrap();
    let tern = start_device(
        dir.path(),
        stack.shard_map(1),
        &stack.ca_pem,
        &[STRANGER],
        None,
    );
    track(&tern, 100);
    tern.flush();
    // Both transports are refused at the handshake (QUIC, then the HTTPS fallback) and
    // the send fails as a whole; the request bytes never left the device.
    until(
        "pin failures on QUIC and HTTPS and a failed send",
        DEADLINE,
        || {
            let st = tern.stats();
            st.upload.pin_failures >= 2 && st.upload.failed_sends >= 1 && st.queued_events == 100
        },
    )
    .await;
    let st = tern.stats();
    assert_eq!(st.upload.batches_acked, 0, "{st:?}");
    assert_eq!(st.upload.batches_rejected, 0, "{st:?}");
    assert_eq!(
        st.upload.router.quic_ok + st.upload.router.https_ok,
        0,
        "{st:?}"
    );
    assert!(st.upload.router.failures >= 2, "{st:?}");
    assert_eq!(st.queued_events, 100, "kept on the device: {st:?}");
    tern.shutdown(Duration::from_secs(5));
    assert_eq!(stack.backend.summary().await["events_unique"], 0);

    // The next app version ships the right pin: the kept events go out exactly once.
    let pin = relay_pin(&stack);
    let tern = start_device(dir.path(), stack.shard_map(1), &stack.ca_pem, &[&pin], None);
    tern.flush();
    let s = stack.backend.wait_events(100, DEADLINE).await;
    assert_eq!(s["events_unique"], 100, "{s}");
    assert_eq!(s["events_duplicate"], 0, "{s}");
    assert_eq!(tern.stats().upload.pin_failures, 0);
    tern.shutdown(Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_mismatch_over_https_is_refused_too() {
    let stack = Stack::start(1).await;
    let dir = tempfile::tempdir().unwrap();
    let tern = start_device(
        dir.path(),
        https_only(&stack),
        &stack.ca_pem,
        &[STRANGER],
        None,
    );
    track(&tern, 50);
    tern.flush();
    until("a refused HTTPS handshake", DEADLINE, || {
        let st = tern.stats();
        st.upload.pin_failures >= 1 && st.upload.failed_sends >= 1 && st.queued_events == 50
    })
    .await;
    let st = tern.stats();
    assert_eq!(st.upload.router.https_ok, 0, "{st:?}");
    assert_eq!(st.upload.batches_rejected, 0, "{st:?}");
    assert_eq!(st.queued_events, 50, "{st:?}");
    tern.shutdown(Duration::from_secs(5));
    assert_eq!(stack.backend.summary().await["events_unique"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_pins_are_not_enforced() {
    let stack = Stack::start(1).await;
    let dir = tempfile::tempdir().unwrap();
    let expired = UNIX_EPOCH + Duration::from_secs(1);
    let tern = start_device(
        dir.path(),
        stack.shard_map(1),
        &stack.ca_pem,
        &[STRANGER],
        Some(expired),
    );
    track(&tern, 100);
    tern.flush();
    let s = stack.backend.wait_events(100, DEADLINE).await;
    assert_eq!(s["events_unique"], 100, "{s}");
    assert_eq!(tern.stats().upload.pin_failures, 0);
    tern.shutdown(Duration::from_secs(5));
}
