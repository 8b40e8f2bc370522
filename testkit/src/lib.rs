#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod batches;
pub mod bins;
pub mod device;
pub mod kafka;
pub mod kafka_faults;
pub mod metrics;
pub mod outcome;
pub mod proc;
pub mod relay;
pub mod stub;
pub mod wait;

pub use batches::{auth, batch, ingest, Batch};
pub use device::Device;
pub use relay::{InProcess, RelayProc};
pub use stub::{demo_apps, Backend};
pub use wait::{assert_unchanged, wait_for, wait_for_sync, wait_until, wait_until_sync, DEADLINE};

/// What can go wrong launching or driving a child process.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A binary is missing.
    #[error(
        "{what} not found at {path} (build it with `cargo build --bins`, or set TERN_BIN_DIR)"
    )]
    MissingBinary {
        /// Which binary.
        what: String,
        /// Where it was looked for.
        path: String,
    },
    /// A child process could not be started.
    #[error("starting {what}: {source}")]
    Spawn {
        /// Which process.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A child process did not report ready (or did not exit when told to).
    #[error("{what} did not become ready: {detail}")]
    NotReady {
        /// Which process.
        what: String,
        /// What happened, with the tail of its log.
        detail: String,
    },
    /// Building the binaries failed.
    #[error("building the binaries: {0}")]
    Build(String),
    /// A file or socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// The operation.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Short for `Result<T, Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}
