//! `enforcer status [--json]`: the daemon, its policy and workloads.
//! Exit 0, or 3 when no daemon answers.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::api::proto::CgroupDiscovery;
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
    write_discovery_problems(out, &r.cgroup_discovery)?;
    for error in &r.read_errors {
        writeln!(out, "READ ERROR: {error}")?;
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
            if let Some(origin) = &p.origin {
                writeln!(
                    out,
                    "  the last good policy, {origin} from the state directory: the configured one was rejected"
                )?;
            }
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
    let d = &r.cgroup_discovery;
    writeln!(
        out,
        "cgroups: {} found; {} unwatched; {} failed rescans",
        d.cgroups, d.unwatched, d.rescans_failed
    )?;
    let g = &r.cgroup_registration;
    if g.at_creation {
        writeln!(
            out,
            "registered at creation: {} cgroups; {} past a quota; {} overflows",
            g.registered, g.refused, g.overflows
        )?;
    } else {
        writeln!(out, "registered at creation: no (see NOT ENFORCED)")?;
    }
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

/// The parts of the cgroup tree discovery cannot see, as problems: cgroups
/// there are matched by no workload. Paths are quoted and escaped (any
/// user with a delegated subtree names directories).
fn write_discovery_problems(out: &mut impl Write, d: &CgroupDiscovery) -> std::io::Result<()> {
    if let Some(error) = &d.last_error {
        writeln!(
            out,
            "CGROUP RESCANS FAIL ({} so far), the last snapshot stays: {error}",
            d.rescans_failed
        )?;
    }
    let counts: Vec<String> = d
        .skipped
        .by_reason()
        .iter()
        .filter(|&&(reason, n)| n > 0 && reason != "vanished")
        .map(|(reason, n)| format!("{reason} {n}"))
        .collect();
    if counts.is_empty() {
        return Ok(());
    }
    writeln!(
        out,
        "CGROUPS NOT WALKED ({}): no workload matches what lies below:",
        counts.join(", ")
    )?;
    for skipped in d.skipped_paths.iter().filter(|s| s.reason != "vanished") {
        writeln!(out, "  {:?} ({})", skipped.path, skipped.reason)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::proto::{SkippedCgroup, SkippedCgroups};

    fn report(discovery: CgroupDiscovery) -> StatusReport {
        StatusReport {
            pid: 1,
            version: "0".into(),
            started_at: "2026-01-01T00:00:00Z".into(),
            policy: None,
            last_rejection: None,
            cgroup_root: "/sys/fs/cgroup".into(),
            unmanaged: "allow".into(),
            failsafe: "22/tcp".into(),
            workloads: Vec::new(),
            lost_events: 0,
            reloads_ok: 0,
            reloads_failed: 0,
            not_enforced: Vec::new(),
            integrity: Default::default(),
            cgroup_registration: Default::default(),
            cgroup_discovery: discovery,
            read_errors: Vec::new(),
        }
    }

    fn text(r: &StatusReport) -> String {
        let mut out = Vec::new();
        write_text(&mut out, r).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn skipped_cgroups_come_first_with_escaped_paths() {
        let shown = text(&report(CgroupDiscovery {
            cgroups: 9,
            skipped: SkippedCgroups {
                unreadable: 1,
                vanished: 3,
                ..SkippedCgroups::default()
            },
            skipped_paths: vec![
                SkippedCgroup {
                    path: "user.slice/x\u{1b}[2J".into(),
                    reason: "unreadable".into(),
                },
                SkippedCgroup {
                    path: "system.slice/run-1.scope".into(),
                    reason: "vanished".into(),
                },
            ],
            ..CgroupDiscovery::default()
        }));
        let mut lines = shown.lines();
        assert_eq!(
            lines.next(),
            Some("CGROUPS NOT WALKED (unreadable 1): no workload matches what lies below:")
        );
        assert_eq!(
            lines.next(),
            Some(r#"  "user.slice/x\u{1b}[2J" (unreadable)"#)
        );
        assert!(!shown.contains("run-1.scope"), "vanished is churn: {shown}");
        assert!(shown.contains("cgroups: 9 found; 0 unwatched; 0 failed rescans"));
    }

    #[test]
    fn a_whole_tree_and_working_rescans_are_no_problem() {
        let shown = text(&report(CgroupDiscovery {
            cgroups: 3,
            skipped: SkippedCgroups {
                vanished: 1,
                ..SkippedCgroups::default()
            },
            ..CgroupDiscovery::default()
        }));
        assert!(shown.starts_with("daemon: pid 1"), "{shown}");
        let failing = text(&report(CgroupDiscovery {
            rescans_failed: 4,
            last_error: Some("cannot open the cgroup root /x: gone".into()),
            ..CgroupDiscovery::default()
        }));
        assert!(
            failing.starts_with("CGROUP RESCANS FAIL (4 so far)"),
            "{failing}"
        );
    }

    /// Failed data plane reads are shown before everything else but the
    /// problems, and are in the JSON only when there are some (the
    /// contract's fields unchanged).
    #[test]
    fn failed_data_plane_reads_are_shown_never_hidden_as_zeros() {
        let mut r = report(CgroupDiscovery::default());
        let quiet = serde_json::to_value(&r).unwrap();
        assert!(quiet.get("read_errors").is_none(), "{quiet}");
        assert!(!text(&r).contains("READ ERROR"));
        r.read_errors = vec!["verdict counters: 3 lookups failed, shown as 0: gone".into()];
        let shown = text(&r);
        assert!(
            shown.starts_with("READ ERROR: verdict counters: 3 lookups failed, shown as 0: gone\n"),
            "{shown}"
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(
            json["read_errors"],
            serde_json::json!(["verdict counters: 3 lookups failed, shown as 0: gone"])
        );
        let back: StatusReport = serde_json::from_value(json).unwrap();
        assert_eq!(back.read_errors, r.read_errors);
    }
}
