//! The actor's policy file end to end: a real broker, Redis and registry, the actor binary as a
//! separate process with `actor.policy_file`, and an HTTP target that records every request.
//! An allowed request is executed; denied ones end with one `DENIED_BY_POLICY` outcome naming
//! the policy, are never sent to the target, never retried and never dead-lettered; a broken
//! policy file stops the actor at start-up naming the file and line.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use reflex_core::actions::{ActionOutcome, ActionResult, AvroCodec, ACTION_OUTCOME_SCHEMA};
use reflex_testkit::{create_topics, header_str, read_topic, read_topic_until, stack, unique};

const POLICIES: &str = r#"// Test policies: restarts allowed, except in kube-system and on production targets.
permit (principal, action, resource);

@id("never-in-kube-system")
forbid (principal, action == Reflex::Action::"restart", resource)
when { context.params.hasTag("namespace") && context.params.getTag("namespace") == "kube-system" };

@id("not-on-production")
forbid (principal, action, resource)
when { resource.hasTag("cluster.env") && resource.getTag("cluster.env") == "production" };
"#;

fn write(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique("policy"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn outcome_of(m: &rdkafka::message::OwnedMessage) -> ActionOutcome {
    let schema: serde_avro_fast::Schema = ACTION_OUTCOME_SCHEMA.parse().unwrap();
    AvroCodec::<ActionOutcome>::decode_with(&schema, rdkafka::Message::payload(m).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actor_policy_allows_one_request_and_denies_two_without_calling_the_target() {
    let stack = stack();
    let input = unique("policy-requests");
    let outcomes = unique("policy-outcomes");
    let held = unique("policy-held");
    let dlq = format!("{input}.dlq");
    create_topics(
        &stack.bootstrap,
        &[(&input, 2), (&outcomes, 1), (&held, 1), (&dlq, 1)],
    )
    .await;
    let codec = action_request_codec(&stack, &input).await;
    let (target, addr) = Target::start().await;
    let config = restart_actor_config(&outcomes, &held, addr, "");
    let policy = write("policies.cedar", POLICIES);
    let log = std::env::temp_dir().join(unique("policy-actor-log"));
    let policy_env = policy.to_str().unwrap();
    let _actor = spawn_actor(
        &stack,
        &unique("policy-actor"),
        "",
        &input,
        &config,
        &log,
        &[("REFLEX_ACTOR__POLICY_FILE", policy_env)],
    );

    let mut allowed = action_request("evt-allowed", "checkout-1");
    allowed.params.insert("namespace".into(), "shop".into());
    let mut system = action_request("evt-kube-system", "coredns-1");
    system
        .params
        .insert("namespace".into(), "kube-system".into());
    let mut production = action_request("evt-production", "checkout-2");
    production.params.insert("namespace".into(), "shop".into());
    production.context = BTreeMap::from([("cluster.env".into(), "production".into())]);
    // The denied ones twice (a redelivery): denied again, never executed.
    let requests = [
        allowed.clone(),
        system.clone(),
        production.clone(),
        system.clone(),
        production.clone(),
    ];
    publish_requests(&stack, &input, &codec, &requests).await;

    let records = read_topic_until(
        &stack.bootstrap,
        &outcomes,
        Duration::from_secs(60),
        Duration::from_secs(2),
        |got| got.len() >= requests.len(),
    )
    .await;
    let got: Vec<(ActionOutcome, bool)> = records
        .iter()
        .map(|m| (outcome_of(m), header_str(m, "reflex-final") == Some("true")))
        .collect();
    assert_eq!(
        got.len(),
        requests.len(),
        "one final outcome per request: {got:?}\n{}",
        read_log(&log)
    );
    assert!(got.iter().all(|(_, last)| *last), "{got:?}");
    let of = |key: &str| -> Vec<&ActionOutcome> {
        got.iter()
            .map(|(o, _)| o)
            .filter(|o| o.idempotency_key == key)
            .collect()
    };
    let ok = of(&allowed.idempotency_key);
    assert_eq!(ok.len(), 1, "{got:?}");
    assert_eq!(ok[0].result, ActionResult::Succeeded, "{:?}", ok[0]);
    let policy_name = policy.display().to_string();
    for (request, id, line) in [
        (&system, "never-in-kube-system", 4),
        (&production, "not-on-production", 8),
    ] {
        let denied = of(&request.idempotency_key);
        assert_eq!(denied.len(), 2, "{got:?}");
        for o in denied {
            assert_eq!(o.result, ActionResult::DeniedByPolicy, "{o:?}");
            assert_eq!(o.attempt, 1);
            assert_eq!(
                o.error.as_deref(),
                Some(format!("denied by policy `{id}` ({policy_name}:{line})").as_str()),
                "{o:?}"
            );
        }
    }

    // The target saw the allowed request only.
    let seen: HashSet<String> = target.snapshot().into_keys().collect();
    assert_eq!(
        seen,
        HashSet::from([allowed.idempotency_key.clone()]),
        "only the allowed request reaches the target; log: {}",
        read_log(&log)
    );
    // Never retried: nothing dead-lettered, nothing held.
    for topic in [&dlq, &held] {
        let records = read_topic(
            &stack.bootstrap,
            topic,
            0,
            Duration::from_secs(1),
            Duration::from_millis(500),
        )
        .await;
        assert!(records.is_empty(), "{topic}: {} records", records.len());
    }
    // Counted by policy.
    let address = http_address(&log).expect("the actor logs its /metrics address");
    let metrics = scrape(&address).await;
    for (policy_id, n) in [("never-in-kube-system", 2.0), ("not-on-production", 2.0)] {
        let series = format!(
            "{}{{action=\"restart\",policy=\"{policy_id}\"}}",
            reflex_core::metrics::POLICY_DENIALS
        );
        assert_eq!(
            metric_value(&metrics, &series),
            Some(n),
            "{series}\n{metrics}"
        );
    }
    assert_eq!(
        metric_value(
            &metrics,
            "reflex_actions_total{action=\"restart\",result=\"denied_by_policy\"}"
        ),
        Some(4.0),
        "{metrics}"
    );
}

/// Exit code and log of an actor started with `policy` as its policy file.
async fn start_with(policy: &Path) -> (Option<i32>, String) {
    let stack = stack();
    let input = unique("policy-broken");
    create_topics(&stack.bootstrap, &[(&input, 1)]).await;
    let (_target, addr) = Target::start().await;
    let config = restart_actor_config(&unique("o"), &unique("h"), addr, "");
    let log = std::env::temp_dir().join(unique("policy-broken-log"));
    let mut actor = spawn_actor(
        &stack,
        &unique("policy-broken"),
        "",
        &input,
        &config,
        &log,
        &[("REFLEX_ACTOR__POLICY_FILE", policy.to_str().unwrap())],
    );
    let code = actor.wait_exit(Duration::from_secs(30));
    (code, read_log(&log))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actor_refuses_a_broken_policy_file_naming_file_and_line() {
    // An attribute the request does not have (line 3), with the fix Cedar suggests.
    let policy = write(
        "policies.cedar",
        "permit (principal, action, resource);\nforbid (principal, action, resource)\nwhen { context.param.hasTag(\"namespace\") };\n",
    );
    let (code, log) = start_with(&policy).await;
    assert_eq!(code, Some(1), "{log}");
    let expected = format!(
        "{}:3:8: for policy `policy1`, attribute `param` in context for Reflex::Action::\"restart\" not found (fix: did you mean `params`?)",
        policy.display()
    );
    assert!(log.contains(&expected), "expected `{expected}` in:\n{log}");
    assert!(log.contains("actor.policy_file is not usable"), "{log}");

    // A syntax error (line 2), and an action no [[actor.action]] defines (line 1).
    let policy = write(
        "policies.cedar",
        "permit (principal, action, resource);\nforbid (principal action, resource);\n",
    );
    let (code, log) = start_with(&policy).await;
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains(&format!(
            "{}:2:19: unexpected token `action`",
            policy.display()
        )),
        "{log}"
    );
    let policy = write(
        "policies.cedar",
        "permit (principal, action == Reflex::Action::\"restrat\", resource);\n",
    );
    let (code, log) = start_with(&policy).await;
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains(&format!(
            "{}:1:30: for policy `policy0`, unrecognized action",
            policy.display()
        )) && log.contains("did you mean `Reflex::Action::\"restart\"`?"),
        "{log}"
    );
}
