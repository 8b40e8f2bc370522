//! Consent in a fleet run (`tern-fleet run --consent`). Each device has a role by its
//! fleet index (protocol §8.2, `tern_sdk::consent`):
//!
//! * **grant** (index % 3 == 0): analytics consent is set *pending* before each drive,
//!   so the drive's events are held on the device, and *granted* after it, so they
//!   leave, in order — the main report's "nothing lost" covers them;
//! * **deny** (index % 3 == 1): messaging consent is *denied* before each drive, then
//!   the device records message impressions; none may be kept or reach the stub;
//! * **delete** (index % 3 == 2): after each drive the device delivers what it recorded
//!   (`flush_and_wait`), then requests deletion: the stub must hold one deletion per
//!   request, and the device continues under a new device id.
//!
//! The report compares what the devices did with the stub's view
//! (`/verify/apps/{app}/deletions`, `/verify/apps/{app}/identities`) and fails the run on
//! a mismatch.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tern_sdk::{ConsentState, Purpose, Tern};

use crate::cluster::Cluster;
use crate::Result;

/// Impressions a deny-role device records per drive.
pub const IMPRESSIONS_PER_DRIVE: u64 = 2;
/// How long a delete-role device waits for its events to be delivered before it
/// requests deletion.
const DELIVER_BEFORE_DELETION: Duration = Duration::from_secs(30);

/// A device's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Pending during the drive, granted after.
    Grant,
    /// Messaging denied, impressions recorded.
    Deny,
    /// Deletion requested after each drive.
    Delete,
}

/// The role of the device with fleet index `index`.
pub fn role_of(index: usize) -> Role {
    match index % 3 {
        0 => Role::Grant,
        1 => Role::Deny,
        _ => Role::Delete,
    }
}

/// What the devices did and what their counters say, summed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentCounts {
    /// Grants after a pending drive (grant role).
    pub grants: u64,
    /// Impressions recorded while messaging was denied (deny role).
    pub impressions_denied: u64,
    /// Of them, refused at the call (the device's `refused_consent` grew).
    pub impressions_refused: u64,
    /// `request_deletion` calls that returned `Ok` (delete role).
    pub deletions: u64,
    /// Delete-role devices whose events were not all delivered before the request.
    pub undelivered_before_deletion: u64,
    /// Calls that returned an error.
    pub failed: u64,
    /// Held events released by grants (devices' counters).
    pub released: u64,
    /// Events still held (devices' counters; 0 expected at the end).
    pub pending_now: u64,
    /// Deletion requests acknowledged upstream (devices' counters).
    pub deletion_requests_sent: u64,
}

impl ConsentCounts {
    /// Adds `o`.
    pub fn add(&mut self, o: &ConsentCounts) {
        self.grants += o.grants;
        self.impressions_denied += o.impressions_denied;
        self.impressions_refused += o.impressions_refused;
        self.deletions += o.deletions;
        self.undelivered_before_deletion += o.undelivered_before_deletion;
        self.failed += o.failed;
        self.released += o.released;
        self.pending_now += o.pending_now;
        self.deletion_requests_sent += o.deletion_requests_sent;
    }

    /// The calls counted in `self` with the devices' counters now.
    pub fn with_devices(&self, devices: &[Tern]) -> ConsentCounts {
        let mut out = *self;
        (out.released, out.pending_now, out.deletion_requests_sent) = (0, 0, 0);
        for d in devices {
            let c = d.stats().consent_counters;
            out.released += c.pending_released;
            out.pending_now += c.pending_now;
            out.deletion_requests_sent += c.deletion_requests_sent;
        }
        out
    }

    fn count(&mut self, r: Result<(), tern_sdk::TrackError>, what: &str) -> bool {
        match r {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, what, "consent call failed");
                self.failed += 1;
                false
            }
        }
    }
}

/// Before a drive; `first` is the fleet index of `devices[0]`.
pub fn before_drive(devices: &[Tern], first: usize, counts: &mut ConsentCounts) {
    for (i, d) in devices.iter().enumerate() {
        match role_of(first + i) {
            Role::Grant => {
                counts.count(
                    d.set_consent(Purpose::Analytics, ConsentState::Pending),
                    "pending",
                );
            }
            Role::Deny => {
                if counts.count(
                    d.set_consent(Purpose::Messaging, ConsentState::Denied),
                    "deny",
                ) {
                    let before = d.stats().refused_consent;
                    for k in 0..IMPRESSIONS_PER_DRIVE {
                        counts.count(
                            d.message_impression(&format!("fleet-message-{k}"), "shown"),
                            "impression",
                        );
                        counts.impressions_denied += 1;
                    }
                    counts.impressions_refused += d.stats().refused_consent - before;
                }
            }
            Role::Delete => {}
        }
    }
}

/// After a drive; `first` is the fleet index of `devices[0]`.
pub fn after_drive(devices: &[Tern], first: usize, counts: &mut ConsentCounts) {
    for (i, d) in devices.iter().enumerate() {
        match role_of(first + i) {
            Role::Grant => {
                if counts.count(
                    d.set_consent(Purpose::Analytics, ConsentState::Granted),
                    "grant",
                ) {
                    counts.grants += 1;
                }
            }
            Role::Deny => {}
            Role::Delete => {
                // What the device recorded is delivered first: a deletion request
                // deletes what is still on the device.
                if !d.flush_and_wait(DELIVER_BEFORE_DELETION) {
                    counts.undelivered_before_deletion += 1;
                }
                if counts.count(d.request_deletion(), "request_deletion") {
                    counts.deletions += 1;
                }
            }
        }
    }
}

/// The devices' consent against the stub's view.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentReport {
    /// What the devices did.
    pub devices: ConsentCounts,
    /// Devices with a deletion at the stub.
    pub stub_deletions: u64,
    /// Deletion requests the stub stored beyond one per device (0 expected: each
    /// request names a new device id).
    pub stub_repeated_requests: u64,
    /// Deletion requests naming another device than their batch's.
    pub stub_mismatched: u64,
    /// Events of deleted devices received after their request (0 expected).
    pub stub_events_dropped: u64,
    /// Message impressions stored (0 expected: only denied ones were recorded).
    pub stub_impressions: u64,
}

impl ConsentReport {
    /// Reads the stub's view of app `app`.
    pub async fn collect(counts: ConsentCounts, c: &Cluster, app: &str) -> Result<ConsentReport> {
        let d = c.get_json(&format!("/verify/apps/{app}/deletions")).await?;
        let rows = d["deletions"].as_array().cloned().unwrap_or_default();
        let n = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap_or(0);
        let ids = c
            .get_json(&format!("/verify/apps/{app}/identities"))
            .await?;
        let impressions = ids["kinds"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(_, kinds)| n(kinds, "message_impression"))
            .sum();
        Ok(ConsentReport {
            devices: counts,
            stub_deletions: n(&d, "devices"),
            stub_repeated_requests: rows
                .iter()
                .map(|r| n(r, "requests").saturating_sub(1))
                .sum(),
            stub_mismatched: rows.iter().map(|r| n(r, "mismatched")).sum(),
            stub_events_dropped: n(&d, "events_dropped"),
            stub_impressions: impressions,
        })
    }

    /// The stub holds exactly what the devices did.
    pub fn ok(&self) -> bool {
        let d = &self.devices;
        d.failed == 0
            && d.pending_now == 0
            && d.impressions_refused == d.impressions_denied
            && d.undelivered_before_deletion == 0
            && d.deletion_requests_sent == d.deletions
            && self.stub_deletions == d.deletions
            && self.stub_repeated_requests == 0
            && self.stub_mismatched == 0
            && self.stub_events_dropped == 0
            && self.stub_impressions == 0
    }

    /// The report's line.
    pub fn render(&self) -> String {
        let d = &self.devices;
        format!(
            "consent: {} grants released {} held events ({} still held); {} denied impressions ({} refused), stub holds {} impressions; {} deletion requests ({} acknowledged, {} devices not fully delivered first), stub holds {} deletions ({} repeated, {} mismatched, {} events dropped after); {} failed calls — {}\n",
            d.grants,
            d.released,
            d.pending_now,
            d.impressions_denied,
            d.impressions_refused,
            self.stub_impressions,
            d.deletions,
            d.deletion_requests_sent,
            d.undelivered_before_deletion,
            self.stub_deletions,
            self.stub_repeated_requests,
            self.stub_mismatched,
            self.stub_events_dropped,
            d.failed,
            if self.ok() { "ok" } else { "MISMATCH" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_is_ok_only_when_the_stub_holds_what_the_devices_did() {
        let devices = ConsentCounts {
            grants: 4,
            impressions_denied: 8,
            impressions_refused: 8,
            deletions: 4,
            deletion_requests_sent: 4,
            released: 40,
            ..ConsentCounts::default()
        };
        let good = ConsentReport {
            devices,
            stub_deletions: 4,
            ..ConsentReport::default()
        };
        assert!(good.ok());
        assert!(good.render().ends_with("— ok\n"), "{}", good.render());
        let mut bad_devices = devices;
        bad_devices.pending_now = 1;
        for bad in [
            ConsentReport {
                stub_deletions: 3,
                ..good.clone()
            },
            ConsentReport {
                stub_impressions: 1,
                ..good.clone()
            },
            ConsentReport {
                stub_events_dropped: 1,
                ..good.clone()
            },
            ConsentReport {
                devices: bad_devices,
                ..good.clone()
            },
        ] {
            assert!(!bad.ok(), "{bad:?}");
            assert!(bad.render().contains("MISMATCH"));
        }
        assert_eq!(
            [role_of(0), role_of(1), role_of(2), role_of(3)],
            [Role::Grant, Role::Deny, Role::Delete, Role::Grant]
        );
    }
}
