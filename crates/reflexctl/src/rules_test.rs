//! `reflexctl rules test`: shadow mode for a scenario pack.
//!
//! Recorded events (JSON, as `reflexctl publish` takes them) go through the pack's real worker
//! code, in process, with nothing called: the router's [`Router::verdict`] (envelope, decoding,
//! CEL rules), then the enricher's stage (file lookups answer from their tables; Redis and HTTP
//! lookups are not called, so such packs stop at the bindings they select), then the actor's
//! compiled action templates render the call it would make, escaped and checked by the same code
//! the actor runs ([`reflex_actor::call`]), with templates using `raw` marked. Guardrails that can be known
//! without Redis are applied: dry run (worker, action or request), approval (the action's
//! `approval` and its `when`, evaluated on the request) and the blast-radius cap, counted over
//! the file as if the window had just started. With a policy file
//! (`actor.policy_file` of the pack's actor config, or `--policy`), each request is decided by
//! the actor's own evaluator ([`reflex_actor::policy`]) at `--now` (default: the current time),
//! and shown as allowed or `DENIED_BY_POLICY` with the policy that denied it. Nothing is produced, claimed or
//! sent; the registry is not asked either (the pack's own schema files are used).
//!
//! A pack is a directory with `pack.toml` (how its events are published), `router.toml`,
//! `enricher.toml`, `actor.toml` (worker configs, paths in them relative to the working
//! directory, as the workers read them) and `topics/*.toml` (declarations naming the value
//! schema of the events topic).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use reflex_actor::call::{self, Call};
use reflex_actor::config::{compile, Action};
use reflex_actor::policy::{Decision, EventAttrs, Policies};
use reflex_actor::ActorConfig;
use reflex_core::actions::{ActionRequest, AvroCodec, ACTION_REQUEST_SCHEMA};
use reflex_core::headers::ce;
use reflex_core::headers::reflex as rh;
use reflex_core::registry::RegistryClient;
use reflex_core::template::Templates;
use reflex_core::wire::encode_frame;
use reflex_enricher::lookup::Source;
use reflex_enricher::spec::Spec;
use reflex_enricher::{EnricherConfig, OutputSettings};
use reflex_router::rules::{RuleSet, Unmatched};
use reflex_router::stateful::ticker::{Collect, Ticker};
use reflex_router::stateful::{Effect, Engine, StateStore};
use reflex_router::{Router, RouterConfig, Verdict, WindowNote};
use reflex_runtime::{Event, Output, Stage};
use reflex_runtime::{StageSettings, WorkerConfig};
use serde::Deserialize;

use crate::publish::{encode, event_headers, key_from_field, parse_documents, parse_header_args};

pub const LONG_ABOUT: &str = "Shadow mode for rules: run recorded events through a scenario \
pack's router rules, enricher bindings and actor actions, in process, with every action \
stubbed, and print per event what would happen: the matching rule and destination topics (or \
which rule dropped or dead-lettered it), the action requests the enricher would bind, and the \
call the actor would make (method, URL, headers, body; every value escaped exactly as the actor \
escapes it, or the refusal the actor would dead-letter), or DRY_RUN / HELD / PENDING_APPROVAL \
when a guardrail holds it or a person must approve it, or DENIED_BY_POLICY naming the policy when the actor's policy file (actor.policy_file, \
or --policy FILE) denies it, decided at --now (default: the current time). Templates using `raw` (unescaped values) are listed as warnings and marked under \
the calls they shape. The blast-radius cap is counted over the file as if its window had just started. \
Nothing is produced and no broker, registry, Redis or target is contacted.\n\n\
The pack directory holds pack.toml ([events] topic, type, source, key_field, file), \
router.toml, enricher.toml, actor.toml and topics/*.toml; run it from where the workers run \
(paths inside the worker configs are relative to the working directory). Events are JSON \
documents, one per line, exactly as `reflexctl publish` takes them; each gets ce_id <id>-<n>.\n\n\
Examples:\n  \
reflexctl rules test examples/crash-loop --events examples/crash-loop/events.jsonl\n  \
reflexctl rules test examples/host-quarantine --events new.jsonl --type io.security.host.compromised";

#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Run recorded events through a pack's rules with actions stubbed (shadow mode).
    #[command(long_about = LONG_ABOUT)]
    Test(RulesTestArgs),
}

#[derive(Debug, Args)]
pub struct RulesTestArgs {
    /// The scenario pack directory, e.g. examples/crash-loop.
    pub pack: PathBuf,
    /// Recorded events: JSON documents, one per line (default: the pack's `[events] file`).
    #[arg(long)]
    pub events: Option<PathBuf>,
    /// Topic the events arrive on (default: the pack's `[events] topic`).
    #[arg(long)]
    pub topic: Option<String>,
    /// CloudEvents type, ce_type (default: the pack's `[events] type`).
    #[arg(long = "type")]
    pub event_type: Option<String>,
    /// CloudEvents source, ce_source (default: the pack's `[events] source`).
    #[arg(long)]
    pub source: Option<String>,
    /// Take each event's key from this JSON field (default: the pack's `[events] key_field`).
    #[arg(long)]
    pub key_field: Option<String>,
    /// ce_id prefix: event n gets `<id>-<n>`.
    #[arg(long, default_value = "event")]
    pub id: String,
    /// Extra header `name=value` (repeatable), as in `reflexctl publish`.
    #[arg(long = "header", value_name = "NAME=VALUE")]
    pub headers: Vec<String>,
    /// Virtual clock: event time (ce_time) of the first event, RFC 3339.
    #[arg(long, default_value = "2026-01-01T00:00:00Z")]
    pub start: String,
    /// Virtual clock: event n arrives at start + (n - 1) × this (e.g. "1s", "250ms").
    #[arg(long, default_value = "1s")]
    pub every: String,
    /// Virtual clock: after the last event, let this much time pass so timers fire (quiet
    /// periods, absence deadlines). Default: the longest window plus its lateness and
    /// router.timer_delay.
    #[arg(long)]
    pub then: Option<String>,
    /// Cedar policy file to decide each request with (default: the actor config's
    /// `actor.policy_file`; none when that is empty).
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// The time policies see as `context.now` (RFC 3339, e.g. 2026-12-05T23:00:00Z; default:
    /// the current time), to try business-hours policies.
    #[arg(long, value_name = "TIME")]
    pub now: Option<String>,
}

impl RulesTestArgs {
    /// The defaults of the command line for `pack`.
    pub fn for_pack(pack: impl Into<PathBuf>) -> Self {
        RulesTestArgs {
            pack: pack.into(),
            events: None,
            topic: None,
            event_type: None,
            source: None,
            key_field: None,
            id: "event".into(),
            headers: Vec::new(),
            start: "2026-01-01T00:00:00Z".into(),
            every: "1s".into(),
            then: None,
            policy: None,
            now: None,
        }
    }
}

/// `pack.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PackFile {
    events: PackEvents,
}

/// How a pack's events are published (the `reflexctl publish` flags).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PackEvents {
    /// Topic the events are produced to.
    topic: String,
    /// ce_type.
    #[serde(rename = "type")]
    event_type: String,
    /// ce_source.
    #[serde(default = "default_source")]
    source: String,
    /// JSON field holding the record key.
    #[serde(default)]
    key_field: Option<String>,
    /// Recorded events file, relative to the pack directory.
    #[serde(default)]
    file: Option<PathBuf>,
}

fn default_source() -> String {
    "reflexctl".into()
}

/// Schema ids the in-process registry cache answers (nothing else is ever asked for).
const EVENT_SCHEMA_ID: u32 = 1;
const REQUEST_SCHEMA_ID: u32 = 2;

pub async fn run(args: RulesTestArgs) -> anyhow::Result<ExitCode> {
    let report = shadow(&args).await?;
    print!("{report}");
    Ok(ExitCode::SUCCESS)
}

/// Loads one worker config the way the worker does: embedded defaults, the file, `REFLEX_*`,
/// the same checks (Kafka secrets included).
fn worker_config<S: StageSettings>(pack: &Path, file: &str) -> anyhow::Result<WorkerConfig<S>> {
    let path = pack.join(file);
    if !path.exists() {
        bail!(
            "{} is missing: a pack needs pack.toml, router.toml, enricher.toml, actor.toml and topics/",
            path.display()
        );
    }
    WorkerConfig::load(Some(&path)).map_err(|e| anyhow!("{}: {e}", path.display()))
}

/// Runs the whole shadow pass and returns the report text.
pub async fn shadow(args: &RulesTestArgs) -> anyhow::Result<String> {
    let pack = &args.pack;
    let pack_toml = pack.join("pack.toml");
    let pack_text = std::fs::read_to_string(&pack_toml).with_context(|| {
        format!(
            "cannot read {} (is {} a pack directory?)",
            pack_toml.display(),
            pack.display()
        )
    })?;
    let pack_file: PackFile = toml::from_str(&pack_text).map_err(|e| {
        let line = e
            .span()
            .map(|s| reflex_core::line_of(&pack_text, s.start))
            .unwrap_or(0);
        anyhow!("{}:{line}: {}", pack_toml.display(), e.message())
    })?;
    let ev = pack_file.events;
    let topic = args.topic.clone().unwrap_or(ev.topic);
    let event_type = args.event_type.clone().unwrap_or(ev.event_type);
    let source = args.source.clone().unwrap_or(ev.source);
    let key_field = args.key_field.clone().or(ev.key_field);
    let events_path = match (&args.events, &ev.file) {
        (Some(p), _) => p.clone(),
        (None, Some(f)) => pack.join(f),
        (None, None) => bail!("pass --events FILE (the pack's pack.toml names no [events] file)"),
    };
    let extra = parse_header_args(&args.headers)?;

    // The events topic's value schema, from the pack's topic declarations.
    let topics_dir = pack.join("topics");
    let decls = reflex_core::topics::load_dir(&topics_dir).with_context(|| {
        format!(
            "cannot load the topic declarations in {}",
            topics_dir.display()
        )
    })?;
    let decl = decls.iter().find(|d| d.name == topic).ok_or_else(|| {
        anyhow!(
            "topic {topic} is not declared in {}/*.toml",
            topics_dir.display()
        )
    })?;
    let schema_path = decl.value_schema.as_ref().ok_or_else(|| {
        anyhow!(
            "the declaration of {topic} in {} names no value_schema",
            topics_dir.display()
        )
    })?;
    let schema_text = std::fs::read_to_string(schema_path)
        .with_context(|| format!("cannot read {schema_path}, the value schema of {topic}"))?;
    let schema = reflex_core::avro::parse_schema(&schema_text)
        .with_context(|| format!("{schema_path} is not a usable Avro schema"))?;
    let subject = decl
        .value_subject
        .clone()
        .unwrap_or_else(|| format!("{topic}-value"));

    // Nothing listens on port 9: the preloaded ids are all that is ever used, nothing is called.
    let registry = RegistryClient::new(
        "http://127.0.0.1:9",
        Duration::from_millis(100),
        Duration::ZERO,
    );
    registry
        .preload(EVENT_SCHEMA_ID, &schema_text)
        .with_context(|| format!("{schema_path} is not a usable Avro schema"))?;
    registry.preload(REQUEST_SCHEMA_ID, ACTION_REQUEST_SCHEMA)?;
    let request_schema = registry.schema_by_id(REQUEST_SCHEMA_ID).await?;

    // Router: the rule file, checked against the schema as at the router's start-up.
    let router_config: RouterConfig = worker_config(pack, "router.toml")?;
    let rules = RuleSet::load(&router_config.stage.rules_file)?;
    rules.check_schema(&topic, &subject, &schema_text)?;
    let rule_count = rules.rules.len();
    let unmatched = rules.unmatched;
    let longest = rules
        .rules
        .iter()
        .filter_map(|r| r.stateful.as_ref())
        .map(|s| s.kind.horizon() + s.lateness)
        .max();
    let timer_delay = router_config.stage.timer_delay;
    let router = Router::new(rules, registry.clone(), router_config.stage.max_hops).with_engine(
        Engine::new(
            StateStore::memory(),
            reflex_router::DEFAULT_SPAN,
            timer_delay,
        ),
    );
    let ticker = router.engine().map(|engine| Ticker {
        rules: router.rules().clone(),
        engine: engine.clone(),
    });
    let parse_duration = |flag: &str, text: &str| {
        reflex_runtime::duration::parse(text).map_err(|e| anyhow!("--{flag}: {e}"))
    };
    let start_ms = chrono::DateTime::parse_from_rfc3339(&args.start)
        .map_err(|e| anyhow!("--start `{}` is not RFC 3339: {e}", args.start))?
        .timestamp_millis();
    let every_ms = parse_duration("every", &args.every)?.as_millis() as i64;
    let then_ms = match &args.then {
        Some(t) => parse_duration("then", t)?,
        None => longest.map_or(Duration::ZERO, |l| l + timer_delay),
    }
    .as_millis() as i64;

    // Enricher: in process when every lookup is a file table; else only binding selection.
    let enricher_config: EnricherConfig = worker_config(pack, "enricher.toml")?;
    let settings = &enricher_config.stage;
    let spec = Spec::load(&settings.bindings_file)?;
    let mut raw: Vec<String> = spec.raw_fields();
    for input in &enricher_config.kafka.input_topics {
        spec.check_schema(input, &subject, &schema_text)?;
    }
    let remote: Vec<String> = spec
        .lookups
        .iter()
        .filter(|l| l.source.kind() != "file")
        .map(|l| format!("`{}` ({})", l.name, l.source.kind()))
        .collect();
    let bindings: Vec<(String, Vec<String>, Vec<String>)> = spec
        .bindings
        .iter()
        .map(|b| (b.action.clone(), b.when_types.clone(), b.when_rules.clone()))
        .collect();
    let enricher = if remote.is_empty() {
        let sources = spec
            .lookups
            .iter()
            .map(|l| Source::new(&l.source, None).map_err(|e| anyhow!(e)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let codec = AvroCodec::new(REQUEST_SCHEMA_ID, ACTION_REQUEST_SCHEMA)?;
        Some(reflex_enricher::Enricher::new(
            spec,
            sources,
            registry.clone(),
            codec,
            OutputSettings {
                topic: settings.output_topic.clone(),
                event_type: settings.output_event_type.clone(),
                source: settings.output_source.clone(),
            },
        ))
    } else {
        None
    };

    // Actor: the actions compiled as at its start-up. Nothing is signed in shadow mode, so
    // signing secrets are not needed.
    let actor_path = pack.join("actor.toml");
    let actor_config: ActorConfig = worker_config(pack, "actor.toml")?;
    let actor_text = std::fs::read_to_string(&actor_path)?;
    let (actions, templates) = compile(
        &actor_config.stage.action,
        Some((&actor_path, &actor_text)),
        &|_| Some("shadow-mode".into()),
    )?;
    let policies = shadow_policies(args, &actor_config, &actions)?;
    for action in &actions {
        for field in call::raw_fields(action, &templates) {
            raw.push(format!("action `{}` field `{field}`", action.settings.name));
        }
    }

    // Events, each checked against the schema before anything runs (as `publish` does).
    let events_name = events_path.display().to_string();
    let text = std::fs::read_to_string(&events_path)
        .with_context(|| format!("cannot read the events file {events_name}"))?;
    let documents = parse_documents(&events_name, &text)?;
    let mut events = Vec::with_capacity(documents.len());
    for (index, doc) in documents.iter().enumerate() {
        let n = index + 1;
        let datum = encode(&schema, doc).map_err(|e| {
            anyhow!("event {n} of {events_name} does not match {schema_path} (the value schema of {topic}): {e}")
        })?;
        let key = match &key_field {
            Some(field) => Some(
                key_from_field(doc, field)
                    .map_err(|e| anyhow!("event {n} of {events_name}: {e}"))?,
            ),
            None => None,
        };
        let id = format!("{}-{n}", args.id);
        let at = start_ms + index as i64 * every_ms;
        let mut headers = event_headers(&id, &source, &event_type, &extra);
        if !extra.iter().any(|(name, _)| name == ce::TIME) {
            headers.set(ce::TIME, reflex_router::stateful::rfc3339(at));
        }
        events.push(Event {
            topic: topic.clone(),
            partition: 0,
            offset: index as i64,
            timestamp_ms: Some(at),
            key: key.map(Bytes::from),
            payload: Some(Bytes::from(encode_frame(EVENT_SCHEMA_ID, &datum))),
            headers,
        });
    }

    let mut out = String::new();
    let mut tally = Tally::default();
    let mut blast: BTreeMap<String, u64> = BTreeMap::new();
    let _ = writeln!(
        out,
        "shadow run of {} ({}, {} of type {event_type} on {topic}); nothing is called",
        pack.display(),
        plural(rule_count, "rule"),
        plural(events.len(), "event")
    );
    for template in &raw {
        let _ = writeln!(
            out,
            "warning: {template} uses `raw`: its value is written unescaped (event data can steer that part)"
        );
    }
    if let Some(p) = &policies {
        let _ = writeln!(
            out,
            "policies: {} ({} {}), decided at {}",
            p.policies.file(),
            p.policies.len(),
            if p.policies.len() == 1 {
                "policy"
            } else {
                "policies"
            },
            p.now_label
        );
    }
    if !remote.is_empty() {
        let _ = writeln!(
            out,
            "note: lookups {} are not called in shadow mode: bindings are selected, requests not rendered",
            remote.join(", ")
        );
    }
    let downstream = Downstream {
        enricher_inputs: &enricher_config.kafka.input_topics,
        enricher: enricher.as_ref(),
        bindings: &bindings,
        event_type: &event_type,
        request_schema: &request_schema,
        actions: &actions,
        templates: &templates,
        actor_config: &actor_config,
        policies: policies.as_ref(),
    };
    let mut windows = WindowTally::default();
    for (index, event) in events.iter().enumerate() {
        let now = start_ms + index as i64 * every_ms;
        if let Some(ticker) = &ticker {
            let fired = timers(ticker, now, &mut out, &mut windows).await?;
            downstream
                .follow(fired, index, &mut out, &mut tally, &mut blast)
                .await?;
        }
        let key = event
            .key
            .as_ref()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_else(|| "-".into());
        // The virtual clock is shown only where windows read it.
        let clock = if ticker.is_some() {
            format!(" at {}", reflex_router::stateful::rfc3339(now))
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "event {} key={key} ce_id={}-{}{clock}",
            index + 1,
            args.id,
            index + 1,
        );
        let outputs = match router.verdict(event).await {
            Err(e) => {
                tally.dead_lettered += 1;
                let _ = writeln!(
                    out,
                    "  router: dead letter ({}): {}",
                    e.class.as_str(),
                    e.message
                );
                continue;
            }
            Ok(Verdict::Dropped { rule: Some(rule) }) => {
                tally.dropped += 1;
                let _ = writeln!(out, "  router: dropped by rule {rule}");
                continue;
            }
            Ok(Verdict::Dropped { rule: None }) => {
                tally.dropped += 1;
                // unmatched = "dead-letter" is an error above; here it is "drop".
                debug_assert_eq!(unmatched, Unmatched::Drop);
                let _ = writeln!(
                    out,
                    "  router: no rule matched: dropped (unmatched = \"drop\")"
                );
                continue;
            }
            Ok(Verdict::Absorbed(notes)) => {
                tally.absorbed += 1;
                windows.note(&notes, &mut out);
                continue;
            }
            Ok(Verdict::Routed {
                outputs,
                windows: notes,
            }) => {
                windows.note(&notes, &mut out);
                outputs
            }
        };
        tally.routed += 1;
        downstream
            .follow(outputs, index, &mut out, &mut tally, &mut blast)
            .await?;
    }
    if let Some(ticker) = &ticker {
        let end = start_ms + (events.len().max(1) as i64 - 1) * every_ms + then_ms;
        let fired = timers(ticker, end, &mut out, &mut windows).await?;
        downstream
            .follow(fired, events.len(), &mut out, &mut tally, &mut blast)
            .await?;
    }
    let absorbed = if ticker.is_some() {
        format!(", {} absorbed by windows", tally.absorbed)
    } else {
        String::new()
    };
    let _ = writeln!(
        out,
        "summary: {}: {} routed{absorbed}, {} dropped, {} dead-lettered",
        plural(events.len(), "event"),
        tally.routed,
        tally.dropped,
        tally.dead_lettered
    );
    windows.summary(&mut out);
    for (action, counts) in &tally.actions {
        let parts: Vec<String> = counts
            .iter()
            .map(|(what, n)| format!("{n} {what}"))
            .collect();
        let _ = writeln!(out, "  {action}: {}", parts.join(", "));
    }
    Ok(out)
}

/// The policy file a shadow run decides with, and the time it decides at.
struct ShadowPolicies {
    policies: Policies,
    at: Option<DateTime<Utc>>,
    /// `--now`'s value, or "the current time": the report must not change by the minute.
    now_label: String,
}

impl ShadowPolicies {
    fn now(&self) -> DateTime<Utc> {
        self.at.unwrap_or_else(Utc::now)
    }
}

/// `--policy`, else the actor config's `policy_file`, validated as at the actor's start-up.
fn shadow_policies(
    args: &RulesTestArgs,
    config: &ActorConfig,
    actions: &[Action],
) -> anyhow::Result<Option<ShadowPolicies>> {
    let at = args
        .now
        .as_deref()
        .map(|t| {
            DateTime::parse_from_rfc3339(t)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| anyhow!("--now {t}: {e} (write RFC 3339, e.g. 2026-12-05T23:00:00Z)"))
        })
        .transpose()?;
    let file = match &args.policy {
        Some(path) => path.clone(),
        None if config.stage.policy_file.trim().is_empty() => {
            if at.is_some() {
                bail!("--now is for policies, and there are none: pass --policy FILE or set actor.policy_file");
            }
            return Ok(None);
        }
        None => PathBuf::from(config.stage.policy_file.trim()),
    };
    let policies = Policies::load(&file, actions.iter().map(|a| a.settings.name.as_str()))
        .map_err(|e| anyhow!("the policy file is not usable (the actor would not start):\n{e}"))?;
    Ok(Some(ShadowPolicies {
        policies,
        at,
        now_label: args
            .now
            .clone()
            .unwrap_or_else(|| "the current time".into()),
    }))
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

fn list_or_none(items: &[&str]) -> String {
    if items.is_empty() {
        "nothing (no binding selects it)".into()
    } else {
        items.join(", ")
    }
}

/// The virtual clock at `now_ms`: timers due by then fire (the ticker's round, in process).
async fn timers(
    ticker: &Ticker,
    now_ms: i64,
    out: &mut String,
    windows: &mut WindowTally,
) -> anyhow::Result<Vec<Output>> {
    let collect = Collect::default();
    let notes = ticker.round(now_ms, |_, _| true, &collect).await?;
    if !notes.is_empty() {
        let _ = writeln!(out, "clock {}", reflex_router::stateful::rfc3339(now_ms));
        windows.note(&notes, out);
    }
    Ok(collect.0.into_inner().expect("collect lock"))
}

/// Stateful rules' firings and suppressions, per rule.
#[derive(Default)]
struct WindowTally {
    /// rule → (firings, reason → count).
    rules: BTreeMap<String, (usize, BTreeMap<&'static str, usize>)>,
}

impl WindowTally {
    fn note(&mut self, notes: &[WindowNote], out: &mut String) {
        for note in notes {
            let entry = self.rules.entry(note.rule.clone()).or_default();
            for effect in &note.effects {
                match effect {
                    Effect::Fired(f) => {
                        entry.0 += 1;
                        let _ = writeln!(
                            out,
                            "  window: rule {} group {} FIRED by {} (window {} .. {}, {})",
                            note.rule,
                            note.group,
                            if f.by_timer { "timer" } else { "event" },
                            reflex_router::stateful::rfc3339(f.start),
                            reflex_router::stateful::rfc3339(f.end),
                            plural(f.count as usize, "event")
                        );
                    }
                    Effect::Suppressed(reason) => {
                        *entry.1.entry(reason.as_str()).or_default() += 1;
                        let _ = writeln!(
                            out,
                            "  window: rule {} group {} suppressed ({})",
                            note.rule,
                            note.group,
                            reason.as_str()
                        );
                    }
                }
            }
        }
    }

    fn summary(&self, out: &mut String) {
        for (rule, (fired, reasons)) in &self.rules {
            let suppressed: usize = reasons.values().sum();
            let why: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
            let _ = writeln!(
                out,
                "  rule {rule}: {fired} fired, {suppressed} suppressed{}",
                if why.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", why.join(", "))
                }
            );
        }
    }
}

/// The enricher and actor, in process, for what the router forwards.
struct Downstream<'a> {
    enricher_inputs: &'a [String],
    enricher: Option<&'a reflex_enricher::Enricher>,
    bindings: &'a [(String, Vec<String>, Vec<String>)],
    event_type: &'a str,
    request_schema: &'a reflex_core::registry::RegisteredSchema,
    actions: &'a [Action],
    templates: &'a Templates,
    actor_config: &'a ActorConfig,
    policies: Option<&'a ShadowPolicies>,
}

impl Downstream<'_> {
    async fn follow(
        &self,
        outputs: Vec<Output>,
        index: usize,
        out: &mut String,
        tally: &mut Tally,
        blast: &mut BTreeMap<String, u64>,
    ) -> anyhow::Result<()> {
        let (actions, templates, actor_config, request_schema) = (
            self.actions,
            self.templates,
            self.actor_config,
            self.request_schema,
        );
        let event_type = self.event_type.to_string();
        let bindings = self.bindings;
        for routed in outputs {
            let rule = routed.headers.get_str(rh::RULE).unwrap_or("?").to_string();
            let _ = writeln!(out, "  router: rule {rule} -> {}", routed.topic);
            if !self.enricher_inputs.contains(&routed.topic) {
                let _ = writeln!(out, "    (not an input of this pack's enricher)");
                continue;
            }
            let Some(enricher) = self.enricher else {
                let selected: Vec<&str> = bindings
                    .iter()
                    .filter(|(_, types, rules)| {
                        (types.is_empty() || types.contains(&event_type))
                            && (rules.is_empty() || rules.contains(&rule))
                    })
                    .map(|(action, _, _)| action.as_str())
                    .collect();
                let _ = writeln!(out, "    enricher: would bind {}", list_or_none(&selected));
                continue;
            };
            let as_input = Event {
                topic: routed.topic.clone(),
                partition: 0,
                offset: index as i64,
                timestamp_ms: None,
                key: routed.key.clone(),
                payload: routed.payload.clone(),
                headers: routed.headers.clone(),
            };
            let requests = match enricher.process(&as_input).await {
                Ok(requests) => requests,
                Err(e) => {
                    let _ = writeln!(
                        out,
                        "    enricher: dead letter ({}): {}",
                        e.class.as_str(),
                        e.message
                    );
                    continue;
                }
            };
            if requests.is_empty() {
                let _ = writeln!(out, "    enricher: no binding selects it");
            }
            for request in requests {
                let value = request.payload.as_deref().unwrap_or_default();
                let req = AvroCodec::<ActionRequest>::decode_with(&request_schema.fast, value)
                    .map_err(|e| anyhow!("the enricher wrote an undecodable request: {e}"))?;
                let _ = writeln!(
                    out,
                    "    enricher: {} -> {} (idempotency key {})",
                    req.action, request.topic, req.idempotency_key
                );
                let decision = self.policies.map(|p| {
                    let attrs = EventAttrs::of(&request.headers);
                    p.policies.decide(&req, &attrs, p.now())
                });
                let allowed = decision == Some(Decision::Allow);
                let line = act(actions, templates, actor_config, &req, decision, blast);
                // Only where the actor would ask: a request it cannot render is refused first.
                if allowed && line.outcome != "dead-lettered" {
                    let _ = writeln!(out, "      policy: allowed");
                }
                tally.count(&req.action, &line);
                let _ = write!(out, "{}", line.text);
            }
        }
        Ok(())
    }
}

#[derive(Default)]
struct Tally {
    routed: usize,
    absorbed: usize,
    dropped: usize,
    dead_lettered: usize,
    /// action → outcome → count.
    actions: BTreeMap<String, BTreeMap<&'static str, usize>>,
}

impl Tally {
    fn count(&mut self, action: &str, line: &ActorLine) {
        *self
            .actions
            .entry(action.to_string())
            .or_default()
            .entry(line.outcome)
            .or_default() += 1;
    }
}

/// What the actor would do with one request.
struct ActorLine {
    outcome: &'static str,
    text: String,
}

fn act(
    actions: &[Action],
    templates: &Templates,
    config: &ActorConfig,
    req: &ActionRequest,
    decision: Option<Decision>,
    blast: &mut BTreeMap<String, u64>,
) -> ActorLine {
    let dead = |message: String| ActorLine {
        outcome: "dead-lettered",
        text: format!("      actor: dead letter (permanent): {message}\n"),
    };
    let Some(action) = actions.iter().find(|a| a.settings.name == req.action) else {
        return dead(format!(
            "unknown action `{}` (not in the pack's actor.toml)",
            req.action
        ));
    };
    // The call, rendered, escaped and checked exactly as the actor does it.
    let raw = call::raw_fields(action, templates);
    let call = call::render(action, templates, req).map(|call| {
        let mut text = match call {
            Call::Http {
                method,
                url,
                headers,
                body,
            } => {
                let mut shown = vec![format!("idempotency-key: {}", req.idempotency_key)];
                shown.extend(
                    headers
                        .iter()
                        .map(|(name, value)| format!("{name}: {value}")),
                );
                format!(
                    "call {method} {url}\n             headers: {}\n             body: {body}",
                    shown.join(", ")
                )
            }
            Call::Emit { topic, body } => format!("emit to {topic}: {body}"),
            Call::Log { message } => format!("log: {message}"),
        };
        if !raw.is_empty() {
            let _ = write!(text, "\n             raw (unescaped): {}", raw.join(", "));
        }
        text
    });
    let call = match call {
        Ok(call) => call,
        Err(message) => return dead(message),
    };
    // Policies come before the dry run and the cap, as in the actor.
    match decision {
        Some(Decision::Deny(denial)) => {
            return ActorLine {
                outcome: "denied by policy",
                text: format!("      actor: DENIED_BY_POLICY: {denial}, would not {call}\n"),
            }
        }
        Some(Decision::Allow) => {}
        None => {}
    }
    let s = &action.settings;
    let dry = if req.dry_run {
        Some("the request (binding dry_run)")
    } else if s.dry_run {
        Some("the action's dry_run")
    } else if config.stage.dry_run {
        Some("actor.dry_run")
    } else {
        None
    };
    // Approval, as the actor decides it: the action asks, and its `when` (if any) holds (a
    // `when` that fails asks too).
    let approval = s.approval.as_ref().filter(|_| {
        action
            .approval_when
            .as_ref()
            .is_none_or(|w| w.holds(req).unwrap_or(true))
    });
    let asks = approval.map(|a| {
        format!(
            "PENDING_APPROVAL: held for a human{} ({}, then {}), on {}",
            action
                .approval_when
                .as_ref()
                .map(|w| format!(" as `{}`", w.source()))
                .unwrap_or_default(),
            reflex_runtime::duration::format(a.timeout),
            a.on_timeout.as_str(),
            config.stage.approvals_topic
        )
    });
    // The actor counts only live executions against the cap (a request waiting for approval
    // is not one yet); in a dry run the count shows what going live would do.
    let capped = (s.blast_radius_max > 0 && asks.is_none()).then(|| {
        let count = blast.entry(s.name.clone()).or_default();
        *count += 1;
        (*count > s.blast_radius_max).then(|| {
            format!(
                "HELD by the blast-radius cap ({} per {}; this is number {count} in the window), to {}",
                s.blast_radius_max,
                reflex_runtime::duration::format(s.blast_radius_window),
                config.stage.held_topic
            )
        })
    });
    if let Some(why) = dry {
        let mut text = format!("      actor: DRY_RUN ({why}), would {call}\n");
        if let Some(Some(held)) = &capped {
            let _ = writeln!(text, "             live, it would be {held}");
        }
        if let Some(asks) = &asks {
            let _ = writeln!(text, "             live, it would be {asks}");
        }
        return ActorLine {
            outcome: "dry run",
            text,
        };
    }
    if let Some(asks) = asks {
        return ActorLine {
            outcome: "pending approval",
            text: format!("      actor: {asks}; once approved, would {call}\n"),
        };
    }
    if let Some(Some(held)) = capped {
        return ActorLine {
            outcome: "held",
            text: format!("      actor: {held}\n"),
        };
    }
    ActorLine {
        outcome: "would run",
        text: format!("      actor: would {call}\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A copy of examples/crash-loop in a temp dir, its paths pointed at the copy.
    fn pack_copy() -> (tempfile::TempDir, PathBuf) {
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/crash-loop");
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        for sub in ["", "avro", "topics"] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
            for entry in std::fs::read_dir(source.join(sub)).unwrap() {
                let path = entry.unwrap().path();
                if path.is_file() {
                    let text = std::fs::read_to_string(&path)
                        .unwrap()
                        .replace("examples/crash-loop/", &format!("{}/", root.display()));
                    std::fs::write(root.join(sub).join(path.file_name().unwrap()), text).unwrap();
                }
            }
        }
        (dir, root)
    }

    fn args(pack: &Path) -> RulesTestArgs {
        RulesTestArgs::for_pack(pack)
    }

    #[tokio::test]
    async fn the_crash_loop_pack_restarts_below_the_threshold_and_caps() {
        let (_dir, pack) = pack_copy();
        let report = shadow(&args(&pack)).await.unwrap();
        assert!(
            report.contains("dropped by rule skip-during-rollout"),
            "{report}"
        );
        assert!(
            report.contains("restart-pod: 1 held, 3 would run"),
            "{report}"
        );
        assert!(
            report.contains("would call DELETE http://127.0.0.1:18080/api/v1/namespaces/shop/pods/checkout-7d9f"),
            "{report}"
        );
    }

    #[tokio::test]
    async fn hostile_event_values_are_shown_escaped_and_raw_is_marked() {
        let (_dir, pack) = pack_copy();
        let events = pack.join("hostile.jsonl");
        // The issue's examples: a pod name that walks the path, a reason that rewrites the body.
        let event = |namespace: &str, pod: &str, reason: &str| {
            serde_json::json!({"cluster": "c", "namespace": namespace, "pod": pod,
                "reason": reason, "restart_count": 4, "seq": 1})
            .to_string()
        };
        let reason = r#""}, "restart_count": 0, "x": {"a":""#;
        std::fs::write(
            &events,
            format!(
                "{}\n{}\n",
                event("shop", "../../kube-system/pods/coredns", reason),
                event("..", "p", "r")
            ),
        )
        .unwrap();
        let mut a = args(&pack);
        a.events = Some(events);
        let report = shadow(&a).await.unwrap();
        assert!(
            report.contains("would call DELETE http://127.0.0.1:18080/api/v1/namespaces/shop/pods/..%2F..%2Fkube-system%2Fpods%2Fcoredns\n"),
            "{report}"
        );
        assert!(
            report.contains(r#"body: {"reason": "\"}, \"restart_count\": 0, \"x\": {\"a\":\"", "restart_count": 4}"#),
            "{report}"
        );
        assert!(
            report.contains("actor: dead letter (permanent): action `restart-pod` field `url` cannot be rendered for this request: template `restart-pod.url`: refused: a value makes the path segment `..`"),
            "{report}"
        );
        assert!(!report.contains("raw"), "{report}");

        let actor = pack.join("actor.toml");
        let text = std::fs::read_to_string(&actor)
            .unwrap()
            .replace("\"{{ params.team }}\"", "\"{{ params.team | raw }}\"");
        std::fs::write(&actor, text).unwrap();
        let report = shadow(&a).await.unwrap();
        assert!(
            report
                .contains("warning: action `restart-pod` field `header.x-reflex-owner` uses `raw`"),
            "{report}"
        );
        assert!(
            report.contains("\n             raw (unescaped): header.x-reflex-owner\n"),
            "{report}"
        );
    }

    /// `--policy` and `--now`: restarts only in `shop` and on weekdays, decided by the actor's
    /// evaluator; a broken policy file is the actor's start-up error.
    #[tokio::test]
    async fn policies_show_what_they_would_allow_and_deny() {
        let (_dir, pack) = pack_copy();
        let policy = pack.join("policies.cedar");
        std::fs::write(
            &policy,
            r#"permit (principal, action, resource);

@id("restart-only-in-shop")
forbid (principal, action == Reflex::Action::"restart-pod", resource)
unless { context.params.hasTag("namespace") && context.params.getTag("namespace") == "shop" };

@id("weekdays-only")
forbid (principal, action, resource) when { context.now.weekday > 5 };
"#,
        )
        .unwrap();
        let mut a = args(&pack);
        a.policy = Some(policy.clone());
        a.now = Some("2026-12-02T10:00:00Z".into()); // a Wednesday
        let report = shadow(&a).await.unwrap();
        assert!(
            report.contains(&format!(
                "policies: {} (3 policies), decided at 2026-12-02T10:00:00Z\n",
                policy.display()
            )),
            "{report}"
        );
        let denied = report
            .lines()
            .filter(|l| l.contains("DENIED_BY_POLICY: denied by policy `restart-only-in-shop`"))
            .count();
        let allowed = report.matches("      policy: allowed\n").count();
        assert!(denied >= 1 && allowed >= 1, "{report}");
        assert!(report.contains(" denied by policy"), "{report}");

        a.now = Some("2026-12-05T10:00:00Z".into()); // a Saturday: nothing runs
        let report = shadow(&a).await.unwrap();
        assert!(!report.contains("policy: allowed"), "{report}");
        assert!(report.contains("`weekdays-only`"), "{report}");
        assert!(!report.contains("would run"), "{report}");

        std::fs::write(
            &policy,
            "permit (principal, action, resource)\nwhen { context.param.hasTag(\"x\") };\n",
        )
        .unwrap();
        let e = shadow(&a).await.unwrap_err().to_string();
        assert!(
            e.contains(&format!(
                "{}:2:8: for policy `policy0`, attribute `param`",
                policy.display()
            )),
            "{e}"
        );
        a.now = Some("yesterday".into());
        let e = shadow(&a).await.unwrap_err().to_string();
        assert!(e.contains("--now yesterday"), "{e}");
    }

    #[tokio::test]
    async fn a_broken_rule_file_names_file_line_and_rule() {
        let (_dir, pack) = pack_copy();
        let rules = pack.join("rules.toml");
        let text = std::fs::read_to_string(&rules)
            .unwrap()
            .replace("payload.restart_count < 10'", "payload.restart_count < '");
        std::fs::write(&rules, text).unwrap();
        let e = shadow(&args(&pack)).await.unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{}:", rules.display()))
                && e.contains("rule `crashloop-restart`: condition does not compile"),
            "{e}"
        );

        let text = std::fs::read_to_string(&rules)
            .unwrap()
            .replace("payload.restart_count < '", "payload.restarts < 10'");
        std::fs::write(&rules, text).unwrap();
        let e = shadow(&args(&pack)).await.unwrap_err().to_string();
        assert!(
            e.contains("payload.restarts does not exist in the schema"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn bad_events_name_the_event_and_the_field() {
        let (_dir, pack) = pack_copy();
        let events = pack.join("bad.jsonl");
        std::fs::write(
            &events,
            "{\"cluster\":\"c\",\"namespace\":\"n\",\"pod\":\"p\",\"reason\":\"r\",\"restart_count\":4}\n{\"cluster\":\"c\",\"namespace\":\"n\",\"pod\":\"p\",\"reason\":\"r\",\"restart_count\":\"many\"}\n",
        )
        .unwrap();
        let mut a = args(&pack);
        a.events = Some(events.clone());
        let e = shadow(&a).await.unwrap_err().to_string();
        assert!(
            e.contains("event 2 of") && e.contains("restart_count"),
            "{e}"
        );

        std::fs::write(&events, "{\"cluster\": \n").unwrap();
        let e = shadow(&a).await.unwrap_err().to_string();
        assert!(e.contains("is not valid JSON"), "{e}");

        a.events = Some(pack.join("missing.jsonl"));
        let e = format!("{:#}", shadow(&a).await.unwrap_err());
        assert!(e.contains("cannot read the events file"), "{e}");

        let e = shadow(&args(&pack.join("nope")))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("is") && e.contains("a pack directory"), "{e}");
    }
}
