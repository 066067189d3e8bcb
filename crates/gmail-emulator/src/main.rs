//! The `gmail-emulator` binary: serves the local Google until SIGTERM or Ctrl-C.
//!
//! It takes the same flags as `gmail-ingest emulator` (both parse [`EmulatorArgs`]) and runs
//! the same [`run_command`]; it only adds what a program needs around it: a log subscriber on
//! stderr, a runtime and the signal handling. It must not grow emulation logic of its own.

use std::io::{IsTerminal as _, Write as _};
use std::process::ExitCode;

use clap::{CommandFactory as _, Parser};
use gmail_emulator::{EmulatorArgs, run_command};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "gmail-emulator",
    version,
    about = "Serve the local Google emulator (tests, benchmarks, demo)"
)]
struct Cli {
    #[command(flatten)]
    args: EmulatorArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(why) = check_domain(&cli.args.domain) {
        Cli::command()
            .error(clap::error::ErrorKind::InvalidValue, why)
            .exit();
    }
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .compact()
        .init();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(run_command(cli.args, wait_for_signal())));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line naming the cause, as gmail-ingest reports its errors.
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The check `gmail-ingest emulator` makes of `--domain` (its `Domain` rule): at least two
/// dot-separated labels of letters, digits and inner hyphens, each at most 63 characters and
/// 253 in all; trailing dots are ignored.
fn check_domain(input: &str) -> Result<(), String> {
    let name = input.trim().trim_end_matches('.');
    let labels: Vec<&str> = name.split('.').collect();
    let ok = name.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid domain {input:?}: expected a name like example.com"
        ))
    }
}

/// Resolves on the first SIGTERM or SIGINT (Ctrl-C elsewhere).
async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
