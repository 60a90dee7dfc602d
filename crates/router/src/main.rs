//! `reflex-router`: loads config, starts telemetry, runs the router until SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use reflex_router::{RouterConfig, ROUTER_DEFAULTS};
use reflex_runtime::config::{load, RUNTIME_DEFAULTS};

/// Routes CloudEvents between Kafka topics by CEL rules.
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
    let config: RouterConfig =
        match load(&[RUNTIME_DEFAULTS, ROUTER_DEFAULTS], args.config.as_deref()) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("reflex-router: {e}");
                return ExitCode::from(2);
            }
        };
    reflex_runtime::telemetry::init(&config.telemetry);
    match reflex_router::run(config, reflex_runtime::shutdown::signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "reflex-router stopped");
            eprintln!("reflex-router: {e:#}");
            ExitCode::FAILURE
        }
    }
}
