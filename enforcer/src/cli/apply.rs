//! `enforcer apply [DIR] [--confirm DURATION]`: validate a policy directory
//! and hand it to the running daemon. Exit 0 applied, 1 rejected (the
//! running policy stays), 2 usage or IO error, 3 no daemon.
//!
//! The daemon validates what it reads, so the policy is compiled once: a
//! large policy costs its compile time once, not twice. Its diagnostics name
//! the files as the user gave the directory. Without a daemon, the policy is
//! still validated here, so that an invalid one is reported (exit 1).

use std::path::{Path, PathBuf};
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
    let dir = match args.dir.canonicalize() {
        Ok(dir) => dir,
        Err(e) => {
            eprintln!("enforcer: {}: {e}", args.dir.display());
            return Ok(ExitCode::from(2));
        }
    };
    let Some(mut client) = super::connect_daemon(&args.socket)? else {
        // Still say whether the policy would have been accepted.
        return Ok(match validate(&args.dir) {
            Some(code) => code,
            None => ExitCode::from(super::EXIT_NO_DAEMON),
        });
    };
    let request = Request::Apply {
        dir: dir.clone(),
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
                println!("{}", as_given(w, &dir, &args.dir));
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
                println!("{}", as_given(e, &dir, &args.dir));
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

/// Validates `dir` here, printing what is wrong; `None` when it is valid.
fn validate(dir: &Path) -> Option<ExitCode> {
    match crate::compile::compile_dir(dir, SystemTime::now()) {
        Ok(_) => None,
        Err(LoadError::Invalid(diags)) => {
            for d in &diags.0 {
                println!("{d}");
            }
            println!("rejected: the running policy stays in force");
            Some(ExitCode::from(1))
        }
        Err(e @ LoadError::Io { .. }) => {
            eprintln!("enforcer: {e}");
            Some(ExitCode::from(2))
        }
    }
}

/// A diagnostic of the daemon, which read the files under the canonical
/// `read` directory, with the path as this user gave it (`given`), so that
/// `FILE:LINE:COL` opens the same file from the user's working directory.
fn as_given(line: &str, read: &Path, given: &Path) -> String {
    let prefix = format!("{}/", read.display());
    match line.strip_prefix(&prefix) {
        Some(rest) => format!("{}", given.join(rest).display()),
        None => line.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemon_paths_are_shown_as_the_user_gave_the_directory() {
        let read = Path::new("/srv/policies");
        assert_eq!(
            as_given(
                "/srv/policies/db.toml:3:7: unknown key",
                read,
                Path::new("policies")
            ),
            "policies/db.toml:3:7: unknown key"
        );
        assert_eq!(
            as_given(
                "/srv/policies/db.toml:3:7: x",
                read,
                Path::new("./policies/")
            ),
            "./policies/db.toml:3:7: x"
        );
        // Other files and plain messages are left alone.
        assert_eq!(
            as_given("/srv/policiesX/a.toml:1:1: x", read, Path::new("p")),
            "/srv/policiesX/a.toml:1:1: x"
        );
        assert_eq!(as_given("cannot read", read, Path::new("p")), "cannot read");
    }
}
