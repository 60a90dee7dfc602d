//! The rule file: which events go where.
//!
//! ```toml
//! # What happens to an event no rule matched: "drop" (default) or "dead-letter".
//! unmatched = "drop"
//!
//! [[rule]]
//! name = "crashloop-remediation"
//! when = 'ce.type == "io.k8s.pod.crashloop" && payload.restart_count >= 3'
//! to = ["reflex.routed.remediation", "reflex.audit"]   # fan-out
//! # action = "route" (default), "drop" or "dead-letter"
//! # topics = ["reflex.events.k8s"]   only events from these input topics
//! # continue = true                  keep evaluating later rules after a match
//! ```
//!
//! Rules are evaluated in file order and the first match wins, unless it says `continue = true`
//! (then its destinations are added and evaluation goes on), like Kafka Streams' `split()`.
//! Conditions are CEL over `ce` (CloudEvents attributes without the `ce_` prefix), `payload` (the
//! decoded Avro record), `key`, `topic` and `headers` (UTF-8 headers by name).
//! A file that does not parse, a condition that does not compile, an unknown variable, or a
//! payload field the topic's registered schema does not have is rejected at start-up with the
//! file, line and rule named.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use std::time::Duration;

use cel::common::ast::{EntryExpr, Expr};
use cel::{IdedExpr, Program};
use reflex_core::limits::{bracket_depth, MAX_RULE_EXPRESSION_BYTES, MAX_RULE_NESTING};
use reflex_core::line_of;

pub use crate::stateful::machine::Kind;
use serde::Deserialize;
use thiserror::Error;
use toml::Spanned;

/// Variables a condition may use.
pub const VARIABLES: [&str; 5] = ["ce", "payload", "key", "topic", "headers"];
/// CEL type identifiers (`type(x) == int`), also valid bare identifiers.
const TYPE_IDENTS: [&str; 10] = [
    "int",
    "uint",
    "double",
    "bool",
    "string",
    "bytes",
    "list",
    "map",
    "null_type",
    "type",
];

/// A rule-file problem, naming the file, the line and the rule.
#[derive(Debug, Error)]
#[error("{}:{line}: {}{message}", file.display(), rule.as_ref().map(|r| format!("rule `{r}`: ")).unwrap_or_default())]
pub struct RuleError {
    pub file: PathBuf,
    pub line: usize,
    pub rule: Option<String>,
    pub message: String,
}

/// What a matching rule does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleAction {
    /// Forward the event unchanged to these topics.
    Route(Vec<String>),
    /// Stop here; the event goes nowhere (counted).
    Drop,
    /// Send the event to the dead-letter topic with the rule named as the reason.
    DeadLetter,
}

/// One compiled rule.
pub struct Rule {
    pub name: String,
    pub line: usize,
    pub program: Program,
    pub action: RuleAction,
    /// Only events from these input topics; `None` means all.
    pub topics: Option<Vec<String>>,
    /// Keep evaluating after a match.
    pub keep_going: bool,
    /// Payload field paths the condition reads, checked against schemas at start-up.
    pub payload_paths: Vec<Vec<String>>,
    /// The window, when the rule is stateful (`group_by` with a throttle, threshold, all or
    /// absent); `None` for a rule that sees one event at a time.
    pub stateful: Option<StatefulSpec>,
    /// Per variable the condition reads: the top-level fields it selects (`ce.type` → `type`),
    /// or `None` when it uses the variable as a whole (`size(payload)`, `headers["x"]`). The
    /// router builds only these fields per event.
    pub field_reads: BTreeMap<String, Option<BTreeSet<String>>>,
}

impl Rule {
    pub fn applies_to(&self, topic: &str) -> bool {
        self.topics
            .as_ref()
            .is_none_or(|t| t.iter().any(|x| x == topic))
    }
}

/// A stateful rule's window (see the `stateful` module).
pub struct StatefulSpec {
    pub kind: Kind,
    /// CEL expression naming the group (e.g. the pod): each group has its own window.
    pub group_by: Program,
    /// How far behind the group's latest event time an event may arrive and still count.
    pub lateness: Duration,
    /// What happens to an event later than that.
    pub on_late: OnLate,
    /// `all`: its conditions, one bit each; `absent`: the recovery condition.
    pub conditions: Vec<Program>,
}

/// What a stateful rule does with an event beyond its allowed lateness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnLate {
    /// To the dead-letter topic, with the rule, group and how late it was.
    DeadLetter,
    /// Counted (`reflex_rule_suppressed_total{reason="late"}`) and logged, not forwarded.
    Drop,
}

/// What to do with events no rule matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmatched {
    Drop,
    DeadLetter,
}

impl std::fmt::Debug for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rule")
            .field("name", &self.name)
            .field("line", &self.line)
            .field("action", &self.action)
            .finish_non_exhaustive()
    }
}

/// A whole rule file, compiled.
#[derive(Debug)]
pub struct RuleSet {
    pub file: PathBuf,
    pub rules: Vec<Rule>,
    pub unmatched: Unmatched,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    unmatched: Option<Spanned<String>>,
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Spanned<String>,
    #[serde(default)]
    #[allow(dead_code)]
    description: String,
    #[serde(default)]
    when: Option<Spanned<String>>,
    #[serde(default)]
    to: Vec<String>,
    /// CEL expression naming the group a window is kept for.
    #[serde(default)]
    group_by: Option<Spanned<String>>,
    #[serde(default)]
    throttle: Option<Spanned<RawThrottle>>,
    #[serde(default)]
    threshold: Option<Spanned<RawThreshold>>,
    #[serde(default)]
    all: Option<Spanned<RawAll>>,
    #[serde(default)]
    absent: Option<Spanned<RawAbsent>>,
    #[serde(default)]
    lateness: Option<Spanned<String>>,
    #[serde(default)]
    on_late: Option<Spanned<String>>,
    #[serde(default)]
    action: Option<Spanned<String>>,
    #[serde(default)]
    topics: Option<Vec<String>>,
    #[serde(default, rename = "continue")]
    keep_going: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawThrottle {
    #[serde(default)]
    once_within: Option<Spanned<String>>,
    #[serde(default)]
    once_after: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawThreshold {
    events: Spanned<u32>,
    within: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAll {
    conditions: Vec<Spanned<String>>,
    within: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAbsent {
    recovery: Spanned<String>,
    within: Spanned<String>,
}

impl RuleSet {
    /// Reads and compiles a rule file.
    pub fn load(path: &Path) -> Result<RuleSet, RuleError> {
        let text = std::fs::read_to_string(path).map_err(|e| RuleError {
            file: path.to_path_buf(),
            line: 0,
            rule: None,
            message: format!("cannot read the rule file: {e} (set router.rules_file)"),
        })?;
        Self::parse(path, &text)
    }

    /// Compiles rule-file text; `file` is used in messages.
    pub fn parse(file: &Path, text: &str) -> Result<RuleSet, RuleError> {
        let err = |line: usize, rule: Option<&str>, message: String| RuleError {
            file: file.to_path_buf(),
            line,
            rule: rule.map(str::to_string),
            message,
        };
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start)).unwrap_or(0);
            err(line, None, e.message().to_string())
        })?;
        let unmatched = match &raw.unmatched {
            None => Unmatched::Drop,
            Some(u) => match u.get_ref().as_str() {
                "drop" => Unmatched::Drop,
                "dead-letter" => Unmatched::DeadLetter,
                other => {
                    return Err(err(
                        line_of(text, u.span().start),
                        None,
                        format!("unmatched = `{other}`: use \"drop\" or \"dead-letter\""),
                    ))
                }
            },
        };
        let mut rules: Vec<Rule> = Vec::new();
        for spanned in raw.rule {
            let rule_line = line_of(text, spanned.span().start);
            let raw = spanned.into_inner();
            let name = raw.name.get_ref().trim().to_string();
            if name.is_empty() {
                return Err(err(rule_line, None, "a rule needs a non-empty name".into()));
            }
            if rules.iter().any(|r| r.name == name) {
                return Err(err(rule_line, Some(&name), "duplicate rule name".into()));
            }
            let mut analysis = Analysis::default();
            let mut compile = |source: &Spanned<String>, what: &str| {
                compile_expression(source, text, what, &mut analysis)
                    .map_err(|(line, message)| err(line, Some(&name), message))
            };
            let (when_line, program) = match &raw.when {
                Some(when) => (
                    line_of(text, when.span().start),
                    compile(when, "condition")?,
                ),
                // An `all` rule's conditions say everything; `when` may narrow them.
                None if raw.all.is_some() => (
                    rule_line,
                    Program::compile("true").expect("`true` compiles"),
                ),
                None => {
                    return Err(err(
                        rule_line,
                        Some(&name),
                        "a rule needs `when = '<CEL condition>'`".into(),
                    ))
                }
            };
            let stateful = stateful_spec(&raw, text, &mut compile)
                .map_err(|(line, message)| err(line.unwrap_or(rule_line), Some(&name), message))?;
            let action = match raw.action.as_ref().map(|a| a.get_ref().as_str()) {
                None | Some("route") => {
                    if raw.to.is_empty() {
                        return Err(err(
                            rule_line,
                            Some(&name),
                            "a routing rule needs `to = [\"topic\", ...]` (or action = \"drop\" / \"dead-letter\")".into(),
                        ));
                    }
                    RuleAction::Route(raw.to.clone())
                }
                Some("drop") => RuleAction::Drop,
                Some("dead-letter") => RuleAction::DeadLetter,
                Some(other) => {
                    let line = raw
                        .action
                        .as_ref()
                        .map(|a| line_of(text, a.span().start))
                        .unwrap_or(rule_line);
                    return Err(err(
                        line,
                        Some(&name),
                        format!("action = `{other}`: use \"route\", \"drop\" or \"dead-letter\""),
                    ));
                }
            };
            if stateful.is_some() && !matches!(action, RuleAction::Route(_)) {
                return Err(err(
                    rule_line,
                    Some(&name),
                    "a rule with a window routes its firings: give it `to = [...]` and no `action`"
                        .into(),
                ));
            }
            if action != RuleAction::Route(raw.to.clone()) && !raw.to.is_empty() {
                return Err(err(
                    rule_line,
                    Some(&name),
                    "`to` only goes with action = \"route\"".into(),
                ));
            }
            rules.push(Rule {
                name,
                line: when_line,
                program,
                action,
                topics: raw.topics,
                keep_going: raw.keep_going,
                stateful,
                payload_paths: analysis.payload_paths.into_iter().collect(),
                field_reads: analysis.field_reads,
            });
        }
        Ok(RuleSet {
            file: file.to_path_buf(),
            rules,
            unmatched,
        })
    }

    /// Whether any condition reads the payload (so events must be decoded, not just validated).
    pub fn needs_payload(&self) -> bool {
        self.rules.iter().any(|r| !r.payload_paths.is_empty())
            || self
                .rules
                .iter()
                .any(|r| r.program.references().has_variable("payload"))
    }

    /// Checks every payload field read by rules that apply to `topic` against the topic's value
    /// schema (`subject` names where it came from in the message).
    pub fn check_schema(&self, topic: &str, subject: &str, schema: &str) -> Result<(), RuleError> {
        for rule in self.rules.iter().filter(|r| r.applies_to(topic)) {
            for path in &rule.payload_paths {
                let segments: Vec<&str> = path.iter().map(String::as_str).collect();
                reflex_core::avro::check_field_path(schema, &segments).map_err(|message| {
                    RuleError {
                        file: self.file.clone(),
                        line: rule.line,
                        rule: Some(rule.name.clone()),
                        message: format!(
                            "payload.{} does not exist in the schema of topic `{topic}` (subject `{subject}`): {message}",
                            path.join(".")
                        ),
                    }
                })?;
            }
        }
        Ok(())
    }
}

/// Compiles one CEL expression of a rule (`what` names it in messages), bounded in size and
/// nesting, and adds what it reads to `analysis`. Errors carry the expression's line.
fn compile_expression(
    source: &Spanned<String>,
    text: &str,
    what: &str,
    analysis: &mut Analysis,
) -> Result<Program, (usize, String)> {
    let line = line_of(text, source.span().start);
    // Bounded at load time: the CEL parser and evaluator recurse per nesting level.
    let code = source.get_ref();
    if code.len() > MAX_RULE_EXPRESSION_BYTES {
        return Err((
            line,
            format!(
                "{what} is {} bytes, over the limit of {MAX_RULE_EXPRESSION_BYTES}: split it into several rules",
                code.len()
            ),
        ));
    }
    let depth = bracket_depth(code);
    if depth > MAX_RULE_NESTING {
        return Err((
            line,
            format!("{what} nests {depth} brackets deep, over the limit of {MAX_RULE_NESTING}: simplify it"),
        ));
    }
    let program =
        Program::compile(code).map_err(|e| (line, format!("{what} does not compile:\n{e}")))?;
    let mut own = Analysis::default();
    own.walk(program.expression(), &mut Vec::new());
    if let Some(unknown) = own
        .variables
        .iter()
        .find(|v| !VARIABLES.contains(&v.as_str()) && !TYPE_IDENTS.contains(&v.as_str()))
    {
        return Err((
            line,
            format!(
                "unknown variable `{unknown}` in the {what} (available: {})",
                VARIABLES.join(", ")
            ),
        ));
    }
    analysis.merge(own);
    Ok(program)
}

/// A window setting's duration: positive, with a unit.
fn window_duration(
    source: &Spanned<String>,
    text: &str,
    what: &str,
) -> Result<Duration, (Option<usize>, String)> {
    let line = Some(line_of(text, source.span().start));
    let d = reflex_runtime::duration::parse(source.get_ref())
        .map_err(|e| (line, format!("{what}: {e}")))?;
    if d.is_zero() {
        return Err((line, format!("{what} must be longer than 0")));
    }
    Ok(d)
}

/// The rule's window, if it has one: exactly one kind, with `group_by`.
fn stateful_spec(
    raw: &RawRule,
    text: &str,
    compile: &mut impl FnMut(&Spanned<String>, &str) -> Result<Program, RuleError>,
) -> Result<Option<StatefulSpec>, (Option<usize>, String)> {
    let at = |span: std::ops::Range<usize>| Some(line_of(text, span.start));
    let rethrow = |e: RuleError| (Some(e.line), e.message);
    let mut kinds: Vec<(&str, std::ops::Range<usize>)> = Vec::new();
    if let Some(t) = &raw.throttle {
        kinds.push(("throttle", t.span()));
    }
    if let Some(t) = &raw.threshold {
        kinds.push(("threshold", t.span()));
    }
    if let Some(t) = &raw.all {
        kinds.push(("all", t.span()));
    }
    if let Some(t) = &raw.absent {
        kinds.push(("absent", t.span()));
    }
    if kinds.len() > 1 {
        let names: Vec<&str> = kinds.iter().map(|(n, _)| *n).collect();
        return Err((
            at(kinds[1].1.clone()),
            format!(
                "a rule has at most one window, this one has {}: split it into several rules",
                names.join(" and ")
            ),
        ));
    }
    let Some(group_by) = &raw.group_by else {
        if let Some((kind, span)) = kinds.first() {
            return Err((
                at(span.clone()),
                format!(
                    "`{kind}` needs `group_by = '<CEL expression>'` naming what the window counts per (e.g. 'payload.pod')"
                ),
            ));
        }
        for (setting, value) in [("lateness", &raw.lateness), ("on_late", &raw.on_late)] {
            if let Some(v) = value {
                return Err((
                    at(v.span()),
                    format!(
                        "`{setting}` only goes with a window (throttle, threshold, all or absent)"
                    ),
                ));
            }
        }
        return Ok(None);
    };
    if kinds.is_empty() {
        return Err((
            at(group_by.span()),
            "`group_by` needs a window: throttle, threshold, all or absent".into(),
        ));
    }
    let mut conditions = Vec::new();
    let kind = if let Some(t) = &raw.throttle {
        match (&t.get_ref().once_within, &t.get_ref().once_after) {
            (Some(d), None) => Kind::OnceWithin(window_duration(d, text, "throttle.once_within")?),
            (None, Some(d)) => Kind::OnceAfter(window_duration(d, text, "throttle.once_after")?),
            _ => return Err((
                at(t.span()),
                "throttle takes one of once_within = \"<duration>\" or once_after = \"<duration>\""
                    .into(),
            )),
        }
    } else if let Some(t) = &raw.threshold {
        let events = *t.get_ref().events.get_ref();
        if events == 0 {
            return Err((
                at(t.get_ref().events.span()),
                "threshold.events must be at least 1".into(),
            ));
        }
        Kind::Threshold {
            events,
            within: window_duration(&t.get_ref().within, text, "threshold.within")?,
        }
    } else if let Some(t) = &raw.all {
        let all = t.get_ref();
        if all.conditions.len() < 2 || all.conditions.len() > 16 {
            return Err((
                at(t.span()),
                format!(
                    "all.conditions lists {} conditions: give 2 to 16",
                    all.conditions.len()
                ),
            ));
        }
        for c in &all.conditions {
            conditions.push(compile(c, "all condition").map_err(rethrow)?);
        }
        Kind::All {
            conditions: all.conditions.len() as u32,
            within: window_duration(&all.within, text, "all.within")?,
        }
    } else if let Some(t) = &raw.absent {
        conditions.push(compile(&t.get_ref().recovery, "absent.recovery").map_err(rethrow)?);
        Kind::Absent {
            within: window_duration(&t.get_ref().within, text, "absent.within")?,
        }
    } else {
        unreachable!("kinds is not empty");
    };
    let group_by = compile(group_by, "group_by").map_err(rethrow)?;
    let lateness = match &raw.lateness {
        None => Duration::ZERO,
        Some(l) => reflex_runtime::duration::parse(l.get_ref())
            .map_err(|e| (at(l.span()), format!("lateness: {e}")))?,
    };
    let on_late = match raw
        .on_late
        .as_ref()
        .map(|o| (o.get_ref().as_str(), o.span()))
    {
        None | Some(("dead-letter", _)) => OnLate::DeadLetter,
        Some(("drop", _)) => OnLate::Drop,
        Some((other, span)) => {
            return Err((
                at(span),
                format!("on_late = `{other}`: use \"dead-letter\" or \"drop\""),
            ))
        }
    };
    Ok(Some(StatefulSpec {
        kind,
        group_by,
        lateness,
        on_late,
        conditions,
    }))
}

/// Free variables and `payload.<path>` selections of a condition.
#[derive(Default)]
struct Analysis {
    variables: BTreeSet<String>,
    payload_paths: BTreeSet<Vec<String>>,
    field_reads: BTreeMap<String, Option<BTreeSet<String>>>,
}

impl Analysis {
    /// Adds what another expression of the same rule reads.
    fn merge(&mut self, other: Analysis) {
        self.variables.extend(other.variables);
        self.payload_paths.extend(other.payload_paths);
        for (variable, fields) in other.field_reads {
            match (
                self.field_reads
                    .entry(variable)
                    .or_insert_with(|| Some(BTreeSet::new())),
                fields,
            ) {
                (slot @ Some(_), None) => *slot = None,
                (Some(mine), Some(theirs)) => mine.extend(theirs),
                (None, _) => {}
            }
        }
    }

    fn walk(&mut self, e: &IdedExpr, bound: &mut Vec<String>) {
        match &e.expr {
            Expr::Ident(name) => {
                if !bound.contains(name) {
                    self.variables.insert(name.clone());
                    // Used whole: every field must be built.
                    self.field_reads.insert(name.clone(), None);
                }
            }
            Expr::Select(select) => {
                match select_path(e).filter(|(root, _)| !bound.contains(root)) {
                    Some((root, path)) => {
                        self.variables.insert(root.clone());
                        if let Some(fields) = self
                            .field_reads
                            .entry(root.clone())
                            .or_insert_with(|| Some(BTreeSet::new()))
                        {
                            fields.insert(path[0].clone());
                        }
                        if root == "payload" {
                            self.payload_paths.insert(path);
                        }
                    }
                    None => self.walk(&select.operand, bound),
                }
            }
            Expr::Call(call) => {
                if let Some(target) = &call.target {
                    self.walk(target, bound);
                }
                for arg in &call.args {
                    self.walk(arg, bound);
                }
            }
            Expr::Comprehension(c) => {
                self.walk(&c.iter_range, bound);
                let scope = bound.len();
                bound.push(c.iter_var.clone());
                if let Some(v2) = &c.iter_var2 {
                    bound.push(v2.clone());
                }
                bound.push(c.accu_var.clone());
                for part in [&c.accu_init, &c.loop_cond, &c.loop_step, &c.result] {
                    self.walk(part, bound);
                }
                bound.truncate(scope);
            }
            Expr::List(list) => list.elements.iter().for_each(|x| self.walk(x, bound)),
            Expr::Map(map) => {
                for entry in &map.entries {
                    if let EntryExpr::MapEntry(m) = &entry.expr {
                        self.walk(&m.key, bound);
                        self.walk(&m.value, bound);
                    }
                }
            }
            Expr::Struct(s) => {
                for entry in &s.entries {
                    if let EntryExpr::StructField(f) = &entry.expr {
                        self.walk(&f.value, bound);
                    }
                }
            }
            Expr::Literal(_) | Expr::Unspecified => {}
        }
    }
}

/// `payload.a.b` (or `has(payload.a.b)`) as `("payload", ["a", "b"])`: a chain of field
/// selections on a variable.
fn select_path(e: &IdedExpr) -> Option<(String, Vec<String>)> {
    let mut segments = Vec::new();
    let mut current = e;
    loop {
        match &current.expr {
            Expr::Select(select) => {
                segments.push(select.field.clone());
                current = &select.operand;
            }
            Expr::Ident(name) if !segments.is_empty() => {
                segments.reverse();
                return Some((name.clone(), segments));
            }
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<RuleSet, RuleError> {
        RuleSet::parse(Path::new("rules.toml"), text)
    }

    const SCHEMA: &str = r#"{"type":"record","name":"E","fields":[
        {"name":"restart_count","type":"int"},
        {"name":"owner","type":{"type":"record","name":"O","fields":[{"name":"team","type":"string"}]}}]}"#;

    #[test]
    fn compiles_rules_and_collects_payload_paths() {
        let set = parse(
            r#"
unmatched = "dead-letter"
[[rule]]
name = "a"
when = 'ce.type == "x" && payload.restart_count > 3 && has(payload.owner.team)'
to = ["t1", "t2"]
continue = true
[[rule]]
name = "b"
when = 'payload.labels.exists(k, k == "x")'
action = "drop"
"#,
        )
        .unwrap();
        assert_eq!(set.unmatched, Unmatched::DeadLetter);
        assert_eq!(set.rules.len(), 2);
        assert_eq!(
            set.rules[0].action,
            RuleAction::Route(vec!["t1".into(), "t2".into()])
        );
        assert!(set.rules[0].keep_going);
        assert_eq!(
            set.rules[0].payload_paths,
            vec![
                vec!["owner".to_string(), "team".to_string()],
                vec!["restart_count".to_string()]
            ]
        );
        assert_eq!(set.rules[0].line, 5);
        assert!(set.needs_payload());
        let fields = |names: &[&str]| Some(names.iter().map(|n| n.to_string()).collect());
        assert_eq!(set.rules[0].field_reads["ce"], fields(&["type"]));
        assert_eq!(
            set.rules[0].field_reads["payload"],
            fields(&["owner", "restart_count"])
        );
        assert_eq!(set.rules[1].field_reads["payload"], fields(&["labels"]));
        let whole = parse("[[rule]]\nname = \"a\"\nwhen = 'size(payload) > 1 && payload.x == 1 && headers[\"h\"] == \"v\"'\nto = [\"t\"]\n").unwrap();
        assert_eq!(whole.rules[0].field_reads["payload"], None);
        assert_eq!(whole.rules[0].field_reads["headers"], None);
    }

    #[test]
    fn broken_files_name_file_line_and_rule() {
        let e = parse("[[rule]]\nname = \"a\"\nwhen = 'ce.type == '\nto = [\"t\"]\n").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with("rules.toml:3: rule `a`: condition does not compile"),
            "{msg}"
        );

        let e = parse("[[rule]]\nname = \"a\"\nwhen = 'nope.x == 1'\nto = [\"t\"]\n").unwrap_err();
        assert!(e.to_string().contains("unknown variable `nope`"), "{e}");

        let e = parse("[[rule]]\nname = \"a\"\nwhen = 'true'\n").unwrap_err();
        assert!(e.to_string().contains("needs `to"), "{e}");

        let e =
            parse("[[rule]]\nname = \"a\"\nwhen = 'true'\nto = [\"t\"]\ncolour = 1\n").unwrap_err();
        assert!(
            e.to_string().starts_with("rules.toml:") && e.to_string().contains("colour"),
            "{e}"
        );

        let e = parse("[[rule]]\nname = \"a\"\nwhen = 'true'\naction = \"explode\"\n").unwrap_err();
        assert_eq!(e.line, 4);

        let e = parse("[[rule]]\nname = \"a\"\nwhen = 'true'\nto=['t']\n[[rule]]\nname = \"a\"\nwhen = 'true'\nto=['t']\n")
            .unwrap_err();
        assert!(e.to_string().contains("duplicate"), "{e}");
    }

    #[test]
    fn oversized_and_deeply_nested_conditions_are_refused_at_load() {
        let deep = format!("{}true{}", "(".repeat(40), ")".repeat(40));
        let e = RuleSet::parse(
            Path::new("r.toml"),
            &format!("[[rule]]\nname = \"deep\"\nwhen = '{deep}'\naction = \"drop\"\n"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("nests 40 brackets"), "{e}");
        let long = vec!["key == \"x\""; 500].join(" || ");
        let e = RuleSet::parse(
            Path::new("r.toml"),
            &format!("[[rule]]\nname = \"long\"\nwhen = '{long}'\naction = \"drop\"\n"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("over the limit of 4096"), "{e}");
        assert_eq!(e.line, 3);
    }

    #[test]
    fn comprehension_variables_are_not_free_variables() {
        let set = parse("[[rule]]\nname = \"a\"\nwhen = '[1,2].all(x, x > 0) && type(key) == string'\nto = [\"t\"]\n");
        assert!(set.is_ok(), "{:?}", set.err());
        assert!(!set.unwrap().needs_payload());
    }

    #[test]
    fn schema_check_names_the_missing_field() {
        let set = parse(
            "[[rule]]\nname = \"a\"\nwhen = 'payload.restart_count > 1 && payload.owner.team == \"x\"'\nto = [\"t\"]\n\
             [[rule]]\nname = \"b\"\ntopics = [\"other\"]\nwhen = 'payload.restarts > 1'\nto = [\"t\"]\n",
        )
        .unwrap();
        assert!(
            set.check_schema("in", "in-value", SCHEMA).is_ok(),
            "rule b does not apply to `in`"
        );
        let e = set
            .check_schema("other", "other-value", SCHEMA)
            .unwrap_err();
        assert_eq!(e.rule.as_deref(), Some("b"));
        assert_eq!(e.line, 8);
        assert!(
            e.to_string().contains("payload.restarts") && e.to_string().contains("restart_count"),
            "{e}"
        );
    }

    #[test]
    fn windows_are_checked_at_load_with_file_line_and_rule() {
        let ok = parse(
            "[[rule]]\nname = \"w\"\nwhen = 'true'\nto = [\"t\"]\ngroup_by = 'payload.owner.team'\nthrottle = { once_within = \"10m\" }\nlateness = \"5s\"\non_late = \"drop\"\n",
        )
        .unwrap();
        let spec = ok.rules[0].stateful.as_ref().unwrap();
        assert_eq!(spec.kind, Kind::OnceWithin(Duration::from_secs(600)));
        assert_eq!(spec.lateness, Duration::from_secs(5));
        assert_eq!(spec.on_late, OnLate::Drop);
        assert!(
            ok.rules[0]
                .payload_paths
                .contains(&vec!["owner".to_string(), "team".to_string()]),
            "group_by fields are checked against the schema too"
        );
        let e = ok.check_schema("in", "in-value", SCHEMA);
        assert!(e.is_ok(), "{e:?}");
        let bad_field = parse("[[rule]]\nname = \"w\"\nwhen = 'true'\nto = [\"t\"]\ngroup_by = 'payload.pod'\nthrottle = { once_within = \"10m\" }\n").unwrap();
        let e = bad_field
            .check_schema("in", "in-value", SCHEMA)
            .unwrap_err();
        assert!(e.to_string().contains("payload.pod does not exist"), "{e}");

        let cases = [
            (
                "[[rule]]\nname = \"w\"\nwhen = 'true'\nto = [\"t\"]\nthrottle = { once_within = \"10m\" }\n",
                5,
                "`throttle` needs `group_by",
            ),
            (
                "[[rule]]\nname = \"w\"\nwhen = 'true'\nto = [\"t\"]\ngroup_by = 'key'\n",
                5,
                "`group_by` needs a window",
            ),
            (
                "[[rule]]\nname = \"w\"\nwhen = 'true'\nto = [\"t\"]\ngroup_by = 'key'\nthreshold = { events = 3, within = \"10 minutes\" }\n",
                6,
                "threshold.within: `10 minutes` is not a duration",
            ),
            (
                "[[rule]]\nname = \"w\"\nwhen = 'true'\nto = [\"t\"]\ngroup_by = 'key'\nthrottle = { once_within = \"1m\" }\nabsent = { recovery = 'true', within = \"1m\" }\n",
                7,
                "at most one window",
            ),
            (
                "[[rule]]\nname = \"w\"\nwhen = 'true'\nto = [\"t\"]\ngroup_by = 'pod.name'\nthrottle = { once_within = \"1m\" }\n",
                5,
                "unknown variable `pod` in the group_by",
            ),
            (
                "[[rule]]\nname = \"w\"\nwhen = 'true'\naction = \"drop\"\ngroup_by = 'key'\nthrottle = { once_within = \"1m\" }\n",
                1,
                "routes its firings",
            ),
            (
                "[[rule]]\nname = \"w\"\nwhen = 'true'\nto = [\"t\"]\nlateness = \"5s\"\n",
                5,
                "`lateness` only goes with a window",
            ),
        ];
        for (text, line, message) in cases {
            let e = parse(text).unwrap_err();
            assert_eq!(e.rule.as_deref(), Some("w"), "{e}");
            assert_eq!(e.line, line, "{e}");
            assert!(e.to_string().contains(message), "{e}");
        }
    }
}
