//! App updates in a fleet run (`tern-fleet run --app-updates`): devices start as app
//! version 1.0 with lifecycle events on, so each records `app_installed` and
//! `app_opened` (and an open per relaunch after an app kill); before the drive half of
//! them switch to cellular (a network change in their context), after it the devices of
//! even index are updated to 2.0 (shut down and launched again with new options, on the
//! same data directory) and every device is back on Wi-Fi. The report compares what the
//! devices did with the stub's contexts view (`/verify/apps/{app}/contexts`, protocol
//! §5.2.1 and §8.4): one install per device, one update per updated device naming 1.0,
//! an open per launch, one install id per device, and fails the run on a mismatch.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tern_protocol::NetworkType;

use crate::cluster::Cluster;
use crate::devices::{DeviceOptions, Fleet};
use crate::Result;

/// The version devices are installed with.
pub const FIRST_VERSION: &str = "1.0";
/// The version updated devices run.
pub const UPDATED_VERSION: &str = "2.0";

/// Sets fleet devices up for `--app-updates`: version 1.0, lifecycle events on.
pub fn configure(options: &mut DeviceOptions) {
    options.app_version = Some(FIRST_VERSION.into());
    options.auto_lifecycle = true;
}

/// What the devices did, summed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateCounts {
    /// Devices installed (each records one install).
    pub devices: u64,
    /// Devices updated to 2.0.
    pub updated: u64,
    /// Network changes reported (`set_network_type` calls that returned `Ok`).
    pub network_changes: u64,
    /// Calls or relaunches that failed.
    pub failed: u64,
}

impl UpdateCounts {
    /// Adds `o`.
    pub fn add(&mut self, o: &UpdateCounts) {
        self.devices += o.devices;
        self.updated += o.updated;
        self.network_changes += o.network_changes;
        self.failed += o.failed;
    }
}

fn set_network(fleet: &Fleet, i: usize, network: NetworkType, counts: &mut UpdateCounts) {
    match fleet.devices()[i].set_network_type(Some(network)) {
        Ok(()) => counts.network_changes += 1,
        Err(e) => {
            tracing::warn!(error = %e, "set_network_type failed");
            counts.failed += 1;
        }
    }
}

/// Before the drive: devices of odd fleet index (`first` is the index of the first)
/// move to cellular.
pub fn before_drive(fleet: &Fleet, first: usize, counts: &mut UpdateCounts) {
    counts.devices = fleet.devices().len() as u64;
    for i in 0..fleet.devices().len() {
        if (first + i) % 2 == 1 {
            set_network(fleet, i, NetworkType::Cellular, counts);
        }
    }
}

/// After the drive: devices of even fleet index are updated to 2.0, and every device is
/// on Wi-Fi again; waits until every device's store has applied what it recorded, so
/// the lifecycle events the store records are in the pod's count.
pub fn after_drive(fleet: &mut Fleet, first: usize, counts: &mut UpdateCounts) {
    let mut updated = fleet.options().clone();
    updated.app_version = Some(UPDATED_VERSION.into());
    for i in 0..fleet.devices().len() {
        if (first + i).is_multiple_of(2) {
            match fleet.relaunch_with(i, &updated) {
                Ok(()) => counts.updated += 1,
                Err(e) => {
                    tracing::warn!(device = first + i, error = %e, "updating a device failed");
                    counts.failed += 1;
                }
            }
        } else {
            set_network(fleet, i, NetworkType::Wifi, counts);
        }
    }
    for d in fleet.devices() {
        if !d.wait_applied(Duration::from_secs(30)) {
            counts.failed += 1;
        }
    }
}

/// The devices' lifecycle against the stub's contexts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateReport {
    /// What the devices did.
    pub devices: UpdateCounts,
    /// App launches after a kill (each records an open).
    pub relaunched: u64,
    /// `app_installed` events at the stub.
    pub stub_installs: u64,
    /// `app_updated` events at the stub.
    pub stub_updates: u64,
    /// Of those, ones that do not name 1.0 → 2.0.
    pub stub_updates_wrong: u64,
    /// `app_opened` events at start (not from the background) at the stub.
    pub stub_launch_opens: u64,
    /// `app_opened` events from the background at the stub.
    pub stub_background_opens: u64,
    /// Devices at the stub with events.
    pub stub_devices: u64,
    /// Devices whose events carry more than one install id, or none.
    pub stub_install_ids_split: u64,
    /// Distinct contexts at the stub, all devices.
    pub stub_contexts: u64,
    /// Devices with events on cellular.
    pub stub_devices_on_cellular: u64,
}

impl UpdateReport {
    /// Reads the stub's view of app `app`.
    pub async fn collect(
        counts: UpdateCounts,
        relaunched: u64,
        c: &Cluster,
        app: &str,
    ) -> Result<UpdateReport> {
        let v = c.get_json(&format!("/verify/apps/{app}/contexts")).await?;
        let mut r = UpdateReport {
            devices: counts,
            relaunched,
            stub_installs: v["installs"].as_u64().unwrap_or(0),
            stub_updates: v["updates"].as_u64().unwrap_or(0),
            ..UpdateReport::default()
        };
        for dev in v["devices"]
            .as_object()
            .into_iter()
            .flat_map(|m| m.values())
        {
            r.stub_devices += 1;
            for l in dev["lifecycle"].as_array().into_iter().flatten() {
                match l["kind"].as_str() {
                    Some("app_updated")
                        if l["previous_version"].as_str() != Some(FIRST_VERSION)
                            || l["app_version"].as_str() != Some(UPDATED_VERSION) =>
                    {
                        r.stub_updates_wrong += 1
                    }
                    Some("app_opened") if l["from_background"].as_bool() == Some(true) => {
                        r.stub_background_opens += 1
                    }
                    Some("app_opened") => r.stub_launch_opens += 1,
                    _ => {}
                }
            }
            let contexts = dev["contexts"].as_array().cloned().unwrap_or_default();
            r.stub_contexts += contexts.len() as u64;
            let installs: std::collections::BTreeSet<String> = contexts
                .iter()
                .map(|c| c["context"]["install_id"].to_string())
                .collect();
            if installs.len() != 1 || installs.contains("null") {
                r.stub_install_ids_split += 1;
            }
            if contexts
                .iter()
                .any(|c| c["context"]["network"].as_str() == Some("cellular"))
            {
                r.stub_devices_on_cellular += 1;
            }
        }
        Ok(r)
    }

    /// Launches the devices made: one per device, one per relaunch after a kill, one
    /// per update.
    pub fn launches(&self) -> u64 {
        self.devices.devices + self.relaunched + self.devices.updated
    }

    /// One install per device, one update per updated device (1.0 → 2.0), one open per
    /// launch, one install id per device.
    pub fn ok(&self) -> bool {
        self.devices.failed == 0
            && self.stub_installs == self.devices.devices
            && self.stub_devices == self.devices.devices
            && self.stub_updates == self.devices.updated
            && self.stub_updates_wrong == 0
            && self.stub_launch_opens == self.launches()
            && self.stub_install_ids_split == 0
    }

    /// The report's lines.
    pub fn render(&self) -> String {
        format!(
            "app updates: {} devices installed, {} updated to {UPDATED_VERSION}, {} relaunched after a kill, {} network changes ({} failed); \
             stub holds {} installs, {} updates ({} not {FIRST_VERSION} → {UPDATED_VERSION}), {} opens at launch of {} launches, {} from the background, \
             {} distinct contexts, {} devices on cellular, {} devices with a split install id — {}\n",
            self.devices.devices,
            self.devices.updated,
            self.relaunched,
            self.devices.network_changes,
            self.devices.failed,
            self.stub_installs,
            self.stub_updates,
            self.stub_updates_wrong,
            self.stub_launch_opens,
            self.launches(),
            self.stub_background_opens,
            self.stub_contexts,
            self.stub_devices_on_cellular,
            self.stub_install_ids_split,
            if self.ok() { "ok" } else { "MISMATCH" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_is_ok_only_when_installs_updates_and_opens_match_the_launches() {
        let devices = UpdateCounts {
            devices: 6,
            updated: 3,
            network_changes: 6,
            failed: 0,
        };
        let good = UpdateReport {
            devices,
            relaunched: 2,
            stub_installs: 6,
            stub_updates: 3,
            stub_updates_wrong: 0,
            stub_launch_opens: 11,
            stub_background_opens: 4,
            stub_devices: 6,
            stub_install_ids_split: 0,
            stub_contexts: 15,
            stub_devices_on_cellular: 3,
        };
        assert!(good.ok());
        assert!(good.render().ends_with("— ok\n"), "{}", good.render());
        for bad in [
            UpdateReport {
                stub_installs: 7,
                ..good.clone()
            },
            UpdateReport {
                stub_updates: 2,
                ..good.clone()
            },
            UpdateReport {
                stub_updates_wrong: 1,
                ..good.clone()
            },
            UpdateReport {
                stub_launch_opens: 10,
                ..good.clone()
            },
            UpdateReport {
                stub_install_ids_split: 1,
                ..good.clone()
            },
            UpdateReport {
                devices: UpdateCounts {
                    failed: 1,
                    ..devices
                },
                ..good.clone()
            },
        ] {
            assert!(!bad.ok(), "{bad:?}");
            assert!(bad.render().contains("MISMATCH"));
        }
    }
}
