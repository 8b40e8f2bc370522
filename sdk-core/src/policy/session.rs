//! Session tracking with an inactivity timeout (sans-IO).
//!
//! [`SessionTracker`] turns app lifecycle calls and tracked events into
//! [`SessionChange`]s for the caller to record as `session_start` / `session_end`
//! events. Time is wall-clock Unix milliseconds (`i64`), always passed in.
//!
//! # Rules
//!
//! * A session is *stale* when the time since its last activity exceeds the inactivity
//!   timeout (default [`DEFAULT_INACTIVITY_TIMEOUT`], 30 min). Sessions end lazily: a
//!   stale session ends at the next call that notices it, with
//!   `duration = last activity - start`, not "now - start".
//! * [`SessionTracker::foreground`] starts a session if none is open, replaces a stale
//!   one (end, then start), and otherwise counts as activity.
//! * [`SessionTracker::background`] counts as activity and leaves the session open, so
//!   returning within the timeout continues it. A session that was already stale ends.
//! * [`SessionTracker::activity`] (an event was tracked) counts as activity. A stale
//!   session ends; a new one starts if the app is in the foreground. With no session
//!   open, one starts only in the foreground: events tracked in the background
//!   (a push received, a background fetch) do not open sessions.
//! * [`SessionTracker::start`] ends the open session, if any, and starts a new one;
//!   [`SessionTracker::end`] ends it (a no-op if none). An explicitly ended session
//!   that was fresh lasts until `now`; a stale one until its last activity.
//! * At most one session is open. Every `Started` is followed by at most one `Ended`
//!   with the same id.
//!
//! # Ids
//!
//! A [`SessionId`] is the session's start time in Unix ms, forced strictly
//! increasing: if that would not exceed the previous id (the clock went backwards, or
//! two sessions started in the same millisecond), it is the previous id plus one.
//! Negative times count as 0.
//!
//! # Clocks going backwards
//!
//! Nothing panics and no duration is negative (it saturates to 0). Idle time is
//! measured from the latest reading: a clock set back does not make the session stale,
//! and does not keep it fresh for the length of the jump either.
//!
//! # Restarts
//!
//! The tracker lives in memory. To end, after a process restart, the session that was
//! open when the process died, persist [`SessionTracker::open_session`] and
//! [`SessionTracker::last_id`] and rebuild with [`SessionTracker::restore`].

use std::time::Duration;

use tern_protocol::SessionId;

/// The inactivity timeout when none is configured: 30 minutes.
pub const DEFAULT_INACTIVITY_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// A session boundary to record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SessionChange {
    /// A session started (record `session_start`).
    Started {
        /// The new session.
        id: SessionId,
    },
    /// A session ended (record `session_end`).
    Ended {
        /// The session that ended.
        id: SessionId,
        /// From its start to its end (last activity, or `now` for a fresh session
        /// ended explicitly); never negative.
        duration_ms: u64,
    },
}

/// The changes one call produced, in order: at most an `Ended` then a `Started`.
///
/// Iterate it (by value or with [`Changes::iter`]); it allocates nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[must_use = "session changes must be recorded"]
pub struct Changes {
    items: [Option<SessionChange>; 2],
}

impl Changes {
    /// How many changes (0 to 2).
    pub fn len(&self) -> usize {
        self.items.iter().flatten().count()
    }

    /// Whether the call changed nothing.
    pub fn is_empty(&self) -> bool {
        self.items[0].is_none()
    }

    /// The changes, in order.
    pub fn iter(&self) -> impl Iterator<Item = SessionChange> + '_ {
        self.items.iter().flatten().copied()
    }

    fn push(&mut self, change: SessionChange) {
        // At most one end and one start per call, so a slot is always free.
        if let Some(slot) = self.items.iter_mut().find(|slot| slot.is_none()) {
            *slot = Some(change);
        }
    }
}

impl IntoIterator for Changes {
    type Item = SessionChange;
    type IntoIter = std::iter::Flatten<std::array::IntoIter<Option<SessionChange>, 2>>;

    fn into_iter(self) -> Self::IntoIter {
        self.items.into_iter().flatten()
    }
}

/// The open session, as needed to persist and [`SessionTracker::restore`] it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OpenSession {
    /// Its id.
    pub id: SessionId,
    /// When it started (Unix ms).
    pub start_ms: i64,
    /// The latest activity seen in it (Unix ms).
    pub last_activity_ms: i64,
}

/// Starts and ends sessions. See the [module docs](self) for the rules.
#[derive(Clone, Debug)]
pub struct SessionTracker {
    timeout_ms: i64,
    open: Option<OpenSession>,
    last_id: Option<SessionId>,
    foreground: bool,
}

impl Default for SessionTracker {
    /// A tracker with [`DEFAULT_INACTIVITY_TIMEOUT`].
    fn default() -> Self {
        Self::new(DEFAULT_INACTIVITY_TIMEOUT)
    }
}

impl SessionTracker {
    /// A tracker with no session open, the app in the background until
    /// [`SessionTracker::foreground`], and the given inactivity timeout.
    pub fn new(inactivity_timeout: Duration) -> Self {
        Self::restore(inactivity_timeout, None, None)
    }

    /// A tracker resuming persisted state after a restart: `open` is the session that
    /// was open, `last_id` the last id handed out (ids stay strictly increasing across
    /// the restart). The app starts in the background.
    pub fn restore(
        inactivity_timeout: Duration,
        open: Option<OpenSession>,
        last_id: Option<SessionId>,
    ) -> Self {
        let last_id = match (open, last_id) {
            (Some(open), Some(last)) => Some(open.id.max(last)),
            (Some(open), None) => Some(open.id),
            (None, last) => last,
        };
        Self {
            timeout_ms: i64::try_from(inactivity_timeout.as_millis()).unwrap_or(i64::MAX),
            open,
            last_id,
            foreground: false,
        }
    }

    /// The app came to the foreground.
    pub fn foreground(&mut self, now_ms: i64) -> Changes {
        self.foreground = true;
        let mut changes = self.end_if_stale(now_ms);
        if self.open.is_none() {
            changes.push(self.begin(now_ms));
        }
        self.touch(now_ms);
        changes
    }

    /// The app went to the background. Counts as activity; the session stays open.
    pub fn background(&mut self, now_ms: i64) -> Changes {
        self.foreground = false;
        let changes = self.end_if_stale(now_ms);
        self.touch(now_ms);
        changes
    }

    /// An event was tracked.
    pub fn activity(&mut self, now_ms: i64) -> Changes {
        let mut changes = self.end_if_stale(now_ms);
        if self.open.is_none() && self.foreground {
            changes.push(self.begin(now_ms));
        }
        self.touch(now_ms);
        changes
    }

    /// Explicitly start a new session, ending the open one if any.
    pub fn start(&mut self, now_ms: i64) -> Changes {
        let mut changes = self.end(now_ms);
        changes.push(self.begin(now_ms));
        changes
    }

    /// Explicitly end the open session; a no-op if none is open.
    pub fn end(&mut self, now_ms: i64) -> Changes {
        let mut changes = Changes::default();
        if let Some(open) = self.open.take() {
            let end_ms = if self.is_stale(&open, now_ms) {
                open.last_activity_ms
            } else {
                now_ms
            };
            changes.push(ended(&open, end_ms));
        }
        changes
    }

    /// The open session, if any. It may be stale: call a method with `now` first to
    /// end it.
    pub fn current(&self) -> Option<SessionId> {
        self.open.map(|open| open.id)
    }

    /// The open session with its times, for persisting.
    pub fn open_session(&self) -> Option<OpenSession> {
        self.open
    }

    /// The last session id handed out, for persisting.
    pub fn last_id(&self) -> Option<SessionId> {
        self.last_id
    }

    /// Whether the app was last reported in the foreground.
    pub fn is_foreground(&self) -> bool {
        self.foreground
    }

    fn is_stale(&self, open: &OpenSession, now_ms: i64) -> bool {
        now_ms.saturating_sub(open.last_activity_ms) > self.timeout_ms
    }

    fn end_if_stale(&mut self, now_ms: i64) -> Changes {
        let mut changes = Changes::default();
        if let Some(open) = self.open {
            if self.is_stale(&open, now_ms) {
                self.open = None;
                changes.push(ended(&open, open.last_activity_ms));
            }
        }
        changes
    }

    /// Opens a session at `now_ms`; the caller made sure none is open.
    fn begin(&mut self, now_ms: i64) -> SessionChange {
        let candidate = u64::try_from(now_ms).unwrap_or(0);
        let id = match self.last_id {
            Some(SessionId(last)) if candidate <= last => last.saturating_add(1),
            _ => candidate,
        };
        let id = SessionId(id);
        self.last_id = Some(id);
        self.open = Some(OpenSession {
            id,
            start_ms: now_ms,
            last_activity_ms: now_ms,
        });
        SessionChange::Started { id }
    }

    fn touch(&mut self, now_ms: i64) {
        if let Some(open) = &mut self.open {
            open.last_activity_ms = now_ms;
        }
    }
}

fn ended(open: &OpenSession, end_ms: i64) -> SessionChange {
    SessionChange::Ended {
        id: open.id,
        duration_ms: u64::try_from(end_ms.saturating_sub(open.start_ms)).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIN: i64 = 60_000;
    const T0: i64 = 1_700_000_000_000;

    fn tracker() -> SessionTracker {
        SessionTracker::new(Duration::from_secs(30 * 60))
    }

    fn started(id: i64) -> SessionChange {
        SessionChange::Started {
            id: SessionId(id as u64),
        }
    }

    fn ended(id: i64, duration_ms: u64) -> SessionChange {
        SessionChange::Ended {
            id: SessionId(id as u64),
            duration_ms,
        }
    }

    fn list(changes: Changes) -> Vec<SessionChange> {
        changes.into_iter().collect()
    }

    #[test]
    fn default_timeout_is_thirty_minutes() {
        let mut t = SessionTracker::default();
        let _ = t.foreground(T0);
        assert!(t.activity(T0 + 30 * MIN).is_empty());
        assert_eq!(t.activity(T0 + 60 * MIN + 1).len(), 2);
    }

    #[test]
    fn foreground_starts_a_session_once() {
        let mut t = tracker();
        assert_eq!(t.current(), None);
        assert_eq!(list(t.foreground(T0)), [started(T0)]);
        assert_eq!(t.current(), Some(SessionId(T0 as u64)));
        assert!(t.foreground(T0 + MIN).is_empty());
        assert_eq!(t.current(), Some(SessionId(T0 as u64)));
    }

    #[test]
    fn foreground_after_a_long_absence_replaces_the_session() {
        let mut t = tracker();
        let _ = t.foreground(T0);
        let _ = t.activity(T0 + 5 * MIN);
        assert!(t.background(T0 + 10 * MIN).is_empty());
        assert_eq!(t.current(), Some(SessionId(T0 as u64)), "stays open");
        let back = T0 + 10 * MIN + 30 * MIN + 1;
        assert_eq!(
            list(t.foreground(back)),
            [ended(T0, 10 * MIN as u64), started(back)]
        );
    }

    #[test]
    fn returning_within_the_timeout_continues_the_session() {
        let mut t = tracker();
        let _ = t.foreground(T0);
        let _ = t.background(T0 + MIN);
        // Exactly the timeout is not "more than" it.
        assert!(t.foreground(T0 + MIN + 30 * MIN).is_empty());
        assert_eq!(t.current(), Some(SessionId(T0 as u64)));
    }

    #[test]
    fn background_counts_as_activity() {
        let mut t = tracker();
        let _ = t.foreground(T0);
        let _ = t.background(T0 + 20 * MIN);
        // 40 min after start, 20 after backgrounding: still the same session.
        assert!(t.foreground(T0 + 40 * MIN).is_empty());
    }

    #[test]
    fn background_ends_a_stale_session_without_starting_one() {
        let mut t = tracker();
        let _ = t.foreground(T0);
        assert_eq!(list(t.background(T0 + 31 * MIN)), [ended(T0, 0)]);
        assert_eq!(t.current(), None);
        assert!(!t.is_foreground());
    }

    #[test]
    fn activity_extends_then_times_out() {
        let mut t = tracker();
        let _ = t.foreground(T0);
        for m in 1..=10 {
            assert!(t.activity(T0 + m * 20 * MIN).is_empty());
        }
        let last = T0 + 200 * MIN;
        let late = last + 30 * MIN + 1;
        assert_eq!(
            list(t.activity(late)),
            [ended(T0, 200 * MIN as u64), started(late)]
        );
    }

    #[test]
    fn activity_starts_a_session_only_in_the_foreground() {
        let mut t = tracker();
        assert!(t.activity(T0).is_empty(), "not in the foreground yet");
        let _ = t.foreground(T0 + 1);
        let _ = t.end(T0 + 2);
        assert_eq!(list(t.activity(T0 + 3)), [started(T0 + 3)]);
        let _ = t.background(T0 + 4);
        let _ = t.end(T0 + 5);
        assert!(t.activity(T0 + 6).is_empty());
        assert_eq!(t.current(), None);
    }

    #[test]
    fn background_activity_after_timeout_ends_without_restarting() {
        let mut t = tracker();
        let _ = t.foreground(T0);
        let _ = t.background(T0 + MIN);
        let late = T0 + 2 * 60 * MIN;
        assert_eq!(list(t.activity(late)), [ended(T0, MIN as u64)]);
        assert_eq!(t.current(), None);
    }

    #[test]
    fn explicit_start_and_end() {
        let mut t = tracker();
        assert!(t.end(T0).is_empty(), "nothing open");
        assert_eq!(list(t.start(T0)), [started(T0)]);
        assert_eq!(
            list(t.start(T0 + 5 * MIN)),
            [ended(T0, 5 * MIN as u64), started(T0 + 5 * MIN)]
        );
        assert_eq!(
            list(t.end(T0 + 7 * MIN)),
            [ended(T0 + 5 * MIN, 2 * MIN as u64)]
        );
        assert!(t.end(T0 + 8 * MIN).is_empty());
    }

    #[test]
    fn explicit_end_of_a_stale_session_uses_its_last_activity() {
        let mut t = tracker();
        let _ = t.start(T0);
        let _ = t.activity(T0 + 3 * MIN);
        assert_eq!(list(t.end(T0 + 3 * 60 * MIN)), [ended(T0, 3 * MIN as u64)]);
    }

    #[test]
    fn ids_strictly_increase_in_one_millisecond_and_backwards() {
        let mut t = tracker();
        let _ = t.start(T0);
        assert_eq!(list(t.start(T0)), [ended(T0, 0), started(T0 + 1)]);
        assert_eq!(
            list(t.start(T0 - 10 * MIN)),
            [ended(T0 + 1, 0), started(T0 + 2)]
        );
        assert_eq!(list(t.start(-5)), [ended(T0 + 2, 0), started(T0 + 3)]);
        let mut fresh = tracker();
        assert_eq!(list(fresh.start(-5)), [started(0)]);
        assert_eq!(list(fresh.start(-9)), [ended(0, 0), started(1)]);
    }

    #[test]
    fn clock_going_backwards_neither_panics_nor_goes_negative() {
        let mut t = tracker();
        let _ = t.foreground(T0);
        // Set back a day: not idle, the session continues.
        assert!(t.activity(T0 - 24 * 60 * MIN).is_empty());
        // Idle is measured from the latest reading.
        let late = T0 - 24 * 60 * MIN + 31 * MIN;
        assert_eq!(list(t.activity(late)), [ended(T0, 0), started(T0 + 1)]);
        let mut u = tracker();
        let _ = u.foreground(i64::MAX);
        let _ = u.activity(i64::MIN);
        let _ = u.start(i64::MIN);
        assert_eq!(
            list(u.end(i64::MAX)),
            [SessionChange::Ended {
                id: SessionId(i64::MAX as u64 + 1),
                duration_ms: 0
            }]
        );
    }

    #[test]
    fn huge_timeout_saturates() {
        let mut t = SessionTracker::new(Duration::MAX);
        let _ = t.foreground(i64::MIN);
        assert!(t.activity(i64::MAX).is_empty());
    }

    #[test]
    fn restore_ends_the_session_a_dead_process_left_open() {
        let mut t = tracker();
        let _ = t.foreground(T0);
        let _ = t.activity(T0 + 4 * MIN);
        let (open, last) = (t.open_session(), t.last_id());
        assert_eq!(
            open,
            Some(OpenSession {
                id: SessionId(T0 as u64),
                start_ms: T0,
                last_activity_ms: T0 + 4 * MIN,
            })
        );
        let mut r = SessionTracker::restore(Duration::from_secs(30 * 60), open, last);
        assert!(!r.is_foreground());
        let relaunch = T0 + 5 * 60 * MIN;
        assert_eq!(
            list(r.foreground(relaunch)),
            [ended(T0, 4 * MIN as u64), started(relaunch)]
        );
        // Ids stay increasing across a restart even with the clock set back.
        let mut r = SessionTracker::restore(DEFAULT_INACTIVITY_TIMEOUT, None, last);
        assert_eq!(list(r.start(T0 - MIN)), [started(T0 + 1)]);
    }

    #[test]
    fn changes_iterate_in_order() {
        let mut t = tracker();
        let _ = t.start(T0);
        let c = t.start(T0 + 1);
        assert_eq!(c.len(), 2);
        assert!(!c.is_empty());
        assert_eq!(c.iter().collect::<Vec<_>>(), list(c));
        assert_eq!(Changes::default().len(), 0);
    }

    #[derive(Clone, Copy, Debug)]
    enum Call {
        Foreground,
        Background,
        Activity,
        Start,
        End,
    }

    fn call() -> impl Strategy<Value = Call> {
        prop_oneof![
            2 => Just(Call::Foreground),
            2 => Just(Call::Background),
            6 => Just(Call::Activity),
            1 => Just(Call::Start),
            1 => Just(Call::End),
        ]
    }

    /// A clock step: mostly small forward moves, some past the timeout, some back.
    fn step() -> impl Strategy<Value = i64> {
        prop_oneof![
            8 => 0i64..5 * MIN,
            3 => 25 * MIN..120 * MIN,
            1 => -120 * MIN..0,
        ]
    }

    proptest! {
        #[test]
        fn sessions_stay_well_formed(
            timeout_min in 1u64..60,
            start in -MIN..T0,
            calls in proptest::collection::vec((call(), step()), 1..300),
        ) {
            let mut t = SessionTracker::new(Duration::from_secs(timeout_min * 60));
            let mut now = start;
            let mut open: Option<SessionId> = None;
            let mut last_started: Option<SessionId> = None;
            for (call, dt) in calls {
                now = now.saturating_add(dt);
                let changes = match call {
                    Call::Foreground => t.foreground(now),
                    Call::Background => t.background(now),
                    Call::Activity => t.activity(now),
                    Call::Start => t.start(now),
                    Call::End => t.end(now),
                };
                prop_assert!(changes.len() <= 2);
                for change in changes {
                    match change {
                        SessionChange::Started { id } => {
                            prop_assert_eq!(open, None, "two sessions open at once");
                            if let Some(prev) = last_started {
                                prop_assert!(id > prev, "ids must strictly increase");
                            }
                            open = Some(id);
                            last_started = Some(id);
                        }
                        SessionChange::Ended { id, duration_ms } => {
                            // Ends only the open session, and only once.
                            prop_assert_eq!(open, Some(id));
                            open = None;
                            // A u64 cannot be negative; check it did not wrap.
                            prop_assert!(duration_ms < u64::MAX / 2);
                        }
                    }
                }
                prop_assert_eq!(t.current(), open);
                if let Call::Start | Call::Foreground = call {
                    prop_assert!(t.current().is_some());
                }
                if let Call::End = call {
                    prop_assert_eq!(t.current(), None);
                }
            }
        }
    }
}
