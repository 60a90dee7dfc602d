//! `reflex-actor`: loads config, starts telemetry, runs the actor until SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use reflex_actor::{ActorConfig, ACTOR_DEFAULTS};
use reflex_runtime::config::{load, RUNTIME_DEFAULTS};

/// Executes action requests exactly once in effect, behind guardrails.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// TOML config file layered over the embedded defaults (REFLEX_<SECTION>__<FIELD> env wins).
    /// Without it, `crates/actor/actor.example.toml` (the crash-loop example) is used when it
    /// exists under the working directory.
    #[arg(long, env = "REFLEX_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let mut args = Args::parse();
    if args.config.is_none() && std::path::Path::new(reflex_actor::EXAMPLE_CONFIG).exists() {
        args.config = Some(PathBuf::from(reflex_actor::EXAMPLE_CONFIG));
    }
    let config: ActorConfig =
        match load(&[RUNTIME_DEFAULTS, ACTOR_DEFAULTS], args.config.as_deref()) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("reflex-actor: {e}");
                return ExitCode::from(2);
            }
        };
    reflex_runtime::telemetry::init(&config.telemetry);
    match reflex_actor::run(
        config,
        args.config.as_deref(),
        reflex_runtime::shutdown::signal(),
    )
    .await
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "reflex-actor stopped");
            eprintln!("reflex-actor: {e:#}");
            ExitCode::FAILURE
        }
    }
}
