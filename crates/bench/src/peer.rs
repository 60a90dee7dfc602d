//! Peers: other stream processors doing the router's benchmark job, run by `reflex-bench --peer`
//! in the same run, on the same broker, as the router and the passthrough baseline.
//!
//! `kafka-streams`: `benches/kafka-streams-peer`, a Kafka Streams 4.4 application (Java 17,
//! Maven). It decodes the Confluent-framed Avro value (writer schema from the registry's
//! `GET /schemas/ids/{id}`), evaluates the benchmark rule and forwards the original key, value
//! and headers, at-least-once, with the throughput settings its README lists. The jar is built
//! with `mvn -q -B package` when it is missing or older than the project's pom or sources (as
//! `tests/java_producer_e2e.rs` builds the Java producer), so a warm run starts it directly.

use std::path::{Path, PathBuf};
use std::process::Command;

use clap::ValueEnum;

/// A peer the benchmark can run next to the router.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Peer {
    /// A Kafka Streams 4.4 application (`benches/kafka-streams-peer`, Java 17 + Maven).
    KafkaStreams,
}

/// The Maven project of the Kafka Streams peer (this source tree's).
fn project_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../benches/kafka-streams-peer")
}

/// `benches/kafka-streams-peer/target/reflex-kafka-streams-peer.jar`, built first when it is
/// missing or older than the pom or the sources.
pub fn kafka_streams_jar() -> anyhow::Result<PathBuf> {
    let project = project_dir();
    let jar = "reflex-kafka-streams-peer.jar";
    if !project.join("target").join(jar).exists() {
        eprintln!(
            "building the Kafka Streams peer: mvn -q -B package in {}",
            project.display()
        );
    }
    reflex_testkit::maven_jar(&project, jar)
        .map_err(|e| anyhow::anyhow!("--peer kafka-streams: {e}"))
}

/// Where the peer reads, writes and keeps its (empty) state.
pub struct PeerTopics<'a> {
    pub bootstrap: &'a str,
    pub registry_url: &'a str,
    pub input: &'a str,
    pub output: &'a str,
    pub application_id: &'a str,
    pub state_dir: &'a Path,
}

/// The command that runs the Kafka Streams peer: `java` with a heap bound (`-Xmx`, so its RSS
/// does not follow the machine's RAM: the JVM's default is a quarter of it), then
/// `--config key=value` overrides from `overrides`.
pub fn kafka_streams_command(
    jar: &Path,
    t: &PeerTopics<'_>,
    heap: &str,
    overrides: &[String],
) -> Command {
    let mut c = Command::new("java");
    c.arg(format!("-Xmx{heap}"))
        .arg("-jar")
        .arg(jar)
        .args(["--bootstrap", t.bootstrap])
        .args(["--registry", t.registry_url])
        .args(["--input", t.input])
        .args(["--output", t.output])
        .args(["--application-id", t.application_id])
        .arg("--state-dir")
        .arg(t.state_dir);
    for o in overrides {
        c.args(["--config", o]);
    }
    c
}
