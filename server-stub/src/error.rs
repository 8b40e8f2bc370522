//! Error types of the stub.

use std::path::PathBuf;

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while starting or running the stub.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The config file could not be read or is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The SQLite store failed.
    #[error("store: {0}")]
    Store(#[from] rusqlite::Error),
    /// The store's writer thread is gone (it panicked or the stub is shutting down).
    #[error("store writer thread is gone")]
    StoreClosed,
    /// An I/O error (creating the data dir, serving HTTP).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Encoding a reply failed.
    #[error("encode: {0}")]
    Encode(#[from] tern_protocol::EncodeError),
}

/// A config file or an admin config change is invalid. The text names the file (when
/// there is one) and the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config file {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error text.
        reason: String,
    },
    /// The file is not valid TOML or does not match the schema. `reason` carries the
    /// parser's line, column and key.
    #[error("config file {path}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        reason: String,
    },
    /// A field breaks a rule, e.g. `apps[0].flags[1].rollout_bp: 12000 is over 10000`.
    #[error("{}{field}: {reason}", path.as_ref().map(|p| format!("config file {}: ", p.display())).unwrap_or_default())]
    Invalid {
        /// The file, when the config came from one.
        path: Option<PathBuf>,
        /// The field, as a path like `apps[0].flags[1].rollout_bp`.
        field: String,
        /// What is wrong.
        reason: String,
    },
}

impl ConfigError {
    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            path: None,
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Attaches the file path to an [`ConfigError::Invalid`].
    pub(crate) fn in_file(self, file: &std::path::Path) -> Self {
        match self {
            ConfigError::Invalid { field, reason, .. } => ConfigError::Invalid {
                path: Some(file.to_owned()),
                field,
                reason,
            },
            other => other,
        }
    }

    /// Prefixes the field path of an [`ConfigError::Invalid`] (e.g. with `apps[0].`).
    pub(crate) fn prefixed(self, prefix: &str) -> Self {
        match self {
            ConfigError::Invalid {
                path,
                field,
                reason,
            } => ConfigError::Invalid {
                path,
                field: format!("{prefix}{field}"),
                reason,
            },
            other => other,
        }
    }
}
