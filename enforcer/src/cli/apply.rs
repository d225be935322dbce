//! `enforcer apply [DIR] [--confirm DURATION] [--allow-empty]`: read a
//! policy directory and hand its files to the running daemon. Exit 0
//! applied, 1 rejected (the running policy stays), 2 usage or IO error, 3 no
//! daemon.
//!
//! This command reads the files (only regular `*.toml` files, bounded in
//! size: `policy::files`) and sends their text: the daemon, which runs as
//! root, never opens a path a client names. The daemon validates and
//! compiles what it receives, so a large policy is compiled once; its
//! diagnostics name the files as the user gave the directory. Without a
//! daemon, the policy is still validated here, so that an invalid one is
//! reported (exit 1).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use crate::api::{PolicyFile, Request, Response};
use crate::config;
use crate::policy::LoadError;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The policy directory.
    #[arg(default_value = crate::policy::DEFAULT_DIR)]
    pub dir: PathBuf,
    /// Roll back automatically unless `enforcer confirm` follows within
    /// this time (e.g. 90s, 2m).
    #[arg(long, value_name = "DURATION", value_parser = crate::duration::parse_duration)]
    pub confirm: Option<Duration>,
    /// Apply a policy set with no workload even while a policy with
    /// workloads is enforced: that stops enforcing all of them.
    #[arg(long)]
    pub allow_empty: bool,
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
    let sources = match crate::policy::read_dir(&dir) {
        Ok(sources) => sources,
        Err(e) => {
            eprintln!("enforcer: {}", as_given(&e.to_string(), &dir, &args.dir));
            return Ok(ExitCode::from(2));
        }
    };
    let Some(mut client) = super::connect_daemon(&args.socket)? else {
        // Still say whether the policy would have been accepted.
        return Ok(match validate(sources, &dir, &args.dir) {
            Some(code) => code,
            None => ExitCode::from(super::EXIT_NO_DAEMON),
        });
    };
    let files = match PolicyFile::from_sources(sources) {
        Ok(files) => files,
        Err(e) => {
            eprintln!("enforcer: {}", as_given(&e.to_string(), &dir, &args.dir));
            return Ok(ExitCode::from(2));
        }
    };
    let request = Request::Apply {
        source: dir.display().to_string(),
        files,
        confirm_ms: args
            .confirm
            .map(|d| d.as_millis().min(u128::from(u64::MAX)) as u64),
        allow_empty: args.allow_empty,
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

/// Validates the files read from `read` here, printing what is wrong with
/// the paths as the user gave them; `None` when the policy is valid.
fn validate(sources: Vec<(PathBuf, String)>, read: &Path, given: &Path) -> Option<ExitCode> {
    let compiled = crate::policy::load_sources(&sources)
        .and_then(|loaded| crate::check::compile_loaded(loaded, SystemTime::now()));
    match compiled {
        Ok(_) => None,
        Err(LoadError::Invalid(diags)) => {
            for d in &diags.0 {
                println!("{}", as_given(&d.to_string(), read, given));
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

/// A line about files read under the canonical `read` directory (a
/// diagnostic of the daemon, an error of this command), with the paths as
/// this user gave the directory (`given`), so that `FILE:LINE:COL` opens
/// the same file from the user's working directory.
fn as_given(line: &str, read: &Path, given: &Path) -> String {
    let read = read.display().to_string();
    let given = given.display().to_string();
    let given = match given.trim_end_matches('/') {
        "" => "/",
        trimmed => trimmed,
    };
    let line = line.replace(&format!("{read}/"), &format!("{given}/"));
    match line.strip_prefix(&format!("{read}:")) {
        Some(rest) => format!("{given}:{rest}"),
        None => line,
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
        // In the middle of a line, and the directory itself.
        assert_eq!(
            as_given(
                "cannot read /srv/policies/zz.toml: it is a FIFO",
                read,
                Path::new("p")
            ),
            "cannot read p/zz.toml: it is a FIFO"
        );
        assert_eq!(
            as_given(
                "/srv/policies: the policy set has no workload",
                read,
                Path::new("p/")
            ),
            "p: the policy set has no workload"
        );
    }
}
