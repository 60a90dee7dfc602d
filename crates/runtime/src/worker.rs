//! The whole `main` of a worker binary: parse `--config`, load the layered config, start
//! telemetry, run until SIGTERM/SIGINT. Exit codes: 0 after a clean drain, 2 for invalid
//! configuration, 1 when the worker stopped on an error (start-up checks included).

use std::fmt::Display;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::ExitCode;

use serde::de::DeserializeOwned;

use crate::client_config::consumer_config;
use crate::config::{load, KafkaSettings, TelemetrySettings, RUNTIME_DEFAULTS};
use crate::preflight::{self, PreflightError};

/// How long the start-up check waits for the broker before starting anyway.
const PREFLIGHT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What the shared `main` needs from a worker's configuration.
pub trait WorkerConfig: DeserializeOwned {
    fn telemetry(&self) -> &TelemetrySettings;
    /// Checked at start, before the worker talks to anything, so contradicting Kafka settings
    /// are a configuration error (exit 2), not a failure after the registry or Redis answered.
    fn kafka(&self) -> &KafkaSettings;
}

/// The shutdown signal handed to a worker's `run`.
pub type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Describes one worker binary.
pub struct Worker<'a> {
    /// Binary name, e.g. `reflex-router`.
    pub name: &'static str,
    /// One line for `--help`.
    pub about: &'static str,
    /// The worker's embedded defaults, layered over the runtime's.
    pub defaults: &'a str,
    /// Config file used when `--config` is not given and this file exists (an example setup).
    pub example_config: Option<&'a str>,
}

impl Worker<'_> {
    /// Runs the worker: `run(config, config_file, shutdown)`.
    pub async fn main<C, F, Fut, E>(self, run: F) -> ExitCode
    where
        C: WorkerConfig,
        F: FnOnce(C, Option<PathBuf>, Shutdown) -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: Display,
    {
        let matches = clap::Command::new(self.name)
            .version(env!("CARGO_PKG_VERSION"))
            .about(self.about)
            .arg(
                clap::Arg::new("config")
                    .long("config")
                    .env("REFLEX_CONFIG")
                    .value_parser(clap::value_parser!(PathBuf))
                    .help(
                        "TOML config file layered over the embedded defaults \
                         (REFLEX_<SECTION>__<FIELD> environment variables win)",
                    ),
            )
            .get_matches();
        let config_file = matches.get_one::<PathBuf>("config").cloned().or_else(|| {
            self.example_config
                .map(PathBuf::from)
                .filter(|p| Path::new(p).exists())
        });
        let config: C = match load(&[RUNTIME_DEFAULTS, self.defaults], config_file.as_deref()) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{}: {e}", self.name);
                return ExitCode::from(2);
            }
        };
        let client = match consumer_config(config.kafka(), self.name) {
            Ok(client) => client,
            Err(e) => {
                eprintln!("{}: invalid configuration: {e}", self.name);
                return ExitCode::from(2);
            }
        };
        crate::telemetry::init(config.telemetry());
        if let Err(e) = self.check_kafka(client, config.kafka()).await {
            tracing::error!(error = %e, "{} cannot use Kafka", self.name);
            eprintln!("{}: {e}", self.name);
            return ExitCode::FAILURE;
        }
        match run(config, config_file, Box::pin(crate::shutdown::signal())).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "{} stopped", self.name);
                eprintln!("{}: {e:#}", self.name);
                ExitCode::FAILURE
            }
        }
    }

    /// The Kafka start-up check ([`crate::preflight`]): a refused password or certificate or a
    /// missing ACL stops the worker; a broker that does not answer yet does not (librdkafka
    /// keeps trying, as it would later).
    async fn check_kafka(
        &self,
        mut client: rdkafka::ClientConfig,
        kafka: &KafkaSettings,
    ) -> Result<(), PreflightError> {
        let mut secrets = std::collections::BTreeMap::new();
        // Secrets are refused here only by the worker's own start-up, with its wording.
        if reflex_core::secrets::apply_kafka_secrets(&mut secrets, std::env::vars()).is_ok() {
            for (property, value) in secrets {
                client.set(property, value);
            }
        }
        let kafka = kafka.clone();
        let result = tokio::task::spawn_blocking(move || {
            preflight::check(&client, &kafka, PREFLIGHT_TIMEOUT)
        })
        .await
        .unwrap_or(Ok(()));
        match result {
            Err(e @ PreflightError::Unreachable { .. }) => {
                tracing::warn!(error = %e, "{} starts without a Kafka answer", self.name);
                Ok(())
            }
            other => other,
        }
    }
}
