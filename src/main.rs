//! Thin entry point; the program is `gmail_ingest::cli::main` (parse the CLI,
//! load settings, start telemetry, dispatch). Any error becomes one line on
//! stderr and an exit code (1 runtime, 2 usage).

fn main() -> std::process::ExitCode {
    gmail_ingest::cli::main()
}
