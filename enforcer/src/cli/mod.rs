//! The command line: one file per subcommand, each with its clap `Args`
//! and a `run` returning the process exit code.

pub mod apply;
pub mod assets;
pub mod check;
pub mod confirm;
pub mod diff;
pub mod explain;
pub mod flows;
pub mod run;
pub mod status;

use std::path::Path;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::api::{Client, ClientError};

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
    /// The daemon: enforce the policy, follow cgroups, serve the local API.
    Run(Box<run::Args>),
    /// Validate a policy directory and hand it to the running daemon.
    Apply(apply::Args),
    /// Keep a policy applied with `apply --confirm`.
    Confirm(confirm::Args),
    /// The daemon, its policy generation, workloads, cgroups and counters.
    Status(status::Args),
    /// Recent verdict events.
    Flows(flows::Args),
    /// Write man pages and shell completions (for packaging).
    #[command(hide = true)]
    GenerateAssets(assets::Args),
    /// Semantic diff of who may talk to whom between two policies (DIR or
    /// REV:DIR), for policy review in CI.
    Diff(diff::Args),
}

/// Runs the chosen subcommand.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Check(args) => check::run(args),
        Command::Explain(args) => explain::run(args),
        Command::Run(args) => run::run(*args),
        Command::Apply(args) => apply::run(args),
        Command::Confirm(args) => confirm::run(args),
        Command::Status(args) => status::run(args),
        Command::Flows(args) => flows::run(args),
        Command::GenerateAssets(args) => assets::run(args),
        Command::Diff(args) => diff::run(args),
    }
}

/// The exit code of a client command when no daemon listens on the socket.
pub const EXIT_NO_DAEMON: u8 = 3;

/// Connects a client command to the daemon. `None` when no daemon listens
/// (said on stderr; the command exits [`EXIT_NO_DAEMON`]).
fn connect_daemon(socket: &Path) -> anyhow::Result<Option<Client>> {
    match Client::connect(socket) {
        Ok(client) => Ok(Some(client)),
        Err(e @ ClientError::NoDaemon { .. }) => {
            eprintln!("enforcer: {e}");
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}
