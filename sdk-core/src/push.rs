//! Push notifications on the device (protocol §8.3): the push token the app hands over
//! ([`Tern::set_push_token`]) and the pushes it reports ([`Tern::push_received`],
//! [`Tern::push_opened`]).
//!
//! The token goes through the journal like `identify` — ordered with the other calls,
//! durable when the call returns — and the store decides which `push_token` events it
//! implies ([`crate::store::push`]: changed token, changed user, refresh, cleared at
//! opt-out and `delete_local_data`). The caller's side keeps a hint of when the token
//! was last recorded, so that opening the store and coming to the foreground append a
//! refresh entry only when one may be due; the store checks again when it applies it.

use std::sync::atomic::Ordering;

use tern_protocol::limits::{validate_id, validate_push_token};
use tern_protocol::{PushEnvironment, PushProvider, ValidationError};

use super::{lock, now_ms, Call, Inner, Tern};
use crate::error::TrackError;
use crate::store::entry::Entry;
use crate::store::push::PushState;
use crate::store::Db;

/// The caller's side of the push token: whether the device holds one and when it was
/// last recorded, as far as this process knows (a hint; the store decides).
#[derive(Debug, Default)]
pub(super) struct PushHint {
    /// When the token was last recorded (Unix ms); `None` when there is no token.
    sent_ms: Option<i64>,
}

impl Tern {
    /// Hands the device's push token to the SDK: an FCM registration token
    /// (`environment` `None`) or an APNs device token, hex-encoded, with its
    /// environment (`sandbox` for development builds). Call it whenever the platform
    /// gives a token (at every start is fine): a `push_token` event is recorded only
    /// when the token differs from the last one, and again when the user changes and
    /// every [`crate::config::TernConfig::push_refresh_interval`]. Ordered with the
    /// other calls and durable when it returns. Errors: `Invalid` (a token over 1024
    /// bytes or with characters outside `!`..`~`; an APNs token without environment),
    /// `OptedOut` (no token is kept while opted out: hand it over again after opting
    /// in), `ShutDown`, `Journal`, `StoreUnavailable`.
    pub fn set_push_token(
        &self,
        provider: PushProvider,
        environment: Option<PushEnvironment>,
        token: &str,
    ) -> Result<(), TrackError> {
        self.apply(
            Call::SetPushToken {
                provider,
                environment,
                token: token.to_owned(),
            },
            now_ms(),
        )
    }

    /// Records that a push of campaign `campaign_id` reached the device
    /// (`push_received`). Errors as [`Tern::track`].
    pub fn push_received(&self, campaign_id: &str) -> Result<(), TrackError> {
        self.apply(
            Call::PushReceived {
                campaign_id: campaign_id.to_owned(),
            },
            now_ms(),
        )
    }

    /// Records that the user opened a push of campaign `campaign_id`, with the
    /// notification action chosen (`None` for the default tap) (`push_opened`).
    /// Errors as [`Tern::track`].
    pub fn push_opened(&self, campaign_id: &str, action: Option<&str>) -> Result<(), TrackError> {
        self.apply(
            Call::PushOpened {
                campaign_id: campaign_id.to_owned(),
                action: action.map(str::to_owned),
            },
            now_ms(),
        )
    }

    /// The push token the store has applied so far (see [`Tern::wait_applied`]);
    /// `None` without one, and while the store is not open.
    pub fn push_token(&self) -> Option<PushState> {
        lock(&self.inner().db)
            .as_ref()
            .and_then(|db| db.push_state().cloned())
    }
}

impl Inner {
    /// [`Call::SetPushToken`].
    pub(super) fn set_push_token(
        &self,
        provider: PushProvider,
        environment: Option<PushEnvironment>,
        token: String,
        at_ms: i64,
    ) -> Result<(), TrackError> {
        self.check_open()?;
        if self.opted_out.load(Ordering::Acquire) {
            self.refused_opted_out.fetch_add(1, Ordering::Relaxed);
            return Err(TrackError::OptedOut);
        }
        let environment = match provider {
            // FCM has no environment: one given is not kept.
            PushProvider::Fcm => None,
            _ => environment,
        };
        let checked = validate_push_token(&token, &self.config.limits).and_then(|()| {
            match (&provider, &environment) {
                (PushProvider::Apns, None) => Err(ValidationError::Empty {
                    field: "environment".into(),
                }),
                (PushProvider::Other(p), _) => validate_id("provider", p, &self.config.limits),
                _ => Ok(()),
            }
        });
        if let Err(e) = checked {
            self.invalid.fetch_add(1, Ordering::Relaxed);
            return Err(e.into());
        }
        let session = lock(&self.sessions).current();
        self.append(&[Entry::PushToken {
            ts_ms: at_ms,
            session,
            provider,
            environment,
            token,
        }])?;
        let mut hint = lock(&self.push);
        if hint.sent_ms.is_none() {
            hint.sent_ms = Some(at_ms);
        }
        Ok(())
    }

    /// At open and on foreground: appends a refresh entry if the token may be due
    /// (recorded at least `push_refresh_interval` before `at_ms`). Never fails the
    /// caller: a refresh that cannot be written is tried again next time.
    pub(super) fn refresh_push_token(&self, at_ms: i64) {
        let interval = self.config.push_refresh_interval;
        let min_age_ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
        // The hint's lock is never held while taking the sessions' (`opt_out` and
        // `delete_local_data` take them in the other order). Two refreshes racing both
        // append: the store records one (it checks the age again).
        let due = lock(&self.push)
            .sent_ms
            .is_some_and(|sent| i128::from(at_ms) - i128::from(sent) >= i128::from(min_age_ms));
        if !due || self.opted_out.load(Ordering::Acquire) || self.shut_down.load(Ordering::Acquire)
        {
            return;
        }
        let session = lock(&self.sessions).current();
        match self.append(&[Entry::PushRefresh {
            ts_ms: at_ms,
            session,
            min_age_ms,
        }]) {
            Ok(()) => {
                let mut hint = lock(&self.push);
                if hint.sent_ms.is_some() {
                    hint.sent_ms = Some(at_ms);
                }
            }
            Err(e) => tracing::debug!(error = %e, "push token refresh not recorded"),
        }
    }

    /// The token was given up (opt-out, `delete_local_data`).
    pub(super) fn forget_push_token(&self) {
        lock(&self.push).sent_ms = None;
    }

    /// The store opened: the hint starts from what it holds.
    pub(super) fn load_push_hint(&self, db: &Db) {
        lock(&self.push).sent_ms = db.push_state().map(|p| p.sent_ms);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tern_protocol::{EventBody, PushEnvironment, PushProvider};

    use super::super::{now_ms, Call, Tern};
    use crate::config::TernConfig;
    use crate::error::TrackError;

    const WAIT: Duration = Duration::from_secs(30);
    const DAY: i64 = 24 * 3600 * 1000;

    fn start(dir: &std::path::Path) -> Tern {
        let tern = Tern::start(
            TernConfig::builder("demo", "key", dir)
                .push_refresh_interval(Duration::from_secs(7 * 24 * 3600))
                .build()
                .unwrap(),
        )
        .unwrap();
        assert!(tern.wait_applied(WAIT));
        tern
    }

    fn tokens(tern: &Tern) -> Vec<(String, bool, i64)> {
        assert!(tern.wait_applied(WAIT));
        tern.form_batches(true).unwrap();
        let mut out = Vec::new();
        while let Some(b) = tern.next_batch().unwrap() {
            for e in &b.batch.events {
                if let EventBody::PushToken { token, cleared, .. } = &e.body {
                    out.push((token.clone(), *cleared, e.ts_ms));
                }
            }
            tern.ack(b.batch.batch_id).unwrap();
        }
        out
    }

    fn set(tern: &Tern, token: &str, at_ms: i64) {
        tern.apply(
            Call::SetPushToken {
                provider: PushProvider::Fcm,
                environment: Some(PushEnvironment::Sandbox),
                token: token.into(),
            },
            at_ms,
        )
        .unwrap();
    }

    #[test]
    fn the_token_is_refreshed_on_foreground_and_at_open_once_the_interval_passed() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = now_ms() - 20 * DAY;
        let tern = start(dir.path());
        set(&tern, "aa", t0);
        set(&tern, "aa", t0 + 1);
        tern.apply(Call::Foreground, t0 + DAY).unwrap();
        tern.apply(Call::Foreground, t0 + 8 * DAY).unwrap();
        tern.apply(Call::Foreground, t0 + 9 * DAY).unwrap();
        let got = tokens(&tern);
        let times: Vec<i64> = got.iter().map(|t| t.2).collect();
        assert_eq!(times, [t0, t0 + 8 * DAY], "{got:?}");
        // FCM has no environment: the one given was not kept.
        assert_eq!(tern.push_token().unwrap().environment, None);
        assert!(tern.shutdown(WAIT).clean);
        // Reopened 11 days after the last one: refreshed at open.
        let tern = start(dir.path());
        let got = tokens(&tern);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].2 >= t0 + 19 * DAY);
        assert!(tern.shutdown(WAIT).clean);
        // Reopened at once: nothing.
        let tern = start(dir.path());
        assert_eq!(tokens(&tern), []);
        assert!(tern.shutdown(WAIT).clean);
    }

    #[test]
    fn bad_tokens_are_refused_and_counted_and_nothing_is_kept_while_opted_out() {
        let dir = tempfile::tempdir().unwrap();
        let tern = start(dir.path());
        let bad = [
            (PushProvider::Apns, None, "ab"),
            (PushProvider::Apns, Some(PushEnvironment::Production), ""),
            (PushProvider::Fcm, None, "with space"),
        ];
        for (p, e, t) in bad {
            assert!(matches!(
                tern.set_push_token(p, e, t),
                Err(TrackError::Invalid(_))
            ));
        }
        assert!(matches!(
            tern.push_opened("", None),
            Err(TrackError::Invalid(_))
        ));
        assert_eq!(tern.stats().dropped_invalid, 4);
        tern.set_push_token(PushProvider::Apns, Some(PushEnvironment::Production), "ab")
            .unwrap();
        tern.push_received("spring").unwrap();
        tern.push_opened("spring", Some("buy")).unwrap();
        tern.opt_out(true).unwrap();
        assert!(matches!(
            tern.set_push_token(PushProvider::Fcm, None, "cd"),
            Err(TrackError::OptedOut)
        ));
        assert!(matches!(
            tern.push_received("spring"),
            Err(TrackError::OptedOut)
        ));
        // Opted out, only the cleared token leaves.
        assert_eq!(tokens(&tern).len(), 1);
        assert!(tern.push_token().is_none());
        tern.opt_out(false).unwrap();
        let kinds: Vec<&str> = {
            assert!(tern.wait_applied(WAIT));
            tern.form_batches(true).unwrap();
            let mut k = Vec::new();
            while let Some(b) = tern.next_batch().unwrap() {
                k.extend(b.batch.events.iter().map(|e| e.body.kind()));
                tern.ack(b.batch.batch_id).unwrap();
            }
            k
        };
        assert_eq!(kinds, ["push_token", "push_received", "push_opened"]);
        assert!(tern.shutdown(WAIT).clean);
    }
}
