//! The action contract between the enricher and the actor: Rust mirrors of
//! `avro/action_request.avsc` and `avro/action_outcome.avsc`, the Confluent-framed Avro codec
//! for them (`serde_avro_fast`), and the deterministic idempotency key.

use std::collections::BTreeMap;
use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::wire::{decode_frame, MAGIC_BYTE};

pub const ACTION_REQUEST_SCHEMA: &str = include_str!("../../../avro/action_request.avsc");
pub const ACTION_OUTCOME_SCHEMA: &str = include_str!("../../../avro/action_outcome.avsc");

/// What kind of effect an action has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ActionKind {
    Http,
    Emit,
    Log,
}

/// An action the enricher bound to an event (see the Avro schema's docs for each field).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionRequest {
    pub idempotency_key: String,
    pub action: String,
    pub kind: ActionKind,
    pub target: String,
    pub params: BTreeMap<String, String>,
    pub body: Option<String>,
    pub event_id: String,
    pub event_type: String,
    pub rule: Option<String>,
    pub correlation_id: String,
    pub context: BTreeMap<String, String>,
    pub dry_run: bool,
    pub requested_at: i64,
}

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ActionResult {
    Succeeded,
    Failed,
    DuplicateSuppressed,
    DryRun,
    /// Held for review by the blast-radius cap, not executed. Records written before the
    /// rename say `PARKED`; they read as this.
    #[serde(alias = "PARKED")]
    Held,
    Rejected,
    /// Held for a human decision (`approval` on the action): not executed yet.
    PendingApproval,
    /// A human (or the timeout with `on_timeout = "approve"`) approved it; execution follows.
    Approved,
    /// A human denied it: never executed.
    Denied,
    /// No decision came within the approval timeout: `on_timeout` decided.
    Expired,
    /// Denied by the actor's policy file (`actor.policy_file`): never executed nor retried;
    /// the outcome's `error` names the policy.
    DeniedByPolicy,
}

impl ActionResult {
    /// Stable lower-case name for metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ActionResult::Succeeded => "succeeded",
            ActionResult::Failed => "failed",
            ActionResult::DuplicateSuppressed => "duplicate_suppressed",
            ActionResult::DryRun => "dry_run",
            ActionResult::Held => "held",
            ActionResult::Rejected => "rejected",
            ActionResult::PendingApproval => "pending_approval",
            ActionResult::Approved => "approved",
            ActionResult::Denied => "denied",
            ActionResult::Expired => "expired",
            ActionResult::DeniedByPolicy => "denied_by_policy",
        }
    }
}

/// One attempt at an action: the audit record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionOutcome {
    pub idempotency_key: String,
    pub action: String,
    pub target: String,
    pub event_id: String,
    pub correlation_id: String,
    pub rule: Option<String>,
    pub result: ActionResult,
    pub attempt: i32,
    pub dry_run: bool,
    pub status_code: Option<i32>,
    pub error_class: Option<String>,
    pub error: Option<String>,
    pub worker: String,
    pub started_at: i64,
    pub duration_ms: i64,
    /// Who decided an approval (`reflexctl approvals ... --by`), on approval outcomes.
    #[serde(default)]
    pub approver: Option<String>,
    /// Why they decided so (`--reason`), on approval outcomes.
    #[serde(default)]
    pub approval_reason: Option<String>,
}

/// The idempotency key of `action` caused by event `event_id`: the same for every retry, dead
/// letter and replay of that event, different for each action it triggers.
pub fn idempotency_key(event_id: &str, action: &str) -> String {
    format!("{action}:{event_id}")
}

#[derive(Debug, Error)]
pub enum CodecError {
    #[error("invalid schema: {0}")]
    Schema(String),
    #[error("cannot encode: {0}")]
    Encode(String),
    #[error("cannot decode: {0}")]
    Decode(String),
}

/// Encodes `T` with a registered schema (its id goes into the Confluent frame) and decodes it
/// with the writer's schema.
pub struct AvroCodec<T> {
    schema_id: u32,
    schema: serde_avro_fast::Schema,
    _type: PhantomData<fn() -> T>,
}

impl<T: Serialize + DeserializeOwned> AvroCodec<T> {
    pub fn new(schema_id: u32, schema_text: &str) -> Result<Self, CodecError> {
        Ok(Self {
            schema_id,
            schema: schema_text
                .parse()
                .map_err(|e: serde_avro_fast::schema::SchemaError| {
                    CodecError::Schema(e.to_string())
                })?,
            _type: PhantomData,
        })
    }

    pub fn schema_id(&self) -> u32 {
        self.schema_id
    }

    /// `value` as a Confluent-framed Avro datum.
    pub fn encode(&self, value: &T) -> Result<Vec<u8>, CodecError> {
        // The frame header first, then the datum into the same buffer: one allocation, no
        // copy of the datum (the enricher and the actor encode one record per event).
        let mut out = Vec::with_capacity(256);
        out.push(MAGIC_BYTE);
        out.extend_from_slice(&self.schema_id.to_be_bytes());
        let mut config = serde_avro_fast::ser::SerializerConfig::new(&self.schema);
        serde_avro_fast::to_datum(value, out, &mut config)
            .map_err(|e| CodecError::Encode(e.to_string()))
    }

    /// Decodes a framed value whose datum was written with `writer` (from the registry by id).
    pub fn decode_with(writer: &serde_avro_fast::Schema, value: &[u8]) -> Result<T, CodecError> {
        let framed = decode_frame(value).map_err(|e| CodecError::Decode(e.to_string()))?;
        serde_avro_fast::from_datum_slice(framed.datum, writer)
            .map_err(|e| CodecError::Decode(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> ActionRequest {
        ActionRequest {
            idempotency_key: idempotency_key("evt-1", "restart-pod"),
            action: "restart-pod".into(),
            kind: ActionKind::Http,
            target: "k8s-api".into(),
            params: BTreeMap::from([("pod".into(), "api-1".into())]),
            body: Some("{}".into()),
            event_id: "evt-1".into(),
            event_type: "io.k8s.pod.crashloop".into(),
            rule: None,
            correlation_id: "c-1".into(),
            context: BTreeMap::from([("owner".into(), "team-a".into())]),
            dry_run: false,
            requested_at: 1_700_000_000_000,
        }
    }

    #[test]
    fn action_request_round_trips_and_matches_the_avro_file() {
        let codec = AvroCodec::<ActionRequest>::new(11, ACTION_REQUEST_SCHEMA).unwrap();
        let bytes = codec.encode(&request()).unwrap();
        assert_eq!(&bytes[..5], &[0, 0, 0, 0, 11]);
        let schema: serde_avro_fast::Schema = ACTION_REQUEST_SCHEMA.parse().unwrap();
        assert_eq!(
            AvroCodec::<ActionRequest>::decode_with(&schema, &bytes).unwrap(),
            request()
        );
        // apache-avro (what other clients use) reads the same bytes.
        let json = crate::avro::datum_to_json(
            &crate::avro::parse_schema(ACTION_REQUEST_SCHEMA).unwrap(),
            &bytes[5..],
        )
        .unwrap();
        assert_eq!(json["kind"], "HTTP");
        assert_eq!(json["params"]["pod"], "api-1");
    }

    fn outcome(result: ActionResult) -> ActionOutcome {
        ActionOutcome {
            idempotency_key: "k".into(),
            action: "a".into(),
            target: "t".into(),
            event_id: "e".into(),
            correlation_id: "c".into(),
            rule: Some("r".into()),
            result,
            attempt: 2,
            dry_run: false,
            status_code: Some(200),
            error_class: None,
            error: None,
            worker: "actor-1".into(),
            started_at: 1,
            duration_ms: 3,
            approver: None,
            approval_reason: None,
        }
    }

    #[test]
    fn action_outcome_round_trips() {
        let outcome = outcome(ActionResult::DuplicateSuppressed);
        let codec = AvroCodec::<ActionOutcome>::new(12, ACTION_OUTCOME_SCHEMA).unwrap();
        let schema: serde_avro_fast::Schema = ACTION_OUTCOME_SCHEMA.parse().unwrap();
        let bytes = codec.encode(&outcome).unwrap();
        assert_eq!(
            AvroCodec::<ActionOutcome>::decode_with(&schema, &bytes).unwrap(),
            outcome
        );
    }

    /// The blast-radius result was renamed PARKED -> HELD: records written before (under the old
    /// schema) still decode, as `Held`, and the new schema can read everything the old one wrote
    /// (the registry's default BACKWARD check passes).
    /// The outcome schema before approvals: no approval symbols or fields.
    fn before_approvals() -> String {
        let old = ACTION_OUTCOME_SCHEMA
            .replace(
                r#", "PENDING_APPROVAL", "APPROVED", "DENIED", "EXPIRED", "DENIED_BY_POLICY"], "default": "FAILED"}"#,
                "]}",
            )
            .replace(
                r#",
    {"name": "approver", "type": ["null", "string"], "default": null, "doc": "Who decided an approval (APPROVED, DENIED; EXPIRED names the timeout)."},
    {"name": "approval_reason", "type": ["null", "string"], "default": null, "doc": "Why the approver decided so."}"#,
                "",
            );
        assert!(
            !old.contains(r#""APPROVED""#) && !old.contains(r#""approver""#),
            "{old}"
        );
        old
    }

    /// Approvals added four symbols at the end of the enum (with a default) and two optional
    /// fields: records written before still decode, and the registry's BACKWARD check passes.
    #[test]
    fn outcomes_written_before_approvals_still_decode() {
        let old = before_approvals();
        let old_schema: serde_avro_fast::Schema = old.parse().unwrap();
        let held = outcome(ActionResult::Held);
        let mut written = serde_json::to_value(&held).unwrap();
        let fields = written.as_object_mut().unwrap();
        fields.remove("approver");
        fields.remove("approval_reason");
        let mut config = serde_avro_fast::ser::SerializerConfig::new(&old_schema);
        let datum = serde_avro_fast::to_datum_vec(&written, &mut config).unwrap();
        let read: ActionOutcome = serde_avro_fast::from_datum_slice(&datum, &old_schema).unwrap();
        assert_eq!(read, held);
        let old = apache_avro::Schema::parse_str(&old).unwrap();
        let new = apache_avro::Schema::parse_str(ACTION_OUTCOME_SCHEMA).unwrap();
        apache_avro::schema_compatibility::SchemaCompatibility::can_read(&old, &new).unwrap();

        // The new results round-trip with the approver.
        let codec = AvroCodec::<ActionOutcome>::new(12, ACTION_OUTCOME_SCHEMA).unwrap();
        let schema: serde_avro_fast::Schema = ACTION_OUTCOME_SCHEMA.parse().unwrap();
        for result in [
            ActionResult::PendingApproval,
            ActionResult::Approved,
            ActionResult::Denied,
            ActionResult::Expired,
        ] {
            let mut o = outcome(result);
            o.approver = Some("alice".into());
            o.approval_reason = Some("change 42".into());
            let bytes = codec.encode(&o).unwrap();
            assert_eq!(
                AvroCodec::<ActionOutcome>::decode_with(&schema, &bytes).unwrap(),
                o
            );
        }
    }

    #[test]
    fn outcomes_written_as_parked_read_as_held() {
        let old = before_approvals().replace(r#", "HELD"]"#, "]");
        assert_ne!(old, before_approvals(), "the schema listed HELD last");
        let old_schema: serde_avro_fast::Schema = old.parse().unwrap();
        let outcome = outcome(ActionResult::Held);
        let mut written = serde_json::to_value(&outcome).unwrap();
        let fields = written.as_object_mut().unwrap();
        fields.remove("approver");
        fields.remove("approval_reason");
        written["result"] = "PARKED".into();
        let mut config = serde_avro_fast::ser::SerializerConfig::new(&old_schema);
        let datum = serde_avro_fast::to_datum_vec(&written, &mut config).unwrap();
        let read: ActionOutcome = serde_avro_fast::from_datum_slice(&datum, &old_schema).unwrap();
        assert_eq!(read, outcome);
        assert_eq!(ActionResult::Held.as_str(), "held");

        let old = apache_avro::Schema::parse_str(&old).unwrap();
        let new = apache_avro::Schema::parse_str(ACTION_OUTCOME_SCHEMA).unwrap();
        apache_avro::schema_compatibility::SchemaCompatibility::can_read(&old, &new).unwrap();
    }

    /// DENIED_BY_POLICY was added at the end of the symbols: it round-trips, and the new
    /// schema reads everything the one before it wrote (BACKWARD, the registry's default).
    #[test]
    fn denied_by_policy_is_appended_and_backward_compatible() {
        let before = ACTION_OUTCOME_SCHEMA.replace(r#", "DENIED_BY_POLICY"]"#, "]");
        assert_ne!(before, ACTION_OUTCOME_SCHEMA, "DENIED_BY_POLICY is last");
        let denied = outcome(ActionResult::DeniedByPolicy);
        let codec = AvroCodec::<ActionOutcome>::new(12, ACTION_OUTCOME_SCHEMA).unwrap();
        let schema: serde_avro_fast::Schema = ACTION_OUTCOME_SCHEMA.parse().unwrap();
        let bytes = codec.encode(&denied).unwrap();
        assert_eq!(
            AvroCodec::<ActionOutcome>::decode_with(&schema, &bytes).unwrap(),
            denied
        );
        assert_eq!(ActionResult::DeniedByPolicy.as_str(), "denied_by_policy");
        let before = apache_avro::Schema::parse_str(&before).unwrap();
        let new = apache_avro::Schema::parse_str(ACTION_OUTCOME_SCHEMA).unwrap();
        apache_avro::schema_compatibility::SchemaCompatibility::can_read(&before, &new).unwrap();
    }

    #[test]
    fn idempotency_keys_are_stable_and_per_action() {
        assert_eq!(idempotency_key("e", "a"), idempotency_key("e", "a"));
        assert_ne!(idempotency_key("e", "a"), idempotency_key("e", "b"));
    }
}
