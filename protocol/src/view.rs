//! Borrowed, allocation-free reading of an `IngestRequest` payload: the relay's fast
//! path.
//!
//! [`IngestView::parse`] walks the MessagePack bytes of an `IngestRequest` once, without
//! building owned values, and returns what a relay needs to decide about the request:
//! the credentials and the batch's app, id, device, event count and routing user as
//! slices of the input, the batch's own bytes (to forward or spool unchanged), and the
//! verdict of the rules of docs/protocol.md §7 on the batch — the same
//! [`ValidationError`], with the same text, for the same first broken rule, as
//! [`crate::ReceivedIngest::validate`] gives on the same bytes. The rules are not
//! restated here: the view reads the parts each rule looks at and calls the rule in
//! [`crate::limits`] ([`BatchCheck`], [`check_event`], [`check_body`],
//! [`PropertiesCheck`]); sizes are the bytes as received, the event's map as it sits
//! in the payload.
//!
//! The fast path reads the encoding this crate's encoder writes, and what a newer peer
//! or another encoder may send within §4: maps with string keys in any order, unknown
//! keys at every level (skipped, whatever their value), unknown event kinds, `nil` for
//! optional fields and fields with a default, the minimal or a wider integer encoding,
//! `float 32` or `float 64`, binary or text UUIDs. It reads through the same
//! MessagePack reader as the owned decoder ([`crate::wire::Reader`]). Everything else —
//! the event kind tag not first in the body, property keys not in strictly ascending
//! order, and any malformed or truncated input — is answered
//! [`ViewError::Unsupported`]: the caller then decodes the payload with the owned types
//! ([`crate::ReceivedIngest::decode`]), which either read it or report the exact
//! decode error. So for every payload, the pair "fast path, else owned path" reaches
//! the decision the owned path alone reaches, and a payload the fast path accepts is
//! one the owned decoder accepts with the same content (the crate's tests and the
//! `ingest_view` fuzz target check both).

use std::borrow::Cow;

use crate::context::ContextParts;
use crate::event::SdkHealth;
use crate::ids::{BatchId, DeviceId};
use crate::limits::{
    check_body, check_context, check_event, BatchCheck, BodyParts, Limits, PropertiesCheck,
    PropertiesOf, ValidationError,
};
use crate::wire::{Decode, ReadError, ReadErrorKind, Reader};

/// Why [`IngestView::parse`] could not read a payload. Not a verdict on the payload:
/// decode it with the owned types to know whether it is valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ViewError {
    /// The payload is malformed, or uses an encoding the fast path does not read.
    #[error("not read by the borrowed fast path at byte {offset}: {what}")]
    Unsupported {
        /// Where in the payload the reader stopped.
        offset: usize,
        /// What it found there.
        what: &'static str,
    },
}

type Result<T, E = ViewError> = std::result::Result<T, E>;
type Verdict = std::result::Result<(), ValidationError>;

/// An `IngestRequest` read in place. See the [module docs](self).
#[derive(Debug, Clone, PartialEq)]
pub struct IngestView<'a> {
    /// `auth.app_id`.
    pub auth_app_id: &'a str,
    /// `auth.key`. Never log it.
    pub auth_key: &'a str,
    /// The batch.
    pub batch: BatchView<'a>,
}

/// An `EventBatch` read in place, with its validation result.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchView<'a> {
    /// The batch's MessagePack value exactly as received (unknown fields included).
    pub bytes: &'a [u8],
    /// Where [`BatchView::bytes`] starts in the parsed payload.
    pub offset: usize,
    /// `batch_id`.
    pub batch_id: BatchId,
    /// `app_id`.
    pub app_id: &'a str,
    /// `device_id`.
    pub device_id: DeviceId,
    /// Number of events.
    pub events: usize,
    /// The first event's `user_id`, if it has one.
    pub first_user_id: Option<&'a str>,
    /// The first and the last event's `seq` (`None` for a batch without events).
    pub seq_range: Option<(u64, u64)>,
    /// Sum of the events' sizes as received (what §7 bounds by `max_batch_bytes`).
    pub events_encoded_len: usize,
    validation: Verdict,
}

impl<'a> BatchView<'a> {
    /// Reads one `EventBatch` value (as the relay forwards and spools it: the batch's
    /// MessagePack map, nothing before or after it) in place and validates it against
    /// `limits`.
    pub fn parse(bytes: &'a [u8], limits: &Limits) -> Result<BatchView<'a>> {
        let mut r = Reader::new(bytes);
        let batch = read_batch(&mut r, limits)?;
        if r.position() != bytes.len() {
            return r.unsupported("trailing bytes");
        }
        Ok(batch)
    }

    /// The verdict of §7 on this batch, with the limits given to
    /// [`IngestView::parse`].
    pub fn validation(&self) -> std::result::Result<(), &ValidationError> {
        self.validation.as_ref().map(|_| ())
    }

    /// The batch's routing key ([`crate::routing::routing_key`]).
    pub fn routing_key(&self) -> Cow<'_, str> {
        crate::routing::routing_key(self.first_user_id, &self.device_id)
    }
}

impl<'a> IngestView<'a> {
    /// Reads an `IngestRequest` payload (MessagePack, after decompression) and
    /// validates its batch against `limits`. Allocates nothing unless the batch breaks
    /// a rule (the error's text).
    pub fn parse(payload: &'a [u8], limits: &Limits) -> Result<IngestView<'a>> {
        let mut r = Reader::new(payload);
        let n = r.map_len()?;
        let (mut auth, mut batch) = (None, None);
        for _ in 0..n {
            match r.key()? {
                b"auth" => set_once(&mut r, &mut auth, read_auth)?,
                b"batch" => set_once(&mut r, &mut batch, |r| read_batch(r, limits))?,
                _ => r.skip()?,
            }
        }
        if r.position() != payload.len() {
            return r.unsupported("trailing bytes");
        }
        let (Some((auth_app_id, auth_key)), Some(batch)) = (auth, batch) else {
            return r.unsupported("missing field");
        };
        Ok(IngestView {
            auth_app_id,
            auth_key,
            batch,
        })
    }
}

fn read_auth<'a>(r: &mut Reader<'a>) -> Result<(&'a str, &'a str)> {
    let n = r.map_len()?;
    let (mut app, mut key) = (None, None);
    for _ in 0..n {
        match r.key()? {
            b"app_id" => set_once(r, &mut app, Reader::str)?,
            b"key" => set_once(r, &mut key, Reader::str)?,
            _ => r.skip()?,
        }
    }
    match (app, key) {
        (Some(a), Some(k)) => Ok((a, k)),
        _ => r.unsupported("missing field"),
    }
}

/// Reads a required field's value into `slot`, refusing a second occurrence.
fn set_once<'a, T, E>(
    r: &mut Reader<'a>,
    slot: &mut Option<T>,
    read: impl FnOnce(&mut Reader<'a>) -> std::result::Result<T, E>,
) -> Result<()>
where
    ViewError: From<E>,
{
    if slot.is_some() {
        return r.unsupported("duplicate field");
    }
    *slot = Some(read(r)?);
    Ok(())
}

/// Reads an optional field (or one with a default) into `slot`: `nil` is the field
/// absent (§4), but still an occurrence (a second one is a duplicate).
fn set_opt<'a, T, E>(
    r: &mut Reader<'a>,
    slot: &mut Option<Option<T>>,
    read: impl FnOnce(&mut Reader<'a>) -> std::result::Result<T, E>,
) -> Result<()>
where
    ViewError: From<E>,
{
    set_once::<_, ViewError>(r, slot, |r: &mut Reader<'a>| -> Result<Option<T>> {
        Ok(if r.nil()? { None } else { Some(read(r)?) })
    })
}

fn read_batch<'a>(r: &mut Reader<'a>, limits: &Limits) -> Result<BatchView<'a>> {
    let start = r.position();
    let n = r.map_len()?;
    let mut batch_id = None;
    let mut app_id = None;
    let mut device_id = None;
    let mut sdk = None;
    let mut sent_at = None;
    let mut attempt = None;
    let mut health = None;
    let mut anonymous_id: Option<Option<[u8; 16]>> = None;
    let mut context: Option<Option<ContextParts<'a>>> = None;
    let mut events: Option<EventsSummary<'a, '_>> = None;
    for _ in 0..n {
        match r.key()? {
            b"batch_id" => set_once(r, &mut batch_id, Reader::uuid)?,
            b"app_id" => set_once(r, &mut app_id, Reader::str)?,
            b"device_id" => set_once(r, &mut device_id, Reader::uuid)?,
            b"sdk" => set_once(r, &mut sdk, read_sdk)?,
            b"sent_at_ms" => set_once(r, &mut sent_at, Reader::i64)?,
            b"attempt" => set_opt(r, &mut attempt, Reader::u32)?,
            // Counters only: decoded as owned (no allocation), so a field added to
            // `SdkHealth` is read here as the owned decoder reads it.
            b"health" => set_opt(r, &mut health, SdkHealth::decode)?,
            b"events" => set_once(r, &mut events, |r| read_events(r, limits))?,
            // Not checked by any rule, but a UUID or `nil` as the owned decoder requires.
            b"anonymous_id" => set_opt(r, &mut anonymous_id, Reader::uuid)?,
            b"context" => set_opt(r, &mut context, read_context)?,
            _ => r.skip()?,
        }
    }
    let (Some(batch_id), Some(app_id), Some(device_id), Some(()), Some(_), Some(mut events)) =
        (batch_id, app_id, device_id, sdk, sent_at, events)
    else {
        return r.unsupported("missing field");
    };
    if let Some(Some(parts)) = context {
        events.check.context(check_context(&parts, limits));
    }
    Ok(BatchView {
        bytes: r.consumed_since(start),
        offset: start,
        batch_id: BatchId::from_bytes(batch_id),
        app_id,
        device_id: DeviceId::from_bytes(device_id),
        events: events.count,
        first_user_id: events.first_user_id,
        seq_range: events.seq_range,
        events_encoded_len: events.total_len,
        validation: events.check.finish(app_id),
    })
}

/// Reads a batch's `context` in place: its strings for [`check_context`], the rest
/// read as the owned decoder requires (integers that fit a `u32`, a UUID), unknown
/// fields skipped.
fn read_context<'a>(r: &mut Reader<'a>) -> Result<ContextParts<'a>> {
    let n = r.map_len()?;
    let mut p = ContextParts::default();
    let (mut width, mut height, mut install) = (None, None, None);
    // Each field once (`nil` counts as an occurrence), as the owned decoder reads it.
    let mut seen = [None::<Option<&'a str>>; 9];
    for _ in 0..n {
        let key = r.key()?;
        let slot = match key {
            b"app_version" => 0,
            b"app_build" => 1,
            b"os_name" => 2,
            b"os_version" => 3,
            b"device_model" => 4,
            b"locale" => 5,
            b"time_zone" => 6,
            b"sdk_version" => 7,
            b"network" => 8,
            b"screen_width" => {
                set_opt(r, &mut width, Reader::u32)?;
                continue;
            }
            b"screen_height" => {
                set_opt(r, &mut height, Reader::u32)?;
                continue;
            }
            b"install_id" => {
                set_opt(r, &mut install, Reader::uuid)?;
                continue;
            }
            _ => {
                r.skip()?;
                continue;
            }
        };
        set_opt(r, &mut seen[slot], Reader::str)?;
    }
    let [app_version, app_build, os_name, os_version, device_model, locale, time_zone, sdk_version, network] =
        seen.map(Option::flatten);
    p.app_version = app_version;
    p.app_build = app_build;
    p.os_name = os_name;
    p.os_version = os_version;
    p.device_model = device_model;
    p.locale = locale;
    p.time_zone = time_zone;
    p.sdk_version = sdk_version;
    p.network = network;
    Ok(p)
}

fn read_sdk(r: &mut Reader<'_>) -> Result<()> {
    let n = r.map_len()?;
    let (mut name, mut version, mut platform, mut app_version) = (None, None, None, None);
    for _ in 0..n {
        match r.key()? {
            b"name" => set_once(r, &mut name, Reader::str)?,
            b"version" => set_once(r, &mut version, Reader::str)?,
            b"platform" => set_opt(r, &mut platform, Reader::str)?,
            b"app_version" => set_opt(r, &mut app_version, Reader::str)?,
            _ => r.skip()?,
        }
    }
    if name.is_none() || version.is_none() {
        return r.unsupported("missing field");
    }
    Ok(())
}

struct EventsSummary<'a, 'l> {
    count: usize,
    first_user_id: Option<&'a str>,
    seq_range: Option<(u64, u64)>,
    total_len: usize,
    check: BatchCheck<'l>,
}

fn read_events<'a, 'l>(r: &mut Reader<'a>, limits: &'l Limits) -> Result<EventsSummary<'a, 'l>> {
    let n = r.array_len()?;
    let mut s = EventsSummary {
        count: n,
        first_user_id: None,
        seq_range: None,
        total_len: 0,
        check: BatchCheck::new(n, limits),
    };
    for i in 0..n {
        let start = r.position();
        let e = read_event(r, limits)?;
        // §7: an event's size is its map as received.
        let size = r.position() - start;
        s.total_len = s.total_len.saturating_add(size);
        if i == 0 {
            s.first_user_id = e.user_id;
        }
        s.seq_range = Some((s.seq_range.map_or(e.seq, |(first, _)| first), e.seq));
        s.check.event(e.seq, || {
            check_event(e.seq, e.user_id, e.body, size, limits)
        });
    }
    Ok(s)
}

struct EventSummary<'a> {
    seq: u64,
    user_id: Option<&'a str>,
    /// [`check_body`]'s verdict.
    body: Verdict,
}

fn read_event<'a>(r: &mut Reader<'a>, limits: &Limits) -> Result<EventSummary<'a>> {
    let n = r.map_len()?;
    let (mut seq, mut ts, mut user, mut session, mut body) = (None, None, None, None, None);
    for _ in 0..n {
        match r.key()? {
            b"seq" => set_once(r, &mut seq, Reader::u64)?,
            b"ts_ms" => set_once(r, &mut ts, Reader::i64)?,
            b"user_id" => set_opt(r, &mut user, Reader::str)?,
            b"session_id" => set_opt(r, &mut session, Reader::u64)?,
            b"body" => set_once(r, &mut body, |r| read_body(r, limits))?,
            _ => r.skip()?,
        }
    }
    let (Some(seq), Some(_), Some(body)) = (seq, ts, body) else {
        return r.unsupported("missing field");
    };
    Ok(EventSummary {
        seq,
        user_id: user.flatten(),
        body,
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Custom,
    SessionStart,
    SessionEnd,
    Purchase,
    UserProperties,
    MessageImpression,
    Exposure,
    Alias,
    DeletionRequest,
    PushToken,
    PushReceived,
    PushOpened,
    AppInstalled,
    AppUpdated,
    AppOpened,
    Unknown,
}

impl Kind {
    fn from_tag(tag: &[u8]) -> Option<Kind> {
        Some(match tag {
            b"custom" => Kind::Custom,
            b"session_start" => Kind::SessionStart,
            b"session_end" => Kind::SessionEnd,
            b"purchase" => Kind::Purchase,
            b"user_properties" => Kind::UserProperties,
            b"message_impression" => Kind::MessageImpression,
            b"exposure" => Kind::Exposure,
            b"alias" => Kind::Alias,
            b"deletion_request" => Kind::DeletionRequest,
            b"push_token" => Kind::PushToken,
            b"push_received" => Kind::PushReceived,
            b"push_opened" => Kind::PushOpened,
            b"app_installed" => Kind::AppInstalled,
            b"app_updated" => Kind::AppUpdated,
            b"app_opened" => Kind::AppOpened,
            other => {
                std::str::from_utf8(other).ok()?;
                Kind::Unknown
            }
        })
    }
}

/// Reads a body (its tag first) and returns [`check_body`]'s verdict on it.
fn read_body(r: &mut Reader<'_>, limits: &Limits) -> Result<Verdict> {
    let n = r.map_len()?;
    if n == 0 || r.key()? != b"type" {
        return r.unsupported("event body without its type tag first");
    }
    let tag = r.key()?;
    let Some(kind) = Kind::from_tag(tag) else {
        return r.unsupported("event type tag is not UTF-8");
    };
    // Fields of every kind; each kind reads only its own, the rest is skipped.
    let mut name = None;
    let mut props: Option<Option<Verdict>> = None;
    let mut duration = None;
    let mut product_id = None;
    let mut amount = None;
    let mut currency = None;
    let mut quantity = None;
    let mut set: Option<Option<Verdict>> = None;
    let mut unset: Option<Option<Verdict>> = None;
    let mut message_id = None;
    let mut action = None;
    let mut flag = None;
    let mut variant = None;
    let mut config_version = None;
    let mut reason: Option<Option<&str>> = None;
    let mut alias_anonymous_id = None;
    let mut alias_user_id = None;
    let mut deletion_device_id = None;
    let mut deletion_user_id: Option<Option<&str>> = None;
    let mut deletion_anonymous_id: Option<Option<[u8; 16]>> = None;
    let mut provider = None;
    let mut environment: Option<Option<&str>> = None;
    let mut token = None;
    let mut cleared: Option<Option<bool>> = None;
    let mut campaign_id = None;
    let mut push_action: Option<Option<&str>> = None;
    let mut previous_version: Option<Option<&str>> = None;
    let mut previous_build: Option<Option<&str>> = None;
    let mut from_background: Option<Option<bool>> = None;
    let props_of = match kind {
        Kind::Custom => PropertiesOf::Custom,
        _ => PropertiesOf::Purchase,
    };
    for _ in 1..n {
        let key = r.key()?;
        match (kind, key) {
            (_, b"type") => return r.unsupported("duplicate field"),
            (Kind::Custom, b"name") => set_once(r, &mut name, Reader::str)?,
            (Kind::Custom | Kind::Purchase, b"props") => {
                set_opt(r, &mut props, |r| read_props(r, props_of, limits))?
            }
            (Kind::SessionEnd, b"duration_ms") => set_once(r, &mut duration, Reader::u64)?,
            (Kind::Purchase, b"product_id") => set_once(r, &mut product_id, Reader::str)?,
            (Kind::Purchase, b"amount_micros") => set_once(r, &mut amount, Reader::i64)?,
            (Kind::Purchase, b"currency") => set_once(r, &mut currency, Reader::str)?,
            (Kind::Purchase, b"quantity") => set_once(r, &mut quantity, Reader::u32)?,
            (Kind::UserProperties, b"set") => {
                set_opt(r, &mut set, |r| read_props(r, PropertiesOf::Set, limits))?
            }
            (Kind::UserProperties, b"unset") => set_opt(r, &mut unset, |r| read_unset(r, limits))?,
            (Kind::MessageImpression, b"message_id") => set_once(r, &mut message_id, Reader::str)?,
            (Kind::MessageImpression, b"action") => set_once(r, &mut action, Reader::str)?,
            (Kind::Exposure, b"flag") => set_once(r, &mut flag, Reader::str)?,
            (Kind::Exposure, b"variant") => set_once(r, &mut variant, Reader::str)?,
            (Kind::Exposure, b"config_version") => set_once(r, &mut config_version, Reader::u64)?,
            // Not checked by any rule (an open enum), but a string or `nil` as the
            // owned decoder requires.
            (Kind::Exposure, b"reason") => set_opt(r, &mut reason, Reader::str)?,
            (Kind::Alias, b"anonymous_id") => set_once(r, &mut alias_anonymous_id, Reader::uuid)?,
            (Kind::Alias, b"user_id") => set_once(r, &mut alias_user_id, Reader::str)?,
            (Kind::DeletionRequest, b"device_id") => {
                set_once(r, &mut deletion_device_id, Reader::uuid)?
            }
            (Kind::DeletionRequest, b"user_id") => set_opt(r, &mut deletion_user_id, Reader::str)?,
            // Not checked by any rule, but a UUID or `nil` as the owned decoder requires.
            (Kind::DeletionRequest, b"anonymous_id") => {
                set_opt(r, &mut deletion_anonymous_id, Reader::uuid)?
            }
            // Provider and environment are open enums (no rule), but strings (`nil` for
            // the optional environment) as the owned decoder requires.
            (Kind::PushToken, b"provider") => set_once(r, &mut provider, Reader::str)?,
            (Kind::PushToken, b"environment") => set_opt(r, &mut environment, Reader::str)?,
            (Kind::PushToken, b"token") => set_once(r, &mut token, Reader::str)?,
            (Kind::PushToken, b"cleared") => set_opt(r, &mut cleared, Reader::bool)?,
            (Kind::PushReceived | Kind::PushOpened, b"campaign_id") => {
                set_once(r, &mut campaign_id, Reader::str)?
            }
            (Kind::PushOpened, b"action") => set_opt(r, &mut push_action, Reader::str)?,
            (Kind::AppUpdated, b"previous_version") => {
                set_opt(r, &mut previous_version, Reader::str)?
            }
            (Kind::AppUpdated, b"previous_build") => set_opt(r, &mut previous_build, Reader::str)?,
            // Not checked by any rule, but a boolean or `nil` as the owned decoder requires.
            (Kind::AppOpened, b"from_background") => {
                set_opt(r, &mut from_background, Reader::bool)?
            }
            _ => r.skip()?,
        }
    }
    // An absent or `nil` map is an empty one: nothing to break.
    let map = |v: Option<Option<Verdict>>| v.flatten().unwrap_or(Ok(()));
    let parts = match kind {
        Kind::Custom => {
            let Some(name) = name else {
                return r.unsupported("missing field");
            };
            BodyParts::Custom {
                name,
                props: map(props),
            }
        }
        Kind::SessionStart | Kind::AppInstalled | Kind::AppOpened | Kind::Unknown => {
            BodyParts::Unchecked
        }
        Kind::AppUpdated => BodyParts::AppUpdated {
            previous_version: previous_version.flatten(),
            previous_build: previous_build.flatten(),
        },
        Kind::SessionEnd => {
            if duration.is_none() {
                return r.unsupported("missing field");
            }
            BodyParts::Unchecked
        }
        Kind::Purchase => {
            let (Some(product_id), Some(amount_micros), Some(currency), Some(quantity)) =
                (product_id, amount, currency, quantity)
            else {
                return r.unsupported("missing field");
            };
            BodyParts::Purchase {
                product_id,
                amount_micros,
                currency,
                quantity,
                props: map(props),
            }
        }
        Kind::UserProperties => BodyParts::UserProperties {
            set: map(set),
            unset: map(unset),
        },
        Kind::MessageImpression => {
            let (Some(message_id), Some(action)) = (message_id, action) else {
                return r.unsupported("missing field");
            };
            BodyParts::MessageImpression { message_id, action }
        }
        Kind::Exposure => {
            let (Some(flag), Some(variant), Some(_)) = (flag, variant, config_version) else {
                return r.unsupported("missing field");
            };
            BodyParts::Exposure { flag, variant }
        }
        Kind::Alias => {
            let (Some(_), Some(user_id)) = (alias_anonymous_id, alias_user_id) else {
                return r.unsupported("missing field");
            };
            BodyParts::Alias { user_id }
        }
        Kind::DeletionRequest => {
            if deletion_device_id.is_none() {
                return r.unsupported("missing field");
            }
            BodyParts::DeletionRequest {
                user_id: deletion_user_id.flatten(),
            }
        }
        Kind::PushToken => {
            let (Some(_), Some(token)) = (provider, token) else {
                return r.unsupported("missing field");
            };
            BodyParts::PushToken { token }
        }
        Kind::PushReceived | Kind::PushOpened => {
            let Some(campaign_id) = campaign_id else {
                return r.unsupported("missing field");
            };
            BodyParts::Push {
                campaign_id,
                action: push_action.flatten(),
            }
        }
    };
    Ok(check_body(parts, limits))
}

/// A `Properties` map (`BTreeMap<String, Value>`): keys must arrive in strictly
/// ascending order (as encoders of a `BTreeMap` write them), so that wire order is the
/// order the rules check them in (§7) and no key repeats; otherwise the owned path
/// decides.
fn read_props(r: &mut Reader<'_>, of: PropertiesOf, limits: &Limits) -> Result<Verdict> {
    let n = r.map_len()?;
    let mut check = PropertiesCheck::new(of, n, limits);
    let mut prev: Option<&[u8]> = None;
    for _ in 0..n {
        let key = r.str()?;
        if prev.is_some_and(|p| p >= key.as_bytes()) {
            return r.unsupported("property keys not in ascending order");
        }
        prev = Some(key.as_bytes());
        check.entry(key, r.value_ref()?);
    }
    Ok(check.finish())
}

/// `unset`: its keys, checked.
fn read_unset(r: &mut Reader<'_>, limits: &Limits) -> Result<Verdict> {
    let n = r.array_len()?;
    let mut check = PropertiesCheck::new(PropertiesOf::Unset, n, limits);
    for _ in 0..n {
        check.key(r.str()?);
    }
    Ok(check.finish())
}

impl From<ReadError> for ViewError {
    fn from(e: ReadError) -> Self {
        ViewError::Unsupported {
            offset: e.offset,
            what: match e.kind {
                ReadErrorKind::Truncated => "truncated",
                ReadErrorKind::Expected(what) => what,
                ReadErrorKind::OutOfRange(_) => "integer out of range",
                ReadErrorKind::NotUtf8 => "string is not UTF-8",
                ReadErrorKind::BadUuid => "invalid UUID",
                ReadErrorKind::MissingField(_) => "missing field",
                ReadErrorKind::DuplicateField(_) => "duplicate field",
                ReadErrorKind::DuplicateKey => "repeated map key",
                ReadErrorKind::TooDeep => "nested too deeply",
                ReadErrorKind::Reserved => "reserved marker",
                ReadErrorKind::TrailingBytes => "trailing bytes",
            },
        }
    }
}

/// The fast path's reads on the crate's MessagePack reader ([`crate::wire::Reader`]),
/// with this module's error type.
trait ViewRead {
    /// Gives up at the current offset.
    fn unsupported<T>(&self, what: &'static str) -> Result<T>;
    /// A UUID's 16 bytes.
    fn uuid(&mut self) -> Result<[u8; 16]>;
    /// Integers that must fit the field.
    fn u64(&mut self) -> Result<u64>;
    fn u32(&mut self) -> Result<u32>;
    fn i64(&mut self) -> Result<i64>;
}

impl ViewRead for Reader<'_> {
    fn unsupported<T>(&self, what: &'static str) -> Result<T> {
        Err(ViewError::Unsupported {
            offset: self.position(),
            what,
        })
    }
    fn uuid(&mut self) -> Result<[u8; 16]> {
        Ok(uuid::Uuid::decode(self)?.into_bytes())
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::decode(self)?)
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::decode(self)?)
    }
    fn i64(&mut self) -> Result<i64> {
        Ok(i64::decode(self)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{encode_payload, encoded_len};
    use crate::event::{Event, EventBatch, EventBody, SdkInfo};
    use crate::ids::{AppId, UserId};
    use crate::limits::validate_batch;
    use crate::messages::{Auth, IngestRequest};
    use crate::value::{Properties, Value};

    fn event(seq: u64, body: EventBody) -> Event {
        Event {
            seq,
            ts_ms: 1_700_000_000_000,
            user_id: Some(UserId::new("alice")),
            session_id: Some(crate::SessionId(7)),
            body,
        }
    }

    fn request(events: Vec<Event>) -> IngestRequest {
        IngestRequest {
            auth: Auth {
                app_id: AppId::new("demo"),
                key: "demo-key".into(),
            },
            batch: EventBatch {
                anonymous_id: None,
                context: None,
                batch_id: BatchId::from_bytes([3; 16]),
                app_id: AppId::new("demo"),
                device_id: DeviceId::from_bytes([4; 16]),
                sdk: SdkInfo {
                    name: "tern-rust".into(),
                    version: "0.1.0".into(),
                    platform: "linux".into(),
                    app_version: Some("1.0".into()),
                },
                sent_at_ms: 5,
                attempt: 2,
                events,
                health: Default::default(),
            },
        }
    }

    fn bodies() -> Vec<EventBody> {
        let props: Properties = [
            ("a".to_string(), Value::from("x")),
            ("b".to_string(), Value::Int(-40_000)),
            ("c".to_string(), Value::Float(1.5)),
            ("d".to_string(), Value::Bool(true)),
        ]
        .into();
        vec![
            EventBody::Custom {
                name: "opened".into(),
                props: props.clone(),
            },
            EventBody::Custom {
                name: "bare".into(),
                props: Properties::new(),
            },
            EventBody::SessionStart,
            EventBody::SessionEnd {
                duration_ms: 70_000,
            },
            EventBody::Purchase {
                product_id: "sku-1".into(),
                amount_micros: 1_990_000,
                currency: "USD".into(),
                quantity: 300,
                props,
            },
            EventBody::UserProperties {
                set: [("plan".to_string(), Value::from("pro"))].into(),
                unset: vec!["trial".into()],
            },
            EventBody::UserProperties {
                set: Properties::new(),
                unset: vec![],
            },
            EventBody::MessageImpression {
                message_id: "m1".into(),
                action: "shown".into(),
            },
            EventBody::Exposure {
                flag: "checkout_color".into(),
                variant: "blue".into(),
                config_version: 12,
                reason: Some(crate::rollout::FlagReason::Variant),
            },
            EventBody::Exposure {
                flag: "new_checkout".into(),
                variant: "off".into(),
                config_version: 3,
                reason: None,
            },
            EventBody::Alias {
                anonymous_id: crate::AnonymousId::from_bytes([7; 16]),
                user_id: crate::UserId::new("alice"),
            },
            EventBody::DeletionRequest {
                device_id: DeviceId::from_bytes([4; 16]),
                user_id: Some(crate::UserId::new("alice")),
                anonymous_id: Some(crate::AnonymousId::from_bytes([7; 16])),
            },
            EventBody::DeletionRequest {
                device_id: DeviceId::from_bytes([4; 16]),
                user_id: None,
                anonymous_id: None,
            },
            EventBody::PushToken {
                provider: crate::PushProvider::Apns,
                environment: Some(crate::PushEnvironment::Sandbox),
                token: "a1b2c3".into(),
                cleared: false,
            },
            EventBody::PushToken {
                provider: crate::PushProvider::Fcm,
                environment: None,
                token: "fcm:tok".into(),
                cleared: true,
            },
            EventBody::PushReceived {
                campaign_id: "spring".into(),
            },
            EventBody::PushOpened {
                campaign_id: "spring".into(),
                action: Some("reply".into()),
            },
            EventBody::PushOpened {
                campaign_id: "spring".into(),
                action: None,
            },
        ]
    }

    #[test]
    fn a_batch_alone_reads_as_it_does_inside_a_request() {
        let events: Vec<Event> = bodies()
            .into_iter()
            .enumerate()
            .map(|(i, b)| event(10 + i as u64, b))
            .collect();
        let last = 10 + events.len() as u64 - 1;
        let batch = request(events).batch;
        let bytes = encode_payload(&batch).unwrap();
        let v = BatchView::parse(&bytes, &Limits::default()).unwrap();
        assert_eq!(v.batch_id, batch.batch_id);
        assert_eq!(v.app_id, "demo");
        assert_eq!(v.device_id, batch.device_id);
        assert_eq!(v.seq_range, Some((10, last)));
        assert_eq!(v.routing_key(), "alice");
        assert_eq!(v.bytes, &bytes[..]);
        assert!(v.validation().is_ok());
        // Nothing may follow the batch's map, and a truncated map is refused.
        let mut longer = bytes.clone();
        longer.push(0xc0);
        assert!(BatchView::parse(&longer, &Limits::default()).is_err());
        assert!(BatchView::parse(&bytes[..bytes.len() - 1], &Limits::default()).is_err());
        // No events: no range.
        let empty = encode_payload(&request(vec![]).batch).unwrap();
        let v = BatchView::parse(&empty, &Limits::default()).unwrap();
        assert_eq!(v.seq_range, None);
    }

    #[test]
    fn reads_what_the_encoder_writes() {
        let events: Vec<Event> = bodies()
            .into_iter()
            .enumerate()
            .map(|(i, b)| event(i as u64 + 1, b))
            .collect();
        let req = request(events.clone());
        let payload = encode_payload(&req).unwrap();
        let view = IngestView::parse(&payload, &Limits::default()).unwrap();
        assert_eq!(view.auth_app_id, "demo");
        assert_eq!(view.auth_key, "demo-key");
        assert_eq!(view.batch.batch_id, req.batch.batch_id);
        assert_eq!(view.batch.device_id, req.batch.device_id);
        assert_eq!(view.batch.app_id, "demo");
        assert_eq!(view.batch.events, events.len());
        assert_eq!(view.batch.first_user_id, Some("alice"));
        assert_eq!(view.batch.routing_key(), req.batch.routing_key());
        assert_eq!(view.batch.validation(), Ok(()));
        let sizes: usize = events.iter().map(|e| encoded_len(e).unwrap()).sum();
        assert_eq!(view.batch.events_encoded_len, sizes);
        assert_eq!(view.batch.bytes, encode_payload(&req.batch).unwrap());
        assert_eq!(
            &payload[view.batch.offset..view.batch.offset + view.batch.bytes.len()],
            view.batch.bytes
        );
    }

    #[test]
    fn reports_the_error_validate_batch_reports() {
        let l = Limits::default();
        let bad_name = EventBody::Custom {
            name: "_x".into(),
            props: Properties::new(),
        };
        let bad_currency = EventBody::Purchase {
            product_id: "p".into(),
            amount_micros: 1,
            currency: "usd".into(),
            quantity: 1,
            props: Properties::new(),
        };
        let nan: Properties = [("z".to_string(), Value::Float(f64::NAN))].into();
        let cases = vec![
            vec![],
            vec![
                event(2, EventBody::SessionStart),
                event(2, bad_name.clone()),
            ],
            vec![event(1, bad_currency), event(2, bad_name)],
            vec![event(
                1,
                EventBody::Custom {
                    name: "n".into(),
                    props: nan,
                },
            )],
            vec![event(0, EventBody::SessionStart)],
        ];
        for events in cases {
            let req = request(events);
            let payload = encode_payload(&req).unwrap();
            let view = IngestView::parse(&payload, &l).unwrap();
            assert_eq!(
                view.batch.validation().map_err(Clone::clone),
                validate_batch(&req.batch, &l)
            );
            assert!(view.batch.validation().is_err());
        }
        let tight = Limits {
            max_event_bytes: 40,
            ..Limits::default()
        };
        let req = request(vec![event(1, bodies().remove(0))]);
        let payload = encode_payload(&req).unwrap();
        let view = IngestView::parse(&payload, &tight).unwrap();
        assert_eq!(
            view.batch.validation().map_err(Clone::clone),
            validate_batch(&req.batch, &tight)
        );
    }

    #[test]
    fn leaves_other_encodings_to_the_owned_decoder() {
        let req = request(vec![event(1, EventBody::SessionStart)]);
        let good = encode_payload(&req).unwrap();
        // Positional (array) encoding, which rmp-serde also accepts.
        let positional = rmp_serde::to_vec(&req).unwrap();
        assert!(IngestView::parse(&positional, &Limits::default()).is_err());
        // Truncations and trailing bytes.
        for cut in 0..good.len() {
            assert!(IngestView::parse(&good[..cut], &Limits::default()).is_err());
        }
        let mut trailing = good.clone();
        trailing.push(0xc0);
        assert!(IngestView::parse(&trailing, &Limits::default()).is_err());
    }
}
