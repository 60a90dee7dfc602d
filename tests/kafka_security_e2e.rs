//! Kafka security against a broker that demands it: the stack's Apache Kafka has a SASL_SSL
//! listener (SCRAM-SHA-512, users made by Kafka's storage tool, a CA made per run), a mutual-TLS
//! listener, and ACLs on (scripts/stack.sh). The ACLs applied are `ops/security/kafka-acls.toml`
//! itself, through `reflexctl acls apply` on the admin listener, so the file is what is tested:
//! a right missing from it stops a worker and fails the flow below.
//!
//! - Router (two replicas: one over SASL_SSL with the password from the environment, one over
//!   mutual TLS), enricher (password from the environment), actor and reprocessor (password from
//!   a file) and `reflexctl` (publish, tail, lag, dlq replay) each use their own principal; events
//!   flow end to end to an HTTP target.
//! - A wrong password, an untrusted certificate, a principal without ACLs and a principal missing
//!   one right each stop the worker with one error naming the setting or the right.
//! - No password appears in any log or output.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use reflex_testkit::{create_topics, stack, unique, workspace_bin, ChildGuard, Stack};

const EVENTS: &str = "reflex.events.k8s";
const ROUTED: &str = "reflex.routed.remediation";
const REQUESTS: &str = "reflex.actions.requests";
const OUTCOMES: &str = "reflex.actions.outcomes";
const HELD: &str = "reflex.actions.held";

/// Where the stack keeps the CA, the client certificate and one password file per SCRAM user.
fn security_dir() -> PathBuf {
    PathBuf::from(std::env::var("REFLEX_TEST_SECURITY_DIR").expect(
        "REFLEX_TEST_SECURITY_DIR is not set: run the tests with scripts/test (its broker has \
         the SASL_SSL and mutual-TLS listeners)",
    ))
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run with scripts/test"))
}

fn password(user: &str) -> String {
    std::fs::read_to_string(security_dir().join(format!("{user}.password")))
        .unwrap()
        .trim()
        .to_string()
}

fn all_passwords() -> Vec<String> {
    [
        "reflex-router",
        "reflex-enricher",
        "reflex-actor",
        "reflex-reprocessor",
        "reflex-operator",
        "reflex-no-acl",
    ]
    .iter()
    .map(|u| password(u))
    .collect()
}

fn assert_no_secret(what: &str, text: &str) {
    for secret in all_passwords() {
        assert!(
            !text.contains(&secret),
            "{what} contains a SCRAM password:\n{text}"
        );
    }
}

/// The `[kafka]` section of a worker reaching the broker as `user` over SASL_SSL.
fn sasl_kafka(user: &str, group: &str, inputs: &[&str], ca: &str) -> String {
    format!(
        "[kafka]\nbootstrap_servers = \"{}\"\ngroup_id = \"{group}\"\ninput_topics = {inputs:?}\n\
         [kafka.properties]\n\"security.protocol\" = \"SASL_SSL\"\n\"sasl.mechanism\" = \"SCRAM-SHA-512\"\n\
         \"sasl.username\" = \"{user}\"\n\"ssl.ca.location\" = \"{}\"\n",
        env("REFLEX_TEST_SASL_BOOTSTRAP"),
        security_dir().join(ca).display(),
    )
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// `reflexctl` as the operator principal over SASL_SSL, password from the environment.
fn reflexctl_operator(stack: &Stack, args: &[&str], stdin: Option<&str>) -> Output {
    let mut command = Command::new(workspace_bin("reflexctl"));
    command
        .args(["--bootstrap", &env("REFLEX_TEST_SASL_BOOTSTRAP")])
        .args(["--registry", &stack.registry_url])
        .args(["--kafka-property", "security.protocol=SASL_SSL"])
        .args(["--kafka-property", "sasl.mechanism=SCRAM-SHA-512"])
        .args(["--kafka-property", "sasl.username=reflex-operator"])
        .arg("--kafka-property")
        .arg(format!(
            "ssl.ca.location={}",
            security_dir().join("ca.pem").display()
        ))
        .args(args)
        .env(
            "REFLEX_KAFKA_SECRET_SASL_PASSWORD",
            password("reflex-operator"),
        )
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    if let Some(text) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_no_secret(&format!("reflexctl {args:?}"), &text);
    out
}

/// `reflexctl acls apply FILE` on the admin listener (the stack's PLAINTEXT super user).
fn apply_acls(stack: &Stack, file: &Path) -> String {
    let out = Command::new(workspace_bin("reflexctl"))
        .args(["--bootstrap", &stack.bootstrap, "acls", "apply"])
        .arg(file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "acls apply failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

async fn create_fleet_topics(stack: &Stack) {
    let mut topics: Vec<(String, i32)> = [EVENTS, ROUTED, REQUESTS, OUTCOMES]
        .iter()
        .map(|t| (t.to_string(), 2))
        .collect();
    topics.push((HELD.into(), 1));
    topics.push(("reflex.audit".into(), 1));
    for t in [EVENTS, ROUTED, REQUESTS] {
        topics.push((format!("{t}.dlq"), 1));
        topics.push((format!("{t}.exhausted"), 1));
        topics.push((format!("{t}.dlq.dlq"), 1));
    }
    let refs: Vec<(&str, i32)> = topics.iter().map(|(t, p)| (t.as_str(), *p)).collect();
    create_topics(&stack.bootstrap, &refs).await;
}

/// Waits for `child` to exit (at most `within`) and returns its exit code and log.
fn exit_of(child: &mut ChildGuard, log: &Path, within: Duration) -> (Option<i32>, String) {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait() {
            return (status.code(), read_log(log));
        }
        assert!(
            Instant::now() < deadline,
            "the worker did not stop within {within:?}; its log:\n{}",
            read_log(log)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn wait_for_log(log: &Path, needle: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while !read_log(log).contains(needle) {
        assert!(
            Instant::now() < deadline,
            "`{needle}` not in the log within {within:?}:\n{}",
            read_log(log)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_worker_and_reflexctl_work_through_sasl_ssl_and_mutual_tls_with_the_acl_file() {
    let stack = stack();
    create_fleet_topics(&stack).await;
    let applied = apply_acls(&stack, Path::new("ops/security/kafka-acls.toml"));
    eprintln!("{applied}");
    let schema_id = register_pod_schema(&stack, EVENTS).await;
    let (target, addr) = Target::start().await;

    let dir = std::env::temp_dir().join(unique("kafka-security"));
    std::fs::create_dir_all(&dir).unwrap();
    let secret_file = |user: &str| {
        let path = dir.join(format!("{user}.secret"));
        std::fs::write(&path, format!("{}\n", password(user))).unwrap();
        path.display().to_string()
    };
    let rules = write(
        &dir,
        "rules.toml",
        &format!(
            "[[rule]]\nname = \"crashloop\"\nwhen = 'ce.type == \"io.k8s.pod.crashloop\" && payload.reason == \"CrashLoopBackOff\"'\nto = [\"{ROUTED}\"]\n\n\
             [[rule]]\nname = \"oom\"\nwhen = 'payload.reason == \"OOMKilled\"'\naction = \"dead-letter\"\n"
        ),
    );
    let router_sasl = write(
        &dir,
        "router.toml",
        &format!(
            "{}[router]\nrules_file = \"{}\"\n",
            sasl_kafka("reflex-router", "reflex-router", &[EVENTS], "ca.pem"),
            rules.display()
        ),
    );
    let sec = security_dir();
    let router_mtls = write(
        &dir,
        "router-mtls.toml",
        &format!(
            "[kafka]\nbootstrap_servers = \"{}\"\ngroup_id = \"reflex-router\"\ninput_topics = [\"{EVENTS}\"]\n\
             [kafka.properties]\n\"security.protocol\" = \"SSL\"\n\"ssl.ca.location\" = \"{}\"\n\
             \"ssl.certificate.location\" = \"{}\"\n\"ssl.key.location\" = \"{}\"\n\
             [router]\nrules_file = \"{}\"\n",
            env("REFLEX_TEST_MTLS_BOOTSTRAP"),
            sec.join("ca.pem").display(),
            sec.join("client.pem").display(),
            sec.join("client.key").display(),
            rules.display()
        ),
    );
    let bindings = write(
        &dir,
        "bindings.toml",
        "[[binding]]\naction = \"restart\"\nkind = \"http\"\nwhen_rules = [\"crashloop\"]\ntarget = \"pods\"\nparams = { pod = \"{{ payload.pod }}\" }\n",
    );
    let enricher = write(
        &dir,
        "enricher.toml",
        &format!(
            "{}[enricher]\nbindings_file = \"{}\"\n",
            sasl_kafka("reflex-enricher", "reflex-enricher", &[ROUTED], "ca.pem"),
            bindings.display()
        ),
    );
    let actor = write(
        &dir,
        "actor.toml",
        &format!(
            "{}[actor]\nredis_prefix = \"{}\"\noutcomes_topic = \"{OUTCOMES}\"\nheld_topic = \"{HELD}\"\n\
             claim_lease = \"2s\"\nclaim_poll = \"50ms\"\n\n[[actor.action]]\nname = \"restart\"\nkind = \"http\"\n\
             url = \"http://{addr}/act/{{{{ params.pod }}}}\"\nheaders = {{ x-pod = \"{{{{ params.pod }}}}\" }}\ntimeout = \"3s\"\n",
            sasl_kafka("reflex-actor", "reflex-actor", &[REQUESTS], "ca.pem"),
            unique("secure"),
        ),
    );
    let reprocessor = write(
        &dir,
        "reprocessor.toml",
        &sasl_kafka(
            "reflex-reprocessor",
            "reflex-reprocessor",
            &[
                &format!("{EVENTS}.dlq"),
                &format!("{ROUTED}.dlq"),
                &format!("{REQUESTS}.dlq"),
            ],
            "ca.pem",
        ),
    );

    let log = |name: &str| dir.join(format!("{name}.log"));
    let (router_pw, enricher_pw) = (password("reflex-router"), password("reflex-enricher"));
    let (actor_file, reprocessor_file) = (
        secret_file("reflex-actor"),
        secret_file("reflex-reprocessor"),
    );
    let bootstrap_env = env("REFLEX_TEST_SASL_BOOTSTRAP");
    let mut workers = vec![
        spawn_with_config(
            "reflex-router",
            &stack,
            &router_sasl,
            &log("router"),
            &[
                ("REFLEX_KAFKA__BOOTSTRAP_SERVERS", &bootstrap_env),
                ("REFLEX_KAFKA_SECRET_SASL_PASSWORD", &router_pw),
            ],
        ),
        spawn_with_config(
            "reflex-router",
            &stack,
            &router_mtls,
            &log("router-mtls"),
            &[(
                "REFLEX_KAFKA__BOOTSTRAP_SERVERS",
                &env("REFLEX_TEST_MTLS_BOOTSTRAP"),
            )],
        ),
        spawn_with_config(
            "reflex-enricher",
            &stack,
            &enricher,
            &log("enricher"),
            &[
                ("REFLEX_KAFKA__BOOTSTRAP_SERVERS", &bootstrap_env),
                ("REFLEX_KAFKA_SECRET_SASL_PASSWORD", &enricher_pw),
            ],
        ),
        spawn_with_config(
            "reflex-actor",
            &stack,
            &actor,
            &log("actor"),
            &[
                ("REFLEX_KAFKA__BOOTSTRAP_SERVERS", &bootstrap_env),
                ("REFLEX_KAFKA_SECRET_SASL_PASSWORD_FILE", &actor_file),
            ],
        ),
        spawn_with_config(
            "reflex-reprocessor",
            &stack,
            &reprocessor,
            &log("reprocessor"),
            &[
                ("REFLEX_KAFKA__BOOTSTRAP_SERVERS", &bootstrap_env),
                ("REFLEX_KAFKA_SECRET_SASL_PASSWORD_FILE", &reprocessor_file),
            ],
        ),
    ];
    for name in ["router", "router-mtls", "enricher", "actor", "reprocessor"] {
        wait_for_log(&log(name), "partitions assigned", Duration::from_secs(60));
    }

    // The operator publishes through SASL_SSL: crash loops to act on, and one OOM kill that the
    // router dead-letters (replayed below).
    let run = unique("pod");
    let pods: Vec<String> = (0..8).map(|i| format!("{run}-{i}")).collect();
    let mut lines: Vec<String> = pods
        .iter()
        .enumerate()
        .map(|(i, pod)| {
            serde_json::json!({"cluster": "prod-eu", "namespace": "shop", "pod": pod,
                "reason": "CrashLoopBackOff", "restart_count": 5, "seq": i as i64,
                "rollout_in_progress": false, "labels": {"app": pod}})
            .to_string()
        })
        .collect();
    let oom_pod = format!("{run}-oom");
    lines.push(
        serde_json::json!({"cluster": "prod-eu", "namespace": "shop", "pod": oom_pod,
            "reason": "OOMKilled", "restart_count": 1, "seq": 0, "rollout_in_progress": false,
            "labels": {"app": oom_pod}})
        .to_string(),
    );
    let _ = schema_id;
    let out = reflexctl_operator(
        &stack,
        &[
            "publish",
            "--topic",
            EVENTS,
            "--type",
            "io.k8s.pod.crashloop",
            "--key-field",
            "pod",
        ],
        Some(&(lines.join("\n") + "\n")),
    );
    assert!(
        out.status.success(),
        "publish: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // One `topic/partition@offset ce_id` line per event, in input order.
    let published = String::from_utf8_lossy(&out.stdout).to_string();
    let event_ids: Vec<String> = published
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
        .collect();
    assert_eq!(event_ids.len(), lines.len(), "{published}");

    // Every crash loop reaches the target once, through both routers, the enricher and the actor.
    let deadline = Instant::now() + Duration::from_secs(90);
    let seen = |target: &Target| -> Vec<String> {
        let headers = target.first_headers.lock().unwrap();
        let mut pods: Vec<String> = headers
            .values()
            .filter_map(|h| h.get("x-pod").cloned())
            .filter(|p| p.starts_with(&run))
            .collect();
        pods.sort();
        pods
    };
    while seen(&target).len() < pods.len() {
        assert!(
            Instant::now() < deadline,
            "only {:?} of {pods:?} reached the target; logs:\n{}",
            seen(&target),
            ["router", "router-mtls", "enricher", "actor"]
                .iter()
                .map(|n| format!("== {n}\n{}", read_log(&log(n))))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut want = pods.clone();
    want.sort();
    assert_eq!(seen(&target), want);

    // The operator tails the outcomes, reads the router's lag and replays the OOM dead letter.
    let out = reflexctl_operator(
        &stack,
        &[
            "tail",
            "--topic",
            OUTCOMES,
            "--from-beginning",
            "--max",
            "1000",
            "--timeout-ms",
            "8000",
        ],
        None,
    );
    let tailed = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "tail: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for id in &event_ids[..pods.len()] {
        assert!(
            tailed.contains(&format!("\"event_id\":\"{id}\"")),
            "outcome of event {id} not tailed:\n{tailed}"
        );
    }
    let out = reflexctl_operator(&stack, &["lag", "--group", "reflex-router"], None);
    let lag = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "lag: {lag}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        lag.contains(EVENTS),
        "lag output names no input topic:\n{lag}"
    );
    let dlq = format!("{EVENTS}.dlq");
    let out = reflexctl_operator(
        &stack,
        &[
            "dlq",
            "replay",
            "--topic",
            &dlq,
            "--key",
            &oom_pod,
            "--redis",
            &stack.redis_url,
            "--timeout-ms",
            "20000",
        ],
        None,
    );
    let replay = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "dlq replay: {replay}");
    assert!(
        replay.contains("replayed 1") || replay.contains("\"replayed\":1"),
        "{replay}"
    );

    for worker in &mut workers {
        assert!(worker.try_wait().is_none(), "a worker stopped");
    }
    drop(workers);
    for name in ["router", "router-mtls", "enricher", "actor", "reprocessor"] {
        assert_no_secret(&format!("{name} log"), &read_log(&log(name)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_an_untrusted_certificate_and_missing_rights_stop_the_worker_naming_the_fix(
) {
    let stack = stack();
    create_fleet_topics(&stack).await;
    let dir = std::env::temp_dir().join(unique("kafka-refused"));
    std::fs::create_dir_all(&dir).unwrap();
    let rules = write(
        &dir,
        "rules.toml",
        &format!("[[rule]]\nname = \"all\"\nwhen = 'true'\nto = [\"{ROUTED}\"]\n"),
    );
    let router = |name: &str, user: &str, group: &str, ca: &str| {
        write(
            &dir,
            &format!("{name}.toml"),
            &format!(
                "{}[router]\nrules_file = \"{}\"\nvalidate_rules_against_registry = false\n",
                sasl_kafka(user, group, &[EVENTS], ca),
                rules.display()
            ),
        )
    };
    let bootstrap_env = env("REFLEX_TEST_SASL_BOOTSTRAP");
    let refused = |name: &str, config: &Path, secret: (&str, &str)| -> String {
        let log = dir.join(format!("{name}.log"));
        let mut child = spawn_with_config(
            "reflex-router",
            &stack,
            config,
            &log,
            &[("REFLEX_KAFKA__BOOTSTRAP_SERVERS", &bootstrap_env), secret],
        );
        let (code, text) = exit_of(&mut child, &log, Duration::from_secs(45));
        assert_eq!(code, Some(1), "{name}: expected exit 1:\n{text}");
        assert_no_secret(name, &text);
        text
    };

    let text = refused(
        "wrong-password",
        &router("wrong-password", "reflex-router", "reflex-router", "ca.pem"),
        ("REFLEX_KAFKA_SECRET_SASL_PASSWORD", "not-the-password"),
    );
    assert!(
        text.contains("Kafka refused the credentials of User:reflex-router")
            && text.contains("REFLEX_KAFKA_SECRET_SASL_PASSWORD"),
        "{text}"
    );
    let router_pw = password("reflex-router");
    let text = refused(
        "untrusted",
        &router(
            "untrusted",
            "reflex-router",
            "reflex-router",
            "untrusted-ca.pem",
        ),
        ("REFLEX_KAFKA_SECRET_SASL_PASSWORD", &router_pw),
    );
    assert!(
        text.contains("TLS handshake") && text.contains("ssl.ca.location"),
        "{text}"
    );

    // reflex-no-acl has no rights at all: the first one it needs is named.
    let none = write(
        &dir,
        "no-rights.toml",
        "[[worker]]\nname = \"nobody\"\nprincipal = \"User:reflex-no-acl\"\n",
    );
    apply_acls(&stack, &none);
    let no_acl_file = dir.join("no-acl.secret");
    std::fs::write(&no_acl_file, password("reflex-no-acl")).unwrap();
    let no_acl_file = no_acl_file.display().to_string();
    let limited_group = "reflex-router-limited";
    let text = refused(
        "no-acl",
        &router("no-acl", "reflex-no-acl", limited_group, "ca.pem"),
        ("REFLEX_KAFKA_SECRET_SASL_PASSWORD_FILE", &no_acl_file),
    );
    assert!(
        text.contains("User:reflex-no-acl may not Read topic reflex.events.k8s"),
        "{text}"
    );

    // The router's rights from the file, minus Write on its destination: it starts, and stops on
    // the first routed event, naming the topic and the right.
    let limited = write(
        &dir,
        "limited.toml",
        &format!(
            "[[worker]]\nname = \"router-without-write\"\nprincipal = \"User:reflex-no-acl\"\n\
             groups = [{{ name = \"{limited_group}\", operations = [\"Read\", \"Describe\"] }}]\n\
             read = [\"{EVENTS}\"]\nwrite = [\"{EVENTS}.dlq\"]\n"
        ),
    );
    apply_acls(&stack, &limited);
    let log = dir.join("limited.log");
    let mut child = spawn_with_config(
        "reflex-router",
        &stack,
        &router("limited", "reflex-no-acl", limited_group, "ca.pem"),
        &log,
        &[
            ("REFLEX_KAFKA__BOOTSTRAP_SERVERS", &bootstrap_env),
            ("REFLEX_KAFKA_SECRET_SASL_PASSWORD_FILE", &no_acl_file),
            ("REFLEX_KAFKA__AUTO_OFFSET_RESET", "latest"),
        ],
    );
    wait_for_log(&log, "partitions assigned", Duration::from_secs(45));
    let schema_id = register_pod_schema(&stack, EVENTS).await;
    let producer = reflex_testkit::producer(&stack.bootstrap);
    let pod = unique("limited");
    for seq in 0..3 {
        reflex_testkit::produce(
            &producer,
            EVENTS,
            Some(&pod),
            &pod_event(schema_id, &pod, seq, 5, "CrashLoopBackOff"),
            reflex_testkit::ce_headers(
                &format!("{pod}-{seq}"),
                "io.k8s.pod.crashloop",
                "/k8s/test",
            ),
        )
        .await;
    }
    let (code, text) = exit_of(&mut child, &log, Duration::from_secs(60));
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains(&format!("may not Write to topic {ROUTED}")),
        "{text}"
    );
    assert_no_secret("limited router", &text);
    apply_acls(&stack, &none);
}
