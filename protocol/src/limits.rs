//! Limits and validation rules (docs/protocol.md §7) shared by the SDK (which refuses
//! bad input in `track()`), relays and backends (which reject batches that break them).
//!
//! Every rule exists once, here, and every reader calls it: the owned path
//! ([`validate_event`], [`validate_batch`], [`validate_received_batch`]) on decoded
//! values, and the relay's in-place reader ([`crate::IngestView`]) on the parts it
//! reads out of the bytes — a body's fields ([`BodyParts`], [`check_body`]), a
//! property map entry by entry ([`PropertiesCheck`]), an event ([`check_event`]) and a
//! batch event by event ([`BatchCheck`]). The order in which the rules are checked,
//! which decides the reason when several break (§7 "Order"), lives in those functions
//! too.
//!
//! **Sizes** are of the bytes as received (§7): an event's size is the length of its
//! encoded map as it arrived, unknown fields included. For values built locally (the
//! SDK's), that is their encoded length, which is what [`validate_event`] and
//! [`validate_batch`] measure; a receiver that decoded a batch measures the bytes it
//! received ([`crate::ReceivedIngest`], [`validate_received_batch`]).

use crate::event::{Event, EventBatch, EventBody};
use crate::reply::RejectReason;
use crate::value::{Properties, Value};
use crate::wire::ValueRef;

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
    /// Maximum size of one event: the bytes of its encoded map as received.
    pub max_event_bytes: usize,
    /// Maximum events in one batch.
    pub max_batch_events: usize,
    /// Maximum size of one batch: the sum of its events' sizes.
    pub max_batch_bytes: usize,
    /// Maximum bytes of a push token (`push_token` events, §8.3).
    pub max_push_token_len: usize,
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
            max_push_token_len: 1024,
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
    /// An event is over the size limit.
    #[error("event seq {seq} is {len} bytes, over the limit of {max}")]
    EventTooLarge {
        /// The event's sequence number.
        seq: u64,
        /// Its size.
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
    /// A batch's events are over the size limit.
    #[error("batch events are {len} bytes, over the limit of {max}")]
    BatchTooLarge {
        /// The sum of the events' sizes.
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
    /// True when a length, a count or a size is above its maximum (docs/protocol.md
    /// §7: `Rejected{too_large}`); false for every other rule (`invalid`).
    pub fn is_size(&self) -> bool {
        matches!(
            self,
            ValidationError::TooLong { .. }
                | ValidationError::TooManyProperties { .. }
                | ValidationError::EventTooLarge { .. }
                | ValidationError::BatchTooLarge { .. }
                | ValidationError::TooManyEvents { .. }
        )
    }

    /// The reason a receiver rejects a batch with (§7): `too_large` or `invalid`.
    pub fn reject_reason(&self) -> RejectReason {
        if self.is_size() {
            RejectReason::TooLarge
        } else {
            RejectReason::Invalid
        }
    }
}

type Verdict = Result<(), ValidationError>;

fn check_len(field: impl FnOnce() -> String, len: usize, max: usize) -> Verdict {
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
pub fn validate_name(field: &str, name: &str, limits: &Limits) -> Verdict {
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
pub fn validate_id(field: &str, id: &str, limits: &Limits) -> Verdict {
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

/// Checks a push token (§8.3): 1 to `max_push_token_len` bytes of printable ASCII
/// other than space (`!` to `~`) — FCM tokens and hex-encoded APNs tokens are.
pub fn validate_push_token(token: &str, limits: &Limits) -> Verdict {
    const FIELD: &str = "token";
    if token.is_empty() {
        return Err(ValidationError::Empty {
            field: FIELD.to_owned(),
        });
    }
    check_len(|| FIELD.to_owned(), token.len(), limits.max_push_token_len)?;
    if let Some(ch) = token.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(ValidationError::InvalidChar {
            field: FIELD.to_owned(),
            ch,
        });
    }
    Ok(())
}

/// Checks one property value.
pub fn validate_value(key: &str, value: &Value, limits: &Limits) -> Verdict {
    validate_value_ref(key, value.into(), limits)
}

/// Checks one property value read in place.
pub fn validate_value_ref(key: &str, value: ValueRef<'_>, limits: &Limits) -> Verdict {
    match value {
        ValueRef::Str(s) => check_len(
            || format!("property {key:?}"),
            s.len(),
            limits.max_string_len,
        ),
        ValueRef::Float(x) if !x.is_finite() => Err(ValidationError::NonFiniteFloat {
            key: key.to_owned(),
        }),
        _ => Ok(()),
    }
}

/// Which map of an event a [`PropertiesCheck`] checks (it names the field in errors).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PropertiesOf {
    /// A custom event's `props`.
    Custom,
    /// A purchase's `props`.
    Purchase,
    /// A user-property update's `set`.
    Set,
    /// A user-property update's `unset` (keys only).
    Unset,
}

impl PropertiesOf {
    /// The field's name in errors.
    pub fn field(self) -> &'static str {
        match self {
            PropertiesOf::Custom => "event",
            PropertiesOf::Purchase => "purchase",
            PropertiesOf::Set => "user properties",
            PropertiesOf::Unset => "user properties unset",
        }
    }
}

/// The checks of a property map (or of `unset`'s keys), fed one entry at a time in the
/// map's key order: the count first, then each key and its value; the first broken
/// rule is the verdict. [`validate_properties`] is this over a [`Properties`] map.
#[derive(Debug)]
pub struct PropertiesCheck<'l> {
    limits: &'l Limits,
    verdict: Verdict,
}

impl<'l> PropertiesCheck<'l> {
    /// Starts the checks of a map of `count` entries.
    pub fn new(of: PropertiesOf, count: usize, limits: &'l Limits) -> Self {
        Self::named(of.field(), count, limits)
    }

    fn named(field: &str, count: usize, limits: &'l Limits) -> Self {
        let verdict = if count > limits.max_properties {
            Err(ValidationError::TooManyProperties {
                field: field.to_owned(),
                count,
                max: limits.max_properties,
            })
        } else {
            Ok(())
        };
        PropertiesCheck { limits, verdict }
    }

    /// Checks the next entry: its key, then its value.
    pub fn entry(&mut self, key: &str, value: ValueRef<'_>) {
        if self.verdict.is_ok() {
            self.verdict = validate_name("property key", key, self.limits)
                .and_then(|()| validate_value_ref(key, value, self.limits));
        }
    }

    /// Checks the next key of a key list (`unset`).
    pub fn key(&mut self, key: &str) {
        if self.verdict.is_ok() {
            self.verdict = validate_name("property key", key, self.limits);
        }
    }

    /// The verdict.
    pub fn finish(self) -> Verdict {
        self.verdict
    }
}

/// Checks a property map: count, keys and values. `field` names the map in errors
/// (see [`PropertiesOf::field`]).
pub fn validate_properties(field: &str, props: &Properties, limits: &Limits) -> Verdict {
    let mut check = PropertiesCheck::named(field, props.len(), limits);
    for (key, value) in props {
        check.entry(key, value.into());
    }
    check.finish()
}

/// An event body's content as the rules of §7 see it: the fields they check, and the
/// verdicts of its property maps ([`PropertiesCheck`]). Built from an owned
/// [`EventBody`] by [`validate_body`], or by a reader from the bytes.
#[derive(Debug)]
#[non_exhaustive]
pub enum BodyParts<'a> {
    /// `custom`.
    Custom {
        /// `name`.
        name: &'a str,
        /// The verdict on `props`.
        props: Verdict,
    },
    /// `purchase`.
    Purchase {
        /// `product_id`.
        product_id: &'a str,
        /// `amount_micros`.
        amount_micros: i64,
        /// `currency`.
        currency: &'a str,
        /// `quantity`.
        quantity: u32,
        /// The verdict on `props`.
        props: Verdict,
    },
    /// `user_properties`.
    UserProperties {
        /// The verdict on `set`.
        set: Verdict,
        /// The verdict on `unset`.
        unset: Verdict,
    },
    /// `message_impression`.
    MessageImpression {
        /// `message_id`.
        message_id: &'a str,
        /// `action`.
        action: &'a str,
    },
    /// `exposure`.
    Exposure {
        /// `flag`.
        flag: &'a str,
        /// `variant`.
        variant: &'a str,
    },
    /// `alias`.
    Alias {
        /// `user_id` (the anonymous id is a UUID: nothing to check).
        user_id: &'a str,
    },
    /// `deletion_request`.
    DeletionRequest {
        /// `user_id`, when present (the ids are UUIDs: nothing else to check).
        user_id: Option<&'a str>,
    },
    /// `push_token`.
    PushToken {
        /// `token` (the provider and environment are open enums: nothing to check).
        token: &'a str,
    },
    /// `push_received` and `push_opened`.
    Push {
        /// `campaign_id`.
        campaign_id: &'a str,
        /// `action` (`push_opened` only, optional).
        action: Option<&'a str>,
    },
    /// `app_updated`.
    AppUpdated {
        /// `previous_version`, when present.
        previous_version: Option<&'a str>,
        /// `previous_build`, when present.
        previous_build: Option<&'a str>,
    },
    /// A kind with nothing to check: `session_start`, `session_end`, and kinds unknown
    /// to this version (§7: their content cannot be checked).
    Unchecked,
}

/// Checks a body's content (everything but size and seq), in the order of §7.
pub fn check_body(body: BodyParts<'_>, limits: &Limits) -> Verdict {
    match body {
        BodyParts::Custom { name, props } => {
            validate_name("event name", name, limits)?;
            props
        }
        BodyParts::Purchase {
            product_id,
            amount_micros,
            currency,
            quantity,
            props,
        } => {
            validate_id("product_id", product_id, limits)?;
            if amount_micros < 0 {
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
            if quantity == 0 {
                return Err(ValidationError::InvalidPurchase {
                    field: "quantity",
                    why: "must be at least 1",
                });
            }
            props
        }
        BodyParts::UserProperties { set, unset } => set.and(unset),
        BodyParts::MessageImpression { message_id, action } => {
            validate_id("message_id", message_id, limits)?;
            validate_id("action", action, limits)
        }
        BodyParts::Exposure { flag, variant } => {
            validate_id("flag", flag, limits)?;
            validate_id("variant", variant, limits)
        }
        BodyParts::Alias { user_id } => validate_id("user_id", user_id, limits),
        BodyParts::DeletionRequest { user_id } => match user_id {
            Some(user_id) => validate_id("user_id", user_id, limits),
            None => Ok(()),
        },
        BodyParts::PushToken { token } => validate_push_token(token, limits),
        BodyParts::Push {
            campaign_id,
            action,
        } => {
            validate_id("campaign_id", campaign_id, limits)?;
            action.map_or(Ok(()), |a| validate_id("action", a, limits))
        }
        BodyParts::AppUpdated {
            previous_version,
            previous_build,
        } => {
            if let Some(v) = previous_version {
                validate_id("previous_version", v, limits)?;
            }
            match previous_build {
                Some(b) => validate_id("previous_build", b, limits),
                None => Ok(()),
            }
        }
        BodyParts::Unchecked => Ok(()),
    }
}

/// Checks the kind-specific content of an event (everything but size and seq).
pub fn validate_body(body: &EventBody, limits: &Limits) -> Verdict {
    let parts = match body {
        EventBody::Custom { name, props } => BodyParts::Custom {
            name,
            props: validate_properties(PropertiesOf::Custom.field(), props, limits),
        },
        EventBody::Purchase {
            product_id,
            amount_micros,
            currency,
            quantity,
            props,
        } => BodyParts::Purchase {
            product_id,
            amount_micros: *amount_micros,
            currency,
            quantity: *quantity,
            props: validate_properties(PropertiesOf::Purchase.field(), props, limits),
        },
        EventBody::UserProperties { set, unset } => BodyParts::UserProperties {
            set: validate_properties(PropertiesOf::Set.field(), set, limits),
            unset: {
                let mut check = PropertiesCheck::new(PropertiesOf::Unset, unset.len(), limits);
                unset.iter().for_each(|k| check.key(k));
                check.finish()
            },
        },
        EventBody::MessageImpression { message_id, action } => {
            BodyParts::MessageImpression { message_id, action }
        }
        EventBody::Exposure { flag, variant, .. } => BodyParts::Exposure { flag, variant },
        EventBody::Alias { user_id, .. } => BodyParts::Alias {
            user_id: user_id.as_str(),
        },
        EventBody::DeletionRequest { user_id, .. } => BodyParts::DeletionRequest {
            user_id: user_id.as_ref().map(|u| u.as_str()),
        },
        EventBody::PushToken { token, .. } => BodyParts::PushToken { token },
        EventBody::PushReceived { campaign_id } => BodyParts::Push {
            campaign_id,
            action: None,
        },
        EventBody::PushOpened {
            campaign_id,
            action,
        } => BodyParts::Push {
            campaign_id,
            action: action.as_deref(),
        },
        EventBody::AppUpdated {
            previous_version,
            previous_build,
        } => BodyParts::AppUpdated {
            previous_version: previous_version.as_deref(),
            previous_build: previous_build.as_deref(),
        },
        EventBody::SessionStart
        | EventBody::SessionEnd { .. }
        | EventBody::AppInstalled
        | EventBody::AppOpened { .. }
        | EventBody::Unknown => BodyParts::Unchecked,
    };
    check_body(parts, limits)
}

/// Checks one event given its parts, in the order of §7: its `user_id`, its body's
/// content (`body`: [`check_body`]'s verdict), then its size. Returns the size.
pub fn check_event(
    seq: u64,
    user_id: Option<&str>,
    body: Verdict,
    size: usize,
    limits: &Limits,
) -> Result<usize, ValidationError> {
    if let Some(user) = user_id {
        validate_id("user_id", user, limits)?;
    }
    body?;
    if size > limits.max_event_bytes {
        return Err(ValidationError::EventTooLarge {
            seq,
            len: size,
            max: limits.max_event_bytes,
        });
    }
    Ok(size)
}

/// Checks a whole event as this crate encodes it, its size included. An SDK calls this
/// before accepting an event, so nothing invalid is ever stored.
pub fn validate_event(event: &Event, limits: &Limits) -> Verdict {
    let size = crate::wire::encoded_len(event);
    event_verdict(event, size, limits).map(|_| ())
}

fn event_verdict(event: &Event, size: usize, limits: &Limits) -> Result<usize, ValidationError> {
    check_event(
        event.seq,
        event.user_id.as_ref().map(|u| u.as_str()),
        validate_body(&event.body, limits),
        size,
        limits,
    )
}

/// The checks of a batch, fed one event at a time in array order (§7 "Order"): the
/// batch's `app_id` and event count first, then each event's `seq` and
/// [`check_event`], then the sum of the sizes. [`validate_batch`] is this over an
/// [`EventBatch`].
#[derive(Debug)]
pub struct BatchCheck<'l> {
    limits: &'l Limits,
    count: usize,
    prev: u64,
    total: usize,
    first_error: Option<ValidationError>,
    context: Verdict,
}

impl<'l> BatchCheck<'l> {
    /// Starts the checks of a batch of `count` events.
    pub fn new(count: usize, limits: &'l Limits) -> Self {
        BatchCheck {
            limits,
            count,
            prev: 0,
            total: 0,
            first_error: None,
            context: Ok(()),
        }
    }

    /// Adds the verdict on the batch's `context` ([`check_context`]),
    /// when it has one: checked right after the `app_id` (§7 "Order").
    pub fn context(&mut self, verdict: Verdict) {
        self.context = verdict;
    }

    /// Whether the next event's content can still change the verdict. When it cannot
    /// (an earlier event broke a rule, or the count alone decides), a reader may skip
    /// checking it.
    pub fn wants_events(&self) -> bool {
        self.first_error.is_none() && self.count > 0 && self.count <= self.limits.max_batch_events
    }

    /// Adds the next event: its `seq`, then `check` ([`check_event`]: its size, or
    /// the first rule it breaks), called only if it can change the verdict.
    pub fn event(&mut self, seq: u64, check: impl FnOnce() -> Result<usize, ValidationError>) {
        if !self.wants_events() {
            return;
        }
        if seq <= self.prev {
            self.first_error = Some(ValidationError::SequenceOrder {
                prev: self.prev,
                seq,
            });
            return;
        }
        self.prev = seq;
        match check() {
            Ok(size) => self.total = self.total.saturating_add(size),
            Err(e) => self.first_error = Some(e),
        }
    }

    /// The verdict, given the batch's `app_id`.
    pub fn finish(self, app_id: &str) -> Verdict {
        validate_id("app_id", app_id, self.limits)?;
        self.context?;
        if self.count == 0 {
            return Err(ValidationError::EmptyBatch);
        }
        if self.count > self.limits.max_batch_events {
            return Err(ValidationError::TooManyEvents {
                count: self.count,
                max: self.limits.max_batch_events,
            });
        }
        if let Some(e) = self.first_error {
            return Err(e);
        }
        if self.total > self.limits.max_batch_bytes {
            return Err(ValidationError::BatchTooLarge {
                len: self.total,
                max: self.limits.max_batch_bytes,
            });
        }
        Ok(())
    }
}

/// Checks a batch as this crate encodes it (each event's size is its encoded
/// length): app id, event count, sequence order, every event, and the total size.
/// Events of kinds unknown to this version pass the content rules; their size is
/// still bounded. For a batch decoded from received bytes, [`validate_received_batch`]
/// measures what was received.
pub fn validate_batch(batch: &EventBatch, limits: &Limits) -> Verdict {
    batch_verdict(batch, limits, |_, e| crate::wire::encoded_len(e))
}

/// Checks a decoded batch with the sizes of its events as received
/// (`event_sizes[i]` for `batch.events[i]`, e.g. from [`crate::ReceivedIngest`]). An
/// event without a size in `event_sizes` is measured as this crate encodes it.
pub fn validate_received_batch(
    batch: &EventBatch,
    event_sizes: &[usize],
    limits: &Limits,
) -> Verdict {
    batch_verdict(batch, limits, |i, e| {
        event_sizes
            .get(i)
            .copied()
            .unwrap_or_else(|| crate::wire::encoded_len(e))
    })
}

/// Checks a context's strings (§7): each present one is an id (1 to `max_id_len`
/// bytes, no control characters), in field order — `app_version`, `app_build`,
/// `os_name`, `os_version`, `device_model`, `locale`, `time_zone`, `sdk_version`,
/// `network`. The integers and the install id need no rule beyond their type.
pub fn check_context(
    parts: &crate::context::ContextParts<'_>,
    limits: &Limits,
) -> Result<(), ValidationError> {
    let fields = [
        ("context.app_version", parts.app_version),
        ("context.app_build", parts.app_build),
        ("context.os_name", parts.os_name),
        ("context.os_version", parts.os_version),
        ("context.device_model", parts.device_model),
        ("context.locale", parts.locale),
        ("context.time_zone", parts.time_zone),
        ("context.sdk_version", parts.sdk_version),
        ("context.network", parts.network),
    ];
    for (field, value) in fields {
        if let Some(v) = value {
            validate_id(field, v, limits)?;
        }
    }
    Ok(())
}

/// Checks a whole context ([`check_context`] on its parts).
pub fn validate_context(
    ctx: &crate::context::AppContext,
    limits: &Limits,
) -> Result<(), ValidationError> {
    check_context(&ctx.parts(), limits)
}

fn batch_verdict(
    batch: &EventBatch,
    limits: &Limits,
    size: impl Fn(usize, &Event) -> usize,
) -> Verdict {
    let mut check = BatchCheck::new(batch.events.len(), limits);
    if let Some(ctx) = &batch.context {
        check.context(validate_context(ctx, limits));
    }
    for (i, event) in batch.events.iter().enumerate() {
        check.event(event.seq, || event_verdict(event, size(i, event), limits));
    }
    check.finish(batch.app_id.as_str())
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
            anonymous_id: None,
            context: None,
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

    /// `push_token`: the token is 1 to 1024 bytes of printable ASCII without spaces,
    /// cleared or not. `push_received`/`push_opened`:
    /// `campaign_id`, then the optional `action`, each an id.
    #[test]
    fn push_bodies() {
        use crate::push_token::{PushEnvironment, PushProvider};
        let l = Limits::default();
        let with = |body: EventBody| Event {
            body,
            ..custom(1, "x", Properties::new())
        };
        let tok = |t: Option<&str>| {
            with(EventBody::PushToken {
                provider: PushProvider::Apns,
                environment: Some(PushEnvironment::Production),
                token: t.unwrap_or("c1eared").to_owned(),
                cleared: t.is_none(),
            })
        };
        let opened = |c: &str, a: Option<&str>| {
            with(EventBody::PushOpened {
                campaign_id: c.into(),
                action: a.map(str::to_owned),
            })
        };
        let field = |e: &Event| match validate_event(e, &l) {
            Err(ValidationError::Empty { field }) => format!("empty {field}"),
            Err(ValidationError::TooLong { field, .. }) => format!("long {field}"),
            Err(ValidationError::InvalidChar { field, .. }) => format!("char {field}"),
            other => format!("{other:?}"),
        };
        validate_event(&tok(Some(&"ab".repeat(32))), &l).unwrap();
        validate_event(&tok(Some(&"f".repeat(1024))), &l).unwrap();
        validate_event(&tok(None), &l).unwrap();
        assert_eq!(field(&tok(Some(""))), "empty token");
        assert_eq!(field(&tok(Some(&"f".repeat(1025)))), "long token");
        assert_eq!(field(&tok(Some("a b"))), "char token");
        assert_eq!(field(&tok(Some("a\u{7}"))), "char token");
        assert_eq!(
            validate_event(&tok(Some(&"f".repeat(1025))), &l)
                .unwrap_err()
                .reject_reason(),
            RejectReason::TooLarge
        );
        validate_event(&opened("spring", None), &l).unwrap();
        validate_event(&opened("spring", Some("reply")), &l).unwrap();
        assert_eq!(field(&opened("", Some(""))), "empty campaign_id");
        assert_eq!(field(&opened("c", Some(""))), "empty action");
        assert_eq!(field(&opened(&"c".repeat(257), None)), "long campaign_id");
        assert_eq!(
            field(&with(EventBody::PushReceived {
                campaign_id: "a\nb".into()
            })),
            "char campaign_id"
        );
    }

    /// `exposure`: `flag`, then `variant`, each an id; the reason and the version are
    /// not checked (an open enum, any `u64`).
    #[test]
    fn exposures() {
        let l = Limits::default();
        let x = |flag: &str, variant: &str| Event {
            body: EventBody::Exposure {
                flag: flag.into(),
                variant: variant.into(),
                config_version: u64::MAX,
                reason: Some(crate::rollout::FlagReason::Other("from a newer sdk".into())),
            },
            ..custom(1, "x", Properties::new())
        };
        validate_event(&x("new_checkout", "on"), &l).unwrap();
        let field = |e: &Event| match validate_event(e, &l) {
            Err(ValidationError::Empty { field }) => format!("empty {field}"),
            Err(ValidationError::TooLong { field, .. }) => format!("long {field}"),
            Err(ValidationError::InvalidChar { field, .. }) => format!("char {field}"),
            other => format!("{other:?}"),
        };
        assert_eq!(field(&x("", "")), "empty flag");
        assert_eq!(field(&x("f", "")), "empty variant");
        assert_eq!(field(&x(&"f".repeat(257), "on")), "long flag");
        assert_eq!(field(&x("f", &"v".repeat(257))), "long variant");
        assert_eq!(field(&x("f", "a\u{7}")), "char variant");
        assert_eq!(
            validate_event(&x("f", &"v".repeat(257)), &l)
                .unwrap_err()
                .reject_reason(),
            RejectReason::TooLarge
        );
    }

    /// `alias`: its `user_id` is an id; the anonymous id is a UUID (nothing to check).
    #[test]
    fn aliases() {
        let l = Limits::default();
        let x = |user: &str| Event {
            body: EventBody::Alias {
                anonymous_id: crate::AnonymousId::from_bytes([1; 16]),
                user_id: crate::UserId::new(user),
            },
            ..custom(1, "x", Properties::new())
        };
        validate_event(&x("alice"), &l).unwrap();
        let field = |e: &Event| match validate_event(e, &l) {
            Err(ValidationError::Empty { field }) => format!("empty {field}"),
            Err(ValidationError::TooLong { field, .. }) => format!("long {field}"),
            Err(ValidationError::InvalidChar { field, .. }) => format!("char {field}"),
            other => format!("{other:?}"),
        };
        assert_eq!(field(&x("")), "empty user_id");
        assert_eq!(field(&x(&"u".repeat(257))), "long user_id");
        assert_eq!(field(&x("a\u{7}")), "char user_id");
        assert_eq!(
            validate_event(&x(&"u".repeat(257)), &l)
                .unwrap_err()
                .reject_reason(),
            RejectReason::TooLarge
        );
    }

    /// `deletion_request`: its `user_id`, when present, is an id; the ids are UUIDs.
    #[test]
    fn deletion_requests() {
        let l = Limits::default();
        let x = |user: Option<&str>| Event {
            body: EventBody::DeletionRequest {
                device_id: DeviceId::from_bytes([1; 16]),
                user_id: user.map(UserId::new),
                anonymous_id: None,
            },
            ..custom(1, "x", Properties::new())
        };
        validate_event(&x(None), &l).unwrap();
        validate_event(&x(Some("alice")), &l).unwrap();
        assert!(matches!(
            validate_event(&x(Some("")), &l),
            Err(ValidationError::Empty { field }) if field == "user_id"
        ));
        assert_eq!(
            validate_event(&x(Some(&"u".repeat(257))), &l)
                .unwrap_err()
                .reject_reason(),
            RejectReason::TooLarge
        );
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

    #[test]
    fn every_string_is_an_id_checked_in_field_order() {
        let l = Limits::default();
        let mut c = crate::context::AppContext {
            app_version: Some("1.0".into()),
            locale: Some("en-GB".into()),
            network: Some(crate::context::NetworkType::Other("satellite".into())),
            screen_width: Some(1080),
            ..crate::context::AppContext::default()
        };
        validate_context(&c, &l).unwrap();
        c.locale = Some("x".repeat(257));
        c.os_name = Some(String::new());
        let err = validate_context(&c, &l).unwrap_err();
        assert!(
            matches!(&err, ValidationError::Empty { field } if field == "context.os_name"),
            "{err:?}"
        );
        c.os_name = None;
        assert!(matches!(
            validate_context(&c, &l).unwrap_err(),
            ValidationError::TooLong { field, .. } if field == "context.locale"
        ));
        c.locale = None;
        c.network = Some(crate::context::NetworkType::Other("a\u{7}".into()));
        assert!(matches!(
            validate_context(&c, &l).unwrap_err(),
            ValidationError::InvalidChar { field, .. } if field == "context.network"
        ));
    }
}
