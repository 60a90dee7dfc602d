//! The actor's configuration and its start-up validation.
//!
//! Actions are `[[actor.action]]` tables keyed by `name` (the `action` field of a request).
//! [`compile`] checks every action before the worker consumes anything: an unknown kind, an
//! invalid method or URL, a template that does not compile or reads a field action requests do
//! not have, a missing signing secret. Errors name the file, line, action and field, e.g.
//! `actor.toml:14: action `restart-pod` field `url`: template reads `payload.pod`, ...`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use reflex_core::template::{is_json_content_type, Escape, Templates};
use reflex_runtime::{Backoff, RegistrySettings, RetryPolicy, StageSettings};
use serde::Deserialize;
use thiserror::Error;

/// Embedded actor defaults, layered over the runtime's.
pub const ACTOR_DEFAULTS: &str = include_str!("defaults.toml");

/// Fields of an action request that templates may read (`{{ params.pod }}`, `{{ target }}`).
pub const TEMPLATE_FIELDS: [&str; 13] = [
    "idempotency_key",
    "action",
    "kind",
    "target",
    "params",
    "body",
    "event_id",
    "event_type",
    "rule",
    "correlation_id",
    "context",
    "dry_run",
    "requested_at",
];

/// The actor's whole configuration: the shared sections (input topic
/// `reflex.actions.requests`; the registry gives request schemas by id, and the outcome schema
/// is registered there at start-up) and `[actor]`.
pub type ActorConfig = reflex_runtime::WorkerConfig<ActorSettings>;

impl StageSettings for ActorSettings {
    const SECTION: &'static str = "actor";
    const DEFAULTS: &'static str = ACTOR_DEFAULTS;
    type Registry = RegistrySettings;
}

/// Where the actor keeps claims, done records, counters and the kill switch
/// (`actor.state_backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StateBackendKind {
    /// Redis, fleet-wide; start-up fails without it.
    Redis,
    /// In process: one replica only, nothing shared or durable.
    Memory,
    /// Redis if `redis_url` is set and answers at start, else in process.
    Auto,
}

impl StateBackendKind {
    /// The name [`crate::state::StateBackend::open`] takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Redis => "redis",
            Self::Memory => "memory",
            Self::Auto => "auto",
        }
    }
}

/// Actor-specific settings (`[actor]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActorSettings {
    /// Where claims, done records, rate and blast-radius counters and the kill switch live:
    /// `redis` (fleet-wide; start-up fails without it), `memory` (in-process: one replica
    /// only, nothing shared or durable) or `auto` (Redis if `redis_url` is set and answers at
    /// start, else in-process, with a warn line saying so).
    pub state_backend: StateBackendKind,
    /// Redis holding idempotency claims, done records, rate-limit and blast-radius counters and
    /// the kill switch. Every replica of the fleet must use the same one.
    pub redis_url: String,
    /// Redis ACL user name (empty: the URL's, or the default user).
    pub redis_username: String,
    /// Redis password as a secret reference, `env:NAME` or `file:PATH` (empty: the URL's, or
    /// none). Keeps the password out of `redis_url` and the config file.
    pub redis_password: String,
    /// Hosts `http` actions may call: `host`, `host:port` or `*.example.com` (any subdomain).
    /// A rendered URL whose host is not listed is refused as a permanent error (dead letter),
    /// never sent. Empty allows any host (a warning is logged at start); set it in production.
    pub allowed_hosts: Vec<String>,
    /// URL schemes `http` actions may use.
    pub allowed_schemes: Vec<String>,
    /// Prefix of every Redis key: `<prefix>:claim:<idempotency key>`, `<prefix>:done:<key>`,
    /// `<prefix>:rate:<action>`, `<prefix>:blast:<action>:<window>`, `<prefix>:killswitch`.
    pub redis_prefix: String,
    /// Topic of the audit records (`ActionOutcome`, one per attempt). Its schema is registered
    /// under `<topic>-value` at start-up.
    pub outcomes_topic: String,
    /// Topic receiving requests held by the blast-radius cap (the original record unchanged).
    pub held_topic: String,
    /// Requests whose `reflex-hops` header exceeds this are dead-lettered (automation loop).
    pub max_hops: u32,
    /// Cedar policy file every request must pass before it is claimed or executed (path
    /// relative to the working directory; empty: no policies). Checked at start-up against the
    /// configured actions: a file that does not parse or validate stops the actor naming file,
    /// line and the fix. A denied request ends with outcome `DENIED_BY_POLICY`, never executed
    /// nor retried. See [`crate::policy`].
    pub policy_file: String,
    /// Shadow mode for the whole worker: record what would be done (outcome `DRY_RUN`), no effect.
    pub dry_run: bool,
    /// Kill switch from config: while true no action is executed (events wait, none is lost).
    /// At run time use the Redis key `<prefix>:killswitch` (or `<prefix>:killswitch:<action>`).
    pub kill_switch: bool,
    /// How often the Redis kill-switch keys are read (keep at most 500 so a switch acts within 2 s).
    #[serde(deserialize_with = "reflex_runtime::duration::deserialize")]
    pub kill_switch_poll: Duration,
    /// Lease of an idempotency claim. The owner renews it every third of the lease while it works;
    /// when an owner dies, another replica may take the key over after the lease expires.
    #[serde(deserialize_with = "reflex_runtime::duration::deserialize")]
    pub claim_lease: Duration,
    /// How often a request whose key another live owner holds checks for the result.
    #[serde(deserialize_with = "reflex_runtime::duration::deserialize")]
    pub claim_poll: Duration,
    /// How long the outcome of a completed action is remembered (duplicates and replays within
    /// this window are suppressed).
    #[serde(deserialize_with = "reflex_runtime::duration::deserialize")]
    pub done_ttl: Duration,
    /// Lease of a per-target lock (an action's `lock`). The holder renews it every third of the
    /// lease while it runs; a crashed holder's lock expires after it. Keep it well below the
    /// time the reprocessor's redeliveries of a deferred request span (about 30 s by default).
    #[serde(deserialize_with = "reflex_runtime::duration::deserialize")]
    pub lock_lease: Duration,
    /// How long a request whose lock another action holds polls for it in place before it is
    /// deferred (dead-lettered as transient, redelivered later by the reprocessor, so its
    /// lane and partition move on meanwhile). "0": defer at once.
    #[serde(deserialize_with = "reflex_runtime::duration::deserialize")]
    pub lock_wait: Duration,
    /// Topic receiving a record for each request held for human approval (JSON
    /// `PendingApproval`, keyed by the idempotency key); `reflexctl approvals list` reads it.
    pub approvals_topic: String,
    /// Topic of approval decisions (JSON `ApprovalDecision`, keyed by the idempotency key),
    /// written by `reflexctl approvals approve|deny` and by the timeout sweeper. When an action
    /// has `approval`, the actor consumes it besides `kafka.input_topics`.
    pub decisions_topic: String,
    /// How often each replica looks for approvals past their timeout (the first replica to
    /// claim one writes its timeout decision).
    #[serde(deserialize_with = "reflex_runtime::duration::deserialize")]
    pub approval_sweep: Duration,
    /// The configured actions, keyed by `name`.
    #[serde(default)]
    pub action: Vec<ActionSettings>,
}

/// Human approval before an action runs (`approval = { timeout = "15m", on_timeout = "deny" }`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalSettings {
    /// How long a request waits for a decision before `on_timeout` decides.
    #[serde(
        default = "default_approval_timeout",
        deserialize_with = "reflex_runtime::duration::deserialize"
    )]
    pub timeout: Duration,
    /// `deny` (the default: nothing runs without a yes) or `approve` (run unless someone said no).
    #[serde(default = "default_on_timeout")]
    pub on_timeout: reflex_core::approvals::OnTimeout,
    /// A CEL condition over the request (`params`, `context`, `target`, ...): approval is
    /// required only when it is true, e.g. `params.environment == "production"`. Without it,
    /// every request of the action needs approval.
    #[serde(default)]
    pub when: Option<String>,
}

fn default_approval_timeout() -> Duration {
    Duration::from_secs(15 * 60)
}
fn default_on_timeout() -> reflex_core::approvals::OnTimeout {
    reflex_core::approvals::OnTimeout::Deny
}

/// One configured action (`[[actor.action]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionSettings {
    /// Name the requests use in their `action` field.
    pub name: String,
    /// `http` (call a URL), `emit` (produce an event to a Kafka topic) or `log` (log only).
    pub kind: String,
    /// HTTP method (`http`), or a template such as `{{ params.method }}` checked per request.
    #[serde(default = "default_method")]
    pub method: String,
    /// URL template (`http`), e.g. `http://k8s-gateway/pods/{{ params.pod }}/restart`: scheme,
    /// host and port written literally, each value one encoded path segment or query value.
    /// `{{ target | raw }}` takes a whole URL the enricher bound (trusted: not escaped, its
    /// host checked against `allowed_hosts` per request).
    #[serde(default)]
    pub url: String,
    /// Header templates (`http`). `Idempotency-Key` is always set to the request's key. A value
    /// with CR, LF or another control character is refused (the request is dead-lettered).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Body template (`http`, `emit`); without it the request's `body` is sent as it is. With a
    /// JSON content type (the `content-type` header, or `content_type` for `emit`; with none
    /// declared, a template starting with `{` or `[`) values are JSON-escaped and the body must
    /// parse as JSON before it is sent.
    #[serde(default)]
    pub body: Option<String>,
    /// Topic the event is produced to (`emit`): a literal topic name, never a template, so
    /// event data cannot choose where the event goes.
    #[serde(default)]
    pub topic: String,
    /// `ce_type` of the emitted event (`emit`).
    #[serde(default = "default_event_type")]
    pub event_type: String,
    /// `content-type` of the emitted event (`emit`).
    #[serde(default = "default_content_type")]
    pub content_type: String,
    /// Message template (`log`); defaults to a summary of the request.
    #[serde(default)]
    pub message: Option<String>,
    /// Timeout of one HTTP attempt.
    #[serde(
        default = "default_timeout",
        deserialize_with = "reflex_runtime::duration::deserialize"
    )]
    pub timeout: Duration,
    /// Attempts for transient failures (5xx, 408, 425, 429, timeouts, connection errors); each
    /// attempt produces an outcome. 4xx is permanent and not retried.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// First backoff between attempts; doubles each attempt up to `max_backoff`.
    #[serde(
        default = "default_backoff",
        deserialize_with = "reflex_runtime::duration::deserialize"
    )]
    pub backoff: Duration,
    /// Longest backoff between attempts.
    #[serde(
        default = "default_max_backoff",
        deserialize_with = "reflex_runtime::duration::deserialize"
    )]
    pub max_backoff: Duration,
    /// Name of an environment variable holding a Standard Webhooks secret (`whsec_<base64>` or
    /// raw text); when set, requests carry `webhook-id`, `webhook-timestamp`, `webhook-signature`.
    #[serde(default)]
    pub signing_secret_env: Option<String>,
    /// Fleet-wide rate limit in actions per second, shared by every replica through Redis
    /// (GCRA). 0 means unlimited.
    #[serde(default)]
    pub rate_per_sec: f64,
    /// Actions allowed at once above the steady rate (GCRA burst), at least 1.
    #[serde(default = "default_rate_burst")]
    pub rate_burst: u32,
    /// Most attempts of this action running at once in one replica. 0 means unlimited.
    #[serde(default)]
    pub max_concurrency: usize,
    /// Consecutive transient failures of a target that open its circuit breaker. 0 disables it.
    #[serde(default = "default_breaker_failures")]
    pub breaker_failures: u32,
    /// How long an open breaker waits before letting one probe through (half-open).
    #[serde(
        default = "default_breaker_cooldown",
        deserialize_with = "reflex_runtime::duration::deserialize"
    )]
    pub breaker_cooldown: Duration,
    /// Blast-radius cap: at most this many executions in any `blast_radius_window` (a sliding
    /// window), fleet-wide; the rest are held (outcome `HELD`, record on `actor.held_topic`).
    /// A retry of an admitted request is not counted again. 0 disables it.
    #[serde(default)]
    pub blast_radius_max: u64,
    /// Window of the blast-radius cap; it slides, so no two boundaries let `2 ×` the cap through.
    #[serde(
        default = "default_blast_radius_window",
        deserialize_with = "reflex_runtime::duration::deserialize"
    )]
    pub blast_radius_window: Duration,
    /// Shadow mode for this action: outcome `DRY_RUN`, no effect.
    #[serde(default)]
    pub dry_run: bool,
    /// Per-target lock: a template over the request (e.g. `{{ target }}` or
    /// `{{ params.pod }}`). Two actions whose locks render the same never run at once across
    /// all replicas (a Redis lease; the name space is shared by every action).
    #[serde(default)]
    pub lock: Option<String>,
    /// Require a human decision before running (see [`ApprovalSettings`]).
    #[serde(default)]
    pub approval: Option<ApprovalSettings>,
}

fn default_method() -> String {
    "POST".into()
}
fn default_event_type() -> String {
    "dev.reflex.action.emitted".into()
}
fn default_content_type() -> String {
    "application/json".into()
}
fn default_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_max_attempts() -> u32 {
    3
}
fn default_backoff() -> Duration {
    Duration::from_millis(200)
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(5)
}
fn default_rate_burst() -> u32 {
    1
}
fn default_breaker_failures() -> u32 {
    5
}
fn default_breaker_cooldown() -> Duration {
    Duration::from_secs(10)
}
fn default_blast_radius_window() -> Duration {
    Duration::from_secs(60)
}

/// What an action does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Http {
        /// `None`: the method is the template `<name>.method`, rendered per request.
        method: Option<reqwest::Method>,
        /// Names of the header templates, in order.
        headers: Vec<String>,
        secret: Option<Vec<u8>>,
        /// The declared content type is JSON: a body is checked to parse before it is sent.
        json_body: bool,
    },
    Emit {
        topic: String,
        /// `content_type` is JSON.
        json_body: bool,
    },
    Log,
}

/// A validated action; its templates live in the shared [`Templates`] under `<name>.<field>`.
#[derive(Debug, Clone)]
pub struct Action {
    pub settings: ActionSettings,
    pub kind: Kind,
    pub timeout: Duration,
    /// Attempts and backoff of transient failures, from `max_attempts`, `backoff_ms` and
    /// `max_backoff_ms`.
    pub retry: RetryPolicy,
    /// The compiled `approval.when` condition.
    pub approval_when: Option<std::sync::Arc<crate::approval::Condition>>,
}

impl Action {
    pub fn template_name(&self, field: &str) -> String {
        format!("{}.{field}", self.settings.name)
    }
}

/// A configuration error with its location.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("{location}action `{action}` field `{field}`: {message}")]
pub struct ConfigError {
    /// `file:line: ` when the value came from a file, else empty.
    pub location: String,
    pub action: String,
    pub field: String,
    pub message: String,
}

/// Validates and compiles `actions`. `source` is the config file (path and text) they came
/// from, for line numbers; `env` looks up signing secrets.
pub fn compile(
    actions: &[ActionSettings],
    source: Option<(&Path, &str)>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Vec<Action>, Templates), ConfigError> {
    let spans = source.map(|(path, text)| Spans::parse(path, text));
    let mut templates = Templates::default();
    let mut names = BTreeSet::new();
    let mut out = Vec::new();
    for a in actions {
        let fail = |field: &str, message: String| ConfigError {
            location: spans
                .as_ref()
                .and_then(|s| s.locate(&a.name, field))
                .unwrap_or_default(),
            action: a.name.clone(),
            field: field.to_string(),
            message,
        };
        if a.name.trim().is_empty() {
            return Err(fail("name", "must not be empty".into()));
        }
        if !names.insert(a.name.clone()) {
            return Err(fail("name", "defined twice".into()));
        }
        if a.max_attempts == 0 {
            return Err(fail("max_attempts", "must be at least 1".into()));
        }
        if a.rate_per_sec < 0.0 || !a.rate_per_sec.is_finite() {
            return Err(fail("rate_per_sec", "must be 0 (off) or positive".into()));
        }
        if a.rate_burst == 0 {
            return Err(fail("rate_burst", "must be at least 1".into()));
        }
        if a.blast_radius_max > 0 && a.blast_radius_window.is_zero() {
            return Err(fail("blast_radius_window", "must be positive".into()));
        }
        let mut add = |field: &str, source: &str, escape: Escape| -> Result<(), ConfigError> {
            let name = format!("{}.{field}", a.name);
            let vars = templates
                .add_escaped(&name, source, escape)
                .map_err(|e| fail(field, e.to_string()))?;
            for var in vars {
                let root = var.split('.').next().unwrap_or(&var);
                if !TEMPLATE_FIELDS.contains(&root) {
                    return Err(fail(
                        field,
                        format!(
                            "template reads `{var}`, but action requests have no field `{root}` (fields: {})",
                            TEMPLATE_FIELDS.join(", ")
                        ),
                    ));
                }
            }
            Ok(())
        };
        if let Some(lock) = &a.lock {
            if lock.trim().is_empty() {
                return Err(fail(
                    "lock",
                    "must not be empty (remove it for no lock)".into(),
                ));
            }
            add("lock", lock, Escape::RedisKey)?;
        }
        let approval_when = match a.approval.as_ref().and_then(|x| x.when.as_deref()) {
            Some(when) => Some(std::sync::Arc::new(
                crate::approval::Condition::compile(when).map_err(|m| fail("approval", m))?,
            )),
            None => None,
        };
        if a.approval.as_ref().is_some_and(|x| x.timeout.is_zero()) {
            return Err(fail("approval", "timeout must be positive".into()));
        }
        let kind = match a.kind.as_str() {
            "http" => {
                let method = if a.method.contains("{{") {
                    add("method", &a.method, Escape::None)?;
                    None
                } else {
                    Some(parse_method(&a.method).map_err(|m| fail("method", m))?)
                };
                check_url(&a.url).map_err(|m| fail("url", m))?;
                add("url", &a.url, Escape::Url)?;
                let mut headers = Vec::new();
                for (name, value) in &a.headers {
                    reqwest::header::HeaderName::from_bytes(name.as_bytes())
                        .map_err(|_| fail("headers", format!("`{name}` is not a header name")))?;
                    add(&format!("header.{name}"), value, Escape::Header)?;
                    headers.push(name.clone());
                }
                // A templated content type is not a declaration: the body decides (see `body`).
                let content_type = a
                    .headers
                    .iter()
                    .find(|(n, v)| n.eq_ignore_ascii_case("content-type") && !v.contains("{{"))
                    .map(|(_, v)| v.as_str());
                let json_body = content_type.is_some_and(is_json_content_type);
                if let Some(body) = &a.body {
                    add("body", body, Escape::for_body(content_type, body))?;
                }
                let secret = match &a.signing_secret_env {
                    None => None,
                    Some(var) => {
                        let value = env(var).filter(|v| !v.is_empty()).ok_or_else(|| {
                            fail(
                                "signing_secret_env",
                                format!("environment variable `{var}` is not set"),
                            )
                        })?;
                        Some(
                            crate::sign::secret_bytes(&value)
                                .map_err(|m| fail("signing_secret_env", format!("`{var}`: {m}")))?,
                        )
                    }
                };
                Kind::Http {
                    method,
                    headers,
                    secret,
                    json_body,
                }
            }
            "emit" => {
                if a.topic.trim().is_empty() {
                    return Err(fail("topic", "an `emit` action needs a topic".into()));
                }
                check_topic(&a.topic).map_err(|m| fail("topic", m))?;
                if let Some(body) = &a.body {
                    add("body", body, Escape::for_body(Some(&a.content_type), body))?;
                }
                Kind::Emit {
                    topic: a.topic.clone(),
                    json_body: is_json_content_type(&a.content_type),
                }
            }
            "log" => {
                if let Some(message) = &a.message {
                    add("message", message, Escape::Log)?;
                }
                Kind::Log
            }
            other => {
                return Err(fail(
                    "kind",
                    format!("unknown kind `{other}` (expected `http`, `emit` or `log`)"),
                ))
            }
        };
        out.push(Action {
            settings: a.clone(),
            kind,
            timeout: a.timeout.max(Duration::from_millis(1)),
            retry: RetryPolicy::in_place(
                a.max_attempts,
                Backoff {
                    first: a.backoff,
                    max: a.max_backoff,
                },
            ),
            approval_when,
        });
    }
    Ok((out, templates))
}

/// A standard HTTP method name (any case).
pub fn parse_method(name: &str) -> Result<reqwest::Method, String> {
    let upper = name.trim().to_ascii_uppercase();
    match upper.as_str() {
        "GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS" => {
            Ok(reqwest::Method::from_bytes(upper.as_bytes()).expect("standard method"))
        }
        _ => Err(format!(
            "`{name}` is not an HTTP method (GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS)"
        )),
    }
}

/// An `http(s)` URL, checked as far as it is not templated.
fn check_url(url: &str) -> Result<(), String> {
    if url.trim().is_empty() {
        return Err("an `http` action needs a url".into());
    }
    if url.trim_start().starts_with("{{") {
        // Wholly templated: only a trusted whole URL (`raw`), its host checked per request by
        // the allowlist. Without `raw` every render would be refused: say so now.
        if !reflex_core::template::source_uses_raw(url) {
            return Err(format!(
                "`{url}`: a value cannot choose the scheme, host or port; write them in the template (`https://host/path/{{{{ params.x }}}}`), or take a whole URL the enricher bound with `{{{{ target | raw }}}}` (not escaped: list its hosts in actor.allowed_hosts)"
            ));
        }
        return Ok(());
    }
    let lower = url.to_ascii_lowercase();
    if !(lower.starts_with("http://") || lower.starts_with("https://")) {
        return Err(format!("`{url}` is not an http:// or https:// URL"));
    }
    // The static part up to the first template tag must already be a valid URL prefix.
    let fixed = url.find("{{").or(url.find("{%")).map_or(url, |i| &url[..i]);
    let probe = if fixed.len() < url.len() {
        format!("{fixed}x")
    } else {
        fixed.to_string()
    };
    let parsed =
        reqwest::Url::parse(&probe).map_err(|e| format!("`{url}` is not a valid URL: {e}"))?;
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("`{url}` has no host"));
    }
    Ok(())
}

/// A literal Kafka topic name (what the broker accepts: at most 249 of `A-Z a-z 0-9 . _ -`).
fn check_topic(topic: &str) -> Result<(), String> {
    let valid = topic.len() <= 249
        && topic != "."
        && topic != ".."
        && topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "`{topic}` is not a topic name (at most 249 of A-Z a-z 0-9 . _ -): emit topics are written literally, never templated, so event data cannot choose where an event goes"
        ))
    }
}

/// Byte spans of `[[actor.action]]` fields in a config file, for line numbers.
struct Spans<'a> {
    path: &'a Path,
    text: &'a str,
    actions: Vec<BTreeMap<String, toml::Spanned<toml::Value>>>,
}

#[derive(Deserialize, Default)]
struct SpanFile {
    #[serde(default)]
    actor: SpanActor,
}

#[derive(Deserialize, Default)]
struct SpanActor {
    #[serde(default)]
    action: Vec<BTreeMap<String, toml::Spanned<toml::Value>>>,
}

impl<'a> Spans<'a> {
    fn parse(path: &'a Path, text: &'a str) -> Self {
        let actions = toml::from_str::<SpanFile>(text)
            .map(|f| f.actor.action)
            .unwrap_or_default();
        Self {
            path,
            text,
            actions,
        }
    }

    /// `file:line: ` of `field` (or of a `header.<name>` entry, or of the action's name when the
    /// field is absent) in the action named `name`.
    fn locate(&self, name: &str, field: &str) -> Option<String> {
        let table = self
            .actions
            .iter()
            .find(|t| t.get("name").and_then(|v| v.get_ref().as_str()) == Some(name))?;
        let top = field.split('.').next().unwrap_or(field);
        let top = if top == "header" { "headers" } else { top };
        let span = table.get(top).or_else(|| table.get("name"))?.span();
        Some(format!(
            "{}:{}: ",
            self.path.display(),
            reflex_core::line_of(self.text, span.start)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Vec<ActionSettings> {
        #[derive(Deserialize)]
        struct F {
            actor: A,
        }
        #[derive(Deserialize)]
        struct A {
            action: Vec<ActionSettings>,
        }
        toml::from_str::<F>(text).unwrap().actor.action
    }

    fn compile_text(text: &str) -> Result<(Vec<Action>, Templates), ConfigError> {
        compile(&parse(text), Some((Path::new("actor.toml"), text)), &|v| {
            (v == "SECRET").then(|| "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_string())
        })
    }

    #[test]
    fn valid_actions_compile() {
        let (actions, templates) = compile_text(
            r#"
[[actor.action]]
name = "restart"
kind = "http"
url = "http://gw/pods/{{ params.pod }}/restart"
headers = { x-owner = "{{ context.owner }}" }
body = '{"pod": "{{ params.pod }}"}'
signing_secret_env = "SECRET"

[[actor.action]]
name = "chain"
kind = "emit"
topic = "reflex.events.chained"

[[actor.action]]
name = "note"
kind = "log"
message = "would restart {{ target }}"

[[actor.action]]
name = "bound-by-enricher"
kind = "http"
method = "{{ params.method }}"
url = "{{ target | raw }}"
"#,
        )
        .unwrap();
        assert_eq!(actions.len(), 4);
        assert!(matches!(&actions[3].kind, Kind::Http { method: None, .. }));
        assert!(
            matches!(&actions[0].kind, Kind::Http { secret: Some(_), headers, .. } if headers == &["x-owner"])
        );
        let ctx = serde_json::json!({"params": {"pod": "p1"}, "context": {"owner": "a"}});
        assert_eq!(
            templates.render("restart.url", &ctx).unwrap(),
            "http://gw/pods/p1/restart"
        );
    }

    #[test]
    fn errors_name_file_line_action_and_field() {
        let base = "[actor]\n\n[[actor.action]]\nname = \"a\"\n";
        let cases = [
            ("kind = \"ftp\"\n", 5, "kind", "unknown kind `ftp`"),
            (
                "kind = \"http\"\nurl = \"http://x/{{ payload.pod }}\"\n",
                6,
                "url",
                "no field `payload`",
            ),
            (
                "kind = \"http\"\nurl = \"ftp://x/\"\n",
                6,
                "url",
                "not an http",
            ),
            (
                "kind = \"http\"\nurl = \"http://bad host/{{ target }}\"\n",
                6,
                "url",
                "not a valid URL",
            ),
            (
                "kind = \"http\"\nurl = \"http://x/\"\nbody = \"{{ params.pod \"\n",
                7,
                "body",
                "syntax error",
            ),
            (
                "kind = \"http\"\nurl = \"http://x/\"\nsigning_secret_env = \"NOPE\"\n",
                7,
                "signing_secret_env",
                "`NOPE` is not set",
            ),
            ("kind = \"emit\"\n", 4, "topic", "needs a topic"),
            (
                "kind = \"emit\"\ntopic = \"reflex.{{ params.kind }}\"\n",
                6,
                "topic",
                "never templated",
            ),
            (
                "kind = \"http\"\nurl = \"{{ target }}\"\n",
                6,
                "url",
                "{{ target | raw }}",
            ),
            (
                "kind = \"http\"\nurl = \"http://x/{{ params.pod | urlencode }}\"\n",
                6,
                "url",
                "encode them twice",
            ),
            (
                "kind = \"http\"\nmethod = \"G T\"\nurl = \"http://x/\"\n",
                6,
                "method",
                "not an HTTP method",
            ),
            (
                "kind = \"log\"\nlock = \"{{ payload.host }}\"\n",
                6,
                "lock",
                "no field `payload`",
            ),
            (
                "kind = \"log\"\napproval = { when = 'payload.env == \"prod\"' }\n",
                6,
                "approval",
                "no field `payload`",
            ),
            (
                "kind = \"log\"\napproval = { timeout = \"0\" }\n",
                6,
                "approval",
                "timeout must be positive",
            ),
        ];
        for (tail, line, field, message) in cases {
            let text = format!("{base}{tail}");
            let Err(e) = compile_text(&text) else {
                panic!("{tail} compiled")
            };
            assert_eq!(e.field, field, "{e}");
            assert_eq!(e.location, format!("actor.toml:{line}: "), "{e}");
            assert!(e.to_string().contains(message), "{e}");
            assert!(
                e.to_string()
                    .starts_with(&format!("actor.toml:{line}: action `a` field `{field}`")),
                "{e}"
            );
        }
    }

    #[test]
    fn allowlist_matches_hosts_ports_and_subdomains() {
        let hosts = [
            "gw.local",
            "api.example.com:8443",
            "*.svc.cluster.local",
            "127.0.0.1",
        ]
        .map(String::from);
        let a = Allowlist::new(&hosts, &["http".into(), "https".into()]).unwrap();
        for ok in [
            "http://gw.local/pods/x",
            "https://GW.local:9999/",
            "https://api.example.com:8443/x",
            "http://k8s.svc.cluster.local/",
            "http://127.0.0.1:5000/hook",
        ] {
            assert!(a.check(ok).is_ok(), "{ok}");
        }
        for (bad, says) in [
            ("http://evil.example/x", "`evil.example`"),
            ("https://api.example.com/x", "port 443"),
            ("http://svc.cluster.local/", "`svc.cluster.local`"),
            ("http://gw.local.evil.example/", "`gw.local.evil.example`"),
            ("http://gw.local@evil.example/", "`evil.example`"),
            ("file:///etc/passwd", "actor.allowed_schemes"),
        ] {
            let e = a.check(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
            assert!(e.contains("actor.allowed_"), "{bad}: {e}");
        }
        let open = Allowlist::new(&[], &["https".into()]).unwrap();
        assert!(open.check("https://anything/").is_ok());
        assert!(open.check("http://anything/").is_err());
        assert!(Allowlist::new(&["http://x/".into()], &[]).is_err());
    }

    #[test]
    fn example_config_is_valid() {
        let text = include_str!("../actor.example.toml");
        let (actions, _) = compile(
            &parse(text),
            Some((Path::new("actor.example.toml"), text)),
            &|_| Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()),
        )
        .unwrap();
        assert!(actions.iter().any(|a| a.settings.name == "restart-pod"));
    }
}

/// Where `http` actions may go: `actor.allowed_hosts` and `actor.allowed_schemes`.
#[derive(Debug, Clone, Default)]
pub struct Allowlist {
    hosts: Vec<String>,
    schemes: Vec<String>,
}

impl Allowlist {
    /// Normalises the entries (lower case); an entry that is not a host pattern is an error.
    pub fn new(hosts: &[String], schemes: &[String]) -> Result<Self, String> {
        let mut out = Vec::new();
        for h in hosts {
            let h = h.trim().to_ascii_lowercase();
            let bare = h.strip_prefix("*.").unwrap_or(&h);
            if bare.is_empty() || bare.contains('/') || bare.contains('*') || bare.contains('@') {
                return Err(format!(
                    "actor.allowed_hosts: `{h}` is not `host`, `host:port` or `*.domain`"
                ));
            }
            out.push(h);
        }
        Ok(Self {
            hosts: out,
            schemes: schemes
                .iter()
                .map(|s| s.trim().to_ascii_lowercase())
                .collect(),
        })
    }

    /// Whether any host is allowed (no list configured).
    pub fn is_open(&self) -> bool {
        self.hosts.is_empty()
    }

    /// Checks a rendered URL; the error names the host (or scheme) and the setting.
    pub fn check(&self, url: &str) -> Result<(), String> {
        let parsed =
            reqwest::Url::parse(url).map_err(|e| format!("`{url}` is not a valid URL: {e}"))?;
        let scheme = parsed.scheme();
        if !self.schemes.iter().any(|s| s == scheme) {
            return Err(format!(
                "scheme `{scheme}` of `{url}` is not in actor.allowed_schemes ({})",
                self.schemes.join(", ")
            ));
        }
        let host = parsed
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("`{url}` has no host"))?
            .to_ascii_lowercase();
        if self.is_open() {
            return Ok(());
        }
        let port = parsed.port_or_known_default();
        let allowed = self.hosts.iter().any(|entry| {
            let (pattern, want_port) = match entry.rsplit_once(':') {
                // `[::1]:8080` and `host:8080`; a bare IPv6 literal has no `]:`.
                Some((h, p)) if !h.ends_with(':') && p.parse::<u16>().is_ok() => {
                    (h, p.parse::<u16>().ok())
                }
                _ => (entry.as_str(), None),
            };
            let host_ok = match pattern.strip_prefix("*.") {
                Some(domain) => host.ends_with(&format!(".{domain}")),
                None => host == pattern,
            };
            host_ok && want_port.is_none_or(|p| Some(p) == port)
        });
        if allowed {
            Ok(())
        } else {
            Err(format!(
                "host `{host}`{} is not in actor.allowed_hosts: the request was not sent (add it to the list if this target is approved)",
                port.map(|p| format!(" (port {p})")).unwrap_or_default()
            ))
        }
    }
}
