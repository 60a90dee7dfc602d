//! The bindings file: lookups (where context comes from) and bindings (which action requests an
//! event turns into). It is a separate TOML file named by `enricher.bindings_file`, so every
//! error can name its exact line.
//!
//! ```toml
//! [[lookup]]
//! name = "owner"                             # read in templates as context.owner.<field>
//! kind = "redis"                             # HGETALL of the rendered key
//! key = "owners:{{ payload.namespace }}"
//! on_missing = "default"                     # "fail" (dead letter), "default" or "skip"
//! default = { team = "unknown" }
//!
//! [[lookup]]
//! name = "tier"
//! kind = "file"                              # a static table loaded at start-up
//! path = "tiers.toml"                        # relative to this file; `[row-key]` tables of strings
//! key = "{{ payload.cluster }}"
//! on_missing = "fail"
//!
//! [[lookup]]
//! name = "service"
//! kind = "http"                              # GET, JSON object flattened to strings, TTL cache
//! url = "http://cmdb.local/services/{{ payload.pod }}"   # each value one encoded segment
//! ttl = "1m"                                 # default "1m" (a duration with a unit)
//! cache_max_entries = 10000                  # default 10000
//! timeout = "2s"                             # default "2s"
//! on_missing = "skip"
//!
//! [[binding]]
//! action = "restart-pod"                     # the idempotency key is "<action>:<ce_id>"
//! kind = "http"                              # "http", "emit" or "log"
//! target = "https://k8s.local/api/v1/namespaces/{{ payload.namespace }}/pods/{{ payload.pod }}"
//! params = { method = "DELETE", team = "{{ context.owner.team }}" }
//! body = '{"reason": "{{ payload.reason }}"}'   # optional; JSON-escaped, must parse
//! body_format = "json"                       # optional: "json" or "text" (default: json when
//!                                            # the body starts with `{` or `[`)
//! when_types = ["io.k8s.pod.crashloop"]       # optional: only events of these ce_type values
//! when_rules = ["crashloop-remediation"]     # optional: only events the router sent by these rules
//! dry_run = false
//! ```
//!
//! Templates are strict Jinja ([`reflex_core::template`]): they see `ce` (CloudEvents attributes
//! without the `ce_` prefix), `payload` (the decoded Avro record), `key`, `topic`, `headers`
//! (UTF-8 headers by name) and, in bindings only, `context.<lookup name>` (a map of strings).
//! Lookup key and URL templates cannot read `context`: lookups run concurrently.
//!
//! Values are escaped for where they land ([`reflex_core::template::Escape`]): in http lookup
//! URLs and in an http binding's URL `target` each value is one encoded path segment or query
//! value (scheme and host are literal); in Redis lookup keys `:`, `*`, `{`, `}`, whitespace and
//! the like are percent-encoded, so a value is one key segment under the literal text; in JSON
//! bodies values are JSON-escaped and the body must parse. File lookup keys, `params` and other
//! targets are data the actor escapes where it uses them. `{{ x | raw }}` opts out (warned at
//! start-up).
//! A lookup with `on_missing = "skip"` leaves `context.<name>` undefined, and strict templates
//! fail on undefined values (the event is dead-lettered), so templates reading it need a
//! fallback: `{{ context.svc.tier if context.svc is defined else 'none' }}`.
//!
//! Checked at start-up, with file, line and field named: the file parses, names are unique,
//! kinds are known, every template compiles, reads only known variables, `context.<name>` names a
//! configured lookup, every `payload.<path>` exists in the registered schema of each input topic,
//! file tables load, and http lookup URLs have a literal, valid scheme and host.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use reflex_core::actions::ActionKind;
use reflex_core::line_of;
use reflex_core::template::{Escape, Templates};
use serde::Deserialize;
use thiserror::Error;
use toml::Spanned;

/// Variables every template may read.
pub const VARIABLES: [&str; 6] = ["ce", "payload", "key", "topic", "headers", "context"];
/// Jinja globals that `undeclared_variables` reports but that are not context variables.
const JINJA_GLOBALS: [&str; 4] = ["range", "dict", "debug", "namespace"];

/// A bindings-file problem: `file:line: owner: field: message`.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("{}:{line}: {}{}{message}", file.display(),
    owner.as_ref().map(|o| format!("{o}: ")).unwrap_or_default(),
    field.as_ref().map(|f| format!("{f}: ")).unwrap_or_default())]
pub struct SpecError {
    pub file: PathBuf,
    pub line: usize,
    /// e.g. ``binding `restart-pod` `` or ``lookup `owner` ``.
    pub owner: Option<String>,
    /// e.g. `params.pod`, `url`.
    pub field: Option<String>,
    pub message: String,
}

/// What a lookup does when it finds nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnMissing {
    /// The event is dead-lettered (permanent error naming the lookup and key).
    Fail,
    /// The lookup's context is this map.
    Default(BTreeMap<String, String>),
    /// The lookup's context is absent; templates reading it must use `| default(...)`.
    Skip,
}

/// Where a lookup reads from.
#[derive(Debug, Clone)]
pub enum SourceSpec {
    /// `HGETALL <key>`.
    Redis,
    /// A static table: row key → map of strings.
    File {
        path: PathBuf,
        table: HashMap<String, BTreeMap<String, String>>,
    },
    /// `GET <url>` with a TTL cache; 404 means missing.
    Http {
        ttl: Duration,
        max_entries: usize,
        timeout: Duration,
    },
}

impl SourceSpec {
    pub fn kind(&self) -> &'static str {
        match self {
            SourceSpec::Redis => "redis",
            SourceSpec::File { .. } => "file",
            SourceSpec::Http { .. } => "http",
        }
    }
}

/// One configured lookup.
#[derive(Debug, Clone)]
pub struct LookupSpec {
    pub name: String,
    pub line: usize,
    pub source: SourceSpec,
    /// Template name of the key (redis, file) or URL (http).
    pub key_template: String,
    pub on_missing: OnMissing,
}

/// One configured binding: event → action request.
#[derive(Debug, Clone)]
pub struct Binding {
    pub action: String,
    pub line: usize,
    pub kind: ActionKind,
    /// Template names.
    pub target: String,
    pub params: Vec<(String, String)>,
    pub body: Option<String>,
    pub when_types: Vec<String>,
    pub when_rules: Vec<String>,
    pub dry_run: bool,
}

impl Binding {
    /// Whether this binding applies to an event of `ce_type` sent by router rule `rule`.
    pub fn selects(&self, ce_type: &str, rule: Option<&str>) -> bool {
        (self.when_types.is_empty() || self.when_types.iter().any(|t| t == ce_type))
            && (self.when_rules.is_empty()
                || rule.is_some_and(|r| self.when_rules.iter().any(|x| x == r)))
    }
}

/// A `payload.<path>` a template reads, with where it is written (for schema checks).
#[derive(Debug, Clone)]
pub struct PayloadUse {
    pub line: usize,
    pub owner: String,
    pub field: String,
    pub path: Vec<String>,
}

/// The whole bindings file, compiled.
pub struct Spec {
    pub file: PathBuf,
    pub templates: Templates,
    pub lookups: Vec<LookupSpec>,
    pub bindings: Vec<Binding>,
    pub payload_uses: Vec<PayloadUse>,
}

impl std::fmt::Debug for Spec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spec")
            .field("file", &self.file)
            .field("lookups", &self.lookups)
            .field("bindings", &self.bindings)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    lookup: Vec<Spanned<RawLookup>>,
    #[serde(default)]
    binding: Vec<Spanned<RawBinding>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLookup {
    name: Spanned<String>,
    kind: Spanned<String>,
    #[serde(default)]
    #[allow(dead_code)]
    description: String,
    #[serde(default)]
    key: Option<Spanned<String>>,
    #[serde(default)]
    path: Option<Spanned<String>>,
    #[serde(default)]
    url: Option<Spanned<String>>,
    #[serde(default)]
    on_missing: Option<Spanned<String>>,
    #[serde(default)]
    default: Option<BTreeMap<String, String>>,
    #[serde(
        default,
        deserialize_with = "reflex_runtime::duration::deserialize_option"
    )]
    ttl: Option<Duration>,
    #[serde(default)]
    cache_max_entries: Option<usize>,
    #[serde(
        default,
        deserialize_with = "reflex_runtime::duration::deserialize_option"
    )]
    timeout: Option<Duration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBinding {
    action: Spanned<String>,
    kind: Spanned<String>,
    #[serde(default)]
    #[allow(dead_code)]
    description: String,
    target: Spanned<String>,
    #[serde(default)]
    params: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    body: Option<Spanned<String>>,
    #[serde(default)]
    body_format: Option<Spanned<String>>,
    #[serde(default)]
    when_types: Vec<String>,
    #[serde(default)]
    when_rules: Vec<String>,
    #[serde(default)]
    dry_run: bool,
}

struct Ctx<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Ctx<'_> {
    fn err(
        &self,
        line: usize,
        owner: Option<&str>,
        field: Option<&str>,
        message: String,
    ) -> SpecError {
        SpecError {
            file: self.file.to_path_buf(),
            line,
            owner: owner.map(str::to_string),
            field: field.map(str::to_string),
            message,
        }
    }
    fn line<T>(&self, s: &Spanned<T>) -> usize {
        line_of(self.text, s.span().start)
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl Spec {
    /// Reads and compiles a bindings file.
    pub fn load(path: &Path) -> Result<Spec, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|e| SpecError {
            file: path.to_path_buf(),
            line: 0,
            owner: None,
            field: None,
            message: format!("cannot read the bindings file: {e} (set enricher.bindings_file)"),
        })?;
        Self::parse(path, &text)
    }

    /// Compiles bindings-file text; `file` names it in messages and anchors relative `path`s.
    pub fn parse(file: &Path, text: &str) -> Result<Spec, SpecError> {
        let cx = Ctx { file, text };
        // Old `*_ms` names would only be "unknown field": say what they are called now.
        let renamed = reflex_runtime::config::renamed_settings_in_toml(text);
        if !renamed.is_empty() {
            return Err(cx.err(0, None, None, renamed.join("; ")));
        }
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start)).unwrap_or(0);
            cx.err(line, None, None, e.message().to_string())
        })?;
        let mut templates = Templates::default();
        let mut payload_uses = Vec::new();
        let mut lookups: Vec<LookupSpec> = Vec::new();

        for spanned in raw.lookup {
            let line = cx.line(&spanned);
            let raw = spanned.into_inner();
            let name = raw.name.get_ref().trim().to_string();
            if !valid_name(&name) {
                return Err(cx.err(
                    cx.line(&raw.name),
                    None,
                    Some("name"),
                    format!("lookup name `{name}` must be an identifier (letters, digits, _), it is read as context.<name>"),
                ));
            }
            let owner = format!("lookup `{name}`");
            let o = Some(owner.as_str());
            if lookups.iter().any(|l| l.name == name) {
                return Err(cx.err(line, o, Some("name"), "duplicate lookup name".into()));
            }
            let kind = raw.kind.get_ref().as_str();
            let (field, template) = match kind {
                "redis" | "file" => ("key", raw.key.as_ref()),
                "http" => ("url", raw.url.as_ref()),
                other => {
                    return Err(cx.err(
                        cx.line(&raw.kind),
                        o,
                        Some("kind"),
                        format!(
                            "unknown lookup kind `{other}`: use \"redis\", \"file\" or \"http\""
                        ),
                    ))
                }
            };
            let template = template.ok_or_else(|| {
                cx.err(
                    line,
                    o,
                    Some(field),
                    format!("a {kind} lookup needs `{field}`"),
                )
            })?;
            for (f, set, used) in [
                ("key", raw.key.is_some(), kind != "http"),
                ("url", raw.url.is_some(), kind == "http"),
                ("path", raw.path.is_some(), kind == "file"),
            ] {
                if set && !used {
                    return Err(cx.err(line, o, Some(f), format!("not used by a {kind} lookup")));
                }
            }
            if kind != "http"
                && (raw.ttl.is_some() || raw.cache_max_entries.is_some() || raw.timeout.is_some())
            {
                return Err(cx.err(
                    line,
                    o,
                    None,
                    "ttl, cache_max_entries and timeout are only for http lookups".into(),
                ));
            }
            let template_name = format!("lookup:{name}:{field}");
            let tline = cx.line(template);
            // File keys only pick a row of the table; Redis keys and URLs are destinations.
            let escape = match kind {
                "redis" => Escape::RedisKey,
                "http" => Escape::Url,
                _ => Escape::None,
            };
            compile(
                &cx,
                &mut templates,
                (&template_name, escape),
                template.get_ref(),
                tline,
                &owner,
                field,
                &[],
                false,
                &mut payload_uses,
            )?;
            let source = match kind {
                "redis" => SourceSpec::Redis,
                "file" => {
                    let path = raw.path.as_ref().ok_or_else(|| {
                        cx.err(line, o, Some("path"), "a file lookup needs `path`".into())
                    })?;
                    let resolved = match file.parent() {
                        Some(dir) if Path::new(path.get_ref()).is_relative() => {
                            dir.join(path.get_ref())
                        }
                        _ => PathBuf::from(path.get_ref()),
                    };
                    let table = load_table(&resolved)
                        .map_err(|m| cx.err(cx.line(path), o, Some("path"), m))?;
                    SourceSpec::File {
                        path: resolved,
                        table,
                    }
                }
                _ => {
                    check_url_prefix(template.get_ref())
                        .map_err(|m| cx.err(tline, o, Some("url"), m))?;
                    SourceSpec::Http {
                        ttl: raw.ttl.unwrap_or(Duration::from_secs(60)),
                        max_entries: raw.cache_max_entries.unwrap_or(10_000).max(1),
                        timeout: raw.timeout.unwrap_or(Duration::from_secs(2)),
                    }
                }
            };
            let on_missing = match raw.on_missing.as_ref().map(|s| s.get_ref().as_str()) {
                None | Some("fail") => OnMissing::Fail,
                Some("skip") => OnMissing::Skip,
                Some("default") => OnMissing::Default(raw.default.clone().ok_or_else(|| {
                    cx.err(
                        line,
                        o,
                        Some("default"),
                        "on_missing = \"default\" needs `default = { field = \"value\", ... }`"
                            .into(),
                    )
                })?),
                Some(other) => {
                    return Err(cx.err(
                        raw.on_missing.as_ref().map(|s| cx.line(s)).unwrap_or(line),
                        o,
                        Some("on_missing"),
                        format!("`{other}`: use \"fail\", \"default\" or \"skip\""),
                    ))
                }
            };
            if raw.default.is_some() && !matches!(on_missing, OnMissing::Default(_)) {
                return Err(cx.err(
                    line,
                    o,
                    Some("default"),
                    "`default` is only used with on_missing = \"default\"".into(),
                ));
            }
            lookups.push(LookupSpec {
                name,
                line,
                source,
                key_template: template_name,
                on_missing,
            });
        }

        let lookup_names: Vec<&str> = lookups.iter().map(|l| l.name.as_str()).collect();
        let mut bindings: Vec<Binding> = Vec::new();
        for spanned in raw.binding {
            let line = cx.line(&spanned);
            let raw = spanned.into_inner();
            let action = raw.action.get_ref().trim().to_string();
            if action.is_empty() {
                return Err(cx.err(
                    line,
                    None,
                    Some("action"),
                    "a binding needs a non-empty action name".into(),
                ));
            }
            let owner = format!("binding `{action}`");
            let o = Some(owner.as_str());
            if bindings.iter().any(|b| b.action == action) {
                return Err(cx.err(
                    line,
                    o,
                    Some("action"),
                    "duplicate action name (the idempotency key is <action>:<ce_id>, so actions must be unique)".into(),
                ));
            }
            let kind = match raw.kind.get_ref().as_str() {
                "http" => ActionKind::Http,
                "emit" => ActionKind::Emit,
                "log" => ActionKind::Log,
                other => {
                    return Err(cx.err(
                        cx.line(&raw.kind),
                        o,
                        Some("kind"),
                        format!("unknown action kind `{other}`: use \"http\", \"emit\" or \"log\""),
                    ))
                }
            };
            let mut compile_field = |field: &str,
                                     source: &Spanned<String>,
                                     escape: Escape|
             -> Result<String, SpecError> {
                let name = format!("binding:{action}:{field}");
                compile(
                    &cx,
                    &mut templates,
                    (&name, escape),
                    source.get_ref(),
                    cx.line(source),
                    &owner,
                    field,
                    &lookup_names,
                    true,
                    &mut payload_uses,
                )?;
                Ok(name)
            };
            // A URL target is escaped as a URL; any other target and the params are data the
            // actor escapes where its templates use them.
            let url_target = kind == ActionKind::Http && raw.target.get_ref().contains("://");
            if url_target {
                check_url_prefix(raw.target.get_ref())
                    .map_err(|m| cx.err(cx.line(&raw.target), o, Some("target"), m))?;
            }
            let target = compile_field(
                "target",
                &raw.target,
                if url_target {
                    Escape::Url
                } else {
                    Escape::None
                },
            )?;
            let mut params = Vec::new();
            for (param, source) in &raw.params {
                params.push((
                    param.clone(),
                    compile_field(&format!("params.{param}"), source, Escape::None)?,
                ));
            }
            let body_escape = match raw.body_format.as_ref().map(|f| (f, f.get_ref().as_str())) {
                None => raw
                    .body
                    .as_ref()
                    .map_or(Escape::None, |b| Escape::for_body(None, b.get_ref())),
                Some((_, "json")) => Escape::Json,
                Some((_, "text")) => Escape::None,
                Some((f, other)) => {
                    return Err(cx.err(
                        cx.line(f),
                        o,
                        Some("body_format"),
                        format!("`{other}`: use \"json\" (values JSON-escaped, the body must parse) or \"text\" (values as they are)"),
                    ))
                }
            };
            let body = raw
                .body
                .as_ref()
                .map(|b| compile_field("body", b, body_escape))
                .transpose()?;
            bindings.push(Binding {
                action,
                line,
                kind,
                target,
                params,
                body,
                when_types: raw.when_types,
                when_rules: raw.when_rules,
                dry_run: raw.dry_run,
            });
        }
        Ok(Spec {
            file: file.to_path_buf(),
            templates,
            lookups,
            bindings,
            payload_uses,
        })
    }

    /// Checks every `payload.<path>` against an input topic's value schema (`subject` names
    /// where it came from in the message).
    pub fn check_schema(&self, topic: &str, subject: &str, schema: &str) -> Result<(), SpecError> {
        for u in &self.payload_uses {
            let segments: Vec<&str> = u.path.iter().map(String::as_str).collect();
            reflex_core::avro::check_field_path(schema, &segments).map_err(|message| SpecError {
                file: self.file.clone(),
                line: u.line,
                owner: Some(u.owner.clone()),
                field: Some(u.field.clone()),
                message: format!(
                    "payload.{} does not exist in the schema of topic `{topic}` (subject `{subject}`): {message}",
                    u.path.join(".")
                ),
            })?;
        }
        Ok(())
    }

    /// The templates that use `raw` (values written unescaped), as ``binding `x` field
    /// `body` `` / ``lookup `y` field `url` ``: the enricher warns about each at start-up,
    /// `reflexctl rules test` lists them.
    pub fn raw_fields(&self) -> Vec<String> {
        let mut out = Vec::new();
        for l in &self.lookups {
            if self.templates.uses_raw(&l.key_template) {
                let field = l.key_template.rsplit(':').next().unwrap_or_default();
                out.push(format!("lookup `{}` field `{field}`", l.name));
            }
        }
        for b in &self.bindings {
            let fields = std::iter::once(("target".to_string(), &b.target))
                .chain(b.params.iter().map(|(p, t)| (format!("params.{p}"), t)))
                .chain(b.body.iter().map(|t| ("body".to_string(), t)));
            for (field, template) in fields {
                if self.templates.uses_raw(template) {
                    out.push(format!("binding `{}` field `{field}`", b.action));
                }
            }
        }
        out
    }

    /// Whether any lookup reads Redis.
    pub fn uses_redis(&self) -> bool {
        self.lookups
            .iter()
            .any(|l| matches!(l.source, SourceSpec::Redis))
    }
}

/// Compiles one template and checks the variables it reads.
#[allow(clippy::too_many_arguments)]
fn compile(
    cx: &Ctx<'_>,
    templates: &mut Templates,
    (name, escape): (&str, Escape),
    source: &str,
    line: usize,
    owner: &str,
    field: &str,
    lookups: &[&str],
    context_allowed: bool,
    payload_uses: &mut Vec<PayloadUse>,
) -> Result<(), SpecError> {
    let err = |m: String| cx.err(line, Some(owner), Some(field), m);
    let vars = templates.add_escaped(name, source, escape).map_err(|e| {
        // The template's own line, counted from the field's line (multi-line strings).
        let line = line + e.line.unwrap_or(1).saturating_sub(1);
        cx.err(
            line,
            Some(owner),
            Some(field),
            format!("template does not compile: {}", e.message),
        )
    })?;
    for var in vars {
        let mut segments = var.split('.');
        let root = segments.next().unwrap_or_default();
        if JINJA_GLOBALS.contains(&root) {
            continue;
        }
        if !VARIABLES.contains(&root) || (root == "context" && !context_allowed) {
            let available: Vec<&str> = VARIABLES
                .iter()
                .copied()
                .filter(|v| context_allowed || *v != "context")
                .collect();
            return Err(err(format!(
                "unknown variable `{root}` (available: {}{})",
                available.join(", "),
                if context_allowed {
                    ""
                } else {
                    "; lookups cannot read context"
                }
            )));
        }
        let rest: Vec<String> = segments.map(str::to_string).collect();
        match root {
            "payload" if !rest.is_empty() => payload_uses.push(PayloadUse {
                line,
                owner: owner.to_string(),
                field: field.to_string(),
                path: rest,
            }),
            "context" => {
                if let Some(lookup) = rest.first() {
                    if !lookups.contains(&lookup.as_str()) {
                        return Err(err(format!(
                            "context.{lookup}: no lookup named `{lookup}` (configured: {})",
                            if lookups.is_empty() {
                                "none".to_string()
                            } else {
                                lookups.join(", ")
                            }
                        )));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// The literal part of a URL template (before the first `{{` or `{%`) must fix a valid http(s)
/// scheme and host.
fn check_url_prefix(template: &str) -> Result<(), String> {
    let literal_end = [template.find("{{"), template.find("{%")]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(template.len());
    let literal = &template[..literal_end];
    let scheme_host_end = literal
        .find("://")
        .map(|i| {
            let after = i + 3;
            literal[after..]
                .find(['/', '?', '#'])
                .map(|j| after + j)
                .unwrap_or(literal.len())
        })
        .ok_or_else(|| {
            format!("invalid URL `{template}`: the scheme and host must be written literally (e.g. http://host:port/path/{{{{ payload.x }}}})")
        })?;
    if scheme_host_end == literal.len() && literal_end < template.len() {
        return Err(format!(
            "invalid URL `{template}`: the scheme and host must be written literally, before any template expression"
        ));
    }
    let url = reqwest::Url::parse(&literal[..scheme_host_end])
        .map_err(|e| format!("invalid URL `{template}`: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "invalid URL `{template}`: scheme `{}` is not http or https",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("invalid URL `{template}`: no host"));
    }
    Ok(())
}

/// Loads a file table: a TOML file whose top-level tables are rows (`[row-key]`) of scalar
/// values (strings; numbers and booleans are turned into strings).
pub fn load_table(path: &Path) -> Result<HashMap<String, BTreeMap<String, String>>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the table file {}: {e}", path.display()))?;
    let value: toml::Table = toml::from_str(&text).map_err(|e| {
        let line = e.span().map(|s| line_of(&text, s.start)).unwrap_or(0);
        format!("{}:{line}: {}", path.display(), e.message())
    })?;
    let mut table = HashMap::new();
    for (key, row) in value {
        let toml::Value::Table(row) = row else {
            return Err(format!(
                "{}: `{key}` must be a table of strings (`[{key}]` with `field = \"value\"` lines)",
                path.display()
            ));
        };
        let mut out = BTreeMap::new();
        for (field, v) in row {
            let s = match v {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => {
                    return Err(format!(
                        "{}: `{key}.{field}` is a {}, not a string",
                        path.display(),
                        other.type_str()
                    ))
                }
            };
            out.insert(field, s);
        }
        table.insert(key, out);
    }
    Ok(table)
}
