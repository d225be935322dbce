//! `enforcer status [--json]`: the daemon, its policy and workloads.
//! Exit 0, or 3 when no daemon answers.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::api::{Client, ClientError, Request, Response, StatusReport};
use crate::config;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// One JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// The daemon's socket.
    #[arg(long, value_name = "PATH", env = config::SOCKET_ENV, default_value = config::DEFAULT_SOCKET)]
    pub socket: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let report = match Client::connect(&args.socket).and_then(|mut c| c.call(&Request::Status)) {
        Ok(Response::Status(report)) => report,
        Ok(Response::Error { message }) => {
            eprintln!("enforcer: {message}");
            return Ok(ExitCode::from(2));
        }
        Ok(other) => anyhow::bail!("unexpected answer from the daemon: {other:?}"),
        Err(e @ (ClientError::NoDaemon { .. } | ClientError::Io { .. })) => {
            eprintln!("enforcer: {e}");
            return Ok(ExitCode::from(super::EXIT_NO_DAEMON));
        }
        Err(e) => return Err(e.into()),
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &report)?;
        writeln!(out)?;
    } else {
        write_text(&mut out, &report)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The human-readable status. Problems come first, in capitals, so they
/// are not missed.
pub fn write_text(out: &mut impl Write, r: &StatusReport) -> std::io::Result<()> {
    for problem in &r.not_enforced {
        writeln!(out, "NOT ENFORCED: {problem}")?;
    }
    if let Some(rej) = &r.last_rejection {
        writeln!(
            out,
            "REJECTED ({} at {}, from {}):",
            rej.trigger, rej.time, rej.source
        )?;
        for e in &rej.errors {
            writeln!(out, "  {e}")?;
        }
    }
    writeln!(
        out,
        "daemon: pid {}, version {}, up since {}",
        r.pid, r.version, r.started_at
    )?;
    let integrity = &r.integrity;
    write!(
        out,
        "integrity: {}, {} repairs",
        if integrity.ok { "ok" } else { "NOT OK" },
        integrity.repairs
    )?;
    match &integrity.last {
        Some(last) => writeln!(out, " (last at {}: {})", last.time, last.what)?,
        None => writeln!(out)?,
    }
    match &r.policy {
        Some(p) => {
            writeln!(
                out,
                "policy: generation {}, hash {}, applied {}, from {}",
                p.generation, p.content_hash, p.applied_at, p.source
            )?;
            if let Some(at) = &p.rollback_at {
                writeln!(
                    out,
                    "  unconfirmed: rolls back at {at} unless `enforcer confirm`"
                )?;
            }
            if let Some(at) = &p.next_expiry {
                writeln!(out, "  next rule expiry: {at}")?;
            }
        }
        None => writeln!(out, "policy: none")?,
    }
    writeln!(
        out,
        "cgroup root: {}; unmanaged: {}; failsafe: {}; reloads: {} ok, {} failed; lost events: {}",
        r.cgroup_root, r.unmanaged, r.failsafe, r.reloads_ok, r.reloads_failed, r.lost_events
    )?;
    for w in &r.workloads {
        writeln!(
            out,
            "workload {} ({}, {}): allow {}, deny {}, audit {}",
            w.name, w.mode, w.selector, w.counters.allow, w.counters.deny, w.counters.audit
        )?;
        for c in &w.cgroups {
            writeln!(out, "  {c}")?;
        }
    }
    Ok(())
}
