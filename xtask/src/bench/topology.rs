//! Two network namespaces joined by a veth pair, and a cgroup v2 directory
//! for the client's processes. Everything is removed when the
//! [`Topology`] is dropped, including after a failure half-way through
//! creating it.

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::cmd::{self, step};
use crate::setup;

/// The benchmark's range (a documentation range, never this machine's own).
pub(super) const NET_PREFIX: &str = "198.51.100.";
pub(super) const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub(super) const SERVER_ADDR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const PREFIX_LEN: u8 = 24;
const NS_PREFIX: &str = "enfb-";
const CGROUP_PREFIX: &str = "enforcer-bench-";

/// Which cgroup a client process runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ClientCgroup {
    /// The client's cgroup, the one the arms filter.
    Filtered,
    /// A sibling of it that no arm attaches to, in the same network
    /// namespace: the unfiltered half of the paired pass.
    Unfiltered,
}

/// Client and server network namespaces, their veth pair, and the client's
/// cgroups.
pub(super) struct Topology {
    pub client_ns: String,
    pub server_ns: String,
    /// The cgroup v2 directory that every client process joins before it
    /// enters the client namespace (the enforcer arm attaches here).
    pub client_cgroup: PathBuf,
    /// Its sibling, for a client that no enforcer arm filters.
    unfiltered_cgroup: PathBuf,
    /// The server processes' cgroup: killing it stops every server, also
    /// those left by a run that was killed before it could clean up.
    server_cgroup: PathBuf,
    /// CPUs to pin the client and the server to, when there are two.
    pub client_cpu: Option<usize>,
    pub server_cpu: Option<usize>,
    created_ns: Vec<String>,
    created_cgroups: Vec<PathBuf>,
}

impl Topology {
    pub(super) fn create() -> Result<Self> {
        remove_stale()?;
        check_range_free()?;
        let pid = std::process::id();
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        let pinned = cpus >= 2 && cmd::on_path("taskset");
        let cgroup_parent = setup::cgroup2_mount()?.join(format!("{CGROUP_PREFIX}{pid}"));
        let mut topology = Self {
            client_ns: format!("{NS_PREFIX}{pid}-c"),
            server_ns: format!("{NS_PREFIX}{pid}-s"),
            client_cgroup: cgroup_parent.join("client"),
            unfiltered_cgroup: cgroup_parent.join("client-unfiltered"),
            server_cgroup: cgroup_parent.join("server"),
            client_cpu: pinned.then_some(0),
            server_cpu: pinned.then_some(1),
            created_ns: Vec::new(),
            created_cgroups: Vec::new(),
        };
        // Each piece is recorded as soon as it exists, so that dropping a
        // half-built topology removes exactly what was made.
        for ns in [topology.client_ns.clone(), topology.server_ns.clone()] {
            cmd::capture(Command::new("ip").args(["netns", "add", &ns]))?;
            topology.created_ns.push(ns.clone());
            cmd::capture(Command::new("ip").args(["-n", &ns, "link", "set", "lo", "up"]))?;
        }
        // Created directly inside the namespaces: no name clash with
        // interfaces of the host or of concurrent runs.
        cmd::capture(Command::new("ip").args([
            "link",
            "add",
            "veth0",
            "netns",
            &topology.client_ns,
            "type",
            "veth",
            "peer",
            "name",
            "veth0",
            "netns",
            &topology.server_ns,
        ]))?;
        for (ns, addr) in [
            (&topology.client_ns, CLIENT_ADDR),
            (&topology.server_ns, SERVER_ADDR),
        ] {
            let cidr = format!("{addr}/{PREFIX_LEN}");
            cmd::capture(
                Command::new("ip").args(["-n", ns, "addr", "add", &cidr, "dev", "veth0"]),
            )?;
            cmd::capture(Command::new("ip").args(["-n", ns, "link", "set", "veth0", "up"]))?;
        }
        // The connection-rate benchmark opens tens of thousands of
        // connections: widen the client's port range and let it reuse
        // TIME_WAIT ports (both settings are per namespace).
        cmd::capture(topology.in_client_ns("sysctl").args([
            "-q",
            "-w",
            "net.ipv4.ip_local_port_range=1024 65535",
            "net.ipv4.tcp_tw_reuse=1",
        ]))?;
        for dir in [
            &cgroup_parent,
            &topology.client_cgroup,
            &topology.unfiltered_cgroup,
            &topology.server_cgroup,
        ] {
            fs::create_dir(dir)
                .with_context(|| format!("cannot create cgroup {}", dir.display()))?;
            topology.created_cgroups.push(dir.clone());
        }
        step(format!(
            "namespaces {} ({CLIENT_ADDR}) and {} ({SERVER_ADDR}) over veth; client cgroup {}; {}",
            topology.client_ns,
            topology.server_ns,
            topology.client_cgroup.display(),
            match (topology.client_cpu, topology.server_cpu) {
                (Some(c), Some(s)) => format!("client pinned to CPU {c}, server to CPU {s}"),
                _ => "not pinned (fewer than 2 CPUs or no taskset)".to_owned(),
            }
        ));
        Ok(topology)
    }

    /// `program` run in the client namespace without joining the cgroup
    /// (for configuring the namespace: sysctl, iptables, nft).
    pub(super) fn in_client_ns(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.client_ns, program]);
        cmd
    }

    /// `program` as a client process: it joins the client cgroup *before*
    /// entering the namespace (`ip netns exec` remounts /sys, after which
    /// a write to cgroup.procs would silently miss), pinned to the client CPU.
    pub(super) fn client(&self, cgroup: ClientCgroup, program: &Path) -> Command {
        let dir = match cgroup {
            ClientCgroup::Filtered => &self.client_cgroup,
            ClientCgroup::Unfiltered => &self.unfiltered_cgroup,
        };
        in_cgroup_and_ns(dir, &self.client_ns, self.client_cpu, program)
    }

    /// `program` as a server process: in the server cgroup and namespace,
    /// pinned to the server CPU.
    pub(super) fn server(&self, program: &Path) -> Command {
        in_cgroup_and_ns(
            &self.server_cgroup,
            &self.server_ns,
            self.server_cpu,
            program,
        )
    }
}

fn in_cgroup_and_ns(cgroup: &Path, ns: &str, cpu: Option<usize>, program: &Path) -> Command {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", r#"echo $$ > "$1" || exit 97; shift; exec "$@""#, "sh"])
        .arg(cgroup.join("cgroup.procs"))
        .args(["ip", "netns", "exec", ns]);
    if let Some(cpu) = cpu {
        cmd.args(["taskset", "-c", &cpu.to_string()]);
    }
    cmd.arg(program);
    cmd
}

impl Drop for Topology {
    fn drop(&mut self) {
        for dir in self.created_cgroups.iter().rev() {
            if let Err(e) = remove_cgroup(dir) {
                eprintln!("warning: {e:#}");
            }
        }
        for ns in self.created_ns.iter().rev() {
            // Deleting the namespace removes its veth end (and so the pair),
            // its addresses and every firewall rule in it.
            if let Err(e) = cmd::capture(Command::new("ip").args(["netns", "del", ns])) {
                eprintln!("warning: {e:#}");
            }
        }
    }
}

/// Kills what is left in a cgroup of the benchmark and removes it, with
/// the test toolkit's teardown.
pub(super) fn remove_cgroup(dir: &Path) -> Result<()> {
    enforcer_tests::cgroup::teardown(dir, None)
        .with_context(|| format!("cannot remove cgroup {}", dir.display()))
}

/// Fails if any interface or route of this (the host's) namespace uses the
/// benchmark's range.
fn check_range_free() -> Result<()> {
    let addrs = cmd::capture(Command::new("ip").args(["-4", "-o", "addr", "show"]))?;
    let routes = cmd::capture(Command::new("ip").args(["-4", "route", "show", "table", "all"]))?;
    if let Some(line) = addrs
        .lines()
        .chain(routes.lines())
        .find(|line| line.contains(NET_PREFIX))
    {
        bail!(
            "{NET_PREFIX}0/{PREFIX_LEN} is already in use on this host ({}); the benchmark needs it free",
            line.trim()
        );
    }
    Ok(())
}

/// Removes namespaces and cgroups of earlier runs whose process is gone (a
/// run killed with SIGKILL cannot clean up after itself).
fn remove_stale() -> Result<()> {
    let alive = |pid: &str| Path::new("/proc").join(pid).exists();
    let list = cmd::capture(Command::new("ip").args(["netns", "list"]))?;
    for ns in list
        .lines()
        .filter_map(|line| line.split_whitespace().next())
    {
        let Some(pid) = ns
            .strip_prefix(NS_PREFIX)
            .and_then(|rest| rest.split_once('-'))
            .map(|(pid, _)| pid)
        else {
            continue;
        };
        if !alive(pid) {
            step(format!("removing namespace {ns} left by an earlier run"));
            cmd::capture(Command::new("ip").args(["netns", "del", ns]))?;
        }
    }
    let mount = setup::cgroup2_mount()?;
    for entry in fs::read_dir(&mount).with_context(|| format!("cannot read {}", mount.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(CGROUP_PREFIX) else {
            continue;
        };
        if !alive(pid) {
            step(format!("removing cgroup {name} left by an earlier run"));
            for child in ["client", "client-unfiltered", "server", ""] {
                remove_cgroup(&entry.path().join(child))?;
            }
        }
    }
    Ok(())
}
