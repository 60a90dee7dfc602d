//! `reflex-enricher`: the shared worker `main` (config and secrets, telemetry, run until SIGTERM).

use std::process::ExitCode;

use reflex_enricher::EnricherConfig;
use reflex_runtime::worker::Worker;

#[tokio::main]
async fn main() -> ExitCode {
    Worker {
        name: "reflex-enricher",
        about: "Adds context to routed events and binds them to action requests.",
        example_config: None,
    }
    .main(|config: EnricherConfig, _file, shutdown| async move {
        reflex_enricher::run(config, shutdown).await
    })
    .await
}
