use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    limit_malloc_arenas();
    // HTTPS fetches of git sources use rustls without a built-in crypto provider; ring is the
    // one kube's client uses too. Installing fails only when one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: starting the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run())
}

/// glibc gives every thread that meets contention its own malloc arena (up to 8 per core), and
/// memory freed into one arena is not reused by another. After a burst of requests spread over
/// tokio's workers and the blocking pool, that leaves tens of MiB resident that the process never
/// uses again. Two arenas measured best for rsgo (`scripts/bench.sh memory`: about 10 MiB less at
/// rest and after bursts than glibc's default, and less than jemalloc or mimalloc); a
/// `MALLOC_ARENA_MAX` set by the operator wins. Runs before any thread starts.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only changes a malloc tuning parameter; no other thread exists yet.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}

async fn run() -> ExitCode {
    let cli = rsgo::cli::Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("RSGO_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr);
    match cli.log_format {
        rsgo::cli::LogFormat::Json => logs.json().init(),
        // Colours only for a person at a terminal, never in log files or journald.
        rsgo::cli::LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
    match rsgo::cli::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        // `rsgo get ... | head`: the reader has what it wanted.
        Err(error) if rsgo::cli::is_closed_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
