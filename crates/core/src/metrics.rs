//! Every metric name the fleet emits, in one place (`reflex_<name>_<unit>_total` style).
//! Labels come from small fixed sets only: stage, topic, rule, error class, result.

/// Events taken from Kafka by a worker. Labels: `stage`.
pub const EVENTS_IN: &str = "reflex_events_in_total";
/// Records a worker produced (each fan-out destination counts). Labels: `stage`.
pub const EVENTS_OUT: &str = "reflex_events_out_total";
/// Events a rule dropped on purpose. Labels: `stage`.
pub const EVENTS_DROPPED: &str = "reflex_events_dropped_total";
/// Dead-letter records written. Labels: `stage`, `class`.
pub const DEAD_LETTERS: &str = "reflex_dead_letters_total";
/// In-process retries of transient errors. Labels: `stage`.
pub const RETRIES: &str = "reflex_retries_total";
/// Rule matches. Labels: `rule`.
pub const RULE_MATCHES: &str = "reflex_rule_matches_total";
/// Firings of stateful rules (windows). Labels: `rule`, `by` (event, timer).
pub const RULE_FIRINGS: &str = "reflex_rule_firings_total";
/// Events a stateful rule took without firing. Labels: `rule`, `reason` (throttled,
/// accumulating, after_firing, recovered, ignored, late, duplicate).
pub const RULE_SUPPRESSED: &str = "reflex_rule_suppressed_total";
/// Events in flight (taken, not yet acknowledged). Labels: `stage`.
pub const IN_FLIGHT: &str = "reflex_in_flight_events";
/// Partitions currently paused for backpressure. Labels: `stage`.
pub const PAUSED_PARTITIONS: &str = "reflex_paused_partitions";
/// Partitions the worker's consumer currently owns (a scale-down or rebalance has settled when
/// the replicas' values add up to the topic's partitions). Labels: `stage`.
pub const ASSIGNED_PARTITIONS: &str = "reflex_assigned_partitions";
/// Times the runtime paused its partitions for backpressure. Labels: `stage`.
pub const BACKPRESSURE_PAUSES: &str = "reflex_backpressure_pauses_total";
/// Processing time of one event in the stage. Labels: `stage`.
pub const PROCESSING_SECONDS: &str = "reflex_processing_duration_seconds";
/// Enrichment lookups. Labels: `lookup` (configured name), `result` (hit, miss, error).
pub const LOOKUPS: &str = "reflex_lookups_total";
/// Action attempts by outcome. Labels: `action`, `result` (see `ActionResult::as_str`).
pub const ACTIONS: &str = "reflex_actions_total";
/// Duplicate action requests suppressed by the idempotency claim. Labels: `action`.
pub const DEDUP_HITS: &str = "reflex_dedup_hits_total";
/// Circuit-breaker state per target: 0 closed, 1 half-open, 2 open. Labels: `target`.
pub const BREAKER_STATE: &str = "reflex_breaker_state";
/// Actions delayed by the fleet-wide rate limit. Labels: `action`.
pub const RATE_LIMITED: &str = "reflex_rate_limited_total";
/// 1 while the kill switch stops new actions, else 0.
pub const KILL_SWITCH: &str = "reflex_kill_switch_on";
/// Actions held by the blast-radius cap instead of executed. Labels: `action`.
pub const BLAST_RADIUS_HELD: &str = "reflex_blast_radius_held_total";
/// End-to-end latency: the causing event's time (`ce_time`) to the action's completion, for
/// actions that took effect (seed metric M2/M4). Labels: `action`.
pub const ACTION_LATENCY_SECONDS: &str = "reflex_action_latency_seconds";
/// Keys currently parked behind an earlier event awaiting redelivery (per-key order). Labels: `stage`.
pub const PARKED_KEYS: &str = "reflex_parked_keys";
/// Events parked behind an earlier event of their key instead of being processed. Labels: `stage`.
pub const PARKED_EVENTS: &str = "reflex_parked_events_total";
/// Dead letters the reprocessor delivered back to their original topic. Labels: `class`.
pub const REDELIVERIES: &str = "reflex_redeliveries_total";
/// Dead letters the reprocessor gave up on (moved to `<topic>.exhausted`). Labels: `class`.
pub const REDELIVERY_GIVEUPS: &str = "reflex_redelivery_giveups_total";
/// Dead letters the reprocessor left for a human (`reflexctl dlq replay`), by class. Labels: `class`.
pub const REDELIVERY_SKIPS: &str = "reflex_redelivery_skips_total";
/// Partitions paused until a scheduled redelivery time. Labels: `stage`.
pub const DELAYED_PARTITIONS: &str = "reflex_delayed_partitions";

// ---- per-target locks and approvals (the actor)

/// Times an action found its lock key held by another action and waited (deferred for a
/// later redelivery, or polled within `actor.lock_wait`). Labels: `action`.
pub const LOCK_WAITS: &str = "reflex_action_lock_waits_total";
/// How long an action waited for its lock, from its first try to acquiring it (0 when it was
/// free). Labels: `action`.
pub const LOCK_WAIT_SECONDS: &str = "reflex_action_lock_wait_seconds";
/// Approval requests the actor held for a human decision. Labels: `action`.
pub const APPROVALS_REQUESTED: &str = "reflex_approvals_requested_total";
/// Approval decisions applied. Labels: `action`, `decision` (approved, denied, expired).
pub const APPROVAL_DECISIONS: &str = "reflex_approval_decisions_total";
/// Requests waiting for a decision, fleet-wide (read by each replica's sweeper from Redis).
pub const APPROVALS_PENDING: &str = "reflex_approvals_pending";
/// Requests a policy of `actor.policy_file` denied (outcome `DENIED_BY_POLICY`). Labels:
/// `action`, `policy` (the denying policy's id, `no-permit` when no permit matched: a fixed set,
/// the file's policies).
pub const POLICY_DENIALS: &str = "reflex_policy_denials_total";
