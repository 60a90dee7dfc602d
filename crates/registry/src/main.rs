//! `reflex-registry`: the local Confluent-compatible Schema Registry (see the library docs).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use reflex_registry::{serve, Store};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// A Confluent-compatible Schema Registry (Avro only) for local development and tests.
#[derive(Debug, Parser)]
#[command(name = "reflex-registry", version, about)]
struct Args {
    /// Address to listen on; port 0 picks a free port (the chosen address is printed on stdout
    /// as `listening on http://ADDR`).
    #[arg(long, env = "REFLEX_REGISTRY_LISTEN", default_value = "127.0.0.1:8081")]
    listen: String,
    /// JSON file holding the registry's state, rewritten atomically on every change. Without
    /// it, the registry lives in memory only.
    #[arg(long, env = "REFLEX_REGISTRY_DATA_FILE")]
    data_file: Option<PathBuf>,
    /// Log format on stderr (level from RUST_LOG, default info).
    #[arg(
        long,
        env = "REFLEX_REGISTRY_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(args.log_format);

    let store = match &args.data_file {
        Some(path) => {
            let store = Store::open(path)?;
            let (schemas, subjects) = store.size().await;
            tracing::info!(path = %path.display(), schemas, subjects, "registry state loaded");
            store
        }
        None => {
            tracing::info!(
                "no --data-file: the registry lives in memory only and forgets everything on exit"
            );
            Store::in_memory()
        }
    };

    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr().context("listener has no address")?;
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on http://{addr}").context("cannot write to stdout")?;
        stdout.flush().context("cannot flush stdout")?;
    }
    tracing::info!(%addr, "schema registry listening");

    serve(listener, store, shutdown_signal())
        .await
        .context("server failed")?;
    tracing::info!("schema registry stopped");
    Ok(())
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Completes on ctrl-c or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("ctrl-c: shutting down"),
        () = terminate => tracing::info!("SIGTERM: shutting down"),
    }
}
