//! Human approvals end to end: a real broker, Redis and registry, the actor binary, and
//! `reflexctl approvals` as an operator would run it. One request is approved, one denied, one
//! times out (denied), one times out with `on_timeout = "approve"`, one does not need approval
//! (its `when` is false), and one is pending while the actor is SIGKILLed and approved after
//! the restart. Each must end as decided, exactly once at the target, with the approver on its
//! outcomes.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use rdkafka::Message;
use reflex_core::actions::{
    ActionKind, ActionOutcome, ActionRequest, ActionResult, AvroCodec, ACTION_OUTCOME_SCHEMA,
};
use reflex_testkit::{
    create_topics, header_str, read_topic_until, stack, unique, workspace_bin, Stack,
};

struct Topics {
    input: String,
    outcomes: String,
    held: String,
    approvals: String,
    decisions: String,
}

fn config(prefix: &str, t: &Topics, addr: SocketAddr) -> PathBuf {
    let dir = std::env::temp_dir().join(unique("approvals-config"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("actor.toml");
    let action = |name: &str, approval: &str| {
        format!(
            r#"
[[actor.action]]
name = "{name}"
kind = "http"
url = "http://{addr}/act/{{{{ params.pod }}}}"
timeout = "3s"
approval = {approval}
"#
        )
    };
    std::fs::write(
        &path,
        format!(
            r#"[actor]
redis_prefix = "{prefix}"
outcomes_topic = "{}"
held_topic = "{}"
approvals_topic = "{}"
decisions_topic = "{}"
approval_sweep = "200ms"
claim_lease = "2s"
{}{}{}"#,
            t.outcomes,
            t.held,
            t.approvals,
            t.decisions,
            action(
                "restart",
                r#"{ timeout = "10m", on_timeout = "deny", when = 'params.environment == "production"' }"#
            ),
            action("restart-quick", r#"{ timeout = "3s" }"#),
            action("restart-auto", r#"{ timeout = "3s", on_timeout = "approve" }"#),
        ),
    )
    .unwrap();
    path
}

fn request(action: &str, n: &str, environment: &str) -> ActionRequest {
    let event_id = format!("evt-{n}");
    ActionRequest {
        idempotency_key: reflex_core::actions::idempotency_key(&event_id, action),
        action: action.into(),
        kind: ActionKind::Http,
        target: format!("pod-{n}"),
        params: BTreeMap::from([
            ("pod".to_string(), format!("pod-{n}")),
            ("environment".to_string(), environment.to_string()),
        ]),
        body: None,
        event_id,
        event_type: "io.k8s.pod.crashloop".into(),
        rule: Some("crashloop".into()),
        correlation_id: format!("corr-{n}"),
        context: BTreeMap::new(),
        dry_run: false,
        requested_at: 1_700_000_000_000,
    }
}

fn decode(payload: &[u8]) -> ActionOutcome {
    let schema: serde_avro_fast::Schema = ACTION_OUTCOME_SCHEMA.parse().unwrap();
    AvroCodec::<ActionOutcome>::decode_with(&schema, payload).unwrap()
}

/// Reads the outcomes topic until `done` holds for what was read.
async fn outcomes_until(
    stack: &Stack,
    topic: &str,
    mut done: impl FnMut(&[ActionOutcome]) -> bool,
) -> Vec<(ActionOutcome, bool)> {
    let messages = read_topic_until(
        &stack.bootstrap,
        topic,
        Duration::from_secs(60),
        Duration::from_secs(1),
        |got| {
            let all: Vec<ActionOutcome> =
                got.iter().map(|m| decode(m.payload().unwrap())).collect();
            done(&all)
        },
    )
    .await;
    messages
        .iter()
        .map(|m| {
            (
                decode(m.payload().unwrap()),
                header_str(m, "reflex-final") == Some("true"),
            )
        })
        .collect()
}

fn has(outcomes: &[ActionOutcome], key: &str, result: ActionResult) -> usize {
    outcomes
        .iter()
        .filter(|o| o.idempotency_key == key && o.result == result)
        .count()
}

/// Runs `reflexctl approvals ARGS` against the stack; returns stdout, panics on failure.
fn reflexctl(stack: &Stack, t: &Topics, args: &[&str]) -> String {
    let out = Command::new(workspace_bin("reflexctl"))
        .arg("--bootstrap")
        .arg(&stack.bootstrap)
        .arg("--registry")
        .arg(&stack.registry_url)
        .arg("approvals")
        .args(args)
        .arg("--approvals-topic")
        .arg(&t.approvals)
        .arg("--decisions-topic")
        .arg(&t.decisions)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "reflexctl approvals {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn logs(paths: &[&Path]) -> String {
    paths
        .iter()
        .map(|p| format!("{}:\n{}", p.display(), read_log(p)))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approve_deny_timeout_and_a_sigkill_while_pending_each_end_as_decided_once() {
    let stack = stack();
    let t = Topics {
        input: unique("appr-requests"),
        outcomes: unique("appr-outcomes"),
        held: unique("appr-held"),
        approvals: unique("appr-pending"),
        decisions: unique("appr-decisions"),
    };
    let dlq = format!("{}.dlq", t.input);
    let decisions_dlq = format!("{}.dlq", t.decisions);
    create_topics(
        &stack.bootstrap,
        &[
            (&t.input, 2),
            (&dlq, 1),
            (&t.outcomes, 2),
            (&t.held, 1),
            (&t.approvals, 2),
            (&t.decisions, 2),
            (&decisions_dlq, 1),
        ],
    )
    .await;
    let codec = action_request_codec(&stack, &t.input).await;
    let (target, addr) = Target::start().await;
    let path = config(&unique("reflex-appr"), &t, addr);
    let group = unique("appr-actor");
    let instance = unique("appr-actor-0");
    let log = std::env::temp_dir().join(unique("appr-actor-log"));
    let mut actor = spawn_actor(&stack, &group, &instance, &t.input, &path, &log, &[]);

    let approve = request("restart", "approve", "production");
    let deny = request("restart", "deny", "production");
    let killed = request("restart", "killed", "production");
    let quick = request("restart-quick", "quick", "staging");
    let auto = request("restart-auto", "auto", "staging");
    let free = request("restart", "free", "staging");
    let all = [&approve, &deny, &killed, &quick, &auto, &free];
    let requests: Vec<ActionRequest> = all.iter().map(|r| (*r).clone()).collect();
    publish_requests(&stack, &t.input, &codec, &requests).await;

    // Held: a pending outcome for each request that needs approval; `free` just runs.
    let held_keys: Vec<&str> = [&approve, &deny, &killed, &quick, &auto]
        .iter()
        .map(|r| r.idempotency_key.as_str())
        .collect();
    outcomes_until(&stack, &t.outcomes, |o| {
        held_keys
            .iter()
            .all(|k| has(o, k, ActionResult::PendingApproval) >= 1)
            && has(o, &free.idempotency_key, ActionResult::Succeeded) == 1
    })
    .await;
    let listed = reflexctl(&stack, &t, &["list"]);
    for r in [&approve, &deny, &killed] {
        assert!(listed.contains(&r.idempotency_key), "{listed}");
    }
    assert!(!listed.contains(&free.idempotency_key), "{listed}");

    let said = reflexctl(
        &stack,
        &t,
        &[
            "approve",
            &approve.idempotency_key,
            "--by",
            "alice",
            "--reason",
            "change 42",
        ],
    );
    assert!(said.starts_with("approve "), "{said}");
    reflexctl(
        &stack,
        &t,
        &[
            "deny",
            &deny.idempotency_key,
            "--by",
            "bob",
            "--reason",
            "false positive",
        ],
    );
    // A second decision on a decided request loses to the first.
    reflexctl(
        &stack,
        &t,
        &["approve", &deny.idempotency_key, "--by", "mallory"],
    );
    outcomes_until(&stack, &t.outcomes, |o| {
        has(o, &approve.idempotency_key, ActionResult::Succeeded) == 1
            && has(o, &deny.idempotency_key, ActionResult::Denied) == 1
    })
    .await;
    // Let the decisions' offsets commit, then SIGKILL with `killed` still pending.
    tokio::time::sleep(Duration::from_secs(1)).await;
    actor.signal("KILL");
    actor.wait_exit(Duration::from_secs(5));
    let listed = reflexctl(&stack, &t, &["list"]);
    assert!(listed.contains(&killed.idempotency_key), "{listed}");
    assert!(!listed.contains(&approve.idempotency_key), "{listed}");

    let _restarted = spawn_actor(&stack, &group, &instance, &t.input, &path, &log, &[]);
    reflexctl(
        &stack,
        &t,
        &[
            "approve",
            &killed.idempotency_key,
            "--by",
            "carol",
            "--reason",
            "after the restart",
        ],
    );
    // The denied request arrives again: suppressed, naming the denial.
    publish_requests(&stack, &t.input, &codec, std::slice::from_ref(&deny)).await;

    let outcomes = outcomes_until(&stack, &t.outcomes, |o| {
        has(o, &killed.idempotency_key, ActionResult::Succeeded) == 1
            && has(o, &quick.idempotency_key, ActionResult::Expired) == 1
            && has(o, &auto.idempotency_key, ActionResult::Succeeded) == 1
            && has(o, &deny.idempotency_key, ActionResult::DuplicateSuppressed) == 1
    })
    .await;
    let o: Vec<ActionOutcome> = outcomes.iter().map(|(o, _)| o.clone()).collect();
    let l = || logs(&[&log]);
    let by = |key: &str, result: ActionResult| -> Vec<&ActionOutcome> {
        o.iter()
            .filter(|x| x.idempotency_key == key && x.result == result)
            .collect()
    };

    // Approved by alice, executed once.
    let a = by(&approve.idempotency_key, ActionResult::Approved);
    assert_eq!(a.len(), 1, "{o:?}");
    assert_eq!(a[0].approver.as_deref(), Some("alice"));
    assert_eq!(a[0].approval_reason.as_deref(), Some("change 42"));
    assert_eq!(
        by(&approve.idempotency_key, ActionResult::Succeeded).len(),
        1
    );
    // Denied by bob, never executed; mallory's later approval ignored; the replay suppressed.
    let d = by(&deny.idempotency_key, ActionResult::Denied);
    assert_eq!(d.len(), 1, "{o:?}");
    assert_eq!(d[0].approver.as_deref(), Some("bob"));
    assert!(
        by(&deny.idempotency_key, ActionResult::Approved).is_empty(),
        "{o:?}"
    );
    assert!(by(&deny.idempotency_key, ActionResult::Succeeded).is_empty());
    let s = by(&deny.idempotency_key, ActionResult::DuplicateSuppressed);
    assert_eq!(s[0].approver.as_deref(), Some("bob"), "{s:?}");
    // Pending across the SIGKILL, approved by carol after the restart, executed once.
    let k = by(&killed.idempotency_key, ActionResult::Approved);
    assert_eq!(k.len(), 1, "{o:?}; {}", l());
    assert_eq!(k[0].approver.as_deref(), Some("carol"));
    assert_eq!(
        by(&killed.idempotency_key, ActionResult::Succeeded).len(),
        1
    );
    // Timed out: `deny` means not executed, `approve` means executed once.
    let q = by(&quick.idempotency_key, ActionResult::Expired);
    assert_eq!(q[0].approver.as_deref(), Some("timeout"));
    assert!(by(&quick.idempotency_key, ActionResult::Succeeded).is_empty());
    assert_eq!(
        by(&auto.idempotency_key, ActionResult::Expired).len(),
        1,
        "{o:?}"
    );
    assert_eq!(by(&auto.idempotency_key, ActionResult::Succeeded).len(), 1);
    // No approval needed when `when` is false.
    assert!(by(&free.idempotency_key, ActionResult::PendingApproval).is_empty());
    // Final outcomes: exactly one per request, as decided.
    let finals: HashMap<&str, Vec<ActionResult>> =
        outcomes
            .iter()
            .filter(|(_, last)| *last)
            .fold(HashMap::new(), |mut m, (x, _)| {
                m.entry(x.idempotency_key.as_str())
                    .or_default()
                    .push(x.result);
                m
            });
    assert_eq!(
        finals[approve.idempotency_key.as_str()],
        [ActionResult::Succeeded]
    );
    assert_eq!(
        finals[deny.idempotency_key.as_str()],
        [ActionResult::Denied, ActionResult::DuplicateSuppressed]
    );
    assert_eq!(
        finals[killed.idempotency_key.as_str()],
        [ActionResult::Succeeded]
    );
    assert_eq!(
        finals[quick.idempotency_key.as_str()],
        [ActionResult::Expired]
    );
    assert_eq!(
        finals[auto.idempotency_key.as_str()],
        [ActionResult::Succeeded]
    );

    // At the target: exactly the approved ones, each once.
    let snapshot = target.snapshot();
    let applied: HashSet<&str> = snapshot.keys().map(String::as_str).collect();
    let expected: HashSet<&str> = [&approve, &killed, &auto, &free]
        .iter()
        .map(|r| r.idempotency_key.as_str())
        .collect();
    assert_eq!(applied, expected, "{}", l());
    assert!(
        snapshot.values().all(|(_, effects)| *effects == 1),
        "{snapshot:?}"
    );
    assert_eq!(
        reflexctl(&stack, &t, &["list"]).trim(),
        format!("no approvals pending on {}", t.approvals)
    );
    eprintln!("approvals: {} outcomes; finals {finals:?}", outcomes.len());
}
