//! Error types of the SDK core. Every public call returns one of these; none panics.

use std::path::PathBuf;

use tern_protocol::ValidationError;

/// Why `track()` (or another recording call) refused an event. Nothing was stored.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum TrackError {
    /// The event breaks a protocol rule (name, properties, size); the message names the
    /// field. Counted in `dropped_invalid`.
    #[error("invalid event: {0}")]
    Invalid(#[from] ValidationError),
    /// Recording is switched off by `opt_out(true)`.
    #[error("the user opted out: nothing is recorded")]
    OptedOut,
    /// The SDK was shut down.
    #[error("the SDK is shut down")]
    ShutDown,
    /// The device store could not be opened (see `Stats::store_error`); the event was
    /// not kept.
    #[error("the device store is unavailable: {0}")]
    StoreUnavailable(String),
    /// Writing the journal failed (disk full, I/O error); the event was not kept.
    #[error("could not write the event journal: {0}")]
    Journal(String),
}

/// A configuration value is invalid. The message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid config: {field}: {reason}")]
pub struct ConfigError {
    /// The field at fault, e.g. `app_id`.
    pub field: &'static str,
    /// What is wrong.
    pub reason: String,
}

/// A failure of the device store (SQLite or journal files).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// SQLite failed.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A file operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Another `Tern` instance (in this or another process) uses the data directory.
    #[error("data directory {0} is in use by another Tern instance")]
    Locked(PathBuf),
    /// A batch id the caller passed is not a batch of this store.
    #[error("unknown batch {0}")]
    UnknownBatch(tern_protocol::BatchId),
    /// The store was shut down.
    #[error("the store is closed")]
    Closed,
}

/// Convenience alias.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl StoreError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StoreError::Io {
            what,
            path: path.into(),
            source,
        }
    }
}
