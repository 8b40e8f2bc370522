//! Logins in a fleet run (`tern-fleet run --logins`): before each drive every device
//! aliases a user (`Tern::alias`: its anonymous id linked to `fleet-user-<n>`), so the
//! drive records under the user; after the drive it logs out (`Tern::reset`: a new
//! anonymous id). The report compares what the devices did with the stub's identities
//! view (`/verify/apps/{app}/identities`, protocol §8.1): one alias row per alias (each
//! names a fresh anonymous id), linked to the user the device logged in as.

use serde::{Deserialize, Serialize};
use tern_sdk::Tern;

use crate::cluster::Cluster;
use crate::Result;

/// What the devices did, summed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginCounts {
    /// `alias` calls that returned `Ok`.
    pub aliases: u64,
    /// `reset` calls that returned `Ok`.
    pub resets: u64,
    /// Calls that returned an error (opted out is not one: the fleet never opts out).
    pub failed: u64,
}

impl LoginCounts {
    /// Adds `o`.
    pub fn add(&mut self, o: &LoginCounts) {
        self.aliases += o.aliases;
        self.resets += o.resets;
        self.failed += o.failed;
    }
}

/// The user device `index` (its index in the whole fleet) logs in as.
pub fn user_of(index: usize) -> String {
    format!("fleet-user-{index}")
}

/// Every device aliases its user; `first` is the fleet index of `devices[0]`.
pub fn login(devices: &[Tern], first: usize, counts: &mut LoginCounts) {
    for (i, d) in devices.iter().enumerate() {
        match d.alias(&user_of(first + i)) {
            Ok(()) => counts.aliases += 1,
            Err(e) => {
                tracing::warn!(error = %e, "alias failed");
                counts.failed += 1;
            }
        }
    }
}

/// Every device logs out.
pub fn logout(devices: &[Tern], counts: &mut LoginCounts) {
    for d in devices {
        match d.reset() {
            Ok(()) => counts.resets += 1,
            Err(e) => {
                tracing::warn!(error = %e, "reset failed");
                counts.failed += 1;
            }
        }
    }
}

/// The devices' logins against the stub's identities.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginReport {
    /// What the devices did.
    pub devices: LoginCounts,
    /// Alias rows the stub holds (one per anonymous id aliased).
    pub stub_aliases: u64,
    /// Alias rows linked to a user no device logged in as.
    pub stub_aliases_foreign: u64,
    /// Alias events naming an anonymous id already aliased (0 expected: each alias
    /// names the fresh anonymous id of a reset).
    pub stub_realiased: u64,
    /// Identities with events at the stub: users, anonymous ids, devices.
    pub stub_identities: u64,
}

impl LoginReport {
    /// Reads the stub's view of app `app`.
    pub async fn collect(counts: LoginCounts, c: &Cluster, app: &str) -> Result<LoginReport> {
        let v = c
            .get_json(&format!("/verify/apps/{app}/identities"))
            .await?;
        let aliases = v["aliases"].as_array().cloned().unwrap_or_default();
        let foreign = aliases
            .iter()
            .filter(|a| {
                !a["user_id"]
                    .as_str()
                    .is_some_and(|u| u.starts_with("fleet-user-"))
            })
            .count() as u64;
        let realiased = aliases
            .iter()
            .map(|a| a["seen"].as_u64().unwrap_or(1).saturating_sub(1))
            .sum();
        Ok(LoginReport {
            devices: counts,
            stub_aliases: aliases.len() as u64,
            stub_aliases_foreign: foreign,
            stub_realiased: realiased,
            stub_identities: v["events"].as_object().map_or(0, |m| m.len() as u64),
        })
    }

    /// Every alias a device made is at the stub, once, linked to a fleet user.
    pub fn ok(&self) -> bool {
        self.devices.failed == 0
            && self.stub_aliases == self.devices.aliases
            && self.stub_aliases_foreign == 0
            && self.stub_realiased == 0
    }

    /// The report's lines.
    pub fn render(&self) -> String {
        format!(
            "logins: devices aliased {} times and reset {} times ({} failed); stub holds {} aliases ({} to unknown users, {} re-aliased), {} identities with events — {}\n",
            self.devices.aliases,
            self.devices.resets,
            self.devices.failed,
            self.stub_aliases,
            self.stub_aliases_foreign,
            self.stub_realiased,
            self.stub_identities,
            if self.ok() { "ok" } else { "MISMATCH" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_is_ok_only_when_every_alias_is_stored_once_for_a_fleet_user() {
        let devices = LoginCounts {
            aliases: 4,
            resets: 4,
            failed: 0,
        };
        let good = LoginReport {
            devices,
            stub_aliases: 4,
            stub_aliases_foreign: 0,
            stub_realiased: 0,
            stub_identities: 12,
        };
        assert!(good.ok());
        assert!(good.render().ends_with("— ok\n"), "{}", good.render());
        for bad in [
            LoginReport {
                stub_aliases: 3,
                ..good.clone()
            },
            LoginReport {
                stub_aliases_foreign: 1,
                ..good.clone()
            },
            LoginReport {
                stub_realiased: 1,
                ..good.clone()
            },
            LoginReport {
                devices: LoginCounts {
                    failed: 1,
                    ..devices
                },
                ..good.clone()
            },
        ] {
            assert!(!bad.ok(), "{bad:?}");
            assert!(bad.render().contains("MISMATCH"));
        }
        assert_eq!(user_of(7), "fleet-user-7");
    }
}
