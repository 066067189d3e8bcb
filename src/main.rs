//! Thin entry point: parse the CLI, load settings, start telemetry, dispatch.
//! Any error becomes one line on stderr and an exit code (1 runtime, 2 usage).

use std::process::ExitCode;

use clap::Parser;
use gmail_ingest::cli::{self, Cli};
use gmail_ingest::config::Settings;
use gmail_ingest::{output, telemetry};

/// Resolves on the first SIGTERM or SIGINT; a second one exits at once
/// (still nothing half-written: every write is a transaction).
async fn shutdown_signal() {
    wait_for_signal().await;
    tracing::info!("Shutdown requested; send the signal again to exit immediately.");
    tokio::spawn(async {
        wait_for_signal().await;
        output::error("second signal: exiting immediately");
        std::process::exit(130);
    });
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let settings = match Settings::load(&cli.config_dir, cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            output::error(format!("{e:#}"));
            return ExitCode::from(2);
        }
    };
    telemetry::init_tracing(&settings.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            output::error(format!("starting the async runtime: {e}"));
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(cli::run(cli, settings, shutdown_signal()));
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            output::error(format!("{e:#}"));
            ExitCode::from(cli::exit_code(&e))
        }
    }
}
