//! The command line: one file per subcommand, each with its clap `Args`
//! and a `run` returning the process exit code.

pub mod check;
pub mod explain;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The default policy directory.
pub const DEFAULT_POLICY_DIR: &str = "/etc/enforcer/policies";

/// eBPF host microsegmentation: label workloads, write TOML segment
/// policies, enforce them in the kernel.
#[derive(Debug, Parser)]
#[command(name = "enforcer", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Parse, validate and compile a policy directory; run its expectations.
    Check(check::Args),
    /// Show the verdict for one flow and the rule that decides it.
    Explain(explain::Args),
}

/// Runs the chosen subcommand.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Check(args) => check::run(args),
        Command::Explain(args) => explain::run(args),
    }
}
