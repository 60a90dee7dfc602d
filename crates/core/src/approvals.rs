//! Human approval of actions: the records the actor and `reflexctl approvals` exchange.
//!
//! The actor holds a request whose action needs approval and writes a [`PendingApproval`] to
//! the approvals topic (`actor.approvals_topic`, keyed by the idempotency key). A decision is an
//! [`ApprovalDecision`] on the decisions topic (`actor.decisions_topic`, same key), written by
//! `reflexctl approvals approve|deny` or, when nobody decided in time, by the actor's sweeper
//! ([`Decision::Timeout`]). Both are JSON values with CloudEvents headers, like the replay audit
//! records: small, written by tools and read by people.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `ce_type` of a pending-approval record.
pub const PENDING_TYPE: &str = "dev.reflex.approval.pending";
/// `ce_type` of a decision record.
pub const DECISION_TYPE: &str = "dev.reflex.approval.decision";
/// Content type of both records.
pub const CONTENT_TYPE: &str = "application/json";
/// The approver named on outcomes decided by the timeout.
pub const TIMEOUT_APPROVER: &str = "timeout";

/// What happens when nobody decides within the timeout (`on_timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnTimeout {
    Deny,
    Approve,
}

impl OnTimeout {
    pub fn as_str(self) -> &'static str {
        match self {
            OnTimeout::Deny => "deny",
            OnTimeout::Approve => "approve",
        }
    }
}

/// A request held for a decision (the approvals topic).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingApproval {
    /// The request's idempotency key: the id `reflexctl approvals approve|deny` takes.
    pub id: String,
    pub action: String,
    pub target: String,
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    pub event_id: String,
    #[serde(default)]
    pub rule: Option<String>,
    pub correlation_id: String,
    /// When the actor held it (ms since the epoch).
    pub requested_at: i64,
    /// When `on_timeout` decides if nobody did (ms since the epoch).
    pub expires_at: i64,
    pub on_timeout: OnTimeout,
    /// The action's `approval.when` condition, if it has one.
    #[serde(default)]
    pub condition: Option<String>,
    /// The actor replica that held it.
    pub worker: String,
}

/// What was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    Approve,
    Deny,
    /// Nobody decided in time: the action's `on_timeout` applies.
    Timeout,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Approve => "approve",
            Decision::Deny => "deny",
            Decision::Timeout => "timeout",
        }
    }
}

/// A decision on a pending approval (the decisions topic).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalDecision {
    /// The pending approval's id (the request's idempotency key).
    pub id: String,
    pub decision: Decision,
    /// Who decided (`--by`; `timeout` for the sweeper).
    pub by: String,
    /// Why (`--reason`).
    #[serde(default)]
    pub reason: String,
    /// When (ms since the epoch).
    pub decided_at: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_plain_json() {
        let d = ApprovalDecision {
            id: "quarantine-host:e1".into(),
            decision: Decision::Approve,
            by: "alice".into(),
            reason: "ticket 7".into(),
            decided_at: 5,
        };
        let text = serde_json::to_string(&d).unwrap();
        assert!(text.contains(r#""decision":"approve""#), "{text}");
        assert_eq!(serde_json::from_str::<ApprovalDecision>(&text).unwrap(), d);
        let minimal = r#"{"id":"k","decision":"deny","by":"bob","decided_at":1}"#;
        assert_eq!(
            serde_json::from_str::<ApprovalDecision>(minimal)
                .unwrap()
                .reason,
            ""
        );
    }
}
