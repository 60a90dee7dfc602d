//! Policies: an optional Cedar policy file (`actor.policy_file`) that every request must pass
//! before it is claimed or executed.
//!
//! A request is asked as a Cedar authorization request:
//!
//! | Cedar | from the request |
//! | --- | --- |
//! | principal | `Reflex::Rule::"<rule>"` (the router rule that asked; `Reflex::Actor::"actor"` when it names none), attribute `name` |
//! | action | `Reflex::Action::"<action name>"`: every `[[actor.action]]` is declared in the schema |
//! | resource | `Reflex::Target::"<target>"`, attribute `name` (the target, for `like`); its tags are the enrichment context (`owner.team`, `cluster.env`, ...) |
//! | context | `params` (a `Reflex::Params` entity whose tags are the request's params), `event` (`id`, `type`, `subject`, `time` of the causing event), `now` (decision time, UTC: `unix`, `date`, `hour`, `minute`, `weekday` 1 = Monday .. 7 = Sunday), `rule`, `kind`, `correlation_id`, `dry_run` |
//!
//! Params and enrichment are maps whose keys vary per pack, so they are entity **tags**
//! (`resource.hasTag("owner.env") && resource.getTag("owner.env") == "production"`): the
//! schema stays closed and the validator still catches `context.parms` or a typo in an action
//! name.
//!
//! At start-up the file is parsed and validated (strict mode) against the schema generated
//! from the configured actions ([`schema_text`]); any error stops the actor naming
//! `file:line:column`, the policy and the fix. A file without a single `permit` is refused too:
//! Cedar denies what no policy permits, so it would deny every action.
//!
//! Decisions: Cedar's, plus fail-closed for guardrails: a `forbid` policy that cannot be
//! evaluated for a request (an error at run time) denies it, since a guardrail that errors must
//! not let the action through. A deny names the policies (their `@id("...")` annotation, or
//! Cedar's `policy<N>`, with file and line).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use cedar_policy::{
    AuthorizationError, Authorizer, Context, Decision as CedarDecision, Effect, Entities, Entity,
    EntityId, EntityTypeName, EntityUid, Policy, PolicyId, PolicySet, Request,
    RestrictedExpression, Schema, ValidationMode, Validator,
};
use chrono::{DateTime, Datelike, Timelike, Utc};
use miette::Diagnostic;
use reflex_core::actions::ActionRequest;
use thiserror::Error;

/// The Cedar namespace of every type Reflex declares.
pub const NAMESPACE: &str = "Reflex";
/// The principal id of requests that name no rule.
pub const ACTOR_PRINCIPAL: &str = "actor";

/// Why a policy file cannot be used: each line is `file:line:column: message`, with the fix.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("{}", lines.join("\n"))]
pub struct PolicyError {
    pub lines: Vec<String>,
}

impl PolicyError {
    fn one(line: String) -> Self {
        Self { lines: vec![line] }
    }
}

/// What the policies decided for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny(Denial),
}

/// A deny: the policies that caused it and a sentence for the outcome's `error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// Ids of the policies that denied (`forbid`s that matched or failed); empty when no
    /// `permit` matched.
    pub policies: Vec<String>,
    pub reason: String,
}

impl Denial {
    /// The metric label: the first denying policy, or `no-permit` when nothing permitted.
    pub fn label(&self) -> String {
        self.policies
            .first()
            .cloned()
            .unwrap_or_else(|| "no-permit".into())
    }
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

/// The event attributes a request carries in its record headers (the enricher keeps the
/// causing event's `ce_subject` and `ce_time`).
#[derive(Debug, Clone, Default)]
pub struct EventAttrs {
    pub subject: String,
    pub time: String,
}

impl EventAttrs {
    /// From a request record's headers.
    pub fn of(headers: &reflex_core::Headers) -> Self {
        use reflex_core::headers::ce;
        let get = |name| headers.get_str(name).unwrap_or_default().to_string();
        Self {
            subject: get(ce::SUBJECT),
            time: get(ce::TIME),
        }
    }
}

/// A loaded, validated policy file.
pub struct Policies {
    file: String,
    set: PolicySet,
    /// Policy id → `file:line` of its first line.
    lines: HashMap<PolicyId, String>,
    authorizer: Authorizer,
}

impl fmt::Debug for Policies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policies")
            .field("file", &self.file)
            .field("policies", &self.lines.len())
            .finish()
    }
}

/// The Cedar schema policies are validated against: the fixed entity and context types, and
/// one action per configured action name.
pub fn schema_text<'a>(actions: impl IntoIterator<Item = &'a str>) -> String {
    let names: Vec<String> = actions
        .into_iter()
        .map(|a| format!("\"{}\"", a.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    let mut text = format!(
        r#"namespace {NAMESPACE} {{
  // The router rule that asked for the action.
  entity Rule = {{ name: String }};
  // The actor itself, for requests that name no rule.
  entity Actor = {{ name: String }};
  // The request's target; its tags are the enrichment context (`<lookup>.<field>`).
  entity Target = {{ name: String }} tags String;
  // The request's params, as tags.
  entity Params tags String;
  type Event = {{ id: String, type: String, subject: String, time: String }};
  type Now = {{ unix: Long, date: String, hour: Long, minute: Long, weekday: Long }};
  type RequestContext = {{
    params: Params,
    event: Event,
    now: Now,
    rule: String,
    kind: String,
    correlation_id: String,
    dry_run: Bool,
  }};
"#
    );
    if !names.is_empty() {
        text.push_str(&format!(
            "  action {} appliesTo {{ principal: [Rule, Actor], resource: Target, context: RequestContext }};\n",
            names.join(", ")
        ));
    }
    text.push_str("}\n");
    text
}

fn type_name(name: &str) -> EntityTypeName {
    EntityTypeName::from_str(&format!("{NAMESPACE}::{name}")).expect("a valid type name")
}

fn uid(type_: &str, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(type_name(type_), EntityId::new(id))
}

fn string(s: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(s.to_string())
}

impl Policies {
    /// Reads and validates `path` against the schema of `actions`.
    pub fn load<'a>(
        path: &Path,
        actions: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            PolicyError::one(format!(
                "{}: cannot read the policy file (actor.policy_file): {e}",
                path.display()
            ))
        })?;
        Self::parse(&path.display().to_string(), &text, actions)
    }

    /// Parses and validates policy `text` (named `file` in messages).
    pub fn parse<'a>(
        file: &str,
        text: &str,
        actions: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, PolicyError> {
        let (schema, _) = Schema::from_cedarschema_str(&schema_text(actions))
            .map_err(|e| PolicyError::one(format!("the generated policy schema: {e}")))?;
        let parsed = PolicySet::from_str(text).map_err(|e| PolicyError {
            lines: located(
                file,
                text,
                &e,
                "the Cedar syntax is at https://docs.cedarpolicy.com/policies/syntax-policy.html",
            ),
        })?;
        if parsed.templates().next().is_some() {
            return Err(PolicyError::one(format!(
                "{file}: policy templates (`?principal`, `?resource`) are not supported: write the entity out"
            )));
        }

        // Cedar's ids are `policy<N>` in file order; `@id("...")` names a policy, and every
        // id gets the line it starts on (its text is found in the file, in order).
        let mut set = PolicySet::new();
        let mut lines = HashMap::new();
        let mut from = 0;
        let mut policies: Vec<&Policy> = parsed.policies().collect();
        policies.sort_by_key(|p| {
            p.id()
                .to_string()
                .strip_prefix("policy")
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or(usize::MAX)
        });
        let mut permits = 0;
        for p in policies {
            let source = p.to_cedar().unwrap_or_default();
            let at = text[from..].find(&source).map(|i| from + i);
            if let Some(at) = at {
                from = at + source.len();
            }
            let line = reflex_core::line_of(text, at.unwrap_or(0));
            let policy = match p.annotation("id") {
                Some(id) if !id.trim().is_empty() => p.new_id(PolicyId::new(id.trim())),
                _ => p.clone(),
            };
            let id = policy.id().clone();
            if lines.contains_key(&id) {
                return Err(PolicyError::one(format!(
                    "{file}:{line}: @id(\"{id}\") is used by two policies: give each its own id"
                )));
            }
            if policy.effect() == Effect::Permit {
                permits += 1;
            }
            lines.insert(id, format!("{file}:{line}"));
            set.add(policy)
                .map_err(|e| PolicyError::one(format!("{file}:{line}: {e}")))?;
        }
        if permits == 0 {
            return Err(PolicyError::one(format!(
                "{file}: no `permit` policy: Cedar denies what nothing permits, so every action would be denied; add `permit (principal, action, resource);` and forbid what must not happen"
            )));
        }

        let result = Validator::new(schema.clone()).validate(&set, ValidationMode::Strict);
        // One line per place and fix: a mistake is reported once per action otherwise.
        let mut seen = std::collections::HashSet::new();
        let errors: Vec<String> = result
            .validation_errors()
            .filter(|e| {
                let place = e.labels().and_then(|mut l| l.next()).map(|l| l.offset());
                seen.insert((place, e.help().map(|h| h.to_string())))
            })
            .flat_map(|e| located(file, text, e, &validation_help(&e.to_string())))
            .collect();
        if !errors.is_empty() {
            return Err(PolicyError { lines: errors });
        }
        for w in result.validation_warnings() {
            tracing::warn!(warning = %located(file, text, w, "").join("; "), "policy warning");
        }
        Ok(Self {
            file: file.to_string(),
            set,
            lines,
            authorizer: Authorizer::new(),
        })
    }

    /// The policy file, as named in messages.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// How many policies the file holds.
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    fn named(&self, id: &PolicyId) -> String {
        match self.lines.get(id) {
            Some(at) => format!("`{id}` ({at})"),
            None => format!("`{id}`"),
        }
    }

    /// Decides `req` (whose record carried `event`) at `now`.
    pub fn decide(&self, req: &ActionRequest, event: &EventAttrs, now: DateTime<Utc>) -> Decision {
        let (request, entities) = match self.request(req, event, now) {
            Ok(x) => x,
            // The request does not fit the schema (a bug, or an action added without a
            // restart): denied, since a guardrail that cannot be asked must not let it through.
            Err(e) => {
                return Decision::Deny(Denial {
                    policies: Vec::new(),
                    reason: format!(
                        "denied by policy: the request cannot be evaluated against {}: {e}",
                        self.file
                    ),
                })
            }
        };
        let response = self
            .authorizer
            .is_authorized(&request, &self.set, &entities);
        let diagnostics = response.diagnostics();
        // Fail closed: a forbid that errored may have been meant to match.
        let mut failed: Vec<(String, String)> = diagnostics
            .errors()
            .map(|AuthorizationError::PolicyEvaluationError(e)| e)
            .filter(|e| {
                self.set
                    .policy(e.policy_id())
                    .is_some_and(|p| p.effect() == Effect::Forbid)
            })
            .map(|e| {
                (
                    e.policy_id().to_string(),
                    format!(
                        "{} could not be evaluated ({})",
                        self.named(e.policy_id()),
                        e.inner()
                    ),
                )
            })
            .collect();
        failed.sort();
        match response.decision() {
            CedarDecision::Allow if failed.is_empty() => Decision::Allow,
            CedarDecision::Allow => Decision::Deny(Denial {
                reason: format!(
                    "denied by policy (fail closed): {}",
                    failed
                        .iter()
                        .map(|(_, m)| m.as_str())
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
                policies: failed.into_iter().map(|(id, _)| id).collect(),
            }),
            CedarDecision::Deny => {
                let mut forbids: Vec<&PolicyId> = diagnostics.reason().collect();
                forbids.sort_by_key(|id| id.to_string());
                if forbids.is_empty() && failed.is_empty() {
                    return Decision::Deny(Denial {
                        policies: Vec::new(),
                        reason: format!(
                            "denied by policy: no permit policy in {} matches (Cedar denies what nothing permits)",
                            self.file
                        ),
                    });
                }
                let mut named: Vec<String> = forbids.iter().map(|id| self.named(id)).collect();
                named.extend(failed.iter().map(|(_, m)| m.clone()));
                let mut policies: Vec<String> = forbids.iter().map(|id| id.to_string()).collect();
                policies.extend(failed.into_iter().map(|(id, _)| id));
                Decision::Deny(Denial {
                    reason: format!("denied by policy {}", named.join(", ")),
                    policies,
                })
            }
        }
    }

    /// The Cedar request and entities of one action request.
    fn request(
        &self,
        req: &ActionRequest,
        event: &EventAttrs,
        now: DateTime<Utc>,
    ) -> Result<(Request, Entities), String> {
        let principal = match req.rule.as_deref().filter(|r| !r.is_empty()) {
            Some(rule) => ("Rule", rule),
            None => ("Actor", ACTOR_PRINCIPAL),
        };
        let principal_uid = uid(principal.0, principal.1);
        let action = uid("Action", &req.action);
        let target = uid("Target", &req.target);
        let params = uid("Params", &req.idempotency_key);
        let tags = |map: &BTreeMap<String, String>| {
            map.iter()
                .map(|(k, v)| (k.clone(), string(v)))
                .collect::<Vec<_>>()
        };
        let entities = [
            Entity::new_with_tags(
                principal_uid.clone(),
                [("name".to_string(), string(principal.1))],
                [],
                [],
            ),
            Entity::new_with_tags(
                target.clone(),
                [("name".to_string(), string(&req.target))],
                [],
                tags(&req.context),
            ),
            Entity::new_with_tags(params.clone(), [], [], tags(&req.params)),
        ]
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
        // Not checked against the schema per request (it doubled the cost): built here, in
        // one shape, and the unit tests evaluate every field.
        let entities = Entities::from_entities(entities, None).map_err(|e| e.to_string())?;
        let record = |fields: Vec<(&str, RestrictedExpression)>| {
            RestrictedExpression::new_record(fields.into_iter().map(|(k, v)| (k.to_string(), v)))
                .map_err(|e| e.to_string())
        };
        let context = Context::from_pairs([
            (
                "params".to_string(),
                RestrictedExpression::new_entity_uid(params),
            ),
            (
                "event".to_string(),
                record(vec![
                    ("id", string(&req.event_id)),
                    ("type", string(&req.event_type)),
                    ("subject", string(&event.subject)),
                    ("time", string(&event.time)),
                ])?,
            ),
            (
                "now".to_string(),
                record(vec![
                    ("unix", RestrictedExpression::new_long(now.timestamp())),
                    ("date", string(&now.format("%Y-%m-%d").to_string())),
                    (
                        "hour",
                        RestrictedExpression::new_long(i64::from(now.hour())),
                    ),
                    (
                        "minute",
                        RestrictedExpression::new_long(i64::from(now.minute())),
                    ),
                    (
                        "weekday",
                        RestrictedExpression::new_long(i64::from(
                            now.weekday().number_from_monday(),
                        )),
                    ),
                ])?,
            ),
            (
                "rule".to_string(),
                string(req.rule.as_deref().unwrap_or("")),
            ),
            (
                "kind".to_string(),
                string(&format!("{:?}", req.kind).to_ascii_lowercase()),
            ),
            ("correlation_id".to_string(), string(&req.correlation_id)),
            (
                "dry_run".to_string(),
                RestrictedExpression::new_bool(req.dry_run),
            ),
        ])
        .map_err(|e| e.to_string())?;
        let request = Request::new(principal_uid, action, target, context, None)
            .map_err(|e| e.to_string())?;
        Ok((request, entities))
    }
}

/// The fix to suggest when Cedar has none: params and enrichment are tags, not attributes.
fn validation_help(message: &str) -> String {
    let tags = [
        ("Reflex::Params", "context.params"),
        ("Reflex::Target", "resource"),
    ];
    for (type_, path) in tags {
        if message.contains(&format!("on entity type `{type_}` not found")) {
            let name = message
                .split("attribute `")
                .nth(1)
                .and_then(|s| s.split('`').next())
                .unwrap_or("name");
            return format!(
                "{path} keeps its keys as tags: write `{path}.hasTag(\"{name}\") && {path}.getTag(\"{name}\")`"
            );
        }
    }
    "what a request offers to policies is listed in README.md, \"Policies\"".into()
}

/// `file:line:column: message (help)` for a diagnostic and those related to it, with the line
/// of its first label (Cedar's spans are byte offsets into the whole file).
fn located(file: &str, text: &str, d: &dyn Diagnostic, fallback_help: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut one = |d: &dyn Diagnostic| {
        let at = d
            .labels()
            .and_then(|mut l| l.next())
            .map(|l| l.offset().min(text.len()));
        let place = match at {
            Some(offset) => {
                let line = reflex_core::line_of(text, offset);
                let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
                let column = text[line_start..offset].chars().count() + 1;
                format!("{file}:{line}:{column}")
            }
            None => file.to_string(),
        };
        let help = d
            .help()
            .map(|h| h.to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| fallback_help.to_string());
        let mut line = format!("{place}: {d}");
        if !help.is_empty() {
            line.push_str(&format!(" (fix: {help})"));
        }
        out.push(line);
    };
    one(d);
    if let Some(related) = d.related() {
        for r in related {
            one(r);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use reflex_core::actions::ActionKind;

    const ACTIONS: [&str; 3] = ["suspend-environment", "restart-pod", "quarantine-host"];

    fn policies(text: &str) -> Result<Policies, PolicyError> {
        Policies::parse("policies.cedar", text, ACTIONS)
    }

    fn request(action: &str, target: &str) -> ActionRequest {
        ActionRequest {
            idempotency_key: format!("{action}:e1"),
            action: action.into(),
            kind: ActionKind::Http,
            target: target.into(),
            params: BTreeMap::from([
                ("namespace".into(), "shop".into()),
                ("approved_by".into(), "policy".into()),
            ]),
            body: None,
            event_id: "e1".into(),
            event_type: "io.k8s.pod.crashloop".into(),
            rule: Some("crashloop-restart".into()),
            correlation_id: "c1".into(),
            context: BTreeMap::from([("cluster.env".into(), "production".into())]),
            dry_run: false,
            requested_at: 0,
        }
    }

    /// Wednesday 2026-12-02 10:30 UTC.
    fn wednesday() -> DateTime<Utc> {
        "2026-12-02T10:30:00Z".parse().unwrap()
    }

    fn saturday() -> DateTime<Utc> {
        "2026-12-05T23:10:00Z".parse().unwrap()
    }

    const OPERATOR: &str = r#"
permit (principal, action, resource);

@id("no-suspend-in-production")
forbid (principal, action == Reflex::Action::"suspend-environment", resource)
when { resource.hasTag("cluster.env") && resource.getTag("cluster.env") == "production" };

@id("quarantine-on-weekdays")
forbid (principal, action == Reflex::Action::"quarantine-host", resource)
when { context.now.weekday > 5 };

@id("restart-only-in-shop-and-payments")
forbid (principal, action == Reflex::Action::"restart-pod", resource)
unless { context.params.hasTag("namespace") && ["shop", "payments"].contains(context.params.getTag("namespace")) };
"#;

    fn deny(d: Decision) -> Denial {
        match d {
            Decision::Deny(d) => d,
            Decision::Allow => panic!("allowed"),
        }
    }

    #[test]
    fn what_an_operator_says_is_what_is_decided() {
        let p = policies(OPERATOR).unwrap();
        let ev = EventAttrs::default();
        // Labelled production through enrichment: never suspended.
        let d = deny(p.decide(
            &request("suspend-environment", "prod-analytics"),
            &ev,
            wednesday(),
        ));
        assert_eq!(d.policies, ["no-suspend-in-production"]);
        assert_eq!(
            d.reason,
            "denied by policy `no-suspend-in-production` (policies.cedar:4)"
        );
        let mut dev = request("suspend-environment", "preview-1");
        dev.context.insert("cluster.env".into(), "dev".into());
        assert_eq!(p.decide(&dev, &ev, wednesday()), Decision::Allow);
        dev.context.clear();
        assert_eq!(p.decide(&dev, &ev, wednesday()), Decision::Allow);

        // Quarantine on weekdays only (time of the decision, UTC).
        let q = request("quarantine-host", "host-1");
        assert_eq!(p.decide(&q, &ev, wednesday()), Decision::Allow);
        let d = deny(p.decide(&q, &ev, saturday()));
        assert_eq!(d.label(), "quarantine-on-weekdays");

        // Restarts only in listed namespaces (a param).
        let r = request("restart-pod", "k8s");
        assert_eq!(p.decide(&r, &ev, wednesday()), Decision::Allow);
        let mut other = r.clone();
        other
            .params
            .insert("namespace".into(), "kube-system".into());
        assert_eq!(
            deny(p.decide(&other, &ev, wednesday())).policies,
            ["restart-only-in-shop-and-payments"]
        );
        other.params.clear();
        assert!(matches!(
            p.decide(&other, &ev, wednesday()),
            Decision::Deny(_)
        ));
    }

    #[test]
    fn principal_event_and_rule_are_visible() {
        let p = policies(
            r#"permit (principal == Reflex::Rule::"crashloop-restart", action, resource)
when { context.event.type like "io.k8s.*" && context.event.subject == "pod/p1" && resource.name like "k8s*" };
"#,
        )
        .unwrap();
        let ev = EventAttrs {
            subject: "pod/p1".into(),
            time: String::new(),
        };
        let r = request("restart-pod", "k8s-gateway");
        assert_eq!(p.decide(&r, &ev, wednesday()), Decision::Allow);
        let mut no_rule = r.clone();
        no_rule.rule = None;
        let d = deny(p.decide(&no_rule, &ev, wednesday()));
        assert!(d.policies.is_empty());
        assert!(
            d.reason
                .contains("no permit policy in policies.cedar matches"),
            "{d}"
        );
        assert_eq!(d.label(), "no-permit");
    }

    #[test]
    fn a_forbid_that_fails_at_run_time_denies() {
        // An unguarded tag is refused at start-up…
        let e = policies(
            "permit (principal, action, resource);\nforbid (principal, action, resource)\nwhen { resource.getTag(\"tier\") == \"gold\" };\n",
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("policies.cedar:3:"), "{e}");
        // …and overflow is a run-time error the validator cannot see.
        let p = policies(
            "permit (principal, action, resource);\n@id(\"overflow\")\nforbid (principal, action, resource)\nwhen { context.now.unix * 9223372036854775807 > 0 };\n",
        )
        .unwrap();
        let d = deny(p.decide(
            &request("restart-pod", "t"),
            &EventAttrs::default(),
            wednesday(),
        ));
        assert_eq!(d.policies, ["overflow"]);
        assert!(d.reason.starts_with("denied by policy (fail closed): `overflow` (policies.cedar:2) could not be evaluated"), "{d}");
    }

    #[test]
    fn broken_files_name_file_line_column_and_the_fix() {
        // A syntax error.
        let e = policies(
            "permit (principal, action, resource);\n\nforbid (principal, action resource);\n",
        )
        .unwrap_err();
        assert_eq!(e.lines.len(), 1, "{e}");
        assert!(e.lines[0].starts_with("policies.cedar:3:"), "{e}");
        // An attribute the schema does not have.
        let e = policies(
            "permit (principal, action, resource)\nwhen { context.parms.hasTag(\"x\") };\n",
        )
        .unwrap_err();
        assert_eq!(e.lines.len(), 1, "one line, not one per action: {e}");
        assert!(
            e.lines[0].starts_with(
                "policies.cedar:2:8: for policy `policy0`, attribute `parms` in context"
            ),
            "{e}"
        );
        assert!(e.lines[0].ends_with("(fix: did you mean `params`?)"), "{e}");
        // An action no [[actor.action]] defines.
        let e = policies(
            "permit (principal, action == Reflex::Action::\"suspnd-environment\", resource);\n",
        )
        .unwrap_err();
        assert!(e.lines[0].starts_with("policies.cedar:1:"), "{e}");
        assert!(e.to_string().contains("suspnd-environment"), "{e}");
        // No permit at all.
        let e = policies("forbid (principal, action, resource) when { context.dry_run };\n")
            .unwrap_err();
        assert!(e.to_string().contains("no `permit` policy"), "{e}");
        // Two policies with one id.
        let e = policies("@id(\"a\")\npermit (principal, action, resource);\n@id(\"a\")\nforbid (principal, action, resource);\n").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("policies.cedar:3: @id(\"a\") is used by two policies"),
            "{e}"
        );
        // A param read as an attribute: the fix says tags.
        let e = policies("permit (principal, action, resource)\nwhen { context.params.namespace == \"shop\" };\n").unwrap_err();
        assert!(
            e.lines[0].ends_with("(fix: context.params keeps its keys as tags: write `context.params.hasTag(\"namespace\") && context.params.getTag(\"namespace\")`)"),
            "{e}"
        );
        // A missing file.
        let e = Policies::load(Path::new("/nonexistent/p.cedar"), ACTIONS).unwrap_err();
        assert!(e.to_string().contains("actor.policy_file"), "{e}");
    }

    #[test]
    fn the_schema_declares_every_action() {
        let text = schema_text(["a", "b \"quoted\""]);
        assert!(
            text.contains(r#"action "a", "b \"quoted\"" appliesTo"#),
            "{text}"
        );
        let _ = Schema::from_cedarschema_str(&text).unwrap();
        let _ = Schema::from_cedarschema_str(&schema_text([])).unwrap();
    }
}
