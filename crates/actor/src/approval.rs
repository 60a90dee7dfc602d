//! Human approval: an action with `approval = { timeout = "15m", on_timeout = "deny" }` (and
//! optionally `when = '<CEL over the request>'`) is not executed when its request arrives.
//!
//! **Held.** The request's record (value, key, headers) is stored in Redis under
//! `<prefix>:approval:<idempotency key>` with state `pending`, and its id is put in the sorted
//! set `<prefix>:approvals:due` scored by its deadline; one Lua script does both, once per key.
//! The event's outputs are a `PENDING_APPROVAL` outcome and a [`PendingApproval`] record on
//! `actor.approvals_topic`; then its offset is committed like any other. A redelivered or
//! duplicated request finds the key pending and writes the same two records again (an
//! acknowledged pending record is never lost, a lost one is written again).
//!
//! **Decided.** A decision is a record on `actor.decisions_topic` (the actor consumes it as a
//! second input): `reflexctl approvals approve|deny` writes one, and so does the sweeper below
//! when the deadline passes. Applying it is one script that moves the state from `pending` to
//! `approved`, `denied` or `expired` and records who, why and the decision's `ce_id`; only the
//! first decision wins. A decision record delivered again (same `ce_id`) is applied again with
//! the same result, so a crash between the state change and the acknowledged outputs repeats
//! the outputs, never the decision. On approval (or `on_timeout = "approve"`) the stored request
//! goes through the normal path: idempotency claim, lock, guards, effect, done record, so it is
//! executed at most once however often the decision or the request comes back. A denied or
//! expired request that arrives again gets a `DUPLICATE_SUPPRESSED` outcome naming the decision.
//!
//! **Timeouts without a new event.** Every replica runs a sweeper: each `actor.approval_sweep`
//! it reads the ids past their deadline from the sorted set and, per id, takes
//! `<prefix>:approval-expiry:<id>` with `SET NX PX` (one replica wins per expiry), then writes a
//! `timeout` decision to the decisions topic and waits for the broker's acknowledgement. The
//! expiry claim is not released: if the decision is not applied before it lapses (the writer
//! died before producing), another replica writes it again, and a second timeout decision
//! loses to the first (`already decided`).
//!
//! Every step is an outcome on the outcomes topic: `PENDING_APPROVAL`, then `APPROVED` (with
//! `approver` and `approval_reason`) followed by the action's own outcomes, or `DENIED`, or
//! `EXPIRED` (approver `timeout`). Approvals need the Redis state backend.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::producer::{FutureProducer, FutureRecord};
use redis::{RedisError, Script};
use reflex_core::actions::{ActionRequest, ActionResult};
use reflex_core::approvals::{
    ApprovalDecision, Decision, OnTimeout, PendingApproval, CONTENT_TYPE, DECISION_TYPE,
    PENDING_TYPE, TIMEOUT_APPROVER,
};
use reflex_core::headers::ce;
use reflex_core::{metrics as m, Headers};
use reflex_runtime::{Event, Output, StageError};
use tracing::{info, warn};

use crate::config::TEMPLATE_FIELDS;
use crate::state::StateBackend;
use crate::store::{self, Store};
use crate::{Actor, Claimable, Plan};

/// A compiled `approval.when` condition.
pub struct Condition {
    source: String,
    program: cel::Program,
}

impl std::fmt::Debug for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Condition({:?})", self.source)
    }
}

impl Condition {
    /// Compiles `source`; every variable it reads must be a request field.
    pub fn compile(source: &str) -> Result<Self, String> {
        let program = cel::Program::compile(source)
            .map_err(|e| format!("`when` is not a CEL expression: {e}"))?;
        for var in program.references().variables() {
            if !TEMPLATE_FIELDS.contains(&var) {
                return Err(format!(
                    "`when` reads `{var}`, but action requests have no field `{var}` (fields: {})",
                    TEMPLATE_FIELDS.join(", ")
                ));
            }
        }
        Ok(Self {
            source: source.to_string(),
            program,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the condition holds for `req`.
    pub fn holds(&self, req: &ActionRequest) -> Result<bool, String> {
        let mut ctx = cel::Context::default();
        let fields = serde_json::to_value(req).map_err(|e| e.to_string())?;
        for (name, value) in fields.as_object().into_iter().flatten() {
            ctx.add_variable(name.clone(), value.clone())
                .map_err(|e| e.to_string())?;
        }
        match self.program.execute(&ctx) {
            Ok(cel::Value::Bool(b)) => Ok(b),
            Ok(other) => Err(format!("`when` returned {other:?}, not a bool")),
            Err(e) => Err(format!("`when` failed on this request: {e}")),
        }
    }
}

/// Stores a request as pending unless its key has an approval state already; returns the
/// state, the pending record, `on_timeout` and who decided.
const HOLD: &str = r"
local s = redis.call('HGET', KEYS[1], 'state')
if s then
  local f = redis.call('HMGET', KEYS[1], 'pending', 'on_timeout', 'by', 'reason')
  return {s, f[1] or '', f[2] or '', f[3] or '', f[4] or ''}
end
redis.call('HSET', KEYS[1], 'state', 'pending', 'record', ARGV[1], 'headers', ARGV[2],
  'key', ARGV[3], 'topic', ARGV[4], 'pending', ARGV[5], 'on_timeout', ARGV[9])
redis.call('PEXPIRE', KEYS[1], ARGV[8])
redis.call('ZADD', KEYS[2], ARGV[6], ARGV[7])
return {'created', ARGV[5], ARGV[9], '', ''}
";

/// Applies a decision to a pending approval (first decision wins; the same decision again
/// answers as it did).
const DECIDE: &str = r"
local s = redis.call('HGET', KEYS[1], 'state')
if not s then
  redis.call('ZREM', KEYS[2], ARGV[5])
  return {'missing'}
end
local f = redis.call('HMGET', KEYS[1], 'record', 'headers', 'key', 'topic', 'on_timeout', 'by', 'reason', 'decision')
if s == 'pending' then
  redis.call('HSET', KEYS[1], 'state', ARGV[1], 'by', ARGV[2], 'reason', ARGV[3], 'decision', ARGV[4])
  redis.call('ZREM', KEYS[2], ARGV[5])
  return {'decided', ARGV[1], f[1], f[2], f[3], f[4], f[5], ARGV[2], ARGV[3]}
end
if f[8] == ARGV[4] then
  return {'again', s, f[1], f[2], f[3], f[4], f[5], f[6] or '', f[7] or ''}
end
return {'already', s, f[6] or ''}
";

static HOLD_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(HOLD));
static DECIDE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(DECIDE));

/// A request's approval state when it arrives.
struct Held {
    state: String,
    pending: String,
    on_timeout: String,
    by: String,
    reason: String,
}

/// A decision applied (or applied before) to a stored request.
struct Applied {
    state: String,
    record: Vec<u8>,
    headers: String,
    key: Vec<u8>,
    topic: String,
    on_timeout: String,
    by: String,
    reason: String,
}

fn redis(store: &StateBackend) -> Result<&Store, StageError> {
    match store {
        StateBackend::Redis(s) => Ok(s),
        StateBackend::Memory(_) => Err(StageError::permanent(
            "approvals need actor.state_backend = \"redis\"",
        )),
    }
}

/// The sorted set of pending approvals by deadline.
fn due_key(s: &Store) -> String {
    s.key("approvals", "due")
}

impl Actor {
    pub(crate) fn is_decision(&self, event: &Event) -> bool {
        self.approvals_on && event.topic == self.settings.decisions_topic
    }

    /// Whether `c` needs a decision before it runs: its action has `approval` and its `when`
    /// (if any) holds. A `when` that fails on the request asks for approval (the safe side).
    fn needs_approval(&self, c: &Claimable) -> bool {
        if c.action.settings.approval.is_none() {
            return false;
        }
        match &c.action.approval_when {
            None => true,
            Some(cond) => cond.holds(&c.req).unwrap_or_else(|e| {
                warn!(action = %c.action.settings.name, idempotency_key = %c.req.idempotency_key, error = %e, "approval condition failed: asking for approval");
                true
            }),
        }
    }

    /// Before the claim: `Some(outputs)` when the request is held for (or was refused by) a
    /// decision, `None` to execute it now.
    pub(crate) async fn approval_gate(
        &self,
        c: &Claimable,
        event: &Event,
    ) -> Result<Option<Vec<Output>>, StageError> {
        if !self.needs_approval(c) {
            return Ok(None);
        }
        let approval = c.action.settings.approval.as_ref().expect("checked");
        let s = redis(&self.store)?;
        let req = &c.req;
        let now = store::now_ms();
        let pending = PendingApproval {
            id: req.idempotency_key.clone(),
            action: req.action.clone(),
            target: req.target.clone(),
            params: req.params.clone(),
            event_id: req.event_id.clone(),
            rule: req.rule.clone(),
            correlation_id: req.correlation_id.clone(),
            requested_at: now,
            expires_at: now + approval.timeout.as_millis() as i64,
            on_timeout: approval.on_timeout,
            condition: c
                .action
                .approval_when
                .as_ref()
                .map(|w| w.source().to_string()),
            worker: self.worker.clone(),
        };
        let pending_json = serde_json::to_string(&pending).expect("serializes");
        let headers: HashMap<String, String> = event
            .headers
            .iter()
            .filter_map(|h| {
                Some((
                    h.key.to_string(),
                    std::str::from_utf8(h.value.as_deref()?).ok()?.to_string(),
                ))
            })
            .collect();
        let ttl = approval.timeout + self.settings.done_ttl;
        let (state, pending_text, on_timeout, by, reason): (
            String,
            String,
            String,
            String,
            String,
        ) = HOLD_SCRIPT
            .key(s.key("approval", &req.idempotency_key))
            .key(due_key(s))
            .arg(event.payload.as_deref().unwrap_or_default())
            .arg(serde_json::to_string(&headers).expect("serializes"))
            .arg(event.key.as_deref().unwrap_or_default())
            .arg(&event.topic)
            .arg(&pending_json)
            .arg(pending.expires_at)
            .arg(&req.idempotency_key)
            .arg(ttl.as_millis() as u64)
            .arg(approval.on_timeout.as_str())
            .invoke_async(&mut s.conn())
            .await
            .map_err(|e| crate::redis_failed("approval state", &e))?;
        let held = Held {
            state,
            pending: pending_text,
            on_timeout,
            by,
            reason,
        };
        let name = &c.action.settings.name;
        match held.state.as_str() {
            "created" | "pending" => {
                if held.state == "created" {
                    metrics::counter!(m::APPROVALS_REQUESTED, "action" => name.clone())
                        .increment(1);
                    info!(action = %name, idempotency_key = %req.idempotency_key, target = %req.target, approvals_topic = %self.settings.approvals_topic, "action held for approval");
                }
                let pending: PendingApproval =
                    serde_json::from_str(&held.pending).unwrap_or(pending);
                let mut o = self.outcome(req, ActionResult::PendingApproval, 1, c.started);
                o.error = Some(format!(
                    "waiting for approval until {} (then {}): reflexctl approvals approve|deny {}",
                    chrono::DateTime::from_timestamp_millis(pending.expires_at)
                        .map(|t| t.to_rfc3339())
                        .unwrap_or_default(),
                    pending.on_timeout.as_str(),
                    req.idempotency_key
                ));
                Ok(Some(vec![
                    self.pending_output(&pending, event),
                    self.outcome_output(&o, event, false)?,
                ]))
            }
            "denied" => Ok(Some(self.refused(c, event, &held, "denied")?)),
            "expired" if held.on_timeout != OnTimeout::Approve.as_str() => {
                Ok(Some(self.refused(c, event, &held, "expired")?))
            }
            // Approved (by a person or the timeout): the claim path runs it at most once.
            _ => Ok(None),
        }
    }

    /// A request whose approval was denied or expired, arriving again: suppressed.
    fn refused(
        &self,
        c: &Claimable,
        event: &Event,
        held: &Held,
        how: &str,
    ) -> Result<Vec<Output>, StageError> {
        let name = &c.action.settings.name;
        metrics::counter!(m::DEDUP_HITS, "action" => name.clone()).increment(1);
        let mut o = self.outcome(&c.req, ActionResult::DuplicateSuppressed, 1, c.started);
        o.error = Some(format!("approval {how} by {}: not executed", held.by));
        o.approver = Some(held.by.clone());
        o.approval_reason = Some(held.reason.clone()).filter(|r| !r.is_empty());
        Ok(vec![self.outcome_output(&o, event, true)?])
    }

    fn pending_output(&self, pending: &PendingApproval, event: &Event) -> Output {
        let mut headers = Headers::new();
        headers.push(ce::SPECVERSION, ce::SPEC_VERSION_1_0);
        headers.push(ce::ID, format!("{}#pending", pending.id));
        headers.push(ce::SOURCE, format!("reflex-actor/{}", self.worker));
        headers.push(ce::TYPE, PENDING_TYPE);
        headers.push(ce::CAUSATION_ID, pending.event_id.clone());
        headers.push(ce::CORRELATION_ID, pending.correlation_id.clone());
        headers.push(ce::CONTENT_TYPE, CONTENT_TYPE);
        if let Some(tp) = event.headers.get(reflex_core::headers::trace::TRACEPARENT) {
            headers.push(reflex_core::headers::trace::TRACEPARENT, tp.to_vec());
        }
        Output {
            topic: self.settings.approvals_topic.clone(),
            partition: None,
            key: Some(Bytes::from(pending.id.clone())),
            payload: Some(Bytes::from(
                serde_json::to_vec(pending).expect("serializes"),
            )),
            headers,
        }
    }

    /// A record from the decisions topic: apply it, then execute, deny or expire.
    pub(crate) async fn decision(&self, event: &Event) -> Result<Vec<Output>, StageError> {
        let value = event.payload.as_deref().ok_or_else(|| {
            StageError::poison("decision record has no value: expected an ApprovalDecision (JSON)")
        })?;
        let d: ApprovalDecision = serde_json::from_slice(value).map_err(|e| {
            StageError::poison(format!(
                "decision record is not an ApprovalDecision (JSON, as `reflexctl approvals approve|deny` writes): {e}"
            ))
        })?;
        let decision_id = event
            .headers
            .get_str(ce::ID)
            .map(str::to_string)
            .unwrap_or_else(|| format!("{}/{}@{}", event.topic, event.partition, event.offset));
        let s = redis(&self.store)?;
        let new_state = match d.decision {
            Decision::Approve => "approved",
            Decision::Deny => "denied",
            Decision::Timeout => "expired",
        };
        let reply: Vec<Vec<u8>> = DECIDE_SCRIPT
            .key(s.key("approval", &d.id))
            .key(due_key(s))
            .arg(new_state)
            .arg(&d.by)
            .arg(&d.reason)
            .arg(&decision_id)
            .arg(&d.id)
            .invoke_async(&mut s.conn())
            .await
            .map_err(|e| crate::redis_failed("approval decision", &e))?;
        let text = |i: usize| {
            reply
                .get(i)
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default()
        };
        match text(0).as_str() {
            "decided" | "again" => {}
            "missing" => {
                warn!(id = %d.id, decision = d.decision.as_str(), by = %d.by, "decision for no known approval (never held here, or its record expired): ignored");
                return Ok(Vec::new());
            }
            _ => {
                info!(id = %d.id, decision = d.decision.as_str(), by = %d.by, state = %text(1), first_by = %text(2), "approval already decided: this decision is ignored");
                return Ok(Vec::new());
            }
        }
        let applied = Applied {
            state: text(1),
            record: reply.get(2).cloned().unwrap_or_default(),
            headers: text(3),
            key: reply.get(4).cloned().unwrap_or_default(),
            topic: text(5),
            on_timeout: text(6),
            by: text(7),
            reason: text(8),
        };
        self.apply(&d, applied, event).await
    }

    async fn apply(
        &self,
        d: &ApprovalDecision,
        a: Applied,
        decision_event: &Event,
    ) -> Result<Vec<Output>, StageError> {
        let mut headers = Headers::new();
        let stored: HashMap<String, String> = serde_json::from_str(&a.headers).unwrap_or_default();
        for (k, v) in stored {
            headers.push(k, v);
        }
        let held = Event {
            topic: a.topic.clone(),
            partition: decision_event.partition,
            offset: decision_event.offset,
            timestamp_ms: None,
            key: (!a.key.is_empty()).then(|| Bytes::from(a.key.clone())),
            payload: Some(Bytes::from(a.record.clone())),
            headers,
        };
        let started = (store::now_ms(), Instant::now());
        let req = self.decode(&held).await?;
        let execute = a.state == "approved"
            || (a.state == "expired" && a.on_timeout == OnTimeout::Approve.as_str());
        let (result, approver) = match a.state.as_str() {
            "approved" => (ActionResult::Approved, a.by.clone()),
            "denied" => (ActionResult::Denied, a.by.clone()),
            _ => (ActionResult::Expired, TIMEOUT_APPROVER.to_string()),
        };
        let name = req.action.clone();
        metrics::counter!(m::APPROVAL_DECISIONS, "action" => name.clone(), "decision" => result.as_str())
            .increment(1);
        let mut o = self.outcome(&req, result, 1, started);
        o.approver = Some(approver.clone());
        o.approval_reason = Some(a.reason.clone()).filter(|r| !r.is_empty());
        if result == ActionResult::Expired {
            o.error = Some(format!(
                "no decision before the approval timeout: on_timeout = {}",
                a.on_timeout
            ));
        }
        info!(action = %name, idempotency_key = %req.idempotency_key, decision = d.decision.as_str(), approver = %approver, execute, "approval decided");
        let first = self.outcome_output(&o, &held, !execute)?;
        if !execute {
            return Ok(vec![first]);
        }
        // The normal path: claim (exactly once), lock, guards, effect, done record.
        let result = match self.plan(&held).await {
            Ok(Plan::Finished(outputs)) => Ok(outputs),
            Ok(Plan::Claim(c)) => self.execute(&c, &held).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(mut outputs) => {
                outputs.insert(0, first);
                Ok(outputs)
            }
            Err(mut e) => {
                // Dead-lettered (the decision record), with the approval in the audit trail;
                // a redelivery applies the same decision again and retries the action.
                e.outputs.insert(0, first);
                Err(e)
            }
        }
    }
}

/// Each `every`, writes a timeout decision for every approval past its deadline that this
/// replica claims first (see the module docs). Runs until the process ends.
pub(crate) async fn sweep(
    store: Store,
    producer: FutureProducer,
    decisions_topic: String,
    every: Duration,
    worker: String,
) {
    let lease = (every * 10).max(Duration::from_secs(10));
    loop {
        tokio::time::sleep(every).await;
        if let Err(e) = sweep_once(&store, &producer, &decisions_topic, lease, &worker).await {
            warn!(error = %e, "approval sweep failed; trying again");
        }
    }
}

async fn sweep_once(
    store: &Store,
    producer: &FutureProducer,
    topic: &str,
    lease: Duration,
    worker: &str,
) -> Result<(), RedisError> {
    let mut conn = store.conn();
    let due = due_key(store);
    let (pending, ids): (u64, Vec<String>) = redis::pipe()
        .cmd("ZCARD")
        .arg(&due)
        .cmd("ZRANGEBYSCORE")
        .arg(&due)
        .arg("-inf")
        .arg(store::now_ms())
        .arg("LIMIT")
        .arg(0)
        .arg(100)
        .query_async(&mut conn)
        .await?;
    metrics::gauge!(m::APPROVALS_PENDING).set(pending as f64);
    for id in ids {
        let claimed: Option<String> = redis::cmd("SET")
            .arg(store.key("approval-expiry", &id))
            .arg(worker)
            .arg("NX")
            .arg("PX")
            .arg(lease.as_millis() as u64)
            .query_async(&mut conn)
            .await?;
        if claimed.is_none() {
            continue; // another replica writes this one
        }
        let decision = ApprovalDecision {
            id: id.clone(),
            decision: Decision::Timeout,
            by: TIMEOUT_APPROVER.into(),
            reason: String::new(),
            decided_at: store::now_ms(),
        };
        let mut headers = Headers::new();
        headers.push(ce::SPECVERSION, ce::SPEC_VERSION_1_0);
        headers.push(ce::ID, format!("timeout:{}", store::owner_token(worker)));
        headers.push(ce::SOURCE, format!("reflex-actor/{worker}"));
        headers.push(ce::TYPE, DECISION_TYPE);
        headers.push(ce::TIME, chrono::Utc::now().to_rfc3339());
        headers.push(ce::CONTENT_TYPE, CONTENT_TYPE);
        let payload = serde_json::to_vec(&decision).expect("serializes");
        let record = FutureRecord::to(topic)
            .key(id.as_bytes())
            .payload(&payload)
            .headers(reflex_runtime::to_kafka_headers(&headers));
        match producer.send(record, Duration::from_secs(30)).await {
            Ok(_) => {
                info!(id = %id, decisions_topic = %topic, "approval timed out: timeout decision written")
            }
            // The expiry claim lapses and a replica writes it again.
            Err((e, _)) => warn!(id = %id, error = %e, "writing a timeout decision failed"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(env: &str) -> ActionRequest {
        ActionRequest {
            idempotency_key: "quarantine-host:e1".into(),
            action: "quarantine-host".into(),
            kind: reflex_core::actions::ActionKind::Http,
            target: "ws-1".into(),
            params: [("environment".to_string(), env.to_string())].into(),
            body: None,
            event_id: "e1".into(),
            event_type: "t".into(),
            rule: None,
            correlation_id: "c".into(),
            context: Default::default(),
            dry_run: false,
            requested_at: 0,
        }
    }

    #[test]
    fn conditions_read_request_fields_only() {
        let c = Condition::compile(r#"params.environment == "production""#).unwrap();
        assert!(c.holds(&request("production")).unwrap());
        assert!(!c.holds(&request("staging")).unwrap());
        let e = Condition::compile(r#"payload.env == "prod""#).unwrap_err();
        assert!(e.contains("no field `payload`"), "{e}");
        assert!(Condition::compile("params.environment ==").is_err());
        let not_bool = Condition::compile("target").unwrap();
        assert!(not_bool.holds(&request("x")).is_err());
    }
}
