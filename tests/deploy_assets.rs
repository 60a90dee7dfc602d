//! Static checks of the deployment assets (no container engine, no cluster needed):
//! `docker-compose.yml`, the `Dockerfile`, the Kubernetes manifests under `ops/deploy/`, the
//! compose side files under `ops/compose/` and the KEDA example `ops/keda/scaledobject.yaml`.
//!
//! - every YAML file parses (multi-document files included);
//! - every path the compose file builds from or mounts exists in the repo, and every image is
//!   either built from the repo or pinned to an explicit tag (never `latest`);
//! - Prometheus, Grafana and the OpenTelemetry collector configs mounted by compose point at
//!   files that exist (alert rules, dashboards) and at the workers' ports;
//! - every ConfigMap copied from a repo file (`reflex.dev/source`) names a file that exists and
//!   holds it verbatim, every referenced ConfigMap is defined and secrets come only from refs;
//! - every Deployment/StatefulSet has `/readyz` and `/healthz` probes on 9090, resource requests
//!   and a termination grace period longer than the drain grace it configures, and no more
//!   replicas than its input topics have partitions; KEDA's `maxReplicaCount` likewise;
//! - every worker that parks keys (`runtime.park_keys`) and runs more than one replica keeps
//!   them in Redis (`REFLEX_RUNTIME__STATE_URL`), and the reprocessor consumes the dead-letter
//!   topic of every input topic of a parking worker (parked keys never come back otherwise);
//! - every worker's environment, rendered as Kubernetes and compose give it (ConfigMaps,
//!   `$(VAR)` expansion, Secret refs, mounted config files), loads with the workers' own loader,
//!   and its Kafka secrets come the supported way: `REFLEX_KAFKA_SECRET_*` from a Secret ref or
//!   a mounted Secret file, never a secret property inline in `kafka.properties`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use serde_yaml::Value;

const COMPOSE: &str = "docker-compose.yml";
const DOCKERFILE: &str = "Dockerfile";
const KEDA: &str = "ops/keda/scaledobject.yaml";
const DEPLOY_DIR: &str = "ops/deploy";
const COMPOSE_DIR: &str = "ops/compose";
const WORKERS: [&str; 4] = ["router", "enricher", "actor", "reprocessor"];
/// `runtime.drain_grace` and `kafka.session_timeout` defaults, in ms (crates/runtime/src/defaults.toml).
const DEFAULT_DRAIN_MS: u64 = 10_000;
const DEFAULT_SESSION_TIMEOUT_MS: u64 = 45_000;
const HTTP_PORT: u64 = 9090;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// All documents of a (possibly multi-document) YAML file, merge keys (`<<`) applied, empty
/// documents skipped. Documents are split at `---` / `...` marker lines in column 0, which by
/// the YAML spec end any block scalar too.
fn parse_yaml_docs(rel: &str) -> Vec<Value> {
    let text = read(rel);
    let mut chunks = vec![String::new()];
    for line in text.lines() {
        let marker = |m: &str| line == m || line.starts_with(&format!("{m} "));
        if marker("---") {
            chunks.push(format!("{}\n", line.trim_start_matches("---")));
        } else if marker("...") {
            chunks.push(String::new());
        } else {
            let chunk = chunks.last_mut().expect("one chunk");
            chunk.push_str(line);
            chunk.push('\n');
        }
    }
    let mut docs = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let mut doc: Value =
            serde_yaml::from_str(chunk).unwrap_or_else(|e| panic!("{rel}: document {i}: {e}"));
        doc.apply_merge()
            .unwrap_or_else(|e| panic!("{rel}: document {i}: merge keys: {e}"));
        if !doc.is_null() {
            docs.push(doc);
        }
    }
    docs
}

fn parse_yaml(rel: &str) -> Value {
    let mut docs = parse_yaml_docs(rel);
    assert_eq!(docs.len(), 1, "{rel}: expected exactly one YAML document");
    docs.remove(0)
}

/// Repo-relative paths of the YAML files under `dir`, recursively, sorted.
fn yaml_files(dir: &str) -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yml" | "yaml")
            ) {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&root().join(dir), &mut out);
    let mut rels: Vec<String> = out
        .iter()
        .map(|p| {
            p.strip_prefix(root())
                .expect("under the repo")
                .to_string_lossy()
                .replace('\\', "/")
        })
        .collect();
    rels.sort();
    rels
}

fn get<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(*k))
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    get(v, path).and_then(Value::as_str)
}

fn seq_at<'a>(v: &'a Value, path: &[&str]) -> &'a [Value] {
    get(v, path)
        .and_then(Value::as_sequence)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// A scalar as a string (YAML numbers and booleans included).
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn as_u64(v: &Value) -> Option<u64> {
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

fn kind(doc: &Value) -> &str {
    str_at(doc, &["kind"]).unwrap_or_default()
}

fn name(doc: &Value) -> &str {
    str_at(doc, &["metadata", "name"]).unwrap_or_default()
}

/// Partitions per topic name, from `topics/*.toml` as `reflexctl topics apply` reads them (so
/// `dead_letter = true` also declares `<name>.dlq` and `<name>.exhausted`).
fn topic_partitions() -> BTreeMap<String, u64> {
    let dir = root().join("topics");
    let decls =
        reflex_core::topics::load_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    assert!(!decls.is_empty(), "no topics declared in topics/*.toml");
    decls
        .into_iter()
        .map(|d| {
            let partitions = u64::try_from(d.partitions).expect("partitions >= 1");
            (d.name, partitions)
        })
        .collect()
}

/// A worker's embedded defaults (`crates/<worker>/src/defaults.toml`).
fn worker_defaults(worker: &str) -> toml::Value {
    let rel = format!("crates/{worker}/src/defaults.toml");
    toml::from_str(&read(&rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The input topics of a worker (`router`, `enricher`, `actor`, `reprocessor`) from its
/// embedded defaults.
fn worker_input_topics(worker: &str) -> Vec<String> {
    let value = worker_defaults(worker);
    let topics: Vec<String> = value
        .get("kafka")
        .and_then(|k| k.get("input_topics"))
        .and_then(|t| t.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    assert!(!topics.is_empty(), "{worker}: no kafka.input_topics");
    topics
}

/// The fewest partitions among a worker's input topics: more replicas than that sit idle.
fn worker_max_replicas(worker: &str, partitions: &BTreeMap<String, u64>) -> u64 {
    worker_input_topics(worker)
        .iter()
        .map(|t| {
            *partitions
                .get(t)
                .unwrap_or_else(|| panic!("{worker}: input topic {t} not declared in topics/"))
        })
        .min()
        .expect("at least one topic")
}

/// `runtime.park_keys` of a worker: the environment override if given, else its embedded
/// defaults over the runtime's (config files set no `[runtime]` table in this repo).
fn parks_keys(worker: &str, env_override: Option<&str>) -> bool {
    if let Some(v) = env_override {
        return v
            .parse()
            .unwrap_or_else(|_| panic!("{worker}: REFLEX_RUNTIME__PARK_KEYS={v:?} is not a bool"));
    }
    let from = |value: &toml::Value| {
        value
            .get("runtime")
            .and_then(|r| r.get("park_keys"))
            .and_then(toml::Value::as_bool)
    };
    let runtime: toml::Value =
        toml::from_str(&read("crates/runtime/src/defaults.toml")).expect("runtime defaults");
    from(&worker_defaults(worker))
        .or_else(|| from(&runtime))
        .expect("runtime.park_keys in crates/runtime/src/defaults.toml")
}

/// A Redis URL the runtime accepts for `runtime.state_url`.
fn is_redis_url(url: &str) -> bool {
    url.starts_with("redis://") || url.starts_with("rediss://")
}

/// Which worker a container runs: `reflex-<worker>` as its command (or first arg).
fn container_worker(container: &Value) -> Option<&'static str> {
    let words: Vec<&str> = seq_at(container, &["command"])
        .iter()
        .chain(seq_at(container, &["args"]))
        .filter_map(Value::as_str)
        .collect();
    WORKERS
        .into_iter()
        .find(|w| words.iter().any(|c| *c == format!("reflex-{w}")))
}

/// An image reference is pinned when it has a digest or a tag other than `latest`.
fn image_pinned(image: &str) -> bool {
    if image.contains("@sha256:") {
        return true;
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, tag)) => !tag.is_empty() && tag != "latest" && !tag.contains('$'),
        None => false,
    }
}

/// A duration such as `30s`, `1m30s` or `500ms`, in milliseconds.
fn duration_ms(s: &str) -> u64 {
    let mut total = 0;
    let mut num = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num.parse().unwrap_or_else(|_| panic!("bad duration {s:?}"));
        num.clear();
        total += match c {
            'h' => n * 3_600_000,
            'm' if chars.peek() == Some(&'s') => {
                chars.next();
                n
            }
            'm' => n * 60_000,
            's' => n * 1000,
            _ => panic!("bad duration {s:?}"),
        };
    }
    assert!(num.is_empty(), "duration {s:?} needs a unit");
    total
}

// ---------------------------------------------------------------------------------------------
// Compose

fn compose() -> Value {
    parse_yaml(COMPOSE)
}

fn services(compose: &Value) -> Vec<(String, &Value)> {
    let services = get(compose, &["services"])
        .and_then(Value::as_mapping)
        .expect("docker-compose.yml: services");
    services
        .iter()
        .map(|(k, v)| (k.as_str().expect("service name").to_string(), v))
        .collect()
}

fn service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    get(compose, &["services", name])
        .unwrap_or_else(|| panic!("docker-compose.yml: no service {name}"))
}

/// Bind mounts of a service as (host path as written, container path).
fn bind_mounts(svc: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for v in seq_at(svc, &["volumes"]) {
        let (source, target) = match v {
            Value::String(s) => {
                let mut parts = s.splitn(3, ':');
                let source = parts.next().unwrap_or_default().to_string();
                let target = parts.next().unwrap_or_default().to_string();
                (source, target)
            }
            _ => (
                str_at(v, &["source"]).unwrap_or_default().to_string(),
                str_at(v, &["target"]).unwrap_or_default().to_string(),
            ),
        };
        if source.starts_with('.') || source.starts_with('/') {
            out.push((source, target));
        }
    }
    out
}

fn repo_path(host: &str) -> PathBuf {
    assert!(
        !host.starts_with('/'),
        "{COMPOSE}: mount {host} is an absolute host path; mount files from the repo instead"
    );
    root().join(host.trim_start_matches("./"))
}

/// The env of a compose service as a map (mapping or `KEY=VALUE` list form).
fn compose_env(svc: &Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    match get(svc, &["environment"]) {
        Some(Value::Mapping(m)) => {
            for (k, v) in m {
                let k = k.as_str().expect("env name").to_string();
                out.insert(k, scalar(v).unwrap_or_default());
            }
        }
        Some(Value::Sequence(s)) => {
            for item in s.iter().filter_map(Value::as_str) {
                let (k, v) = item.split_once('=').unwrap_or((item, ""));
                out.insert(k.to_string(), v.to_string());
            }
        }
        _ => {}
    }
    out
}

/// The container path a service mounts `host` (repo-relative) at, if it does.
fn mount_target_of(svc: &Value, host: &str) -> Option<String> {
    bind_mounts(svc)
        .into_iter()
        .find(|(s, _)| s.trim_start_matches("./") == host)
        .map(|(_, t)| t)
}

/// The repo path behind a container path of a service (through its bind mounts).
fn host_path_of(svc: &Value, container_path: &str) -> Option<PathBuf> {
    bind_mounts(svc).into_iter().find_map(|(s, t)| {
        let rest = container_path.strip_prefix(t.trim_end_matches('/'))?;
        if rest.is_empty() {
            Some(repo_path(&s))
        } else {
            rest.strip_prefix('/').map(|rest| repo_path(&s).join(rest))
        }
    })
}

#[test]
fn every_yaml_file_parses() {
    let mut files = vec![COMPOSE.to_string(), KEDA.to_string()];
    files.extend(yaml_files(DEPLOY_DIR));
    files.extend(yaml_files(COMPOSE_DIR));
    for f in &files {
        assert!(!parse_yaml_docs(f).is_empty(), "{f}: no YAML documents");
    }
    assert!(
        files.len() >= 10,
        "expected the deploy and compose files, found {files:?}"
    );
}

#[test]
fn compose_builds_and_mounts_only_existing_repo_paths() {
    let compose = compose();
    let named_volumes: BTreeSet<String> = get(&compose, &["volumes"])
        .and_then(Value::as_mapping)
        .map(|m| {
            m.keys()
                .filter_map(|k| k.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    for (name, svc) in services(&compose) {
        if let Some(build) = get(svc, &["build"]) {
            let (context, dockerfile) = match build {
                Value::String(c) => (c.clone(), DOCKERFILE.to_string()),
                _ => (
                    str_at(build, &["context"]).unwrap_or(".").to_string(),
                    str_at(build, &["dockerfile"])
                        .unwrap_or(DOCKERFILE)
                        .to_string(),
                ),
            };
            let context = repo_path(&context);
            assert!(
                context.is_dir(),
                "{name}: build context {} missing",
                context.display()
            );
            assert!(
                context.join(&dockerfile).is_file(),
                "{name}: {dockerfile} missing in the build context"
            );
        }
        for (host, target) in bind_mounts(svc) {
            assert!(
                repo_path(&host).exists(),
                "{COMPOSE}: service {name} mounts {host} (at {target}), which does not exist"
            );
        }
        for v in seq_at(svc, &["volumes"]) {
            if let Value::String(s) = v {
                let source = s.split(':').next().unwrap_or_default();
                if !source.starts_with('.') && !source.starts_with('/') && s.contains(':') {
                    assert!(
                        named_volumes.contains(source),
                        "{name}: volume {source} is not declared under top-level volumes"
                    );
                }
            }
        }
        for f in seq_at(svc, &["env_file"]).iter().filter_map(Value::as_str) {
            assert!(repo_path(f).is_file(), "{name}: env_file {f} missing");
        }
    }
}

#[test]
fn compose_images_are_built_from_the_repo_or_pinned() {
    let compose = compose();
    for (name, svc) in services(&compose) {
        if get(svc, &["build"]).is_some() {
            continue;
        }
        let image = str_at(svc, &["image"])
            .unwrap_or_else(|| panic!("{COMPOSE}: service {name} has neither build nor image"));
        assert!(
            image_pinned(image),
            "{COMPOSE}: service {name} uses image {image} without an explicit tag (or `latest`)"
        );
    }
}

/// Users run what the tests ran: the compose broker is Apache Kafka at the version of
/// `ops/kafka/pom.xml`, the broker `scripts/stack.sh` starts.
#[test]
fn compose_runs_the_kafka_version_the_tests_use() {
    let pom = read("ops/kafka/pom.xml");
    let tested = pom
        .split("<kafka.version>")
        .nth(1)
        .and_then(|rest| rest.split("</kafka.version>").next())
        .expect("ops/kafka/pom.xml: <kafka.version>");
    let compose = compose();
    let image = str_at(service(&compose, "kafka"), &["image"]).expect("kafka service image");
    assert_eq!(
        image,
        format!("apache/kafka:{tested}"),
        "{COMPOSE}: the kafka service must run the Apache Kafka version the tests use"
    );
}

#[test]
fn compose_runs_the_workers_with_observability() {
    let compose = compose();
    for required in [
        "kafka",
        "schema-registry",
        "redis",
        "reflex-init",
        "router",
        "enricher",
        "actor",
        "reprocessor",
        "otel-collector",
        "prometheus",
        "grafana",
        "fake-target",
    ] {
        service(&compose, required);
    }
    let redis_cmd: Vec<&str> = seq_at(service(&compose, "redis"), &["command"])
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        redis_cmd.contains(&"--appendonly"),
        "redis must persist (AOF): {redis_cmd:?}"
    );

    for worker in WORKERS {
        let svc = service(&compose, worker);
        assert!(
            get(svc, &["build"]).is_some(),
            "{worker}: must be built from the repo Dockerfile"
        );
        let env = compose_env(svc);
        assert_eq!(
            env.get("REFLEX_RUNTIME__HTTP_LISTEN").map(String::as_str),
            Some("0.0.0.0:9090"),
            "{worker}: /metrics, /healthz, /readyz must listen on 0.0.0.0:9090"
        );
        let otlp = env
            .get("OTEL_EXPORTER_OTLP_ENDPOINT")
            .cloned()
            .unwrap_or_default();
        assert!(
            otlp.starts_with("http://otel-collector:4318"),
            "{worker}: OTEL_EXPORTER_OTLP_ENDPOINT should be the collector's OTLP/HTTP port, got {otlp:?}"
        );
        assert_eq!(
            env.get("REFLEX_KAFKA__BOOTSTRAP_SERVERS")
                .map(String::as_str),
            Some("kafka:19092"),
            "{worker}: bootstrap servers"
        );
        let drain = env
            .get("REFLEX_RUNTIME__DRAIN_GRACE")
            .map(|d| duration_ms(d))
            .unwrap_or(DEFAULT_DRAIN_MS);
        let stop = str_at(svc, &["stop_grace_period"])
            .map(duration_ms)
            .unwrap_or(10_000);
        assert!(
            stop > drain,
            "{worker}: stop_grace_period ({stop} ms) must exceed the drain grace ({drain} ms)"
        );
        let depends: Vec<String> = match get(svc, &["depends_on"]) {
            Some(Value::Mapping(m)) => m
                .keys()
                .filter_map(|k| k.as_str().map(str::to_string))
                .collect(),
            Some(Value::Sequence(s)) => s
                .iter()
                .filter_map(|k| k.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        };
        assert!(
            depends.iter().any(|d| d == "reflex-init"),
            "{worker}: must wait for reflex-init (topics and schemas)"
        );
        let cmd: Vec<&str> = seq_at(svc, &["command"])
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(
            cmd.first().copied(),
            Some(format!("reflex-{worker}").as_str()),
            "{worker}: command"
        );
        // Parked keys in the compose Redis, so scaled-out replicas (`--scale`) share them.
        let park_override = env.get("REFLEX_RUNTIME__PARK_KEYS").map(String::as_str);
        if parks_keys(worker, park_override) {
            let state = env
                .get("REFLEX_RUNTIME__STATE_URL")
                .map(String::as_str)
                .unwrap_or_default();
            assert!(
                is_redis_url(state) && state.contains("//redis:"),
                "{worker}: parks keys, so REFLEX_RUNTIME__STATE_URL must point at the redis service, got {state:?}"
            );
            assert!(
                depends.iter().any(|d| d == "redis"),
                "{worker}: keeps parked keys in Redis, so it must depend on the redis service"
            );
        }
    }

    // Worker config files: the paths each worker is told to read are mounted from the repo.
    let router = service(&compose, "router");
    let rules = &compose_env(router)["REFLEX_ROUTER__RULES_FILE"];
    let rules_host = host_path_of(router, rules)
        .unwrap_or_else(|| panic!("router: rules file {rules} is not mounted from the repo"));
    assert!(
        rules_host.is_file(),
        "router: {} missing",
        rules_host.display()
    );
    let enricher = service(&compose, "enricher");
    let env = compose_env(enricher);
    assert!(
        env.contains_key("REFLEX_ENRICHER__REDIS_URL"),
        "enricher: needs Redis"
    );
    let bindings = &env["REFLEX_ENRICHER__BINDINGS_FILE"];
    let host = host_path_of(enricher, bindings).unwrap_or_else(|| {
        panic!("enricher: bindings file {bindings} is not mounted from the repo")
    });
    assert!(host.is_file(), "enricher: {} missing", host.display());
    let actor = service(&compose, "actor");
    assert!(
        compose_env(actor).contains_key("REFLEX_ACTOR__REDIS_URL"),
        "actor: needs Redis"
    );
    let cmd: Vec<&str> = seq_at(actor, &["command"])
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let config = cmd
        .iter()
        .position(|c| *c == "--config")
        .and_then(|i| cmd.get(i + 1))
        .unwrap_or_else(|| panic!("actor: command needs --config FILE, got {cmd:?}"));
    let host = host_path_of(actor, config)
        .unwrap_or_else(|| panic!("actor: config {config} is not mounted from the repo"));
    let text = fs::read_to_string(&host).expect("actor config");
    assert!(
        text.contains("[[actor.action]]"),
        "actor: {} has no actions",
        host.display()
    );

    // The fake target runs the repo script.
    let fake = service(&compose, "fake-target");
    assert!(
        mount_target_of(fake, "scripts/fake-target.py").is_some(),
        "fake-target must mount scripts/fake-target.py"
    );
}

#[test]
fn compose_observability_configs_point_at_existing_files() {
    let compose = compose();

    // Prometheus: scrapes the three workers on 9090 and loads the repo's alert rules.
    let prom_svc = service(&compose, "prometheus");
    let prom_cfg = "ops/compose/prometheus.yml";
    let target = mount_target_of(prom_svc, prom_cfg)
        .unwrap_or_else(|| panic!("prometheus must mount {prom_cfg}"));
    assert!(
        target.ends_with("prometheus.yml"),
        "prometheus config mounted at {target}"
    );
    let prom = parse_yaml(prom_cfg);
    let targets: BTreeSet<String> = seq_at(&prom, &["scrape_configs"])
        .iter()
        .flat_map(|sc| seq_at(sc, &["static_configs"]))
        .flat_map(|st| seq_at(st, &["targets"]))
        .filter_map(|t| t.as_str().map(str::to_string))
        .collect();
    for worker in WORKERS {
        let t = format!("{worker}:{HTTP_PORT}");
        assert!(
            targets.contains(&t),
            "{prom_cfg}: does not scrape {t}: {targets:?}"
        );
    }
    let rule_files: Vec<&str> = seq_at(&prom, &["rule_files"])
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(!rule_files.is_empty(), "{prom_cfg}: no rule_files");
    let mut loads_alerts = false;
    for rf in rule_files {
        let host = host_path_of(prom_svc, rf)
            .unwrap_or_else(|| panic!("{prom_cfg}: rule file {rf} is not mounted into prometheus"));
        assert!(
            host.is_file(),
            "{prom_cfg}: rule file {rf} -> {} missing",
            host.display()
        );
        loads_alerts |= host.ends_with("ops/alerts/reflex.rules.yml");
    }
    assert!(
        loads_alerts,
        "{prom_cfg}: must load ops/alerts/reflex.rules.yml"
    );

    // Grafana: a Prometheus datasource and a provider loading ops/dashboards/*.json.
    let grafana = service(&compose, "grafana");
    let prov = mount_target_of(grafana, "ops/compose/grafana/provisioning")
        .unwrap_or_else(|| panic!("grafana must mount ops/compose/grafana/provisioning"));
    assert_eq!(prov, "/etc/grafana/provisioning");
    let mut has_datasource = false;
    let mut dashboards_loaded = false;
    for f in yaml_files("ops/compose/grafana") {
        let doc = parse_yaml(&f);
        for ds in seq_at(&doc, &["datasources"]) {
            if str_at(ds, &["type"]) == Some("prometheus") {
                let url = str_at(ds, &["url"]).unwrap_or_default();
                assert!(url.contains("prometheus:9090"), "{f}: datasource url {url}");
                has_datasource = true;
            }
        }
        for p in seq_at(&doc, &["providers"]) {
            let path = str_at(p, &["options", "path"])
                .unwrap_or_else(|| panic!("{f}: provider without options.path"));
            let host = host_path_of(grafana, path).unwrap_or_else(|| {
                panic!("{f}: dashboards path {path} is not mounted into grafana")
            });
            let jsons: Vec<_> = fs::read_dir(&host)
                .unwrap_or_else(|e| panic!("{}: {e}", host.display()))
                .filter_map(|e| e.ok())
                .filter(|e| e.path().extension().and_then(|x| x.to_str()) == Some("json"))
                .collect();
            assert!(
                !jsons.is_empty(),
                "{f}: no dashboards in {}",
                host.display()
            );
            dashboards_loaded |= host.ends_with("ops/dashboards");
        }
    }
    assert!(
        has_datasource,
        "ops/compose/grafana: no Prometheus datasource"
    );
    assert!(
        dashboards_loaded,
        "ops/compose/grafana: no provider for ops/dashboards"
    );

    // OpenTelemetry collector: OTLP over HTTP on 4318, traces to the debug (or logging) exporter.
    let otel_svc = service(&compose, "otel-collector");
    let otel_cfg = "ops/compose/otel-collector.yaml";
    let target = mount_target_of(otel_svc, otel_cfg)
        .unwrap_or_else(|| panic!("otel-collector must mount {otel_cfg}"));
    let cmd: Vec<&str> = seq_at(otel_svc, &["command"])
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        cmd.iter()
            .any(|c| c.ends_with(&format!("={target}")) || *c == target),
        "otel-collector: command must load {target}: {cmd:?}"
    );
    let otel = parse_yaml(otel_cfg);
    let endpoint = str_at(
        &otel,
        &["receivers", "otlp", "protocols", "http", "endpoint"],
    )
    .unwrap_or_else(|| panic!("{otel_cfg}: no otlp http receiver"));
    assert!(
        endpoint.ends_with(":4318"),
        "{otel_cfg}: otlp http endpoint {endpoint}"
    );
    let exporters: Vec<&str> = seq_at(&otel, &["service", "pipelines", "traces", "exporters"])
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        exporters.iter().any(|e| *e == "debug" || *e == "logging"),
        "{otel_cfg}: traces must go to the debug/logging exporter: {exporters:?}"
    );
}

#[test]
fn dockerfile_ships_every_binary_and_example_config() {
    let text = read(DOCKERFILE);
    for bin in [
        "reflex-router",
        "reflex-enricher",
        "reflex-actor",
        "reflex-reprocessor",
        "reflexctl",
        "reflex-registry",
    ] {
        assert!(
            text.contains(&format!("target/release/{bin}")),
            "{DOCKERFILE}: does not copy {bin}"
        );
    }
    let froms: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("FROM "))
        .collect();
    assert!(
        froms.len() >= 2,
        "{DOCKERFILE}: must be multi-stage: {froms:?}"
    );
    for from in &froms {
        let image = from.split_whitespace().next().unwrap_or_default();
        assert!(
            image_pinned(image),
            "{DOCKERFILE}: base image {image} is not pinned"
        );
    }
    assert!(
        froms
            .last()
            .is_some_and(|f| f.starts_with("debian:bookworm-slim")),
        "{DOCKERFILE}: runtime stage should be debian:bookworm-slim"
    );
    let user = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("USER "))
        .next_back()
        .unwrap_or_else(|| panic!("{DOCKERFILE}: no USER: the image must not run as root"));
    assert!(
        !user.starts_with("root") && !user.starts_with('0'),
        "{DOCKERFILE}: USER {user}"
    );
    for path in [
        "topics",
        "avro",
        "crates/router/rules",
        "crates/enricher/enricher.example.toml",
        "crates/actor/actor.example.toml",
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with("COPY ") && l.contains(&format!(" {path} "))),
            "{DOCKERFILE}: does not copy {path}"
        );
    }
    for line in text
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let words: Vec<&str> = line.split_whitespace().skip(1).collect();
        for src in &words[..words.len().saturating_sub(1)] {
            assert!(
                root().join(src).exists(),
                "{DOCKERFILE}: COPY source {src} missing"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Kubernetes

/// Every document of every YAML file under ops/deploy/, with its file.
fn manifests() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for f in yaml_files(DEPLOY_DIR) {
        for doc in parse_yaml_docs(&f) {
            out.push((f.clone(), doc));
        }
    }
    out
}

fn is_workload(doc: &Value) -> bool {
    matches!(kind(doc), "Deployment" | "StatefulSet")
}

fn pod_spec(doc: &Value) -> &Value {
    get(doc, &["spec", "template", "spec"])
        .unwrap_or_else(|| panic!("{} {}: no pod template", kind(doc), name(doc)))
}

fn containers(doc: &Value) -> &[Value] {
    seq_at(pod_spec(doc), &["containers"])
}

/// The literal value of an env variable of a container: `env` first, then `envFrom`
/// ConfigMaps defined in the manifests.
fn container_env(
    container: &Value,
    config_maps: &BTreeMap<String, Value>,
    var: &str,
) -> Option<String> {
    for e in seq_at(container, &["env"]) {
        if str_at(e, &["name"]) == Some(var) {
            return get(e, &["value"]).and_then(scalar);
        }
    }
    for from in seq_at(container, &["envFrom"]) {
        if let Some(cm) = str_at(from, &["configMapRef", "name"]) {
            if let Some(v) = config_maps.get(cm).and_then(|cm| get(cm, &["data", var])) {
                return scalar(v);
            }
        }
    }
    None
}

fn config_maps(manifests: &[(String, Value)]) -> BTreeMap<String, Value> {
    manifests
        .iter()
        .filter(|(_, d)| kind(d) == "ConfigMap")
        .map(|(_, d)| (name(d).to_string(), d.clone()))
        .collect()
}

#[test]
fn kustomization_lists_every_manifest() {
    let k = parse_yaml("ops/deploy/kustomization.yaml");
    let resources: BTreeSet<String> = seq_at(&k, &["resources"])
        .iter()
        .filter_map(|r| r.as_str().map(str::to_string))
        .collect();
    for r in &resources {
        assert!(
            root().join(DEPLOY_DIR).join(r).exists(),
            "kustomization.yaml: resource {r} missing"
        );
    }
    for f in yaml_files(DEPLOY_DIR) {
        let rel = f.strip_prefix("ops/deploy/").expect("under ops/deploy");
        if rel != "kustomization.yaml" {
            assert!(
                resources.contains(rel),
                "kustomization.yaml does not list {rel}"
            );
        }
    }
    for worker in WORKERS {
        assert!(
            manifests()
                .iter()
                .any(|(_, d)| is_workload(d) && name(d) == format!("reflex-{worker}")),
            "ops/deploy: no Deployment/StatefulSet reflex-{worker}"
        );
    }
}

#[test]
fn manifests_reference_existing_files_config_maps_and_secret_refs() {
    let manifests = manifests();
    let cms = config_maps(&manifests);
    for (file, doc) in &manifests {
        assert!(
            !(kind(doc) == "Secret"
                && (get(doc, &["data"]).is_some() || get(doc, &["stringData"]).is_some())),
            "{file}: Secret {} embeds values; reference reflex-secrets instead",
            name(doc)
        );
        if kind(doc) == "ConfigMap" {
            // `key=repo/path[,key=repo/path]`: the data key holds that repo file verbatim.
            if let Some(sources) = str_at(doc, &["metadata", "annotations", "reflex.dev/source"]) {
                for pair in sources.split(',') {
                    let (key, path) = pair
                        .trim()
                        .split_once('=')
                        .unwrap_or_else(|| panic!("{file}: bad reflex.dev/source {pair:?}"));
                    let repo_file = root().join(path);
                    assert!(
                        repo_file.is_file(),
                        "{file}: ConfigMap {} copies {path}, which does not exist",
                        name(doc)
                    );
                    let data = str_at(doc, &["data", key]).unwrap_or_else(|| {
                        panic!("{file}: ConfigMap {} has no key {key}", name(doc))
                    });
                    assert_eq!(
                        data,
                        read(path),
                        "{file}: ConfigMap {} key {key} differs from {path}; copy it again",
                        name(doc)
                    );
                }
            }
        }
        if !is_workload(doc) {
            continue;
        }
        let pod = pod_spec(doc);
        let mut volume_keys: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
        for v in seq_at(pod, &["volumes"]) {
            assert!(
                get(v, &["hostPath"]).is_none(),
                "{file}: hostPath volumes are not allowed"
            );
            if let Some(cm) = str_at(v, &["configMap", "name"]) {
                let def = cms.get(cm).unwrap_or_else(|| {
                    panic!("{file}: volume uses ConfigMap {cm}, not defined in ops/deploy")
                });
                let keys: Vec<String> = get(def, &["data"])
                    .and_then(Value::as_mapping)
                    .map(|m| {
                        m.keys()
                            .filter_map(|k| k.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                for item in seq_at(v, &["configMap", "items"]) {
                    let key = str_at(item, &["key"]).unwrap_or_default();
                    assert!(
                        keys.iter().any(|k| k == key),
                        "{file}: ConfigMap {cm} has no key {key}"
                    );
                }
                let vname = str_at(v, &["name"]).unwrap_or_default().to_string();
                volume_keys.insert(vname, (cm.to_string(), keys));
            }
        }
        for c in containers(doc) {
            for from in seq_at(c, &["envFrom"]) {
                if let Some(cm) = str_at(from, &["configMapRef", "name"]) {
                    assert!(
                        cms.contains_key(cm),
                        "{file}: envFrom ConfigMap {cm} not defined"
                    );
                }
                assert!(
                    get(from, &["secretRef"]).is_none()
                        || str_at(from, &["secretRef", "name"]) == Some("reflex-secrets"),
                    "{file}: envFrom secretRef must be reflex-secrets"
                );
            }
            for e in seq_at(c, &["env"]) {
                let var = str_at(e, &["name"]).unwrap_or_default();
                if let Some(sk) = get(e, &["valueFrom", "secretKeyRef"]) {
                    assert_eq!(
                        str_at(sk, &["name"]),
                        Some("reflex-secrets"),
                        "{file}: {var}"
                    );
                }
                let upper = var.to_ascii_uppercase();
                if upper.contains("PASSWORD") || upper.contains("SECRET") {
                    let literal = str_at(e, &["value"]).unwrap_or_default();
                    assert!(
                        literal.is_empty(),
                        "{file}: {var} must come from a secretKeyRef, not a literal value"
                    );
                }
            }
            // Files the worker is told to read must be mounted ConfigMap keys.
            let mounts: Vec<(String, String)> = seq_at(c, &["volumeMounts"])
                .iter()
                .map(|m| {
                    (
                        str_at(m, &["name"]).unwrap_or_default().to_string(),
                        str_at(m, &["mountPath"]).unwrap_or_default().to_string(),
                    )
                })
                .collect();
            let mut files: Vec<String> = [
                "REFLEX_ROUTER__RULES_FILE",
                "REFLEX_ENRICHER__BINDINGS_FILE",
            ]
            .iter()
            .filter_map(|v| container_env(c, &cms, v))
            .collect();
            let args: Vec<&str> = seq_at(c, &["command"])
                .iter()
                .chain(seq_at(c, &["args"]))
                .filter_map(Value::as_str)
                .collect();
            if let Some(i) = args.iter().position(|a| *a == "--config") {
                files.push(args.get(i + 1).expect("--config FILE").to_string());
            }
            for path in files {
                let found = mounts.iter().any(|(vol, mount)| {
                    let Some(rest) =
                        path.strip_prefix(&format!("{}/", mount.trim_end_matches('/')))
                    else {
                        return false;
                    };
                    volume_keys
                        .get(vol)
                        .is_some_and(|(_, keys)| keys.iter().any(|k| k == rest))
                });
                assert!(
                    found,
                    "{file}: {} reads {path}, which no mounted ConfigMap key provides",
                    name(doc)
                );
            }
        }
    }
}

#[test]
fn manifest_images_are_pinned() {
    for (file, doc) in manifests() {
        if !is_workload(&doc) {
            continue;
        }
        let pod = pod_spec(&doc);
        for c in seq_at(pod, &["containers"])
            .iter()
            .chain(seq_at(pod, &["initContainers"]))
        {
            let image = str_at(c, &["image"]).unwrap_or_default();
            assert!(
                image_pinned(image),
                "{file}: image {image:?} needs an explicit tag (not latest)"
            );
        }
    }
}

#[test]
fn workloads_have_probes_resources_and_a_grace_period_longer_than_the_drain() {
    let manifests = manifests();
    let cms = config_maps(&manifests);
    let partitions = topic_partitions();
    let mut seen = 0;
    for (file, doc) in &manifests {
        if !is_workload(doc) {
            continue;
        }
        seen += 1;
        let wl = format!("{file}: {} {}", kind(doc), name(doc));
        let pod = pod_spec(doc);
        let annotations = get(doc, &["spec", "template", "metadata", "annotations"]);
        let scrape_annotation = annotations
            .and_then(|a| a.get("prometheus.io/scrape"))
            .and_then(scalar)
            .is_some_and(|s| s == "true");
        let mut metrics_port = false;
        let mut max_drain = 0;
        for c in containers(doc) {
            let cname = str_at(c, &["name"]).unwrap_or_default();
            let ports: BTreeMap<String, u64> = seq_at(c, &["ports"])
                .iter()
                .filter_map(|p| {
                    Some((
                        str_at(p, &["name"])?.to_string(),
                        as_u64(get(p, &["containerPort"])?)?,
                    ))
                })
                .collect();
            metrics_port |= ports.get("metrics") == Some(&HTTP_PORT);
            let listen = container_env(c, &cms, "REFLEX_RUNTIME__HTTP_LISTEN").unwrap_or_default();
            assert_eq!(
                listen,
                format!("0.0.0.0:{HTTP_PORT}"),
                "{wl}/{cname}: REFLEX_RUNTIME__HTTP_LISTEN"
            );
            for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
                let http = get(c, &[probe, "httpGet"])
                    .unwrap_or_else(|| panic!("{wl}/{cname}: no {probe} httpGet"));
                assert_eq!(
                    str_at(http, &["path"]),
                    Some(path),
                    "{wl}/{cname}: {probe} path"
                );
                let port =
                    get(http, &["port"]).unwrap_or_else(|| panic!("{wl}/{cname}: {probe} port"));
                let port =
                    as_u64(port).or_else(|| port.as_str().and_then(|n| ports.get(n).copied()));
                assert_eq!(
                    port,
                    Some(HTTP_PORT),
                    "{wl}/{cname}: {probe} must probe port {HTTP_PORT}"
                );
            }
            for res in ["cpu", "memory"] {
                assert!(
                    get(c, &["resources", "requests", res]).is_some(),
                    "{wl}/{cname}: no resources.requests.{res}"
                );
            }
            assert!(
                get(c, &["resources", "limits", "memory"]).is_some(),
                "{wl}/{cname}: no resources.limits.memory"
            );
            let drain = container_env(c, &cms, "REFLEX_RUNTIME__DRAIN_GRACE")
                .map(|d| duration_ms(&d))
                .unwrap_or(DEFAULT_DRAIN_MS);
            let session = container_env(c, &cms, "REFLEX_KAFKA__SESSION_TIMEOUT")
                .map(|d| duration_ms(&d))
                .unwrap_or(DEFAULT_SESSION_TIMEOUT_MS);
            assert!(
                drain < session,
                "{wl}/{cname}: drain {drain} ms must stay below session timeout {session} ms"
            );
            max_drain = max_drain.max(drain);
            if let Some(instance) = container_env(c, &cms, "REFLEX_KAFKA__GROUP_INSTANCE_ID") {
                assert!(
                    kind(doc) == "StatefulSet",
                    "{wl}: a literal group_instance_id ({instance}) would be shared by replicas"
                );
            }
            if kind(doc) == "Deployment" {
                let from_pod_name = seq_at(c, &["env"]).iter().any(|e| {
                    str_at(e, &["name"]) == Some("REFLEX_KAFKA__GROUP_INSTANCE_ID")
                        && get(e, &["valueFrom", "fieldRef"]).is_some()
                });
                assert!(
                    !from_pod_name,
                    "{wl}: static membership from Deployment pod names (new each rollout) leaves stale members; use a StatefulSet"
                );
            }
            if let Some(worker) = container_worker(c) {
                let max = worker_max_replicas(worker, &partitions);
                if let Some(replicas) = get(doc, &["spec", "replicas"]).and_then(as_u64) {
                    assert!(
                        replicas <= max,
                        "{wl}: {replicas} replicas but its input topics have {max} partitions"
                    );
                }
            }
        }
        assert!(
            scrape_annotation || metrics_port,
            "{wl}: needs a prometheus.io/scrape annotation or a port named metrics"
        );
        let grace = get(pod, &["terminationGracePeriodSeconds"])
            .and_then(as_u64)
            .unwrap_or_else(|| panic!("{wl}: no terminationGracePeriodSeconds"));
        assert!(
            grace * 1000 > max_drain,
            "{wl}: terminationGracePeriodSeconds {grace} s must exceed the drain grace {max_drain} ms"
        );
        // A PodDisruptionBudget selects this workload's pods.
        let labels = get(doc, &["spec", "selector", "matchLabels"])
            .cloned()
            .unwrap_or(Value::Null);
        assert!(
            manifests
                .iter()
                .any(|(_, d)| kind(d) == "PodDisruptionBudget"
                    && get(d, &["spec", "selector", "matchLabels"]) == Some(&labels)),
            "{wl}: no PodDisruptionBudget selecting {labels:?}"
        );
    }
    assert!(
        seen >= WORKERS.len(),
        "expected a workload per worker, found {seen}"
    );
}

#[test]
fn parking_workers_share_state_in_redis_and_the_reprocessor_reads_their_dead_letters() {
    // The helper reads the real defaults: the reprocessor parks nothing, the others do.
    assert!(!parks_keys("reprocessor", None));
    assert!(parks_keys("router", None));
    assert!(!parks_keys("router", Some("false")));

    let manifests = manifests();
    let cms = config_maps(&manifests);
    let runs = |worker: &str| {
        manifests.iter().any(|(_, d)| {
            is_workload(d)
                && containers(d)
                    .iter()
                    .any(|c| container_worker(c) == Some(worker))
        })
    };
    assert!(
        runs("reprocessor"),
        "ops/deploy: no workload runs reflex-reprocessor"
    );
    let reprocessed: BTreeSet<String> = worker_input_topics("reprocessor").into_iter().collect();
    let mut parking = 0;
    for (file, doc) in manifests.iter().filter(|(_, d)| is_workload(d)) {
        let wl = format!("{file}: {} {}", kind(doc), name(doc));
        let replicas = get(doc, &["spec", "replicas"])
            .and_then(as_u64)
            .unwrap_or(1);
        for c in containers(doc) {
            let Some(worker) = container_worker(c) else {
                continue;
            };
            let park = container_env(c, &cms, "REFLEX_RUNTIME__PARK_KEYS");
            if !parks_keys(worker, park.as_deref()) {
                continue;
            }
            parking += 1;
            if replicas > 1 {
                // A literal Redis URL, or one from the Secret (credentials in the URL).
                let literal = container_env(c, &cms, "REFLEX_RUNTIME__STATE_URL");
                let from_secret = seq_at(c, &["env"]).iter().any(|e| {
                    str_at(e, &["name"]) == Some("REFLEX_RUNTIME__STATE_URL")
                        && get(e, &["valueFrom", "secretKeyRef"]).is_some()
                });
                assert!(
                    from_secret || literal.as_deref().is_some_and(is_redis_url),
                    "{wl}: {replicas} replicas park keys (runtime.park_keys) but REFLEX_RUNTIME__STATE_URL is {literal:?}: \
                     set it to the fleet's Redis so parked keys survive a rebalance"
                );
            }
            for topic in worker_input_topics(worker) {
                let dlq = format!("{topic}.dlq");
                assert!(
                    reprocessed.contains(&dlq),
                    "{wl}: {worker} parks keys of {topic}, but the reprocessor does not read {dlq} \
                     (crates/reprocessor/src/defaults.toml kafka.input_topics): they would never come back"
                );
            }
        }
    }
    assert!(
        parking >= 3,
        "expected router, enricher and actor to park keys, found {parking} parking workloads"
    );
}

#[test]
fn keda_max_replicas_do_not_exceed_partitions() {
    let partitions = topic_partitions();
    let manifests = manifests();
    let mut scaled = Vec::new();
    for doc in parse_yaml_docs(KEDA) {
        scaled.push((KEDA.to_string(), doc));
    }
    scaled.extend(manifests.iter().cloned());
    let mut checked = 0;
    for (file, doc) in scaled.iter().filter(|(_, d)| kind(d) == "ScaledObject") {
        let max = get(doc, &["spec", "maxReplicaCount"])
            .and_then(as_u64)
            .unwrap_or_else(|| panic!("{file}: ScaledObject {} has no maxReplicaCount", name(doc)));
        let min = get(doc, &["spec", "minReplicaCount"])
            .and_then(as_u64)
            .unwrap_or(0);
        assert!(
            min <= max,
            "{file}: minReplicaCount {min} > maxReplicaCount {max}"
        );
        // Topics it scales on: a kafka trigger's `topic`, else the input topics of the worker
        // its target runs.
        let mut topics: Vec<String> = seq_at(doc, &["spec", "triggers"])
            .iter()
            .filter_map(|t| str_at(t, &["metadata", "topic"]).map(str::to_string))
            .collect();
        let target = str_at(doc, &["spec", "scaleTargetRef", "name"]).unwrap_or_default();
        let target_kind = str_at(doc, &["spec", "scaleTargetRef", "kind"]).unwrap_or("Deployment");
        let workload = manifests
            .iter()
            .find(|(_, d)| kind(d) == target_kind && name(d) == target)
            .unwrap_or_else(|| {
                panic!("{file}: scaleTargetRef {target_kind} {target} is not in ops/deploy")
            });
        for c in containers(&workload.1) {
            if let Some(worker) = container_worker(c) {
                topics.extend(worker_input_topics(worker));
            }
        }
        assert!(
            !topics.is_empty(),
            "{file}: cannot tell which topic {} scales on",
            name(doc)
        );
        for topic in topics {
            let p = *partitions
                .get(&topic)
                .unwrap_or_else(|| panic!("{file}: topic {topic} is not declared in topics/"));
            assert!(
                max <= p,
                "{file}: maxReplicaCount {max} exceeds the {p} partitions of {topic}"
            );
        }
        checked += 1;
    }
    assert!(checked >= 1, "no ScaledObject found in {KEDA}");
}

#[test]
fn duration_parsing() {
    assert_eq!(duration_ms("30s"), 30_000);
    assert_eq!(duration_ms("1m30s"), 90_000);
    assert_eq!(duration_ms("500ms"), 500);
    assert!(image_pinned("redis:7.4"));
    assert!(image_pinned("localhost:5000/reflex:0.1.0"));
    assert!(!image_pinned("localhost:5000/reflex"));
    assert!(!image_pinned("grafana/grafana:latest"));
    assert!(!image_pinned("grafana/grafana"));
}

// ---------------------------------------------------------------------------------------------
// Secrets and the workers' own loader

/// A container's environment as the pod gets it: `envFrom` ConfigMaps, then `env` in order
/// with `$(VAR)` expanded from the variables before it. A Secret ref becomes a stand-in value
/// (`secret:<key>`), a field ref a stand-in too. Also returns the names that came from Secrets.
fn render_pod_env(
    container: &Value,
    config_maps: &BTreeMap<String, Value>,
) -> (BTreeMap<String, String>, BTreeSet<String>) {
    let mut env = BTreeMap::new();
    let mut from_secret = BTreeSet::new();
    for from in seq_at(container, &["envFrom"]) {
        if let Some(data) = str_at(from, &["configMapRef", "name"])
            .and_then(|cm| config_maps.get(cm))
            .and_then(|cm| get(cm, &["data"]))
            .and_then(Value::as_mapping)
        {
            for (k, v) in data {
                env.insert(
                    k.as_str().unwrap_or_default().to_string(),
                    scalar(v).unwrap_or_default(),
                );
            }
        }
    }
    for e in seq_at(container, &["env"]) {
        let var = str_at(e, &["name"]).unwrap_or_default().to_string();
        let value = if let Some(key) = str_at(e, &["valueFrom", "secretKeyRef", "key"]) {
            from_secret.insert(var.clone());
            format!("secret:{key}")
        } else if get(e, &["valueFrom"]).is_some() {
            "from-the-pod".to_string()
        } else {
            let mut v = get(e, &["value"]).and_then(scalar).unwrap_or_default();
            for (name, value) in &env {
                v = v.replace(&format!("$({name})"), value);
            }
            v
        };
        env.insert(var, value);
    }
    (env, from_secret)
}

/// Mounted Secret volumes of a pod: (mount path, Secret name).
fn secret_mounts(doc: &Value, container: &Value) -> Vec<(String, String)> {
    let secrets: BTreeMap<&str, &str> = seq_at(pod_spec(doc), &["volumes"])
        .iter()
        .filter_map(|v| Some((str_at(v, &["name"])?, str_at(v, &["secret", "secretName"])?)))
        .collect();
    seq_at(container, &["volumeMounts"])
        .iter()
        .filter_map(|m| {
            let secret = secrets.get(str_at(m, &["name"])?)?;
            Some((str_at(m, &["mountPath"])?.to_string(), secret.to_string()))
        })
        .collect()
}

/// The content of the mounted ConfigMap key behind `path` in a pod, if any.
fn mounted_config_file(
    doc: &Value,
    container: &Value,
    config_maps: &BTreeMap<String, Value>,
    path: &str,
) -> Option<String> {
    for m in seq_at(container, &["volumeMounts"]) {
        let mount = str_at(m, &["mountPath"])?.trim_end_matches('/');
        let Some(key) = path.strip_prefix(&format!("{mount}/")) else {
            continue;
        };
        let vol = str_at(m, &["name"])?;
        let cm = seq_at(pod_spec(doc), &["volumes"])
            .iter()
            .find(|v| str_at(v, &["name"]) == Some(vol))
            .and_then(|v| str_at(v, &["configMap", "name"]))?;
        return config_maps
            .get(cm)
            .and_then(|cm| str_at(cm, &["data", key]))
            .map(str::to_string);
    }
    None
}

/// Loads a worker's configuration with the worker's own loader from `env` (and `config`, the
/// text of its `--config` file): what the worker would do before it talks to anything.
fn load_worker(
    worker: &str,
    config: Option<&str>,
    env: &BTreeMap<String, String>,
) -> Result<reflex_runtime::KafkaSettings, String> {
    let dir = std::env::temp_dir().join(format!("reflex-deploy-{}-{worker}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let file = config.map(|text| {
        let path = dir.join("config.toml");
        fs::write(&path, text).unwrap();
        path
    });
    let vars: Vec<(String, String)> = env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let file = file.as_deref();
    let kafka = match worker {
        "router" => reflex_router::RouterConfig::load_with(file, vars).map(|c| c.kafka),
        "enricher" => reflex_enricher::EnricherConfig::load_with(file, vars).map(|c| c.kafka),
        "actor" => reflex_actor::ActorConfig::load_with(file, vars).map(|c| c.kafka),
        "reprocessor" => {
            reflex_reprocessor::ReprocessorConfig::load_with(file, vars).map(|c| c.kafka)
        }
        other => panic!("unknown worker {other}"),
    };
    fs::remove_dir_all(&dir).ok();
    kafka.map_err(|e| e.to_string())
}

/// Every worker's rendered environment loads, and its Kafka secrets come the supported way.
fn check_worker_secrets(
    what: &str,
    worker: &str,
    config: Option<&str>,
    mut env: BTreeMap<String, String>,
    from_secret: &BTreeSet<String>,
    secret_dirs: &[(String, String)],
) {
    let stand_ins =
        std::env::temp_dir().join(format!("reflex-deploy-secrets-{}", std::process::id()));
    for (var, value) in env.clone() {
        // Nothing secret inline in the librdkafka property tables.
        if var.starts_with("REFLEX_KAFKA__") && var.ends_with("PROPERTIES") {
            let table: toml::Table = toml::from_str(&format!("p = {value}"))
                .unwrap_or_else(|e| panic!("{what}: {var} is not an inline table: {e}"));
            for key in table["p"].as_table().into_iter().flat_map(|t| t.keys()) {
                assert!(
                    !reflex_core::secrets::KAFKA_SECRET_PROPERTIES.contains(&key.as_str()),
                    "{what}: {var} sets the secret `{key}` inline; use REFLEX_KAFKA_SECRET_* (a secretKeyRef) or ..._FILE (a mounted Secret)"
                );
            }
        }
        let Some(rest) = var.strip_prefix(reflex_core::secrets::KAFKA_SECRET_ENV_PREFIX) else {
            continue;
        };
        if rest.ends_with("_FILE") {
            let under = secret_dirs
                .iter()
                .find(|(mount, _)| value.starts_with(&format!("{}/", mount.trim_end_matches('/'))));
            assert!(
                under.is_some_and(|(_, secret)| secret == "reflex-secrets"),
                "{what}: {var} = {value} is not in a mounted reflex-secrets volume"
            );
            // The file as the pod would see it, with a stand-in value.
            fs::create_dir_all(&stand_ins).unwrap();
            let local = stand_ins.join(format!("{worker}-{rest}"));
            fs::write(&local, format!("file:{value}\n")).unwrap();
            env.insert(var.clone(), local.display().to_string());
        } else {
            assert!(
                from_secret.contains(&var),
                "{what}: {var} must come from a secretKeyRef (or use {var}_FILE with a mounted Secret), not a literal"
            );
        }
    }
    let kafka = load_worker(worker, config, &env).unwrap_or_else(|e| {
        panic!("{what}: the {worker} does not start with this environment: {e}")
    });
    // A SASL client gets its password, and only from where the environment said.
    let protocol = kafka
        .properties
        .get("security.protocol")
        .cloned()
        .unwrap_or_default();
    if protocol.starts_with("SASL") {
        let password = kafka.properties.get("sasl.password").unwrap_or_else(|| {
            panic!("{what}: security.protocol {protocol} but no REFLEX_KAFKA_SECRET_SASL_PASSWORD[_FILE]")
        });
        assert!(
            password.starts_with("secret:") || password.starts_with("file:"),
            "{what}: sasl.password did not come from a Secret: {password:?}"
        );
    }
}

#[test]
fn every_worker_resolves_its_kafka_secrets_the_supported_way() {
    let manifests = manifests();
    let cms = config_maps(&manifests);
    let mut checked = BTreeSet::new();
    for (file, doc) in &manifests {
        if !is_workload(doc) {
            continue;
        }
        for c in containers(doc) {
            let Some(worker) = container_worker(c) else {
                continue;
            };
            let (env, from_secret) = render_pod_env(c, &cms);
            let args: Vec<&str> = seq_at(c, &["command"])
                .iter()
                .chain(seq_at(c, &["args"]))
                .filter_map(Value::as_str)
                .collect();
            let config = args.iter().position(|a| *a == "--config").map(|i| {
                let path = args[i + 1];
                mounted_config_file(doc, c, &cms, path).unwrap_or_else(|| {
                    panic!("{file}: --config {path} is not a mounted ConfigMap key")
                })
            });
            let secret_dirs = secret_mounts(doc, c);
            check_worker_secrets(
                file,
                worker,
                config.as_deref(),
                env,
                &from_secret,
                &secret_dirs,
            );
            checked.insert(format!("k8s {worker}"));
        }
    }
    let compose = compose();
    for (name, svc) in services(&compose) {
        let Some(worker) = WORKERS.iter().find(|w| **w == name) else {
            continue;
        };
        let env = compose_env(svc);
        check_worker_secrets(
            &format!("{COMPOSE} {name}"),
            worker,
            None,
            env,
            &BTreeSet::new(),
            &[],
        );
        checked.insert(format!("compose {worker}"));
    }
    for worker in WORKERS {
        for place in ["k8s", "compose"] {
            assert!(
                checked.contains(&format!("{place} {worker}")),
                "no {place} {worker} was checked"
            );
        }
    }
}
