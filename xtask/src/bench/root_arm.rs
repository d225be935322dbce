//! The root-attached arm, `enforcer-root-N`: the real release daemon
//! (`enforcer run`) with its programs at the root of the cgroup v2
//! hierarchy, as in production, and a policy of N rules whose workload is
//! the client's cgroup. Every socket of the host runs the programs: the
//! client's as a workload, the server's (and every other process's) as
//! unmanaged ones (`unmanaged = allow`, the default).
//!
//! For the paired pass, [`Arm::suspend`] stops the daemon (SIGSTOP) and
//! detaches its cgroup links (`BPF_LINK_DETACH`, what `bpftool link
//! detach` does): nothing is attached to any cgroup, and the daemon, which
//! would attach them again within half a second, runs nothing.
//! [`Arm::resume`] lets it run again (SIGCONT); its integrity check
//! attaches the same programs again, with the same maps and policy, and
//! the harness waits until every link is back. Neither is a start-up: no
//! compile, no map is written.
//!
//! Everything attached is removed with the pins (`enforcer run
//! --uninstall` on the arm's own `--bpffs`) when the arm is removed or
//! dropped, after an error or Ctrl-C too; a run killed with SIGKILL leaves
//! the pins, which the next run uninstalls (see `daemon.rs`).

use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use enforcer_bench::arm_policy::client_policy;
use serde::Deserialize;

use super::arms::{Arm, ArmEnv, UnfilteredHalf};
use super::daemon::{CgroupRoot, Daemon, ROOT_ARM_PREFIX, Sandbox};
use crate::cmd::{self, step};

/// Left alone after the daemon is ready, and after each suspend or
/// resume, before anything is measured.
const SETTLE: Duration = Duration::from_secs(1);
/// How long the daemon may take to attach its programs again once it runs:
/// its integrity check runs twice a second.
const REATTACH_TIMEOUT: Duration = Duration::from_secs(10);

/// The daemon at the cgroup root with a policy of `rules` rules.
pub(super) struct RootDaemonArm {
    rules: usize,
    running: Option<Running>,
}

/// An applied arm. The daemon is declared (so dropped) before the sandbox,
/// whose drop uninstalls the pins: a killed daemon's links go with them.
struct Running {
    daemon: Daemon,
    sandbox: Sandbox,
    /// The pins of the daemon's cgroup links (its tracer links are left
    /// alone: a tracepoint link cannot be detached, and no cgroup is made
    /// while the paired pass measures).
    links: Vec<PathBuf>,
    /// The id of the hierarchy's root cgroup, where they attach.
    root_id: u64,
}

impl RootDaemonArm {
    pub(super) fn new(rules: usize) -> Self {
        Self {
            rules,
            running: None,
        }
    }

    fn running(&mut self) -> Result<&mut Running> {
        self.running.as_mut().context("the root arm is not applied")
    }
}

impl Arm for RootDaemonArm {
    fn name(&self) -> String {
        format!("enforcer-root-{}", self.rules)
    }

    fn filters(&self) -> bool {
        true
    }

    fn apply(&mut self, env: &ArmEnv<'_>) -> Result<()> {
        if self.running.is_some() {
            bail!("{} is applied already", self.name());
        }
        let enforcer = cmd::target_dir().join("release/enforcer");
        let sandbox = Sandbox::create(&enforcer, ROOT_ARM_PREFIX, CgroupRoot::Hierarchy)?;
        let policies = sandbox.dir.join("policies");
        fs::create_dir(&policies)
            .with_context(|| format!("cannot create {}", policies.display()))?;
        let client = env
            .topology
            .client_cgroup
            .strip_prefix(&sandbox.cgroup)
            .with_context(|| {
                format!(
                    "the client's cgroup {} is not under {}",
                    env.topology.client_cgroup.display(),
                    sandbox.cgroup.display()
                )
            })?;
        let allowed: Vec<_> = env.allowed.iter().map(|s| (s.addr, s.port)).collect();
        let text = client_policy(&client.to_string_lossy(), &allowed, self.rules)?;
        fs::write(policies.join("bench.toml"), text)
            .with_context(|| format!("cannot write the policy into {}", policies.display()))?;
        let root_id = fs::metadata(&sandbox.cgroup)
            .with_context(|| format!("cgroup {}", sandbox.cgroup.display()))?
            .ino();
        let started = Instant::now();
        let daemon = Daemon::start(&sandbox, &policies)?;
        step(format!(
            "  daemon {} attached at {} in {:.2} s",
            daemon.pid(),
            sandbox.cgroup.display(),
            started.elapsed().as_secs_f64()
        ));
        let mut running = Running {
            daemon,
            sandbox,
            links: Vec::new(),
            root_id,
        };
        running.links = cgroup_links(&running.sandbox.bpffs)?;
        if running.links.is_empty() {
            bail!(
                "the daemon pinned no cgroup link under {}",
                running.sandbox.bpffs.display()
            );
        }
        running.check_attached()?;
        self.running = Some(running);
        std::thread::sleep(SETTLE);
        Ok(())
    }

    fn remove(&mut self, _env: &ArmEnv<'_>) -> Result<()> {
        let Some(Running {
            daemon, sandbox, ..
        }) = self.running.take()
        else {
            return Ok(());
        };
        let log = daemon.log_tail();
        let stopped = daemon
            .stop()
            .with_context(|| format!("stopping the root arm's daemon; its log:\n{log}"));
        // The pins hold the links: removing them detaches everything.
        let uninstalled = sandbox.uninstall();
        drop(sandbox);
        stopped?;
        uninstalled
    }

    fn unfiltered_half(&self) -> UnfilteredHalf {
        UnfilteredHalf::Suspended
    }

    fn suspend(&mut self) -> Result<()> {
        let running = self.running()?;
        running.daemon.freeze()?;
        for pin in &running.links {
            let link = link_at(pin)?;
            cmd::capture(Command::new("bpftool").args([
                "link",
                "detach",
                "id",
                &link.id.to_string(),
            ]))?;
        }
        for pin in &running.links {
            if link_at(pin)?.cgroup_id.is_some_and(|id| id != 0) {
                bail!("the link pinned at {} is still attached", pin.display());
            }
        }
        std::thread::sleep(SETTLE);
        Ok(())
    }

    fn resume(&mut self) -> Result<()> {
        let running = self.running()?;
        running.daemon.thaw()?;
        let deadline = Instant::now() + REATTACH_TIMEOUT;
        while running.check_attached().is_err() {
            if Instant::now() >= deadline {
                let why = running.check_attached().err().map(|e| format!("{e:#}"));
                bail!(
                    "the daemon did not attach its programs again within {REATTACH_TIMEOUT:?} ({}); its log:\n{}",
                    why.unwrap_or_default(),
                    running.daemon.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(SETTLE);
        Ok(())
    }
}

impl Running {
    /// Every cgroup link pinned at the start is attached to the root.
    fn check_attached(&self) -> Result<()> {
        for pin in &self.links {
            let link = link_at(pin)?;
            if link.cgroup_id != Some(self.root_id) {
                bail!(
                    "the link pinned at {} is attached to cgroup {:?}, not the root ({})",
                    pin.display(),
                    link.cgroup_id,
                    self.root_id
                );
            }
        }
        Ok(())
    }
}

/// What `bpftool link show` says of a link.
#[derive(Debug, Deserialize)]
struct LinkInfo {
    id: u32,
    #[serde(rename = "type")]
    kind: String,
    /// For a cgroup link: its cgroup, 0 once detached.
    cgroup_id: Option<u64>,
}

fn parse_link(json: &str) -> Result<LinkInfo> {
    serde_json::from_str(json).context("unexpected `bpftool link show --json` output")
}

fn link_at(pin: &Path) -> Result<LinkInfo> {
    let json = cmd::capture(
        Command::new("bpftool")
            .args(["link", "show", "pinned"])
            .arg(pin)
            .arg("--json"),
    )?;
    parse_link(&json).with_context(|| format!("for {}", pin.display()))
}

/// The pins of the cgroup links under a daemon's `--bpffs`
/// (`v<LAYOUT>/links/<program>`).
fn cgroup_links(bpffs: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for layout in fs::read_dir(bpffs).with_context(|| format!("cannot read {}", bpffs.display()))? {
        let links = layout?.path().join("links");
        let Ok(entries) = fs::read_dir(&links) else {
            continue;
        };
        for entry in entries {
            let pin = entry?.path();
            if link_at(&pin)?.kind == "cgroup" {
                found.push(pin);
            }
        }
    }
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bpftool_links_give_their_cgroup() {
        let attached = parse_link(
            r#"{"id":12,"type":"cgroup","prog_id":40,"cgroup_id":1,"attach_type":"cgroup_inet_egress","pinned":["/sys/fs/bpf/x"]}"#,
        )
        .unwrap();
        assert_eq!(
            (attached.id, attached.kind.as_str(), attached.cgroup_id),
            (12, "cgroup", Some(1))
        );
        let tracer =
            parse_link(r#"{"id":13,"type":"tracing","prog_id":41,"attach_type":"trace_raw_tp"}"#)
                .unwrap();
        assert_eq!((tracer.kind.as_str(), tracer.cgroup_id), ("tracing", None));
        assert!(parse_link("[]").is_err());
    }
}
