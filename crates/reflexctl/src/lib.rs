//! `reflexctl`, the Reflex operator CLI.
//!
//! - `topics apply`: make the broker match the `topics/*.toml` declarations (create, grow
//!   partitions, alter configs; never shrink), printing a diff.
//! - `schemas register` / `schemas check`: register the declared Avro schemas with the Schema
//!   Registry, or check them for compatibility with the subjects' latest versions.
//! - `publish`: encode JSON with a registered Avro schema, frame it in the Confluent wire format
//!   and produce it with CloudEvents binary-mode headers.
//! - `tail`: consume a topic and print each record as one JSON line, value decoded via the
//!   registry.
//! - `dlq inspect`: a dead-letter topic grouped by error class, stage and original topic, for
//!   dead letters written by Reflex, Spring Kafka, Kafka Connect or Kafka Streams.
//! - `dlq replay`: deliver chosen dead letters back to their original topic and partition
//!   (filters, `--dry-run`, rate limit, canary batch, Redis checkpoints, audit records).
//! - `rules test`: shadow mode for a scenario pack: recorded events through its rules,
//!   bindings and actions, in process, with every action stubbed.
//! - `lag`: consumer-group lag in offsets and seconds with a Burrow-style status; `--serve`
//!   turns it into a Prometheus exporter.
//! - `acls apply` / `acls check`: make the cluster's ACLs for Reflex's principals match a
//!   declaration file (`ops/security/kafka-acls.toml`), or compare them.
//! - `approvals list | approve | deny`: actions held for a human decision ([`approvals`]).
//! - `top`: a live terminal view of a running fleet from its workers' `/metrics` or a
//!   Prometheus server ([`top`]: its model and rendering are public for other live views).
//!
//! Exit codes: 0 success, 1 a check failed (incompatible schema, refused topic change), 2 an
//! error (bad input, unreachable broker or registry) or bad usage.

use std::process::ExitCode;
use std::time::Duration;

use clap::builder::NonEmptyStringValueParser;
use clap::{Args, Parser, Subcommand};
use rdkafka::config::ClientConfig;
use reflex_core::registry::{RegistryClient, RegistryError};
use reflex_runtime::KafkaProperties;

pub mod acls;
pub mod approvals;
pub mod dlq;
pub mod lag;
pub mod prom;
pub mod publish;
pub mod replay;
pub mod rules_test;
pub mod schemas;
pub mod tail;
pub mod top;
pub mod topics;

/// How long to wait for broker metadata before calling the broker unreachable.
pub const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "reflexctl",
    version,
    about = "Operate a Reflex fleet: topics, schemas, publishing and tailing CloudEvents on Kafka",
    long_about = "Operate a Reflex fleet: apply topic declarations, register and check Avro \
schemas, publish test events and tail topics with their values decoded.\n\n\
Exit codes: 0 success, 1 a check failed (incompatible schema, refused topic change), \
2 an error or bad usage.\n\n\
Examples:\n  \
reflexctl topics apply --dry-run\n  \
reflexctl schemas register\n  \
echo '{\"cluster\":\"prod\",\"namespace\":\"shop\",\"pod\":\"api-7\",\"reason\":\"CrashLoopBackOff\",\"restart_count\":5}' \\\n    \
| reflexctl publish --topic reflex.events.k8s --type io.k8s.pod.crashloop --key-field pod\n  \
reflexctl tail --topic reflex.events.k8s --from-beginning --max 10 --timeout-ms 5000\n  \
reflexctl lag --group reflex-router\n  \
reflexctl top --metrics 127.0.0.1:9101 --metrics 127.0.0.1:9104\n  \
reflexctl rules test examples/crash-loop --events examples/crash-loop/events.jsonl"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command understands.
#[derive(Debug, Clone, Args)]
pub struct Global {
    /// Kafka bootstrap servers (host:port[,host:port...]).
    #[arg(
        long,
        global = true,
        env = "REFLEX_KAFKA__BOOTSTRAP_SERVERS",
        default_value = "127.0.0.1:9092",
        value_parser = NonEmptyStringValueParser::new()
    )]
    pub bootstrap: String,
    /// Schema Registry base URL (Confluent REST API).
    #[arg(
        long,
        global = true,
        env = "REFLEX_REGISTRY__URL",
        default_value = "http://127.0.0.1:8081",
        value_parser = NonEmptyStringValueParser::new()
    )]
    pub registry: String,
    /// Extra librdkafka property for every Kafka client, `KEY=VALUE` (repeatable), e.g.
    /// `security.protocol=SASL_SSL`; layered over `REFLEX_KAFKA__PROPERTIES` as workers read
    /// it. Secret properties are refused here: set `REFLEX_KAFKA_SECRET_<PROPERTY>` or
    /// `REFLEX_KAFKA_SECRET_<PROPERTY>_FILE`, as for the workers.
    #[arg(long = "kafka-property", global = true, value_name = "KEY=VALUE", value_parser = parse_property)]
    pub kafka_property: Vec<(String, String)>,
    /// The resolved client properties, secrets included: filled once by [`run`] through the
    /// workers' own code path ([`reflex_runtime::config::client_properties`]).
    #[arg(skip)]
    pub kafka_properties: KafkaProperties,
}

fn parse_property(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("`{text}` is not KEY=VALUE")),
    }
}

impl Global {
    /// Base librdkafka config: the bootstrap servers, quiet client logs and the resolved
    /// client properties (TLS/SASL settings and secrets).
    pub fn kafka_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.bootstrap)
            .set("client.id", "reflexctl")
            .set("log_level", "3");
        for (k, v) in &self.kafka_properties {
            config.set(k, v);
        }
        config
    }

    /// A registry client with a CLI-friendly timeout and no negative caching.
    pub fn registry(&self) -> RegistryClient {
        RegistryClient::new(&self.registry, Duration::from_secs(15), Duration::ZERO)
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create and update topics from the `topics/*.toml` declarations.
    #[command(subcommand)]
    Topics(topics::TopicsCommand),
    /// Register Avro schemas, or check them for compatibility.
    #[command(subcommand)]
    Schemas(schemas::SchemasCommand),
    /// Produce JSON documents as Avro CloudEvents.
    #[command(long_about = publish::LONG_ABOUT)]
    Publish(publish::PublishArgs),
    /// Print a topic's records as JSON lines, values decoded via the registry.
    #[command(long_about = tail::LONG_ABOUT)]
    Tail(tail::TailArgs),
    /// Inspect dead-letter topics (Reflex, Spring, Kafka Connect and Kafka Streams headers).
    #[command(subcommand, long_about = dlq::LONG_ABOUT)]
    Dlq(dlq::DlqCommand),
    /// Consumer-group lag in offsets and seconds, with a Burrow-style status.
    #[command(long_about = lag::LONG_ABOUT)]
    Lag(lag::LagArgs),
    /// Shadow mode: run recorded events through a scenario pack's rules, actions stubbed.
    #[command(subcommand)]
    Rules(rules_test::RulesCommand),
    /// Least-privilege Kafka ACLs per Reflex principal: apply or check a declaration file.
    #[command(subcommand, long_about = acls::LONG_ABOUT)]
    Acls(acls::AclsCommand),
    /// Live view of a running fleet: rates, lag, actions, breakers, kill switch, workers down.
    #[command(long_about = top::LONG_ABOUT)]
    Top(top::TopArgs),
    /// Actions waiting for a human: list them, approve or deny one (who and why recorded).
    #[command(subcommand, long_about = approvals::LONG_ABOUT)]
    Approvals(approvals::ApprovalsCommand),
}

/// Runs one command; `Ok` carries the exit code (1 when a check failed).
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut global = cli.global;
    global.kafka_properties =
        reflex_runtime::config::client_properties(global.kafka_property.clone(), std::env::vars())?;
    let result = match cli.command {
        Command::Topics(cmd) => topics::run(&global, cmd).await,
        Command::Schemas(cmd) => schemas::run(&global, cmd).await,
        Command::Publish(args) => publish::run(&global, args).await,
        Command::Tail(args) => tail::run(&global, args).await,
        Command::Lag(args) => lag::run(&global, args).await,
        Command::Dlq(cmd) => dlq::run(&global, cmd).await,
        Command::Rules(rules_test::RulesCommand::Test(args)) => rules_test::run(args).await,
        Command::Acls(cmd) => acls::run(&global, cmd).await,
        Command::Top(args) => top::run(args).await,
        Command::Approvals(cmd) => approvals::run(&global, cmd).await,
    };
    result.map_err(|e| {
        let unreachable = e.chain().any(|cause| {
            matches!(
                cause.downcast_ref::<RegistryError>(),
                Some(RegistryError::Unavailable { .. })
            )
        });
        if unreachable {
            e.context(format!(
                "the schema registry at {} does not answer (pass --registry or set \
                 REFLEX_REGISTRY__URL)",
                global.registry
            ))
        } else {
            e
        }
    })
}

/// Exit code 1: the command ran, but a check failed.
pub fn check_failed() -> ExitCode {
    ExitCode::from(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
