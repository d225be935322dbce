//! `enforcer confirm`: keep a policy applied with `apply --confirm`.
//! Exit 0 confirmed, 1 nothing to confirm, 3 no daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::api::{Client, ClientError, Request, Response};
use crate::config;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The daemon's socket.
    #[arg(long, value_name = "PATH", env = config::SOCKET_ENV, default_value = config::DEFAULT_SOCKET)]
    pub socket: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut client = match Client::connect(&args.socket) {
        Ok(c) => c,
        Err(e @ ClientError::NoDaemon { .. }) => {
            eprintln!("enforcer: {e}");
            return Ok(ExitCode::from(3));
        }
        Err(e) => return Err(e.into()),
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
