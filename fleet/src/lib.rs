//! The local Tern stack as real processes, and the utilities the end-to-end tests share.
//!
//! * [`cluster`]: the backend stub and N relays as child processes (one certificate,
//!   one shard map, local-disk spools in a temporary directory), with the controls the
//!   chaos scenarios need: SIGKILL, SIGTERM, restart on the same ports, backend outage,
//!   UDP block, loss and delay.
//! * [`netem`]: a userspace UDP impairment proxy (loss, delay, jitter and so reordering,
//!   block) and a TCP delay proxy, for kernels without `tc netem`.
//! * [`devices`]: simulated devices, each a real [`tern_sdk::Tern`] with its own store,
//!   and a driver that records events at a target rate.
//! * [`pods`]: a fleet spread over `tern-fleet pod` processes (devices sharing a
//!   runtime per process), driven and summed by the parent.
//! * [`report`]: the delivery report (recorded, delivered, duplicates suppressed, lost,
//!   latency, QUIC/HTTPS share) built from the stub's verification counters.
//! * [`exposures`]: experiment exposures in a run (`--exposures`): devices read flags,
//!   the report compares their exposures with the stub's.
//! * [`replay`]: a relay's recording replayed as device traffic: each recorded device a
//!   simulated device, each recorded event recorded again through the SDK's calls, at
//!   the recorded pace × N; [`rehearse`] drives the pods through it.
//!
//! Child processes (the stub and relay binaries, device processes) are launched and
//! their ready lines read through `tern-testkit` (`proc`, `bins`, `relay::RelayProc`).
//!
//! The `tern-fleet` binary runs all of it (the README's first command).

pub mod cluster;
pub mod consent;
pub mod context;
pub mod devices;
pub mod exposures;
pub mod kafkalog;
pub mod logins;
pub mod netem;
pub mod pods;
pub mod push;
pub mod rehearse;
pub mod replay;
pub mod report;

/// What can go wrong setting up or driving the stack.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FleetError {
    /// A child process did not report ready.
    #[error("{what} did not become ready: {detail}")]
    NotReady {
        /// Which process.
        what: String,
        /// What happened, with the tail of its log.
        detail: String,
    },
    /// Launching or driving a child process failed.
    #[error(transparent)]
    Process(#[from] tern_testkit::Error),
    /// An HTTP call to the stub or a relay failed.
    #[error("{what}: {source}")]
    Http {
        /// The call.
        what: String,
        /// The error.
        source: reqwest::Error,
    },
    /// A file or socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// The operation.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The certificate could not be generated.
    #[error("generating the certificate: {0}")]
    Certificate(String),
    /// A simulated device could not be started.
    #[error("starting device {index}: {detail}")]
    Device {
        /// The device's index in the fleet.
        index: usize,
        /// The SDK's error.
        detail: String,
    },
    /// A relay index out of range.
    #[error("no relay {0} in this cluster")]
    NoSuchRelay(usize),
    /// What the stack delivered could not be read back (the Kafka topic).
    #[error("verifying the delivery: {0}")]
    Verify(String),
    /// A recording to replay could not be read (its listing; single unreadable
    /// segments are skipped and counted instead).
    #[error("reading the recording {0}")]
    Recording(String),
}

/// Short for `Result<T, FleetError>`.
pub type Result<T, E = FleetError> = std::result::Result<T, E>;

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> FleetError {
    let what = what.into();
    move |source| FleetError::Io { what, source }
}
