//! `reflex-router`: the shared worker `main` (config and secrets, telemetry, run until SIGTERM).

use std::process::ExitCode;

use reflex_router::RouterConfig;
use reflex_runtime::worker::Worker;

#[tokio::main]
async fn main() -> ExitCode {
    Worker {
        name: "reflex-router",
        about: "Routes CloudEvents between Kafka topics by CEL rules.",
        example_config: None,
    }
    .main(|config: RouterConfig, _file, shutdown| async move {
        reflex_router::run(config, shutdown).await
    })
    .await
}
