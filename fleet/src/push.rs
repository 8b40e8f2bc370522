//! Push notifications in a fleet run (`tern-fleet run --push`, protocol §8.3): before
//! each drive every device hands over its push token (unchanged ones record nothing);
//! after it, every device reports a push of the fleet's campaign received, every other
//! one opens it (half of those with an action), every other device rotates its token
//! and every third identifies a new user (the token moves to it). The report compares
//! what the devices did with the stub's push view (`/verify/apps/{app}/push`): one
//! token per device, each the device's newest (compared as a count and an
//! order-independent digest of the tokens, so pods report a constant-size status), and
//! the campaign's received and opened counts.

use serde::{Deserialize, Serialize};
use tern_protocol::PushProvider;
use tern_sdk::Tern;

use crate::cluster::Cluster;
use crate::Result;

/// The campaign the fleet's pushes belong to.
pub const CAMPAIGN: &str = "fleet-campaign";

/// What the devices did, summed over pods.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushCounts {
    /// `set_push_token` calls that returned `Ok`.
    pub tokens_set: u64,
    /// Token rotations (a new token set).
    pub rotations: u64,
    /// Users identified to move tokens.
    pub user_changes: u64,
    /// `push_received` calls that returned `Ok`.
    pub received: u64,
    /// `push_opened` calls that returned `Ok`.
    pub opened: u64,
    /// Calls that returned an error.
    pub failed: u64,
    /// Devices holding a token (set and returned `Ok`).
    pub devices_with_token: u64,
    /// Wrapping sum of [`digest`] over the devices' newest tokens.
    pub token_digest: u64,
}

impl PushCounts {
    /// Adds `o` (another pod's).
    pub fn add(&mut self, o: &PushCounts) {
        self.tokens_set += o.tokens_set;
        self.rotations += o.rotations;
        self.user_changes += o.user_changes;
        self.received += o.received;
        self.opened += o.opened;
        self.failed += o.failed;
        self.devices_with_token += o.devices_with_token;
        self.token_digest = self.token_digest.wrapping_add(o.token_digest);
    }
}

/// FNV-1a 64 of a token: the same in every process of the run.
pub fn digest(token: &str) -> u64 {
    token.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The token of device `index` (its index in the whole fleet) at `generation`.
pub fn token_of(index: usize, generation: u32) -> String {
    format!("fleet-{index}:gen-{generation}")
}

/// One pod's push state: each device's generation and whether its token is set.
#[derive(Debug, Default)]
pub struct PushPod {
    generation: Vec<u32>,
    set: Vec<bool>,
    drives: u64,
    counts: PushCounts,
}

impl PushPod {
    /// Before a drive: every device hands over its current token; `first` is the fleet
    /// index of `devices[0]`.
    pub fn before_drive(&mut self, devices: &[Tern], first: usize) {
        self.generation.resize(devices.len(), 0);
        self.set.resize(devices.len(), false);
        for (i, d) in devices.iter().enumerate() {
            match d.set_push_token(
                PushProvider::Fcm,
                None,
                &token_of(first + i, self.generation[i]),
            ) {
                Ok(()) => {
                    self.counts.tokens_set += 1;
                    self.set[i] = true;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "set_push_token failed");
                    self.counts.failed += 1;
                }
            }
        }
    }

    /// After a drive: pushes received and opened, rotations and user changes.
    pub fn after_drive(&mut self, devices: &[Tern], first: usize) {
        self.drives += 1;
        let mut c = self.counts;
        let tally = |r: std::result::Result<(), tern_sdk::TrackError>,
                     n: &mut u64,
                     failed: &mut u64| match r {
            Ok(()) => *n += 1,
            Err(e) => {
                tracing::warn!(error = %e, "push call failed");
                *failed += 1;
            }
        };
        for (i, d) in devices.iter().enumerate() {
            let index = first + i;
            tally(d.push_received(CAMPAIGN), &mut c.received, &mut c.failed);
            if index.is_multiple_of(2) {
                let action = index.is_multiple_of(4).then_some("open-offer");
                tally(
                    d.push_opened(CAMPAIGN, action),
                    &mut c.opened,
                    &mut c.failed,
                );
            }
            if index.is_multiple_of(3) {
                let user = format!("fleet-push-user-{index}-{}", self.drives);
                tally(d.identify(Some(&user)), &mut c.user_changes, &mut c.failed);
            }
            if index % 2 == 1 && i < self.generation.len() {
                let next = self.generation[i] + 1;
                match d.set_push_token(PushProvider::Fcm, None, &token_of(index, next)) {
                    Ok(()) => {
                        self.generation[i] = next;
                        self.set[i] = true;
                        c.rotations += 1;
                        c.tokens_set += 1;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "set_push_token failed");
                        c.failed += 1;
                    }
                }
            }
        }
        self.counts = c;
    }

    /// The pod's counts, with the digest of its devices' newest tokens.
    pub fn counts(&self, first: usize) -> PushCounts {
        let mut c = self.counts;
        c.devices_with_token = 0;
        c.token_digest = 0;
        for (i, (&g, &set)) in self.generation.iter().zip(&self.set).enumerate() {
            if set {
                c.devices_with_token += 1;
                c.token_digest = c.token_digest.wrapping_add(digest(&token_of(first + i, g)));
            }
        }
        c
    }
}

/// The devices' push calls against the stub's push view.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushReport {
    /// What the devices did.
    pub devices: PushCounts,
    /// Devices with a token at the stub.
    pub stub_devices: u64,
    /// Wrapping sum of [`digest`] over the stub's tokens.
    pub stub_token_digest: u64,
    /// Users holding a token at the stub.
    pub stub_users: u64,
    /// The campaign's `push_received` events at the stub.
    pub stub_received: u64,
    /// The campaign's `push_opened` events at the stub.
    pub stub_opened: u64,
    /// `push_token` events the stub stored (not cleared).
    pub stub_token_events: u64,
}

impl PushReport {
    /// Reads the stub's view of app `app`.
    pub async fn collect(counts: PushCounts, c: &Cluster, app: &str) -> Result<PushReport> {
        let v = c.get_json(&format!("/verify/apps/{app}/push")).await?;
        let devices = v["devices"].as_object().cloned().unwrap_or_default();
        let digest_sum = devices
            .values()
            .filter_map(|d| d["token"].as_str())
            .fold(0u64, |acc, t| acc.wrapping_add(digest(t)));
        Ok(PushReport {
            devices: counts,
            stub_devices: devices.len() as u64,
            stub_token_digest: digest_sum,
            stub_users: v["users"].as_object().map_or(0, |u| u.len() as u64),
            stub_received: v["campaigns"][CAMPAIGN]["received"].as_u64().unwrap_or(0),
            stub_opened: v["campaigns"][CAMPAIGN]["opened"].as_u64().unwrap_or(0),
            stub_token_events: v["token_events"].as_u64().unwrap_or(0),
        })
    }

    /// Every device's newest token is at the stub (and no other), and every push
    /// reported is counted once.
    pub fn ok(&self) -> bool {
        self.devices.failed == 0
            && self.stub_devices == self.devices.devices_with_token
            && self.stub_token_digest == self.devices.token_digest
            && self.stub_received == self.devices.received
            && self.stub_opened == self.devices.opened
    }

    /// The report's line.
    pub fn render(&self) -> String {
        format!(
            "push: devices set {} tokens ({} rotations, {} user changes), reported {} received and {} opened ({} failed); stub holds {} device tokens ({}), {} users with tokens, {} token events, {} received, {} opened — {}\n",
            self.devices.tokens_set,
            self.devices.rotations,
            self.devices.user_changes,
            self.devices.received,
            self.devices.opened,
            self.devices.failed,
            self.stub_devices,
            if self.stub_token_digest == self.devices.token_digest {
                "each the device's newest"
            } else {
                "NOT the devices' newest"
            },
            self.stub_users,
            self.stub_token_events,
            self.stub_received,
            self.stub_opened,
            if self.ok() { "ok" } else { "MISMATCH" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_is_ok_only_when_the_stub_holds_each_devices_newest_token_and_every_push() {
        let tokens = [token_of(0, 1), token_of(1, 0)];
        let devices = PushCounts {
            tokens_set: 3,
            rotations: 1,
            user_changes: 1,
            received: 2,
            opened: 1,
            failed: 0,
            devices_with_token: 2,
            token_digest: tokens.iter().fold(0, |a, t| a.wrapping_add(digest(t))),
        };
        let good = PushReport {
            devices,
            stub_devices: 2,
            stub_token_digest: devices.token_digest,
            stub_users: 1,
            stub_received: 2,
            stub_opened: 1,
            stub_token_events: 4,
        };
        assert!(good.ok());
        assert!(good.render().ends_with("— ok\n"), "{}", good.render());
        let stale = digest(&token_of(0, 0)).wrapping_add(digest(&token_of(1, 0)));
        for bad in [
            PushReport {
                stub_token_digest: stale,
                ..good.clone()
            },
            PushReport {
                stub_devices: 1,
                ..good.clone()
            },
            PushReport {
                stub_received: 3,
                ..good.clone()
            },
            PushReport {
                stub_opened: 0,
                ..good.clone()
            },
            PushReport {
                devices: PushCounts {
                    failed: 1,
                    ..devices
                },
                ..good.clone()
            },
        ] {
            assert!(!bad.ok(), "{bad:?}");
            assert!(bad.render().contains("MISMATCH"));
        }
        // Pods add up: the digest is order-independent.
        let mut sum = PushCounts::default();
        sum.add(&PushCounts {
            token_digest: digest(&tokens[1]),
            ..PushCounts::default()
        });
        sum.add(&PushCounts {
            token_digest: digest(&tokens[0]),
            ..PushCounts::default()
        });
        assert_eq!(sum.token_digest, devices.token_digest);
    }
}
