//! [`Tern`]: the public entry point an app (through the bindings) talks to.
//!
//! # Threads and the durability window
//!
//! `Tern::start` creates the data directory and takes its lock (a few system calls: a
//! second instance on the directory, in this process or another one, is refused at
//! once with `StoreError::Locked`), spawns one background thread and returns. The
//! background thread opens a fresh journal segment, and only then opens SQLite and
//! recovers what earlier runs left in the journal.
//!
//! Recording calls (`track`, `purchase`, `set_user_properties`, `identify`,
//! `opt_out`, `delete_local_data`, session calls) validate, encode and append one
//! journal record with a single `write(2)` under the journal mutex, and return. From
//! the moment the journal segment is open (normally 1–2 ms after `start`, reported
//! by [`Stats::journal_ready`]), an event whose call returned `Ok` survives a kill of
//! the process at any instant. Events recorded **before** that moment are held in
//! memory (at most 4 MiB) and written to the journal the instant it opens; they are
//! the only events a crash can lose, and only a crash within those first milliseconds.
//!
//! The background thread moves journal records into SQLite (assigning each event its
//! sequence number and user), keeps the store within its bounds, and serves the
//! uploader's calls ([`Tern::next_batch`], [`Tern::ack`], ...). Recording calls never
//! wait for it and never take a lock it holds for I/O.
//!
//! # Store resets
//!
//! Should `tern.db` be lost between runs (deleted, truncated, corrupt, an older copy
//! restored, its `-wal` deleted), the store reconciles with the journal marker when it
//! opens ([`crate::store::marker`]): journal records the lost store had applied are not applied
//! again — their events may have been delivered; they are counted in `reset_unknown`,
//! never resent — records after them are, and the device id and sequence numbers
//! continue, so the backend's dedupe on `(device_id, seq)` still holds. The background
//! thread keeps the marker's rule M2: a journal segment is deleted only after the
//! marker's frontier has moved past it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant};

use tern_protocol::limits::{validate_body, validate_id, validate_properties};
use tern_protocol::rollout::{evaluate_flag_with_reason, FlagDecision, FlagReason};
use tern_protocol::{
    AnonymousId, AppContext, BatchId, ConfigBundle, DeviceId, EventBody, InstallId, NetworkType,
    Properties, PushEnvironment, PushProvider, SessionId, UserId, ValidationError, Value,
};

use crate::config::TernConfig;
use crate::consent::{ConsentCounters, ConsentState, ConsentStates, Purpose};
use crate::error::{StoreError, TrackError};
use crate::live::exposures::{Admit, ExposureKey, Exposures};
use crate::live::messages::{Fired, PacingState};
use crate::live::remote::{
    ConfigInfo, ConfigListener, Dispatcher, Host, Job, ListenerHandle, Live, LiveStats,
    MessageListener,
};
use crate::policy::session::{SessionChange, SessionTracker};
use crate::store::entry::Entry;
use crate::store::journal::{self, encode_record, AppendError, Journal, Stop};
use crate::store::{Backlog, Db, OpenReport, OutgoingBatch};

#[path = "push.rs"]
mod push;

/// Rotate the journal once a fully applied segment is larger than this.
const ROTATE_BYTES: u64 = 4 * 1024 * 1024;
/// Most journal records applied in one SQLite transaction.
const APPLY_CHUNK: usize = 4096;
/// How long the worker sleeps when idle and nothing is due. Everything that gives it
/// work wakes it (recording calls, refusals, flush, shutdown, kill); this is a safety
/// net, long enough that an idle app's store thread costs nothing measurable (a phone's
/// battery, ten thousand simulated devices' CPU).
const IDLE_WAIT: Duration = Duration::from_secs(60);
/// Group apply: journal bytes waiting that are applied at once, whatever the delay.
const APPLY_BYTES: u64 = 64 * 1024;
/// How often the worker refreshes the journal marker's unknown count and counters
/// (the frontier itself moves when it must, see [`crate::store::marker`]).
const MARKER_SYNC: Duration = Duration::from_secs(5);

/// A snapshot of the SDK's state and health counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// The journal is open: recorded events are durable when the call returns.
    pub journal_ready: bool,
    /// The SQLite store is open and recovery has finished.
    pub store_ready: bool,
    /// Why the store could not be opened, if it could not.
    pub store_error: Option<String>,
    /// The device id (known once the store is open).
    pub device_id: Option<DeviceId>,
    /// The user events are recorded under (as applied to the store).
    pub user_id: Option<UserId>,
    /// Events waiting in the store (batched or not).
    pub queued_events: u64,
    /// Bytes waiting in the store.
    pub queued_bytes: u64,
    /// Journal bytes not yet moved into the store.
    pub journal_backlog_bytes: u64,
    /// Rounds of work the store thread has done since start (each a wake-up): an idle
    /// SDK's count stays still, as its thread sleeps until there is work.
    pub store_steps: u64,
    /// Events dropped because the store was full (oldest first). Cumulative.
    pub dropped_overflow: u64,
    /// Events refused by validation. Cumulative.
    pub dropped_invalid: u64,
    /// Events in batches the relay rejected. Cumulative.
    pub dropped_rejected: u64,
    /// Events discarded because the user had opted out (this process): recorded just
    /// as the opt-out was, and found after it when moved into the store.
    pub dropped_opted_out: u64,
    /// Recording calls refused because the user had opted out (this process).
    pub refused_opted_out: u64,
    /// Events refused because they could not be kept: the store could not be opened,
    /// or [`Tern::count_refused`] said so (journal write failures are in
    /// `dropped_disk_full`). Cumulative.
    pub dropped_unavailable: u64,
    /// Events the recording calls wrote to the journal, session boundaries included,
    /// and the events the store recorded by itself: lifecycle events of launches,
    /// `push_token` events entries implied, deletion requests (this process).
    pub events_recorded: u64,
    /// Upload attempts retried. Cumulative.
    pub retries: u64,
    /// Requests refused for a reason that may be the server's fault (`unauthorized`,
    /// `blocked`, a reason this version does not know): the data was kept and the
    /// uploader waits long before trying again. Cumulative; reported upstream. A
    /// rising count usually means the app key is wrong or not yet known to the relays.
    pub auth_failures: u64,
    /// The latest such refusal: the reason and the relay's detail.
    pub last_refusal: Option<String>,
    /// Times the database was found unusable or lost (corrupt, deleted, truncated,
    /// rolled back) and replaced. Cumulative.
    pub store_resets: u64,
    /// Events a lost database held whose delivery could not be known: neither resent
    /// nor known delivered (see [`crate::store::marker`]). Cumulative.
    pub reset_unknown: u64,
    /// Records lost to damage: journal regions or records that failed their checksum,
    /// stored events that failed theirs. Cumulative.
    pub dropped_corrupt: u64,
    /// Events refused because the journal could not be written (disk full or another
    /// write error; the call returned [`TrackError::Journal`]). Cumulative.
    pub dropped_disk_full: u64,
    /// Journal or store records that failed their checksum (this process).
    pub corrupt_records: u64,
    /// Outcome of the last upload attempt, as reported by the uploader.
    pub last_upload: Option<String>,
    /// The built-in uploader's counters (all zero when it is not running), including
    /// config fetches and push notices.
    pub upload: crate::upload::UploadStats,
    /// Live config on the device: changes notified, messages shown, listener panics.
    pub live: LiveStats,
    /// Experiment exposures (this process, except `remembered`).
    pub exposures: ExposureStats,
    /// Consent states as applied to the store (the default until the store opens).
    pub consent: ConsentStates,
    /// Consent and deletion counters (cumulative, see [`crate::consent`]).
    pub consent_counters: ConsentCounters,
    /// Recording calls whose event was not kept because its purpose was denied when
    /// the call was made (this process; the call returned `Ok`). Events found denied
    /// when applied are in `consent_counters.denied`.
    pub refused_consent: u64,
}

/// Counters of experiment exposures ([`Stats::exposures`]): flag reads and
/// [`Tern::record_exposure`] calls, this process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExposureStats {
    /// Exposure events recorded (written to the journal).
    pub recorded: u64,
    /// Reads whose exposure was recorded before (this run or an earlier one): nothing
    /// recorded.
    pub already_recorded: u64,
    /// Exposures not recorded because the set of remembered exposures was full
    /// ([`crate::StoreLimits::max_exposures`] keys of the newest config version).
    pub over_cap: u64,
    /// Automatic exposures (flag reads) whose recording failed: the journal could not be
    /// written, the store could not be opened, or the flag's key or variant broke a
    /// protocol rule. The read returned its decision; the event is also counted where
    /// its kind of failure is (`dropped_disk_full`, `dropped_unavailable`,
    /// `dropped_invalid`), and a later read tries again (except after an invalid key
    /// or variant, counted once per key).
    pub failed: u64,
    /// Exposures remembered now (in memory; at most `max_exposures`).
    pub remembered: u64,
}

/// What [`Tern::record_exposure`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExposureOutcome {
    /// Recorded now; durable like any event.
    Recorded,
    /// Recorded before for this flag, variant, unit and config version: nothing to do.
    AlreadyRecorded,
    /// Nothing to expose: no bundle yet, the flag is not in it, or the store has not
    /// opened (no device id to bucket by).
    NoFlag,
    /// Not recorded: the set of remembered exposures is full (counted in
    /// [`ExposureStats::over_cap`]).
    OverCap,
}

#[derive(Default)]
struct ExposureCounters {
    recorded: AtomicU64,
    already_recorded: AtomicU64,
    over_cap: AtomicU64,
    failed: AtomicU64,
}

/// A recording call, for [`Tern::apply`]: the same calls as the methods of [`Tern`]
/// with the same names, as values that can be kept and applied later.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Call {
    /// [`Tern::track`].
    Track {
        /// Event name.
        name: String,
        /// Properties.
        props: Properties,
    },
    /// [`Tern::purchase`].
    Purchase {
        /// Product id.
        product_id: String,
        /// Price in millionths of `currency`.
        amount_micros: i64,
        /// ISO 4217 code.
        currency: String,
        /// Units bought.
        quantity: u32,
        /// Properties.
        props: Properties,
    },
    /// [`Tern::set_user_properties`].
    SetUserProperties {
        /// Properties set.
        set: Properties,
        /// Properties removed.
        unset: Vec<String>,
    },
    /// [`Tern::message_impression`].
    MessageImpression {
        /// The message.
        message_id: String,
        /// The button id, or `shown`.
        action: String,
    },
    /// [`Tern::identify`].
    Identify {
        /// The user, `None` for anonymous.
        user_id: Option<String>,
    },
    /// [`Tern::opt_out`].
    OptOut {
        /// On or off.
        opted_out: bool,
    },
    /// [`Tern::delete_local_data`].
    DeleteLocalData,
    /// [`Tern::start_session`].
    StartSession,
    /// [`Tern::end_session`].
    EndSession,
    /// [`Tern::on_foreground`].
    Foreground,
    /// [`Tern::on_background`].
    Background,
    /// [`Tern::alias`].
    Alias {
        /// The identified user.
        user_id: String,
    },
    /// [`Tern::reset`].
    Reset,
    /// [`Tern::set_consent`].
    SetConsent {
        /// The purpose.
        purpose: Purpose,
        /// Its new state.
        state: ConsentState,
    },
    /// [`Tern::request_deletion`].
    RequestDeletion,
    /// [`Tern::set_push_token`].
    SetPushToken {
        /// Who delivers to the device.
        provider: PushProvider,
        /// The APNs environment (`None` for FCM).
        environment: Option<PushEnvironment>,
        /// The token.
        token: String,
    },
    /// [`Tern::push_received`].
    PushReceived {
        /// The push's campaign.
        campaign_id: String,
    },
    /// [`Tern::push_opened`].
    PushOpened {
        /// The push's campaign.
        campaign_id: String,
        /// The notification action chosen, `None` for the default tap.
        action: Option<String>,
    },
    /// [`Tern::set_network_type`].
    SetNetworkType {
        /// The network now, `None` when unknown.
        network: Option<NetworkType>,
    },
    /// [`Tern::set_locale`].
    SetLocale {
        /// The locale now (BCP 47), `None` when unknown.
        locale: Option<String>,
    },
    /// [`Tern::set_time_zone`].
    SetTimeZone {
        /// The time zone now (IANA name), `None` when unknown.
        time_zone: Option<String>,
    },
}

impl Call {
    /// How many events the call records at most, not counting session boundaries:
    /// 1 for the event calls, 0 for the others.
    pub fn events(&self) -> u64 {
        match self {
            Call::Track { .. }
            | Call::Purchase { .. }
            | Call::SetUserProperties { .. }
            | Call::MessageImpression { .. }
            | Call::Alias { .. }
            | Call::PushReceived { .. }
            | Call::PushOpened { .. } => 1,
            _ => 0,
        }
    }
}

/// Why events counted with [`Tern::count_refused`] were refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refused {
    /// Invalid input (counted in `dropped_invalid`).
    Invalid,
    /// The SDK could not keep them (counted in `dropped_unavailable`).
    Unavailable,
}

/// What [`Tern::shutdown`] achieved.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Everything recorded was moved into the store and the files were closed within
    /// the timeout. When false, nothing is lost: the journal still holds the rest and
    /// the next start applies it.
    pub clean: bool,
    /// Events queued in the store at shutdown.
    pub queued_events: u64,
}

/// What the worker publishes after each step, so `stats()` never waits for SQLite.
#[derive(Default, Clone)]
struct StoreSnapshot {
    open: bool,
    device_id: Option<DeviceId>,
    user_id: Option<UserId>,
    queued: (u64, u64),
    health: tern_protocol::SdkHealth,
    corrupt_events: u64,
    /// How much of [`Inner::invalid`] / [`Inner::unavailable`] / [`Inner::disk_full`]
    /// `health` includes.
    moved: (u64, u64, u64),
    /// What waits to be uploaded (`None` if reading it failed: the uploader then asks
    /// the store itself).
    backlog: Option<crate::store::Backlog>,
    consent_counters: ConsentCounters,
}

impl StoreSnapshot {
    /// Taken with the store's lock held (or by the worker before it shares the store),
    /// so `health` and `moved` agree.
    fn of(db: &Db, inner: &Inner) -> Self {
        let m = db.meta();
        StoreSnapshot {
            open: true,
            device_id: Some(m.device_id),
            user_id: m.user.clone(),
            queued: db.queued(),
            health: m.health,
            corrupt_events: db.corrupt_events(),
            moved: (
                inner.invalid_moved.load(Ordering::Acquire),
                inner.unavailable_moved.load(Ordering::Acquire),
                inner.disk_full_moved.load(Ordering::Acquire),
            ),
            // Cached by the store until its next change: most steps read no SQLite.
            backlog: db.backlog().ok(),
            consent_counters: m.consent_counters,
        }
    }
}

#[derive(Default)]
struct Shared {
    report: Option<OpenReport>,
    store_error: Option<String>,
    last_upload: Option<String>,
    last_refusal: Option<String>,
    flush_requested: bool,
    shutdown_requested: bool,
    finished: bool,
    corrupt_records: u64,
    journal_backlog: u64,
    dropped_opted_out: u64,
}

/// The consent state the recording calls see (see [`crate::consent`]): per purpose, a
/// [`ConsentState::code`], and whether `set_consent` was called in this process (its
/// value then wins over the stored one when the store opens).
#[derive(Default)]
struct CallConsent {
    state: [std::sync::atomic::AtomicU8; 2],
    set: [AtomicBool; 2],
}

impl CallConsent {
    fn index(p: Purpose) -> usize {
        match p {
            Purpose::Analytics => 0,
            Purpose::Messaging => 1,
        }
    }
    fn get(&self, p: Purpose) -> ConsentState {
        ConsentState::from_code(self.state[Self::index(p)].load(Ordering::Acquire))
    }
    fn states(&self) -> ConsentStates {
        let mut s = ConsentStates::default();
        for p in Purpose::ALL {
            s.set(p, self.get(p));
        }
        s
    }
    fn store(&self, p: Purpose, state: ConsentState) {
        self.state[Self::index(p)].store(state.code(), Ordering::Release);
    }
    /// The store's states, for purposes not set in this process.
    fn adopt(&self, states: ConsentStates) {
        for p in Purpose::ALL {
            if !self.set[Self::index(p)].load(Ordering::Acquire) {
                self.store(p, states.get(p));
            }
        }
    }
}

struct Inner {
    config: TernConfig,
    journal: Journal,
    sessions: Mutex<SessionTracker>,
    opted_out: AtomicBool,
    /// `opt_out` was called in this process: its value wins over the stored one.
    opt_out_called: AtomicBool,
    shut_down: AtomicBool,
    /// [`Tern::kill`] was called: the worker stops at once, leaving the store as a
    /// killed process would.
    killed: AtomicBool,
    journal_ready: AtomicBool,
    /// Events refused as invalid in recording calls (this process; only grows).
    invalid: AtomicU64,
    /// Events refused because they could not be kept (the store could not be opened,
    /// or counted by a caller through [`Tern::count_refused`]; this process; only
    /// grows).
    unavailable: AtomicU64,
    /// Events refused because the journal write failed (disk full or another write
    /// error; this process; only grows).
    disk_full: AtomicU64,
    /// How much of `invalid` / `unavailable` / `disk_full` the worker has added to the
    /// store's health counters. Written only by the worker with the store's lock held.
    invalid_moved: AtomicU64,
    unavailable_moved: AtomicU64,
    disk_full_moved: AtomicU64,
    /// Events written to the journal by recording calls (this process).
    recorded: AtomicU64,
    /// Recording calls refused because the user opted out (this process).
    refused_opted_out: AtomicU64,
    /// The device and app context now: what the last context record says. Read and
    /// replaced by the context calls only; the recording path never touches it.
    context: Mutex<AppContext>,
    /// The app went to the background and has not come back (an `app_opened` with
    /// `from_background` is recorded when it does).
    backgrounded: AtomicBool,
    wake_pending: AtomicBool,
    /// Someone waits for everything to be applied: no group-apply delay.
    apply_now: AtomicBool,
    /// The store changed since the journal marker was last brought up to date (by an
    /// apply, or by the uploader's acks): the worker refreshes it within
    /// [`MARKER_SYNC`] instead of sleeping [`IDLE_WAIT`].
    marker_stale: AtomicBool,
    /// [`Stats::store_steps`].
    steps: AtomicU64,
    worker: Mutex<Option<Thread>>,
    db: Mutex<Option<Db>>,
    snapshot: Mutex<StoreSnapshot>,
    /// Notified when the worker changed the store (records applied, batches formed),
    /// so the uploader looks at the backlog then instead of polling it.
    store_changed: Arc<tokio::sync::Notify>,
    shared: Mutex<Shared>,
    finished: Condvar,
    uploader: Mutex<Option<crate::upload::Uploader>>,
    live: Arc<Live>,
    /// The exposures recorded (see [`crate::live::exposures`]); the caller's thread
    /// takes it briefly, never with SQLite.
    exposures: Mutex<Exposures>,
    exposure_counters: ExposureCounters,
    consent: CallConsent,
    /// Recording calls whose purpose was denied (this process).
    refused_consent: AtomicU64,
    /// When the push token was last recorded, as far as this process knows.
    push: Mutex<push::PushHint>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Inner {
    fn unit(&self) -> Option<String> {
        Host::unit(self)
    }

    fn wake(&self) {
        if !self.wake_pending.swap(true, Ordering::AcqRel) {
            if let Some(t) = lock(&self.worker).as_ref() {
                t.unpark();
            }
        }
    }

    fn check_open(&self) -> Result<(), TrackError> {
        if self.shut_down.load(Ordering::Acquire) {
            return Err(TrackError::ShutDown);
        }
        Ok(())
    }

    /// Appends entries as one journal write. A failure says why the entries were not
    /// kept: the SDK shut down, the store could not be opened, or the write failed;
    /// the events among them are counted as `dropped_unavailable` when the store could
    /// not be opened, as `dropped_disk_full` when the write failed.
    fn append(&self, entries: &[Entry]) -> Result<(), TrackError> {
        let mut buf = Vec::with_capacity(256);
        for e in entries {
            encode_record(&mut buf, &e.encode());
        }
        let events = entries
            .iter()
            .filter(|e| matches!(e, Entry::Event { .. } | Entry::Alias { .. }))
            .count() as u64;
        if let Err(e) = self.journal.append(&buf) {
            if self.shut_down.load(Ordering::Acquire) {
                return Err(TrackError::ShutDown);
            }
            if let AppendError::Write(reason) = e {
                self.disk_full.fetch_add(events, Ordering::Relaxed);
                self.wake();
                return Err(TrackError::Journal(reason));
            }
            self.unavailable.fetch_add(events, Ordering::Relaxed);
            self.wake();
            let store_error = lock(&self.shared).store_error.clone();
            return Err(match store_error {
                Some(e) => TrackError::StoreUnavailable(e),
                None => TrackError::Journal(e.to_string()),
            });
        }
        self.recorded.fetch_add(events, Ordering::Relaxed);
        self.wake();
        Ok(())
    }

    fn session_entries(
        changes: impl IntoIterator<Item = SessionChange>,
        now: i64,
        out: &mut Vec<Entry>,
    ) {
        for change in changes {
            out.push(match change {
                SessionChange::Started { id } => Entry::Event {
                    ts_ms: now,
                    session: Some(id),
                    body: EventBody::SessionStart,
                },
                SessionChange::Ended { id, duration_ms } => Entry::Event {
                    ts_ms: now,
                    session: Some(id),
                    body: EventBody::SessionEnd { duration_ms },
                },
            });
        }
    }

    fn record(&self, body: EventBody, now: i64) -> Result<(), TrackError> {
        self.check_open()?;
        if self.opted_out.load(Ordering::Acquire) {
            self.refused_opted_out.fetch_add(1, Ordering::Relaxed);
            return Err(TrackError::OptedOut);
        }
        if body
            .purpose()
            .is_some_and(|p| self.consent.get(p) == ConsentState::Denied)
        {
            // Not an error: the app did nothing wrong. Never written to disk.
            self.refused_consent.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        if let Err(e) = validate_body(&body, &self.config.limits) {
            self.invalid.fetch_add(1, Ordering::Relaxed);
            self.wake();
            return Err(e.into());
        }
        // The sessions lock covers only the session bookkeeping: encoding and the
        // journal write happen after it is released, so a recording thread that is
        // descheduled mid-write never holds up the others. (Under concurrent recording,
        // an event may therefore land just before the session start it belongs to; its
        // `session_id` is exact either way.)
        let (changes, session) = {
            let mut sessions = lock(&self.sessions);
            let changes = sessions.activity(now);
            (changes, sessions.current())
        };
        let mut entries = Vec::with_capacity(1 + changes.len());
        Self::session_entries(changes, now, &mut entries);
        let event = Entry::Event {
            ts_ms: now,
            session,
            body,
        };
        let payload_len = tern_protocol::codec::encoded_len(&event).unwrap_or(usize::MAX);
        // The stored event adds seq and user (bounded by the id limit) to this payload.
        let max = self
            .config
            .limits
            .max_event_bytes
            .saturating_sub(self.config.limits.max_id_len + 32);
        if payload_len > max {
            self.invalid.fetch_add(1, Ordering::Relaxed);
            self.wake();
            return Err(ValidationError::EventTooLarge {
                seq: 0,
                len: payload_len,
                max,
            }
            .into());
        }
        entries.push(event);
        self.append(&entries)?;
        self.fire_triggers(&entries);
        Ok(())
    }

    /// Message triggers of entries just recorded: session starts and custom events
    /// some message waits for (a cheap check when none does).
    fn fire_triggers(&self, entries: &[Entry]) {
        for e in entries {
            if let Entry::Event { body, .. } = e {
                match body {
                    EventBody::SessionStart => self.live.send(Job::Fired(Fired::SessionStart)),
                    EventBody::Custom { name, .. } if self.live.triggers_on(name) => {
                        self.live.send(Job::Fired(Fired::Event(name.clone())));
                    }
                    _ => {}
                }
            }
        }
    }

    /// The context changed (a platform callback): validated, compared with the one in
    /// force, and recorded as one journal record when it differs.
    fn update_context(
        &self,
        field: &str,
        value: Option<&str>,
        set: impl FnOnce(&mut AppContext),
    ) -> Result<(), TrackError> {
        self.check_open()?;
        if let Some(v) = value {
            validate_id(field, v, &self.config.limits)?;
        }
        let mut current = lock(&self.context);
        let mut next = current.clone();
        set(&mut next);
        if next == *current {
            return Ok(());
        }
        self.append(&[Entry::Context {
            context: next.clone(),
        }])?;
        *current = next;
        Ok(())
    }

    /// The app came to the foreground: after a background, an `app_opened` (when
    /// lifecycle events are on and the user has not opted out).
    fn foreground_opened(&self, now: i64) -> Result<(), TrackError> {
        if !self.backgrounded.swap(false, Ordering::AcqRel)
            || !self.config.auto_lifecycle
            || self.opted_out.load(Ordering::Acquire)
        {
            return Ok(());
        }
        self.record(
            EventBody::AppOpened {
                from_background: true,
            },
            now,
        )
    }

    fn session_call(
        &self,
        now: i64,
        f: impl FnOnce(&mut SessionTracker, i64) -> Vec<SessionChange>,
    ) -> Result<(), TrackError> {
        self.check_open()?;
        if self.opted_out.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut sessions = lock(&self.sessions);
        let mut entries = Vec::new();
        Self::session_entries(f(&mut sessions, now), now, &mut entries);
        if entries.is_empty() {
            return Ok(());
        }
        self.append(&entries)?;
        drop(sessions);
        self.fire_triggers(&entries);
        Ok(())
    }
}

impl Inner {
    /// Evaluates flag `key` with the bundle in use and the unit: the decision, why, and
    /// the exposure it makes. `None` without a bundle, a flag of that key, or a unit.
    fn evaluate(&self, key: &str) -> Option<(FlagDecision, FlagReason, ExposureKey)> {
        let bundle = self.live.bundle()?;
        let flag = bundle.flag(key)?;
        let unit = self.unit()?;
        let (decision, reason) =
            evaluate_flag_with_reason(flag, self.config.app_id.as_str(), &unit);
        let exposure = ExposureKey {
            flag: key.to_owned(),
            variant: decision.variant_name().to_owned(),
            unit,
            config_version: bundle.version,
        };
        Some((decision, reason, exposure))
    }

    /// Evaluates flag `key` and records its exposure unless it was recorded before.
    /// Never touches SQLite: the event goes to the journal like any other, and the
    /// store keeps its key when it applies it.
    fn expose(&self, key: &str, now: i64) -> (FlagDecision, Result<ExposureOutcome, TrackError>) {
        let counters = &self.exposure_counters;
        let Some((decision, _, exposure)) = self.evaluate(key) else {
            return (FlagDecision::Off, Ok(ExposureOutcome::NoFlag));
        };
        if lock(&self.exposures).contains(&exposure) {
            counters.already_recorded.fetch_add(1, Ordering::Relaxed);
            return (decision, Ok(ExposureOutcome::AlreadyRecorded));
        }
        // The first read of this key. Under the sessions lock, as `identify` and
        // `delete_local_data` append theirs: the unit evaluated now is the user the
        // store will apply the event under. Evaluated again, as the user or the bundle
        // may have changed since.
        let sessions = lock(&self.sessions);
        let Some((decision, reason, exposure)) = self.evaluate(key) else {
            return (FlagDecision::Off, Ok(ExposureOutcome::NoFlag));
        };
        if let Err(e) = self.check_open() {
            return (decision, Err(e));
        }
        if self.opted_out.load(Ordering::Acquire) {
            self.refused_opted_out.fetch_add(1, Ordering::Relaxed);
            return (decision, Err(TrackError::OptedOut));
        }
        match lock(&self.exposures).admit(&exposure) {
            Admit::New => {}
            Admit::Seen => {
                counters.already_recorded.fetch_add(1, Ordering::Relaxed);
                return (decision, Ok(ExposureOutcome::AlreadyRecorded));
            }
            Admit::Full => {
                counters.over_cap.fetch_add(1, Ordering::Relaxed);
                return (decision, Ok(ExposureOutcome::OverCap));
            }
        }
        let body = EventBody::Exposure {
            flag: exposure.flag.clone(),
            variant: exposure.variant.clone(),
            config_version: exposure.config_version,
            reason: Some(reason),
        };
        if let Err(e) = validate_body(&body, &self.config.limits) {
            // A flag key or variant over the id limit (the bundle's doing): counted
            // once, as the key stays remembered, not on every read.
            self.invalid.fetch_add(1, Ordering::Relaxed);
            self.wake();
            return (decision, Err(e.into()));
        }
        let entry = Entry::Event {
            ts_ms: now,
            // A flag read is not user activity: it joins the open session, if any, and
            // never starts one.
            session: sessions.current(),
            body,
        };
        let r = self.append(&[entry]);
        drop(sessions);
        match r {
            Ok(()) => {
                counters.recorded.fetch_add(1, Ordering::Relaxed);
                (decision, Ok(ExposureOutcome::Recorded))
            }
            Err(e) => {
                lock(&self.exposures).forget(&exposure);
                (decision, Err(e))
            }
        }
    }
}

impl Host for Inner {
    fn persist_impression(&self, message_id: &str, now_ms: i64) -> Option<PacingState> {
        let mut db = lock(&self.db);
        match db.as_mut()?.record_impression(message_id, now_ms) {
            Ok(state) => Some(state),
            Err(e) => {
                tracing::warn!(error = %e, "persisting a message impression failed");
                None
            }
        }
    }

    fn record_shown(&self, message_id: &str) {
        let r = self.record(
            EventBody::MessageImpression {
                message_id: message_id.to_owned(),
                action: "shown".to_owned(),
            },
            now_ms(),
        );
        if let Err(e) = r {
            tracing::debug!(error = %e, "message impression not recorded");
        }
    }

    fn persist_user_properties(&self, props: &Properties) {
        if let Some(db) = lock(&self.db).as_mut() {
            if let Err(e) = db.save_user_properties(props) {
                tracing::warn!(error = %e, "persisting user properties failed");
            }
        }
    }

    fn unit(&self) -> Option<String> {
        match self.live.user() {
            Some(u) => Some(u.as_str().to_owned()),
            None => lock(&self.snapshot).device_id.map(|d| d.to_string()),
        }
    }
}

/// The Tern SDK. Cheap to clone; every clone is the same instance. When the last
/// clone is dropped the background thread stops (as with [`Tern::shutdown`], without
/// waiting).
#[derive(Clone)]
pub struct Tern {
    handle: Arc<Handle>,
}

struct Handle {
    inner: Arc<Inner>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.inner.live.stop();
        self.inner.shut_down.store(true, Ordering::Release);
        lock(&self.inner.shared).shutdown_requested = true;
        self.inner.wake_pending.store(false, Ordering::Release);
        self.inner.wake();
    }
}

impl std::fmt::Debug for Tern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tern")
            .field("app_id", &self.inner().config.app_id)
            .field("data_dir", &self.inner().config.data_dir)
            .finish()
    }
}

impl Tern {
    fn inner(&self) -> &Inner {
        &self.handle.inner
    }

    /// Starts the SDK. Returns at once: the data directory, journal and database are
    /// opened on a background thread (see the module docs for the durability window).
    pub fn start(config: TernConfig) -> Result<Tern, StoreError> {
        // The directory lock is taken here, so a second instance — in this process or
        // another one — is refused at once with `StoreError::Locked`.
        let dir_lock = take_lock(&config.data_dir)?;
        let config_max_exposures = config.store_limits.max_exposures;
        let start_context = config.context.clone();
        let (live, jobs) = Live::new(config.app_id.clone(), config.sdk.platform.clone());
        let live = Arc::new(live);
        let inner = Arc::new(Inner {
            live: live.clone(),
            sessions: Mutex::new(SessionTracker::new(config.session_timeout)),
            config,
            journal: Journal::new(),
            opted_out: AtomicBool::new(false),
            opt_out_called: AtomicBool::new(false),
            shut_down: AtomicBool::new(false),
            killed: AtomicBool::new(false),
            journal_ready: AtomicBool::new(false),
            invalid: AtomicU64::new(0),
            unavailable: AtomicU64::new(0),
            disk_full: AtomicU64::new(0),
            invalid_moved: AtomicU64::new(0),
            unavailable_moved: AtomicU64::new(0),
            disk_full_moved: AtomicU64::new(0),
            recorded: AtomicU64::new(0),
            refused_opted_out: AtomicU64::new(0),
            context: Mutex::new(start_context),
            backgrounded: AtomicBool::new(false),
            wake_pending: AtomicBool::new(false),
            apply_now: AtomicBool::new(false),
            marker_stale: AtomicBool::new(true),
            steps: AtomicU64::new(0),
            worker: Mutex::new(None),
            db: Mutex::new(None),
            snapshot: Mutex::new(StoreSnapshot::default()),
            store_changed: Arc::new(tokio::sync::Notify::new()),
            shared: Mutex::new(Shared::default()),
            finished: Condvar::new(),
            uploader: Mutex::new(None),
            exposures: Mutex::new(Exposures::new(config_max_exposures)),
            exposure_counters: ExposureCounters::default(),
            consent: CallConsent::default(),
            refused_consent: AtomicU64::new(0),
            push: Mutex::new(push::PushHint::default()),
        });
        inner.consent.adopt(inner.config.consent.default_state);
        // The launch: the context at start and, against the version the store kept,
        // the lifecycle events (applied by the store, exactly once).
        if let Err(e) = inner.append(&[Entry::Launch {
            ts_ms: now_ms(),
            context: inner.config.context.clone(),
            lifecycle: inner.config.auto_lifecycle,
        }]) {
            tracing::warn!(error = %e, "the launch record could not be written");
        }
        let worker_inner = inner.clone();
        let thread = thread::Builder::new()
            .name("tern-store".into())
            .spawn(move || Worker::new(worker_inner, dir_lock).run())
            .map_err(|e| StoreError::io("spawning the store thread", PathBuf::new(), e))?;
        *lock(&inner.worker) = Some(thread.thread().clone());
        let dispatcher = Dispatcher::new(live, Arc::downgrade(&inner));
        if let Err(e) = thread::Builder::new()
            .name("tern-live".into())
            .spawn(move || dispatcher.run(jobs))
        {
            // Values and flags still work; listeners are not called.
            tracing::error!(error = %e, "the live-config thread could not start");
        }
        let tern = Tern {
            handle: Arc::new(Handle {
                inner,
                thread: Mutex::new(Some(thread)),
            }),
        };
        let cfg = &tern.inner().config;
        if let (Some(upload), false) = (&cfg.upload, cfg.shard_map.nodes.is_empty()) {
            match crate::upload::Uploader::start(tern.clone(), upload.clone()) {
                Ok(u) => *lock(&tern.inner().uploader) = Some(u),
                Err(e) => {
                    // Recording still works; the data waits in the store.
                    tracing::error!(error = %e, "the uploader could not start");
                    tern.note_upload_result(format!("uploader not started: {e}"));
                }
            }
        }
        Ok(tern)
    }

    /// The platform reports network reachability; sending pauses while it is down and
    /// resumes at once (backoff cancelled) when it comes back.
    pub fn set_network_available(&self, available: bool) {
        if let Some(u) = lock(&self.inner().uploader).as_ref() {
            u.set_network(available);
        }
    }

    /// Records a custom event. Returns once the event is in the journal (durable, see
    /// the module docs); never does network I/O or waits for the uploader.
    pub fn track(&self, name: &str, props: Properties) -> Result<(), TrackError> {
        self.inner().record(
            EventBody::Custom {
                name: name.to_owned(),
                props,
            },
            now_ms(),
        )
    }

    /// Records a purchase: price in millionths of `currency` (ISO 4217).
    pub fn purchase(
        &self,
        product_id: &str,
        amount_micros: i64,
        currency: &str,
        quantity: u32,
        props: Properties,
    ) -> Result<(), TrackError> {
        self.apply(
            Call::Purchase {
                product_id: product_id.to_owned(),
                amount_micros,
                currency: currency.to_owned(),
                quantity,
                props,
            },
            now_ms(),
        )
    }

    /// Sets and removes user properties (recorded as an event).
    pub fn set_user_properties(
        &self,
        set: Properties,
        unset: Vec<String>,
    ) -> Result<(), TrackError> {
        self.apply(Call::SetUserProperties { set, unset }, now_ms())
    }

    /// Records that an in-app message was shown or acted on.
    pub fn message_impression(&self, message_id: &str, action: &str) -> Result<(), TrackError> {
        self.apply(
            Call::MessageImpression {
                message_id: message_id.to_owned(),
                action: action.to_owned(),
            },
            now_ms(),
        )
    }

    /// Sets the user that events recorded from now on belong to; `None` makes them
    /// anonymous. Events recorded earlier keep the user they were recorded under.
    pub fn identify(&self, user_id: Option<&str>) -> Result<(), TrackError> {
        self.apply(
            Call::Identify {
                user_id: user_id.map(str::to_owned),
            },
            now_ms(),
        )
    }

    /// Links the device's anonymous identity to `user_id` and identifies it: records
    /// one `alias` event (the current anonymous id and `user_id`, under `user_id`) so
    /// the backend merges the anonymous history into the user's (protocol §8.1), then
    /// events belong to `user_id` as after [`Tern::identify`]. Call it at login, once
    /// per anonymous id; [`Tern::identify`] alone records no alias. Ordered with the
    /// other calls and durable when it returns, like an event. While opted out the
    /// user is set and no alias is recorded.
    pub fn alias(&self, user_id: &str) -> Result<(), TrackError> {
        self.apply(
            Call::Alias {
                user_id: user_id.to_owned(),
            },
            now_ms(),
        )
    }

    /// Logout: ends the open session, forgets the user and the user properties (on
    /// the device and in the live state: flags are evaluated for the device again and
    /// the config is fetched for it), and gives the device a new anonymous id. Events
    /// recorded after it are anonymous under the new id; the device id and its
    /// sequence numbers are kept. Ordered with the other calls and durable when it
    /// returns.
    pub fn reset(&self) -> Result<(), TrackError> {
        self.apply(Call::Reset, now_ms())
    }

    /// The anonymous id the store has applied so far (the one events recorded now
    /// carry once applied; see [`Tern::wait_applied`]); `None` while the store is not
    /// open.
    pub fn anonymous_id(&self) -> Option<AnonymousId> {
        lock(&self.inner().db)
            .as_ref()
            .map(|db| db.meta().anonymous_id)
    }

    /// The platform reports the kind of network the device is on now (`None`:
    /// unknown). Events recorded from now on carry it in their batch's context; a
    /// value equal to the current one records nothing. Call it from the platform's
    /// network callback, not per event.
    pub fn set_network_type(&self, network: Option<NetworkType>) -> Result<(), TrackError> {
        self.apply(Call::SetNetworkType { network }, now_ms())
    }

    /// The platform reports the user's locale (BCP 47, `None`: unknown); as
    /// [`Tern::set_network_type`].
    pub fn set_locale(&self, locale: Option<&str>) -> Result<(), TrackError> {
        let locale = locale.map(str::to_owned);
        self.apply(Call::SetLocale { locale }, now_ms())
    }

    /// The platform reports the device's time zone (IANA name, `None`: unknown); as
    /// [`Tern::set_network_type`].
    pub fn set_time_zone(&self, time_zone: Option<&str>) -> Result<(), TrackError> {
        let time_zone = time_zone.map(str::to_owned);
        self.apply(Call::SetTimeZone { time_zone }, now_ms())
    }

    /// The device and app context events are recorded in now (without the install
    /// id, which the store adds).
    pub fn context(&self) -> AppContext {
        lock(&self.inner().context).clone()
    }

    /// This installation's id (see protocol §5.2.1), once the store is open.
    pub fn install_id(&self) -> Option<InstallId> {
        lock(&self.inner().db)
            .as_ref()
            .map(|db| db.meta().context.install_id)
    }

    /// Stops (`true`) or resumes (`false`) recording and uploading. While opted out,
    /// recording calls return [`TrackError::OptedOut`] and keep nothing; events queued
    /// before stay on the device (not uploaded) until [`Tern::delete_local_data`] or
    /// opting back in. Nothing else leaves the device either: no config request and no
    /// push subscription (an open one is closed), so the device id is not sent — except
    /// a deletion request ([`Tern::request_deletion`]). Persisted across restarts.
    pub fn opt_out(&self, opted_out: bool) -> Result<(), TrackError> {
        self.apply(Call::OptOut { opted_out }, now_ms())
    }

    /// True while opted out.
    pub fn is_opted_out(&self) -> bool {
        self.inner().opted_out.load(Ordering::Acquire)
    }

    /// Deletes every event recorded before this call, the user id, and the device id
    /// (a new one is generated). Ordered with other calls: events recorded after it are
    /// kept. Returns at once; the deletion is durable like an event.
    pub fn delete_local_data(&self) -> Result<(), TrackError> {
        self.apply(Call::DeleteLocalData, now_ms())
    }

    /// Sets the consent state of `purpose` (see [`crate::consent`]): granted releases
    /// the events held while it was pending into the upload queue, in their recorded
    /// order; denied deletes them, and events of the purpose recorded after it are not
    /// kept (the calls return `Ok`, counted in [`Stats::refused_consent`]); pending keeps
    /// them on the device, bounded. Ordered with the other calls, durable when it
    /// returns, persisted across restarts (it then wins over
    /// [`crate::TernConfigBuilder::default_consent`]). Accepted while opted out.
    pub fn set_consent(&self, purpose: Purpose, state: ConsentState) -> Result<(), TrackError> {
        self.apply(Call::SetConsent { purpose, state }, now_ms())
    }

    /// The consent state of `purpose` the recording calls follow now.
    pub fn consent(&self, purpose: Purpose) -> ConsentState {
        self.inner().consent.get(purpose)
    }

    /// The person asks for their data to be deleted: a `deletion_request` event naming
    /// the device id, user and anonymous id in force is kept and sent upstream — before
    /// anything else, whatever the consent states, also while opted out (it is the
    /// last thing the device sends under this device id) — then the local data is
    /// deleted as by [`Tern::delete_local_data`] (new device id). Ordered with the
    /// other calls and durable when it returns; delivered across restarts (retried
    /// like any batch). Protocol §8.2.
    pub fn request_deletion(&self) -> Result<(), TrackError> {
        self.apply(Call::RequestDeletion, now_ms())
    }

    /// Starts a new session now (ending the open one).
    pub fn start_session(&self) -> Result<(), TrackError> {
        self.apply(Call::StartSession, now_ms())
    }

    /// Ends the open session, if any.
    pub fn end_session(&self) -> Result<(), TrackError> {
        self.apply(Call::EndSession, now_ms())
    }

    /// The platform layer reports the app came to the foreground.
    pub fn on_foreground(&self) -> Result<(), TrackError> {
        self.apply(Call::Foreground, now_ms())
    }

    /// The platform layer reports the app went to the background: a flush is requested.
    pub fn on_background(&self) -> Result<(), TrackError> {
        self.apply(Call::Background, now_ms())
    }

    /// Makes recording call `call` as if it had been made at `at_ms` (Unix ms): the
    /// events it records carry that time, and sessions advance with it. For callers
    /// that keep calls made before the SDK started and apply them, in order, once it
    /// has (the bindings). Calls should be applied in the order they were made, with
    /// non-decreasing times; the outcome is what the call would have returned.
    pub fn apply(&self, call: Call, at_ms: i64) -> Result<(), TrackError> {
        let inner = self.inner();
        match call {
            Call::Track { name, props } => inner.record(EventBody::Custom { name, props }, at_ms),
            Call::Purchase {
                product_id,
                amount_micros,
                currency,
                quantity,
                props,
            } => inner.record(
                EventBody::Purchase {
                    product_id,
                    amount_micros,
                    currency,
                    quantity,
                    props,
                },
                at_ms,
            ),
            Call::SetUserProperties { set, unset } => {
                if let Err(e) = validate_properties("user properties", &set, &inner.config.limits) {
                    // Refused like any other invalid event (opt-out and shutdown first).
                    inner.check_open()?;
                    if inner.opted_out.load(Ordering::Acquire) {
                        inner.refused_opted_out.fetch_add(1, Ordering::Relaxed);
                        return Err(TrackError::OptedOut);
                    }
                    inner.invalid.fetch_add(1, Ordering::Relaxed);
                    inner.wake();
                    return Err(e.into());
                }
                inner.record(
                    EventBody::UserProperties {
                        set: set.clone(),
                        unset: unset.clone(),
                    },
                    at_ms,
                )?;
                inner.live.send(Job::UserProps { set, unset });
                Ok(())
            }
            Call::MessageImpression { message_id, action } => {
                inner.record(EventBody::MessageImpression { message_id, action }, at_ms)
            }
            Call::Identify { user_id } => {
                inner.check_open()?;
                if let Some(user) = &user_id {
                    validate_id("user_id", user, &inner.config.limits)?;
                }
                let user = user_id.map(UserId::new);
                let _sessions = lock(&inner.sessions);
                inner.append(&[Entry::Identify { user: user.clone() }])?;
                if inner.live.set_user(user) {
                    inner.live.send(Job::UserChanged);
                }
                Ok(())
            }
            Call::OptOut { opted_out } => {
                inner.check_open()?;
                let _sessions = lock(&inner.sessions);
                inner.opt_out_called.store(true, Ordering::Release);
                inner.opted_out.store(opted_out, Ordering::Release);
                if opted_out {
                    inner.forget_push_token();
                }
                inner.append(&[Entry::OptOut { opted_out }])?;
                // The uploader closes the push subscription (or opens it again) now.
                inner.store_changed.notify_one();
                Ok(())
            }
            Call::DeleteLocalData => {
                inner.check_open()?;
                let _sessions = lock(&inner.sessions);
                inner.append(&[Entry::DeleteLocalData])?;
                inner.forget_push_token();
                lock(&inner.exposures).clear();
                inner.live.set_user(None);
                inner.live.send(Job::UserChanged);
                Ok(())
            }
            Call::Alias { user_id } => {
                inner.check_open()?;
                validate_id("user_id", &user_id, &inner.config.limits)?;
                let user = UserId::new(user_id);
                let sessions = lock(&inner.sessions);
                let session = sessions.current();
                inner.append(&[Entry::Alias {
                    ts_ms: at_ms,
                    session,
                    user: user.clone(),
                }])?;
                drop(sessions);
                if inner.live.set_user(Some(user)) {
                    inner.live.send(Job::UserChanged);
                }
                self.refresh_config();
                Ok(())
            }
            Call::Reset => {
                inner.check_open()?;
                let mut sessions = lock(&inner.sessions);
                let mut entries = Vec::new();
                // The session ends under the identity it was recorded under.
                if !inner.opted_out.load(Ordering::Acquire) {
                    Inner::session_entries(sessions.end(at_ms), at_ms, &mut entries);
                }
                entries.push(Entry::Reset {
                    anonymous_id: AnonymousId::random(),
                });
                inner.append(&entries)?;
                drop(sessions);
                // Always: the user properties are cleared even when no user was set.
                inner.live.set_user(None);
                inner.live.send(Job::UserChanged);
                self.refresh_config();
                Ok(())
            }
            Call::SetConsent { purpose, state } => {
                inner.check_open()?;
                let _sessions = lock(&inner.sessions);
                inner.consent.set[CallConsent::index(purpose)].store(true, Ordering::Release);
                inner.consent.store(purpose, state);
                inner.append(&[Entry::SetConsent {
                    purpose: purpose.as_str().to_owned(),
                    state: state.as_str().to_owned(),
                }])
            }
            Call::RequestDeletion => {
                inner.check_open()?;
                let sessions = lock(&inner.sessions);
                let session = sessions.current();
                inner.append(&[Entry::RequestDeletion {
                    ts_ms: at_ms,
                    session,
                }])?;
                drop(sessions);
                inner.forget_push_token();
                lock(&inner.exposures).clear();
                inner.live.set_user(None);
                inner.live.send(Job::UserChanged);
                self.flush();
                Ok(())
            }
            Call::StartSession => {
                inner.session_call(at_ms, |s, now| s.start(now).into_iter().collect())
            }
            Call::EndSession => {
                inner.session_call(at_ms, |s, now| s.end(now).into_iter().collect())
            }
            Call::Foreground => {
                if let Some(u) = lock(&inner.uploader).as_ref() {
                    u.foreground();
                }
                inner.session_call(at_ms, |s, now| s.foreground(now).into_iter().collect())?;
                inner.refresh_push_token(at_ms);
                inner.foreground_opened(at_ms)
            }
            Call::SetNetworkType { network } => {
                let text = network.as_ref().map(NetworkType::as_str);
                inner.update_context("network", text, |c| c.network = network.clone())
            }
            Call::SetLocale { locale } => {
                inner.update_context("locale", locale.as_deref(), |c| c.locale = locale.clone())
            }
            Call::SetTimeZone { time_zone } => {
                let text = time_zone.as_deref();
                inner.update_context("time_zone", text, |c| c.time_zone = time_zone.clone())
            }
            Call::Background => {
                inner.backgrounded.store(true, Ordering::Release);
                inner.session_call(at_ms, |s, now| s.background(now).into_iter().collect())?;
                self.flush();
                Ok(())
            }
            Call::SetPushToken {
                provider,
                environment,
                token,
            } => inner.set_push_token(provider, environment, token, at_ms),
            Call::PushReceived { campaign_id } => {
                inner.record(EventBody::PushReceived { campaign_id }, at_ms)
            }
            Call::PushOpened {
                campaign_id,
                action,
            } => inner.record(
                EventBody::PushOpened {
                    campaign_id,
                    action,
                },
                at_ms,
            ),
        }
    }

    /// Counts `n` events refused before they reached this instance — by a foreign
    /// layer that could not convert them ([`Refused::Invalid`]), or because they could
    /// not be kept, e.g. a bounded queue of calls made before start was full
    /// ([`Refused::Unavailable`]) — so they are in [`Stats`] and travel upstream in the
    /// health counters like the refusals counted here.
    pub fn count_refused(&self, reason: Refused, n: u64) {
        let counter = match reason {
            Refused::Invalid => &self.inner().invalid,
            Refused::Unavailable => &self.inner().unavailable,
        };
        counter.fetch_add(n, Ordering::Relaxed);
        self.inner().wake();
    }

    /// The open session, if any.
    pub fn current_session(&self) -> Option<SessionId> {
        lock(&self.inner().sessions).current()
    }

    /// Asks for everything recorded so far to be batched and sent as soon as possible.
    /// Returns at once.
    pub fn flush(&self) {
        lock(&self.inner().shared).flush_requested = true;
        self.inner().wake_pending.store(false, Ordering::Release);
        self.inner().wake();
        if let Some(u) = lock(&self.inner().uploader).as_ref() {
            u.flush();
        }
    }

    /// A snapshot of state and counters.
    pub fn stats(&self) -> Stats {
        let inner = self.inner();
        let shared = lock(&inner.shared);
        let mut s = Stats {
            journal_ready: inner.journal_ready.load(Ordering::Acquire),
            store_error: shared.store_error.clone(),
            last_upload: shared.last_upload.clone(),
            last_refusal: shared.last_refusal.clone(),
            corrupt_records: shared.corrupt_records,
            journal_backlog_bytes: shared.journal_backlog,
            dropped_opted_out: shared.dropped_opted_out,
            ..Stats::default()
        };
        drop(shared);
        let invalid = inner.invalid.load(Ordering::Acquire);
        let unavailable = inner.unavailable.load(Ordering::Acquire);
        let disk_full = inner.disk_full.load(Ordering::Acquire);
        s.refused_opted_out = inner.refused_opted_out.load(Ordering::Relaxed);
        s.events_recorded = inner.recorded.load(Ordering::Relaxed);
        s.store_steps = inner.steps.load(Ordering::Relaxed);
        let snap = lock(&inner.snapshot).clone();
        s.store_ready = snap.open;
        s.device_id = snap.device_id;
        s.user_id = snap.user_id;
        (s.queued_events, s.queued_bytes) = snap.queued;
        s.dropped_overflow = snap.health.dropped_overflow + inner.journal.pending_dropped();
        // The refusals the store's counters do not include yet are added: the snapshot
        // says how many it includes, so nothing is counted twice or missed.
        s.dropped_invalid = snap.health.dropped_invalid + invalid.saturating_sub(snap.moved.0);
        s.dropped_unavailable =
            snap.health.dropped_unavailable + unavailable.saturating_sub(snap.moved.1);
        s.dropped_rejected = snap.health.dropped_rejected;
        s.retries = snap.health.retries;
        s.auth_failures = snap.health.auth_failures;
        s.store_resets = snap.health.store_resets;
        s.reset_unknown = snap.health.reset_unknown;
        s.dropped_corrupt = snap.health.dropped_corrupt;
        s.dropped_disk_full =
            snap.health.dropped_disk_full + disk_full.saturating_sub(snap.moved.2);
        s.corrupt_records += snap.corrupt_events;
        if let Some(u) = lock(&inner.uploader).as_ref() {
            s.upload = u.stats();
        }
        s.live = inner.live.stats();
        let x = &inner.exposure_counters;
        s.exposures = ExposureStats {
            recorded: x.recorded.load(Ordering::Relaxed),
            already_recorded: x.already_recorded.load(Ordering::Relaxed),
            over_cap: x.over_cap.load(Ordering::Relaxed),
            failed: x.failed.load(Ordering::Relaxed),
            remembered: lock(&inner.exposures).len() as u64,
        };
        s.consent = inner.consent.states();
        s.refused_consent = inner.refused_consent.load(Ordering::Relaxed);
        s.consent_counters = snap.consent_counters;
        s
    }

    // ------------------------------------------------------------------------------
    // Live config, flags and messages (see `crate::live::remote`)

    /// The remote config value of `key` in the bundle in use (fetched, or cached from
    /// an earlier run), `None` if absent or before any bundle. No I/O.
    pub fn config_value(&self, key: &str) -> Option<Value> {
        self.inner().live.value(key)
    }

    /// Every remote config value of the bundle in use.
    pub fn config_values(&self) -> std::collections::BTreeMap<String, Value> {
        self.inner()
            .live
            .bundle()
            .map(|b| b.values.clone())
            .unwrap_or_default()
    }

    /// The string value of `key`, or `default` when absent or not a string.
    pub fn config_string(&self, key: &str, default: &str) -> String {
        match self.config_value(key) {
            Some(Value::String(s)) => s,
            _ => default.to_owned(),
        }
    }

    /// The boolean value of `key`, or `default` when absent or not a boolean.
    pub fn config_bool(&self, key: &str, default: bool) -> bool {
        match self.config_value(key) {
            Some(Value::Bool(b)) => b,
            _ => default,
        }
    }

    /// The integer value of `key`, or `default` when absent or not an integer.
    pub fn config_i64(&self, key: &str, default: i64) -> i64 {
        match self.config_value(key) {
            Some(Value::Int(i)) => i,
            _ => default,
        }
    }

    /// The number value of `key` (a float, or an integer converted), or `default`.
    pub fn config_f64(&self, key: &str, default: f64) -> f64 {
        match self.config_value(key) {
            Some(Value::Float(f)) => f,
            Some(Value::Int(i)) => i as f64,
            _ => default,
        }
    }

    /// Evaluates feature flag `key` on the device with the protocol's deterministic
    /// bucketing ([`tern_protocol::rollout::evaluate_flag`]), the unit being the user
    /// id if identified, else the device id. `Off` for an unknown flag, before any
    /// bundle, and before the store has opened (the device id is not known yet).
    ///
    /// With [`TernConfig::auto_exposures`] (the default), the read records the flag's
    /// exposure — one `exposure` event per (flag, variant, unit, config version), not
    /// again after a restart — as [`Tern::record_exposure`] does. It never fails and
    /// never waits for SQLite: a recording that fails is counted
    /// ([`ExposureStats::failed`]), and nothing is recorded while opted out or after
    /// shutdown.
    pub fn flag(&self, key: &str) -> FlagDecision {
        let inner = self.inner();
        let quiet = !inner.config.auto_exposures
            || inner.shut_down.load(Ordering::Acquire)
            || inner.opted_out.load(Ordering::Acquire);
        if quiet {
            let unit = inner.unit();
            return inner.live.flag(key, unit.as_deref());
        }
        let (decision, outcome) = inner.expose(key, now_ms());
        match outcome {
            Ok(_) | Err(TrackError::OptedOut | TrackError::ShutDown) => {}
            Err(e) => {
                inner
                    .exposure_counters
                    .failed
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(flag = key, error = %e, "exposure not recorded");
            }
        }
        decision
    }

    /// Records the exposure of flag `key` as it evaluates now — for apps that read
    /// flags early (with [`TernConfig::auto_exposures`] off) and show the result later:
    /// call this when the user sees it. Deduplicated with the automatic exposures: one
    /// `exposure` event per (flag, variant, unit, config version), across restarts.
    /// Returns once the event is in the journal (durable, like `track`); never waits
    /// for SQLite. Errors as the recording calls: `OptedOut`, `ShutDown`, `Journal`,
    /// `StoreUnavailable`, `Invalid` (a flag key or variant over the id limit).
    pub fn record_exposure(&self, key: &str) -> Result<ExposureOutcome, TrackError> {
        let inner = self.inner();
        inner.check_open()?;
        if inner.opted_out.load(Ordering::Acquire) {
            inner.refused_opted_out.fetch_add(1, Ordering::Relaxed);
            return Err(TrackError::OptedOut);
        }
        inner.expose(key, now_ms()).1
    }

    /// True when [`Tern::flag`] is not `Off`.
    pub fn flag_enabled(&self, key: &str) -> bool {
        self.flag(key).is_on()
    }

    /// Version, ETag and freshness of the config bundle in use.
    pub fn config_info(&self) -> ConfigInfo {
        self.inner().live.info()
    }

    /// The full config bundle in use (values, flags, messages), if any.
    pub fn config_bundle(&self) -> Option<Arc<ConfigBundle>> {
        self.inner().live.bundle()
    }

    /// Asks the uploader to fetch the config bundle now (debounced). Returns at once;
    /// listeners hear of a change.
    pub fn refresh_config(&self) {
        if let Some(u) = lock(&self.inner().uploader).as_ref() {
            u.refresh_config();
        }
    }

    /// Calls `listener` on every config change (new bundle, or flag decisions changed
    /// by `identify`), on the SDK's `tern-live` thread. Keep the handle: dropping it
    /// (or [`ListenerHandle::cancel`]) removes the listener.
    pub fn add_config_listener(&self, listener: Arc<dyn ConfigListener>) -> ListenerHandle {
        self.inner().live.add_config_listener(listener)
    }

    /// Calls `listener` with each in-app message to show, on the SDK's `tern-live`
    /// thread. Messages are picked only while at least one message listener is
    /// registered; each delivery records a `message_impression(id, "shown")` event and
    /// counts towards the message's pacing (persisted). Keep the handle: dropping it
    /// removes the listener.
    pub fn add_message_listener(&self, listener: Arc<dyn MessageListener>) -> ListenerHandle {
        self.inner().live.add_message_listener(listener)
    }

    /// The device id, once the store is open.
    pub(crate) fn device_id(&self) -> Option<DeviceId> {
        lock(&self.inner().snapshot).device_id
    }

    /// Uploader interface: the store has opened and the cached bundle is loaded.
    pub(crate) fn live_ready(&self) -> bool {
        self.inner().live.is_ready()
    }

    /// The user config requests are sent for.
    pub(crate) fn live_user(&self) -> Option<UserId> {
        self.inner().live.user()
    }

    /// Uploader interface: a fetched bundle — persisted, then put in use.
    pub(crate) fn live_install(&self, bundle: ConfigBundle, stale: bool) {
        let at = now_ms();
        if let Some(db) = lock(&self.inner().db).as_mut() {
            if let Err(e) = db.save_config(&bundle, at) {
                tracing::warn!(error = %e, "caching the config bundle failed");
            }
        }
        self.inner().live.install_fetched(bundle, at, stale);
    }

    /// Uploader interface: the bundle in use is current.
    pub(crate) fn live_confirm(&self, stale: bool) {
        self.inner().live.confirm(now_ms(), stale);
    }

    /// The configuration this instance was started with.
    pub fn config(&self) -> &TernConfig {
        &self.inner().config
    }

    /// Records a refusal that may be the server's fault (shown in [`Stats`]).
    pub fn note_refusal(&self, what: impl Into<String>) {
        lock(&self.inner().shared).last_refusal = Some(what.into());
    }

    /// Records the outcome of the last upload attempt (shown in [`Stats`]).
    pub fn note_upload_result(&self, result: impl Into<String>) {
        lock(&self.inner().shared).last_upload = Some(result.into());
    }

    fn with_db<T>(
        &self,
        f: impl FnOnce(&mut Db) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        let out = match lock(&self.inner().db).as_mut() {
            Some(db) => {
                let out = f(db);
                *lock(&self.inner().snapshot) = StoreSnapshot::of(db, self.inner());
                out.map(Some)
            }
            None => return Ok(None),
        };
        // The marker is due for a refresh: a store thread asleep with nothing due
        // wakes once to sleep until then instead.
        if !self.inner().marker_stale.swap(true, Ordering::AcqRel) {
            if let Some(t) = lock(&self.inner().worker).as_ref() {
                t.unpark();
            }
        }
        out
    }

    /// Uploader interface: cuts batches from the unbatched backlog (see
    /// [`Db::form_batches`]). Returns how many were formed (0 until the store is open).
    pub fn form_batches(&self, force: bool) -> Result<usize, StoreError> {
        let flush = self.inner().config.flush;
        let limits = self.inner().config.limits;
        let max_events = u64::from(flush.max_batch_events).min(limits.max_batch_events as u64);
        let max_bytes = flush.max_batch_bytes.min(limits.max_batch_bytes as u64);
        Ok(self
            .with_db(|db| db.form_batches(max_events, max_bytes, force))?
            .unwrap_or(0))
    }

    /// Uploader interface: the oldest formed batch not in flight, now marked in flight.
    /// `None` before the store is open or when nothing is ready; while opted out, only
    /// the batch of the opt-out's cleared push token (protocol §8.3).
    pub fn next_batch(&self) -> Result<Option<OutgoingBatch>, StoreError> {
        let cfg = &self.inner().config;
        if self.is_opted_out() {
            // Only deletion requests (see `crate::consent`) and the opt-out's cleared
            // push token (protocol §8.3) leave while opted out.
            return Ok(self
                .with_db(|db| match db.next_deletion_batch(&cfg.app_id, &cfg.sdk)? {
                    Some(b) => Ok(Some(b)),
                    None => db.next_push_clear_batch(&cfg.app_id, &cfg.sdk),
                })?
                .flatten());
        }
        Ok(self
            .with_db(|db| db.next_batch(&cfg.app_id, &cfg.sdk))?
            .flatten())
    }

    /// Uploader interface: the batch was accepted; delete it.
    pub fn ack(&self, batch: BatchId) -> Result<(), StoreError> {
        self.with_db(|db| db.ack(batch).map(|_| ()))?
            .ok_or(StoreError::Closed)
    }

    /// Uploader interface: the batch was rejected; drop and count it.
    pub fn reject(&self, batch: BatchId) -> Result<(), StoreError> {
        self.with_db(|db| db.reject(batch).map(|_| ()))?
            .ok_or(StoreError::Closed)
    }

    /// Uploader interface: the batch was refused for a reason that may be the server's
    /// fault; it is kept (sent again later with the same id) and counted in
    /// `auth_failures`.
    pub fn refused(&self, batch: BatchId) -> Result<(), StoreError> {
        self.with_db(|db| db.refused(batch))?
            .ok_or(StoreError::Closed)
    }

    /// Uploader interface: a config request was refused for a reason that may be the
    /// server's fault; counted in `auth_failures`.
    pub fn count_auth_failure(&self) -> Result<(), StoreError> {
        self.with_db(|db| db.count_auth_failure())?
            .ok_or(StoreError::Closed)
    }

    /// Uploader interface: the batch will be retried later with the same id.
    pub fn retry(&self, batch: BatchId) -> Result<(), StoreError> {
        self.with_db(|db| db.retry(batch))?
            .ok_or(StoreError::Closed)
    }

    /// Uploader interface: what waits to be uploaded (empty until the store is open).
    /// Read from memory (what the store published after its last change) unless that
    /// read failed.
    pub fn backlog(&self) -> Result<Backlog, StoreError> {
        {
            let snap = lock(&self.inner().snapshot);
            if !snap.open {
                return Ok(Backlog::default());
            }
            if let Some(b) = snap.backlog {
                return Ok(b);
            }
        }
        Ok(self.with_db(|db| db.backlog())?.unwrap_or_default())
    }

    /// Blocks until every journal record written so far is in the store, or `timeout`
    /// passes. Returns whether it caught up. For tests and orderly shutdown; apps never
    /// need it.
    /// Any timeout is accepted: one too large to add to the clock (`Duration::MAX`)
    /// waits without a deadline.
    pub fn wait_applied(&self, timeout: Duration) -> bool {
        self.wait_applied_until(deadline(timeout), &AtomicBool::new(false))
    }

    fn wait_applied_until(&self, deadline: Option<Instant>, cancel: &AtomicBool) -> bool {
        let inner = self.inner();
        loop {
            if inner.journal_ready.load(Ordering::Acquire) {
                let target = inner.journal.position();
                let checkpoint = lock(&inner.db).as_ref().map(|db| db.meta().checkpoint);
                if checkpoint == Some(target) {
                    return true;
                }
            }
            if passed(deadline) || cancel.load(Ordering::Acquire) {
                return false;
            }
            {
                // A store that finished, or never opened, applies nothing more.
                let shared = lock(&inner.shared);
                if shared.finished || shared.store_error.is_some() {
                    return false;
                }
            }
            inner.apply_now.store(true, Ordering::Release);
            inner.wake_pending.store(false, Ordering::Release);
            inner.wake();
            thread::sleep(Duration::from_millis(1));
        }
    }

    /// Requests a flush, then blocks until the device store is empty (everything
    /// recorded was uploaded, or dropped and counted; events held while consent is
    /// pending are not waited for) or `timeout` passes. Returns whether
    /// it emptied. For the platforms' background-flush jobs (WorkManager,
    /// `BGTaskScheduler`), which must tell the OS whether the work finished; events
    /// recorded while it waits count too. Never call it on the main thread. Any timeout
    /// is accepted (`Duration::MAX` waits without a deadline).
    pub fn flush_and_wait(&self, timeout: Duration) -> bool {
        self.flush_and_wait_cancellable(timeout, &AtomicBool::new(false))
    }

    /// [`Tern::flush_and_wait`] that also returns `false` soon (within a few tens of
    /// milliseconds) after `cancel` is set, from another thread.
    pub fn flush_and_wait_cancellable(&self, timeout: Duration, cancel: &AtomicBool) -> bool {
        let deadline = deadline(timeout);
        self.flush();
        if !self.wait_applied_until(deadline, cancel) {
            return false;
        }
        loop {
            if lock(&self.inner().snapshot).queued.0 == 0 {
                return true;
            }
            if passed(deadline)
                || cancel.load(Ordering::Acquire)
                || self.inner().shut_down.load(Ordering::Acquire)
            {
                return false;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops recording, moves everything journaled into the store, closes the files and
    /// stops the background thread, waiting at most `timeout`. Recording calls fail with
    /// [`TrackError::ShutDown`] afterwards. Idempotent.
    pub fn shutdown(&self, timeout: Duration) -> ShutdownReport {
        let inner = self.inner();
        // The uploader first: it holds a handle to this instance, and requests in
        // flight are simply abandoned (their batches are sent again next time).
        let uploader = lock(&inner.uploader).take();
        if let Some(u) = uploader {
            u.shutdown();
        }
        inner.live.stop();
        inner.shut_down.store(true, Ordering::Release);
        lock(&inner.shared).shutdown_requested = true;
        inner.wake_pending.store(false, Ordering::Release);
        inner.wake();
        let deadline = deadline(timeout);
        let mut shared = lock(&inner.shared);
        while !shared.finished {
            shared = match deadline {
                None => inner
                    .finished
                    .wait(shared)
                    .unwrap_or_else(|p| p.into_inner()),
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    inner
                        .finished
                        .wait_timeout(shared, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
        let clean = shared.finished;
        drop(shared);
        if clean {
            if let Some(t) = lock(&self.handle.thread).take() {
                let _ = t.join();
            }
        }
        ShutdownReport {
            clean,
            queued_events: self.stats().queued_events,
        }
    }

    /// Stops this instance as a kill of the app's process would, for simulators (the
    /// fleet's app kills) and tests: recording calls are refused from now on; the
    /// uploader drops its requests in flight; the store thread stops after the step it
    /// is in, without applying the rest of the journal, releasing batches in flight or
    /// writing the marker — what a restart finds is what a killed process leaves (the
    /// journal holds every event whose call returned `Ok` once the journal was open).
    /// Returns once the store thread is gone and the data directory's lock released,
    /// so an instance can start on it at once. Differences from a real kill: the
    /// SQLite connection is closed (a killed process leaves its WAL for the next open
    /// to recover, with the same committed content) and QUIC connections are closed as
    /// they are dropped (a killed process sends nothing; relays time them out).
    #[cfg(feature = "simulation")]
    pub fn kill(&self) {
        let inner = self.inner();
        inner.killed.store(true, Ordering::Release);
        inner.shut_down.store(true, Ordering::Release);
        inner.journal.close("the app was killed");
        let uploader = lock(&inner.uploader).take();
        if let Some(u) = uploader {
            u.kill();
        }
        inner.live.stop();
        inner.wake_pending.store(false, Ordering::Release);
        inner.wake();
        if let Some(t) = lock(&self.handle.thread).take() {
            let _ = t.join();
        }
    }
}

/// The instant `timeout` from now; `None` (no deadline) when that is beyond what the
/// clock can represent, e.g. for `Duration::MAX`.
fn deadline(timeout: Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout)
}

fn passed(deadline: Option<Instant>) -> bool {
    deadline.is_some_and(|d| Instant::now() >= d)
}

fn read_segment_counter(mut file: &std::fs::File) -> u64 {
    use std::io::{Read, Seek};
    let mut text = String::new();
    if file.rewind().is_err() || file.read_to_string(&mut text).is_err() {
        return 0;
    }
    text.lines()
        .find_map(|l| l.strip_prefix("next_segment="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn write_segment_counter(mut file: &std::fs::File, next: u64) -> std::io::Result<()> {
    use std::io::{Seek, Write};
    let text = format!("next_segment={next}\n");
    file.rewind()?;
    file.write_all(text.as_bytes())?;
    file.set_len(text.len() as u64)
}

/// The background thread's state.
struct Worker {
    inner: Arc<Inner>,
    dir: PathBuf,
    segment: u64,
    applied: u64,
    /// A `delete_local_data` was applied: retire the journal segment that still holds
    /// the deleted events' bytes.
    deleted: bool,
    /// When the journal marker was last refreshed.
    marker_synced: Instant,
    lock: std::fs::File,
}

/// Creates `dir` and takes its lock: an exclusive advisory lock (`flock` on Unix) on
/// `dir/lock`, held while the instance runs and released by the OS when the process
/// ends, however it ends. Fails with [`StoreError::Locked`] when another instance (in
/// this process or another one) holds it.
fn take_lock(dir: &std::path::Path) -> Result<std::fs::File, StoreError> {
    std::fs::create_dir_all(dir).map_err(|e| StoreError::io("creating", dir, e))?;
    let lock_path = dir.join("lock");
    let lock_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&lock_path)
        .map_err(|e| StoreError::io("opening", &lock_path, e))?;
    match lock_file.try_lock() {
        Ok(()) => Ok(lock_file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Locked(dir.to_path_buf())),
        Err(std::fs::TryLockError::Error(e)) => Err(StoreError::io("locking", &lock_path, e)),
    }
}

impl Worker {
    fn new(inner: Arc<Inner>, lock: std::fs::File) -> Self {
        let dir = inner.config.data_dir.clone();
        Worker {
            inner,
            dir,
            segment: 0,
            applied: 0,
            deleted: false,
            marker_synced: Instant::now(),
            lock,
        }
    }

    fn fail(&self, error: String) {
        tracing::error!(%error, "tern store unavailable");
        // The reason first: a recording call refused by the closed journal reports it.
        lock(&self.inner.shared).store_error = Some(error.clone());
        self.inner.journal.close(&error);
    }

    fn finish(&self) {
        let mut shared = lock(&self.inner.shared);
        shared.finished = true;
        self.inner.finished.notify_all();
    }

    fn run(mut self) {
        if let Err(e) = self.setup() {
            self.inner.live.mark_ready();
            self.fail(e.to_string());
            self.idle_until_shutdown();
            self.finish();
            return;
        }
        let mut woken = true;
        loop {
            if woken {
                self.gather();
            }
            if self.inner.killed.load(Ordering::Acquire) {
                // Nothing more is written: the directory is left as it is now.
                *lock(&self.inner.db) = None;
                lock(&self.inner.snapshot).open = false;
                self.finish();
                return;
            }
            self.inner.apply_now.store(false, Ordering::Release);
            self.inner.wake_pending.store(false, Ordering::Release);
            let (flush, shutdown) = {
                let mut shared = lock(&self.inner.shared);
                (
                    std::mem::take(&mut shared.flush_requested),
                    shared.shutdown_requested,
                )
            };
            if shutdown {
                self.inner.journal.close("the SDK is shut down");
            }
            let progressed = match self.step(flush) {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(error = %e, "tern store step failed; retrying");
                    thread::sleep(Duration::from_millis(100));
                    false
                }
            };
            if shutdown && !progressed {
                break;
            }
            woken = false;
            if !progressed && !self.inner.wake_pending.load(Ordering::Acquire) {
                thread::park_timeout(self.idle_wait());
                woken = self.inner.wake_pending.load(Ordering::Acquire);
            }
        }
        if let Some(db) = lock(&self.inner.db).as_mut() {
            let _ = db.flush_meta();
            db.release_in_flight();
            // The journal is closed and fully applied: the segment holds nothing the
            // store lacks, so a later start must not replay it.
            let (seg, written) = self.inner.journal.position();
            if seg == self.segment && self.applied == written {
                let path = self.dir.join(journal::segment_name(self.segment));
                let retired = db
                    .apply(&[], (self.segment + 1, 0))
                    .and_then(|_| db.before_removing_segment(self.segment))
                    .and_then(|()| {
                        std::fs::remove_file(&path)
                            .map_err(|e| StoreError::io("removing", &path, e))
                    });
                if let Err(e) = retired {
                    tracing::warn!(error = %e, "could not retire the journal segment");
                }
            }
            if let Err(e) = db.sync_marker() {
                tracing::warn!(error = %e, "could not write the journal marker");
            }
        }
        *lock(&self.inner.db) = None;
        lock(&self.inner.snapshot).open = false;
        self.finish();
    }

    /// Group apply: after a wake-up, lets records gather in the journal for up to
    /// `apply_delay` (while `wake_pending` stays set, recording calls do not wake this
    /// thread again), so that a burst is applied in one transaction. Ends early on a
    /// flush, a shutdown, an `apply_now`, or `APPLY_BYTES` waiting.
    fn gather(&self) {
        let delay = self.inner.config.apply_delay;
        if delay.is_zero() {
            return;
        }
        let until = Instant::now() + delay;
        loop {
            if self.inner.apply_now.load(Ordering::Acquire)
                || self.inner.killed.load(Ordering::Acquire)
            {
                return;
            }
            {
                let shared = lock(&self.inner.shared);
                if shared.flush_requested || shared.shutdown_requested {
                    return;
                }
            }
            let (seg, written) = self.inner.journal.position();
            if seg != self.segment || written.saturating_sub(self.applied) >= APPLY_BYTES {
                return;
            }
            let now = Instant::now();
            if now >= until {
                return;
            }
            thread::park_timeout(until - now);
        }
    }

    /// How long an idle worker sleeps: until the marker's refresh is due when the
    /// store changed since the last one, else [`IDLE_WAIT`].
    fn idle_wait(&self) -> Duration {
        if self.inner.marker_stale.load(Ordering::Acquire) {
            MARKER_SYNC
                .saturating_sub(self.marker_synced.elapsed())
                .max(Duration::from_millis(10))
        } else {
            IDLE_WAIT
        }
    }

    fn idle_until_shutdown(&self) {
        while !lock(&self.inner.shared).shutdown_requested
            && !self.inner.killed.load(Ordering::Acquire)
        {
            thread::park_timeout(IDLE_WAIT);
        }
    }

    fn setup(&mut self) -> Result<(), StoreError> {
        let lock_path = self.dir.join("lock");
        let old = journal::list_segments(&self.dir)?;
        // Segment numbers only grow, across runs, even when every earlier segment file
        // has been applied and removed: the lock file carries the next number, and is
        // updated before the segment exists. (The store checkpoint names segments by
        // number; a reused lower number would look already applied.)
        let counter = read_segment_counter(&self.lock);
        self.segment = counter.max(old.last().map_or(1, |n| n + 1)).max(1);
        write_segment_counter(&self.lock, self.segment + 1)
            .map_err(|e| StoreError::io("writing", &lock_path, e))?;
        self.inner.journal.open_segment(&self.dir, self.segment)?;
        self.applied = journal::MAGIC.len() as u64;
        self.inner.journal_ready.store(true, Ordering::Release);

        let (mut db, report) = Db::open(
            &self.dir,
            self.inner.config.store_limits,
            self.inner.config.limits,
        )?;
        db.set_consent_config(self.inner.config.consent);
        if let Some(aside) = &report.moved_aside {
            tracing::warn!(aside = %aside.display(), reason = ?report.reset_reason, "device store was reset");
        }
        if let Some(verdict) = report.reset_by_marker {
            tracing::warn!(
                ?verdict,
                unknown = report.reset_unknown,
                "device store was lost; continued from the journal marker"
            );
        }
        // Segment numbers must grow across runs: the checkpoint names a segment, and
        // every lower number counts as applied. When the files that carried the
        // higher numbers are gone (applied and removed), continue above them.
        let (ck_seg, ck_off) = db.meta().checkpoint;
        if self.segment <= ck_seg {
            self.inner.journal.renumber(&self.dir, ck_seg + 1)?;
            self.segment = ck_seg + 1;
        }
        // Recover what earlier runs journaled but did not apply. Records at or below
        // the checkpoint are not applied again — also when the checkpoint came from the
        // journal marker because the store was lost (`Db::open`).
        for &seg in &old {
            if seg >= ck_seg {
                let from = if seg == ck_seg { ck_off } else { 0 };
                self.apply_segment(&mut db, seg, from, None, true)?;
            }
        }
        // Entries buffered before the journal opened are now at the start of the new
        // segment; they and everything after are applied by the main loop. The
        // opt-out state of the store applies to them. (This also persists the damage
        // counted in the old segments, with the checkpoint that moves past them.)
        db.apply(&[], (self.segment, self.applied))?;
        self.inner.consent.adopt(db.consent());
        // The opt-out state as recovered: an `opt_out` the previous run journaled but
        // did not apply counts too.
        if !self.inner.opt_out_called.load(Ordering::Acquire) {
            self.inner
                .opted_out
                .store(db.meta().opted_out, Ordering::Release);
        }
        // The old segments go only once the marker's frontier is past them.
        if let Some(&last) = old.last() {
            db.before_removing_segment(last)?;
        }
        for seg in old {
            let path = self.dir.join(journal::segment_name(seg));
            std::fs::remove_file(&path).map_err(|e| StoreError::io("removing", &path, e))?;
        }
        {
            let mut shared = lock(&self.inner.shared);
            shared.report = Some(report);
        }
        *lock(&self.inner.snapshot) = StoreSnapshot::of(&db, &self.inner);
        // Live config: the last bundle, pacing and user properties, before any network.
        let cached = db
            .load_config(&self.inner.config.app_id)
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "reading the cached config failed");
                None
            });
        // The exposures recorded before, the journal's included (recovered above),
        // before any bundle is in use: no flag read can record one again.
        match db.load_exposures() {
            Ok(keys) => lock(&self.inner.exposures).load(keys),
            Err(e) => tracing::warn!(error = %e, "reading the recorded exposures failed"),
        }
        let pacing = db.load_pacing().unwrap_or_default();
        let props = db.load_user_properties().unwrap_or_default();
        self.inner.live.set_stored_user(db.meta().user.clone());
        self.inner.load_push_hint(&db);
        self.inner.refresh_push_token(now_ms());
        *lock(&self.inner.db) = Some(db);
        self.inner.store_changed.notify_one();
        self.inner.live.load_cached(cached, pacing, props);
        Ok(())
    }

    /// Applies records of segment `seg` from byte `from` up to `upto` (or its end) in
    /// chunks. Returns the offset reached. `last` says the segment gets no more
    /// appends (an earlier run's): damage at its end is then final and counted (the
    /// caller's next [`Db::apply`] persists the count); in the live segment it may be a
    /// record still being written, or a fragment the next records resynchronise past.
    fn apply_segment(
        &mut self,
        db: &mut Db,
        seg: u64,
        mut from: u64,
        upto: Option<u64>,
        last: bool,
    ) -> Result<u64, StoreError> {
        let path = self.dir.join(journal::segment_name(seg));
        loop {
            let out = journal::read_segment(&path, from, upto, APPLY_CHUNK)?;
            let mut corrupt = out.damaged;
            if out.records.is_empty() {
                if last && matches!(out.stop, Stop::BadMagic | Stop::Corrupt) {
                    // Nothing more can be read from it.
                    tracing::warn!(segment = seg, offset = from, stop = ?out.stop, "journal segment damaged at its end");
                    corrupt += 1;
                }
                if corrupt > 0 {
                    lock(&self.inner.shared).corrupt_records += corrupt;
                    db.add_corrupt(corrupt);
                }
                return Ok(out.end.max(from));
            }
            let mut entries = Vec::with_capacity(out.records.len());
            for (_, payload) in &out.records {
                match Entry::decode(payload) {
                    Some(e) => entries.push(e),
                    None => corrupt += 1,
                }
            }
            if corrupt > 0 {
                lock(&self.inner.shared).corrupt_records += corrupt;
                // Persisted by the apply below, which moves the checkpoint past it.
                db.add_corrupt(corrupt);
            }
            self.move_refusals(db);
            let applied = db.apply(&entries, (seg, out.end))?;
            // The lifecycle events of a launch, the push tokens and deletion requests
            // entries imply are recorded by the store, once.
            self.inner
                .recorded
                .fetch_add(applied.implied_events, Ordering::Relaxed);
            if applied.opted_out > 0 {
                lock(&self.inner.shared).dropped_opted_out += applied.opted_out;
            }
            self.deleted |= applied.deleted;
            from = out.end;
        }
    }

    /// Adds the refusals counted since the last call to the store's health counters
    /// (persisted with its next write). Returns whether there were any.
    fn move_refusals(&self, db: &mut Db) -> bool {
        let inner = &self.inner;
        let invalid = inner.invalid.load(Ordering::Acquire);
        let unavailable = inner.unavailable.load(Ordering::Acquire);
        let new_invalid = invalid - inner.invalid_moved.swap(invalid, Ordering::AcqRel);
        let disk_full = inner.disk_full.load(Ordering::Acquire);
        let new_unavailable =
            unavailable - inner.unavailable_moved.swap(unavailable, Ordering::AcqRel);
        let new_disk_full = disk_full - inner.disk_full_moved.swap(disk_full, Ordering::AcqRel);
        db.add_invalid(new_invalid);
        db.add_unavailable(new_unavailable);
        db.add_disk_full(new_disk_full);
        new_invalid > 0 || new_unavailable > 0 || new_disk_full > 0
    }

    /// One round of work. Returns true if anything was done.
    fn step(&mut self, flush: bool) -> Result<bool, StoreError> {
        let inner = self.inner.clone();
        inner.steps.fetch_add(1, Ordering::Relaxed);
        let mut guard = lock(&inner.db);
        let Some(db) = guard.as_mut() else {
            return Ok(false);
        };
        let (seg, written) = self.inner.journal.position();
        let mut progressed = false;
        if seg == self.segment && self.applied < written {
            // Read to the end of the file: appends may complete in any order relative
            // to the `written` counter, and a record still being written reads as torn
            // and is picked up next round.
            let reached = self.apply_segment(db, seg, self.applied, None, false)?;
            progressed = reached > self.applied;
            self.applied = reached;
        }
        let (_, written_now) = self.inner.journal.position();
        lock(&self.inner.shared).journal_backlog = written_now.saturating_sub(self.applied);
        // Rotate when the segment is large, or right after a `delete_local_data`, so
        // the deleted events' bytes leave the disk with the old segment.
        let rotate = written_now > ROTATE_BYTES || self.deleted;
        if self.applied == written_now && rotate && self.inner.journal.is_open() {
            self.deleted = false;
            let next = self.segment + 1;
            self.inner.journal.open_segment(&self.dir, next)?;
            // The old segment is final now; apply whatever reached it before the swap.
            self.apply_segment(db, self.segment, self.applied, None, true)?;
            let old_segment = self.segment;
            let old = self.dir.join(journal::segment_name(old_segment));
            self.segment = next;
            self.applied = journal::MAGIC.len() as u64;
            db.apply(&[], (next, self.applied))?;
            db.before_removing_segment(old_segment)?;
            std::fs::remove_file(&old).map_err(|e| StoreError::io("removing", &old, e))?;
            progressed = true;
        }
        if flush {
            let flush_policy = self.inner.config.flush;
            let limits = self.inner.config.limits;
            db.form_batches(
                u64::from(flush_policy.max_batch_events).min(limits.max_batch_events as u64),
                flush_policy
                    .max_batch_bytes
                    .min(limits.max_batch_bytes as u64),
                true,
            )?;
        }
        if self.move_refusals(db) {
            db.flush_meta()?;
            // The marker keeps the counters too.
            self.inner.marker_stale.store(true, Ordering::Release);
        }
        if progressed || flush {
            self.inner.marker_stale.store(true, Ordering::Release);
        }
        if self.marker_synced.elapsed() >= MARKER_SYNC
            && self.inner.marker_stale.swap(false, Ordering::AcqRel)
        {
            self.marker_synced = Instant::now();
            db.sync_marker()?;
            if db.marker_failed() {
                self.inner.marker_stale.store(true, Ordering::Release);
            }
        }
        *lock(&self.inner.snapshot) = StoreSnapshot::of(db, &self.inner);
        if progressed || flush {
            self.inner.store_changed.notify_one();
        }
        Ok(progressed)
    }
}

/// The uploader drives the store and the live-config state through this.
impl crate::upload::Host for Tern {
    fn config(&self) -> &TernConfig {
        Tern::config(self)
    }
    fn backlog(&self) -> Result<Backlog, StoreError> {
        Tern::backlog(self)
    }
    fn store_changed(&self) -> Arc<tokio::sync::Notify> {
        self.inner().store_changed.clone()
    }
    fn form_batches(&self, force: bool) -> Result<usize, StoreError> {
        Tern::form_batches(self, force)
    }
    fn next_batch(&self) -> Result<Option<OutgoingBatch>, StoreError> {
        Tern::next_batch(self)
    }
    fn ack(&self, batch: BatchId) -> Result<(), StoreError> {
        Tern::ack(self, batch)
    }
    fn reject(&self, batch: BatchId) -> Result<(), StoreError> {
        Tern::reject(self, batch)
    }
    fn refused(&self, batch: BatchId) -> Result<(), StoreError> {
        Tern::refused(self, batch)
    }
    fn retry(&self, batch: BatchId) -> Result<(), StoreError> {
        Tern::retry(self, batch)
    }
    fn count_auth_failure(&self) -> Result<(), StoreError> {
        Tern::count_auth_failure(self)
    }
    fn note_refusal(&self, what: String) {
        Tern::note_refusal(self, what)
    }
    fn note_upload_result(&self, result: String) {
        Tern::note_upload_result(self, result)
    }
    fn live_ready(&self) -> bool {
        Tern::live_ready(self)
    }
    fn device_id(&self) -> Option<DeviceId> {
        Tern::device_id(self)
    }
    fn live_user(&self) -> Option<UserId> {
        Tern::live_user(self)
    }
    fn config_etag(&self) -> Option<tern_protocol::config::ETag> {
        self.config_info().etag
    }
    fn live_install(&self, bundle: ConfigBundle, stale: bool) {
        Tern::live_install(self, bundle, stale)
    }
    fn live_confirm(&self, stale: bool) {
        Tern::live_confirm(self, stale)
    }
    fn live_allowed(&self) -> bool {
        !self.is_opted_out()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_secs(20);

    /// On a host's runtime (`UploadConfig::runtime`) the uploader's store calls run on
    /// the runtime's blocking pool: while the store is held — as the store thread holds
    /// it through a long apply — and the uploader waits for it, the runtime's only
    /// worker still runs other tasks (in the fleet simulator, a thousand other
    /// devices' handshakes and timers).
    #[test]
    fn an_uploader_on_a_host_runtime_waits_for_its_store_off_the_workers() {
        use crate::upload::UploadConfig;
        use tern_protocol::{NodeState, RelayId, RelayNode, ShardMap};
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        // A relay nobody listens at: sends fail; only the store calls matter here.
        let map = ShardMap {
            version: 1,
            nodes: vec![RelayNode {
                id: RelayId::new("r"),
                quic_addr: "127.0.0.1:9".into(),
                https_url: "https://127.0.0.1:9".into(),
                weight: 1,
                state: NodeState::Active,
            }],
        };
        let config = TernConfig::builder("demo", "demo-key", dir.path())
            .shard_map(map)
            .upload(UploadConfig::default().with_runtime(rt.handle().clone()))
            .build()
            .unwrap();
        let tern = Tern::start(config).unwrap();
        tern.track("e", Properties::new()).unwrap();
        assert!(tern.wait_applied(WAIT));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let _store = lock(&tern.inner().db);
            // The uploader reads its backlog at once on a flush, and waits for the store.
            tern.flush();
            std::thread::sleep(Duration::from_millis(300));
            rt.spawn(async move {
                let _ = tx.send(());
            });
            assert!(
                rx.recv_timeout(WAIT).is_ok(),
                "the runtime's worker is held by a store call"
            );
        }
        let t = tern.clone();
        std::thread::spawn(move || t.shutdown(WAIT)).join().unwrap();
        drop(rt);
    }

    /// A flag read whose exposure cannot be written still answers; the failure is
    /// counted (and as the event it would have been, in `dropped_disk_full`), nothing
    /// is remembered, and a later read records it.
    #[test]
    fn a_failed_exposure_is_counted_not_returned_and_recorded_by_a_later_read() {
        let dir = tempfile::tempdir().unwrap();
        let tern = Tern::start(
            TernConfig::builder("demo", "demo-key", dir.path())
                .build()
                .unwrap(),
        )
        .unwrap();
        assert!(tern.wait_applied(WAIT));
        let bundle = ConfigBundle {
            app_id: tern_protocol::AppId::new("demo"),
            version: 3,
            flags: vec![tern_protocol::FeatureFlag {
                key: "on".into(),
                enabled: true,
                rollout_bp: 10_000,
                variants: vec![],
                salt: None,
            }],
            ..ConfigBundle::default()
        };
        tern.live_install(bundle, false);
        tern.inner().journal.fail_writes(true);
        assert_eq!(tern.flag("on"), FlagDecision::On);
        assert!(matches!(
            tern.record_exposure("on"),
            Err(TrackError::Journal(_))
        ));
        let s = tern.stats();
        assert_eq!((s.exposures.failed, s.exposures.recorded), (1, 0));
        assert_eq!(s.dropped_disk_full, 2);
        assert_eq!(s.exposures.remembered, 0);
        tern.inner().journal.fail_writes(false);
        assert_eq!(tern.flag("on"), FlagDecision::On);
        assert_eq!(tern.stats().exposures.recorded, 1);
        tern.shutdown(WAIT);
    }

    /// A full disk makes `track()` fail (the app sees `TrackError::Journal`); each
    /// refused event is counted in `dropped_disk_full`, in `stats()`, in the health
    /// sent upstream, and across a restart. Session entries written with an event are
    /// not counted as events.
    #[test]
    fn refused_journal_writes_are_counted_and_reported_upstream() {
        let dir = tempfile::tempdir().unwrap();
        let config = || {
            TernConfig::builder("demo", "demo-key", dir.path())
                .build()
                .unwrap()
        };
        let tern = Tern::start(config()).unwrap();
        tern.track("before", Properties::new()).unwrap();
        assert!(tern.wait_applied(WAIT));
        tern.inner().journal.fail_writes(true);
        for _ in 0..3 {
            assert!(matches!(
                tern.track("refused", Properties::new()),
                Err(TrackError::Journal(_))
            ));
        }
        assert!(tern.identify(Some("u")).is_err());
        assert_eq!(tern.stats().dropped_disk_full, 3);
        tern.inner().journal.fail_writes(false);
        tern.track("after", Properties::new()).unwrap();
        assert!(tern.wait_applied(WAIT));
        tern.form_batches(true).unwrap();
        let b = tern.next_batch().unwrap().expect("a batch");
        assert_eq!(b.batch.events.len(), 2);
        assert_eq!(b.batch.health.dropped_disk_full, 3);
        assert_eq!(tern.stats().dropped_disk_full, 3);
        tern.shutdown(WAIT);
        let tern = Tern::start(config()).unwrap();
        assert!(tern.wait_applied(WAIT));
        assert_eq!(tern.stats().dropped_disk_full, 3);
        tern.shutdown(WAIT);
    }
}
