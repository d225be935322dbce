//! `enforcer confirm`: keep a policy applied with `apply --confirm`.
//! Exit 0 confirmed, 1 nothing to confirm, 3 no daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::api::{Request, Response};
use crate::config;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The daemon's socket.
    #[arg(long, value_name = "PATH", env = config::SOCKET_ENV, default_value = config::DEFAULT_SOCKET)]
    pub socket: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let Some(mut client) = super::connect_daemon(&args.socket)? else {
        return Ok(ExitCode::from(super::EXIT_NO_DAEMON));
    };
    match client.call(&Request::Confirm)? {
        Response::Confirmed { generation } => {
            println!("confirmed: generation {generation} stays in force");
            Ok(ExitCode::SUCCESS)
        }
        Response::Error { message } => {
            eprintln!("enforcer: {message}");
            Ok(ExitCode::from(1))
        }
        other => anyhow::bail!("unexpected answer from the daemon: {other:?}"),
    }
}
