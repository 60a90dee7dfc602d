//! `reflexctl` as a process against the real local stack (broker, schema registry): run with
//! `cargo build --workspace --bins && scripts/stack.sh run -- cargo nextest run -p reflexctl`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use reflex_testkit::{
    ce_headers, client_config, create_topics, produce, producer, read_topic, stack, unique,
    workspace_bin, Stack,
};
use serde_json::{json, Value as Json};

/// Runs `reflexctl` with the stack's addresses and `stdin`; returns its output.
fn ctl(stack: &Stack, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(workspace_bin("reflexctl"))
        .arg("--bootstrap")
        .arg(&stack.bootstrap)
        .arg("--registry")
        .arg(&stack.registry_url)
        .args(args)
        .env_remove("REFLEX_KAFKA__BOOTSTRAP_SERVERS")
        .env_remove("REFLEX_REGISTRY__URL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn reflexctl");
    {
        let mut pipe = child.stdin.take().expect("stdin");
        if let Some(text) = stdin {
            pipe.write_all(text.as_bytes()).expect("write stdin");
        }
    }
    child.wait_with_output().expect("wait for reflexctl")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts the exit code, showing both streams when it differs.
fn expect_code(o: &Output, code: i32, what: &str) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "{what}: exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        stdout(o),
        stderr(o)
    );
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn partitions(bootstrap: &str, topic: &str) -> usize {
    let consumer: BaseConsumer = client_config(bootstrap).create().expect("consumer");
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    md.topics()
        .iter()
        .find(|t| t.name() == topic)
        .map_or(0, |t| t.partitions().len())
}

fn declare(dir: &Path, topics: &[(&str, i32, i64)]) {
    let mut text = String::new();
    for (name, partitions, retention) in topics {
        text.push_str(&format!(
            "[[topic]]\nname = \"{name}\"\npartitions = {partitions}\nretention_ms = {retention}\n\n"
        ));
    }
    std::fs::write(dir.join("test.toml"), text).expect("write declaration");
}

#[test]
fn topics_apply_creates_is_idempotent_grows_and_refuses_to_shrink() {
    let stack = stack();
    let dir = tempfile::tempdir().expect("tempdir");
    let a = unique("ctl.apply.a");
    let b = unique("ctl.apply.b");
    let dir_arg = dir.path().to_str().unwrap();
    declare(dir.path(), &[(&a, 2, 3_600_000), (&b, 1, 7_200_000)]);

    let dry = ctl(
        &stack,
        &["topics", "apply", "--dir", dir_arg, "--dry-run"],
        None,
    );
    expect_code(&dry, 0, "dry run");
    assert!(stdout(&dry).contains(&format!(
        "+ create {a} (partitions=2, retention.ms=3600000)"
    )));
    assert_eq!(partitions(&stack.bootstrap, &a), 0, "a dry run created {a}");

    let first = ctl(&stack, &["topics", "apply", "--dir", dir_arg], None);
    expect_code(&first, 0, "first apply");
    let out = stdout(&first);
    assert!(
        out.contains(&format!(
            "+ create {a} (partitions=2, retention.ms=3600000)"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "+ create {b} (partitions=1, retention.ms=7200000)"
        )),
        "{out}"
    );
    assert_eq!(partitions(&stack.bootstrap, &a), 2);
    assert_eq!(partitions(&stack.bootstrap, &b), 1);

    let second = ctl(&stack, &["topics", "apply", "--dir", dir_arg], None);
    expect_code(&second, 0, "second apply");
    let lines: Vec<String> = stdout(&second).lines().map(str::to_string).collect();
    assert_eq!(
        lines,
        vec![format!("= {a} unchanged"), format!("= {b} unchanged")]
    );

    // Grow a's partitions and change b's retention.
    declare(dir.path(), &[(&a, 4, 3_600_000), (&b, 1, 1_800_000)]);
    let grow = ctl(&stack, &["topics", "apply", "--dir", dir_arg], None);
    expect_code(&grow, 0, "grow");
    let out = stdout(&grow);
    assert!(out.contains(&format!("~ {a} partitions 2 -> 4")), "{out}");
    assert!(
        out.contains(&format!("~ {b} retention.ms 7200000 -> 1800000")),
        "{out}"
    );
    assert_eq!(partitions(&stack.bootstrap, &a), 4);
    let again = ctl(&stack, &["topics", "apply", "--dir", dir_arg], None);
    expect_code(&again, 0, "apply after grow");
    assert!(
        stdout(&again).lines().all(|l| l.starts_with("= ")),
        "{}",
        stdout(&again)
    );

    // A lower count is refused, the topic keeps its partitions, the exit code says so.
    declare(dir.path(), &[(&a, 3, 3_600_000), (&b, 1, 1_800_000)]);
    let shrink = ctl(&stack, &["topics", "apply", "--dir", dir_arg], None);
    expect_code(&shrink, 1, "shrink");
    let out = stdout(&shrink);
    assert!(
        out.contains(&format!("! {a} partitions 4 -> 3 refused")),
        "{out}"
    );
    assert!(out.contains(&format!("= {b} unchanged")), "{out}");
    assert!(stderr(&shrink).contains("refused"), "{}", stderr(&shrink));
    assert_eq!(partitions(&stack.bootstrap, &a), 4);
}

#[test]
fn bad_declarations_are_reported_with_the_file() {
    let stack = stack();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("bad.toml"),
        "[[topic]]\nname = \"x\"\npartitons = 3\n",
    )
    .unwrap();
    let out = ctl(
        &stack,
        &["topics", "apply", "--dir", dir.path().to_str().unwrap()],
        None,
    );
    expect_code(&out, 2, "bad declaration");
    let err = stderr(&out);
    assert!(
        err.contains("bad.toml") && err.contains("partitons"),
        "{err}"
    );
}

const SCHEMA_V1: &str = r#"{"type": "record", "name": "Probe", "namespace": "dev.reflex.test",
  "fields": [{"name": "host", "type": "string"}, {"name": "ok", "type": "boolean"}]}"#;
/// Compatible: the new field has a default.
const SCHEMA_V2: &str = r#"{"type": "record", "name": "Probe", "namespace": "dev.reflex.test",
  "fields": [{"name": "host", "type": "string"}, {"name": "ok", "type": "boolean"},
             {"name": "latency_ms", "type": "long", "default": 0}]}"#;
/// Incompatible (BACKWARD): a new field without a default.
const SCHEMA_BAD: &str = r#"{"type": "record", "name": "Probe", "namespace": "dev.reflex.test",
  "fields": [{"name": "host", "type": "string"}, {"name": "ok", "type": "boolean"},
             {"name": "region", "type": "string"}]}"#;

#[test]
fn schemas_register_and_check() {
    let stack = stack();
    let root = tempfile::tempdir().expect("tempdir");
    let topic = unique("ctl.schemas");
    let subject = format!("{topic}-value");
    std::fs::create_dir(root.path().join("topics")).unwrap();
    std::fs::create_dir(root.path().join("avro")).unwrap();
    std::fs::write(root.path().join("avro/probe.avsc"), SCHEMA_V1).unwrap();
    std::fs::write(
        root.path().join("topics/t.toml"),
        format!(
            "[[topic]]\nname = \"{topic}\"\npartitions = 1\nvalue_subject = \"{subject}\"\nvalue_schema = \"avro/probe.avsc\"\n"
        ),
    )
    .unwrap();
    let dir = root.path().join("topics");
    let decl_args = [
        "--dir",
        dir.to_str().unwrap(),
        "--root",
        root.path().to_str().unwrap(),
    ];

    let mut args = vec!["schemas", "check"];
    args.extend(decl_args);
    let check = ctl(&stack, &args, None);
    expect_code(&check, 0, "check before any version");
    assert!(
        stdout(&check).contains(&format!("{subject} compatible")),
        "{}",
        stdout(&check)
    );

    let mut args = vec!["schemas", "register"];
    args.extend(decl_args);
    let register = ctl(&stack, &args, None);
    expect_code(&register, 0, "register");
    let out = stdout(&register);
    assert!(out.starts_with(&format!("{subject} id=")), "{out}");
    assert!(out.contains("version=1"), "{out}");

    // Registering again is a no-op that names the same version.
    let again = ctl(&stack, &args, None);
    expect_code(&again, 0, "register again");
    assert_eq!(stdout(&again), out);

    // A compatible change passes check and registers as version 2.
    let v2 = root.path().join("v2.avsc");
    std::fs::write(&v2, SCHEMA_V2).unwrap();
    let single = [
        "--subject",
        subject.as_str(),
        "--file",
        v2.to_str().unwrap(),
    ];
    let mut args = vec!["schemas", "check"];
    args.extend(single);
    expect_code(&ctl(&stack, &args, None), 0, "check v2");
    let mut args = vec!["schemas", "register"];
    args.extend(single);
    let reg2 = ctl(&stack, &args, None);
    expect_code(&reg2, 0, "register v2");
    assert!(stdout(&reg2).contains("version=2"), "{}", stdout(&reg2));

    // An incompatible change: exit 1 with the registry's reasons.
    let bad = root.path().join("bad.avsc");
    std::fs::write(&bad, SCHEMA_BAD).unwrap();
    let check_bad = ctl(
        &stack,
        &[
            "schemas",
            "check",
            "--subject",
            &subject,
            "--file",
            bad.to_str().unwrap(),
        ],
        None,
    );
    expect_code(&check_bad, 1, "check incompatible");
    let out = stdout(&check_bad);
    assert!(out.contains(&format!("{subject} INCOMPATIBLE")), "{out}");
    assert!(
        out.contains("region"),
        "registry's reason names the field: {out}"
    );

    // A file that is not Avro is named.
    let junk = root.path().join("junk.avsc");
    std::fs::write(&junk, "{\"type\": \"recrod\"}").unwrap();
    let out = ctl(
        &stack,
        &[
            "schemas",
            "register",
            "--subject",
            &subject,
            "--file",
            junk.to_str().unwrap(),
        ],
        None,
    );
    expect_code(&out, 2, "junk schema");
    assert!(stderr(&out).contains("junk.avsc"), "{}", stderr(&out));
}

fn pod(pod: &str, restarts: i32, seq: i64) -> Json {
    json!({"cluster": "prod-eu", "namespace": "shop", "pod": pod, "reason": "CrashLoopBackOff",
           "restart_count": restarts, "seq": seq, "rollout_in_progress": false,
           "labels": {"app": "api", "team": "payments"}})
}

/// A fresh topic whose `<topic>-value` subject holds the repo's PodEvent schema; returns
/// (topic, schema id).
async fn pod_topic(stack: &Stack, partitions: i32) -> (String, u32) {
    let topic = unique("ctl.pods");
    create_topics(&stack.bootstrap, &[(&topic, partitions)]).await;
    let schema = repo_root().join("avro/k8s_pod_event.avsc");
    let out = ctl(
        stack,
        &[
            "schemas",
            "register",
            "--subject",
            &format!("{topic}-value"),
            "--file",
            schema.to_str().unwrap(),
        ],
        None,
    );
    expect_code(&out, 0, "register pod schema");
    let id = stdout(&out)
        .split_whitespace()
        .find_map(|w| w.strip_prefix("id="))
        .and_then(|id| id.parse().ok())
        .expect("schema id in register output");
    (topic, id)
}

#[tokio::test]
async fn publish_json_lines_then_tail_decodes_them_with_ce_headers() {
    let stack = stack();
    let (topic, schema_id) = pod_topic(&stack, 3).await;
    let events = [
        pod("api-1", 3, 1),
        pod("api-2", 5, 2),
        pod("worker-9", 12, 3),
    ];
    let input: String = events.iter().map(|e| format!("{e}\n")).collect();
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let published = ctl(
        &stack,
        &[
            "publish",
            "--topic",
            &topic,
            "--type",
            "io.k8s.pod.crashloop",
            "--source",
            "/test/cli",
            "--id",
            "evt-7",
            "--key-field",
            "pod",
            "--header",
            &format!("traceparent={traceparent}"),
        ],
        Some(&input),
    );
    expect_code(&published, 0, "publish");
    let acks: Vec<String> = stdout(&published).lines().map(str::to_string).collect();
    assert_eq!(acks.len(), 3, "{acks:?}");
    for (i, ack) in acks.iter().enumerate() {
        let (place, id) = ack.split_once(' ').expect("`topic/partition@offset id`");
        assert!(
            place.starts_with(&format!("{topic}/")) && place.contains('@'),
            "{ack}"
        );
        assert_eq!(id, format!("evt-7-{}", i + 1));
    }

    let tailed = ctl(
        &stack,
        &[
            "tail",
            "--topic",
            &topic,
            "--from-beginning",
            "--max",
            "3",
            "--timeout-ms",
            "15000",
        ],
        None,
    );
    expect_code(&tailed, 0, "tail");
    let mut lines: Vec<Json> = stdout(&tailed)
        .lines()
        .map(|l| serde_json::from_str(l).expect("tail prints JSON lines"))
        .collect();
    assert_eq!(lines.len(), 3, "{}", stdout(&tailed));
    lines.sort_by_key(|l| {
        l["headers"]["ce_id"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    });
    for (i, (line, event)) in lines.iter().zip(&events).enumerate() {
        let id = format!("evt-7-{}", i + 1);
        assert_eq!(&line["value"], event, "decoded value of {id}");
        assert_eq!(line["schema_id"], json!(schema_id));
        assert_eq!(line["key"], event["pod"]);
        assert_eq!(line["topic"], json!(topic));
        assert!(acks[i].starts_with(&format!("{topic}/{}@{}", line["partition"], line["offset"])));
        let h = &line["headers"];
        assert_eq!(h["ce_specversion"], "1.0");
        assert_eq!(h["ce_id"], json!(id));
        assert_eq!(h["ce_source"], "/test/cli");
        assert_eq!(h["ce_type"], "io.k8s.pod.crashloop");
        assert_eq!(h["content-type"], "application/avro");
        assert_eq!(h["ce_correlationid"], json!(id));
        assert_eq!(h["traceparent"], traceparent);
        let time = h["ce_time"].as_str().expect("ce_time");
        assert!(time.ends_with('Z') && time.len() >= 20, "{time}");
        assert!(line["timestamp"].as_i64().is_some());
        assert!(line.get("error").is_none());
    }
    // Same key, same partition (murmur2 is deterministic).
    let again = ctl(
        &stack,
        &[
            "publish",
            "--topic",
            &topic,
            "--type",
            "io.k8s.pod.crashloop",
            "--key",
            "api-1",
        ],
        Some(&events[0].to_string()),
    );
    expect_code(&again, 0, "publish with --key");
    let partition_of = |ack: &str| {
        ack.split('/')
            .nth(1)
            .and_then(|s| s.split('@').next())
            .map(str::to_string)
    };
    assert_eq!(partition_of(stdout(&again).trim()), partition_of(&acks[0]));
}

#[tokio::test]
async fn publish_rejects_json_that_does_not_match_the_schema_and_sends_nothing() {
    let stack = stack();
    let (topic, _) = pod_topic(&stack, 1).await;
    let mut bad = pod("api-1", 1, 1);
    bad["restart_count"] = json!("many");
    let input = format!("{}\n{bad}\n", pod("api-0", 1, 1));
    let out = ctl(
        &stack,
        &[
            "publish",
            "--topic",
            &topic,
            "--type",
            "io.k8s.pod.crashloop",
        ],
        Some(&input),
    );
    expect_code(&out, 2, "publish mismatch");
    let err = stderr(&out);
    assert!(
        err.contains("event 2") && err.contains("`restart_count`"),
        "{err}"
    );
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));

    let mut missing = pod("api-1", 1, 1);
    missing.as_object_mut().unwrap().remove("cluster");
    let out = ctl(
        &stack,
        &["publish", "--topic", &topic, "--type", "t"],
        Some(&missing.to_string()),
    );
    expect_code(&out, 2, "publish missing field");
    assert!(
        stderr(&out).contains("`cluster` is missing"),
        "{}",
        stderr(&out)
    );

    let out = ctl(
        &stack,
        &["publish", "--topic", &topic, "--type", "t"],
        Some("{\"pod\": "),
    );
    expect_code(&out, 2, "publish broken JSON");
    assert!(stderr(&out).contains("not valid JSON"), "{}", stderr(&out));

    let records = read_topic(
        &stack.bootstrap,
        &topic,
        1,
        Duration::from_secs(3),
        Duration::ZERO,
    )
    .await;
    assert!(
        records.is_empty(),
        "nothing may be produced when an event is bad"
    );
}

#[tokio::test]
async fn tail_prints_an_error_for_a_record_that_does_not_decode_and_goes_on() {
    let stack = stack();
    let (topic, _) = pod_topic(&stack, 1).await;
    let p = producer(&stack.bootstrap);
    produce(
        &p,
        &topic,
        Some("raw"),
        b"{\"not\": \"avro\"}",
        ce_headers("raw-1", "t", "s"),
    )
    .await;
    let good = ctl(
        &stack,
        &[
            "publish", "--topic", &topic, "--type", "t", "--id", "good-1",
        ],
        Some(&pod("api-1", 1, 1).to_string()),
    );
    expect_code(&good, 0, "publish");

    let tailed = ctl(
        &stack,
        &[
            "tail",
            "--topic",
            &topic,
            "--from-beginning",
            "--timeout-ms",
            "5000",
            "--max",
            "2",
        ],
        None,
    );
    expect_code(&tailed, 0, "tail");
    let lines: Vec<Json> = stdout(&tailed)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{}", stdout(&tailed));
    assert!(
        lines[0]["error"].as_str().unwrap().contains("magic byte"),
        "{}",
        lines[0]
    );
    assert_eq!(lines[0]["raw_length"], 15);
    assert_eq!(lines[0]["value"], Json::Null);
    assert_eq!(lines[0]["headers"]["ce_id"], "raw-1");
    assert_eq!(lines[1]["value"], pod("api-1", 1, 1));
}
