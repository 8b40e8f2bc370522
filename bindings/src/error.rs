//! The one error type of the foreign API: every core error maps to a typed variant.

use tern_protocol::ValidationError;
use tern_sdk::{ConfigError, StoreError, TrackError};

/// Why a Tern call failed. Kotlin: `TernException` subclasses; Swift: `TernError` cases.
#[derive(Debug, Clone, PartialEq, thiserror::Error, uniffi::Error)]
#[non_exhaustive]
pub enum TernError {
    /// A setting passed to `start` is invalid; `field` names it (e.g. `app_id`).
    #[error("invalid config: {field}: {reason}")]
    InvalidConfig {
        /// The setting at fault.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// The event (name, properties, purchase fields, size) breaks a protocol rule;
    /// nothing was stored. `field` names the part at fault.
    #[error("invalid event: {reason}")]
    InvalidEvent {
        /// The part at fault, e.g. `event name` or `property key "x"`.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// Recording is switched off by `opt_out(true)`; nothing was stored.
    #[error("the user opted out: nothing is recorded")]
    OptedOut,
    /// The instance was shut down.
    #[error("the SDK is shut down")]
    ShutDown,
    /// Another Tern instance (in this or another process) uses the data directory.
    #[error("data directory {path} is in use by another Tern instance")]
    DataDirInUse {
        /// The directory.
        path: String,
    },
    /// The device store could not be opened or used; the event was not kept.
    #[error("the device store is unavailable: {reason}")]
    StoreUnavailable {
        /// The cause.
        reason: String,
    },
    /// A file operation failed (disk full, permissions); the event was not kept.
    #[error("i/o error: {what} {path}: {reason}")]
    Io {
        /// What was being done.
        what: String,
        /// The file or directory, if known.
        path: String,
        /// The OS error.
        reason: String,
    },
    /// The instance has not been opened yet and the queue of calls made before it
    /// opens is full: the call was not kept.
    #[error("the SDK is not started: {reason}")]
    NotStarted {
        /// Why the call was not kept.
        reason: String,
    },
    /// A bug in the SDK was contained at the boundary (a panic); the call did nothing.
    /// Please report it with `call` and `detail`.
    #[error("internal error in {call}: {detail}")]
    Internal {
        /// The call that failed.
        call: String,
        /// The panic message.
        detail: String,
    },
}

impl From<ConfigError> for TernError {
    fn from(e: ConfigError) -> Self {
        TernError::InvalidConfig {
            field: e.field.to_owned(),
            reason: e.reason,
        }
    }
}

/// The field a validation error names.
fn field_of(e: &ValidationError) -> String {
    match e {
        ValidationError::Empty { field }
        | ValidationError::TooLong { field, .. }
        | ValidationError::InvalidChar { field, .. }
        | ValidationError::TooManyProperties { field, .. } => field.clone(),
        ValidationError::NonFiniteFloat { key } => format!("property {key:?}"),
        ValidationError::InvalidPurchase { field, .. } => format!("purchase {field}"),
        _ => "event".to_owned(),
    }
}

impl From<TrackError> for TernError {
    fn from(e: TrackError) -> Self {
        match e {
            TrackError::Invalid(v) => TernError::InvalidEvent {
                field: field_of(&v),
                reason: v.to_string(),
            },
            TrackError::OptedOut => TernError::OptedOut,
            TrackError::ShutDown => TernError::ShutDown,
            TrackError::StoreUnavailable(reason) => TernError::StoreUnavailable { reason },
            TrackError::Journal(reason) => TernError::Io {
                what: "writing the event journal".to_owned(),
                path: String::new(),
                reason,
            },
            // `TrackError` is non-exhaustive: a variant added to the core without a
            // mapping here is a bug of the bindings, reported as such.
            other => TernError::Internal {
                call: "track".to_owned(),
                detail: format!("unmapped core error: {other}"),
            },
        }
    }
}

impl From<StoreError> for TernError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Locked(path) => TernError::DataDirInUse {
                path: path.display().to_string(),
            },
            StoreError::Io { what, path, source } => TernError::Io {
                what: what.to_owned(),
                path: path.display().to_string(),
                reason: source.to_string(),
            },
            StoreError::Sqlite(e) => TernError::StoreUnavailable {
                reason: e.to_string(),
            },
            StoreError::Closed => TernError::ShutDown,
            other => TernError::Internal {
                call: "store".to_owned(),
                detail: format!("unmapped core error: {other}"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn track_errors_map_to_typed_variants() {
        assert_eq!(TernError::from(TrackError::OptedOut), TernError::OptedOut);
        assert_eq!(TernError::from(TrackError::ShutDown), TernError::ShutDown);
        let e = TernError::from(TrackError::Invalid(ValidationError::Empty {
            field: "event name".into(),
        }));
        assert!(matches!(e, TernError::InvalidEvent { ref field, .. } if field == "event name"));
        assert!(matches!(
            TernError::from(TrackError::Journal("disk full".into())),
            TernError::Io { .. }
        ));
        assert!(matches!(
            TernError::from(TrackError::StoreUnavailable("x".into())),
            TernError::StoreUnavailable { .. }
        ));
    }

    #[test]
    fn store_errors_map_to_typed_variants() {
        assert!(matches!(
            TernError::from(StoreError::Locked("/d".into())),
            TernError::DataDirInUse { ref path } if path == "/d"
        ));
        assert_eq!(TernError::from(StoreError::Closed), TernError::ShutDown);
    }
}
