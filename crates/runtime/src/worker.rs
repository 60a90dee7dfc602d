//! The whole `main` of a worker binary, the same for every worker: parse `--config`, load the
//! layered [`WorkerConfig`] (embedded defaults < file < `REFLEX_` environment), check it (Kafka
//! settings included) and resolve the Kafka secrets, start telemetry, then hand over to the
//! worker's `run` until SIGTERM/SIGINT. Exit codes: 0 after a clean drain, 2 for invalid
//! configuration (secrets included), 1 when the worker stopped on an error (start-up checks
//! included: the Kafka access check of [`crate::preflight`]).

use std::fmt::Display;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::ExitCode;

use crate::client_config::consumer_config;
use crate::config::{KafkaSettings, StageSettings, WorkerConfig};
use crate::preflight::{self, PreflightError};

/// How long the start-up check waits for the broker before starting anyway.
const PREFLIGHT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The shutdown signal handed to a worker's `run`.
pub type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Describes one worker binary; its configuration shape and defaults come from the stage's
/// [`StageSettings`].
pub struct Worker<'a> {
    /// Binary name, e.g. `reflex-router`.
    pub name: &'static str,
    /// One line for `--help`.
    pub about: &'static str,
    /// Config file used when `--config` is not given and this file exists (an example setup).
    pub example_config: Option<&'a str>,
}

impl Worker<'_> {
    /// Runs the worker: `run(config, config_file, shutdown)`.
    pub async fn main<S, F, Fut, E>(self, run: F) -> ExitCode
    where
        S: StageSettings,
        F: FnOnce(WorkerConfig<S>, Option<PathBuf>, Shutdown) -> Fut,
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
        let config = match WorkerConfig::<S>::load(config_file.as_deref()) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{}: {e}", self.name);
                return ExitCode::from(2);
            }
        };
        crate::telemetry::init(&config.telemetry);
        if let Err(e) = self.check_kafka(&config.kafka).await {
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
    async fn check_kafka(&self, kafka: &KafkaSettings) -> Result<(), PreflightError> {
        // Already validated by the loader; the settings (secrets resolved) are the loop's own.
        let Ok(client) = consumer_config(kafka, self.name) else {
            return Ok(());
        };
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
