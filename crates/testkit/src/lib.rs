//! Helpers for tests that talk to the real local stack started by `scripts/test` (a
//! Kafka-protocol broker, `redis-server` and the schema registry on 127.0.0.1 ports).
//!
//! Tests use unique topic and group names ([`unique`]) so they can run in parallel against one
//! stack. Child processes are wrapped in [`ChildGuard`] so they die with the test, even on panic.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::Message;
use reflex_core::headers::ce;

/// Where the running test stack listens.
#[derive(Debug, Clone)]
pub struct Stack {
    pub bootstrap: String,
    pub registry_url: String,
    pub redis_url: String,
}

/// The stack `scripts/test` started, from `REFLEX_TEST_BOOTSTRAP`, `REFLEX_TEST_REGISTRY_URL`
/// and `REFLEX_TEST_REDIS_URL`. Panics with the fix when they are missing: these tests need real
/// components and must not pass without them.
pub fn stack() -> Stack {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!(
                "{name} is not set: these tests need the real local stack. Run `scripts/test` \
                 (it installs and starts a broker, Redis and the registry), or export \
                 REFLEX_TEST_BOOTSTRAP, REFLEX_TEST_REGISTRY_URL and REFLEX_TEST_REDIS_URL \
                 for a stack of your own"
            )
        })
    };
    Stack {
        bootstrap: var("REFLEX_TEST_BOOTSTRAP"),
        registry_url: var("REFLEX_TEST_REGISTRY_URL"),
        redis_url: var("REFLEX_TEST_REDIS_URL"),
    }
}

/// A name unique to this process and call: `<prefix>-<pid>-<time>-<n>`.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() % 1_000_000_000)
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Base client config for tests (loopback broker, short session timeout).
pub fn client_config(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("session.timeout.ms", "6000")
        .set("log_level", "3");
    config
}

/// Creates topics and waits until their metadata is visible.
pub async fn create_topics(bootstrap: &str, topics: &[(&str, i32)]) {
    let admin: AdminClient<DefaultClientContext> =
        client_config(bootstrap).create().expect("admin client");
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(1)))
        .collect();
    let results = admin
        .create_topics(&new, &AdminOptions::new())
        .await
        .expect("create_topics request");
    for result in results {
        if let Err((topic, code)) = result {
            assert_eq!(
                code,
                rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists,
                "create topic {topic}"
            );
        }
    }
    let consumer: BaseConsumer = client_config(bootstrap).create().expect("consumer");
    for (name, partitions) in topics {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let md = consumer.fetch_metadata(Some(name), Duration::from_secs(5));
            if let Ok(md) = md {
                if md
                    .topics()
                    .first()
                    .is_some_and(|t| t.partitions().len() == *partitions as usize)
                {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "topic {name} never appeared");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// An idempotent producer with the Java-compatible partitioner the workers use.
pub fn producer(bootstrap: &str) -> FutureProducer {
    client_config(bootstrap)
        .set("enable.idempotence", "true")
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "5")
        .create()
        .expect("producer")
}

/// Required CloudEvents headers plus a correlation id.
pub fn ce_headers(id: &str, event_type: &str, source: &str) -> OwnedHeaders {
    OwnedHeaders::new()
        .insert(Header {
            key: ce::SPECVERSION,
            value: Some("1.0"),
        })
        .insert(Header {
            key: ce::ID,
            value: Some(id),
        })
        .insert(Header {
            key: ce::SOURCE,
            value: Some(source),
        })
        .insert(Header {
            key: ce::TYPE,
            value: Some(event_type),
        })
        .insert(Header {
            key: ce::CORRELATION_ID,
            value: Some(id),
        })
        .insert(Header {
            key: ce::CONTENT_TYPE,
            value: Some(ce::AVRO_CONTENT_TYPE),
        })
}

/// Produces one record and waits for the broker's acknowledgement; returns (partition, offset).
/// Hands `record` to the producer without waiting for its acknowledgement (retrying while
/// librdkafka's queue is full): for tests that publish many records fast, then await them.
pub async fn enqueue<K, P>(
    producer: &FutureProducer,
    mut record: FutureRecord<'_, K, P>,
) -> rdkafka::producer::DeliveryFuture
where
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
{
    loop {
        match producer.send_result(record) {
            Ok(delivery) => return delivery,
            Err((
                rdkafka::error::KafkaError::MessageProduction(
                    rdkafka::types::RDKafkaErrorCode::QueueFull,
                ),
                back,
            )) => {
                record = back;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err((e, _)) => panic!("produce: {e}"),
        }
    }
}

pub async fn produce(
    producer: &FutureProducer,
    topic: &str,
    key: Option<&str>,
    value: &[u8],
    headers: OwnedHeaders,
) -> (i32, i64) {
    let mut record = FutureRecord::to(topic).payload(value).headers(headers);
    if let Some(key) = key {
        record = record.key(key);
    }
    let delivery = producer
        .send(record, Timeout::After(Duration::from_secs(30)))
        .await
        .unwrap_or_else(|(e, _)| panic!("produce to {topic}: {e}"));
    (delivery.partition, delivery.offset)
}

/// Reads `topic` from the beginning (no group commits) until `expected` records arrived or
/// `timeout` passed, then keeps reading for `settle` to catch extra records.
pub async fn read_topic(
    bootstrap: &str,
    topic: &str,
    expected: usize,
    timeout: Duration,
    settle: Duration,
) -> Vec<OwnedMessage> {
    read_topic_until(bootstrap, topic, timeout, settle, |got| {
        got.len() >= expected
    })
    .await
}

/// Reads `topic` from the beginning (no group commits) until `done(records so far)` holds or
/// `timeout` passed, then keeps reading for `settle` to catch extra records.
pub async fn read_topic_until(
    bootstrap: &str,
    topic: &str,
    timeout: Duration,
    settle: Duration,
    mut done: impl FnMut(&[OwnedMessage]) -> bool,
) -> Vec<OwnedMessage> {
    let consumer: StreamConsumer = client_config(bootstrap)
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("reader consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut out = Vec::new();
    let deadline = Instant::now() + timeout;
    let mut settle_until: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let until = match settle_until {
            Some(s) => s,
            None if done(&out) => {
                let s = now + settle;
                settle_until = Some(s);
                s
            }
            None => deadline,
        };
        if now >= until {
            break;
        }
        match tokio::time::timeout(until - now, consumer.recv()).await {
            Ok(Ok(m)) => out.push(m.detach()),
            Ok(Err(e)) => panic!("reading {topic}: {e}"),
            Err(_) => break,
        }
    }
    out
}

/// The group's committed offsets for `topic` partitions `0..partitions` (-1 when none).
pub fn committed_offsets(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let consumer: BaseConsumer = client_config(bootstrap)
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    (0..partitions)
        .map(
            |p| match committed.find_partition(topic, p).map(|e| e.offset()) {
                Some(rdkafka::Offset::Offset(o)) => o,
                _ => -1,
            },
        )
        .collect()
}

/// A header value of a consumed record as UTF-8.
pub fn header_str<'a>(message: &'a OwnedMessage, key: &str) -> Option<&'a str> {
    use rdkafka::message::Headers;
    let headers = message.headers()?;
    headers
        .iter()
        .filter(|h| h.key == key)
        .last()
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}

/// A workspace binary built by `cargo build --workspace --bins` (the test command does that first).
pub fn workspace_bin(name: &str) -> PathBuf {
    let mut dir = std::env::current_exe().expect("current exe");
    dir.pop();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workers first with `cargo build --workspace --bins` \
         (`scripts/test` does)",
        path.display()
    );
    path
}

/// A child process killed (SIGKILL) and reaped when dropped.
pub struct ChildGuard {
    pub child: Child,
    pub name: String,
}

impl ChildGuard {
    /// Spawns `command` with stdout/stderr inherited so its logs show in the test output.
    pub fn spawn(name: &str, command: &mut Command) -> ChildGuard {
        let child = command
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        ChildGuard {
            child,
            name: name.to_string(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (e.g. `"TERM"`, `"KILL"`) with `kill(1)`.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {}", self.name);
    }

    /// Its exit status if it has exited, without waiting.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Waits for the process to exit; returns its exit code (None when killed by a signal).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {timeout:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A repository script (`scripts/demo`, `scripts/faults`) run as a user runs it, from the
/// repository root with nothing configured: the test stack's addresses and the pack choice are
/// removed from its environment, so it brings up a stack of its own.
pub fn unconfigured_script(script: &str) -> Command {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut command = Command::new(root.join(script));
    command.current_dir(&root);
    for var in [
        "REFLEX_TEST_BOOTSTRAP",
        "REFLEX_TEST_REGISTRY_URL",
        "REFLEX_TEST_REDIS_URL",
        "REFLEX_PACK",
    ] {
        command.env_remove(var);
    }
    command
}

/// The newest modification time of `path` and everything under it.
fn newest_mtime(path: &Path) -> SystemTime {
    let own = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or(UNIX_EPOCH);
    match std::fs::read_dir(path) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|e| newest_mtime(&e.path()))
            .fold(own, SystemTime::max),
        Err(_) => own,
    }
}

/// `<project>/target/<jar>` of a Maven project, built with `mvn -q -B package` first when it is
/// missing or older than the project's `pom.xml` or `src/` (so a warm run starts the jar
/// directly). The error says what failed: Maven missing, or its output.
pub fn maven_jar(project: &Path, jar: &str) -> Result<PathBuf, String> {
    let pom = project.join("pom.xml");
    if !pom.exists() {
        return Err(format!("{} is missing", pom.display()));
    }
    let jar = project.join("target").join(jar);
    let built = std::fs::metadata(&jar).and_then(|m| m.modified()).ok();
    let sources = newest_mtime(&pom).max(newest_mtime(&project.join("src")));
    if built.is_some_and(|built| built >= sources) {
        return Ok(jar);
    }
    let output = Command::new("mvn")
        .args(["-q", "-B", "-f"])
        .arg(&pom)
        .arg("package")
        .output()
        .map_err(|e| {
            format!(
                "run mvn: {e} (needs Maven and a JDK 17: apt-get install maven \
                 openjdk-17-jdk-headless)"
            )
        })?;
    if !output.status.success() {
        return Err(format!(
            "mvn package {} failed:\n{}\n{}",
            project.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(jar)
}
