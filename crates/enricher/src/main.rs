//! `reflex-enricher`: loads config, starts telemetry, runs the enricher until SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use reflex_enricher::{EnricherConfig, ENRICHER_DEFAULTS};
use reflex_runtime::config::{load, RUNTIME_DEFAULTS};

/// Adds context to routed events and binds them to action requests.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// TOML config file layered over the embedded defaults (REFLEX_<SECTION>__<FIELD> env wins).
    #[arg(long, env = "REFLEX_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let config: EnricherConfig = match load(
        &[RUNTIME_DEFAULTS, ENRICHER_DEFAULTS],
        args.config.as_deref(),
    ) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("reflex-enricher: {e}");
            return ExitCode::from(2);
        }
    };
    reflex_runtime::telemetry::init(&config.telemetry);
    match reflex_enricher::run(config, reflex_runtime::shutdown::signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "reflex-enricher stopped");
            eprintln!("reflex-enricher: {e:#}");
            ExitCode::FAILURE
        }
    }
}
