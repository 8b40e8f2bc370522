//! Experiment exposures in a fleet run (`tern-fleet run --exposures`): the devices read
//! the demo app's flags — each read records an exposure once per (flag, variant, unit,
//! config version) — and the report compares what the devices recorded with what the
//! stub stored (`/verify/summary`: `exposures`, `exposure_events`).
//!
//! A pod reads the flags before and after each drive ([`read_flags`]), so each device
//! records its exposures with the bundle it has at the start, reads them all again
//! (deduplicated), and — when the main job changed the config during the drive —
//! records one exposure per flag of the new version.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tern_sdk::Tern;

/// The demo app's flags (`tern_testkit::stub::DEMO_APPS`): a boolean flag at 50 % and a
/// three-way multivariate flag.
pub const DEMO_FLAGS: [&str; 2] = ["new_checkout", "button_color"];

/// Reads per flag and device each time the flags are read.
pub const READS: u32 = 3;

/// How long [`read_flags`] waits for devices to have a config bundle.
const BUNDLE_WAIT: Duration = Duration::from_secs(30);

/// The devices' exposure counters, summed ([`tern_sdk::ExposureStats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExposureCounts {
    /// Flag reads.
    pub reads: u64,
    /// Exposure events recorded.
    pub recorded: u64,
    /// Reads whose exposure was recorded before.
    pub already_recorded: u64,
    /// Exposures refused because the device's set was full.
    pub over_cap: u64,
    /// Exposures whose recording failed.
    pub failed: u64,
    /// Reads made before the device had a config bundle (nothing to expose).
    pub without_bundle: u64,
}

impl ExposureCounts {
    /// Adds `o`.
    pub fn add(&mut self, o: &ExposureCounts) {
        self.reads += o.reads;
        self.recorded += o.recorded;
        self.already_recorded += o.already_recorded;
        self.over_cap += o.over_cap;
        self.failed += o.failed;
        self.without_bundle += o.without_bundle;
    }

    /// The devices' counters now; `reads` and `without_bundle` are the driver's, kept
    /// from `driver`.
    /// `retired`: the counters of instances app kills replaced
    /// ([`crate::devices::Fleet::retired_exposures`]).
    pub fn of(devices: &[Tern], retired: [u64; 4], driver: &ExposureCounts) -> ExposureCounts {
        let [recorded, already_recorded, over_cap, failed] = retired;
        let mut c = ExposureCounts {
            reads: driver.reads,
            without_bundle: driver.without_bundle,
            recorded,
            already_recorded,
            over_cap,
            failed,
        };
        for d in devices {
            let s = d.stats().exposures;
            c.recorded += s.recorded;
            c.already_recorded += s.already_recorded;
            c.over_cap += s.over_cap;
            c.failed += s.failed;
        }
        c
    }
}

/// Every device reads each of `flags` [`READS`] times (after waiting, at most 30 s in
/// all, for the devices to have a config bundle). Adds the reads to `driver`.
pub fn read_flags(devices: &[Tern], flags: &[String], driver: &mut ExposureCounts) {
    let deadline = Instant::now() + BUNDLE_WAIT;
    while Instant::now() < deadline && devices.iter().any(|d| d.config_info().version == 0) {
        std::thread::sleep(Duration::from_millis(20));
    }
    for d in devices {
        if d.config_info().version == 0 {
            driver.without_bundle += 1;
            continue;
        }
        for _ in 0..READS {
            for f in flags {
                let _ = d.flag(f);
                driver.reads += 1;
            }
        }
    }
}

/// What the report says about exposures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ExposureReport {
    /// The devices' counters.
    pub devices: ExposureCounts,
    /// Distinct exposures the stub stored: (app, flag, variant, unit, config version).
    pub stored: u64,
    /// Exposure events the stub stored; above `stored` when a key was recorded twice.
    pub stored_events: u64,
}

impl ExposureReport {
    /// From the devices' counters and the stub's `/verify/summary`.
    pub fn new(devices: ExposureCounts, summary: &serde_json::Value) -> ExposureReport {
        let n = |k: &str| summary[k].as_u64().unwrap_or(0);
        ExposureReport {
            devices,
            stored: n("exposures"),
            stored_events: n("exposure_events"),
        }
    }

    /// Keys stored more than once.
    pub fn duplicates(&self) -> u64 {
        self.stored_events.saturating_sub(self.stored)
    }

    /// Every exposure the devices recorded is stored, once, and none failed.
    pub fn ok(&self) -> bool {
        self.stored == self.devices.recorded && self.duplicates() == 0 && self.devices.failed == 0
    }

    /// The report's lines.
    pub fn render(&self) -> String {
        let d = &self.devices;
        let mut out = format!(
            "  exposures recorded      {:>12}   (devices: {} flag reads, {} already recorded, {} over the cap, {} failed, {} devices without config)\n",
            d.recorded, d.reads, d.already_recorded, d.over_cap, d.failed, d.without_bundle
        );
        out.push_str(&format!(
            "  exposures stored        {:>12}   (stub: one per flag, variant, unit and config version; {} duplicates)\n",
            self.stored,
            self.duplicates()
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposures_are_ok_when_every_recorded_one_is_stored_once() {
        let devices = ExposureCounts {
            reads: 120,
            recorded: 40,
            already_recorded: 80,
            ..ExposureCounts::default()
        };
        let summary = serde_json::json!({"exposures": 40, "exposure_events": 40});
        let r = ExposureReport::new(devices, &summary);
        assert!(r.ok());
        let text = r.render();
        assert!(
            text.contains("exposures recorded                40   (devices: 120 flag reads, 80 already recorded"),
            "{text}"
        );
        assert!(
            text.contains("exposures stored                  40"),
            "{text}"
        );
        assert!(text.contains("; 0 duplicates)"), "{text}");
        // A key stored twice, or one missing, fails the run.
        let twice = ExposureReport::new(
            devices,
            &serde_json::json!({"exposures": 40, "exposure_events": 41}),
        );
        assert_eq!(twice.duplicates(), 1);
        assert!(!twice.ok());
        let missing = ExposureReport::new(
            devices,
            &serde_json::json!({"exposures": 39, "exposure_events": 39}),
        );
        assert!(!missing.ok());
        // An older stub without the fields stores none: not ok.
        assert!(!ExposureReport::new(devices, &serde_json::json!({})).ok());
    }

    /// A pod that does not count exposures (the Kotlin pod) reports none; the parent's
    /// sum adds them up pod by pod.
    #[test]
    fn pod_statuses_carry_and_sum_the_exposure_counts() {
        let plain: crate::pods::PodStatus =
            serde_json::from_value(serde_json::json!({"devices": 2, "tracked": 5,
                "events_recorded": 7, "refused": 0,
                "totals": serde_json::to_value(crate::devices::UploadTotals::default()).unwrap(),
                "behaviour": serde_json::to_value(crate::devices::BehaviourCounts::default()).unwrap()}))
            .unwrap();
        assert_eq!(plain.exposures, ExposureCounts::default());
        let mut c = ExposureCounts {
            reads: 6,
            recorded: 2,
            ..ExposureCounts::default()
        };
        c.add(&ExposureCounts {
            reads: 6,
            recorded: 1,
            already_recorded: 5,
            without_bundle: 1,
            ..ExposureCounts::default()
        });
        assert_eq!(
            (c.reads, c.recorded, c.already_recorded, c.without_bundle),
            (12, 3, 5, 1)
        );
    }
}
