//! Limits and validation rules shared by the SDK (which refuses bad input in `track()`)
//! and the relay and backend (which reject batches that break them).

use crate::codec::encoded_len;
use crate::event::{Event, EventBatch, EventBody};
use crate::value::{Properties, Value};

/// Largest payload of a device ↔ relay frame after decompression: one batch at
/// [`Limits::max_batch_bytes`] plus room for the request envelope.
pub const MAX_DEVICE_PAYLOAD: usize = 1024 * 1024 + 16 * 1024;
/// Largest payload of a relay ↔ backend frame after decompression.
pub const MAX_BACKEND_PAYLOAD: usize = 64 * 1024 * 1024;

/// The limits. [`Limits::default`] is the normative set of protocol version 1; a
/// deployment may only make them stricter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Maximum bytes of an event name or a property key.
    pub max_name_len: usize,
    /// Maximum properties on one event (or set/unset entries in one user-property
    /// update).
    pub max_properties: usize,
    /// Maximum bytes of a string property value.
    pub max_string_len: usize,
    /// Maximum bytes of an id (app, user, product, message).
    pub max_id_len: usize,
    /// Maximum encoded bytes of one event.
    pub max_event_bytes: usize,
    /// Maximum events in one batch.
    pub max_batch_events: usize,
    /// Maximum encoded bytes of one batch.
    pub max_batch_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_name_len: 128,
            max_properties: 64,
            max_string_len: 1024,
            max_id_len: 256,
            max_event_bytes: 32 * 1024,
            max_batch_events: 1000,
            max_batch_bytes: 1024 * 1024,
        }
    }
}

/// A broken validation rule. The `Display` text names the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValidationError {
    /// A name or key is empty.
    #[error("{field} is empty")]
    Empty {
        /// The field, e.g. `event name` or `property key "x"`.
        field: String,
    },
    /// A name, key, id or string is too long.
    #[error("{field} is {len} bytes, over the limit of {max}")]
    TooLong {
        /// The field.
        field: String,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A name or key has a character outside the allowed set.
    #[error("{field} has invalid character {ch:?}: use letters, digits, '_', '-', '.', ':' and inner spaces, starting with a letter or digit")]
    InvalidChar {
        /// The field.
        field: String,
        /// The first offending character.
        ch: char,
    },
    /// Too many properties.
    #[error("{field} has {count} properties, over the limit of {max}")]
    TooManyProperties {
        /// The field.
        field: String,
        /// How many.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A float property is NaN or infinite.
    #[error("property {key:?} is not a finite number")]
    NonFiniteFloat {
        /// The property key.
        key: String,
    },
    /// A purchase field is out of range.
    #[error("purchase {field} is invalid: {why}")]
    InvalidPurchase {
        /// `currency`, `quantity` or `amount_micros`.
        field: &'static str,
        /// What is wrong.
        why: &'static str,
    },
    /// An encoded event is over the size limit.
    #[error("event seq {seq} encodes to {len} bytes, over the limit of {max}")]
    EventTooLarge {
        /// The event's sequence number.
        seq: u64,
        /// Encoded size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A batch has no events.
    #[error("batch has no events")]
    EmptyBatch,
    /// A batch has too many events.
    #[error("batch has {count} events, over the limit of {max}")]
    TooManyEvents {
        /// How many.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// An encoded batch is over the size limit.
    #[error("batch encodes to {len} bytes, over the limit of {max}")]
    BatchTooLarge {
        /// Encoded size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Sequence numbers in a batch are not strictly increasing, or one is zero.
    #[error("event seq {seq} follows seq {prev}: sequence numbers must start at 1 and strictly increase")]
    SequenceOrder {
        /// The previous seq.
        prev: u64,
        /// The offending seq.
        seq: u64,
    },
    /// An event of an unknown kind was submitted where kinds must be known.
    #[error("event seq {seq} has a kind unknown to this version")]
    UnknownEventKind {
        /// The event's sequence number.
        seq: u64,
    },
}

impl ValidationError {
    /// True when the error is about size (maps to `Rejected{too_large}`).
    pub fn is_size(&self) -> bool {
        matches!(
            self,
            ValidationError::EventTooLarge { .. }
                | ValidationError::BatchTooLarge { .. }
                | ValidationError::TooManyEvents { .. }
        )
    }
}

fn check_len(
    field: impl FnOnce() -> String,
    len: usize,
    max: usize,
) -> Result<(), ValidationError> {
    if len > max {
        return Err(ValidationError::TooLong {
            field: field(),
            len,
            max,
        });
    }
    Ok(())
}

/// Checks an event name or property key: 1 to `max_name_len` bytes of ASCII letters,
/// digits, `_`, `-`, `.`, `:` and spaces; starting with a letter or digit; not ending
/// with a space.
pub fn validate_name(field: &str, name: &str, limits: &Limits) -> Result<(), ValidationError> {
    if name.is_empty() {
        return Err(ValidationError::Empty {
            field: field.to_owned(),
        });
    }
    check_len(|| field.to_owned(), name.len(), limits.max_name_len)?;
    // Byte by byte: every allowed character is ASCII, so the first byte that is not
    // allowed starts the offending character (and byte index 0 is character index 0).
    for (i, b) in name.bytes().enumerate() {
        let ok =
            b.is_ascii_alphanumeric() || (i > 0 && matches!(b, b'_' | b'-' | b'.' | b':' | b' '));
        if !ok {
            return Err(ValidationError::InvalidChar {
                field: field.to_owned(),
                ch: name[i..]
                    .chars()
                    .next()
                    .unwrap_or(char::REPLACEMENT_CHARACTER),
            });
        }
    }
    if name.ends_with(' ') {
        return Err(ValidationError::InvalidChar {
            field: field.to_owned(),
            ch: ' ',
        });
    }
    Ok(())
}

/// Checks an identifier (app, user, product, message id): 1 to `max_id_len` bytes with
/// no control characters.
pub fn validate_id(field: &str, id: &str, limits: &Limits) -> Result<(), ValidationError> {
    if id.is_empty() {
        return Err(ValidationError::Empty {
            field: field.to_owned(),
        });
    }
    check_len(|| field.to_owned(), id.len(), limits.max_id_len)?;
    if let Some(ch) = id.chars().find(|c| c.is_control()) {
        return Err(ValidationError::InvalidChar {
            field: field.to_owned(),
            ch,
        });
    }
    Ok(())
}

/// Checks one property value.
pub fn validate_value(key: &str, value: &Value, limits: &Limits) -> Result<(), ValidationError> {
    match value {
        Value::String(s) => check_len(
            || format!("property {key:?}"),
            s.len(),
            limits.max_string_len,
        ),
        Value::Float(x) if !x.is_finite() => Err(ValidationError::NonFiniteFloat {
            key: key.to_owned(),
        }),
        _ => Ok(()),
    }
}

/// Checks a property map: count, keys and values.
pub fn validate_properties(
    field: &str,
    props: &Properties,
    limits: &Limits,
) -> Result<(), ValidationError> {
    if props.len() > limits.max_properties {
        return Err(ValidationError::TooManyProperties {
            field: field.to_owned(),
            count: props.len(),
            max: limits.max_properties,
        });
    }
    for (key, value) in props {
        validate_name("property key", key, limits)?;
        validate_value(key, value, limits)?;
    }
    Ok(())
}

/// Checks the kind-specific content of an event (everything but size and seq).
pub fn validate_body(body: &EventBody, limits: &Limits) -> Result<(), ValidationError> {
    match body {
        EventBody::Custom { name, props } => {
            validate_name("event name", name, limits)?;
            validate_properties("event", props, limits)
        }
        EventBody::SessionStart | EventBody::SessionEnd { .. } => Ok(()),
        EventBody::Purchase {
            product_id,
            amount_micros,
            currency,
            quantity,
            props,
        } => {
            validate_id("product_id", product_id, limits)?;
            if *amount_micros < 0 {
                return Err(ValidationError::InvalidPurchase {
                    field: "amount_micros",
                    why: "must not be negative",
                });
            }
            if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(ValidationError::InvalidPurchase {
                    field: "currency",
                    why: "must be a three-letter upper-case ISO 4217 code",
                });
            }
            if *quantity == 0 {
                return Err(ValidationError::InvalidPurchase {
                    field: "quantity",
                    why: "must be at least 1",
                });
            }
            validate_properties("purchase", props, limits)
        }
        EventBody::UserProperties { set, unset } => {
            validate_properties("user properties", set, limits)?;
            if unset.len() > limits.max_properties {
                return Err(ValidationError::TooManyProperties {
                    field: "user properties unset".to_owned(),
                    count: unset.len(),
                    max: limits.max_properties,
                });
            }
            unset
                .iter()
                .try_for_each(|k| validate_name("property key", k, limits))
        }
        EventBody::MessageImpression { message_id, action } => {
            validate_id("message_id", message_id, limits)?;
            validate_id("action", action, limits)
        }
        EventBody::Unknown => Ok(()),
    }
}

/// Checks a whole event, including its encoded size. An SDK calls this before
/// accepting an event, so nothing invalid is ever stored.
pub fn validate_event(event: &Event, limits: &Limits) -> Result<(), ValidationError> {
    check_event(event, limits).map(|_| ())
}

/// Validates an event and returns its encoded length.
fn check_event(event: &Event, limits: &Limits) -> Result<usize, ValidationError> {
    if let Some(user) = &event.user_id {
        validate_id("user_id", user.as_str(), limits)?;
    }
    validate_body(&event.body, limits)?;
    let len = encoded_len(event).unwrap_or(usize::MAX);
    if len > limits.max_event_bytes {
        return Err(ValidationError::EventTooLarge {
            seq: event.seq,
            len,
            max: limits.max_event_bytes,
        });
    }
    Ok(len)
}

/// Checks a batch as a relay or backend receives it: app id, event count, sequence
/// order, every event, and the encoded size. Events of kinds unknown to this version
/// pass (a newer SDK may send them); their size is still bounded.
pub fn validate_batch(batch: &EventBatch, limits: &Limits) -> Result<(), ValidationError> {
    validate_id("app_id", batch.app_id.as_str(), limits)?;
    if batch.events.is_empty() {
        return Err(ValidationError::EmptyBatch);
    }
    if batch.events.len() > limits.max_batch_events {
        return Err(ValidationError::TooManyEvents {
            count: batch.events.len(),
            max: limits.max_batch_events,
        });
    }
    let mut prev = 0u64;
    let mut total = 0usize;
    for event in &batch.events {
        if event.seq <= prev {
            return Err(ValidationError::SequenceOrder {
                prev,
                seq: event.seq,
            });
        }
        prev = event.seq;
        total = total.saturating_add(check_event(event, limits)?);
    }
    if total > limits.max_batch_bytes {
        return Err(ValidationError::BatchTooLarge {
            len: total,
            max: limits.max_batch_bytes,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{AppId, BatchId, DeviceId, UserId};
    use crate::SdkInfo;

    fn custom(seq: u64, name: &str, props: Properties) -> Event {
        Event {
            seq,
            ts_ms: 0,
            user_id: None,
            session_id: None,
            body: EventBody::Custom {
                name: name.into(),
                props,
            },
        }
    }

    fn batch(events: Vec<Event>) -> EventBatch {
        EventBatch {
            batch_id: BatchId::from_bytes([0; 16]),
            app_id: AppId::new("app"),
            device_id: DeviceId::from_bytes([1; 16]),
            sdk: SdkInfo::default(),
            sent_at_ms: 0,
            attempt: 0,
            events,
            health: Default::default(),
        }
    }

    #[test]
    fn names() {
        let l = Limits::default();
        for ok in ["a", "Added to Cart", "screen:home", "v1.2-beta_x", "9lives"] {
            validate_name("event name", ok, &l).unwrap();
        }
        for (bad, expect_char) in [
            (" lead", Some(' ')),
            ("trail ", Some(' ')),
            ("_x", Some('_')),
            ("tab\there", Some('\t')),
            ("é", Some('é')),
            ("", None),
        ] {
            let err = validate_name("event name", bad, &l).unwrap_err();
            match expect_char {
                Some(ch) => assert_eq!(
                    err,
                    ValidationError::InvalidChar {
                        field: "event name".into(),
                        ch
                    }
                ),
                None => assert!(matches!(err, ValidationError::Empty { .. })),
            }
            assert!(err.to_string().contains("event name"), "{err}");
        }
        let long = "a".repeat(129);
        assert!(matches!(
            validate_name("event name", &long, &l),
            Err(ValidationError::TooLong {
                len: 129,
                max: 128,
                ..
            })
        ));
    }

    #[test]
    fn properties() {
        let l = Limits::default();
        let many: Properties = (0..65).map(|i| (format!("k{i}"), Value::Int(i))).collect();
        assert!(matches!(
            validate_event(&custom(1, "e", many), &l),
            Err(ValidationError::TooManyProperties { count: 65, .. })
        ));
        let nan: Properties = [("x".to_string(), Value::Float(f64::NAN))].into();
        assert_eq!(
            validate_event(&custom(1, "e", nan), &l),
            Err(ValidationError::NonFiniteFloat { key: "x".into() })
        );
        let long: Properties = [("x".to_string(), Value::from("y".repeat(1025)))].into();
        assert!(matches!(
            validate_event(&custom(1, "e", long), &l),
            Err(ValidationError::TooLong { .. })
        ));
        let bad_key: Properties = [("bad key!".to_string(), Value::Int(1))].into();
        assert!(validate_event(&custom(1, "e", bad_key), &l).is_err());
    }

    #[test]
    fn event_size() {
        let l = Limits::default();
        // 40 properties of 1000 bytes each: every field is valid, the event is too big.
        let big: Properties = (0..40)
            .map(|i| (format!("k{i}"), Value::from("v".repeat(1000))))
            .collect();
        assert!(matches!(
            validate_event(&custom(9, "e", big), &l),
            Err(ValidationError::EventTooLarge { seq: 9, .. })
        ));
    }

    #[test]
    fn purchases_and_ids() {
        let l = Limits::default();
        let p = |currency: &str, quantity, amount_micros| Event {
            body: EventBody::Purchase {
                product_id: "sku".into(),
                amount_micros,
                currency: currency.into(),
                quantity,
                props: Properties::new(),
            },
            ..custom(1, "x", Properties::new())
        };
        validate_event(&p("USD", 1, 0), &l).unwrap();
        assert!(validate_event(&p("usd", 1, 0), &l).is_err());
        assert!(validate_event(&p("USD", 0, 0), &l).is_err());
        assert!(validate_event(&p("USD", 1, -1), &l).is_err());
        let mut e = custom(1, "x", Properties::new());
        e.user_id = Some(UserId::new("u".repeat(257)));
        assert!(matches!(
            validate_event(&e, &l),
            Err(ValidationError::TooLong { .. })
        ));
        e.user_id = Some(UserId::new("a\nb"));
        assert!(matches!(
            validate_event(&e, &l),
            Err(ValidationError::InvalidChar { .. })
        ));
    }

    #[test]
    fn batches() {
        let l = Limits::default();
        let e = |seq| custom(seq, "e", Properties::new());
        validate_batch(&batch(vec![e(1), e(2), e(5)]), &l).unwrap();
        assert_eq!(
            validate_batch(&batch(vec![]), &l),
            Err(ValidationError::EmptyBatch)
        );
        assert_eq!(
            validate_batch(&batch(vec![e(2), e(2)]), &l),
            Err(ValidationError::SequenceOrder { prev: 2, seq: 2 })
        );
        assert_eq!(
            validate_batch(&batch(vec![e(0)]), &l),
            Err(ValidationError::SequenceOrder { prev: 0, seq: 0 })
        );
        let many: Vec<Event> = (1..=1001).map(e).collect();
        let err = validate_batch(&batch(many), &l).unwrap_err();
        assert!(err.is_size());
        let tight = Limits {
            max_batch_bytes: 100,
            ..Limits::default()
        };
        let err = validate_batch(&batch((1..=20).map(e).collect()), &tight).unwrap_err();
        assert!(matches!(
            err,
            ValidationError::BatchTooLarge { max: 100, .. }
        ));
    }
}
