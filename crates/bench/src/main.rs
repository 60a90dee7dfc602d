//! `reflex-bench`: the harness binary. Its commands share one implementation of what they have
//! in common (the `reflex_bench` library: worker processes, worker settings, publishing,
//! reading topics back, lag, CPU/RSS sampling, the fake target):
//!
//! - no command: the load benchmark (throughput, latency, CPU, RSS against a raw passthrough
//!   baseline), see `bench.rs`;
//! - `main-job`: a scenario pack end to end with a live view and a final accounting check (what
//!   `scripts/demo` runs), see `mainjob/`;
//! - `faults`: the fault-injection suite, one main-job run per scenario with a fault injected
//!   (what `scripts/faults` runs), see `faults.rs`;
//! - `fake-target`: the fake target API alone, for running a pack by hand.
//!
//! Exit codes: 0 success, 1 a check failed, 2 an error or bad usage.

mod bench;
mod faults;
mod mainjob;
mod passthrough;
mod peer;
mod report;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "reflex-bench",
    version,
    about = "Load generator, main job and fault suite for Reflex workers",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    bench: bench::BenchArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a scenario pack end to end under load, with a live view, then check that nothing
    /// was lost and no effect was applied twice (what `scripts/demo` runs).
    MainJob(mainjob::MainJobArgs),
    /// The fault-injection suite: one main-job run per scenario with a fault injected (what
    /// `scripts/faults` runs, one fresh stack per scenario).
    Faults(faults::FaultsArgs),
    /// The fake target API alone: applies each Idempotency-Key once, one JSON line per request
    /// on stdout; `POST /control?mode=ok|fail|timeout[&delay_ms=N]` switches failure modes.
    FakeTarget {
        /// Port on 127.0.0.1.
        #[arg(default_value_t = 18080)]
        port: u16,
    },
    /// The baseline worker: consume → produce with no processing (started by the bench itself).
    #[command(hide = true)]
    Passthrough {
        #[arg(long)]
        bootstrap: String,
        #[arg(long)]
        group: String,
        #[arg(long)]
        input: String,
        #[arg(long)]
        output: String,
        /// Longer in backlog mode, so the group survives the SIGSTOP.
        #[arg(long, default_value_t = 6000)]
        session_timeout_ms: u32,
        #[arg(long, default_value_t = 300_000)]
        max_poll_interval_ms: u32,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result: anyhow::Result<ExitCode> = runtime.block_on(async {
        match cli.command {
            None => bench::run(&cli.bench).await.map(|()| ExitCode::SUCCESS),
            Some(Cmd::MainJob(args)) => mainjob::run(args).await,
            Some(Cmd::Faults(args)) => faults::run(args).await,
            Some(Cmd::FakeTarget { port }) => fake_target(port).await,
            Some(Cmd::Passthrough {
                bootstrap,
                group,
                input,
                output,
                session_timeout_ms,
                max_poll_interval_ms,
            }) => passthrough::run(
                &bootstrap,
                &group,
                &input,
                &output,
                session_timeout_ms,
                max_poll_interval_ms,
            )
            .await
            .map(|()| ExitCode::SUCCESS),
        }
    });
    // Workers and helpers still running are stopped by their owners' Drop; the runtime's
    // blocking reads (librdkafka) must not keep the process alive.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn fake_target(port: u16) -> anyhow::Result<ExitCode> {
    let log = std::path::Path::new("/dev/stdout");
    let target = reflex_bench::target::Target::start(port, Some(log)).await?;
    if target.addr.port() != port && port != 0 {
        anyhow::bail!("port {port} is taken");
    }
    eprintln!("fake target on http://{}", target.addr);
    tokio::signal::ctrl_c().await?;
    Ok(ExitCode::SUCCESS)
}
