//! Realistic `IngestRequest` frames, built cheaply so the load generator spends its
//! share of the CPU on sending, not on encoding.
//!
//! Each simulated device (one per connection) has its own random `device_id`, one user,
//! one session, a gap-free `seq` starting at 1 and a fresh `batch_id` (UUID v7) per
//! batch. Its events are custom events with a few properties (string, int, float,
//! bool) and an occasional purchase, drawn from a per-device pool of pre-encoded
//! events.
//!
//! The payload is assembled from bytes the real codec produced: the request with an
//! empty `events` array is encoded once with placeholder ids, and each event of the
//! pool is encoded once with `seq = 0`. A batch is then the request's head (placeholders
//! overwritten with this batch's ids and send time), the array header, each event with
//! its `seq` spliced in (smallest msgpack integer, as the codec writes it), and the
//! request's tail — byte-for-byte what `Message::encode` would produce for the same
//! values (the tests check that), framed and LZ4-compressed by
//! `tern_protocol::frame::encode_frame` exactly like an SDK.

use anyhow::{bail, ensure, Context};
use tern_protocol::codec::{encode_payload, DEFAULT_COMPRESS_THRESHOLD};
use tern_protocol::frame::encode_frame;
use tern_protocol::{
    AppId, Auth, BatchId, DeviceId, Event, EventBatch, EventBody, IngestRequest, MessageKind,
    Properties, SdkInfo, SessionId, UserId, Value,
};

/// Events pre-encoded per device; batches cycle through them.
const POOL: usize = 64;

const PLACEHOLDER_BATCH: [u8; 16] = [0xb7; 16];
const PLACEHOLDER_DEVICE: [u8; 16] = [0xd7; 16];
/// Encoded as msgpack `uint 64` (0xcf + 8 bytes), like every real Unix-ms timestamp
/// (they are all above 2^32).
const PLACEHOLDER_SENT_AT: i64 = 0x0102_0304_0506_0708;

/// xorshift64*: deterministic variety without a `rand` dependency.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// One plausible event (seq 0: spliced in per batch).
fn event(rng: &mut Rng, user: &UserId, session: SessionId, ts_ms: i64) -> Event {
    const SCREENS: [&str; 6] = ["home", "search", "product", "cart", "checkout", "settings"];
    let mut props = Properties::new();
    let body = match rng.below(20) {
        0 => EventBody::Purchase {
            product_id: format!("sku-{:05}", rng.below(50_000)),
            amount_micros: (rng.below(20_000) as i64 + 99) * 10_000,
            currency: rng.pick(&["USD", "EUR", "GBP", "JPY"]).into(),
            quantity: 1 + rng.below(3) as u32,
            props: Properties::from([("store".into(), Value::String("play".into()))]),
        },
        1..=8 => {
            props.insert("screen".into(), Value::String(rng.pick(&SCREENS).into()));
            props.insert("duration_ms".into(), Value::Int(rng.below(60_000) as i64));
            props.insert("logged_in".into(), Value::Bool(rng.below(2) == 0));
            EventBody::Custom {
                name: "screen_view".into(),
                props,
            }
        }
        9..=13 => {
            props.insert(
                "button".into(),
                Value::String(rng.pick(&["buy", "share", "like", "close", "next"]).into()),
            );
            props.insert("screen".into(), Value::String(rng.pick(&SCREENS).into()));
            EventBody::Custom {
                name: "button_tap".into(),
                props,
            }
        }
        14..=16 => {
            props.insert(
                "query".into(),
                Value::String(
                    rng.pick(&["running shoes", "coffee", "headphones", "tent", "book"])
                        .into(),
                ),
            );
            props.insert("results".into(), Value::Int(rng.below(500) as i64));
            props.insert(
                "latency_s".into(),
                Value::Float(rng.below(900) as f64 / 1000.0),
            );
            EventBody::Custom {
                name: "search".into(),
                props,
            }
        }
        _ => {
            props.insert(
                "product_id".into(),
                Value::String(format!("sku-{:05}", rng.below(50_000))),
            );
            props.insert(
                "price".into(),
                Value::Float((rng.below(20_000) + 99) as f64 / 100.0),
            );
            props.insert("quantity".into(), Value::Int(1 + rng.below(3) as i64));
            props.insert("in_stock".into(), Value::Bool(true));
            EventBody::Custom {
                name: "add_to_cart".into(),
                props,
            }
        }
    };
    Event {
        seq: 0,
        ts_ms,
        user_id: Some(user.clone()),
        session_id: Some(session),
        body,
    }
}

/// Where `needle` occurs in `hay`, if exactly once.
fn find_once(hay: &[u8], needle: &[u8]) -> anyhow::Result<usize> {
    let mut hits = hay
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i);
    let first = hits.next().context("placeholder not found")?;
    ensure!(hits.next().is_none(), "placeholder found twice");
    Ok(first)
}

/// msgpack unsigned integer, smallest encoding (what rmp-serde writes).
fn write_uint(out: &mut Vec<u8>, v: u64) {
    if v < 128 {
        out.push(v as u8);
    } else if v <= u64::from(u8::MAX) {
        out.extend_from_slice(&[0xcc, v as u8]);
    } else if v <= u64::from(u16::MAX) {
        out.push(0xcd);
        out.extend_from_slice(&(v as u16).to_be_bytes());
    } else if v <= u64::from(u32::MAX) {
        out.push(0xce);
        out.extend_from_slice(&(v as u32).to_be_bytes());
    } else {
        out.push(0xcf);
        out.extend_from_slice(&v.to_be_bytes());
    }
}

fn write_array_len(out: &mut Vec<u8>, n: usize) {
    if n < 16 {
        out.push(0x90 | n as u8);
    } else if n <= usize::from(u16::MAX) {
        out.push(0xdc);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0xdd);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    }
}

/// One pre-encoded event: the bytes before and after its `seq` value.
#[derive(Clone, Debug)]
struct EncodedEvent {
    /// Map header and the `seq` key.
    head: Vec<u8>,
    /// Every field after `seq`.
    rest: Vec<u8>,
}

/// The generator of one simulated device.
#[derive(Debug)]
pub struct Device {
    #[cfg_attr(not(test), allow(dead_code))]
    device_id: DeviceId,
    events_per_batch: usize,
    next_seq: u64,
    next_event: usize,
    batch_id_at: usize,
    sent_at_at: usize,
    head: Vec<u8>,
    tail: Vec<u8>,
    pool: Vec<EncodedEvent>,
    /// The same events, decoded, for tests.
    #[cfg(test)]
    plain: Vec<Event>,
    #[cfg(test)]
    template: IngestRequest,
    payload: Vec<u8>,
}

/// One generated request.
#[derive(Debug)]
pub struct Generated {
    /// The frame, as sent.
    pub frame: Vec<u8>,
    /// Events in it.
    pub events: u64,
}

impl Device {
    /// A new device of `app` sending `events_per_batch` events per batch; `seed`
    /// varies the event mix between devices.
    pub fn new(app: &str, key: &str, events_per_batch: usize, seed: u64) -> anyhow::Result<Self> {
        ensure!(
            (1..=1000).contains(&events_per_batch),
            "events per batch must be 1 to 1000 (the protocol's limit)"
        );
        let device_id = DeviceId::random();
        let mut rng =
            Rng::new(seed ^ u64::from_le_bytes(device_id.as_uuid().as_bytes()[..8].try_into()?));
        let user = UserId::new(format!("user-{:016x}", rng.next()));
        let session = SessionId(rng.below(1 << 40));
        let start = now_ms();
        let plain: Vec<Event> = (0..POOL)
            .map(|i| event(&mut rng, &user, session, start + i as i64 * 250))
            .collect();
        let mut pool = Vec::with_capacity(POOL);
        for e in &plain {
            let bytes = encode_payload(e)?;
            // A fixmap header, then "seq" (fixstr 3), then the placeholder 0: `seq` is
            // the struct's first field.
            let key = [0xa3, b's', b'e', b'q'];
            if bytes.len() < 6 || bytes[0] & 0xf0 != 0x80 || bytes[1..5] != key || bytes[5] != 0 {
                bail!(
                    "unexpected event encoding {:02x?}",
                    &bytes[..bytes.len().min(8)]
                );
            }
            pool.push(EncodedEvent {
                head: bytes[..5].to_vec(),
                rest: bytes[6..].to_vec(),
            });
        }
        let template = IngestRequest {
            auth: Auth {
                app_id: AppId::new(app),
                key: key.into(),
            },
            batch: EventBatch {
                anonymous_id: None,
                context: None,
                batch_id: BatchId::from_bytes(PLACEHOLDER_BATCH),
                app_id: AppId::new(app),
                device_id: DeviceId::from_bytes(PLACEHOLDER_DEVICE),
                sdk: SdkInfo {
                    name: "tern-loadgen".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    platform: "android".into(),
                    app_version: Some("4.2.0".into()),
                },
                sent_at_ms: PLACEHOLDER_SENT_AT,
                attempt: 0,
                events: Vec::new(),
                health: Default::default(),
            },
        };
        let bytes = encode_payload(&template)?;
        let events_key = [0xa6, b'e', b'v', b'e', b'n', b't', b's', 0x90];
        let at = find_once(&bytes, &events_key).context("the events array")? + events_key.len();
        let head = bytes[..at - 1].to_vec();
        let tail = bytes[at..].to_vec();
        let batch_id_at = find_once(&head, &PLACEHOLDER_BATCH).context("batch_id")?;
        let device_id_at = find_once(&head, &PLACEHOLDER_DEVICE).context("device_id")?;
        let mut sent_at = vec![0xcf];
        sent_at.extend_from_slice(&PLACEHOLDER_SENT_AT.to_be_bytes());
        let sent_at_at = find_once(&head, &sent_at).context("sent_at_ms")? + 1;
        let mut head = head;
        head[device_id_at..device_id_at + 16].copy_from_slice(device_id.as_uuid().as_bytes());
        Ok(Device {
            device_id,
            events_per_batch,
            next_seq: 1,
            next_event: 0,
            batch_id_at,
            sent_at_at,
            head,
            tail,
            pool,
            #[cfg(test)]
            plain,
            #[cfg(test)]
            template,
            payload: Vec::new(),
        })
    }

    /// This device's id.
    #[cfg(test)]
    pub fn device_id(&self) -> DeviceId {
        self.device_id
    }

    /// The next batch: a fresh batch id, the next `events_per_batch` sequence numbers.
    pub fn next_batch(&mut self) -> Generated {
        let p = &mut self.payload;
        p.clear();
        p.extend_from_slice(&self.head);
        p[self.batch_id_at..self.batch_id_at + 16]
            .copy_from_slice(BatchId::new_v7().as_uuid().as_bytes());
        p[self.sent_at_at..self.sent_at_at + 8].copy_from_slice(&now_ms().to_be_bytes());
        write_array_len(p, self.events_per_batch);
        for _ in 0..self.events_per_batch {
            let e = &self.pool[self.next_event];
            self.next_event = (self.next_event + 1) % self.pool.len();
            p.extend_from_slice(&e.head);
            write_uint(p, self.next_seq);
            self.next_seq += 1;
            p.extend_from_slice(&e.rest);
        }
        p.extend_from_slice(&self.tail);
        Generated {
            frame: encode_frame(
                MessageKind::IngestRequest.as_u8(),
                p,
                DEFAULT_COMPRESS_THRESHOLD,
            ),
            events: self.events_per_batch as u64,
        }
    }

    /// The request `next_batch` would produce from this state, built with the owned
    /// types (for tests).
    #[cfg(test)]
    fn expected(&self, batch_id: BatchId, sent_at_ms: i64) -> IngestRequest {
        let mut req = self.template.clone();
        req.batch.batch_id = batch_id;
        req.batch.device_id = self.device_id;
        req.batch.sent_at_ms = sent_at_ms;
        req.batch.events = (0..self.events_per_batch)
            .map(|i| {
                let mut e = self.plain[(self.next_event + i) % self.plain.len()].clone();
                e.seq = self.next_seq + i as u64;
                e
            })
            .collect();
        req
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_protocol::limits::{validate_batch, Limits};
    use tern_protocol::{CodecConfig, Message};

    fn decode(frame: &[u8]) -> IngestRequest {
        match Message::from_bytes(frame, &CodecConfig::device()).unwrap() {
            Message::IngestRequest(r) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn batches_decode_to_what_the_codec_would_encode_and_are_valid() {
        for n in [1, 15, 16, 100, 300, 1000] {
            let mut dev = Device::new("demo", "demo-key", n, 7).unwrap();
            let mut ids = std::collections::HashSet::new();
            for round in 0..3 {
                let before_seq = dev.next_seq;
                let expected_shape = dev.expected(BatchId::from_bytes([0; 16]), 0);
                let g = dev.next_batch();
                assert_eq!(g.events, n as u64);
                let got = decode(&g.frame);
                assert!(ids.insert(got.batch.batch_id), "batch ids are unique");
                let expected = {
                    let mut e = expected_shape;
                    e.batch.batch_id = got.batch.batch_id;
                    e.batch.sent_at_ms = got.batch.sent_at_ms;
                    e
                };
                assert_eq!(got, expected, "n={n} round={round}");
                // Byte-identical to the codec's own encoding of the same value.
                let reference = Message::IngestRequest(expected.clone())
                    .encode(&CodecConfig::device())
                    .unwrap();
                assert_eq!(g.frame, reference, "n={n} round={round}");
                assert_eq!(got.batch.events[0].seq, before_seq, "gap-free seq");
                assert!(got.batch.sent_at_ms > 1_600_000_000_000);
                assert_eq!(got.batch.device_id, dev.device_id());
                validate_batch(&got.batch, &Limits::default()).unwrap();
            }
            assert_eq!(dev.next_seq, 3 * n as u64 + 1);
        }
    }

    #[test]
    fn seq_crosses_every_integer_width() {
        let mut dev = Device::new("demo", "k", 1000, 1).unwrap();
        dev.next_seq = 60_000;
        for _ in 0..10 {
            // 60 000 .. 70 000 crosses u16 -> u32.
            let g = dev.next_batch();
            let r = decode(&g.frame);
            let seqs: Vec<u64> = r.batch.events.iter().map(|e| e.seq).collect();
            assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1));
        }
        let mut out = Vec::new();
        for v in [
            0,
            127,
            128,
            255,
            256,
            65_535,
            65_536,
            u32::MAX as u64,
            u64::MAX,
        ] {
            out.clear();
            write_uint(&mut out, v);
            assert_eq!(out, rmp_like(v), "{v}");
        }
    }

    /// The codec's encoding of a bare u64.
    fn rmp_like(v: u64) -> Vec<u8> {
        encode_payload(&v).unwrap()
    }

    #[test]
    fn devices_differ() {
        let a = Device::new("demo", "k", 10, 1).unwrap();
        let b = Device::new("demo", "k", 10, 1).unwrap();
        assert_ne!(a.device_id(), b.device_id());
        assert!(Device::new("demo", "k", 0, 1).is_err());
        assert!(Device::new("demo", "k", 1001, 1).is_err());
    }
}
