//! The router: rules from a file pick where each event goes.
//!
//! For every event it checks the CloudEvents envelope (`ce_specversion`, `ce_id`, `ce_source`,
//! `ce_type`), the Confluent framing and that the schema id is registered, decodes the Avro datum
//! (into CEL values when rules read `payload`, otherwise only validated), evaluates the
//! [`rules`] in order and forwards the **unchanged payload bytes** to each destination with two
//! added headers: `reflex-rule` (the matching rule) and `reflex-hops` (incremented). Anything it
//! cannot handle goes to the dead-letter topic with a reason: nothing is lost silently.
//!
//! Before anything else it applies the record limits (`max_value_bytes`, `max_headers`,
//! `max_header_bytes`) and, when `signing_keys` is set, verifies the event's
//! `reflex-signature` (and `max_event_age`): failures are dead-lettered as `unauthorized`
//! (see SECURITY.md).
//!
//! Start-up fails, naming file, line and rule, when the rule file is broken or a rule reads a
//! payload field that the registered schema of an input topic (`<topic>-value`) lacks.

pub mod decode;
pub mod rules;
pub mod stateful;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cel::common::types::{CelList, CelMap, CelMapKey, CelString};
use cel::common::value::Val;
use cel::Context;
use reflex_core::headers::{ce, reflex as rh, Headers};
use reflex_core::limits::RecordLimits;
use reflex_core::registry::{RegistryClient, RegistryError};
use reflex_core::signing::KeyRing;
use reflex_core::{metrics as m, ErrorClass};
use reflex_runtime::{Event, Output, RegistrySettings, Stage, StageError, StageSettings};
use serde::Deserialize;
use tracing::{info, warn};

use crate::rules::{Kind, OnLate, Rule, RuleAction, RuleError, RuleSet, Unmatched};
use crate::stateful::machine::{RECOVERY, TRIGGER};
use crate::stateful::{Effect, Engine, Observation, Reason, Source};

/// Embedded router defaults, layered over the runtime's.
pub const ROUTER_DEFAULTS: &str = include_str!("defaults.toml");

/// The router's whole configuration: the shared sections and `[router]`. The registry decodes
/// payloads and validates rules.
pub type RouterConfig = reflex_runtime::WorkerConfig<RouterSettings>;

impl StageSettings for RouterSettings {
    const SECTION: &'static str = "router";
    const DEFAULTS: &'static str = ROUTER_DEFAULTS;
    type Registry = RegistrySettings;
}

/// Router-specific settings (`[router]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterSettings {
    /// Path of the rule file (see the `rules` module docs for its format).
    pub rules_file: PathBuf,
    /// Events that already took this many Reflex hops are dead-lettered (loop guard).
    pub max_hops: u32,
    /// Validate rule payload fields against each input topic's registered `<topic>-value`
    /// schema at start-up. A topic with no registered subject is skipped with a warning.
    pub validate_rules_against_registry: bool,
    /// Keys that sign events, `<id>=env:NAME` or `<id>=file:PATH` (never the key inline). When
    /// set, every event must carry a valid `reflex-signature` by one of them; unsigned or badly
    /// signed events are dead-lettered as `unauthorized`. Several keys allow rotation.
    pub signing_keys: Vec<String>,
    /// Events whose `ce_time` is older than this are dead-lettered as `unauthorized` (replay
    /// guard; `ce_time` is signed when signing is on). `"0"` turns it off. Keep it above the
    /// horizon of legitimate dead-letter replays, which keep the original `ce_time`.
    #[serde(deserialize_with = "reflex_runtime::duration::deserialize")]
    pub max_event_age: Duration,
    /// Largest record value accepted; larger ones are dead-lettered. 0 turns it off.
    pub max_value_bytes: usize,
    /// Most headers on a record; more are dead-lettered. 0 turns it off.
    pub max_headers: usize,
    /// Largest total size of header names and values; larger are dead-lettered. 0 turns it off.
    pub max_header_bytes: usize,
    /// Key prefix of stateful rules' windows in Redis (`runtime.state_url`). Replicas of one
    /// router deployment share it; a different rule file (or a fresh replay) takes another.
    pub state_prefix: String,
    /// How often the ticker looks for windows whose timers are due with no new event (a quiet
    /// period ended, an absence deadline passed, events waited out their lateness).
    #[serde(deserialize_with = "reflex_runtime::duration::deserialize")]
    pub timer_interval: Duration,
    /// How long after its due time a timer fires by the wall clock: room for producers'
    /// clocks running behind and records still in transit. A timer waits anyway while its
    /// partition's oldest unread record is older than this (the router is catching up).
    #[serde(deserialize_with = "reflex_runtime::duration::deserialize")]
    pub timer_delay: Duration,
}

/// Why the router cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Rules(#[from] RuleError),
    #[error("cannot validate rules against the registry: {0}")]
    Registry(RegistryError),
    #[error("router.signing_keys: {0}")]
    Signing(#[from] reflex_core::signing::SigningError),
}

/// The router stage.
pub struct Router {
    rules: Arc<RuleSet>,
    /// Windows of stateful rules (`None` when the file has none).
    engine: Option<Arc<Engine>>,
    /// Where a late event of a `on_late = "dead-letter"` rule goes.
    late: LateDeadLetters,
    registry: RegistryClient,
    max_hops: u32,
    needs_payload: bool,
    /// Which of `ce`, `headers`, `key`, `topic` any rule reads: the others are not built.
    uses: [bool; 4],
    /// Kept across events: building a CEL root context (stdlib) per event would dominate.
    root: Context<'static, 'static>,
    /// Top-level payload fields the rules select; `None`: some rule uses `payload` whole, so
    /// everything is decoded. Building only these is most of the payload-rule cost saved.
    payload_fields: Option<HashSet<String>>,
    /// The `ce` attributes the rules select, as (attribute, header name); `None`: all of them.
    ce_fields: Option<Vec<(String, String)>>,
    /// `reflex_router_rule_matches_total` per rule, looked up once (the recorder is installed
    /// before the stage is built).
    matches: Vec<metrics::Counter>,
    /// Signature keys; empty means signatures are not required.
    keys: KeyRing,
    max_event_age: Duration,
    limits: RecordLimits,
}

/// What the router needs to dead-letter a late event itself (alongside other outputs).
#[derive(Debug, Clone)]
pub struct LateDeadLetters {
    pub worker: String,
    pub group: String,
    pub suffix: String,
    pub compat: Vec<reflex_core::dead_letter::Dialect>,
}

impl Default for LateDeadLetters {
    fn default() -> Self {
        Self {
            worker: "router".into(),
            group: String::new(),
            suffix: ".dlq".into(),
            compat: Vec::new(),
        }
    }
}

/// The union of the top-level fields the rules select in `variable` (`None`: used whole).
fn fields_read(rules: &RuleSet, variable: &str) -> Option<HashSet<String>> {
    let mut all = HashSet::new();
    for rule in &rules.rules {
        match rule.field_reads.get(variable) {
            None => {}
            Some(None) => return None,
            Some(Some(fields)) => all.extend(fields.iter().cloned()),
        }
    }
    Some(all)
}

impl Router {
    /// Builds a router from compiled rules (no registry checks; see [`Router::start`]).
    pub fn new(rules: RuleSet, registry: RegistryClient, max_hops: u32) -> Self {
        let uses = ["ce", "headers", "key", "topic"].map(|v| {
            rules
                .rules
                .iter()
                .any(|r| r.program.references().has_variable(v))
        });
        let ce_fields = fields_read(&rules, "ce").map(|fields| {
            fields
                .into_iter()
                .map(|f| {
                    let header = format!("ce_{f}");
                    (f, header)
                })
                .collect()
        });
        let matches = rules
            .rules
            .iter()
            .map(|r| metrics::counter!(m::RULE_MATCHES, "rule" => r.name.clone()))
            .collect();
        let engine = rules.rules.iter().any(|r| r.stateful.is_some()).then(|| {
            Arc::new(Engine::new(
                stateful::StateStore::memory(),
                DEFAULT_SPAN,
                Duration::from_secs(2),
            ))
        });
        Self {
            engine,
            late: LateDeadLetters::default(),
            uses,
            needs_payload: rules.needs_payload(),
            payload_fields: fields_read(&rules, "payload"),
            ce_fields,
            matches,
            rules: Arc::new(rules),
            registry,
            max_hops,
            root: Context::default(),
            keys: KeyRing::default(),
            max_event_age: Duration::ZERO,
            limits: RecordLimits::default(),
        }
    }

    /// Requires events signed by one of `keys` (none: not required).
    pub fn with_signing(mut self, keys: KeyRing) -> Self {
        self.keys = keys;
        self
    }

    /// Refuses events whose `ce_time` is older than `max_age` (zero: off).
    pub fn with_max_event_age(mut self, max_age: Duration) -> Self {
        self.max_event_age = max_age;
        self
    }

    pub fn with_limits(mut self, limits: RecordLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Keeps stateful rules' windows in `engine` (kept in process by default). Ignored when
    /// the rule file has no stateful rule.
    pub fn with_engine(mut self, engine: Engine) -> Self {
        if self.engine.is_some() {
            self.engine = Some(Arc::new(engine));
        }
        self
    }

    /// Where late events of `on_late = "dead-letter"` rules go.
    pub fn with_late_dead_letters(mut self, late: LateDeadLetters) -> Self {
        self.late = late;
        self
    }

    /// The compiled rules.
    pub fn rules(&self) -> &Arc<RuleSet> {
        &self.rules
    }

    /// The stateful rules' engine, when the file has stateful rules.
    pub fn engine(&self) -> Option<&Arc<Engine>> {
        self.engine.as_ref()
    }

    /// Signature and age checks (the router's door).
    fn authorize(&self, event: &Event) -> Result<(), StageError> {
        if !self.keys.is_empty() {
            self.keys
                .verify(&event.headers, event.payload.as_deref())
                .map_err(|e| StageError::new(ErrorClass::Unauthorized, e.to_string()))?;
        }
        if !self.max_event_age.is_zero() {
            let time = event.headers.get_str(ce::TIME).ok_or_else(|| {
                StageError::new(
                    ErrorClass::Unauthorized,
                    "event has no `ce_time` header, and router.max_event_age requires one",
                )
            })?;
            let at = chrono::DateTime::parse_from_rfc3339(time).map_err(|e| {
                StageError::permanent(format!("`ce_time` = `{time}` is not RFC 3339: {e}"))
            })?;
            let age_ms = (chrono::Utc::now() - at.with_timezone(&chrono::Utc)).num_milliseconds();
            if age_ms > self.max_event_age.as_millis() as i64 {
                return Err(StageError::new(
                    ErrorClass::Unauthorized,
                    format!(
                        "event is {age_ms} ms old (ce_time {time}), over router.max_event_age = {}: a replay or a stale event",
                        reflex_runtime::duration::format(self.max_event_age)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Loads the rule file and validates it against the registered schemas of `input_topics`.
    pub async fn start(
        settings: &RouterSettings,
        registry: RegistryClient,
        input_topics: &[String],
    ) -> Result<Self, StartError> {
        let rules = RuleSet::load(&settings.rules_file)?;
        if settings.validate_rules_against_registry {
            for topic in input_topics {
                let subject = format!("{topic}-value");
                match registry.latest(&subject).await {
                    Ok(latest) => rules.check_schema(topic, &subject, &latest.schema)?,
                    Err(RegistryError::UnknownSubject { .. }) => warn!(
                        topic = %topic, subject = %subject,
                        "no schema registered for the input topic: rule payload fields are not validated for it"
                    ),
                    Err(e) => return Err(StartError::Registry(e)),
                }
            }
        }
        info!(file = %settings.rules_file.display(), rules = rules.rules.len(), "rules loaded");
        let keys = KeyRing::from_specs(&settings.signing_keys)?;
        if keys.is_empty() {
            info!("router.signing_keys is empty: event signatures are not checked");
        } else {
            info!(key_ids = ?keys.ids(), "event signatures required");
        }
        Ok(Self::new(rules, registry, settings.max_hops)
            .with_signing(keys)
            .with_max_event_age(settings.max_event_age)
            .with_limits(RecordLimits {
                max_value_bytes: settings.max_value_bytes,
                max_headers: settings.max_headers,
                max_header_bytes: settings.max_header_bytes,
            }))
    }

    /// Evaluates the rules (CEL only; stateful rules' windows are applied after, in
    /// [`Router::observe_all`]).
    fn decide(
        &self,
        event: &Event,
        payload: Option<cel::Value>,
    ) -> Result<Decision<'_>, StageError> {
        // The scope's values may borrow from the event and the router (a shorter value lifetime
        // than the root's): the selected `ce` attributes are built without copying them.
        let root: &Context<'_, '_> = &self.root;
        let mut ctx = root.new_inner_scope();
        let [uses_ce, uses_headers, uses_key, uses_topic] = self.uses;
        if uses_ce {
            match &self.ce_fields {
                Some(fields) => {
                    let mut map: HashMap<CelMapKey<'_>, Box<dyn Val + '_>> =
                        HashMap::with_capacity(fields.len());
                    for (key, header) in fields {
                        if let Some(v) = event.headers.get_str(header) {
                            map.insert(
                                CelMapKey::String(CelString::from(key.as_str())),
                                Box::new(CelString::from(v)),
                            );
                        }
                    }
                    ctx.add_variable_as_val("ce", Box::new(CelMap::from(map)));
                }
                None => {
                    let ce_map: HashMap<String, String> = event
                        .headers
                        .ce_attributes()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect();
                    ctx.add_variable_from_value("ce", ce_map);
                }
            }
        }
        if uses_headers {
            let headers: HashMap<String, String> = event
                .headers
                .iter()
                .filter_map(|h| {
                    let value = std::str::from_utf8(h.value.as_deref()?).ok()?;
                    Some((h.key.to_string(), value.to_string()))
                })
                .collect();
            ctx.add_variable_from_value("headers", headers);
        }
        if uses_topic {
            ctx.add_variable_from_value("topic", event.topic.clone());
        }
        if uses_key {
            let key = event
                .key
                .as_ref()
                .map(|k| String::from_utf8_lossy(k).into_owned());
            ctx.add_variable_from_value(
                "key",
                key.map(cel::Value::from).unwrap_or(cel::Value::Null),
            );
        }
        if let Some(payload) = payload {
            ctx.add_variable_as_val("payload", into_val(payload));
        }

        let mut destinations: Vec<(&str, &str)> = Vec::new();
        let mut observations: Vec<(&Rule, String, u32)> = Vec::new();
        for (rule, matches) in self
            .rules
            .rules
            .iter()
            .zip(&self.matches)
            .filter(|(r, _)| r.applies_to(&event.topic))
        {
            let matched = self.eval_bool(rule, &rule.program, &ctx, "")?;
            if let Some(spec) = &rule.stateful {
                let flags = match spec.kind {
                    Kind::All { .. } if matched => {
                        let mut flags = 0;
                        for (i, condition) in spec.conditions.iter().enumerate() {
                            if self.eval_bool(rule, condition, &ctx, " (all condition)")? {
                                flags |= 1 << i;
                            }
                        }
                        flags
                    }
                    Kind::All { .. } => 0,
                    Kind::Absent { .. } => {
                        let recovered =
                            self.eval_bool(rule, &spec.conditions[0], &ctx, " (absent.recovery)")?;
                        (if matched { TRIGGER } else { 0 }) | (if recovered { RECOVERY } else { 0 })
                    }
                    _ => u32::from(matched),
                };
                if flags == 0 {
                    continue;
                }
                let triggered = matches!(spec.kind, Kind::All { .. }) || flags & TRIGGER != 0;
                if triggered {
                    matches.increment(1);
                    self.guard_loop(event, rule)?;
                }
                let group = self.eval_group(rule, &spec.group_by, &ctx)?;
                observations.push((rule, group, flags));
                if triggered && !rule.keep_going {
                    break;
                }
                continue;
            }
            if !matched {
                continue;
            }
            matches.increment(1);
            match &rule.action {
                RuleAction::Route(topics) => {
                    self.guard_loop(event, rule)?;
                    destinations.extend(topics.iter().map(|t| (t.as_str(), rule.name.as_str())))
                }
                RuleAction::Drop => {
                    return Ok(Decision::Dropped {
                        rule: Some(rule.name.clone()),
                    })
                }
                RuleAction::DeadLetter => {
                    return Err(StageError::permanent(format!(
                        "rule `{}` dead-letters this event",
                        rule.name
                    )))
                }
            }
            if !rule.keep_going {
                break;
            }
        }
        if destinations.is_empty() && observations.is_empty() {
            return match self.rules.unmatched {
                Unmatched::Drop => Ok(Decision::Dropped { rule: None }),
                Unmatched::DeadLetter => Err(StageError::permanent(
                    "no rule matched and unmatched = \"dead-letter\"",
                )),
            };
        }
        Ok(Decision::Go {
            outputs: self.forward_all(event, destinations),
            observations,
        })
    }

    fn eval_bool(
        &self,
        rule: &Rule,
        program: &cel::Program,
        ctx: &Context<'_, '_>,
        what: &str,
    ) -> Result<bool, StageError> {
        match program.execute(ctx) {
            Ok(cel::Value::Bool(b)) => Ok(b),
            Ok(other) => Err(StageError::permanent(format!(
                "rule `{}`{what} ({}:{}) returned {other:?}, not a bool",
                rule.name,
                self.rules.file.display(),
                rule.line
            ))),
            Err(e) => Err(StageError::permanent(format!(
                "rule `{}`{what} ({}:{}) failed on this event: {e}",
                rule.name,
                self.rules.file.display(),
                rule.line
            ))),
        }
    }

    /// The `group_by` value: a string, or a number or bool written as text.
    fn eval_group(
        &self,
        rule: &Rule,
        program: &cel::Program,
        ctx: &Context<'_, '_>,
    ) -> Result<String, StageError> {
        let fail = |what: String| {
            StageError::permanent(format!(
                "rule `{}` ({}:{}): group_by {what}",
                rule.name,
                self.rules.file.display(),
                rule.line
            ))
        };
        match program.execute(ctx) {
            Ok(cel::Value::String(s)) => Ok(s.to_string()),
            Ok(cel::Value::Int(i)) => Ok(i.to_string()),
            Ok(cel::Value::UInt(i)) => Ok(i.to_string()),
            Ok(cel::Value::Bool(b)) => Ok(b.to_string()),
            Ok(other) => Err(fail(format!("returned {other:?}: it must give a string"))),
            Err(e) => Err(fail(format!("failed on this event: {e}"))),
        }
    }

    /// A chain that comes back to a rule is an automation loop.
    fn guard_loop(&self, event: &Event, rule: &Rule) -> Result<(), StageError> {
        let visited = event.headers.rules_visited();
        if visited.contains(&rule.name.as_str()) {
            return Err(StageError::permanent(format!(
                "automation loop: rule `{}` already handled this chain (rules visited: {})",
                rule.name,
                visited.join(" -> ")
            )));
        }
        Ok(())
    }

    /// The event forwarded to each (topic, rule), unchanged but for the router's headers.
    fn forward_all(&self, event: &Event, mut destinations: Vec<(&str, &str)>) -> Vec<Output> {
        if destinations.is_empty() {
            return Vec::new();
        }
        if destinations.len() > 1 {
            // The same topic named by two matching rules gets the event once.
            let mut seen = HashSet::new();
            destinations.retain(|(topic, _)| seen.insert(*topic));
        }
        // The event's headers without the three the router rewrites, built once for every
        // output (header values are shared `Bytes`, so the per-output clone copies no data).
        let mut base = Headers::with_capacity(event.headers.len() + 3);
        base.0.extend(
            event
                .headers
                .iter()
                .filter(|h| h.key != rh::RULE && h.key != rh::HOPS && h.key != rh::RULES_VISITED)
                .cloned(),
        );
        let hops = Bytes::from((event.headers.hops() + 1).to_string());
        let visited = event.headers.rules_visited();
        let count = destinations.len();
        let mut outputs = Vec::with_capacity(count);
        for (i, (topic, rule)) in destinations.into_iter().enumerate() {
            let mut headers = if i + 1 == count {
                std::mem::take(&mut base)
            } else {
                base.clone()
            };
            headers.push(rh::RULE, rule.to_owned());
            headers.push(rh::HOPS, hops.clone());
            let chain = if visited.is_empty() {
                rule.to_owned()
            } else {
                format!("{},{rule}", visited.join(","))
            };
            headers.push(rh::RULES_VISITED, chain);
            outputs.push(Output {
                topic: topic.to_string(),
                partition: None,
                key: event.key.clone(),
                payload: event.payload.clone(),
                headers,
            });
        }
        outputs
    }

    /// Applies the event to the windows of the stateful rules it concerns; the firings'
    /// outputs (and the event's dead letter when it came too late for a rule that says so).
    async fn observe_all(
        &self,
        event: &Event,
        observations: Vec<(&Rule, String, u32)>,
    ) -> Result<(Vec<Output>, Vec<WindowNote>), StageError> {
        let mut outputs = Vec::new();
        let mut notes = Vec::new();
        if observations.is_empty() {
            return Ok((outputs, notes));
        }
        let engine = self
            .engine
            .as_ref()
            .expect("a rule file with stateful rules has an engine");
        let time = stateful::event_time(event)?;
        let id = event
            .headers
            .get_str(reflex_core::headers::ce::ID)
            .unwrap_or_default();
        let record = stateful::store_event(event);
        let mut late = Vec::new();
        for (rule, group, flags) in observations {
            let spec = rule
                .stateful
                .as_ref()
                .expect("observations come from stateful rules");
            let observation = Observation {
                time,
                id: id.to_string(),
                source: Source {
                    topic: event.topic.clone(),
                    partition: event.partition,
                    offset: event.offset,
                },
                flags,
                record: record.clone(),
            };
            let observed = engine
                .observe(&rule.name, spec, &group, observation)
                .await
                .map_err(|e| StageError::new(e.class, e.to_string()))?;
            stateful::count(&rule.name, &observed.effects);
            let topics = match &rule.action {
                RuleAction::Route(topics) => topics.as_slice(),
                _ => &[],
            };
            for effect in &observed.effects {
                match effect {
                    Effect::Fired(firing) => {
                        outputs.extend(stateful::firing_outputs(&rule.name, topics, &group, firing))
                    }
                    Effect::Suppressed(Reason::Late) => {
                        let message = format!(
                            "late for rule `{}` (group `{group}`): event time {} is behind the group's watermark, beyond the allowed lateness of {}",
                            rule.name,
                            stateful::rfc3339(time),
                            reflex_runtime::duration::format(spec.lateness)
                        );
                        match spec.on_late {
                            OnLate::DeadLetter => late.push(message),
                            OnLate::Drop => {
                                warn!(rule = %rule.name, "{message}: dropped (on_late = \"drop\")")
                            }
                        }
                    }
                    Effect::Suppressed(_) => {}
                }
            }
            for firing in &observed.again {
                outputs.extend(stateful::firing_outputs(&rule.name, topics, &group, firing));
            }
            notes.push(WindowNote {
                rule: rule.name.clone(),
                group,
                effects: observed.effects,
            });
        }
        if !late.is_empty() {
            let error = StageError::permanent(late.join("; "));
            let ctx = reflex_runtime::dead_letter::FailureContext {
                stage: "router",
                worker: &self.late.worker,
                group: &self.late.group,
                attempts: 1,
                first_failure_ms: chrono::Utc::now().timestamp_millis(),
                retry_not_before_ms: None,
                dead_letter_suffix: &self.late.suffix,
                compat: &self.late.compat,
            };
            outputs.push(reflex_runtime::dead_letter::dead_letter(
                event, &error, &ctx,
            ));
        }
        Ok((outputs, notes))
    }

    /// Everything for one event: checks, rules, windows.
    async fn handle(&self, event: &Event) -> Result<Verdict, StageError> {
        let payload = self.check_and_decode(event).await?;
        match self.decide(event, payload)? {
            Decision::Dropped { rule } => Ok(Verdict::Dropped { rule }),
            Decision::Go {
                mut outputs,
                observations,
            } => {
                let (fired, windows) = self.observe_all(event, observations).await?;
                outputs.extend(fired);
                if outputs.is_empty() {
                    Ok(Verdict::Absorbed(windows))
                } else {
                    Ok(Verdict::Routed { outputs, windows })
                }
            }
        }
    }

    /// What the rules decide for one event, without producing anything: the outputs it would
    /// route (each with its `reflex-rule` header), or which rule dropped it. Errors are what
    /// [`Stage::process`] would dead-letter. Shadow mode (`reflexctl rules test`) uses this.
    /// Stateful rules' windows are applied (to the engine's store: in process unless
    /// [`Router::with_engine`] gave another).
    pub async fn verdict(&self, event: &Event) -> Result<Verdict, StageError> {
        self.handle(event).await
    }

    /// Envelope, hop limit, framing, schema id and datum checks; the decoded payload when a
    /// rule reads it.
    async fn check_and_decode(&self, event: &Event) -> Result<Option<cel::Value>, StageError> {
        // Cheap checks first, so a hostile record costs little.
        self.limits
            .check("router", &event.headers, event.payload.as_deref())
            .map_err(StageError::permanent)?;
        self.authorize(event)?;
        event.require_cloudevent()?;
        let hops = event.headers.hops();
        if hops >= self.max_hops {
            return Err(StageError::permanent(format!(
                "event took {hops} Reflex hops (limit router.max_hops = {}): probably an automation loop",
                self.max_hops
            )));
        }
        let (framed, schema) = event.framed_value(&self.registry).await?;
        if self.needs_payload {
            Ok(Some(
                match &self.payload_fields {
                    Some(fields) => decode::to_cel_fields(framed.datum, &schema.fast, fields),
                    None => decode::to_cel(framed.datum, &schema.fast),
                }
                .map_err(|e| undecodable(framed.schema_id, &e))?,
            ))
        } else {
            decode::validate(framed.datum, &schema.fast)
                .map_err(|e| undecodable(framed.schema_id, &e))?;
            Ok(None)
        }
    }
}

/// The rules' decision for one event (see [`Router::verdict`]).
#[derive(Debug)]
pub enum Verdict {
    /// Forwarded to these outputs (one per destination topic; a stateful rule's firing, a late
    /// event's dead letter), with what the event did to windows.
    Routed {
        outputs: Vec<Output>,
        windows: Vec<WindowNote>,
    },
    /// Sent nowhere: by this `drop` rule, or (`None`) because no rule matched and
    /// `unmatched = "drop"`.
    Dropped { rule: Option<String> },
    /// Taken by stateful rules' windows without a firing (suppressed, counted).
    Absorbed(Vec<WindowNote>),
}

/// What an event did to one stateful rule's window.
#[derive(Debug, Clone)]
pub struct WindowNote {
    pub rule: String,
    pub group: String,
    pub effects: Vec<Effect>,
}

/// The rules' decision before windows are applied.
enum Decision<'r> {
    Go {
        outputs: Vec<Output>,
        observations: Vec<(&'r Rule, String, u32)>,
    },
    Dropped {
        rule: Option<String>,
    },
}

/// Offsets of one partition the router can have in flight at once stay below this when
/// [`Router::with_engine`] is not told otherwise (runtime.max_in_flight's default is 2000).
pub const DEFAULT_SPAN: i64 = 1 << 16;

impl Stage for Router {
    fn name(&self) -> &'static str {
        "router"
    }

    async fn process(&self, event: &Event) -> Result<Vec<Output>, StageError> {
        let payload = self.check_and_decode(event).await?;
        match self.decide(event, payload)? {
            Decision::Dropped { .. } => Ok(Vec::new()),
            Decision::Go {
                mut outputs,
                observations,
            } => {
                if !observations.is_empty() {
                    outputs.extend(self.observe_all(event, observations).await?.0);
                }
                Ok(outputs)
            }
        }
    }
}

/// A record (headers as received) forwarded to `topic` by `rule`: the router's three headers
/// rewritten (`reflex-rule`, `reflex-hops` + 1, `reflex-rules-visited` + rule), the rest kept.
pub(crate) fn forward(
    headers: &Headers,
    key: Option<Bytes>,
    payload: Option<Bytes>,
    topic: &str,
    rule: &str,
) -> Output {
    let mut out = Headers::with_capacity(headers.len() + 3);
    out.0.extend(
        headers
            .iter()
            .filter(|h| h.key != rh::RULE && h.key != rh::HOPS && h.key != rh::RULES_VISITED)
            .cloned(),
    );
    out.push(rh::RULE, rule.to_owned());
    out.push(rh::HOPS, (headers.hops() + 1).to_string());
    let visited = headers.rules_visited();
    out.push(
        rh::RULES_VISITED,
        if visited.is_empty() {
            rule.to_owned()
        } else {
            format!("{},{rule}", visited.join(","))
        },
    );
    Output {
        topic: topic.to_string(),
        partition: None,
        key,
        payload,
        headers: out,
    }
}

/// A decoded value as the CEL context stores it. `Context::add_variable_from_value` does this
/// by cloning every map and list first; the decoded payload is ours, so it is moved instead.
fn into_val(value: cel::Value) -> Box<dyn Val> {
    match value {
        cel::Value::Map(map) => {
            let map = Arc::try_unwrap(map.map).unwrap_or_else(|shared| (*shared).clone());
            let map: HashMap<CelMapKey<'static>, Box<dyn Val>> = map
                .into_iter()
                .map(|(k, v)| (CelMapKey::from(k), into_val(v)))
                .collect();
            Box::new(CelMap::from(map))
        }
        cel::Value::List(items) => {
            let items = Arc::try_unwrap(items).unwrap_or_else(|shared| (*shared).clone());
            Box::new(CelList::from(
                items.into_iter().map(into_val).collect::<Vec<_>>(),
            ))
        }
        // Scalars: what `add_variable_from_value` does (decoded Avro has no other kind).
        other => other
            .try_into()
            .expect("a decoded Avro value converts to a CEL value"),
    }
}

fn undecodable(schema_id: u32, error: &str) -> StageError {
    StageError::new(
        ErrorClass::Poison,
        format!("value does not decode with its schema id {schema_id}: {error} (corrupt bytes, or written with another schema)"),
    )
}

/// The router's part of the shared `main`: its config (loaded, checked, Kafka secrets
/// resolved by [`RouterConfig::load`]), started and run until `shutdown`.
pub async fn run(
    config: RouterConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let registry = config.registry.client();
    let router = Router::start(&config.stage, registry, &config.kafka.input_topics).await?;
    let runtime = &config.runtime;
    let router = router.with_late_dead_letters(LateDeadLetters {
        worker: if runtime.worker_id.is_empty() {
            format!("router-{}", std::process::id())
        } else {
            runtime.worker_id.clone()
        },
        group: config.kafka.group_id.clone(),
        suffix: runtime.dead_letter_suffix.clone(),
        compat: runtime
            .dead_letter_compat
            .iter()
            .map(|d| d.dialect())
            .collect(),
    });
    let mut ticker = None;
    let router = if router.engine().is_some() {
        let store = if runtime.state_url.is_empty() {
            warn!("stateful rules keep their windows in this process (runtime.state_url is empty): they are lost on restart and not shared by replicas; set runtime.state_url for production");
            stateful::StateStore::memory()
        } else {
            let conn = reflex_core::redis_conn::connect(&runtime.state_url)
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "stateful rules need their state store: cannot open runtime.state_url {}: {e} ({})",
                        reflex_core::redis_conn::redact_url(&runtime.state_url),
                        reflex_core::redis_conn::connect_hint(&runtime.state_url, &e)
                    )
                })?;
            stateful::StateStore::redis(conn, &config.stage.state_prefix)
        };
        // Offsets of one partition in flight at once stay below max_in_flight.
        let span = (runtime.max_in_flight as i64).saturating_mul(2).max(1024);
        let router = router.with_engine(Engine::new(store, span, config.stage.timer_delay));
        if let Some(engine) = router.engine() {
            let t = stateful::ticker::Ticker {
                rules: router.rules().clone(),
                engine: engine.clone(),
            };
            ticker = Some(tokio::spawn(
                t.run(config.kafka.clone(), config.stage.timer_interval),
            ));
        }
        router
    } else {
        router
    };
    let result = reflex_runtime::run(router, &config.kafka, &config.runtime, shutdown).await;
    if let Some(t) = ticker {
        t.abort();
    }
    result?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use reflex_core::Headers;
    use std::path::Path;

    const SCHEMA: &str = include_str!("../../../avro/k8s_pod_event.avsc");

    fn router(rules: &str) -> Router {
        // Nothing listens on port 9: any registry call would fail, so the cache must serve.
        let registry = RegistryClient::new(
            "http://127.0.0.1:9",
            Duration::from_millis(200),
            Duration::from_secs(1),
        );
        registry.preload(7, SCHEMA).unwrap();
        Router::new(
            RuleSet::parse(Path::new("r.toml"), rules).unwrap(),
            registry,
            3,
        )
    }

    fn event(restart_count: i32, with_ce: bool) -> Event {
        let schema = reflex_core::avro::parse_schema(SCHEMA).unwrap();
        let json = serde_json::json!({"cluster": "c", "namespace": "n", "pod": "p", "reason": "CrashLoopBackOff",
            "restart_count": restart_count, "seq": 1, "rollout_in_progress": false, "labels": {}});
        let value = reflex_core::wire::encode_frame(
            7,
            &reflex_core::avro::json_to_datum(&schema, &json).unwrap(),
        );
        let mut headers = Headers::new();
        if with_ce {
            for (k, v) in [
                ("ce_specversion", "1.0"),
                ("ce_id", "e1"),
                ("ce_source", "s"),
                ("ce_type", "crash"),
            ] {
                headers.push(k, v);
            }
        }
        Event {
            topic: "in".into(),
            partition: 0,
            offset: 1,
            timestamp_ms: None,
            key: Some(Bytes::from_static(b"p")),
            payload: Some(Bytes::from(value)),
            headers,
        }
    }

    const RULES: &str = "[[rule]]\nname = \"crash\"\nwhen = 'ce.type == \"crash\" && payload.restart_count >= 3'\nto = [\"a\", \"b\"]\n";

    #[tokio::test]
    async fn matching_event_fans_out_unchanged_with_rule_and_hop_headers() {
        let r = router(RULES);
        let e = event(5, true);
        let outputs = r.process(&e).await.unwrap();
        assert_eq!(
            outputs.iter().map(|o| o.topic.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        for o in &outputs {
            assert_eq!(o.payload, e.payload);
            assert_eq!(o.key, e.key);
            assert_eq!(o.headers.get_str(rh::RULE), Some("crash"));
            assert_eq!(o.headers.get_str(rh::HOPS), Some("1"));
            assert_eq!(o.headers.get_str("ce_id"), Some("e1"));
        }
        assert!(
            r.process(&event(1, true)).await.unwrap().is_empty(),
            "unmatched is dropped"
        );
    }

    #[tokio::test]
    async fn envelope_framing_and_loops_fail_with_their_class() {
        let r = router(RULES);
        let err = r.process(&event(5, false)).await.unwrap_err();
        assert_eq!(err.class, ErrorClass::Permanent);
        assert!(err.message.contains("ce_specversion"), "{}", err.message);

        let mut e = event(5, true);
        e.payload = Some(Bytes::from_static(b"{\"json\": true}"));
        assert_eq!(r.process(&e).await.unwrap_err().class, ErrorClass::Poison);

        let mut e = event(5, true);
        let mut bytes = e.payload.as_ref().unwrap().to_vec();
        bytes.truncate(7);
        e.payload = Some(Bytes::from(bytes));
        assert_eq!(r.process(&e).await.unwrap_err().class, ErrorClass::Poison);

        let mut e = event(5, true);
        e.headers.set(rh::HOPS, "3");
        let err = r.process(&e).await.unwrap_err();
        assert!(err.message.contains("max_hops"), "{}", err.message);

        // An id the (unreachable) registry must be asked for is a transient failure, retried.
        let mut e = event(5, true);
        let mut bytes = e.payload.as_ref().unwrap().to_vec();
        bytes[4] = 8;
        e.payload = Some(Bytes::from(bytes));
        assert_eq!(
            r.process(&e).await.unwrap_err().class,
            ErrorClass::Transient
        );
    }

    #[tokio::test]
    async fn a_chain_that_comes_back_to_a_rule_is_a_loop() {
        let r = router(RULES);
        let first = r.process(&event(5, true)).await.unwrap();
        assert_eq!(first[0].headers.get_str(rh::RULES_VISITED), Some("crash"));
        let mut again = event(5, true);
        again.headers.set(rh::RULES_VISITED, "other,crash");
        let err = r.process(&again).await.unwrap_err();
        assert_eq!(err.class, ErrorClass::Permanent);
        assert!(
            err.message.contains("automation loop") && err.message.contains("other -> crash"),
            "{}",
            err.message
        );
        let mut elsewhere = event(5, true);
        elsewhere.headers.set(rh::RULES_VISITED, "other");
        let out = r.process(&elsewhere).await.unwrap();
        assert_eq!(
            out[0].headers.get_str(rh::RULES_VISITED),
            Some("other,crash")
        );
    }

    #[tokio::test]
    async fn verdict_names_the_rule_that_dropped_an_event() {
        let r = router("[[rule]]\nname = \"quiet\"\nwhen = 'payload.restart_count < 3'\naction = \"drop\"\n[[rule]]\nname = \"loud\"\nwhen = 'payload.restart_count > 8'\nto = [\"a\"]\n");
        let rule_of = |v: Verdict| match v {
            Verdict::Dropped { rule } => rule,
            Verdict::Routed { outputs, .. } => Some(format!("routed to {}", outputs[0].topic)),
            Verdict::Absorbed(_) => Some("absorbed".into()),
        };
        assert_eq!(
            rule_of(r.verdict(&event(1, true)).await.unwrap()).as_deref(),
            Some("quiet")
        );
        assert_eq!(
            rule_of(r.verdict(&event(5, true)).await.unwrap()),
            None,
            "unmatched"
        );
        assert_eq!(
            rule_of(r.verdict(&event(9, true)).await.unwrap()).as_deref(),
            Some("routed to a")
        );
        assert!(
            r.verdict(&event(9, false)).await.is_err(),
            "same checks as process"
        );
    }

    #[tokio::test]
    async fn signatures_are_required_when_keys_are_set() {
        use reflex_core::signing::SigningKey;
        let k1 = SigningKey::new("k1", b"0123456789abcdef-1").unwrap();
        let k2 = SigningKey::new("k2", b"0123456789abcdef-2").unwrap();
        let r = router(RULES).with_signing(KeyRing::new(vec![k1.clone()]).unwrap());
        let unsigned = event(5, true);
        let err = r.process(&unsigned).await.unwrap_err();
        assert_eq!(err.class, ErrorClass::Unauthorized);
        assert!(err.message.contains("not signed"), "{}", err.message);

        let mut good = event(5, true);
        k1.sign(&mut good.headers, good.payload.as_deref());
        assert_eq!(r.process(&good).await.unwrap().len(), 2);

        let mut tampered = good.clone();
        let mut bytes = tampered.payload.as_ref().unwrap().to_vec();
        *bytes.last_mut().unwrap() ^= 1;
        tampered.payload = Some(Bytes::from(bytes));
        let err = r.process(&tampered).await.unwrap_err();
        assert_eq!(err.class, ErrorClass::Unauthorized);
        assert!(err.message.contains("does not match"), "{}", err.message);

        let mut other_key = event(5, true);
        k2.sign(&mut other_key.headers, other_key.payload.as_deref());
        let err = r.process(&other_key).await.unwrap_err();
        assert_eq!(err.class, ErrorClass::Unauthorized);
        assert!(
            err.message.contains("unknown key id `k2`"),
            "{}",
            err.message
        );
    }

    #[tokio::test]
    async fn stale_events_and_oversized_records_are_refused() {
        let r = router(RULES).with_max_event_age(Duration::from_secs(60));
        let mut old = event(5, true);
        old.headers.set(ce::TIME, "2020-01-01T00:00:00Z");
        let err = r.process(&old).await.unwrap_err();
        assert_eq!(err.class, ErrorClass::Unauthorized);
        assert!(err.message.contains("max_event_age"), "{}", err.message);
        let mut fresh = event(5, true);
        fresh.headers.set(ce::TIME, chrono::Utc::now().to_rfc3339());
        assert_eq!(r.process(&fresh).await.unwrap().len(), 2);

        let r = router(RULES).with_limits(RecordLimits {
            max_value_bytes: 16,
            max_headers: 8,
            max_header_bytes: 1024,
        });
        let err = r.process(&event(5, true)).await.unwrap_err();
        assert_eq!(err.class, ErrorClass::Permanent);
        assert!(
            err.message.contains("router.max_value_bytes"),
            "{}",
            err.message
        );
    }

    #[tokio::test]
    async fn dead_letter_rules_and_unmatched_dead_letter() {
        let r = router("unmatched = \"dead-letter\"\n[[rule]]\nname = \"oom\"\nwhen = 'payload.reason == \"OOMKilled\"'\naction = \"dead-letter\"\n");
        let err = r.process(&event(5, true)).await.unwrap_err();
        assert!(err.message.contains("no rule matched"), "{}", err.message);
    }
}
