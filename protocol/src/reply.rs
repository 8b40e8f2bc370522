//! Replies to ingest requests, and the reasons a request can be refused.

use serde::{Deserialize, Serialize};

use crate::ids::BatchId;
use crate::value::open_enum;

open_enum! {
    /// How durable an accepted batch is.
    pub enum Durability {
        /// The backend acknowledged the batch.
        Forwarded = "forwarded",
        /// The relay wrote the batch to its spool (object storage); it will be replayed.
        Spooled = "spooled",
    }
}

open_enum! {
    /// Why a request was refused. Whether the device may drop the data depends on the
    /// reason ([`RejectReason::is_request_fault`], protocol §6.1): only a refusal that
    /// is the request's own fault deletes device data.
    pub enum RejectReason {
        /// Unknown app, or wrong key for the app.
        Unauthorized = "unauthorized",
        /// The frame or its payload could not be decoded.
        Malformed = "malformed",
        /// The frame kind is not a request this peer serves.
        UnsupportedMessage = "unsupported_message",
        /// The frame, batch or an event is over a size limit.
        TooLarge = "too_large",
        /// The batch broke a validation rule (name, properties, sequence order...).
        Invalid = "invalid",
        /// The app in the batch differs from the app in the request's credentials.
        AppMismatch = "app_mismatch",
        /// An operator blocked this app on this relay.
        Blocked = "blocked",
    }
}

impl RejectReason {
    /// Whether the refusal is the request's own fault: the same bytes would be refused
    /// by every relay, now and later, whatever their registry, settings or version —
    /// `malformed`, `too_large`, `invalid` and `app_mismatch`. Only for these may a
    /// device drop the batch (and count it in `dropped_rejected`).
    ///
    /// Every other reason may be the server's fault and never deletes device data:
    /// `unauthorized` (a registry that lost the app or has not learned a new key yet),
    /// `blocked` (an operator), `unsupported_message` (a relay of another version), and
    /// any reason this version does not know. The device keeps the batch, backs off
    /// (long, jittered, capped), counts and reports it (protocol §6.1).
    pub fn is_request_fault(&self) -> bool {
        matches!(
            self,
            RejectReason::Malformed
                | RejectReason::TooLarge
                | RejectReason::Invalid
                | RejectReason::AppMismatch
        )
    }
}

/// The outcome of an ingest request. Internally tagged by `status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
#[non_exhaustive]
pub enum IngestOutcome {
    /// The batch is durable (see [`Durability`]); the device deletes it.
    Accepted {
        /// Where the batch is now.
        durability: Durability,
    },
    /// Not accepted now; send the same batch (same `batch_id`) again after `after_ms`.
    Retry {
        /// Milliseconds to wait before the next attempt.
        after_ms: u64,
    },
    /// Refused. The device drops the batch only when the reason is the request's own
    /// fault ([`RejectReason::is_request_fault`]); otherwise it keeps it and backs off.
    Rejected {
        /// Why.
        reason: RejectReason,
        /// Human-readable detail for logs; not for parsing.
        #[serde(default)]
        detail: String,
    },
    /// An outcome this version does not know. Treat as `Retry` with the device's own
    /// backoff: keeping data is always safe, dropping it is not.
    #[serde(other)]
    Unknown,
}

/// The reply to an [`crate::IngestRequest`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IngestReply {
    /// The version of the shard map the relay serves; a device holding an older map
    /// fetches the new one.
    pub shard_map_version: u64,
    /// The batch this reply is about.
    pub batch_id: BatchId,
    /// The outcome.
    pub outcome: IngestOutcome,
}

/// The reply to a frame that could not be handled at all (undecodable, unknown kind,
/// bad credentials before the body was read). The connection stays usable.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// The relay's shard-map version.
    pub shard_map_version: u64,
    /// Why.
    pub reason: RejectReason,
    /// Human-readable detail.
    #[serde(default)]
    pub detail: String,
}

crate::wire_enum!(IngestOutcome, tag "status", other Unknown = "unknown" {
    Accepted = "accepted" { durability: req },
    Retry = "retry" { after_ms: req },
    Rejected = "rejected" { reason: req, detail: def },
});

crate::wire_struct!(IngestReply {
    shard_map_version: req,
    batch_id: req,
    outcome: req,
});

crate::wire_struct!(ErrorReply {
    shard_map_version: req,
    reason: req,
    detail: def,
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_faults_of_the_request_itself_drop_data() {
        for (reason, drops) in [
            (RejectReason::Malformed, true),
            (RejectReason::TooLarge, true),
            (RejectReason::Invalid, true),
            (RejectReason::AppMismatch, true),
            (RejectReason::Unauthorized, false),
            (RejectReason::Blocked, false),
            (RejectReason::UnsupportedMessage, false),
            (RejectReason::from("quota_exceeded"), false),
            (RejectReason::from(""), false),
        ] {
            assert_eq!(reason.is_request_fault(), drops, "{reason}");
        }
    }
}
