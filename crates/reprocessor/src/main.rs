//! `reflex-reprocessor`: the shared worker `main` (config and secrets, telemetry, run until SIGTERM).

use std::process::ExitCode;

use reflex_reprocessor::ReprocessorConfig;
use reflex_runtime::worker::Worker;

#[tokio::main]
async fn main() -> ExitCode {
    Worker {
        name: "reflex-reprocessor",
        about: "Delivers retryable dead letters back to their original topic when they are due.",
        example_config: None,
    }
    .main(|config: ReprocessorConfig, _file, shutdown| async move {
        reflex_reprocessor::run(config, shutdown).await
    })
    .await
}
