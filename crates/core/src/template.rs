//! Templates for action bindings and action calls (URLs, headers, bodies), in Jinja syntax via
//! `minijinja`: `"{{ payload.pod }}"`, `"{{ context.owner | default('unknown') }}"`.
//!
//! Strict by design: a variable that does not exist is a render error, never an empty string,
//! and [`Templates::add`] reports the variables a template reads so configuration can be checked
//! against schemas at start-up. Rendering is bounded by fuel (work) and output size.
//!
//! **Escaping by context.** Each template is compiled for the place its output goes
//! ([`Escape`]), and every interpolated value (`{{ ... }}`) is written for that place, so event
//! data fills the one value it stands for and never changes the structure around it:
//!
//! - [`Escape::Url`]: a value in the path is one percent-encoded path segment (`/`, `?`, `#`,
//!   `%`, `\` and everything outside `A-Z a-z 0-9 - . _ ~` are encoded; a segment made only of a
//!   value that is empty, `.` or `..` is refused), a value in the query or fragment is an encoded
//!   component, a value in the scheme, host or port is refused. The rendered URL must parse and
//!   still start with the template's literal prefix (`https://host/api/`) after normalisation.
//! - [`Escape::Json`]: inside a JSON string literal a value is string-escaped (no quotes added);
//!   outside one it is written as a JSON value of its own type (numbers and booleans as they
//!   are, strings quoted, maps and lists as objects and arrays, none as `null`). The rendered
//!   text must parse as JSON.
//! - [`Escape::Header`]: the rendered value may not hold CR, LF or any other control character
//!   (tab excepted): refused, never sent.
//! - [`Escape::RedisKey`]: `%`, `:`, `{`, `}`, `*`, `?`, `[`, `]`, `\`, space and control
//!   characters in a value are percent-encoded, so a value is one key segment under the
//!   template's literal text.
//! - [`Escape::Log`]: control characters in a value are written as escapes (`\n`).
//! - [`Escape::None`]: values as they are, for data fields the next stage escapes where they
//!   land (the enricher's `params` and `target`).
//!
//! The opt-out is explicit and greppable: `{{ value | raw }}` writes a value as it is in any
//! context ([`Templates::uses_raw`] tells start-up code to warn). Even then a URL must parse and
//! keep its literal prefix, JSON must parse, and a header value may not hold control characters.
//!
//! A refused render is a [`TemplateError`] with `refused` set; workers treat it as a permanent
//! error (dead letter), and nothing is sent.
//!
//! How: the formatter writes each value as a private marker (`U+E000 index U+E001`) and keeps
//! the value aside; after rendering, the output is walked once with the context's small state
//! machine (where are we in the URL, inside a JSON string or not) and each marker is replaced by
//! its escaped value. Values never pass through the state machine as text, so they cannot forge
//! structure.

use std::collections::{BTreeSet, HashMap};
use std::fmt::{self, Write as _};
use std::sync::Arc;

use minijinja::value::{Object, ObjectRepr};
use minijinja::{Environment, State, UndefinedBehavior, Value};
use serde::Serialize;
use thiserror::Error;

/// Work one render may do (minijinja fuel units); a runaway loop fails instead of hanging.
pub const DEFAULT_FUEL: u64 = 50_000;
/// Largest rendered output, in bytes.
pub const DEFAULT_MAX_OUTPUT: usize = 1 << 20;

/// Marks where a value was written (private use characters; refused in template sources).
const OPEN: char = '\u{E000}';
const CLOSE: char = '\u{E001}';

#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("template `{name}`{}: {}{message}", line.map(|l| format!(" line {l}")).unwrap_or_default(), if *refused { "refused: " } else { "" })]
pub struct TemplateError {
    pub name: String,
    pub line: Option<usize>,
    pub message: String,
    /// A value would have changed the structure of the output (or broke its format): the
    /// render was refused for safety, not because the template is broken.
    pub refused: bool,
}

impl TemplateError {
    fn from_minijinja(name: &str, e: &minijinja::Error) -> Self {
        let mut message = e.kind().to_string();
        if let Some(detail) = e.detail() {
            message = format!("{message}: {detail}");
        }
        Self {
            name: name.to_string(),
            line: e.line(),
            message,
            refused: false,
        }
    }

    fn new(name: &str, message: String, refused: bool) -> Self {
        Self {
            name: name.to_string(),
            line: None,
            message,
            refused,
        }
    }
}

/// Where a template's output goes, which decides how each interpolated value is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Escape {
    /// As it is: a data field the next stage escapes where it lands.
    None,
    /// An absolute `http(s)` URL.
    Url,
    /// A JSON document.
    Json,
    /// One HTTP header value.
    Header,
    /// A Redis key.
    RedisKey,
    /// A log message.
    Log,
}

impl Escape {
    pub fn as_str(self) -> &'static str {
        match self {
            Escape::None => "none",
            Escape::Url => "url",
            Escape::Json => "json",
            Escape::Header => "header",
            Escape::RedisKey => "redis key",
            Escape::Log => "log",
        }
    }

    /// The escaping of a body: JSON when the declared content type says so, or, with none
    /// declared, when the template's literal text starts with `{` or `[` (not a `{{ }}` or
    /// `{% %}` tag); otherwise as it is.
    pub fn for_body(content_type: Option<&str>, template: &str) -> Escape {
        let t = template.trim_start();
        let literal_json = t.starts_with('[')
            || (t.starts_with('{')
                && !t.starts_with("{{")
                && !t.starts_with("{%")
                && !t.starts_with("{#"));
        match content_type {
            Some(ct) if is_json_content_type(ct) => Escape::Json,
            Some(_) => Escape::None,
            None if literal_json => Escape::Json,
            None => Escape::None,
        }
    }
}

/// `application/json`, `application/cloudevents+json`, `application/json; charset=utf-8`, ...
pub fn is_json_content_type(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence.ends_with("+json")
}

/// Checks that `body` parses as JSON (an empty body is no body and passes).
pub fn check_json(body: &str) -> Result<(), String> {
    if body.trim().is_empty() {
        return Ok(());
    }
    serde_json::from_str::<serde::de::IgnoredAny>(body)
        .map(|_| ())
        .map_err(|e| format!("the body is not valid JSON ({e})"))
}

/// What a template was compiled for.
struct Meta {
    escape: Escape,
    /// Normalised literal start of a URL template whose path starts before the first tag.
    url_prefix: Option<String>,
    raw: bool,
}

/// A value written by `{{ ... }}`, kept aside until the output is assembled.
struct Slot {
    value: Value,
    raw: bool,
}

/// The values of one render (a render-local state extension).
#[derive(Default)]
struct Slots(Vec<Slot>);

/// What the `raw` filter returns: a value to be written as it is.
#[derive(Debug)]
struct Raw(Value);

impl Object for Raw {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Plain
    }
    fn render(self: &Arc<Self>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

fn formatter(
    out: &mut minijinja::Output,
    state: &mut State,
    value: &Value,
) -> Result<(), minijinja::Error> {
    let slot = match value.downcast_object_ref::<Raw>() {
        Some(raw) => Slot {
            value: raw.0.clone(),
            raw: true,
        },
        None => Slot {
            value: value.clone(),
            raw: false,
        },
    };
    let slots = state.get_or_insert_extension(Slots::default());
    let index = slots.0.len();
    slots.0.push(slot);
    write!(out, "{OPEN}{index}{CLOSE}").map_err(|_| {
        minijinja::Error::new(minijinja::ErrorKind::WriteFailure, "cannot write output")
    })
}

/// A set of named, compiled templates.
pub struct Templates {
    env: Environment<'static>,
    max_output: usize,
    meta: HashMap<String, Meta>,
}

impl Default for Templates {
    fn default() -> Self {
        Self::new(DEFAULT_FUEL, DEFAULT_MAX_OUTPUT)
    }
}

impl Templates {
    pub fn new(fuel: u64, max_output: usize) -> Self {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_fuel(Some(fuel));
        env.set_formatter(formatter);
        env.add_filter("raw", |v: Value| Value::from_object(Raw(v)));
        Self {
            env,
            max_output,
            meta: HashMap::new(),
        }
    }

    /// Compiles `source` under `name`, values written as they are ([`Escape::None`]); returns
    /// the dotted variable paths it reads (`payload.restart_count`, `context.owner`).
    pub fn add(&mut self, name: &str, source: &str) -> Result<BTreeSet<String>, TemplateError> {
        self.add_escaped(name, source, Escape::None)
    }

    /// Compiles `source` under `name` for the place its output goes; returns the dotted
    /// variable paths it reads.
    pub fn add_escaped(
        &mut self,
        name: &str,
        source: &str,
        escape: Escape,
    ) -> Result<BTreeSet<String>, TemplateError> {
        if source.contains([OPEN, CLOSE]) {
            return Err(TemplateError::new(
                name,
                "the characters U+E000 and U+E001 are reserved and cannot appear in a template"
                    .into(),
                false,
            ));
        }
        if escape == Escape::Url && uses_filter(source, "urlencode") {
            return Err(TemplateError::new(
                name,
                "values in a URL are already encoded for their place: remove `| urlencode` (it would encode them twice)".into(),
                false,
            ));
        }
        self.env
            .add_template_owned(name.to_string(), source.to_string())
            .map_err(|e| TemplateError::from_minijinja(name, &e))?;
        let template = self
            .env
            .get_template(name)
            .map_err(|e| TemplateError::from_minijinja(name, &e))?;
        let vars = template.undeclared_variables(true).into_iter().collect();
        let url_prefix = (escape == Escape::Url)
            .then(|| url_prefix(source))
            .flatten();
        self.meta.insert(
            name.to_string(),
            Meta {
                escape,
                url_prefix,
                raw: source_uses_raw(source),
            },
        );
        Ok(vars)
    }

    /// Whether template `name` uses the `raw` filter (values written unescaped): start-up code
    /// warns about each one.
    pub fn uses_raw(&self, name: &str) -> bool {
        self.meta.get(name).is_some_and(|m| m.raw)
    }

    /// How template `name` escapes its values.
    pub fn escape_of(&self, name: &str) -> Escape {
        self.meta.get(name).map_or(Escape::None, |m| m.escape)
    }

    /// Renders template `name` with `context` (any serde-serializable value, usually a map),
    /// each value escaped for the template's [`Escape`].
    pub fn render(&self, name: &str, context: &impl Serialize) -> Result<String, TemplateError> {
        let template = self
            .env
            .get_template(name)
            .map_err(|e| TemplateError::from_minijinja(name, &e))?;
        let captured = template
            .render_captured(Value::from(minijinja::value::Serde(context)))
            .map_err(|e| TemplateError::from_minijinja(name, &e))?;
        let too_big = |len: usize| {
            TemplateError::new(
                name,
                format!(
                    "output is {len} bytes, over the {} byte limit",
                    self.max_output
                ),
                false,
            )
        };
        let raw_out = captured.output();
        if raw_out.len() > self.max_output {
            return Err(too_big(raw_out.len()));
        }
        let empty = Slots::default();
        let slots = captured.state().get_extension::<Slots>().unwrap_or(&empty);
        let (escape, prefix) = self.meta.get(name).map_or((Escape::None, None), |m| {
            (m.escape, m.url_prefix.as_deref())
        });
        let out = assemble(escape, raw_out, &slots.0, prefix)
            .map_err(|message| TemplateError::new(name, message, true))?;
        if out.len() > self.max_output {
            return Err(too_big(out.len()));
        }
        Ok(out)
    }
}

/// Whether a template source applies the `raw` filter (`| raw`, `|raw`).
pub fn source_uses_raw(source: &str) -> bool {
    uses_filter(source, "raw")
}

/// Whether `source` applies the filter `name` (`| name`); a plain scan, so a filter named in a
/// string literal counts too (it only ever makes a warning or a refusal more likely).
fn uses_filter(source: &str, name: &str) -> bool {
    source.match_indices(name).any(|(i, _)| {
        let before = source[..i].trim_end();
        let after = source[i + name.len()..].chars().next();
        before.ends_with('|') && !after.is_some_and(|c| c.is_alphanumeric() || c == '_')
    })
}

/// The normalised literal start of a URL template when it reaches into the path
/// (`https://host/api/` of `https://host/api/{{ x }}`), else `None`.
fn url_prefix(source: &str) -> Option<String> {
    let end = ["{{", "{%", "{#"]
        .iter()
        .filter_map(|t| source.find(t))
        .min()
        .unwrap_or(source.len());
    let literal = &source[..end];
    let after_scheme = literal.find("://")? + 3;
    literal[after_scheme..].find('/')?;
    reqwest::Url::parse(literal).ok().map(String::from)
}

/// One piece of rendered output.
enum Piece<'a> {
    Text(&'a str),
    Value(&'a Slot),
}

/// Splits rendered output at the value markers.
fn pieces<'a>(out: &'a str, slots: &'a [Slot]) -> Result<Vec<Piece<'a>>, String> {
    let mut result = Vec::new();
    let mut rest = out;
    while let Some(open) = rest.find(OPEN) {
        if open > 0 {
            result.push(Piece::Text(&rest[..open]));
        }
        let after = &rest[open + OPEN.len_utf8()..];
        let close = after
            .find(CLOSE)
            .ok_or("a value marker was cut (a filter block changed the output of `{{ }}`)")?;
        let slot = after[..close]
            .parse::<usize>()
            .ok()
            .and_then(|i| slots.get(i))
            .ok_or("a value marker was changed (a filter block changed the output of `{{ }}`)")?;
        result.push(Piece::Value(slot));
        rest = &after[close + CLOSE.len_utf8()..];
    }
    if rest.contains(CLOSE) {
        return Err("a value marker was cut (a filter block changed the output of `{{ }}`)".into());
    }
    if !rest.is_empty() {
        result.push(Piece::Text(rest));
    }
    Ok(result)
}

/// A value as text, for quoting in messages: escaped and cut short.
fn shown(text: &str) -> String {
    let mut s: String = format!("{text:?}");
    if s.len() > 80 {
        let mut cut = 77;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

/// The text of a value to be escaped; values holding the markers (the output of a macro or a
/// captured block, or hostile data) are refused in escaping contexts.
fn text_of(slot: &Slot) -> Result<String, String> {
    let text = slot.value.to_string();
    if text.contains([OPEN, CLOSE]) {
        return Err(format!(
            "value {} holds U+E000 or U+E001: the output of a macro, `set` block or `caller()` cannot be interpolated in an escaped template, and event data may not hold these characters",
            shown(&text)
        ));
    }
    Ok(text)
}

fn assemble(
    escape: Escape,
    out: &str,
    slots: &[Slot],
    url_prefix: Option<&str>,
) -> Result<String, String> {
    let pieces = pieces(out, slots)?;
    match escape {
        Escape::None => substitute(&pieces, |slot, result| {
            let _ = write!(result, "{}", slot.value);
            Ok(())
        }),
        Escape::Url => assemble_url(&pieces, url_prefix),
        Escape::Json => assemble_json(&pieces),
        Escape::Header => {
            // `raw` changes nothing here: a header value never holds control characters.
            let result = substitute(&pieces, |slot, result| {
                let text = text_of(slot)?;
                if let Some(c) = text.chars().find(|c| c.is_control() && *c != '\t') {
                    return Err(format!(
                        "value {} holds the control character U+{:04X}: a header value cannot hold CR, LF or other control characters (header injection); `raw` does not change this",
                        shown(&text),
                        c as u32
                    ));
                }
                result.push_str(&text);
                Ok(())
            })?;
            if let Some(c) = result.chars().find(|c| c.is_control() && *c != '\t') {
                return Err(format!(
                    "the header value holds the control character U+{:04X}: fix the template",
                    c as u32
                ));
            }
            Ok(result)
        }
        Escape::RedisKey => substitute(&pieces, |slot, result| {
            if slot.raw {
                let _ = write!(result, "{}", slot.value);
            } else {
                percent_encode(&text_of(slot)?, result, |c| {
                    !matches!(c, '%' | ':' | '{' | '}' | '*' | '?' | '[' | ']' | '\\')
                        && !c.is_whitespace()
                        && !c.is_control()
                });
            }
            Ok(())
        }),
        Escape::Log => substitute(&pieces, |slot, result| {
            if slot.raw {
                let _ = write!(result, "{}", slot.value);
                return Ok(());
            }
            for c in slot.value.to_string().chars() {
                if c.is_control() || c == OPEN || c == CLOSE {
                    result.extend(c.escape_default());
                } else {
                    result.push(c);
                }
            }
            Ok(())
        }),
    }
}

/// Literal text as it is, each value written by `write` (for contexts whose literal text does
/// not change how the next value is escaped).
fn substitute(
    pieces: &[Piece<'_>],
    write: impl Fn(&Slot, &mut String) -> Result<(), String>,
) -> Result<String, String> {
    let mut result = String::new();
    for piece in pieces {
        match piece {
            Piece::Text(t) => result.push_str(t),
            Piece::Value(slot) => write(slot, &mut result)?,
        }
    }
    Ok(result)
}

/// Appends `text` with every character `keep` rejects percent-encoded (its UTF-8 bytes).
fn percent_encode(text: &str, out: &mut String, keep: impl Fn(char) -> bool) {
    for c in text.chars() {
        if keep(c) {
            out.push(c);
        } else {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
}

/// RFC 3986 unreserved characters: the only ones a value keeps in a URL.
fn unreserved(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~')
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Zone {
    /// Scheme, user info, host and port.
    Authority,
    Path,
    Query,
    Fragment,
}

fn assemble_url(pieces: &[Piece<'_>], prefix: Option<&str>) -> Result<String, String> {
    let mut result = String::new();
    let mut zone = Zone::Authority;
    let mut after_scheme = false;
    // The current path segment: where it starts in `result` and whether a value is in it.
    let mut segment = (0usize, false);
    let close_segment = |result: &str, segment: (usize, bool)| -> Result<(), String> {
        let text = &result[segment.0..];
        if segment.1 && is_empty_or_dots(text) {
            return Err(format!(
                "a value makes the path segment `{text}` (empty, `.` or `..`), which would change the path the template names (path traversal): a value in a URL path is exactly one non-empty segment"
            ));
        }
        Ok(())
    };
    for piece in pieces {
        let literal: String;
        let text = match piece {
            Piece::Text(t) => *t,
            Piece::Value(slot) if slot.raw => {
                literal = text_of(slot)?;
                &literal
            }
            Piece::Value(slot) => {
                let text = text_of(slot)?;
                match zone {
                    Zone::Authority => {
                        return Err(format!(
                            "value {} would be part of the URL's scheme, host or port: write them literally in the template (`https://host:port/path/{{{{ ... }}}}`), or, for a trusted whole URL, use `| raw` and list its hosts in the allowlist",
                            shown(&text)
                        ))
                    }
                    Zone::Path => {
                        segment.1 = true;
                        percent_encode(&text, &mut result, unreserved);
                    }
                    Zone::Query | Zone::Fragment => {
                        percent_encode(&text, &mut result, unreserved);
                    }
                }
                continue;
            }
        };
        // Literal text (and raw values) steer where the following values land.
        for c in text.chars() {
            match zone {
                Zone::Authority => {
                    result.push(c);
                    if result.ends_with("://") {
                        after_scheme = true;
                    } else if after_scheme {
                        match c {
                            '/' => {
                                zone = Zone::Path;
                                segment = (result.len(), false);
                            }
                            '?' => zone = Zone::Query,
                            '#' => zone = Zone::Fragment,
                            _ => {}
                        }
                    }
                }
                Zone::Path => match c {
                    '/' | '?' | '#' => {
                        close_segment(&result, segment)?;
                        result.push(c);
                        segment = (result.len(), false);
                        zone = match c {
                            '?' => Zone::Query,
                            '#' => Zone::Fragment,
                            _ => Zone::Path,
                        };
                    }
                    _ => result.push(c),
                },
                Zone::Query => {
                    result.push(c);
                    if c == '#' {
                        zone = Zone::Fragment;
                    }
                }
                Zone::Fragment => result.push(c),
            }
        }
    }
    if zone == Zone::Path {
        close_segment(&result, segment)?;
    }
    let url = reqwest::Url::parse(&result)
        .map_err(|e| format!("the rendered URL {} is not valid: {e}", shown(&result)))?;
    if let Some(prefix) = prefix {
        if !url.as_str().starts_with(prefix) {
            return Err(format!(
                "the rendered URL {} does not start with the template's literal part `{prefix}` after normalisation",
                shown(url.as_str())
            ));
        }
    }
    Ok(result)
}

/// Empty, `.` or `..`, also when the dots are percent-encoded (URL parsers decode `%2e`).
fn is_empty_or_dots(segment: &str) -> bool {
    let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
    decoded.is_empty() || decoded == "." || decoded == ".."
}

fn assemble_json(pieces: &[Piece<'_>]) -> Result<String, String> {
    let mut result = String::new();
    // Inside a JSON string literal, and whether the last character there was an escaping `\`.
    let mut in_string = false;
    let mut escaped = false;
    for piece in pieces {
        let literal: String;
        let text = match piece {
            Piece::Text(t) => *t,
            Piece::Value(slot) if slot.raw => {
                literal = text_of(slot)?;
                &literal
            }
            Piece::Value(slot) => {
                if in_string {
                    if escaped {
                        return Err(
                            "a value follows a backslash (`\\`) inside a JSON string, which would let it end the string: fix the template".into(),
                        );
                    }
                    let text = text_of(slot)?;
                    let quoted = serde_json::to_string(&text).map_err(|e| e.to_string())?;
                    result.push_str(&quoted[1..quoted.len() - 1]);
                } else {
                    text_of(slot)?;
                    let json = serde_json::to_string(&slot.value).map_err(|e| {
                        format!(
                            "value {} cannot be written as JSON: {e}",
                            shown(&slot.value.to_string())
                        )
                    })?;
                    result.push_str(&json);
                }
                continue;
            }
        };
        for c in text.chars() {
            result.push(c);
            if in_string {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == '"' {
                    in_string = false;
                }
            } else if c == '"' {
                in_string = true;
            }
        }
    }
    check_json(&result).map_err(|e| {
        format!("{e}: the rendered body must parse as JSON before it is sent; check the template's quotes and commas (values are escaped, so a broken body comes from the template or a `raw` value)")
    })?;
    Ok(result)
}

#[cfg(test)]
mod tests;
