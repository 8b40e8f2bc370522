//! Predicates on the outcome a device gets for a batch.

use tern_protocol::{Durability, IngestOutcome, RejectReason};

/// Accepted, whatever the durability.
pub fn accepted(o: &IngestOutcome) -> bool {
    matches!(o, IngestOutcome::Accepted { .. })
}

/// Accepted and forwarded: the backend stored it.
pub fn forwarded(o: &IngestOutcome) -> bool {
    matches!(
        o,
        IngestOutcome::Accepted {
            durability: Durability::Forwarded
        }
    )
}

/// Accepted and spooled: durable at the relay, to be replayed.
pub fn spooled(o: &IngestOutcome) -> bool {
    matches!(
        o,
        IngestOutcome::Accepted {
            durability: Durability::Spooled
        }
    )
}

/// Rejected as unauthorized (unknown app or key).
pub fn unauthorized(o: &IngestOutcome) -> bool {
    matches!(
        o,
        IngestOutcome::Rejected {
            reason: RejectReason::Unauthorized,
            ..
        }
    )
}
