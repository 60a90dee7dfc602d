//! Structural checks of the operational assets under `ops/` (no broker, no promtool needed):
//! the Grafana dashboards parse and carry the expected titles, every alert has a severity and a
//! runbook that exists, and every metric name used in the rules, dashboards and KEDA example is
//! one the fleet defines (`crates/core/src/metrics.rs`, `crates/lag/src/lib.rs`) or a recording
//! rule of the rules file. `scripts/check-ops` adds promtool's syntax checks and rule unit tests.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::PathBuf;

const RULES: &str = "ops/alerts/reflex.rules.yml";
const RULES_TEST: &str = "ops/alerts/reflex.rules.test.yml";
const KEDA: &str = "ops/keda/scaledobject.yaml";
const RUNBOOK_PREFIX: &str = "https://github.com/reflex-dev/reflex/blob/main/";
const DASHBOARDS: [(&str, &str); 3] = [
    ("ops/dashboards/executive.json", "Reflex / Executive"),
    ("ops/dashboards/on-call.json", "Reflex / On-call"),
    ("ops/dashboards/debug.json", "Reflex / Debug"),
];
const HISTOGRAM_SUFFIXES: [&str; 3] = ["_bucket", "_sum", "_count"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The metrics the fleet defines: the string values of `pub const NAME: &str = "...";` in the
/// two files that define metric names, plus which of them are histograms (only those have
/// `_bucket`, `_sum` and `_count` series).
struct Metrics {
    names: BTreeSet<String>,
    histograms: BTreeSet<String>,
}

fn defined_metrics() -> Metrics {
    let mut consts = BTreeMap::new();
    for file in ["crates/core/src/metrics.rs", "crates/lag/src/lib.rs"] {
        for line in read(file).lines() {
            let Some(rest) = line.trim().strip_prefix("pub const ") else {
                continue;
            };
            let Some((ident, value)) = rest.split_once(": &str = \"") else {
                continue;
            };
            let value = value.split('"').next().unwrap_or_default();
            if value.starts_with("reflex_") || value.starts_with("kafka_") {
                consts.insert(ident.to_string(), value.to_string());
            }
        }
    }
    assert!(
        consts.values().any(|v| v == "reflex_actions_total")
            && consts
                .values()
                .any(|v| v == "kafka_consumergroup_group_sum_lag"),
        "metric constants not found: {consts:?}"
    );
    // Histograms: the constants passed to `histogram!(...)` anywhere in the crates.
    let mut histograms = BTreeSet::new();
    let mut files = vec![root().join("crates")];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "target") {
                continue;
            }
            for entry in fs::read_dir(&path).expect("read_dir").flatten() {
                files.push(entry.path());
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = fs::read_to_string(&path).unwrap_or_default();
            for (i, m) in text.match_indices("histogram!(") {
                let after = &text[i + m.len()..];
                let arg = after.split([',', ')']).next().unwrap_or_default().trim();
                let ident = arg.rsplit("::").next().unwrap_or_default();
                if let Some(value) = consts.get(ident) {
                    histograms.insert(value.clone());
                }
            }
        }
    }
    Metrics {
        names: consts.into_values().collect(),
        histograms,
    }
}

/// One rule of the rules file, scanned line by line.
#[derive(Debug, Default)]
struct Rule {
    alert: bool,
    name: String,
    expr: String,
    severity: Option<String>,
    summary: Option<String>,
    description: Option<String>,
    runbook_url: Option<String>,
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

fn unquote(value: &str) -> String {
    value
        .trim()
        .trim_matches('"')
        .trim_matches('\'')
        .to_string()
}

/// Rules in file order: `- alert:`/`- record:` start a rule; `expr:` may be a one-liner or a
/// block scalar (`|`, `>`) whose more-indented lines follow.
fn parse_rules(text: &str) -> Vec<Rule> {
    let mut rules: Vec<Rule> = Vec::new();
    let mut expr_block: Option<usize> = None;
    for line in text.lines() {
        let trimmed = line.trim();
        if let Some(expr_indent) = expr_block {
            if !trimmed.is_empty() && indent(line) > expr_indent {
                let rule = rules.last_mut().expect("expr inside a rule");
                rule.expr.push(' ');
                rule.expr.push_str(trimmed);
                continue;
            }
            expr_block = None;
        }
        if trimmed.starts_with('#') {
            continue;
        }
        for (prefix, alert) in [("- alert:", true), ("- record:", false)] {
            if let Some(name) = trimmed.strip_prefix(prefix) {
                rules.push(Rule {
                    alert,
                    name: name.trim().to_string(),
                    ..Rule::default()
                });
            }
        }
        let Some(rule) = rules.last_mut() else {
            continue;
        };
        if let Some(value) = trimmed.strip_prefix("expr:") {
            let value = value.trim();
            if matches!(value, "|" | ">" | "|-" | ">-") {
                expr_block = Some(indent(line));
            } else {
                rule.expr = unquote(value);
            }
        } else if let Some(v) = trimmed.strip_prefix("severity:") {
            rule.severity = Some(unquote(v));
        } else if let Some(v) = trimmed.strip_prefix("summary:") {
            rule.summary = Some(unquote(v));
        } else if let Some(v) = trimmed.strip_prefix("description:") {
            rule.description = Some(unquote(v));
        } else if let Some(v) = trimmed.strip_prefix("runbook_url:") {
            rule.runbook_url = Some(unquote(v));
        }
    }
    rules
}

/// Metric-like identifiers in a PromQL expression (label values and strings removed first):
/// every `reflex_*`, `kafka_*` and `reflex:*` token.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut without_strings = String::with_capacity(expr.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in expr.chars() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        if c == '"' {
            in_string = true;
            without_strings.push(' ');
        } else {
            without_strings.push(c);
        }
    }
    without_strings
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|t| t.starts_with("reflex_") || t.starts_with("kafka_") || t.starts_with("reflex:"))
        .map(str::to_string)
        .collect()
}

fn is_known(name: &str, metrics: &Metrics, records: &BTreeSet<String>) -> bool {
    metrics.names.contains(name)
        || records.contains(name)
        || HISTOGRAM_SUFFIXES.iter().any(|suffix| {
            name.strip_suffix(suffix)
                .is_some_and(|base| metrics.histograms.contains(base))
        })
}

/// Every `expr` string and variable query in a dashboard.
fn dashboard_exprs(node: &serde_json::Value, out: &mut Vec<String>) {
    match node {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr" | "definition", serde_json::Value::String(s)) => out.push(s.clone()),
                    ("query", serde_json::Value::Object(q)) if q.get("query").is_some() => {
                        if let Some(s) = q["query"].as_str() {
                            out.push(s.to_string());
                        }
                    }
                    _ => dashboard_exprs(value, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| dashboard_exprs(v, out)),
        _ => {}
    }
}

fn load_dashboard(rel: &str) -> serde_json::Value {
    serde_json::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel} is not valid JSON: {e}"))
}

#[test]
fn dashboards_parse_and_have_the_required_titles() {
    for (file, title) in DASHBOARDS {
        let d = load_dashboard(file);
        assert_eq!(d["title"], title, "{file}: title");
        assert!(
            d["schemaVersion"].as_u64().unwrap_or(0) >= 36,
            "{file}: schemaVersion"
        );
        let vars = d["templating"]["list"].as_array().expect("templating.list");
        assert!(
            vars.iter().any(|v| v["name"] == "datasource"
                && v["type"] == "datasource"
                && v["query"] == "prometheus"),
            "{file}: needs a ${{datasource}} Prometheus variable"
        );
        let panels = d["panels"].as_array().expect("panels");
        let queried: Vec<_> = panels.iter().filter(|p| p["type"] != "row").collect();
        assert!(queried.len() >= 6, "{file}: only {} panels", queried.len());
        for p in queried {
            assert_eq!(
                p["datasource"]["uid"], "${datasource}",
                "{file}: panel {}",
                p["title"]
            );
            let targets = p["targets"].as_array().expect("targets");
            assert!(
                !targets.is_empty(),
                "{file}: panel {} has no query",
                p["title"]
            );
        }
    }
}

#[test]
fn every_alert_has_severity_annotations_and_an_existing_runbook() {
    let rules = parse_rules(&read(RULES));
    let alerts: Vec<&Rule> = rules.iter().filter(|r| r.alert).collect();
    assert!(alerts.len() >= 10, "only {} alerts found", alerts.len());
    for alert in &alerts {
        let name = &alert.name;
        assert!(!alert.expr.is_empty(), "{name}: no expr");
        let severity = alert.severity.as_deref().unwrap_or_default();
        assert!(
            matches!(severity, "page" | "ticket"),
            "{name}: severity must be page or ticket, got {severity:?}"
        );
        assert!(
            alert.summary.as_deref().is_some_and(|s| !s.is_empty()),
            "{name}: summary"
        );
        assert!(
            alert.description.as_deref().is_some_and(|s| !s.is_empty()),
            "{name}: description"
        );
        let url = alert.runbook_url.as_deref().unwrap_or_default();
        let path = url.strip_prefix(RUNBOOK_PREFIX).unwrap_or_else(|| {
            panic!("{name}: runbook_url {url:?} must start with {RUNBOOK_PREFIX}")
        });
        assert_eq!(
            path,
            format!("ops/runbooks/{name}.md"),
            "{name}: runbook path"
        );
        assert!(
            root().join(path).is_file(),
            "{name}: runbook {path} does not exist"
        );
    }
    // The alerts the observability issue asks for.
    for required in [
        "ReflexConsumerLagHigh",
        "ReflexConsumerLagCritical",
        "ReflexConsumerGroupStalled",
        "ReflexConsumerGroupStopped",
        "ReflexConsumerGroupRewound",
        "ReflexErrorBudgetFastBurn",
        "ReflexErrorBudgetSlowBurn",
        "ReflexErrorBudgetLongBurn",
        "ReflexBreakerOpen",
        "ReflexKillSwitchOn",
        "ReflexDeadLettersGrowing",
        "ReflexBackpressureSustained",
        // Non-blocking retries: keys parked with no progress, dead letters given up on.
        "ReflexKeysParkedTooLong",
        "ReflexRedeliveriesGivingUp",
    ] {
        assert!(
            alerts.iter().any(|a| a.name == required),
            "missing alert {required}"
        );
    }
    // Every alert is exercised by the promtool unit tests.
    let tests = read(RULES_TEST);
    for alert in &alerts {
        assert!(
            tests.contains(&format!("alertname: {}", alert.name)),
            "{} has no case in {RULES_TEST}",
            alert.name
        );
    }
}

#[test]
fn every_metric_name_used_in_ops_is_defined() {
    let metrics = defined_metrics();
    let rules = parse_rules(&read(RULES));
    let records: BTreeSet<String> = rules
        .iter()
        .filter(|r| !r.alert)
        .map(|r| r.name.clone())
        .collect();
    let mut unknown = Vec::new();
    let mut used = BTreeSet::new();
    let mut check = |place: String, expr: &str| {
        for name in metric_names(expr) {
            if !is_known(&name, &metrics, &records) {
                unknown.push(format!("{place}: {name}"));
            }
            used.insert(name);
        }
    };
    for rule in &rules {
        check(format!("{RULES} {}", rule.name), &rule.expr);
    }
    for (file, _) in DASHBOARDS {
        let mut exprs = Vec::new();
        dashboard_exprs(&load_dashboard(file), &mut exprs);
        assert!(!exprs.is_empty(), "{file}: no expressions");
        for expr in exprs {
            check(file.to_string(), &expr);
        }
    }
    for line in read(KEDA).lines() {
        let line = line.trim();
        if let Some(query) = line.strip_prefix("query:") {
            check(KEDA.to_string(), query);
        }
    }
    assert!(
        unknown.is_empty(),
        "metric names not defined by the fleet: {unknown:#?}"
    );
    // The headline metrics are actually used somewhere.
    for name in [
        "reflex_actions_total",
        "reflex_breaker_state",
        "reflex_kill_switch_on",
        "kafka_consumergroup_group_max_lag_seconds",
        "kafka_consumergroup_group_sum_lag",
        "reflex_consumergroup_status",
        "reflex_dead_letters_total",
        "reflex_paused_partitions",
        "reflex_processing_duration_seconds_bucket",
        "reflex_parked_keys",
        "reflex_parked_events_total",
        "reflex_redeliveries_total",
        "reflex_redelivery_giveups_total",
        "reflex_redelivery_skips_total",
        "reflex_delayed_partitions",
    ] {
        assert!(used.contains(name), "{name} is not used in ops/");
    }
}

#[test]
fn the_name_scanner_catches_unknown_names() {
    let metrics = defined_metrics();
    let records = BTreeSet::from(["reflex:actions_error_ratio:rate5m".to_string()]);
    let names = metric_names(
        r#"sum(rate(reflex_actions_total{result="failed",group="reflex_x"}[5m])) / reflex:actions_error_ratio:rate5m + reflex_made_up_total"#,
    );
    let unknown: Vec<_> = names
        .iter()
        .filter(|n| !is_known(n, &metrics, &records))
        .collect();
    assert_eq!(unknown, ["reflex_made_up_total"]);
    assert!(is_known(
        "reflex_processing_duration_seconds_bucket",
        &metrics,
        &records
    ));
    assert!(!is_known("reflex_actions_total_bucket", &metrics, &records));
    assert!(metrics
        .histograms
        .contains("reflex_processing_duration_seconds"));
}

#[test]
fn keda_caps_router_replicas_at_the_partition_count() {
    let keda = read(KEDA);
    let max: u32 = keda
        .lines()
        .find_map(|l| l.trim().strip_prefix("maxReplicaCount:"))
        .expect("maxReplicaCount")
        .trim()
        .parse()
        .expect("a number");
    let topics = read("topics/events.toml");
    let mut partitions = None;
    let mut in_topic = false;
    for line in topics.lines().map(str::trim) {
        if line.starts_with("name =") {
            in_topic = line.contains("\"reflex.events.k8s\"");
        } else if in_topic {
            if let Some(v) = line.strip_prefix("partitions =") {
                partitions = v.trim().parse::<u32>().ok();
            }
        }
    }
    let partitions = partitions.expect("partitions of reflex.events.k8s in topics/events.toml");
    assert!(
        max <= partitions,
        "maxReplicaCount {max} > {partitions} partitions"
    );
    assert!(keda.contains("kafka_consumergroup_group_sum_lag{group=\"reflex-router\"}"));
    assert!(root().join("ops/README.md").is_file());
}
