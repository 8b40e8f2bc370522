//! The event payload of the `track()` hot path ([`crate::fast`]): the Kotlin layer
//! encodes the event name and properties into one byte buffer.
//!
//! Payload (little-endian): `u32 len, name` then `u32 count` then per property
//! `u32 len, key, u8 tag, value` with tag 0 text (`u32 len, utf-8`), 1 integer (`i64`),
//! 2 real (`f64`), 3 boolean (`u8`), 4 unsupported (`u32 len, type name`).

use tern_sdk::{Call, Properties, Value};

use crate::error::TernError;

/// Reads the payload described in the module docs.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn text(&mut self) -> Option<String> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
}

/// The `track` call of a payload, or why it is refused.
pub(crate) fn decode(payload: &[u8]) -> Result<Call, TernError> {
    let malformed = || TernError::InvalidEvent {
        field: "event".into(),
        reason: "malformed event payload from the Kotlin layer".into(),
    };
    let mut r = Reader(payload);
    let name = r.text().ok_or_else(malformed)?;
    let count = r.u32().ok_or_else(malformed)?;
    let mut props = Properties::new();
    for _ in 0..count {
        let key = r.text().ok_or_else(malformed)?;
        let tag = r.take(1).ok_or_else(malformed)?[0];
        let value = match tag {
            0 => Value::String(r.text().ok_or_else(malformed)?),
            1 => Value::Int(r.u64().ok_or_else(malformed)? as i64),
            2 => Value::Float(f64::from_bits(r.u64().ok_or_else(malformed)?)),
            3 => Value::Bool(r.take(1).ok_or_else(malformed)?[0] != 0),
            4 => {
                let type_name = r.text().ok_or_else(malformed)?;
                return Err(TernError::InvalidEvent {
                    field: format!("property {key:?}"),
                    reason: format!(
                        "unsupported type {type_name}: use text, integer, number or boolean"
                    ),
                });
            }
            _ => return Err(malformed()),
        };
        props.insert(key, value);
    }
    if !r.0.is_empty() {
        return Err(malformed());
    }
    Ok(Call::Track { name, props })
}
