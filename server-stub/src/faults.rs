//! Fault injection for the data plane (`/v1/*`): the settings, their validation, and
//! the (sans-IO) decision of what to inject for one request.

use serde::{Deserialize, Serialize};

/// A part of the data plane that faults can be scoped to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// `POST /v1/ingest`.
    Ingest,
    /// `GET /v1/apps/{app}/config`.
    Config,
    /// `GET /v1/apps` (the app registry).
    Registry,
}

/// The fault settings. `PUT /admin/faults` replaces them whole; missing fields take
/// their defaults (no fault), unknown fields are refused.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Sleep this long before handling a request.
    pub latency_ms: u64,
    /// Fraction of requests answered 503 before any processing.
    pub error_rate: f64,
    /// Fraction of ingest requests that are processed and committed, then answered 500.
    pub ack_loss_rate: f64,
    /// Abort every connection without an HTTP response; nothing is processed.
    pub down: bool,
    /// Answer 429 with this retry delay; nothing is processed.
    pub throttle_retry_after_ms: Option<u64>,
    /// Send response bodies at this many bytes per second.
    pub drip_bytes_per_sec: Option<u64>,
    /// The endpoints the faults apply to.
    pub scope: Vec<Scope>,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            latency_ms: 0,
            error_rate: 0.0,
            ack_loss_rate: 0.0,
            down: false,
            throttle_retry_after_ms: None,
            drip_bytes_per_sec: None,
            scope: vec![Scope::Ingest, Scope::Config],
        }
    }
}

/// A fault setting is out of range; the text names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FaultsError {
    /// The field.
    pub field: &'static str,
    /// What is wrong.
    pub reason: String,
}

impl Faults {
    /// Checks rates are in `[0, 1]` and rates/throughputs are usable.
    pub fn validate(&self) -> Result<(), FaultsError> {
        for (field, rate) in [
            ("error_rate", self.error_rate),
            ("ack_loss_rate", self.ack_loss_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(FaultsError {
                    field,
                    reason: format!("{rate} is not in [0, 1]"),
                });
            }
        }
        if self.drip_bytes_per_sec == Some(0) {
            return Err(FaultsError {
                field: "drip_bytes_per_sec",
                reason: "must be at least 1 (use null to disable)".into(),
            });
        }
        Ok(())
    }

    /// True when any fault is configured for `scope`.
    pub fn applies_to(&self, scope: Scope) -> bool {
        self.scope.contains(&scope)
    }
}

/// What to do with a request before it is handled. Drawn once per request, in the
/// documented order: down > throttle > error_rate > (latency, process).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Before {
    /// Abort the connection.
    Down,
    /// Answer 429 with this retry delay.
    Throttle {
        /// Milliseconds.
        retry_after_ms: u64,
    },
    /// Answer 503.
    Error,
    /// Handle the request, after sleeping `latency_ms` (0 for none).
    Process {
        /// Milliseconds to sleep first.
        latency_ms: u64,
    },
}

/// Decides the pre-processing fault. `draw` is a uniform random number in `[0, 1)`
/// supplied by the caller (tests pass fixed draws).
pub fn decide_before(faults: &Faults, draw: f64) -> Before {
    if faults.down {
        Before::Down
    } else if let Some(ms) = faults.throttle_retry_after_ms {
        Before::Throttle { retry_after_ms: ms }
    } else if draw < faults.error_rate {
        Before::Error
    } else {
        Before::Process {
            latency_ms: faults.latency_ms,
        }
    }
}

/// Decides whether the ack of a processed ingest request is "lost" (answered 500).
pub fn decide_ack_loss(faults: &Faults, draw: f64) -> bool {
    draw < faults.ack_loss_rate
}

/// `Retry-After` seconds for a millisecond delay: rounded up, at least 1 when the
/// delay is positive.
pub fn retry_after_secs(ms: u64) -> u64 {
    ms.div_ceil(1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_no_faults() {
        let f = Faults::default();
        assert_eq!(decide_before(&f, 0.0), Before::Process { latency_ms: 0 });
        assert!(!decide_ack_loss(&f, 0.0));
        assert!(f.applies_to(Scope::Ingest) && f.applies_to(Scope::Config));
        assert!(!f.applies_to(Scope::Registry));
    }

    #[test]
    fn order_is_down_throttle_error_latency() {
        let mut f = Faults {
            down: true,
            throttle_retry_after_ms: Some(1500),
            error_rate: 1.0,
            latency_ms: 10,
            ..Faults::default()
        };
        assert_eq!(decide_before(&f, 0.5), Before::Down);
        f.down = false;
        assert_eq!(
            decide_before(&f, 0.5),
            Before::Throttle {
                retry_after_ms: 1500
            }
        );
        f.throttle_retry_after_ms = None;
        assert_eq!(decide_before(&f, 0.99), Before::Error);
        f.error_rate = 0.5;
        assert_eq!(decide_before(&f, 0.5), Before::Process { latency_ms: 10 });
        assert_eq!(decide_before(&f, 0.49), Before::Error);
    }

    #[test]
    fn rates_are_validated() {
        let f = Faults {
            error_rate: 1.5,
            ..Faults::default()
        };
        assert_eq!(
            f.validate().unwrap_err().to_string(),
            "error_rate: 1.5 is not in [0, 1]"
        );
        let f = Faults {
            ack_loss_rate: -0.1,
            ..Faults::default()
        };
        assert_eq!(f.validate().unwrap_err().field, "ack_loss_rate");
        let f = Faults {
            ack_loss_rate: f64::NAN,
            ..Faults::default()
        };
        assert!(f.validate().is_err());
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(serde_json::from_str::<Faults>(r#"{"latency":5}"#).is_err());
        let f: Faults = serde_json::from_str(r#"{"down":true}"#).unwrap();
        assert!(f.down && f.applies_to(Scope::Ingest));
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(0), 0);
        assert_eq!(retry_after_secs(1), 1);
        assert_eq!(retry_after_secs(1000), 1);
        assert_eq!(retry_after_secs(1001), 2);
    }
}
