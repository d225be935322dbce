//! The `enforcer` binary: parses the command line and dispatches to
//! `enforcer::cli`. Errors that escape a subcommand exit with status 2.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = enforcer::cli::Cli::parse();
    // The daemon sets up its own logging (its config chooses the format).
    if !matches!(cli.command, enforcer::cli::Command::Run(_)) {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("ENFORCER_LOG")
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .init();
    }
    match enforcer::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("enforcer: {e:#}");
            ExitCode::from(2)
        }
    }
}
