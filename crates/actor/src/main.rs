//! `reflex-actor`: the shared worker `main` (config and secrets, telemetry, run until SIGTERM).

use std::process::ExitCode;

use reflex_actor::ActorConfig;
use reflex_runtime::worker::Worker;

#[tokio::main]
async fn main() -> ExitCode {
    Worker {
        name: "reflex-actor",
        about: "Executes action requests exactly once in effect, behind guardrails.",
        example_config: Some(reflex_actor::EXAMPLE_CONFIG),
    }
    .main(|config: ActorConfig, file, shutdown| async move {
        reflex_actor::run(config, file.as_deref(), shutdown).await
    })
    .await
}
