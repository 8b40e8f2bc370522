//! The audit trail: every change is logged under the `tern_relay::audit` target,
//! counted in `tern_relay_admin_changes_total{action}` and kept in a ring.

use serde::Serialize;

use super::{lock, now_ms, Admin, Operator};

/// Audit entries kept in memory.
const AUDIT_KEPT: usize = 500;

/// One change, as audited.
#[derive(Clone, Debug, Serialize)]
pub struct AuditEntry {
    /// When (Unix ms).
    pub at_ms: u64,
    /// Who (`X-Tern-Operator`, or `unnamed`).
    pub operator: String,
    /// From where.
    pub remote: Option<String>,
    /// What (`service.forwarding`, `app.block`, ...).
    pub action: String,
    /// The subject's state before.
    pub before: serde_json::Value,
    /// ... and after.
    pub after: serde_json::Value,
    /// Whether the settings file held the change when it was made (`false`: applied
    /// in memory only, see [`super::PersistenceView`]).
    pub persisted: bool,
}

impl Admin {
    /// Audits one change: log, metric, ring.
    pub(super) fn record(
        &self,
        who: &Operator,
        action: &str,
        before: serde_json::Value,
        after: serde_json::Value,
        persisted: bool,
    ) {
        let entry = AuditEntry {
            at_ms: now_ms(),
            operator: who.name.clone(),
            remote: who.remote.map(|r| r.to_string()),
            action: action.to_owned(),
            before,
            after,
            persisted,
        };
        tracing::info!(
            target: "tern_relay::audit",
            operator = %entry.operator,
            remote = entry.remote.as_deref().unwrap_or("-"),
            action = %entry.action,
            before = %entry.before,
            after = %entry.after,
            persisted,
            "admin change"
        );
        metrics::counter!("tern_relay_admin_changes_total", "action" => action.to_owned())
            .increment(1);
        let mut audit = lock(&self.inner.audit);
        if audit.len() == AUDIT_KEPT {
            audit.pop_front();
        }
        audit.push_back(entry);
    }
    /// The latest audit entries, oldest first.
    pub fn audit(&self) -> Vec<AuditEntry> {
        lock(&self.inner.audit).iter().cloned().collect()
    }
}
