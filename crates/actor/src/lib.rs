//! The actor: executes `ActionRequest`s from `reflex.actions.requests` exactly once in effect,
//! behind guardrails, and writes an `ActionOutcome` per attempt to `reflex.actions.outcomes`.
//!
//! **Actions** are configured as `[[actor.action]]` tables keyed by the request's `action`
//! name ([`config`]): `http` (method, URL, headers and body are strict templates over the
//! request's fields, `Idempotency-Key` is the request's key, optional Standard Webhooks
//! signature), `emit` (an extra output record to a topic with CloudEvents headers:
//! `ce_causationid` = the request's event id, `ce_correlationid` kept, `reflex-hops` + 1) and
//! `log` (an `info` line; its message is rendered only when the level lets that line through,
//! so a message that cannot render for a request fails it only then). The configured kind decides; the request's `kind` is informational. An unknown action
//! is a permanent error (dead letter). Bad configuration fails start-up naming file, line,
//! action and field.
//!
//! **Exactly once in effect** ([`store`]): per idempotency key a two-phase Redis claim,
//! `SET <prefix>:claim:<key> <owner> NX PX <lease>` → execute → one Lua script records
//! `<prefix>:done:<key>` = the outcome (JSON, long TTL) and deletes the claim. A done key
//! short-circuits to `DUPLICATE_SUPPRESSED` (counted in `reflex_dedup_hits_total`); a key held by
//! another live owner is polled until done or until its lease expires (the owner renews it while
//! it works), then claimed and retried. A crashed owner's lease expires and another replica
//! retries with the same `Idempotency-Key`, which the target must honour. After a failure the
//! claim is released without a done record, so a replay may try again. For `emit`, a duplicate
//! re-emits the same record (same `ce_id`): the effect is produced by the runtime after the
//! claim is marked done, so re-emitting keeps it at least once and downstream dedups by `ce_id`.
//!
//! **Batches.** The runtime hands the actor the requests queued in a key lane together
//! (distinct keys, [`reflex_runtime::Stage::process_batch`]): their claims go to Redis as one
//! script call, each claimed request is executed in order, and their done records go as a
//! second, so a request costs two shared round trips (and Lua calls) instead of two of its own.
//! A key found busy takes the one-request path (polling) after the others; if the done call
//! fails, every claim of the batch is released and each request is retried alone (as one failed
//! done record is).
//!
//! The state lives in Redis by default; `actor.state_backend = "memory"` (or `"auto"` with no
//! reachable Redis) keeps it in process for a single replica instead ([`state`]), with a warn
//! line at start-up saying it is neither shared nor durable.
//!
//! **Attempts and outcomes.** Transient HTTP failures (5xx, 408, 425, 429, timeouts, connection
//! errors) are retried inside the stage up to the action's `max_attempts`, with the runtime's
//! backoff and jitter ([`reflex_runtime::RetryPolicy`]); other 4xx are permanent and not retried. Every attempt yields one outcome; the last one carries the
//! header `reflex-final: true`. A failed action ends with a `FAILED` final outcome (its
//! `error_class` is `transient` or `permanent`) and the event is dead-lettered with that class:
//! a permanent failure waits for `reflexctl dlq replay`, a transient one is delivered again by
//! the reprocessor after its not-before time (later requests with its key park behind it), with
//! the same `Idempotency-Key`.
//! Requests that cannot be executed at all (undecodable, unknown action, a template that fails
//! on this request, too many hops) are dead-lettered by the runtime with the reason.
//!
//! **Guardrails**, per action, all visible in metrics:
//! - fleet-wide rate limit (GCRA in Redis, `rate_per_sec`/`rate_burst`): each attempt reserves
//!   its slot in the fleet's schedule with one script call and the stage waits for it
//!   (`reflex_rate_limited_total`);
//! - `max_concurrency`: a semaphore per action in each replica;
//! - a circuit breaker per target ([`breaker`], `reflex_breaker_state`): while it is open the
//!   stage **waits** instead of failing the event. Waiting events stay in flight, so when
//!   `runtime.max_in_flight` is reached the runtime pauses the partitions: this is how the
//!   actor "pauses the affected partitions rather than failing events" within the `Stage`
//!   contract (all assigned partitions pause, not only the target's);
//! - a kill switch: `actor.kill_switch`, or the Redis keys `<prefix>:killswitch` (all actions)
//!   and `<prefix>:killswitch:<action>`, read every `kill_switch_poll`; while on, no new
//!   action starts and the events wait (`reflex_kill_switch_on`);
//! - dry-run / shadow mode (`actor.dry_run`, the action's `dry_run` or the request's): outcome
//!   `DRY_RUN`, the would-be call logged, no effect, no claim;
//! - a blast-radius cap (`blast_radius_max` in any `blast_radius_window`: a sliding window,
//!   counted in Redis, a retry of an admitted request once): above it the request is held (outcome `HELD`, the original record on
//!   `actor.held_topic`, a warn log line, `reflex_blast_radius_held_total`), not executed.
//!
//! **Per-target locks** ([`lock`]): an action's `lock` template names a Redis lease that no two
//! actions hold at once; a request finding it held is deferred through the dead-letter topic
//! and the reprocessor, so its lane and partition move on.
//!
//! **Approvals** ([`approval`]): an action's `approval` holds its requests (in Redis, with a
//! `PENDING_APPROVAL` outcome and a record on `actor.approvals_topic`) until a decision arrives
//! on `actor.decisions_topic` (`reflexctl approvals approve|deny`, or the timeout sweeper); an
//! approved request then takes the normal claim path, so it runs at most once.
//!
//! **Outbound allowlist**: a rendered URL whose host is not in `actor.allowed_hosts` (or scheme
//! not in `actor.allowed_schemes`) is a permanent error naming the host and the setting, never sent.
//!
//! **Escaping** ([`call`]): every template writes each value for where it lands (one URL path
//! segment or query value, a header value without control characters, a JSON-escaped body that
//! must parse); a request whose values would change the call's structure is refused as a
//! permanent error before it is claimed or sent, dry runs included. `emit` topics are literal.
//! Templates using `raw` (unescaped) are warned about at start-up.
//!
//! **Loop prevention**: requests whose `reflex-hops` exceeds `actor.max_hops` are dead-lettered.
//!
//! **Policies** ([`policy`]): with `actor.policy_file` set, every rendered request is asked of
//! a Cedar policy set before the dry-run check and before any claim; a deny ends it with one
//! final `DENIED_BY_POLICY` outcome naming the policy (`reflex_policy_denials_total`), never
//! executed nor retried. A file that does not parse or validate stops start-up.

pub mod approval;
pub mod breaker;
pub mod call;
pub mod config;
pub mod lock;
pub mod policy;
pub mod sign;
pub mod state;
pub mod store;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reflex_core::actions::{
    ActionOutcome, ActionRequest, ActionResult, AvroCodec, ACTION_OUTCOME_SCHEMA,
};
use reflex_core::headers::{ce, reflex as rh, trace};
use reflex_core::registry::RegistryClient;
use reflex_core::template::Templates;
use reflex_core::wire::decode_frame;
use reflex_core::{metrics as m, ErrorClass, Headers};
use reflex_runtime::{Event, Output, Stage, StageError};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::breaker::Breakers;
use crate::call::Call;
use crate::config::{Action, Kind};
pub use crate::config::{ActorConfig, ActorSettings, ACTOR_DEFAULTS};
use crate::state::StateBackend;
use crate::store::Claim;

/// The config used when none is given (relative to the working directory, as in the repo).
pub const EXAMPLE_CONFIG: &str = "crates/actor/actor.example.toml";
/// Header on the last outcome record of a request: `true` when nothing more will follow.
pub const FINAL_HEADER: &str = "reflex-final";
/// Header on held records: why the request was held.
pub const HELD_REASON_HEADER: &str = "reflex-held-reason";
/// `ce_type` of outcome records.
pub const OUTCOME_TYPE: &str = "dev.reflex.action.outcome";

/// Why the actor cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("cannot read config file {path}: {error}")]
    File { path: String, error: std::io::Error },
    #[error(transparent)]
    State(#[from] state::StateError),
    #[error("cannot register the outcome schema under {subject}: {error}")]
    Registry { subject: String, error: String },
    #[error("{0}")]
    Security(String),
    #[error("{0}")]
    Approvals(String),
    /// Not a `source`: the lines are the whole message (`{:#}` would print them twice).
    #[error("actor.policy_file is not usable:\n{0}")]
    Policy(policy::PolicyError),
}

/// The actor stage.
pub struct Actor {
    worker: String,
    settings: ActorSettings,
    actions: HashMap<String, Arc<Action>>,
    semaphores: HashMap<String, Arc<Semaphore>>,
    templates: Templates,
    registry: RegistryClient,
    outcomes: AvroCodec<ActionOutcome>,
    store: StateBackend,
    http: reqwest::Client,
    breakers: Breakers,
    kill: Arc<KillSwitch>,
    allowlist: config::Allowlist,
    /// Some action needs approval: decisions are consumed ([`approval`]).
    approvals_on: bool,
    /// `actor.policy_file`, validated at start-up.
    policies: Option<policy::Policies>,
    /// Per action: its outcome counters and latency histogram, registered on first use (a
    /// registry lookup with a label copy per outcome showed in the actor's profile).
    action_metrics: HashMap<String, ActionMetrics>,
    /// `ce_source` of outcome records, `reflex-actor/<worker>`.
    outcome_source: Bytes,
}

/// One action's metric handles: `reflex_actions_total` by result and
/// `reflex_action_latency_seconds`, each registered the first time it is needed (so the series
/// exported stay those the actor registers at start-up and those that happened).
#[derive(Default)]
struct ActionMetrics {
    outcomes: [std::sync::OnceLock<metrics::Counter>; RESULTS],
    latency: std::sync::OnceLock<metrics::Histogram>,
}

/// How many [`ActionResult`]s there are (the size of [`ActionMetrics::outcomes`]).
const RESULTS: usize = 11;

/// The index of `result` in [`ActionMetrics::outcomes`].
fn result_index(result: ActionResult) -> usize {
    match result {
        ActionResult::Succeeded => 0,
        ActionResult::Failed => 1,
        ActionResult::DuplicateSuppressed => 2,
        ActionResult::DryRun => 3,
        ActionResult::Held => 4,
        ActionResult::Rejected => 5,
        ActionResult::PendingApproval => 6,
        ActionResult::Approved => 7,
        ActionResult::Denied => 8,
        ActionResult::Expired => 9,
        ActionResult::DeniedByPolicy => 10,
    }
}

impl ActionMetrics {
    fn outcome(&self, action: &str, result: ActionResult) -> &metrics::Counter {
        self.outcomes[result_index(result)].get_or_init(|| {
            metrics::counter!(m::ACTIONS, "action" => action.to_string(), "result" => result.as_str())
        })
    }

    fn latency(&self, action: &str) -> &metrics::Histogram {
        self.latency.get_or_init(
            || metrics::histogram!(m::ACTION_LATENCY_SECONDS, "action" => action.to_string()),
        )
    }
}

/// Kill-switch state, refreshed from Redis by a background task.
#[derive(Default)]
pub struct KillSwitch {
    config: bool,
    global: AtomicBool,
    per_action: HashMap<String, AtomicBool>,
}

impl KillSwitch {
    fn on(&self, action: &str) -> bool {
        self.config
            || self.global.load(Ordering::Acquire)
            || self
                .per_action
                .get(action)
                .is_some_and(|b| b.load(Ordering::Acquire))
    }
}

enum Effect {
    Ok(Option<i32>),
    Permanent(Option<i32>, String),
    Transient(Option<i32>, String),
}

impl Actor {
    /// Validates the actions (with line numbers from `config_file`), connects to Redis,
    /// registers the outcome schema and starts the kill-switch poller.
    pub async fn start(
        config: &ActorConfig,
        config_file: Option<&Path>,
        stage_worker_id: &str,
    ) -> Result<Self, StartError> {
        let text = match config_file {
            Some(path) => {
                Some(
                    std::fs::read_to_string(path).map_err(|error| StartError::File {
                        path: path.display().to_string(),
                        error,
                    })?,
                )
            }
            None => None,
        };
        let source = config_file.zip(text.as_deref());
        let (actions, templates) =
            config::compile(&config.stage.action, source, &|v| std::env::var(v).ok())?;
        let settings = config.stage.clone();
        let policies = load_policies(&settings, &actions).map_err(StartError::Policy)?;
        let allowlist = config::Allowlist::new(&settings.allowed_hosts, &settings.allowed_schemes)
            .map_err(StartError::Security)?;
        if allowlist.is_open() && actions.iter().any(|a| matches!(a.kind, Kind::Http { .. })) {
            warn!("actor.allowed_hosts is empty: http actions may call any host a template renders; list the approved hosts");
        }
        for a in &actions {
            for field in call::raw_fields(a, &templates) {
                warn!(action = %a.settings.name, field = %field, "template uses `raw`: its value is written unescaped, so whoever can publish the events behind it chooses that part of the call; keep it to trusted values (SECURITY.md, \"Escaping\")");
            }
        }
        let redis_auth = match settings.redis_password.trim() {
            "" => None,
            reference => {
                let password = reflex_core::secrets::resolve(reference)
                    .map_err(|e| StartError::Security(format!("actor.redis_password: {e}")))?;
                let password = password.expose_str().map(str::to_string).ok_or_else(|| {
                    StartError::Security("actor.redis_password: not UTF-8".into())
                })?;
                let user = Some(settings.redis_username.clone()).filter(|u| !u.is_empty());
                Some((user, password))
            }
        };
        let store = StateBackend::open(
            settings.state_backend.as_str(),
            &settings.redis_url,
            &settings.redis_prefix,
            redis_auth,
        )
        .await?;
        let approvals_on = actions.iter().any(|a| a.settings.approval.is_some());
        if approvals_on {
            let StateBackend::Redis(redis) = &store else {
                return Err(StartError::Approvals(
                    "an action has `approval`, which keeps held requests in Redis: set actor.state_backend = \"redis\" and actor.redis_url".into(),
                ));
            };
            let producer: rdkafka::producer::FutureProducer =
                reflex_runtime::client_config::producer_config(
                    &config.kafka,
                    "reflex-actor-approvals",
                )
                .create()
                .map_err(|e| {
                    StartError::Approvals(format!(
                        "cannot create the producer of timeout decisions: {e}"
                    ))
                })?;
            tokio::spawn(approval::sweep(
                redis.clone(),
                producer,
                settings.decisions_topic.clone(),
                settings.approval_sweep.max(Duration::from_millis(50)),
                if stage_worker_id.is_empty() {
                    format!("actor-{}", std::process::id())
                } else {
                    stage_worker_id.to_string()
                },
            ));
            metrics::gauge!(m::APPROVALS_PENDING).set(0.0);
            for a in actions.iter().filter(|a| a.settings.approval.is_some()) {
                metrics::counter!(m::APPROVALS_REQUESTED, "action" => a.settings.name.clone())
                    .increment(0);
            }
        }
        let registry = config.registry.client();
        let subject = format!("{}-value", settings.outcomes_topic);
        let id = registry
            .register(&subject, ACTION_OUTCOME_SCHEMA)
            .await
            .map_err(|e| StartError::Registry {
                subject: subject.clone(),
                error: e.to_string(),
            })?;
        let outcomes =
            AvroCodec::new(id, ACTION_OUTCOME_SCHEMA).map_err(|e| StartError::Registry {
                subject,
                error: e.to_string(),
            })?;
        let worker = if stage_worker_id.is_empty() {
            format!("actor-{}", std::process::id())
        } else {
            stage_worker_id.to_string()
        };
        let kill = Arc::new(KillSwitch {
            config: settings.kill_switch,
            global: AtomicBool::new(false),
            per_action: actions
                .iter()
                .map(|a| (a.settings.name.clone(), AtomicBool::new(false)))
                .collect(),
        });
        metrics::gauge!(m::KILL_SWITCH).set(if settings.kill_switch { 1.0 } else { 0.0 });
        // Every action's series at zero from the start, so dashboards and rate() see them.
        for a in &actions {
            let name = a.settings.name.clone();
            for result in [
                ActionResult::Succeeded,
                ActionResult::Failed,
                ActionResult::DuplicateSuppressed,
                ActionResult::DryRun,
                ActionResult::Held,
                ActionResult::Rejected,
            ]
            .into_iter()
            // The approval results only for actions that ask (`reflexctl top` lists the others).
            .chain(a.settings.approval.iter().flat_map(|_| {
                [
                    ActionResult::PendingApproval,
                    ActionResult::Approved,
                    ActionResult::Denied,
                    ActionResult::Expired,
                ]
            }))
            .chain(policies.as_ref().map(|_| ActionResult::DeniedByPolicy))
            {
                metrics::counter!(m::ACTIONS, "action" => name.clone(), "result" => result.as_str())
                    .increment(0);
            }
            for counter in [
                m::DEDUP_HITS,
                m::RATE_LIMITED,
                m::BLAST_RADIUS_HELD,
                m::LOCK_WAITS,
            ] {
                metrics::counter!(counter, "action" => name.clone()).increment(0);
            }
        }
        if settings.kill_switch {
            warn!("actor.kill_switch is on: no action will be executed until it is turned off");
        }
        tokio::spawn(poll_kill_switch(
            store.clone(),
            kill.clone(),
            settings
                .kill_switch_poll
                .clamp(Duration::from_millis(50), Duration::from_millis(500)),
        ));
        info!(
            worker = %worker,
            actions = ?actions.iter().map(|a| a.settings.name.as_str()).collect::<Vec<_>>(),
            outcomes_topic = %settings.outcomes_topic, outcome_schema_id = id,
            state_backend = store.kind(),
            "actor ready"
        );
        Ok(Self {
            action_metrics: actions
                .iter()
                .map(|a| (a.settings.name.clone(), ActionMetrics::default()))
                .collect(),
            outcome_source: Bytes::from(format!("reflex-actor/{worker}")),
            semaphores: actions
                .iter()
                .filter(|a| a.settings.max_concurrency > 0)
                .map(|a| {
                    (
                        a.settings.name.clone(),
                        Arc::new(Semaphore::new(a.settings.max_concurrency)),
                    )
                })
                .collect(),
            actions: actions
                .into_iter()
                .map(|a| (a.settings.name.clone(), Arc::new(a)))
                .collect(),
            worker,
            settings,
            templates,
            registry,
            outcomes,
            store,
            http: reqwest::Client::new(),
            breakers: Breakers::default(),
            kill,
            allowlist,
            approvals_on,
            policies,
        })
    }

    pub fn breakers(&self) -> &Breakers {
        &self.breakers
    }

    fn decode(
        &self,
        event: &Event,
    ) -> impl std::future::Future<Output = Result<ActionRequest, StageError>> + Send + '_ {
        let payload = event.payload.clone();
        async move {
            let value = payload.ok_or_else(|| {
                StageError::poison("record has no value (tombstone): expected an ActionRequest in Confluent wire format")
            })?;
            let framed = decode_frame(&value).map_err(|e| StageError::poison(e.to_string()))?;
            let schema = self
                .registry
                .schema_by_id(framed.schema_id)
                .await
                .map_err(|e| StageError::new(e.class(), e.to_string()))?;
            AvroCodec::<ActionRequest>::decode_with(&schema.fast, &value).map_err(|e| {
                StageError::poison(format!(
                    "value does not decode as an ActionRequest with its schema id {}: {e}",
                    framed.schema_id
                ))
            })
        }
    }

    /// Breaker scope: the request's target (its `host:port` when it is a URL, as the enricher
    /// binds it), else the called URL's `host:port`.
    fn breaker_key(req: &ActionRequest, url: &str) -> String {
        let host = |u: &str| {
            reqwest::Url::parse(u).ok().and_then(|u| {
                let host = u.host_str()?.to_string();
                Some(match u.port() {
                    Some(p) => format!("{host}:{p}"),
                    None => host,
                })
            })
        };
        if !req.target.is_empty() {
            return host(&req.target).unwrap_or_else(|| req.target.clone());
        }
        host(url).unwrap_or_else(|| url.to_string())
    }

    fn outcome(
        &self,
        req: &ActionRequest,
        result: ActionResult,
        attempt: u32,
        started: (i64, Instant),
    ) -> ActionOutcome {
        ActionOutcome {
            idempotency_key: req.idempotency_key.clone(),
            action: req.action.clone(),
            target: req.target.clone(),
            event_id: req.event_id.clone(),
            correlation_id: req.correlation_id.clone(),
            rule: req.rule.clone(),
            result,
            attempt: attempt as i32,
            dry_run: result == ActionResult::DryRun,
            status_code: None,
            error_class: None,
            error: None,
            worker: self.worker.clone(),
            started_at: started.0,
            duration_ms: started.1.elapsed().as_millis() as i64,
            approver: None,
            approval_reason: None,
        }
    }

    fn outcome_output(
        &self,
        outcome: &ActionOutcome,
        event: &Event,
        last: bool,
    ) -> Result<Output, StageError> {
        let handles = self.action_metrics.get(&outcome.action);
        match handles {
            Some(h) => h.outcome(&outcome.action, outcome.result).increment(1),
            None => metrics::counter!(m::ACTIONS, "action" => outcome.action.clone(), "result" => outcome.result.as_str())
                .increment(1),
        }
        if last && outcome.result == ActionResult::Succeeded {
            if let Some(seconds) = event
                .headers
                .get_str(ce::TIME)
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| {
                    (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_milliseconds() as f64
                        / 1000.0
                })
            {
                match handles {
                    Some(h) => h.latency(&outcome.action).record(seconds.max(0.0)),
                    None => metrics::histogram!(m::ACTION_LATENCY_SECONDS, "action" => outcome.action.clone())
                        .record(seconds.max(0.0)),
                }
            }
        }
        let payload = self
            .outcomes
            .encode(outcome)
            .map_err(|e| StageError::permanent(format!("cannot encode the outcome: {e}")))?;
        let mut headers = Headers::new();
        headers.push(ce::SPECVERSION, ce::SPEC_VERSION_1_0);
        headers.push(
            ce::ID,
            format!(
                "{}#{}@{}",
                outcome.idempotency_key,
                outcome.attempt,
                store::owner_token(&self.worker)
            ),
        );
        headers.push(ce::SOURCE, self.outcome_source.clone());
        headers.push(ce::TYPE, OUTCOME_TYPE);
        headers.push(ce::CAUSATION_ID, outcome.event_id.clone());
        headers.push(ce::CORRELATION_ID, outcome.correlation_id.clone());
        headers.push(ce::CONTENT_TYPE, ce::AVRO_CONTENT_TYPE);
        headers.push(FINAL_HEADER, if last { "true" } else { "false" });
        if let Some(tp) = event.headers.get(trace::TRACEPARENT) {
            headers.push(trace::TRACEPARENT, tp.to_vec());
        }
        Ok(Output {
            topic: self.settings.outcomes_topic.clone(),
            partition: None,
            key: Some(Bytes::from(outcome.idempotency_key.clone())),
            payload: Some(Bytes::from(payload)),
            headers,
        })
    }

    /// The event an `emit` action produces (deterministic: the same request, the same record).
    fn emitted(
        &self,
        action: &Action,
        (topic, body): (&str, &str),
        req: &ActionRequest,
        event: &Event,
    ) -> Output {
        let mut headers = Headers::new();
        headers.push(ce::SPECVERSION, ce::SPEC_VERSION_1_0);
        headers.push(ce::ID, req.idempotency_key.clone());
        headers.push(ce::SOURCE, "reflex-actor");
        headers.push(ce::TYPE, action.settings.event_type.clone());
        headers.push(ce::CAUSATION_ID, req.event_id.clone());
        let correlation = event
            .headers
            .get_str(ce::CORRELATION_ID)
            .map(str::to_string)
            .unwrap_or_else(|| req.correlation_id.clone());
        headers.push(ce::CORRELATION_ID, correlation);
        headers.push(ce::CONTENT_TYPE, action.settings.content_type.clone());
        headers.push(rh::HOPS, (event.headers.hops() + 1).to_string());
        for key in [trace::TRACEPARENT, trace::TRACESTATE, rh::RULES_VISITED] {
            if let Some(v) = event.headers.get(key) {
                headers.push(key, v.to_vec());
            }
        }
        Output {
            topic: topic.to_string(),
            partition: None,
            key: event.key.clone(),
            payload: Some(Bytes::from(body.to_string())),
            headers,
        }
    }

    async fn wait_kill_switch(&self, action: &str) {
        let mut logged = false;
        while self.kill.on(action) {
            if !logged {
                debug!(action, "kill switch on: holding the action");
                logged = true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_rate(&self, action: &Action) -> Result<(), StageError> {
        let s = &action.settings;
        if s.rate_per_sec <= 0.0 {
            return Ok(());
        }
        match self
            .store
            .rate_slot(&s.name, s.rate_per_sec, s.rate_burst)
            .await
        {
            Ok(None) => Ok(()),
            Ok(Some(wait)) => {
                metrics::counter!(m::RATE_LIMITED, "action" => s.name.clone()).increment(1);
                tokio::time::sleep(wait).await;
                Ok(())
            }
            Err(e) => Err(redis_failed("rate limit", &e)),
        }
    }

    /// One HTTP attempt of a rendered call.
    async fn http_call(&self, c: &Claimable) -> Result<Effect, StageError> {
        let (action, req) = (&*c.action, &c.req);
        let (
            Kind::Http { secret, .. },
            Call::Http {
                method,
                url,
                headers,
                body,
            },
        ) = (&action.kind, &c.call)
        else {
            unreachable!("http_call on a non-http action")
        };
        let mut call = self
            .http
            .request(method.clone(), url)
            .timeout(action.timeout)
            .header("Idempotency-Key", &req.idempotency_key);
        for (name, value) in headers {
            call = call.header(name.as_str(), value.as_str());
        }
        if let Some(key) = secret {
            let ts = store::now_ms() / 1000;
            call = call
                .header(sign::WEBHOOK_ID, &req.idempotency_key)
                .header(sign::WEBHOOK_TIMESTAMP, ts.to_string())
                .header(
                    sign::WEBHOOK_SIGNATURE,
                    sign::signature(key, &req.idempotency_key, ts, body.as_bytes()),
                );
        }
        Ok(match call.body(body.clone()).send().await {
            Ok(response) => {
                let status = response.status();
                let code = Some(i32::from(status.as_u16()));
                if status.is_success() {
                    Effect::Ok(code)
                } else if status.is_server_error() || matches!(status.as_u16(), 408 | 425 | 429) {
                    Effect::Transient(code, format!("{method} {url}: HTTP {status}"))
                } else {
                    Effect::Permanent(code, format!("{method} {url}: HTTP {status}"))
                }
            }
            Err(e) if e.is_builder() => Effect::Permanent(None, format!("{method} {url}: {e}")),
            Err(e) => Effect::Transient(None, format!("{method} {url}: {e}")),
        })
    }

    /// The checks and renders that need no claim: hop limit, decoding, the action, its
    /// templates and the allowlist. A dry run finishes here.
    async fn plan(&self, event: &Event) -> Result<Plan, StageError> {
        let hops = event.headers.hops();
        if hops > self.settings.max_hops {
            return Err(StageError::permanent(format!(
                "request took {hops} Reflex hops (limit actor.max_hops = {}): probably an automation loop",
                self.settings.max_hops
            )));
        }
        let req = self.decode(event).await?;
        let Some(action) = self.actions.get(&req.action).cloned() else {
            let mut known: Vec<&str> = self.actions.keys().map(String::as_str).collect();
            known.sort_unstable();
            return Err(StageError::permanent(format!(
                "unknown action `{}` (configured: {}): add an [[actor.action]] named `{}` or fix the binding",
                req.action,
                known.join(", "),
                req.action
            )));
        };
        let started = (store::now_ms(), Instant::now());
        let name = &action.settings.name;
        let dry_run = req.dry_run || action.settings.dry_run || self.settings.dry_run;
        // Render first: a request the templates cannot render, or whose values would change the
        // call's structure (refused by the escaping), is a permanent error (dead letter). A log
        // action's only effect is its info line: its message is not rendered when the level
        // filters that line out (dry runs show it).
        let call = if matches!(action.kind, Kind::Log) && !dry_run && !log_action_enabled() {
            Call::Log {
                message: String::new(),
            }
        } else {
            call::render(&action, &self.templates, &req).map_err(StageError::permanent)?
        };
        if let Call::Http { url, .. } = &call {
            // Before anything else (dry runs included): a URL nobody approved is never sent.
            self.allowlist
                .check(url)
                .map_err(|e| StageError::permanent(format!("action `{name}` field `url`: {e}")))?;
        }

        if let Some(denied) = self.check_policies(&req, event, started)? {
            return Ok(Plan::Finished(denied));
        }

        if dry_run {
            let what = match &call {
                Call::Http {
                    method, url, body, ..
                } => format!("{method} {url} ({} body bytes)", body.len()),
                Call::Emit { topic, body } => format!("emit {} bytes to {topic}", body.len()),
                Call::Log { message } => format!("log: {message}"),
            };
            info!(action = %name, idempotency_key = %req.idempotency_key, would = %what, "dry run: no effect");
            let mut o = self.outcome(&req, ActionResult::DryRun, 1, started);
            o.error = Some(format!("dry run, would: {what}"));
            return Ok(Plan::Finished(vec![self.outcome_output(&o, event, true)?]));
        }
        Ok(Plan::Claim(Box::new(Claimable {
            action,
            req,
            call,
            started,
        })))
    }

    /// Asks the policy file about a request: `Some(outputs)` (its final `DENIED_BY_POLICY`
    /// outcome) when a policy denies it. Before the dry-run check, so a shadow run shows the
    /// denial too.
    fn check_policies(
        &self,
        req: &ActionRequest,
        event: &Event,
        started: (i64, Instant),
    ) -> Result<Option<Vec<Output>>, StageError> {
        let Some(policies) = &self.policies else {
            return Ok(None);
        };
        let attrs = policy::EventAttrs::of(&event.headers);
        let policy::Decision::Deny(denial) = policies.decide(req, &attrs, chrono::Utc::now())
        else {
            return Ok(None);
        };
        warn!(action = %req.action, idempotency_key = %req.idempotency_key, target = %req.target, policy = %denial.label(), reason = %denial, "action denied by policy");
        metrics::counter!(m::POLICY_DENIALS, "action" => req.action.clone(), "policy" => denial.label())
            .increment(1);
        let mut o = self.outcome(req, ActionResult::DeniedByPolicy, 1, started);
        o.error = Some(denial.reason);
        Ok(Some(vec![self.outcome_output(&o, event, true)?]))
    }

    fn lease(&self) -> Duration {
        self.settings.claim_lease.max(Duration::from_millis(100))
    }

    /// Claims, executes and records one request (a lone event, a retry, or a key another
    /// owner held when its batch claimed).
    async fn execute(&self, c: &Claimable, event: &Event) -> Result<Vec<Output>, StageError> {
        let name = &c.action.settings.name;
        // No new claim while the kill switch is on (the event waits; nothing is lost).
        self.wait_kill_switch(name).await;

        // Phase one: claim the key (or find it done, or wait for its live owner).
        let owner = store::owner_token(&self.worker);
        let key = c.req.idempotency_key.as_str();
        loop {
            match self.store.claim(key, &owner, self.lease()).await {
                Ok(Claim::Claimed) => break,
                Ok(Claim::Done(recorded)) => return self.duplicate(c, event, &recorded),
                Ok(Claim::Busy(holder)) => {
                    debug!(action = %name, idempotency_key = %key, holder = %holder, "claimed by another owner: waiting");
                    tokio::time::sleep(self.settings.claim_poll.max(Duration::from_millis(10)))
                        .await;
                }
                Err(e) => return Err(redis_failed("idempotency claim", &e)),
            }
        }
        let work = async {
            let (outputs, done) = self.execute_claimed(c, event, &owner).await?;
            if let Some(outcome_json) = done {
                self.store
                    .done(key, &owner, &outcome_json, self.done_ttl())
                    .await
                    .map_err(record_failed)?;
            }
            Ok(outputs)
        };
        let result = self.keeping_claims(work, &[(key, owner.as_str())]).await;
        if result.is_err() {
            let _ = self.store.release(key, &owner).await;
        }
        result
    }

    /// A batch of requests: claims in one round trip, each claimed request executed in order,
    /// then the done records in one round trip. Results are per request, in order.
    async fn execute_batch(
        &self,
        work: Vec<(usize, Box<Claimable>)>,
        events: &[&Event],
        results: &mut [Option<Result<Vec<Output>, StageError>>],
    ) {
        for (_, c) in &work {
            self.wait_kill_switch(&c.action.settings.name).await;
        }
        let owners: Vec<String> = work
            .iter()
            .map(|_| store::owner_token(&self.worker))
            .collect();
        let claims: Vec<(&str, &str)> = work
            .iter()
            .zip(&owners)
            .map(|((_, c), owner)| (c.req.idempotency_key.as_str(), owner.as_str()))
            .collect();
        let answers = match self.store.claim_batch(&claims, self.lease()).await {
            Ok(answers) => answers,
            Err(e) => {
                for (i, _) in &work {
                    results[*i] = Some(Err(redis_failed("idempotency claim", &e)));
                }
                return;
            }
        };
        let mut claimed = Vec::new();
        let mut busy = Vec::new();
        for (((i, c), owner), answer) in work.iter().zip(&owners).zip(answers) {
            match answer {
                Claim::Claimed => claimed.push((*i, c, owner.as_str())),
                Claim::Done(recorded) => {
                    results[*i] = Some(self.duplicate(c, events[*i], &recorded))
                }
                Claim::Busy(_) => busy.push((*i, c)),
            }
        }
        let held: Vec<(&str, &str)> = claimed
            .iter()
            .map(|(_, c, owner)| (c.req.idempotency_key.as_str(), *owner))
            .collect();
        let run = async {
            let mut finished = Vec::new();
            let mut records = Vec::new();
            for (i, c, owner) in &claimed {
                match self.execute_claimed(c, events[*i], owner).await {
                    Ok((outputs, Some(outcome_json))) => {
                        records.push((c.req.idempotency_key.as_str(), *owner, outcome_json));
                        finished.push((*i, *owner, c, outputs));
                    }
                    Ok((outputs, None)) => results[*i] = Some(Ok(outputs)),
                    Err(e) => {
                        let _ = self.store.release(&c.req.idempotency_key, owner).await;
                        results[*i] = Some(Err(e));
                    }
                }
            }
            let records: Vec<(&str, &str, &str)> = records
                .iter()
                .map(|(key, owner, json)| (*key, *owner, json.as_str()))
                .collect();
            match self.store.done_batch(&records, self.done_ttl()).await {
                Ok(()) => {
                    for (i, _, _, outputs) in finished {
                        results[i] = Some(Ok(outputs));
                    }
                }
                Err(e) => {
                    // The effects happened but are not recorded: claims released, and the
                    // runtime's retry repeats them (same Idempotency-Key), as for one request.
                    let error = record_failed(e);
                    for (i, owner, c, _) in finished {
                        let _ = self.store.release(&c.req.idempotency_key, owner).await;
                        results[i] = Some(Err(error.clone()));
                    }
                }
            }
        };
        self.keeping_claims(run, &held).await;
        // Another owner works on these: the one-request path waits for it (after ours are
        // done, so our claims are not held meanwhile).
        for (i, c) in busy {
            results[i] = Some(self.execute(c, events[i]).await);
        }
    }

    /// Runs `work` while renewing the leases of `held` claims every third of a lease, so a
    /// slow effect (or a rate-limit wait) keeps its claims; a crash stops the renewals and the
    /// leases expire. In the same task: no spawn per request.
    async fn keeping_claims<T>(
        &self,
        work: impl std::future::Future<Output = T>,
        held: &[(&str, &str)],
    ) -> T {
        let lease = self.lease();
        let renew = async {
            let mut lost = vec![false; held.len()];
            loop {
                tokio::time::sleep(lease / 3).await;
                for ((key, owner), lost) in held.iter().zip(lost.iter_mut()) {
                    if *lost {
                        continue;
                    }
                    match self.store.renew(key, owner, lease).await {
                        Ok(true) => {}
                        Ok(false) => {
                            warn!(idempotency_key = %key, "idempotency claim lost while working (lease expired): another replica may retry; the target dedups by Idempotency-Key");
                            *lost = true;
                        }
                        Err(e) => warn!(idempotency_key = %key, error = %e, "claim renewal failed"),
                    }
                }
            }
        };
        tokio::pin!(work, renew);
        tokio::select! {
            biased;
            out = &mut work => out,
            () = &mut renew => unreachable!("renewal never ends"),
        }
    }

    fn done_ttl(&self) -> Duration {
        self.settings.done_ttl
    }

    /// The outputs of a request found already done: a duplicate-suppressed outcome (and, for
    /// `emit`, the record again: downstream dedups by `ce_id`).
    fn duplicate(
        &self,
        c: &Claimable,
        event: &Event,
        recorded: &str,
    ) -> Result<Vec<Output>, StageError> {
        let (action, req) = (&c.action, &c.req);
        let name = &action.settings.name;
        metrics::counter!(m::DEDUP_HITS, "action" => name.clone()).increment(1);
        let recorded: Option<ActionOutcome> = serde_json::from_str(recorded).ok();
        let mut o = self.outcome(req, ActionResult::DuplicateSuppressed, 1, c.started);
        if let Some(r) = &recorded {
            o.status_code = r.status_code;
            o.error = Some(format!(
                "already {} by {} at {} (attempt {})",
                r.result.as_str(),
                r.worker,
                r.started_at,
                r.attempt
            ));
        }
        debug!(action = %name, idempotency_key = %req.idempotency_key, "duplicate suppressed");
        let mut out = Vec::new();
        if let Call::Emit { topic, body } = &c.call {
            out.push(self.emitted(action, (topic, body), req, event));
        }
        out.push(self.outcome_output(&o, event, true)?);
        Ok(out)
    }

    /// Executes a claimed request holding its action's lock, if any ([`lock`]).
    async fn execute_claimed(
        &self,
        c: &Claimable,
        event: &Event,
        owner: &str,
    ) -> Result<(Vec<Output>, Option<String>), StageError> {
        self.with_lock(c, event, self.execute_locked(c, event, owner))
            .await
    }

    /// Executes a claimed request (attempts, guards, effect). On success returns its outputs
    /// and the outcome to record as done (the caller records it, one request or a batch at a
    /// time); a held request comes back with its claim released and nothing to record.
    async fn execute_locked(
        &self,
        c: &Claimable,
        event: &Event,
        owner: &str,
    ) -> Result<(Vec<Output>, Option<String>), StageError> {
        let (action, req) = (&*c.action, &c.req);
        let s = &action.settings;
        let name = &s.name;
        let key = &req.idempotency_key;

        // Blast-radius cap: hold instead of acting.
        if s.blast_radius_max > 0 {
            let count = self
                .store
                .blast_count(name, key, s.blast_radius_max, s.blast_radius_window)
                .await
                .map_err(|e| redis_failed("blast-radius counter", &e))?;
            if count > s.blast_radius_max {
                let reason = format!(
                    "blast-radius cap: {count} executions of `{name}` in the current {} window (limit {})",
                    reflex_runtime::duration::format(s.blast_radius_window),
                    s.blast_radius_max
                );
                warn!(action = %name, idempotency_key = %key, target = %req.target, held_topic = %self.settings.held_topic, reason = %reason, "action held");
                metrics::counter!(m::BLAST_RADIUS_HELD, "action" => name.clone()).increment(1);
                let _ = self.store.release(key, owner).await;
                let mut headers = event.headers.clone();
                headers.set(HELD_REASON_HEADER, reason.clone());
                let mut o = self.outcome(req, ActionResult::Held, 1, c.started);
                o.error = Some(reason);
                let outputs = vec![
                    Output {
                        topic: self.settings.held_topic.clone(),
                        partition: None,
                        key: event.key.clone(),
                        payload: event.payload.clone(),
                        headers,
                    },
                    self.outcome_output(&o, event, true)?,
                ];
                return Ok((outputs, None));
            }
        }

        let mut outputs = Vec::new();
        // Only calls have a breaker (parsing the target per request showed in the profile).
        let breaker_key = match &c.call {
            Call::Http { url, .. } => Self::breaker_key(req, url),
            _ => String::new(),
        };
        let cooldown = s.breaker_cooldown;
        for attempt in 1..=action.retry.max_attempts {
            // Guards, in order; the kill switch is checked again right before the effect.
            let _permit = loop {
                self.wait_kill_switch(name).await;
                let permit = match self.semaphores.get(name) {
                    Some(sem) => Some(
                        sem.clone()
                            .acquire_owned()
                            .await
                            .expect("semaphore never closed"),
                    ),
                    None => None,
                };
                self.wait_rate(action).await?;
                if matches!(action.kind, Kind::Http { .. }) {
                    self.breakers
                        .acquire(&breaker_key, s.breaker_failures, cooldown)
                        .await;
                }
                if !self.kill.on(name) {
                    break permit;
                }
            };
            let attempt_started = (store::now_ms(), Instant::now());
            let effect = match &c.call {
                Call::Http { .. } => {
                    let effect = self.http_call(c).await?;
                    self.breakers.record(
                        &breaker_key,
                        s.breaker_failures,
                        cooldown,
                        !matches!(effect, Effect::Transient(..)),
                    );
                    effect
                }
                Call::Emit { topic, body } => {
                    outputs.push(self.emitted(action, (topic, body), req, event));
                    Effect::Ok(None)
                }
                Call::Log { message } => {
                    info!(action = %name, idempotency_key = %key, target = %req.target, event_id = %req.event_id, message = %message, "log action");
                    Effect::Ok(None)
                }
            };
            match effect {
                Effect::Ok(status) => {
                    let mut o =
                        self.outcome(req, ActionResult::Succeeded, attempt, attempt_started);
                    o.status_code = status;
                    let json = serde_json::to_string(&o).expect("outcomes serialize");
                    outputs.push(self.outcome_output(&o, event, true)?);
                    return Ok((outputs, Some(json)));
                }
                Effect::Permanent(status, error) => {
                    let mut o = self.outcome(req, ActionResult::Failed, attempt, attempt_started);
                    o.status_code = status;
                    o.error_class = Some(ErrorClass::Permanent.as_str().into());
                    o.error = Some(format!("{error} (permanent: not retried)"));
                    warn!(action = %name, idempotency_key = %key, attempt, error = %error, "action failed permanently");
                    let _ = self.store.release(key, owner).await;
                    outputs.push(self.outcome_output(&o, event, true)?);
                    // Dead-lettered (permanent) with the outcome as its audit record.
                    return Err(StageError::permanent(format!(
                        "action {name}: {error} (a permanent failure: fix the request or the \
                         target, then `reflexctl dlq replay`)"
                    ))
                    .with_outputs(outputs));
                }
                Effect::Transient(status, error) => {
                    let retry_in = action.retry.retry_after(
                        ErrorClass::Transient,
                        attempt,
                        c.started.1.elapsed(),
                    );
                    let last = retry_in.is_none();
                    let mut o = self.outcome(req, ActionResult::Failed, attempt, attempt_started);
                    o.status_code = status;
                    o.error_class = Some(ErrorClass::Transient.as_str().into());
                    o.error = Some(if last {
                        format!("{error} (gave up after {attempt} attempts)")
                    } else {
                        error.clone()
                    });
                    outputs.push(self.outcome_output(&o, event, last)?);
                    let Some(backoff) = retry_in else {
                        warn!(action = %name, idempotency_key = %key, attempts = attempt, error = %error, "action failed: attempts exhausted");
                        let _ = self.store.release(key, owner).await;
                        // Transient: the runtime dead-letters it with a not-before time and the
                        // reprocessor delivers it again (same Idempotency-Key).
                        return Err(StageError::transient(format!(
                            "action {name}: {error} (gave up after {attempt} attempts)"
                        ))
                        .with_outputs(outputs));
                    };
                    debug!(action = %name, idempotency_key = %key, attempt, error = %error, backoff_ms = backoff.as_millis() as u64, "attempt failed: retrying");
                    tokio::time::sleep(backoff).await;
                }
            }
        }
        unreachable!("the last attempt returns")
    }
}

impl Stage for Actor {
    fn name(&self) -> &'static str {
        "actor"
    }

    async fn process(&self, event: &Event) -> Result<Vec<Output>, StageError> {
        if self.is_decision(event) {
            return self.decision(event).await;
        }
        match self.plan(event).await? {
            Plan::Finished(outputs) => Ok(outputs),
            Plan::Claim(c) => match self.approval_gate(&c, event).await? {
                Some(outputs) => Ok(outputs),
                None => self.execute(&c, event).await,
            },
        }
    }

    /// Claims of a batch go to Redis in one round trip, and so do its done records.
    async fn process_batch(&self, events: &[&Event]) -> Vec<Result<Vec<Output>, StageError>> {
        let mut results: Vec<Option<Result<Vec<Output>, StageError>>> =
            (0..events.len()).map(|_| None).collect();
        let mut work = Vec::new();
        for (i, event) in events.iter().enumerate() {
            if self.is_decision(event) {
                results[i] = Some(self.decision(event).await);
                continue;
            }
            match self.plan(event).await {
                Ok(Plan::Finished(outputs)) => results[i] = Some(Ok(outputs)),
                Ok(Plan::Claim(c)) => match self.approval_gate(&c, event).await {
                    Ok(Some(outputs)) => results[i] = Some(Ok(outputs)),
                    Ok(None) => work.push((i, c)),
                    Err(e) => results[i] = Some(Err(e)),
                },
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        if !work.is_empty() {
            self.execute_batch(work, events, &mut results).await;
        }
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(StageError::transient(
                        "the batch left this request without a result",
                    ))
                })
            })
            .collect()
    }
}

/// What a request needs after the checks that need no claim.
enum Plan {
    /// Done without a claim (a dry run).
    Finished(Vec<Output>),
    /// To claim and execute (boxed: the request is large, and lives while it is claimed).
    Claim(Box<Claimable>),
}

/// A decoded, rendered request waiting for its claim.
struct Claimable {
    action: Arc<Action>,
    req: ActionRequest,
    /// The rendered, checked call.
    call: Call,
    started: (i64, Instant),
}

/// Whether the log action's `info` line is emitted (the same target as that line).
fn log_action_enabled() -> bool {
    tracing::enabled!(tracing::Level::INFO)
}

/// A Redis request before the effect failed: Redis down or slow is retried, an answer about the
/// data (a key of the wrong type) is not ([`reflex_core::redis_conn::error_class`]).
fn redis_failed(what: &str, e: &redis::RedisError) -> StageError {
    StageError::new(
        reflex_core::redis_conn::error_class(e),
        format!("{what} (Redis): {e}"),
    )
}

/// The effect happened but its done record is not written: the claim is released and the
/// runtime's retry repeats the call with the same Idempotency-Key, whatever Redis said.
fn record_failed(e: redis::RedisError) -> StageError {
    StageError::transient(format!("recording the outcome (Redis): {e}"))
}

async fn poll_kill_switch(store: StateBackend, kill: Arc<KillSwitch>, every: Duration) {
    let names: Vec<String> = kill.per_action.keys().cloned().collect();
    let mut was_on = kill.config;
    loop {
        match store.kill_switches(&names).await {
            Ok(values) => {
                kill.global
                    .store(store::switch_on(values[0].as_deref()), Ordering::Release);
                for (name, value) in names.iter().zip(&values[1..]) {
                    kill.per_action[name]
                        .store(store::switch_on(value.as_deref()), Ordering::Release);
                }
                let on = kill.config || values.iter().any(|v| store::switch_on(v.as_deref()));
                if on != was_on {
                    if on {
                        warn!(switched = ?names.iter().zip(&values[1..]).filter(|(_, v)| store::switch_on(v.as_deref())).map(|(n, _)| n.as_str()).collect::<Vec<_>>(), global = store::switch_on(values[0].as_deref()), "kill switch on: no new actions start");
                    } else {
                        info!("kill switch off: actions resume");
                    }
                    was_on = on;
                }
                metrics::gauge!(m::KILL_SWITCH).set(if on { 1.0 } else { 0.0 });
            }
            Err(e) => warn!(error = %e, "reading the kill switch failed; keeping its last state"),
        }
        tokio::time::sleep(every).await;
    }
}

/// `actor.policy_file`, parsed and validated against the configured actions (none when empty).
fn load_policies(
    settings: &ActorSettings,
    actions: &[Action],
) -> Result<Option<policy::Policies>, policy::PolicyError> {
    let file = settings.policy_file.trim();
    if file.is_empty() {
        return Ok(None);
    }
    let policies = policy::Policies::load(
        Path::new(file),
        actions.iter().map(|a| a.settings.name.as_str()),
    )?;
    info!(policy_file = %file, policies = policies.len(), "policies loaded");
    Ok(Some(policies))
}

/// The actor's part of the shared `main`: its config (loaded, checked, Kafka secrets resolved
/// by [`ActorConfig::load`]), started and run until `shutdown`.
pub async fn run(
    config: ActorConfig,
    config_file: Option<&Path>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut config = config;
    let actor = Actor::start(&config, config_file, &config.runtime.worker_id).await?;
    if actor.approvals_on
        && !config
            .kafka
            .input_topics
            .contains(&config.stage.decisions_topic)
    {
        // Decisions are an input like requests: their offsets commit once applied.
        info!(decisions_topic = %config.stage.decisions_topic, "an action needs approval: consuming its decisions too");
        config
            .kafka
            .input_topics
            .push(config.stage.decisions_topic.clone());
    }
    reflex_runtime::run(actor, &config.kafka, &config.runtime, shutdown).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_scope_is_the_target_host() {
        let mut req = ActionRequest {
            idempotency_key: "k".into(),
            action: "a".into(),
            kind: reflex_core::actions::ActionKind::Http,
            target: "http://k8s.local:8443/api/v1/namespaces/shop/pods/p1".into(),
            params: Default::default(),
            body: None,
            event_id: "e".into(),
            event_type: "t".into(),
            rule: None,
            correlation_id: "c".into(),
            context: Default::default(),
            dry_run: false,
            requested_at: 0,
        };
        assert_eq!(Actor::breaker_key(&req, "http://x/"), "k8s.local:8443");
        req.target = "k8s-gateway".into();
        assert_eq!(Actor::breaker_key(&req, "http://x/"), "k8s-gateway");
        req.target.clear();
        assert_eq!(
            Actor::breaker_key(&req, "http://gw.local/pods/p1"),
            "gw.local"
        );
    }
}
