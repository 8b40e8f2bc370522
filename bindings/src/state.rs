//! Where one instance is in its life, shared by the calls ([`crate::client`]) and the
//! flush waits ([`crate::wait`]).

use crate::error::TernError;

/// The state of a `TernCore`.
pub(crate) enum State {
    /// Not started yet: calls are kept (bounded) until it is.
    Pending,
    /// Started: calls go to the core.
    Running(tern_sdk::Tern),
    /// Could not start: every call is a counted no-op.
    Unavailable(TernError),
    /// Shut down (the core kept until it is dropped, if it ran).
    Stopped(Option<tern_sdk::Tern>),
}
