//! `TernCore`: the exported SDK object. It wraps `tern_sdk::Tern` with the life cycle
//! the apps need, once for both platforms:
//!
//! * **Not started** ([`TernCore::new`]): every call is accepted at once. Recording
//!   calls are kept in a bounded queue ([`MAX_PENDING_CALLS`], [`MAX_PENDING_BYTES`])
//!   with the time they were made; listeners, the network state and flush requests are
//!   remembered. A call that does not fit is refused (`NotStarted`) and counted.
//! * **Running** ([`TernCore::open`] succeeded): the queue is applied to the core in
//!   order, each call with its own time, before any later call; then calls go straight
//!   to the core.
//! * **Unavailable** (`open` failed: invalid config, the data directory in use by
//!   another process, ...): the reason is logged and reported once; recording calls are
//!   counted no-ops that report that reason.
//! * **Stopped** ([`TernCore::shutdown`]): recording calls are counted no-ops
//!   (`ShutDown`); getters return defaults; `stats` keeps the final counters. The
//!   object itself stays valid for every reference the app still holds.
//!
//! Recording calls come in two forms: `track`, `purchase`, ... never fail (a refusal
//! is counted, logged and handed to the [`ErrorListener`]), and `try_track`,
//! `try_purchase`, ... return the same refusal as a typed error. Every method runs
//! inside the panic guard.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use tern_sdk::{Call, Properties, Refused};

use crate::error::TernError;
use crate::guard::{guard, guard_or};
use crate::listen::{
    ConfigChangeListener, InAppMessageListener, ListenerHandle, Listeners, Registration,
};
use crate::push::{PushEnvironment, PushProvider};
use crate::registry::Registry;
use crate::report::{ErrorListener, Reporter};
use crate::state::State;
use crate::types::{
    to_properties, ConfigInfo, ConsentPurpose, ConsentState, ExposureOutcome, FlagDecision,
    PropertyValue, ShutdownReport, TernOptions, TernState, TernStats,
};
use crate::wait::{FlushWait, Waits};

/// Most recording calls kept while the instance is not started.
pub const MAX_PENDING_CALLS: usize = 1000;
/// Most bytes (estimated: names, keys and values) kept while the instance is not started.
pub const MAX_PENDING_BYTES: usize = 1024 * 1024;

/// The instances the Kotlin layer's fast `track` path ([`crate::fast`]) reaches, by
/// [`TernCore::fast_path_id`].
pub(crate) static FAST_PATH: Registry<TernCore> = Registry::new();

#[derive(Default)]
struct Pending {
    calls: VecDeque<(&'static str, Call, i64)>,
    bytes: usize,
    network: Option<bool>,
    flush: bool,
}

/// Counters of refusals decided here (the core counts its own).
#[derive(Default)]
struct Counts {
    refused_not_started: AtomicU64,
    refused_after_stop: AtomicU64,
    refused_unavailable: AtomicU64,
    dropped_pending: AtomicU64,
    internal_errors: AtomicU64,
    /// Events refused while no core existed, handed to it at open so they travel
    /// upstream: invalid input, and a full queue.
    early_invalid: AtomicU64,
    early_unavailable: AtomicU64,
}

/// The Tern SDK. Thread-safe; every method returns normally in every state (see the
/// module docs); recording calls never do network I/O.
#[derive(uniffi::Object)]
pub struct TernCore {
    state: Arc<RwLock<State>>,
    pending: Mutex<Pending>,
    /// Serialises `open` and `shutdown`.
    transition: Mutex<()>,
    listeners: Arc<Mutex<Listeners>>,
    reporter: Reporter,
    counts: Counts,
    waits: Arc<Waits>,
    /// The last network state the platform reported: 0 none, 1 offline, 2 online.
    network: std::sync::atomic::AtomicU8,
}

impl std::fmt::Debug for TernCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TernCore")
            .field("state", &self.state())
            .finish()
    }
}

fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
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

fn props_bytes(p: &Properties) -> usize {
    p.iter()
        .map(|(k, v)| {
            k.len()
                + 16
                + match v {
                    tern_sdk::Value::String(s) => s.len(),
                    _ => 8,
                }
        })
        .sum()
}

/// Roughly what `call` holds in memory, for the queue's byte bound.
fn estimate(call: &Call) -> usize {
    64 + match call {
        Call::Track { name, props } => name.len() + props_bytes(props),
        Call::Purchase {
            product_id,
            currency,
            props,
            ..
        } => product_id.len() + currency.len() + props_bytes(props),
        Call::SetUserProperties { set, unset } => {
            props_bytes(set) + unset.iter().map(|u| u.len() + 16).sum::<usize>()
        }
        Call::MessageImpression { message_id, action } => message_id.len() + action.len(),
        Call::Identify { user_id } => user_id.as_ref().map_or(0, String::len),
        _ => 0,
    }
}

/// A duration in milliseconds as given by the foreign layer; any value is accepted
/// (`u64::MAX`: no deadline).
fn millis(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

impl TernCore {
    fn make() -> TernCore {
        TernCore {
            state: Arc::new(RwLock::new(State::Pending)),
            pending: Mutex::new(Pending::default()),
            transition: Mutex::new(()),
            listeners: Arc::new(Mutex::new(Listeners::default())),
            reporter: Reporter::default(),
            counts: Counts::default(),
            waits: Arc::new(Waits::default()),
            network: std::sync::atomic::AtomicU8::new(0),
        }
    }

    /// The running core, if any.
    fn running(&self) -> Option<tern_sdk::Tern> {
        match &*read(&self.state) {
            State::Running(t) => Some(t.clone()),
            _ => None,
        }
    }

    /// The core, running or stopped (for reads that stay meaningful after a stop).
    fn any_core(&self) -> Option<tern_sdk::Tern> {
        match &*read(&self.state) {
            State::Running(t) | State::Stopped(Some(t)) => Some(t.clone()),
            _ => None,
        }
    }

    /// Every recording call: decides by state, counts what is decided here, and
    /// returns the outcome (the `try_` form); a refusal is reported.
    fn record(
        &self,
        name: &'static str,
        call: impl FnOnce() -> Result<Call, TernError>,
    ) -> Result<(), TernError> {
        self.reported(name, guard(name, || self.dispatch(name, call)))
    }

    /// Counts and reports a refusal of call `name`.
    fn reported<T>(
        &self,
        name: &'static str,
        outcome: Result<T, TernError>,
    ) -> Result<T, TernError> {
        if let Err(e) = &outcome {
            if matches!(e, TernError::Internal { .. }) {
                self.counts.internal_errors.fetch_add(1, Ordering::Relaxed);
            }
            self.reporter.report(name, e);
        }
        outcome
    }

    fn dispatch(
        &self,
        name: &'static str,
        call: impl FnOnce() -> Result<Call, TernError>,
    ) -> Result<(), TernError> {
        let state = read(&self.state);
        match &*state {
            State::Running(t) => {
                let t = t.clone();
                drop(state);
                let call = call().inspect_err(|_| t.count_refused(Refused::Invalid, 1))?;
                t.apply(call, now_ms()).map_err(|e| {
                    let e = TernError::from(e);
                    if e == TernError::ShutDown {
                        self.counts
                            .refused_after_stop
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    e
                })
            }
            State::Pending => {
                let call = call().inspect_err(|_| {
                    self.counts.early_invalid.fetch_add(1, Ordering::Relaxed);
                })?;
                // Under the state's read lock: `open` flips to running under the write
                // lock once this queue is empty, so nothing queued here is left behind.
                let mut p = lock(&self.pending);
                let size = estimate(&call);
                if p.calls.len() >= MAX_PENDING_CALLS || p.bytes + size > MAX_PENDING_BYTES {
                    self.counts
                        .refused_not_started
                        .fetch_add(1, Ordering::Relaxed);
                    self.counts
                        .early_unavailable
                        .fetch_add(call.events(), Ordering::Relaxed);
                    return Err(TernError::NotStarted {
                        reason: format!(
                            "the queue of calls made before start is full ({MAX_PENDING_CALLS} calls, {MAX_PENDING_BYTES} bytes)"
                        ),
                    });
                }
                p.bytes += size;
                p.calls.push_back((name, call, now_ms()));
                Ok(())
            }
            State::Unavailable(e) => {
                self.counts
                    .refused_unavailable
                    .fetch_add(1, Ordering::Relaxed);
                Err(e.clone())
            }
            State::Stopped(_) => {
                self.counts
                    .refused_after_stop
                    .fetch_add(1, Ordering::Relaxed);
                Err(TernError::ShutDown)
            }
        }
    }

    fn open_inner(&self, options: TernOptions) -> Result<(), TernError> {
        let _transition = lock(&self.transition);
        match &*read(&self.state) {
            State::Pending => {}
            State::Running(_) => return Ok(()),
            State::Unavailable(e) => return Err(e.clone()),
            State::Stopped(_) => return Err(TernError::ShutDown),
        }
        let started = options
            .into_core()
            .and_then(|config| tern_sdk::Tern::start(config).map_err(TernError::from));
        let tern = match started {
            Ok(t) => t,
            Err(e) => {
                let mut state = write(&self.state);
                let dropped = std::mem::take(&mut *lock(&self.pending)).calls.len();
                self.counts
                    .dropped_pending
                    .fetch_add(dropped as u64, Ordering::Relaxed);
                lock(&self.listeners).clear();
                *state = State::Unavailable(e.clone());
                drop(state);
                tracing::error!(error = %e, dropped_calls = dropped, "tern: could not start; every call is now a counted no-op");
                return Err(e);
            }
        };
        let invalid = self.counts.early_invalid.swap(0, Ordering::Relaxed);
        if invalid > 0 {
            tern.count_refused(Refused::Invalid, invalid);
        }
        loop {
            let (calls, network, flush) = {
                let mut p = lock(&self.pending);
                p.bytes = 0;
                (
                    std::mem::take(&mut p.calls),
                    p.network.take(),
                    std::mem::take(&mut p.flush),
                )
            };
            if let Some(available) = network {
                tern.set_network_available(available);
            }
            if calls.is_empty() && !flush {
                let mut state = write(&self.state);
                let p = lock(&self.pending);
                if p.calls.is_empty() && p.network.is_none() && !p.flush {
                    drop(p);
                    lock(&self.listeners).attach(&tern);
                    *state = State::Running(tern.clone());
                    break;
                }
                continue;
            }
            for (name, call, at) in calls {
                if let Err(e) = tern.apply(call, at) {
                    self.reporter.report(name, &TernError::from(e));
                }
            }
            if flush {
                tern.flush();
            }
        }
        // Refused while the queue was full: counted upstream from now on.
        let unkept = self.counts.early_unavailable.swap(0, Ordering::Relaxed);
        if unkept > 0 {
            tern.count_refused(Refused::Unavailable, unkept);
        }
        tracing::info!(data_dir = %tern.config().data_dir.display(), "tern: started");
        Ok(())
    }

    fn shutdown_inner(&self, timeout: Duration) -> ShutdownReport {
        let _transition = lock(&self.transition);
        let previous = {
            let mut state = write(&self.state);
            match std::mem::replace(&mut *state, State::Stopped(None)) {
                State::Running(t) => {
                    *state = State::Stopped(Some(t.clone()));
                    Some(t)
                }
                State::Stopped(t) => {
                    let report = ShutdownReport {
                        clean: true,
                        queued_events: t.as_ref().map_or(0, |t| t.stats().queued_events),
                    };
                    *state = State::Stopped(t);
                    return report;
                }
                State::Pending => {
                    let dropped = std::mem::take(&mut *lock(&self.pending)).calls.len();
                    self.counts
                        .dropped_pending
                        .fetch_add(dropped as u64, Ordering::Relaxed);
                    None
                }
                State::Unavailable(_) => None,
            }
        };
        self.waits.cancel_all();
        lock(&self.listeners).clear();
        match previous {
            Some(t) => {
                let report = t.shutdown(timeout).into();
                tracing::info!("tern: stopped");
                report
            }
            None => ShutdownReport {
                clean: true,
                queued_events: 0,
            },
        }
    }

    fn add_listener(&self, registration: Registration) -> Arc<ListenerHandle> {
        // Under the state's read lock: `open` attaches the registered listeners under
        // the write lock, so a listener added while it opens is not missed.
        let state = read(&self.state);
        let running = match &*state {
            State::Running(t) => Some(t),
            State::Pending => None,
            // Nothing will ever call it: an already-cancelled handle.
            State::Unavailable(_) | State::Stopped(_) => {
                return Arc::new(ListenerHandle::cancelled())
            }
        };
        let id = lock(&self.listeners).add(registration, running);
        Arc::new(ListenerHandle::new(Arc::downgrade(&self.listeners), id))
    }

    /// `track` with the event encoded as [`crate::fast`] describes.
    pub(crate) fn track_payload(&self, payload: &[u8]) -> Result<(), TernError> {
        self.record("track", || crate::payload::decode(payload))
    }

    fn stats_inner(&self) -> TernStats {
        let (state, core, open_error) = match &*read(&self.state) {
            State::Pending => (TernState::NotStarted, None, None),
            State::Running(t) => (TernState::Running, Some(t.stats()), None),
            State::Unavailable(e) => (TernState::Unavailable, None, Some(e.to_string())),
            State::Stopped(t) => (TernState::Stopped, t.as_ref().map(|t| t.stats()), None),
        };
        let mut s = TernStats::from(core.unwrap_or_default());
        let c = &self.counts;
        s.state = state;
        if open_error.is_some() {
            s.store_error = open_error;
        }
        s.dropped_invalid += c.early_invalid.load(Ordering::Relaxed);
        s.dropped_unavailable += c.early_unavailable.load(Ordering::Relaxed);
        s.pending_calls = lock(&self.pending).calls.len() as u64;
        s.refused_not_started = c.refused_not_started.load(Ordering::Relaxed);
        s.refused_after_stop = c.refused_after_stop.load(Ordering::Relaxed);
        s.refused_unavailable = c.refused_unavailable.load(Ordering::Relaxed);
        s.dropped_pending = c.dropped_pending.load(Ordering::Relaxed);
        s.internal_errors = c.internal_errors.load(Ordering::Relaxed);
        s.error_listener_failures = self.reporter.listener_failures();
        s.log_sink_failures = crate::log::sink_failures();
        s.flush_waits = self.waits.active();
        s.network_available = match self.network.load(Ordering::Relaxed) {
            0 => None,
            n => Some(n == 2),
        };
        s
    }
}

#[uniffi::export]
impl TernCore {
    /// A new instance, not started: it accepts every call at once and keeps recording
    /// calls (bounded) until [`TernCore::open`]. No I/O, no threads: safe on the main
    /// thread.
    #[uniffi::constructor]
    pub fn new() -> Arc<TernCore> {
        Arc::new(TernCore::make())
    }

    /// [`TernCore::new`] then [`TernCore::open`]: a running instance, or the reason it
    /// could not start.
    #[uniffi::constructor]
    pub fn start(options: TernOptions) -> Result<Arc<TernCore>, TernError> {
        let core = TernCore::make();
        core.open(options)?;
        Ok(Arc::new(core))
    }

    /// Starts the SDK with `options`: validates them, takes the data directory (a
    /// second process on it gets `DataDirInUse`), starts the core's threads, then
    /// applies the calls made so far, in order, each with the time it was made.
    /// A few system calls: call it off the main thread. On failure the instance is
    /// unavailable for good (calls are counted no-ops reporting the reason); the
    /// reason is returned, logged and reported to the error listener. Calling it again
    /// returns the first outcome.
    pub fn open(&self, options: TernOptions) -> Result<(), TernError> {
        let r = guard("open", || self.open_inner(options));
        if let Err(e) = &r {
            if matches!(e, TernError::Internal { .. }) {
                self.counts.internal_errors.fetch_add(1, Ordering::Relaxed);
            }
            self.reporter.report("open", e);
        }
        r
    }

    /// The id under which the Kotlin layer's fast `track` path (`tern_fast_track`, a
    /// plain C function: `src/fast.rs`) reaches this instance.
    pub fn fast_path_id(self: Arc<Self>) -> u64 {
        guard_or("fast_path_id", 0, || FAST_PATH.register(&self))
    }

    /// Where the instance is in its life cycle.
    pub fn state(&self) -> TernState {
        guard_or("state", TernState::Stopped, || match &*read(&self.state) {
            State::Pending => TernState::NotStarted,
            State::Running(_) => TernState::Running,
            State::Unavailable(_) => TernState::Unavailable,
            State::Stopped(_) => TernState::Stopped,
        })
    }

    /// Receives every refused call from now on (replacing an earlier listener).
    pub fn set_error_listener(&self, listener: Box<dyn ErrorListener>) {
        guard_or("set_error_listener", (), || {
            self.reporter.set_listener(Some(Arc::from(listener)))
        })
    }

    /// Removes the error listener.
    pub fn clear_error_listener(&self) {
        guard_or("clear_error_listener", (), || {
            self.reporter.set_listener(None)
        })
    }

    /// Records a custom event. Never fails: a refusal is counted and reported.
    pub fn track(&self, name: String, properties: HashMap<String, PropertyValue>) {
        let _ = self.try_track(name, properties);
    }

    /// [`TernCore::track`], returning a refusal as a typed error.
    pub fn try_track(
        &self,
        name: String,
        properties: HashMap<String, PropertyValue>,
    ) -> Result<(), TernError> {
        self.record("track", || {
            Ok(Call::Track {
                name,
                props: to_properties(properties)?,
            })
        })
    }

    /// Records a purchase: `quantity` units for `amount_micros` millionths of `currency`
    /// (ISO 4217). A quantity outside `0..=u32::MAX` refuses the event. Never fails: a
    /// refusal is counted and reported.
    pub fn purchase(
        &self,
        product_id: String,
        amount_micros: i64,
        currency: String,
        quantity: i64,
        properties: HashMap<String, PropertyValue>,
    ) {
        let _ = self.try_purchase(product_id, amount_micros, currency, quantity, properties);
    }

    /// [`TernCore::purchase`], returning a refusal as a typed error.
    pub fn try_purchase(
        &self,
        product_id: String,
        amount_micros: i64,
        currency: String,
        quantity: i64,
        properties: HashMap<String, PropertyValue>,
    ) -> Result<(), TernError> {
        self.record("purchase", || {
            let quantity = u32::try_from(quantity).map_err(|_| TernError::InvalidEvent {
                field: "purchase quantity".into(),
                reason: format!("{quantity} is not between 0 and {}", u32::MAX),
            })?;
            Ok(Call::Purchase {
                product_id,
                amount_micros,
                currency,
                quantity,
                props: to_properties(properties)?,
            })
        })
    }

    /// Sets the user of events recorded from now on; `None` makes them anonymous.
    pub fn identify(&self, user_id: Option<String>) {
        let _ = self.try_identify(user_id);
    }

    /// [`TernCore::identify`], returning a refusal as a typed error.
    pub fn try_identify(&self, user_id: Option<String>) -> Result<(), TernError> {
        self.record("identify", || Ok(Call::Identify { user_id }))
    }

    /// Login: links the device's anonymous identity to `user_id` (one `alias` event,
    /// so the backend merges the anonymous history into the user's) and identifies
    /// `user_id`. `identify` alone records no alias.
    pub fn alias(&self, user_id: String) {
        let _ = self.try_alias(user_id);
    }

    /// [`TernCore::alias`], returning a refusal as a typed error.
    pub fn try_alias(&self, user_id: String) -> Result<(), TernError> {
        self.record("alias", || Ok(Call::Alias { user_id }))
    }

    /// Logout: ends the session, forgets the user and the user properties, and gives
    /// the device a new anonymous id (the device id is kept).
    pub fn reset(&self) {
        let _ = self.try_reset();
    }

    /// [`TernCore::reset`], returning a refusal as a typed error.
    pub fn try_reset(&self) -> Result<(), TernError> {
        self.record("reset", || Ok(Call::Reset))
    }

    /// The anonymous id the device store has applied so far (lower-case hyphenated
    /// UUID); `None` before open, after a stop or a failed open.
    pub fn anonymous_id(&self) -> Option<String> {
        guard_or("anonymous_id", None, || {
            self.running()
                .and_then(|t| t.anonymous_id())
                .map(|a| a.to_string())
        })
    }

    /// Hands over the device's push token: an FCM registration token (`environment`
    /// `None`), or an APNs device token, hex-encoded, with its environment. Call it
    /// whenever the platform gives one; an unchanged token records nothing.
    pub fn set_push_token(
        &self,
        provider: PushProvider,
        environment: Option<PushEnvironment>,
        token: String,
    ) {
        let _ = self.try_set_push_token(provider, environment, token);
    }

    /// [`TernCore::set_push_token`], returning a refusal as a typed error.
    pub fn try_set_push_token(
        &self,
        provider: PushProvider,
        environment: Option<PushEnvironment>,
        token: String,
    ) -> Result<(), TernError> {
        self.record("set_push_token", || {
            Ok(Call::SetPushToken {
                provider: provider.into(),
                environment: environment.map(Into::into),
                token,
            })
        })
    }

    /// Records that a push of campaign `campaign_id` reached the device.
    pub fn push_received(&self, campaign_id: String) {
        let _ = self.try_push_received(campaign_id);
    }

    /// [`TernCore::push_received`], returning a refusal as a typed error.
    pub fn try_push_received(&self, campaign_id: String) -> Result<(), TernError> {
        self.record("push_received", || Ok(Call::PushReceived { campaign_id }))
    }

    /// Records that the user opened a push of campaign `campaign_id`, with the action
    /// chosen (`None` for the default tap).
    pub fn push_opened(&self, campaign_id: String, action: Option<String>) {
        let _ = self.try_push_opened(campaign_id, action);
    }

    /// [`TernCore::push_opened`], returning a refusal as a typed error.
    pub fn try_push_opened(
        &self,
        campaign_id: String,
        action: Option<String>,
    ) -> Result<(), TernError> {
        self.record("push_opened", || {
            Ok(Call::PushOpened {
                campaign_id,
                action,
            })
        })
    }

    /// Sets and removes user properties.
    pub fn set_user_properties(&self, set: HashMap<String, PropertyValue>, unset: Vec<String>) {
        let _ = self.try_set_user_properties(set, unset);
    }

    /// [`TernCore::set_user_properties`], returning a refusal as a typed error.
    pub fn try_set_user_properties(
        &self,
        set: HashMap<String, PropertyValue>,
        unset: Vec<String>,
    ) -> Result<(), TernError> {
        self.record("set_user_properties", || {
            Ok(Call::SetUserProperties {
                set: to_properties(set)?,
                unset,
            })
        })
    }

    /// Switches recording off (`true`) or back on. Persisted across restarts.
    pub fn opt_out(&self, opted_out: bool) {
        let _ = self.try_opt_out(opted_out);
    }

    /// [`TernCore::opt_out`], returning a refusal as a typed error.
    pub fn try_opt_out(&self, opted_out: bool) -> Result<(), TernError> {
        self.record("opt_out", || Ok(Call::OptOut { opted_out }))
    }

    /// True while opted out (`false` before the instance is open).
    pub fn is_opted_out(&self) -> bool {
        guard_or("is_opted_out", false, || {
            self.running().is_some_and(|t| t.is_opted_out())
        })
    }

    /// Sets the consent state of `purpose`: granted releases the events held while it
    /// was pending (in recorded order), denied deletes them and keeps none later (the
    /// calls still succeed, counted), pending keeps them on the device, bounded.
    /// Ordered with the other calls, durable, persisted.
    pub fn set_consent(&self, purpose: ConsentPurpose, state: ConsentState) {
        let _ = self.try_set_consent(purpose, state);
    }

    /// [`TernCore::set_consent`], returning a refusal as a typed error.
    pub fn try_set_consent(
        &self,
        purpose: ConsentPurpose,
        state: ConsentState,
    ) -> Result<(), TernError> {
        self.record("set_consent", || {
            Ok(Call::SetConsent {
                purpose: purpose.into(),
                state: state.into(),
            })
        })
    }

    /// The consent state of `purpose` the recording calls follow now; `None` before
    /// open, after a stop or a failed open.
    pub fn consent(&self, purpose: ConsentPurpose) -> Option<ConsentState> {
        guard_or("consent", None, || {
            self.running().map(|t| t.consent(purpose.into()).into())
        })
    }

    /// The person asks for their data to be deleted: a deletion request naming the
    /// device, user and anonymous id is sent upstream (first, whatever the consent and
    /// the opt-out, across restarts), then the local data is deleted (new device id).
    pub fn request_deletion(&self) {
        let _ = self.try_request_deletion();
    }

    /// [`TernCore::request_deletion`], returning a refusal as a typed error.
    pub fn try_request_deletion(&self) -> Result<(), TernError> {
        self.record("request_deletion", || Ok(Call::RequestDeletion))
    }

    /// Deletes every event recorded before this call, the user id and the device id.
    pub fn delete_local_data(&self) {
        let _ = self.try_delete_local_data();
    }

    /// [`TernCore::delete_local_data`], returning a refusal as a typed error.
    pub fn try_delete_local_data(&self) -> Result<(), TernError> {
        self.record("delete_local_data", || Ok(Call::DeleteLocalData))
    }

    /// Starts a new session (ending the open one).
    pub fn start_session(&self) {
        let _ = self.try_start_session();
    }

    /// [`TernCore::start_session`], returning a refusal as a typed error.
    pub fn try_start_session(&self) -> Result<(), TernError> {
        self.record("start_session", || Ok(Call::StartSession))
    }

    /// Ends the open session, if any.
    pub fn end_session(&self) {
        let _ = self.try_end_session();
    }

    /// [`TernCore::end_session`], returning a refusal as a typed error.
    pub fn try_end_session(&self) -> Result<(), TernError> {
        self.record("end_session", || Ok(Call::EndSession))
    }

    /// The open session's id, if any.
    pub fn current_session(&self) -> Option<String> {
        guard_or("current_session", None, || {
            self.running()
                .and_then(|t| t.current_session())
                .map(|s| s.to_string())
        })
    }

    /// The app came to the foreground.
    pub fn on_foreground(&self) {
        let _ = self.try_on_foreground();
    }

    /// [`TernCore::on_foreground`], returning a refusal as a typed error.
    pub fn try_on_foreground(&self) -> Result<(), TernError> {
        self.record("on_foreground", || Ok(Call::Foreground))
    }

    /// The app went to the background (a flush is requested).
    pub fn on_background(&self) {
        let _ = self.try_on_background();
    }

    /// [`TernCore::on_background`], returning a refusal as a typed error.
    pub fn try_on_background(&self) -> Result<(), TernError> {
        self.record("on_background", || Ok(Call::Background))
    }

    /// Records that an in-app message was acted on (`action` = the button id).
    pub fn message_impression(&self, message_id: String, action: String) {
        let _ = self.try_message_impression(message_id, action);
    }

    /// [`TernCore::message_impression`], returning a refusal as a typed error.
    pub fn try_message_impression(
        &self,
        message_id: String,
        action: String,
    ) -> Result<(), TernError> {
        self.record("message_impression", || {
            Ok(Call::MessageImpression { message_id, action })
        })
    }

    /// Records the exposure of flag `key` as it evaluates now, for apps that read flags
    /// early (automatic exposures off) and show the result later: call it when the
    /// user sees it. One exposure per flag, variant, user and config version, also
    /// across restarts. Never throws; a refusal goes to the error listener.
    pub fn record_exposure(&self, key: String) {
        let _ = self.try_record_exposure(key);
    }

    /// [`TernCore::record_exposure`], returning what it did or a refusal as a typed
    /// error. Before `open` there is no config to expose: `NoFlag`, nothing queued
    /// (the flag read `Off`).
    pub fn try_record_exposure(&self, key: String) -> Result<ExposureOutcome, TernError> {
        let outcome = guard("record_exposure", || {
            let state = read(&self.state);
            match &*state {
                State::Running(t) => {
                    let t = t.clone();
                    drop(state);
                    t.record_exposure(&key).map(Into::into).map_err(|e| {
                        let e = TernError::from(e);
                        if e == TernError::ShutDown {
                            self.counts
                                .refused_after_stop
                                .fetch_add(1, Ordering::Relaxed);
                        }
                        e
                    })
                }
                State::Pending => Ok(ExposureOutcome::NoFlag),
                State::Unavailable(e) => {
                    self.counts
                        .refused_unavailable
                        .fetch_add(1, Ordering::Relaxed);
                    Err(e.clone())
                }
                State::Stopped(_) => {
                    self.counts
                        .refused_after_stop
                        .fetch_add(1, Ordering::Relaxed);
                    Err(TernError::ShutDown)
                }
            }
        });
        self.reported("record_exposure", outcome)
    }

    /// The platform's network reachability changed (remembered until the instance is
    /// open).
    pub fn set_network_available(&self, available: bool) {
        guard_or("set_network_available", (), || {
            self.network
                .store(if available { 2 } else { 1 }, Ordering::Relaxed);
            let state = read(&self.state);
            match &*state {
                State::Running(t) => t.set_network_available(available),
                State::Pending => lock(&self.pending).network = Some(available),
                _ => {}
            }
        })
    }

    /// Asks for everything recorded so far to be sent soon. Returns at once.
    pub fn flush(&self) {
        guard_or("flush", (), || {
            let state = read(&self.state);
            match &*state {
                State::Running(t) => t.flush(),
                State::Pending => lock(&self.pending).flush = true,
                _ => {}
            }
        })
    }

    /// A snapshot of state and health counters. No I/O; never fails.
    pub fn stats(&self) -> TernStats {
        guard_or("stats", TernStats::from(tern_sdk::Stats::default()), || {
            self.stats_inner()
        })
    }

    /// The config value of `key`, if present. No I/O.
    pub fn config_value(&self, key: String) -> Option<PropertyValue> {
        guard_or("config_value", None, || {
            self.any_core()?.config_value(&key).map(Into::into)
        })
    }

    /// Every config value. No I/O.
    pub fn config_values(&self) -> HashMap<String, PropertyValue> {
        guard_or("config_values", HashMap::new(), || {
            self.any_core()
                .map(|t| {
                    t.config_values()
                        .into_iter()
                        .map(|(k, v)| (k, v.into()))
                        .collect()
                })
                .unwrap_or_default()
        })
    }

    /// The text value of `key`, or `default`.
    pub fn config_string(&self, key: String, default: String) -> String {
        let fallback = default.clone();
        guard_or("config_string", fallback, || match self.any_core() {
            Some(t) => t.config_string(&key, &default),
            None => default,
        })
    }

    /// The boolean value of `key`, or `default`.
    pub fn config_bool(&self, key: String, default: bool) -> bool {
        guard_or("config_bool", default, || {
            self.any_core()
                .map_or(default, |t| t.config_bool(&key, default))
        })
    }

    /// The integer value of `key`, or `default`.
    pub fn config_long(&self, key: String, default: i64) -> i64 {
        guard_or("config_long", default, || {
            self.any_core()
                .map_or(default, |t| t.config_i64(&key, default))
        })
    }

    /// The number value of `key` (integers converted), or `default`.
    pub fn config_double(&self, key: String, default: f64) -> f64 {
        guard_or("config_double", default, || {
            self.any_core()
                .map_or(default, |t| t.config_f64(&key, default))
        })
    }

    /// The decision of flag `key` for this device/user (`Off` when unknown or before
    /// the instance is open).
    pub fn flag(&self, key: String) -> FlagDecision {
        guard_or("flag", FlagDecision::Off, || {
            self.any_core()
                .map_or(FlagDecision::Off, |t| t.flag(&key).into())
        })
    }

    /// True when the flag is not `Off`.
    pub fn flag_enabled(&self, key: String) -> bool {
        guard_or("flag_enabled", false, || {
            self.any_core().is_some_and(|t| t.flag_enabled(&key))
        })
    }

    /// Version, ETag and freshness of the config in use.
    pub fn config_info(&self) -> ConfigInfo {
        guard_or("config_info", ConfigInfo::none(), || {
            self.any_core()
                .map_or(ConfigInfo::none(), |t| t.config_info().into())
        })
    }

    /// Asks for the config to be fetched now (debounced). Returns at once.
    pub fn refresh_config(&self) {
        guard_or("refresh_config", (), || {
            if let Some(t) = self.running() {
                t.refresh_config();
            }
        })
    }

    /// Calls `listener` on every config change, until the handle's `cancel` or the
    /// instance's `shutdown`. Dropping the handle does not remove the listener.
    /// Registered before `open`, it is attached when the instance opens.
    pub fn add_config_listener(
        &self,
        listener: Box<dyn ConfigChangeListener>,
    ) -> Arc<ListenerHandle> {
        guard_or(
            "add_config_listener",
            Arc::new(ListenerHandle::cancelled()),
            || self.add_listener(Registration::config(listener)),
        )
    }

    /// Calls `listener` with each in-app message to show, until the handle's `cancel`
    /// or the instance's `shutdown`.
    pub fn add_message_listener(
        &self,
        listener: Box<dyn InAppMessageListener>,
    ) -> Arc<ListenerHandle> {
        guard_or(
            "add_message_listener",
            Arc::new(ListenerHandle::cancelled()),
            || self.add_listener(Registration::message(listener)),
        )
    }

    /// Blocks until everything recorded so far is in the device store, at most
    /// `timeout_ms` (any value; `u64::MAX` = no deadline). `false` when the instance is
    /// not running. For tests; never call it on the main thread.
    pub fn wait_applied(&self, timeout_ms: u64) -> bool {
        guard_or("wait_applied", false, || {
            self.running()
                .is_some_and(|t| t.wait_applied(millis(timeout_ms)))
        })
    }

    /// Requests a flush and waits until the device store is empty (everything was
    /// uploaded) or `timeout_ms` passes (any value; `u64::MAX` = no deadline); returns
    /// whether it emptied. Before `open` it first waits for the instance to open.
    /// Cancellable: dropping the future (a cancelled coroutine) or
    /// [`TernCore::cancel_flush_waits`] ends the wait at once with `false`. Waits on a
    /// helper thread, never on the caller's.
    pub async fn flush_and_wait(&self, timeout_ms: u64) -> bool {
        let wait = guard_or("flush_and_wait", FlushWait::done(false), || {
            FlushWait::start(&self.waits, self.state.clone(), millis(timeout_ms))
        });
        wait.await
    }

    /// Ends every `flush_and_wait` in progress on this instance (they return `false`).
    /// For platforms whose task cancellation does not drop the future (Swift).
    pub fn cancel_flush_waits(&self) {
        guard_or("cancel_flush_waits", (), || self.waits.cancel_all())
    }

    /// Stops recording, moves everything into the store and closes the files, waiting
    /// at most `timeout_ms` (any value). Afterwards recording calls are counted no-ops
    /// (`ShutDown`), getters return defaults, listeners are removed, waits end; every
    /// reference stays safe to use. Idempotent. Blocks: never on the main thread.
    pub fn shutdown(&self, timeout_ms: u64) -> ShutdownReport {
        guard_or(
            "shutdown",
            ShutdownReport {
                clean: false,
                queued_events: 0,
            },
            || self.shutdown_inner(millis(timeout_ms)),
        )
    }
}

pub(crate) mod context;
#[cfg(test)]
pub(crate) mod tests;
