//! Batches and requests as a device would send them.

use tern_protocol::{
    AppId, Auth, BatchId, DeviceId, Event, EventBatch, EventBody, IngestRequest, Message, SdkInfo,
    UserId,
};

/// The credentials of `app` with `key`.
pub fn auth(app: &str, key: &str) -> Auth {
    Auth {
        app_id: AppId::new(app),
        key: key.into(),
    }
}

/// A batch of `events` custom events (sequence numbers `1..=events`) from a fresh
/// device of `app`.
pub fn batch(app: &str, events: u64) -> EventBatch {
    Batch::new(app).events(events).build()
}

/// `batch` as an ingest request with `app`'s credentials.
pub fn ingest(app: &str, key: &str, batch: EventBatch) -> Message {
    Message::IngestRequest(IngestRequest {
        auth: auth(app, key),
        batch,
    })
}

/// A builder of one [`EventBatch`] of custom events with gap-free sequence numbers.
#[derive(Debug, Clone)]
pub struct Batch {
    app: AppId,
    device: DeviceId,
    first_seq: u64,
    events: u64,
    name: String,
    ts_base: i64,
    user: Option<UserId>,
    batch_id: BatchId,
}

impl Batch {
    /// One event (`seq` 1, named `e`) from a fresh device of `app`.
    pub fn new(app: &str) -> Batch {
        Batch {
            app: AppId::new(app),
            device: DeviceId::random(),
            first_seq: 1,
            events: 1,
            name: "e".into(),
            ts_base: 0,
            user: None,
            batch_id: BatchId::new_v7(),
        }
    }

    /// From device `device`.
    pub fn device(mut self, device: DeviceId) -> Batch {
        self.device = device;
        self
    }

    /// `n` events.
    pub fn events(mut self, n: u64) -> Batch {
        self.events = n;
        self
    }

    /// Sequence numbers from `seq` on.
    pub fn first_seq(mut self, seq: u64) -> Batch {
        self.first_seq = seq;
        self
    }

    /// Events named `name`.
    pub fn name(mut self, name: &str) -> Batch {
        self.name = name.into();
        self
    }

    /// Event `seq` gets `ts_ms = base + seq` (the default `base` 0 gives `ts_ms = 1`
    /// for every event).
    pub fn ts_base(mut self, base: i64) -> Batch {
        self.ts_base = base;
        self
    }

    /// Events of user `user`.
    pub fn user(mut self, user: &str) -> Batch {
        self.user = Some(UserId::new(user));
        self
    }

    /// With batch id `id` (a retry of an earlier batch).
    pub fn batch_id(mut self, id: BatchId) -> Batch {
        self.batch_id = id;
        self
    }

    /// The batch.
    pub fn build(self) -> EventBatch {
        let ts_base = self.ts_base;
        EventBatch {
            anonymous_id: None,
            context: None,
            batch_id: self.batch_id,
            app_id: self.app,
            device_id: self.device,
            sdk: SdkInfo::default(),
            sent_at_ms: 0,
            attempt: 0,
            events: (self.first_seq..self.first_seq + self.events)
                .map(|seq| Event {
                    seq,
                    ts_ms: if ts_base == 0 {
                        1
                    } else {
                        ts_base + seq as i64
                    },
                    user_id: self.user.clone(),
                    session_id: None,
                    body: EventBody::Custom {
                        name: self.name.clone(),
                        props: Default::default(),
                    },
                })
                .collect(),
            health: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_has_gap_free_sequence_numbers_from_its_first() {
        let device = DeviceId::random();
        let b = Batch::new("demo")
            .device(device)
            .first_seq(5)
            .events(3)
            .build();
        assert_eq!(b.device_id, device);
        assert_eq!(
            b.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [5, 6, 7]
        );
        assert_eq!(batch("demo", 0).events.len(), 0);
    }
}
