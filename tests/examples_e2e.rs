//! Every scenario pack in `examples/` end to end on the test stack: its topics applied and
//! schemas registered from its own declarations, its router, enricher and actor started as
//! separate processes with its own config files, its recorded events published with
//! `reflexctl publish`, and the effects checked at an HTTP target honouring Idempotency-Key.
//!
//! The pack is copied to a temp dir first with three substitutions, so runs never collide:
//! its topic names, group ids and Redis prefix get a unique prefix, and the fake target's
//! address (127.0.0.1:18080) becomes the test's own target.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use reflex_core::actions::{ActionOutcome, ActionResult, AvroCodec, ACTION_OUTCOME_SCHEMA};
use reflex_testkit::{
    header_str, read_topic_until, stack, unique, workspace_bin, ChildGuard, Stack,
};

/// A pack copied and renamed for this run, its target and its running workers.
struct Running {
    name: String,
    dir: PathBuf,
    prefix: String,
    target: Arc<PackTarget>,
    workers: Vec<ChildGuard>,
}

impl Running {
    fn topic(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.prefix)
    }
    fn log(&self, worker: &str) -> PathBuf {
        self.dir.join(format!("{worker}.log"))
    }
    fn logs(&self) -> String {
        ["router", "enricher", "actor", "actor-live"]
            .iter()
            .map(|w| format!("--- {w}\n{}", read_log(&self.log(w))))
            .collect()
    }
}

/// Copies `examples/<name>` with unique topics/groups/prefix and the target's address.
async fn prepare(stack: &Stack, name: &str) -> Running {
    let (target, addr) = PackTarget::start().await;
    let prefix = unique(&format!("ex-{name}"));
    let dir = std::env::temp_dir().join(&prefix);
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name);
    for sub in ["", "avro", "topics"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
        for entry in std::fs::read_dir(source.join(sub)).unwrap() {
            let path = entry.unwrap().path();
            if !path.is_file() {
                continue;
            }
            let text = std::fs::read_to_string(&path)
                .unwrap()
                .replace(&format!("examples/{name}/"), &format!("{}/", dir.display()))
                .replace(&format!("examples.{name}."), &format!("{prefix}."))
                .replace(&format!("examples-{name}"), &prefix)
                .replace("127.0.0.1:18080", &addr.to_string());
            std::fs::write(dir.join(sub).join(path.file_name().unwrap()), text).unwrap();
        }
    }
    // Its topics (and dead-letter topics) and schemas, from its own declarations.
    let topics_dir = dir.join("topics");
    for command in [["topics", "apply"], ["schemas", "register"]] {
        reflexctl(
            stack,
            &[
                command[0],
                command[1],
                "--dir",
                topics_dir.to_str().unwrap(),
            ],
        );
    }
    Running {
        name: name.to_string(),
        dir,
        prefix,
        target,
        workers: Vec::new(),
    }
}

fn start(stack: &Stack, run: &mut Running) {
    for (bin, worker) in [
        ("reflex-router", "router"),
        ("reflex-enricher", "enricher"),
        ("reflex-actor", "actor"),
    ] {
        let config = run.dir.join(format!("{worker}.toml"));
        let guard = spawn_with_config(bin, stack, &config, &run.log(worker), &[]);
        run.workers.push(guard);
    }
}

/// Runs `reflexctl` against the stack; panics with its stderr when it fails.
fn reflexctl(stack: &Stack, args: &[&str]) {
    reflexctl_out(stack, args);
}

/// [`reflexctl`], returning its standard output.
fn reflexctl_out(stack: &Stack, args: &[&str]) -> String {
    let out = Command::new(workspace_bin("reflexctl"))
        .args([
            "--bootstrap",
            &stack.bootstrap,
            "--registry",
            &stack.registry_url,
        ])
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "reflexctl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `reflexctl publish` of `lines` (JSON lines) with the pack's pack.toml flags; ce_ids are
/// `<id>-<n>` (or `<id>` for one line).
fn publish(stack: &Stack, run: &Running, lines: &[&str], id: &str) {
    let pack: toml::Value =
        toml::from_str(&std::fs::read_to_string(run.dir.join("pack.toml")).unwrap()).unwrap();
    let ev = &pack["events"];
    let file = run.dir.join(format!("{}.jsonl", unique("publish")));
    std::fs::write(&file, lines.join("\n")).unwrap();
    let field = |name: &str| ev[name].as_str().unwrap().to_string();
    let (topic, kind, source, key) = (
        field("topic"),
        field("type"),
        field("source"),
        field("key_field"),
    );
    reflexctl(
        stack,
        &[
            "publish",
            "--topic",
            &topic,
            "--type",
            &kind,
            "--source",
            &source,
            "--key-field",
            &key,
            "--id",
            id,
            "--file",
            file.to_str().unwrap(),
        ],
    );
}

fn recorded(run: &Running) -> Vec<String> {
    std::fs::read_to_string(run.dir.join("events.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

/// Final outcomes (header `reflex-final: true`) on the pack's outcomes topic, once `expected`
/// of them arrived (or 90 s passed), plus a short settle for extras.
async fn final_outcomes(stack: &Stack, run: &Running, expected: usize) -> Vec<ActionOutcome> {
    let schema: serde_avro_fast::Schema = ACTION_OUTCOME_SCHEMA.parse().unwrap();
    let is_final =
        |m: &rdkafka::message::OwnedMessage| header_str(m, "reflex-final") == Some("true");
    let records = read_topic_until(
        &stack.bootstrap,
        &run.topic("outcomes"),
        Duration::from_secs(90),
        Duration::from_secs(2),
        |got| got.iter().filter(|m| is_final(m)).count() >= expected,
    )
    .await;
    let outcomes: Vec<ActionOutcome> = records
        .iter()
        .filter(|m| is_final(m))
        .map(|m| {
            AvroCodec::<ActionOutcome>::decode_with(&schema, rdkafka::Message::payload(m).unwrap())
                .unwrap()
        })
        .collect();
    assert_eq!(
        outcomes.len(),
        expected,
        "{}: final outcomes {:?}\n{}",
        run.name,
        tally(&outcomes),
        run.logs()
    );
    outcomes
}

/// (action, result) → count.
fn tally(outcomes: &[ActionOutcome]) -> BTreeMap<(String, &'static str), usize> {
    let mut out = BTreeMap::new();
    for o in outcomes {
        *out.entry((o.action.clone(), o.result.as_str()))
            .or_default() += 1;
    }
    out
}

fn count(t: &BTreeMap<(String, &'static str), usize>, action: &str, result: ActionResult) -> usize {
    t.get(&(action.to_string(), result.as_str()))
        .copied()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_restarts_below_the_threshold_outside_rollouts_and_caps_remediations() {
    let stack = stack();
    let mut run = prepare(&stack, "crash-loop").await;
    start(&stack, &mut run);
    let events = recorded(&run);
    let lines: Vec<&str> = events.iter().map(String::as_str).collect();
    // Every event twice (a redelivery): the second copy must change nothing. The pack's rules
    // throttle per pod, so the router takes each second copy into the pod's window (counted as
    // throttled) and it never reaches the actor.
    publish(&stack, &run, &lines, "crash");
    publish(&stack, &run, &lines, "crash");

    // 4 restart requests + 1 page, once each: 5 final outcomes.
    let t = tally(&final_outcomes(&stack, &run, 5).await);
    assert_eq!(
        count(&t, "restart-pod", ActionResult::Succeeded),
        3,
        "{t:?}"
    );
    // The 4th restart is over the cap of 3.
    assert_eq!(count(&t, "restart-pod", ActionResult::Held), 1, "{t:?}");
    assert_eq!(count(&t, "page-owner", ActionResult::Succeeded), 1, "{t:?}");
    assert_eq!(t.values().sum::<usize>(), 5, "nothing else: {t:?}");

    let effects = run.target.effects();
    let restarts: Vec<&String> = effects
        .iter()
        .filter(|e| e.starts_with("DELETE /api/v1/"))
        .collect();
    assert_eq!(restarts.len(), 3, "capped at 3: {effects:?}");
    for untouched in ["cart-5c2a", "payments-9a1b", "indexer-3e4f"] {
        assert!(
            !effects.iter().any(|e| e.ends_with(untouched)),
            "{untouched} must not be restarted: {effects:?}"
        );
    }
    assert!(
        effects.contains(&"POST /pager/discovery-oncall/incidents".to_string()),
        "{effects:?}"
    );
    assert_eq!(effects.len(), 4, "{effects:?}");
    // Exactly once in effect: no request repeated at the target either.
    assert_eq!(
        run.target.requests().len(),
        4,
        "{:?}",
        run.target.requests()
    );
    let held = read_topic_until(
        &stack.bootstrap,
        &run.topic("held"),
        Duration::from_secs(30),
        Duration::from_millis(500),
        |got| got.len() >= 2,
    )
    .await;
    assert_eq!(held.len(), 1, "the second copy never reached the actor");
    assert!(header_str(&held[0], "reflex-held-reason")
        .unwrap()
        .contains("blast-radius cap"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incident_evidence_fans_out_three_captures_attached_to_each_sev1_incident() {
    let stack = stack();
    let mut run = prepare(&stack, "incident-evidence").await;
    start(&stack, &mut run);
    let events = recorded(&run);
    let lines: Vec<&str> = events.iter().map(String::as_str).collect();
    publish(&stack, &run, &lines, "alert");
    publish(&stack, &run, &lines, "alert");

    // Two sev-1 firing alerts × three captures × two copies.
    let t = tally(&final_outcomes(&stack, &run, 12).await);
    for action in ["capture-logs", "capture-snapshot", "capture-metrics"] {
        assert_eq!(count(&t, action, ActionResult::Succeeded), 2, "{t:?}");
        assert_eq!(
            count(&t, action, ActionResult::DuplicateSuppressed),
            2,
            "{t:?}"
        );
    }
    let mut expected: Vec<String> = ["INC-1042", "INC-1044"]
        .iter()
        .flat_map(|i| {
            ["logs", "snapshot", "metrics"].map(|k| format!("POST /incidents/{i}/evidence/{k}"))
        })
        .collect();
    expected.sort();
    assert_eq!(run.target.effects(), expected);
    assert_eq!(run.target.requests().len(), 6, "each attached once");
    let logs = run
        .target
        .requests()
        .into_iter()
        .find(|s| s.path == "/incidents/INC-1042/evidence/logs")
        .unwrap();
    assert!(
        logs.body.contains("logs-shop-*"),
        "context from services.toml: {}",
        logs.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_suspend_never_suspends_production_without_an_approval() {
    let stack = stack();
    let mut run = prepare(&stack, "idle-suspend").await;
    start(&stack, &mut run);
    let events = recorded(&run);
    // The last recorded signal is the approved re-send: hold it back.
    let (approved, first) = events.split_last().unwrap();
    let lines: Vec<&str> = first.iter().map(String::as_str).collect();
    publish(&stack, &run, &lines, "idle");

    // preview-4821 suspended; prod-analytics: an approval request only; preview-7731 (on the
    // production cluster) denied by the pack's policy, never called.
    let outcomes = final_outcomes(&stack, &run, 3).await;
    let t = tally(&outcomes);
    assert_eq!(
        count(&t, "suspend-environment", ActionResult::Succeeded),
        1,
        "{t:?}"
    );
    let denied: Vec<&ActionOutcome> = outcomes
        .iter()
        .filter(|o| o.result == ActionResult::DeniedByPolicy)
        .collect();
    assert_eq!(denied.len(), 1, "{t:?}");
    assert_eq!(denied[0].target, "preview-7731");
    assert!(
        denied[0]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("`no-unapproved-suspend-on-production-clusters`")),
        "{:?}",
        denied[0]
    );
    assert_eq!(
        count(&t, "request-approval", ActionResult::Succeeded),
        1,
        "{t:?}"
    );
    assert_eq!(
        run.target.effects(),
        vec![
            "POST /approvals".to_string(),
            "POST /environments/preview-4821/suspend".to_string()
        ]
    );
    let request = run
        .target
        .requests()
        .into_iter()
        .find(|s| s.path == "/approvals")
        .unwrap();
    assert!(
        request.body.contains("\"environment\": \"prod-analytics\""),
        "{}",
        request.body
    );
    assert_eq!(
        request.headers.get("x-approver").map(String::as_str),
        Some("platform-leads")
    );

    // A human approved: the approval tool re-sends the signal with approved_by.
    publish(&stack, &run, &[approved.as_str()], "approved");
    let t = tally(&final_outcomes(&stack, &run, 4).await);
    assert_eq!(
        count(&t, "suspend-environment", ActionResult::Succeeded),
        2,
        "{t:?}"
    );
    let suspend = run
        .target
        .requests()
        .into_iter()
        .find(|s| s.path == "/environments/prod-analytics/suspend")
        .expect("production suspended after the approval");
    assert_eq!(
        suspend.headers.get("x-approved-by").map(String::as_str),
        Some("alice@platform")
    );
    assert_eq!(run.target.requests().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_quarantine_runs_dry_first_then_live_with_the_blast_radius_capped() {
    let stack = stack();
    let mut run = prepare(&stack, "host-quarantine").await;
    start(&stack, &mut run);
    let events = recorded(&run);
    let lines: Vec<&str> = events.iter().map(String::as_str).collect();
    publish(&stack, &run, &lines, "detect");

    // Shadow mode (actor.dry_run = true in the pack): 4 quarantines + 1 SOC note, all DRY_RUN.
    let dry = final_outcomes(&stack, &run, 5).await;
    assert!(
        dry.iter().all(|o| o.result == ActionResult::DryRun),
        "{:?}",
        tally(&dry)
    );
    let would = dry
        .iter()
        .find(|o| o.target == "ws-0142")
        .and_then(|o| o.error.clone())
        .unwrap();
    assert!(would.contains("/edr/hosts/ws-0142/isolate"), "{would}");
    assert!(run.target.requests().is_empty(), "a dry run calls nothing");

    // Live: stop the shadow actor, start one with dry_run off in a new group, which replays
    // the same requests for real.
    let mut shadow = run.workers.pop().unwrap();
    shadow.signal("TERM");
    shadow.wait_exit(Duration::from_secs(30));
    let live_group = unique("live");
    let live = spawn_with_config(
        "reflex-actor",
        &stack,
        &run.dir.join("actor.toml"),
        &run.log("actor-live"),
        &[
            ("REFLEX_ACTOR__DRY_RUN", "false"),
            ("REFLEX_KAFKA__GROUP_ID", live_group.as_str()),
        ],
    );
    run.workers.push(live);
    // ws-0142 is in fra1, a production site: held for approval (no final outcome yet); the
    // three iad2 (staging) hosts run, two isolated and one held by the cap.
    final_outcomes(&stack, &run, 9).await;
    let pending = reflexctl_out(
        &stack,
        &[
            "approvals",
            "list",
            "--json",
            "--approvals-topic",
            &run.topic("approvals"),
            "--decisions-topic",
            &run.topic("decisions"),
        ],
    );
    let pending: Vec<serde_json::Value> = pending
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(pending[0]["target"], "ws-0142", "{pending:?}");
    assert_eq!(pending[0]["params"]["environment"], "production");
    // Approved: it then meets the blast-radius cap like any other isolation (held).
    reflexctl(
        &stack,
        &[
            "approvals",
            "approve",
            pending[0]["id"].as_str().unwrap(),
            "--by",
            "soc-lead",
            "--reason",
            "confirmed ransomware",
            "--approvals-topic",
            &run.topic("approvals"),
            "--decisions-topic",
            &run.topic("decisions"),
        ],
    );
    let all = final_outcomes(&stack, &run, 10).await;
    let t = tally(&all);
    assert_eq!(
        count(&t, "quarantine-host", ActionResult::DryRun),
        4,
        "{t:?}"
    );
    assert_eq!(count(&t, "notify-soc", ActionResult::DryRun), 1, "{t:?}");
    assert_eq!(
        count(&t, "quarantine-host", ActionResult::Succeeded),
        2,
        "{t:?}"
    );
    assert_eq!(count(&t, "quarantine-host", ActionResult::Held), 2, "{t:?}");
    assert_eq!(count(&t, "notify-soc", ActionResult::Succeeded), 1, "{t:?}");
    let effects = run.target.effects();
    assert_eq!(effects.len(), 2, "capped at 2: {effects:?}");
    assert!(
        effects.iter().all(|e| e.starts_with("POST /edr/hosts/")),
        "{effects:?}"
    );
    assert!(
        !effects
            .iter()
            .any(|e| e.contains("dc-01") || e.contains("ws-0177")),
        "{effects:?}"
    );
}
