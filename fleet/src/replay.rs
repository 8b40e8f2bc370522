//! Recorded traffic as device traffic: a relay's recording (`PUT /admin/v1/record`,
//! segments `record/<relay>/<ms>-<n>.json`) replayed through the fleet's simulated
//! devices, so QA can rehearse a real day at N× speed against a candidate build
//! (`tern-fleet run --replay-dir DIR`).
//!
//! **What is replayed.** Every recorded device (app id and device id) becomes one
//! simulated device — a real `tern-sdk` in a pod — in the order devices first appear,
//! up to a cap ([`ReplayOptions::max_devices`]; devices beyond it are skipped and
//! counted). Each recorded event is recorded again through the SDK's public calls, in
//! the device's recorded order: `custom` → [`Tern::track`] (recorded name and
//! properties), `purchase` → [`Tern::purchase`], `user_properties` →
//! [`Tern::set_user_properties`], `message_impression` → [`Tern::message_impression`],
//! `session_start` / `session_end` → [`Tern::start_session`] / [`Tern::end_session`];
//! before an event whose recorded user differs from the device's current one,
//! [`Tern::identify`] with the recorded (usually hashed) user id. Kinds the SDK cannot
//! record (`unknown`) are skipped and counted. The traffic then takes the path device
//! traffic takes: journal, store, batching, upload, relays, stub.
//!
//! **What is not kept.** The SDK stamps its own device ids, batch ids, sequence
//! numbers, timestamps and session ids — that is the point: the client path is
//! rehearsed, not the recorded bytes (`tern-loadgen replay` resends those). Session
//! events follow the SDK's rules: a recorded `session_start` while the replayed session
//! is still open records an end and a start, a `session_end` with none open records
//! nothing (a sampled recording can split sessions so), and the report shows how many
//! events the devices recorded against how many the recording holds. Every recorded
//! app is replayed as the fleet's app (the local stub knows only its demo apps;
//! recordings hold no keys). A batch the recording holds twice (a device's resend after
//! a lost reply: the same batch id from the same device) is replayed once. In a private
//! recording every relay hashes user ids with a key of its own, so a device whose
//! batches reached two relays (a failover) shows two hashed users, and is identified
//! again where the recorded one changes (counted in [`ReplayCounts::identify`]).
//!
//! **Pacing.** By the relay's arrival time of each batch (`at_ms`: one clock for every
//! device, the order segments are stored in), divided by [`ReplayOptions::speed`]
//! (0: as fast as the devices take it); a batch's events are recorded together at its
//! time, and the SDK's batching regroups them. [`Pacing`] is the sans-IO schedule.
//!
//! **Memory.** The recording is read twice, each time streamed
//! ([`RecordingReader`]: one segment per relay in memory): a [`scan`] first (devices,
//! counts, span; the pods need the device count before they start), then the replay.
//! What is kept across the recording is per device: its fleet index and, for a device
//! that is replayed, its last [`RESEND_MEMORY`] batch ids (a few hundred bytes a
//! device); the apps' names, up to [`MAX_APPS_LISTED`]. A batch of more than
//! [`MAX_EVENTS_PER_COMMAND`] events (more than the protocol allows: only a hand-made
//! file holds one) goes to its pod in parts. A recording should not change while it
//! is replayed.
//!
//! **Pods.** The parent ([`crate::rehearse::drive`]) reads and paces; each batch goes to
//! the pod hosting its device as one `replay` command
//! (`{"cmd":"replay","device":i,"events":[...]}`, [`crate::pods::PodCommand::Replay`]),
//! which the pod applies with a [`PodReplayer`] and answers with `replayed` and its
//! cumulative [`ReplayCounts`]. At most [`WINDOW`] batches are unanswered per pod, so a
//! pod that falls behind holds the replay back (reported as lag) instead of queueing
//! without bound.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tern_protocol::{AppId, BatchId, DeviceId, Event, EventBatch, EventBody, UserId};
use tern_relay::ingest::playback::{RecordingReader, Unreadable};
use tern_sdk::{Call, Tern, TrackError};

use crate::cluster::Cluster;
use crate::{FleetError, Result};

/// Devices replayed at most by default: the fleet scale the stack is measured at
/// (`BENCHMARKS.md`).
pub const DEFAULT_MAX_DEVICES: usize = 10_000;

/// Batch ids remembered per replayed device to recognise a resent batch (the SDK sends
/// one batch at a time by default and resends it before the next, so a device's last
/// few suffice).
pub const RESEND_MEMORY: usize = 8;

/// App names a [`RecordingSummary`] lists at most.
pub const MAX_APPS_LISTED: usize = 32;

/// Events in one `replay` command at most: a larger recorded batch is sent in parts.
pub const MAX_EVENTS_PER_COMMAND: usize = 1_000;

/// Replay commands a pod may have unanswered (each a recorded batch, or a part of
/// [`MAX_EVENTS_PER_COMMAND`] events of a larger one).
pub const WINDOW: u64 = 64;

/// Which recording to replay, and how.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ReplayOptions {
    /// Root of the object store holding the recording (a relay's spool directory).
    pub dir: PathBuf,
    /// `record` (every relay's segments) or `record/<relay-id>`.
    pub prefix: String,
    /// Speed-up of the recorded pacing (2 = twice as fast; 0 = as fast as possible).
    pub speed: f64,
    /// Devices replayed at most; later devices are skipped and counted.
    pub max_devices: usize,
}

impl ReplayOptions {
    /// The recording under `prefix` in `dir`, at the recorded pace, up to
    /// [`DEFAULT_MAX_DEVICES`] devices.
    pub fn new(dir: impl Into<PathBuf>, prefix: &str) -> Self {
        ReplayOptions {
            dir: dir.into(),
            prefix: prefix.to_owned(),
            speed: 1.0,
            max_devices: DEFAULT_MAX_DEVICES,
        }
    }

    /// Sets the speed-up (0: as fast as possible).
    pub fn with_speed(mut self, speed: f64) -> Self {
        self.speed = speed;
        self
    }

    /// Sets the device cap.
    pub fn with_max_devices(mut self, max: usize) -> Self {
        self.max_devices = max;
        self
    }
}

/// A recorded device.
type DeviceKey = (AppId, DeviceId);

#[derive(Debug)]
struct Seen {
    /// Its fleet device index (`None`: beyond the cap).
    index: Option<usize>,
    /// Its last batch ids, newest last.
    recent: VecDeque<BatchId>,
}

/// What to do with a recorded batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// Replay it on fleet device `index`.
    Replay(usize),
    /// The same device sent this batch id already: a resend, replayed once.
    Resend,
    /// Its device came after the cap.
    OverCap,
}

/// The recording's devices in the order they first appear, numbered as fleet devices
/// up to a cap; recognises resent batches. Deterministic: the same stream gives the
/// same numbering, so the scan and the replay agree.
#[derive(Debug)]
pub struct DevicePlan {
    devices: HashMap<DeviceKey, Seen>,
    max: usize,
    numbered: usize,
}

impl DevicePlan {
    /// Numbers at most `max` devices.
    pub fn new(max: usize) -> Self {
        DevicePlan {
            devices: HashMap::new(),
            max,
            numbered: 0,
        }
    }

    /// Where `batch` goes.
    pub fn classify(&mut self, batch: &EventBatch) -> Disposition {
        let key = (batch.app_id.clone(), batch.device_id);
        let seen = self.devices.entry(key).or_insert_with(|| {
            let index = (self.numbered < self.max).then_some(self.numbered);
            self.numbered += usize::from(index.is_some());
            Seen {
                index,
                recent: VecDeque::new(),
            }
        });
        let Some(index) = seen.index else {
            // Not replayed: nothing to remember.
            return Disposition::OverCap;
        };
        if seen.recent.contains(&batch.batch_id) {
            return Disposition::Resend;
        }
        if seen.recent.len() == RESEND_MEMORY {
            seen.recent.pop_front();
        }
        seen.recent.push_back(batch.batch_id);
        Disposition::Replay(index)
    }

    /// Devices seen.
    pub fn devices(&self) -> usize {
        self.devices.len()
    }

    /// Devices numbered (replayed).
    pub fn numbered(&self) -> usize {
        self.numbered
    }
}

/// What a recording holds, from a [`scan`].
#[derive(Clone, Debug, Default, Serialize)]
pub struct RecordingSummary {
    /// Segment objects listed.
    pub segments: u64,
    /// Segments skipped: unreadable, too large, or not a segment.
    pub segments_unreadable: u64,
    /// The first skipped segments, with the reason.
    pub unreadable: Vec<Unreadable>,
    /// Objects under the prefix that are not segments.
    pub other_objects: u64,
    /// Distinct batches (resends not counted).
    pub batches: u64,
    /// Batches held twice (a device's resend), replayed once.
    pub resent_batches: u64,
    /// Events in the distinct batches.
    pub events: u64,
    /// Those events by kind (`custom`, `purchase`, ...).
    pub events_by_kind: BTreeMap<String, u64>,
    /// Distinct devices (app id, device id).
    pub devices: u64,
    /// Devices that will be replayed (up to the cap).
    pub devices_replayed: u64,
    /// Events of the devices beyond the cap (not replayed).
    pub events_over_cap: u64,
    /// The apps recorded (the first [`MAX_APPS_LISTED`] in name order met).
    pub apps: BTreeSet<String>,
    /// More apps were recorded than [`RecordingSummary::apps`] lists.
    pub apps_truncated: bool,
    /// Arrival time of the first batch (Unix ms).
    pub first_at_ms: u64,
    /// Arrival time of the last batch (Unix ms).
    pub last_at_ms: u64,
}

impl RecordingSummary {
    /// From the first to the last batch's arrival.
    pub fn span(&self) -> Duration {
        Duration::from_millis(self.last_at_ms.saturating_sub(self.first_at_ms))
    }

    /// Events the replay will re-record (the devices within the cap).
    pub fn events_to_replay(&self) -> u64 {
        self.events - self.events_over_cap
    }
}

pub(crate) fn reading_error(options: &ReplayOptions, e: impl std::fmt::Display) -> FleetError {
    FleetError::Recording(format!(
        "{} under {}: {e}",
        options.prefix,
        options.dir.display()
    ))
}

/// Reads the recording once, streaming: what it holds and which devices will be
/// replayed.
pub async fn scan(options: &ReplayOptions) -> Result<RecordingSummary> {
    let mut reader = RecordingReader::open_dir(&options.dir, &options.prefix)
        .await
        .map_err(|e| reading_error(options, e))?;
    let mut plan = DevicePlan::new(options.max_devices);
    let mut s = RecordingSummary {
        first_at_ms: u64::MAX,
        ..RecordingSummary::default()
    };
    while let Some(r) = reader.next().await {
        let disposition = plan.classify(&r.batch);
        if disposition == Disposition::Resend {
            s.resent_batches += 1;
            continue;
        }
        let n = r.batch.events.len() as u64;
        s.batches += 1;
        s.events += n;
        if disposition == Disposition::OverCap {
            s.events_over_cap += n;
        }
        for e in &r.batch.events {
            *s.events_by_kind
                .entry(e.body.kind().to_owned())
                .or_default() += 1;
        }
        if !s.apps.contains(r.batch.app_id.as_str()) {
            if s.apps.len() < MAX_APPS_LISTED {
                s.apps.insert(r.batch.app_id.as_str().to_owned());
            } else {
                s.apps_truncated = true;
            }
        }
        s.first_at_ms = s.first_at_ms.min(r.at_ms);
        s.last_at_ms = s.last_at_ms.max(r.at_ms);
    }
    let read = reader.stats();
    s.segments = read.segments;
    s.segments_unreadable = read.segments_unreadable;
    s.unreadable = read.unreadable.clone();
    s.other_objects = read.other_objects;
    s.devices = plan.devices() as u64;
    s.devices_replayed = plan.numbered() as u64;
    if s.batches == 0 {
        s.first_at_ms = 0;
    }
    Ok(s)
}

/// The replay's schedule (sans-IO): when a batch that arrived at `at_ms` is due, as an
/// offset from the start of the replay. The first batch is due at once; later ones at
/// their distance from it divided by the speed; never earlier than the batch before
/// (a recording's clock going back does not make the replay wait or rush).
#[derive(Clone, Debug)]
pub struct Pacing {
    speed: f64,
    origin: Option<u64>,
    last: Duration,
}

impl Pacing {
    /// `speed`× the recorded pace; 0 (or anything not a positive number): every batch
    /// at once.
    pub fn new(speed: f64) -> Self {
        Pacing {
            speed: if speed.is_finite() && speed > 0.0 {
                speed
            } else {
                0.0
            },
            origin: None,
            last: Duration::ZERO,
        }
    }

    /// When the batch that arrived at `at_ms` is due.
    pub fn due(&mut self, at_ms: u64) -> Duration {
        if self.speed == 0.0 {
            return Duration::ZERO;
        }
        let origin = *self.origin.get_or_insert(at_ms);
        let recorded = at_ms.saturating_sub(origin) as f64 / 1000.0;
        let due = Duration::try_from_secs_f64(recorded / self.speed).unwrap_or(Duration::MAX);
        self.last = self.last.max(due);
        self.last
    }
}

/// What replaying did, counted in the pods (summed by the parent).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReplayCounts {
    /// Replay commands applied (a recorded batch each, or a part of a batch larger
    /// than [`MAX_EVENTS_PER_COMMAND`]).
    pub batches: u64,
    /// Recorded events received.
    pub events: u64,
    /// Recording calls made for them (`track`, `purchase`, ...; not `identify`).
    pub calls: u64,
    /// Calls the SDK refused (validation, a closed store): not recorded.
    pub refused: u64,
    /// `identify` calls made (the recorded user changed).
    pub identify: u64,
    /// `identify` calls the SDK refused.
    pub identify_refused: u64,
    /// Events of kinds the SDK cannot record (`unknown`), skipped.
    pub unknown: u64,
    /// Devices that recorded at least one event.
    pub devices: u64,
    /// Commands for a device this pod does not host (a bug if not 0).
    pub misrouted: u64,
}

impl ReplayCounts {
    /// Adds `o` to these counts.
    pub fn add(&mut self, o: &ReplayCounts) {
        self.batches += o.batches;
        self.events += o.events;
        self.calls += o.calls;
        self.refused += o.refused;
        self.identify += o.identify;
        self.identify_refused += o.identify_refused;
        self.unknown += o.unknown;
        self.devices += o.devices;
        self.misrouted += o.misrouted;
    }
}

/// The SDK call that records `body` again; `None` for kinds it cannot record.
pub fn call_for(body: &EventBody) -> Option<Call> {
    Some(match body {
        EventBody::Custom { name, props } => Call::Track {
            name: name.clone(),
            props: props.clone(),
        },
        EventBody::Purchase {
            product_id,
            amount_micros,
            currency,
            quantity,
            props,
        } => Call::Purchase {
            product_id: product_id.clone(),
            amount_micros: *amount_micros,
            currency: currency.clone(),
            quantity: *quantity,
            props: props.clone(),
        },
        EventBody::UserProperties { set, unset } => Call::SetUserProperties {
            set: set.clone(),
            unset: unset.clone(),
        },
        EventBody::MessageImpression { message_id, action } => Call::MessageImpression {
            message_id: message_id.clone(),
            action: action.clone(),
        },
        EventBody::SessionStart => Call::StartSession,
        EventBody::SessionEnd { .. } => Call::EndSession,
        _ => return None,
    })
}

/// The calls that re-record `events` on a device whose current user is `user` (updated
/// as `identify` calls are planned), in order; `None` in place of an event the SDK
/// cannot record.
pub fn plan_calls(events: &[Event], user: &mut Option<UserId>) -> Vec<Option<Call>> {
    let mut out = Vec::with_capacity(events.len());
    for e in events {
        let Some(call) = call_for(&e.body) else {
            out.push(None);
            continue;
        };
        if e.user_id != *user {
            user.clone_from(&e.user_id);
            out.push(Some(Call::Identify {
                user_id: e.user_id.as_ref().map(|u| u.as_str().to_owned()),
            }));
        }
        out.push(Some(call));
    }
    out
}

/// Makes `call` through the [`Tern`] method of the same name.
fn perform(tern: &Tern, call: Call) -> std::result::Result<(), TrackError> {
    match call {
        Call::Track { name, props } => tern.track(&name, props),
        Call::Purchase {
            product_id,
            amount_micros,
            currency,
            quantity,
            props,
        } => tern.purchase(&product_id, amount_micros, &currency, quantity, props),
        Call::SetUserProperties { set, unset } => tern.set_user_properties(set, unset),
        Call::MessageImpression { message_id, action } => {
            tern.message_impression(&message_id, &action)
        }
        Call::Identify { user_id } => tern.identify(user_id.as_deref()),
        Call::StartSession => tern.start_session(),
        Call::EndSession => tern.end_session(),
        other => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            tern.apply(other, now)
        }
    }
}

/// The pod side of a replay: per hosted device its current user, and the counts.
#[derive(Debug, Default)]
pub struct PodReplayer {
    users: HashMap<usize, Option<UserId>>,
    recorded: BTreeSet<usize>,
    counts: ReplayCounts,
}

impl PodReplayer {
    /// Re-records `events` on fleet device `device`; `devices` are this pod's, the
    /// first being fleet device `first`.
    pub fn apply(&mut self, devices: &[Tern], first: usize, device: usize, events: &[Event]) {
        self.counts.batches += 1;
        self.counts.events += events.len() as u64;
        let Some(tern) = device.checked_sub(first).and_then(|i| devices.get(i)) else {
            self.counts.misrouted += 1;
            return;
        };
        let user = self.users.entry(device).or_default();
        for call in plan_calls(events, user) {
            let Some(call) = call else {
                self.counts.unknown += 1;
                continue;
            };
            let identify = matches!(call, Call::Identify { .. });
            let ok = perform(tern, call).is_ok();
            match (identify, ok) {
                (true, true) => self.counts.identify += 1,
                (true, false) => {
                    self.counts.identify += 1;
                    self.counts.identify_refused += 1;
                }
                (false, true) => {
                    self.counts.calls += 1;
                    if self.recorded.insert(device) {
                        self.counts.devices += 1;
                    }
                }
                (false, false) => {
                    self.counts.calls += 1;
                    self.counts.refused += 1;
                }
            }
        }
    }

    /// The counts so far.
    pub fn counts(&self) -> ReplayCounts {
        self.counts
    }
}

/// What [`crate::rehearse::drive`] did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ReplayRun {
    /// Batches sent to the pods.
    pub batches: u64,
    /// Events in them.
    pub events: u64,
    /// Resent batches skipped.
    pub resent_batches: u64,
    /// Batches of devices beyond the cap, skipped.
    pub batches_over_cap: u64,
    /// The pods' counts, summed.
    pub counts: ReplayCounts,
    /// How far behind its schedule a batch was sent at worst (a pod or the reader
    /// not keeping up), ms. At speed 0 every batch is due at the start, so this is
    /// about the replay's length.
    pub max_lag_ms: u64,
    /// Wall time of the replay.
    pub seconds: f64,
    /// Interrupted before the end of the recording.
    pub stopped: bool,
}

/// Turns recording on at every relay of `cluster` (`PUT /admin/v1/record`: every
/// batch, no rate cap, private by default — user ids hashed, property values
/// redacted), so a fleet run leaves a recording to replay: relay `i`'s segments land
/// in `<work>/relay-<i>/spool/record/relay-<i>/`. A relay stopped or restarted by chaos
/// keeps recording (the setting is persisted); its drain writes the open segment.
pub async fn record_every_relay(cluster: &Cluster) -> Result<()> {
    let http = reqwest::Client::new();
    for slot in &cluster.relays {
        let token_file = slot.admin_token_file();
        let token = std::fs::read_to_string(&token_file)
            .map_err(crate::io_err(format!("reading {}", token_file.display())))?;
        let what = format!("PUT {}/admin/v1/record", slot.id.as_str());
        http.put(format!("http://{}/admin/v1/record", slot.admin))
            .bearer_auth(token.trim())
            .header("x-tern-operator", "tern-fleet")
            .json(&serde_json::json!({"enabled": true, "sample_bp": 10_000}))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|source| FleetError::Http { what, source })?;
    }
    Ok(())
}

/// What a replay did and what the backend heard, beside the delivery report.
#[derive(Clone, Debug, Serialize)]
pub struct ReplayReport {
    /// The recording's directory.
    pub dir: String,
    /// Its prefix.
    pub prefix: String,
    /// The speed-up asked for (0: as fast as possible).
    pub speed: f64,
    /// What the recording holds.
    pub recording: RecordingSummary,
    /// What the replay did.
    pub run: ReplayRun,
    /// Events the devices recorded (the delivery report's `recorded`): the recording's
    /// replayed events, give or take session events (see the module docs) and refusals.
    pub devices_recorded_events: u64,
    /// Distinct devices the backend stored events from.
    pub devices_heard: u64,
    /// Distinct events the backend stored.
    pub events_stored: u64,
    /// Copies the backend recognised and dropped.
    pub duplicates_suppressed: u64,
}

impl ReplayReport {
    /// Reads the backend's counters (`/verify/summary`) after the delivery wait.
    pub async fn collect(
        cluster: &Cluster,
        options: &ReplayOptions,
        recording: RecordingSummary,
        run: ReplayRun,
        devices_recorded_events: u64,
    ) -> Result<ReplayReport> {
        let s = cluster.summary().await?;
        let n = |k: &str| s[k].as_u64().unwrap_or(0);
        Ok(ReplayReport {
            dir: options.dir.display().to_string(),
            prefix: options.prefix.clone(),
            speed: options.speed,
            recording,
            run,
            devices_recorded_events,
            devices_heard: n("devices"),
            events_stored: n("events_unique"),
            duplicates_suppressed: n("events_duplicate") + n("events_in_duplicate_batches"),
        })
    }

    /// The replay went through: the whole recording sent, every device that recorded
    /// an event heard by the backend, every recorded event stored (the delivery
    /// report's verdict covers the rest).
    pub fn ok(&self) -> bool {
        !self.run.stopped
            && self.run.counts.misrouted == 0
            && self.devices_heard == self.run.counts.devices
            && self.events_stored == self.devices_recorded_events
    }

    /// The report as text.
    pub fn render(&self) -> String {
        let r = &self.recording;
        let run = &self.run;
        let c = &run.counts;
        let mut out = String::new();
        let _ = writeln!(out, "replay report");
        let _ = writeln!(
            out,
            "  recording               {}/{}",
            self.dir, self.prefix
        );
        let _ = writeln!(
            out,
            "  segments                {:>12}   ({} unreadable, skipped)",
            r.segments, r.segments_unreadable
        );
        for u in &r.unreadable {
            let _ = writeln!(out, "    - {}: {}", u.key, u.reason);
        }
        let _ = writeln!(
            out,
            "  batches                 {:>12}   ({} resends replayed once)",
            r.batches, r.resent_batches
        );
        let kinds: Vec<String> = r
            .events_by_kind
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        let _ = writeln!(
            out,
            "  events                  {:>12}   ({})",
            r.events,
            kinds.join(", ")
        );
        let _ = writeln!(
            out,
            "  devices                 {:>12}   ({} replayed{})",
            r.devices,
            r.devices_replayed,
            if r.devices > r.devices_replayed {
                format!(
                    "; {} over the cap, their {} events skipped",
                    r.devices - r.devices_replayed,
                    r.events_over_cap
                )
            } else {
                String::new()
            }
        );
        let apps: Vec<&str> = r.apps.iter().map(String::as_str).collect();
        let _ = writeln!(
            out,
            "  span                    {:>10.1} s   (Unix ms {} to {}; apps {})",
            r.span().as_secs_f64(),
            r.first_at_ms,
            r.last_at_ms,
            apps.join(", ") + if r.apps_truncated { ", ..." } else { "" }
        );
        // At speed 0 every batch is due at once: no schedule to be behind.
        let pace = if self.speed > 0.0 {
            format!(
                "at {}x in {:.1} s (at worst {} ms behind schedule)",
                self.speed, run.seconds, run.max_lag_ms
            )
        } else {
            format!("as fast as possible in {:.1} s", run.seconds)
        };
        let _ = writeln!(
            out,
            "  replayed                {:>12}   events in {} batches {pace}{}",
            run.events,
            run.batches,
            if run.stopped { "; interrupted" } else { "" }
        );
        let _ = writeln!(
            out,
            "  sdk calls               {:>12}   ({} refused; {} identify, {} refused; {} unknown kinds skipped)",
            c.calls, c.refused, c.identify, c.identify_refused, c.unknown
        );
        let _ = writeln!(
            out,
            "  devices recorded        {:>12}   events (session events by the SDK's rules)",
            self.devices_recorded_events
        );
        let _ = writeln!(
            out,
            "  backend stored          {:>12}   events from {} devices ({} devices recorded events); {} duplicates suppressed",
            self.events_stored, self.devices_heard, c.devices, self.duplicates_suppressed
        );
        let _ = writeln!(
            out,
            "  replay verdict          {}",
            if self.ok() {
                "OK: every replayed device heard, every recorded event stored"
            } else {
                "FAILED: see above"
            }
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_protocol::{Properties, SdkInfo, Value};

    fn event(seq: u64, user: Option<&str>, body: EventBody) -> Event {
        Event {
            seq,
            ts_ms: 1,
            user_id: user.map(UserId::new),
            session_id: None,
            body,
        }
    }

    fn custom(name: &str) -> EventBody {
        let mut props = Properties::new();
        props.insert("screen".into(), Value::from("****"));
        EventBody::Custom {
            name: name.into(),
            props,
        }
    }

    fn batch(device: DeviceId, id: BatchId) -> EventBatch {
        EventBatch {
            anonymous_id: None,
            context: None,
            batch_id: id,
            app_id: AppId::new("demo"),
            device_id: device,
            sdk: SdkInfo::default(),
            sent_at_ms: 0,
            attempt: 0,
            events: vec![event(1, None, custom("e"))],
            health: Default::default(),
        }
    }

    #[test]
    fn pacing_divides_the_recorded_gaps_by_the_speed_and_never_goes_back() {
        let mut p = Pacing::new(4.0);
        assert_eq!(p.due(10_000), Duration::ZERO);
        assert_eq!(p.due(10_400), Duration::from_millis(100));
        assert_eq!(p.due(14_000), Duration::from_millis(1000));
        // A clock step back in the recording: due with the batch before, not earlier.
        assert_eq!(p.due(12_000), Duration::from_millis(1000));
        assert_eq!(p.due(18_000), Duration::from_millis(2000));
        // Slower than recorded.
        let mut slow = Pacing::new(0.5);
        slow.due(0);
        assert_eq!(slow.due(1_500), Duration::from_secs(3));
        // As fast as possible: 0, and anything that is not a positive speed.
        for speed in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let mut p = Pacing::new(speed);
            assert_eq!(p.due(0), Duration::ZERO);
            assert_eq!(p.due(86_400_000), Duration::ZERO, "{speed}");
        }
        // A hostile far-future time saturates instead of panicking.
        let mut p = Pacing::new(1e-300);
        p.due(0);
        assert_eq!(p.due(u64::MAX), Duration::MAX);
    }

    #[test]
    fn pacing_a_day_at_10x_plays_out_in_a_tenth_of_it_in_simulated_time() {
        // A simulated clock: each batch due when pacing says, one per recorded second.
        let day_ms = 86_400_000u64;
        let mut p = Pacing::new(10.0);
        let mut clock = Duration::ZERO;
        let mut at = 1_700_000_000_000u64;
        while at <= 1_700_000_000_000 + day_ms {
            let due = p.due(at);
            assert!(due >= clock, "never earlier than the batch before");
            clock = due;
            at += 1_000;
        }
        assert_eq!(clock, Duration::from_millis(day_ms / 10));
    }

    #[test]
    fn devices_are_numbered_by_first_appearance_up_to_the_cap_and_resends_are_recognised() {
        let (a, b, c) = (DeviceId::random(), DeviceId::random(), DeviceId::random());
        let mut plan = DevicePlan::new(2);
        let a1 = BatchId::new_v7();
        assert_eq!(plan.classify(&batch(a, a1)), Disposition::Replay(0));
        assert_eq!(
            plan.classify(&batch(b, BatchId::new_v7())),
            Disposition::Replay(1)
        );
        assert_eq!(
            plan.classify(&batch(c, BatchId::new_v7())),
            Disposition::OverCap
        );
        assert_eq!(
            plan.classify(&batch(a, a1)),
            Disposition::Resend,
            "the same batch again"
        );
        assert_eq!(
            plan.classify(&batch(a, BatchId::new_v7())),
            Disposition::Replay(0)
        );
        // The same device id under another app is another device.
        let mut other = batch(a, BatchId::new_v7());
        other.app_id = AppId::new("shop");
        assert_eq!(plan.classify(&other), Disposition::OverCap);
        assert_eq!((plan.devices(), plan.numbered()), (4, 2));
        // Memory per device is bounded: an id older than the last RESEND_MEMORY is
        // forgotten (and would be replayed again).
        for _ in 0..RESEND_MEMORY {
            plan.classify(&batch(b, BatchId::new_v7()));
        }
        assert_eq!(
            plan.devices[&(AppId::new("demo"), b)].recent.len(),
            RESEND_MEMORY
        );
        // A device beyond the cap is not replayed: nothing remembered for it.
        let c1 = BatchId::new_v7();
        assert_eq!(plan.classify(&batch(c, c1)), Disposition::OverCap);
        assert_eq!(plan.classify(&batch(c, c1)), Disposition::OverCap);
        assert!(plan.devices[&(AppId::new("demo"), c)].recent.is_empty());
    }

    #[test]
    fn events_map_to_the_sdk_calls_of_their_kind_with_identify_when_the_user_changes() {
        let purchase = EventBody::Purchase {
            product_id: "gems".into(),
            amount_micros: 1_990_000,
            currency: "EUR".into(),
            quantity: 2,
            props: Properties::new(),
        };
        let events = vec![
            event(1, None, custom("open")),
            event(2, Some("h-1"), EventBody::SessionStart),
            event(3, Some("h-1"), purchase),
            event(4, Some("h-1"), EventBody::Unknown),
            event(
                5,
                Some("h-1"),
                EventBody::UserProperties {
                    set: Properties::new(),
                    unset: vec!["age".into()],
                },
            ),
            event(
                6,
                Some("h-2"),
                EventBody::MessageImpression {
                    message_id: "welcome".into(),
                    action: "shown".into(),
                },
            ),
            event(7, None, EventBody::SessionEnd { duration_ms: 5 }),
        ];
        let mut user = None;
        let calls = plan_calls(&events, &mut user);
        let names: Vec<String> = calls
            .iter()
            .map(|c| match c {
                None => "skip".to_owned(),
                Some(Call::Identify { user_id }) => format!("identify {user_id:?}"),
                Some(Call::Track { name, .. }) => format!("track {name}"),
                Some(Call::Purchase { amount_micros, .. }) => format!("purchase {amount_micros}"),
                Some(Call::SetUserProperties { unset, .. }) => format!("user_properties {unset:?}"),
                Some(Call::MessageImpression { action, .. }) => format!("impression {action}"),
                Some(Call::StartSession) => "start_session".into(),
                Some(Call::EndSession) => "end_session".into(),
                Some(other) => format!("{other:?}"),
            })
            .collect();
        assert_eq!(
            names,
            [
                "track open",
                "identify Some(\"h-1\")",
                "start_session",
                "purchase 1990000",
                "skip",
                "user_properties [\"age\"]",
                "identify Some(\"h-2\")",
                "impression shown",
                "identify None",
                "end_session",
            ]
        );
        assert_eq!(user, None);
        // The recorded properties go to the call as they are.
        let Some(Call::Track { props, .. }) = &calls[0] else {
            panic!("{calls:?}")
        };
        assert_eq!(props["screen"], Value::from("****"));
    }

    #[test]
    fn a_pod_replayer_records_each_event_once_through_a_real_sdk() {
        let dir = tempfile::tempdir().unwrap();
        // No relays in the map: no uploader, the store only.
        let config = tern_sdk::TernConfig::builder("demo", "demo-key", dir.path().join("d"))
            .build()
            .unwrap();
        let tern = Tern::start(config).unwrap();
        let devices = vec![tern.clone()];
        let mut replayer = PodReplayer::default();
        let first = vec![
            event(1, Some("h-1"), custom("a")),
            event(2, Some("h-1"), custom("b")),
            event(3, Some("h-1"), EventBody::Unknown),
        ];
        replayer.apply(&devices, 7, 7, &first);
        replayer.apply(&devices, 7, 7, &[event(4, None, custom("c"))]);
        replayer.apply(&devices, 7, 8, &[event(1, None, custom("x"))]);
        // Refused by the SDK's validation: counted, not recorded.
        replayer.apply(&devices, 7, 7, &[event(5, None, custom(""))]);
        let c = replayer.counts();
        assert_eq!(
            c,
            ReplayCounts {
                batches: 4,
                events: 6,
                calls: 4,
                refused: 1,
                identify: 2,
                identify_refused: 0,
                unknown: 1,
                devices: 1,
                misrouted: 1,
            }
        );
        assert!(tern.wait_applied(Duration::from_secs(10)));
        let s = tern.stats();
        assert_eq!(s.events_recorded, 3, "{s:?}");
        assert_eq!(s.user_id, None, "the last recorded event was anonymous");
        tern.shutdown(Duration::from_secs(5));
    }
}
