//! Writes `tests/fixtures/future_schema_v3.db`: a device database as a hypothetical
//! future SDK (schema 3) would leave it — extra columns and tables, `user_version` 3,
//! `min_reader_version` 1 — holding three queued events, the first two in a batch.
//! Run: `cargo run -p tern-sdk --example make_future_fixture`. The file is checked in;
//! regenerate only when the fixture itself must change.

use std::path::Path;

use rusqlite::{params, Connection};
use tern_protocol::{BatchId, Event, EventBody, SessionId, UserId};

fn main() -> anyhow::Result<()> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/future_schema_v3.db");
    let _ = std::fs::remove_file(&path);
    let conn = Connection::open(&path)?;
    conn.execute_batch(include_str!("../tests/fixtures/future_schema_v3.sql"))?;
    let batch = BatchId::parse("0192f3a0-7b1c-7cde-8f00-0123456789ab")?;
    for seq in 1..=3u64 {
        let event = Event {
            seq,
            ts_ms: 1_764_000_000_000 + seq as i64,
            user_id: Some(UserId::new("future-user")),
            session_id: Some(SessionId(1)),
            body: EventBody::Custom {
                name: format!("future event {seq}"),
                props: Default::default(),
            },
        };
        let payload = tern_protocol::encode_payload(&event)?;
        let batch_id = (seq <= 2).then(|| batch.as_uuid().as_bytes().to_vec());
        conn.execute(
            "INSERT INTO events (seq, recorded_ms, user_id, bytes, crc, payload, batch_id, priority, attrs)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 5, x'00')",
            params![seq as i64, event.ts_ms, "future-user", payload.len() as i64, crc32fast::hash(&payload), payload, batch_id],
        )?;
    }
    conn.execute(
        "INSERT INTO batches (batch_id, first_seq, last_seq, events, bytes, created_ms, attempts, compression)
         VALUES (?1, 1, 2, 2, 100, 1764000000000, 1, 'zstd')",
        [batch.as_uuid().as_bytes().as_slice()],
    )?;
    conn.execute_batch("PRAGMA journal_mode = DELETE; VACUUM;")?;
    println!("wrote {}", path.display());
    Ok(())
}
