//! `enforcer apply [DIR] [--confirm DURATION]`: validate a policy directory
//! and hand it to the running daemon. Exit 0 applied, 1 rejected (the
//! running policy stays), 2 usage or IO error, 3 no daemon.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use crate::api::{Request, Response};
use crate::config;
use crate::policy::LoadError;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The policy directory.
    #[arg(default_value = config::DEFAULT_POLICIES)]
    pub dir: PathBuf,
    /// Roll back automatically unless `enforcer confirm` follows within
    /// this time (e.g. 90s, 2m).
    #[arg(long, value_name = "DURATION", value_parser = crate::daemon::duration::parse_duration)]
    pub confirm: Option<Duration>,
    /// The daemon's socket.
    #[arg(long, value_name = "PATH", env = config::SOCKET_ENV, default_value = config::DEFAULT_SOCKET)]
    pub socket: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    // Validate here first, for errors with this user's view of the files;
    // the daemon validates again from what it reads itself.
    match crate::compile::compile_dir(&args.dir, SystemTime::now()) {
        Ok(_) => {}
        Err(LoadError::Invalid(diags)) => {
            for d in &diags.0 {
                println!("{d}");
            }
            println!("rejected: the running policy stays in force");
            return Ok(ExitCode::from(1));
        }
        Err(e @ LoadError::Io { .. }) => {
            eprintln!("enforcer: {e}");
            return Ok(ExitCode::from(2));
        }
    }
    let dir = match args.dir.canonicalize() {
        Ok(dir) => dir,
        Err(e) => {
            eprintln!("enforcer: {}: {e}", args.dir.display());
            return Ok(ExitCode::from(2));
        }
    };
    let Some(mut client) = super::connect_daemon(&args.socket)? else {
        return Ok(ExitCode::from(super::EXIT_NO_DAEMON));
    };
    let request = Request::Apply {
        dir,
        confirm_ms: args
            .confirm
            .map(|d| d.as_millis().min(u128::from(u64::MAX)) as u64),
    };
    match client.call(&request)? {
        Response::Applied {
            generation,
            content_hash,
            unchanged,
            rollback_at,
            warnings,
        } => {
            for w in &warnings {
                println!("{w}");
            }
            let what = if unchanged { "unchanged" } else { "applied" };
            println!("{what}: generation {generation}, hash {content_hash}");
            if let Some(at) = rollback_at {
                println!("rolls back at {at} unless `enforcer confirm` runs before");
            }
            Ok(ExitCode::SUCCESS)
        }
        Response::Rejected { errors } => {
            for e in &errors {
                println!("{e}");
            }
            println!("rejected: the running policy stays in force");
            Ok(ExitCode::from(1))
        }
        Response::Error { message } => {
            eprintln!("enforcer: {message}");
            Ok(ExitCode::from(2))
        }
        other => anyhow::bail!("unexpected answer from the daemon: {other:?}"),
    }
}
