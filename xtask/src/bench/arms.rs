//! The arms compared by the end-to-end benchmarks: one way each of
//! filtering the client's traffic. Every arm must let the benchmark's own
//! traffic through and refuse everything else from the client.
//!
//! Adding an arm is implementing [`Arm`] and pushing it in [`standard`];
//! an arm that lives in another program (the enforcer's data plane) can also
//! be given on the command line as `--arm NAME=COMMAND` ([`ProcessArm`]).

use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::Ipv4Addr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use super::root_arm::RootDaemonArm;
use super::topology::Topology;
use crate::cmd;

/// A TCP service the client is allowed to reach.
#[derive(Debug, Clone, Copy)]
pub(super) struct Service {
    pub addr: Ipv4Addr,
    pub port: u16,
}

/// What an arm is given to install its filtering.
pub(super) struct ArmEnv<'a> {
    pub topology: &'a Topology,
    /// The services of the real traffic: the only ones to allow.
    pub allowed: &'a [Service],
}

/// How the paired pass measures "no filtering" while an arm stays
/// applied (see `paired.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum UnfilteredHalf {
    /// The client runs in a sibling of its cgroup, which the arm leaves
    /// alone.
    SiblingCgroup,
    /// The arm covers the whole host: [`Arm::suspend`] takes all of its
    /// filtering away for the half and [`Arm::resume`] puts it back.
    Suspended,
}

impl UnfilteredHalf {
    /// What the unfiltered half is, for the report.
    pub(super) fn describe(self) -> &'static str {
        match self {
            UnfilteredHalf::SiblingCgroup => "client in an unfiltered sibling cgroup",
            UnfilteredHalf::Suspended => "the arm's programs detached",
        }
    }
}

/// One way of filtering the client's traffic.
pub(super) trait Arm {
    /// A short name, unique in a run (`iptables-1000`).
    fn name(&self) -> String;
    /// Whether the arm refuses traffic outside [`ArmEnv::allowed`]; the
    /// harness checks this after every [`Arm::apply`].
    fn filters(&self) -> bool;
    /// Installs the filtering.
    fn apply(&mut self, env: &ArmEnv<'_>) -> Result<()>;
    /// Removes everything [`Arm::apply`] installed. Called after every
    /// `apply`, whether or not the measurements succeeded.
    fn remove(&mut self, env: &ArmEnv<'_>) -> Result<()>;
    /// How the paired pass gets its unfiltered half.
    fn unfiltered_half(&self) -> UnfilteredHalf {
        UnfilteredHalf::SiblingCgroup
    }
    /// For [`UnfilteredHalf::Suspended`]: stops filtering anything, keeping
    /// what makes [`Arm::resume`] cheap (no start-up next to a
    /// measurement).
    fn suspend(&mut self) -> Result<()> {
        bail!("arm {} cannot be suspended", self.name())
    }
    /// Filters again after [`Arm::suspend`]; returns once it does.
    fn resume(&mut self) -> Result<()> {
        bail!("arm {} cannot be suspended", self.name())
    }
}

/// The arms of a standard run: baseline, then iptables, nftables and the
/// enforcer with allow lists (policies) of each size, and the real daemon
/// attached at the cgroup root with the largest.
pub(super) fn standard(sizes: &[usize]) -> Vec<Box<dyn Arm>> {
    let mut arms: Vec<Box<dyn Arm>> = vec![Box::new(Baseline)];
    arms.extend(
        sizes
            .iter()
            .map(|&n| Box::new(Iptables { rules: n }) as Box<dyn Arm>),
    );
    arms.extend(
        sizes
            .iter()
            .map(|&n| Box::new(Nftables { elements: n }) as Box<dyn Arm>),
    );
    arms.extend(
        sizes
            .iter()
            .map(|&n| Box::new(enforcer_arm(n)) as Box<dyn Arm>),
    );
    if let Some(&largest) = sizes.iter().max() {
        arms.push(Box::new(RootDaemonArm::new(largest)));
    }
    arms
}

/// Where [`build_enforcer_arm`] puts the enforcer's arm program.
fn enforcer_arm_path() -> std::path::PathBuf {
    cmd::target_dir().join("release/examples/bench_arm")
}

/// The enforcer's data plane on the client's cgroup with a compiled policy
/// of `rules` rules (`enforcer/examples/bench_arm.rs`, a [`ProcessArm`]).
fn enforcer_arm(rules: usize) -> ProcessArm {
    ProcessArm {
        name: format!("enforcer-{rules}"),
        command: format!("'{}' --rules {rules}", enforcer_arm_path().display()),
        running: None,
    }
}

/// Builds the enforcer's arm program when a run includes an enforcer arm
/// on the client's cgroup, and the daemon when it includes the root arm.
pub(super) fn build_enforcer_arm(arms: &[Box<dyn Arm>]) -> Result<()> {
    if arms
        .iter()
        .any(|arm| arm.unfiltered_half() == UnfilteredHalf::Suspended)
    {
        super::control::build()?;
    }
    if !arms.iter().any(|arm| {
        arm.name().starts_with("enforcer-")
            && arm.unfiltered_half() == UnfilteredHalf::SiblingCgroup
    }) {
        return Ok(());
    }
    cmd::run(cmd::cargo().args([
        "build",
        "--release",
        "-p",
        "enforcer",
        "--example",
        "bench_arm",
    ]))?;
    if !enforcer_arm_path().is_file() {
        bail!(
            "the enforcer arm was built but {} does not exist",
            enforcer_arm_path().display()
        );
    }
    Ok(())
}

/// No filtering at all.
pub(super) struct Baseline;

impl Arm for Baseline {
    fn name(&self) -> String {
        "baseline".to_owned()
    }
    fn filters(&self) -> bool {
        false
    }
    fn apply(&mut self, _env: &ArmEnv<'_>) -> Result<()> {
        Ok(())
    }
    fn remove(&mut self, _env: &ArmEnv<'_>) -> Result<()> {
        Ok(())
    }
}

/// `n` (address, port) pairs: `n - allowed.len()` that match nothing the
/// benchmark sends, then the real services last, so that a linear rule list
/// is walked to its end by every packet.
pub(super) fn allow_list(n: usize, allowed: &[Service]) -> Vec<Service> {
    let fillers = n.saturating_sub(allowed.len());
    let mut list: Vec<Service> = (0..fillers)
        .map(|i| Service {
            // 203.0.113.1-250, ports from 10000: all distinct, never used.
            addr: Ipv4Addr::new(203, 0, 113, u8::try_from(1 + i % 250).unwrap_or(1)),
            port: u16::try_from(10_000 + i / 250).unwrap_or(u16::MAX),
        })
        .collect();
    list.extend_from_slice(allowed);
    list
}

/// iptables (`iptables-restore`, whichever backend the host uses): N
/// ACCEPT rules each in the client's OUTPUT and INPUT chains, policy DROP,
/// no connection tracking shortcut.
pub(super) struct Iptables {
    pub rules: usize,
}

impl Iptables {
    fn ruleset(&self, allowed: &[Service]) -> String {
        let list = allow_list(self.rules, allowed);
        let mut text =
            String::from("*filter\n:INPUT DROP [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT DROP [0:0]\n");
        for Service { addr, port } in &list {
            let _ = writeln!(
                text,
                "-A OUTPUT -d {addr}/32 -p tcp -m tcp --dport {port} -j ACCEPT"
            );
        }
        for Service { addr, port } in &list {
            let _ = writeln!(
                text,
                "-A INPUT -s {addr}/32 -p tcp -m tcp --sport {port} -j ACCEPT"
            );
        }
        text.push_str("COMMIT\n");
        text
    }
}

impl Arm for Iptables {
    fn name(&self) -> String {
        format!("iptables-{}", self.rules)
    }
    fn filters(&self) -> bool {
        true
    }
    fn apply(&mut self, env: &ArmEnv<'_>) -> Result<()> {
        feed(
            &mut env.topology.in_client_ns("iptables-restore"),
            &self.ruleset(env.allowed),
        )
    }
    fn remove(&mut self, env: &ArmEnv<'_>) -> Result<()> {
        feed(
            &mut env.topology.in_client_ns("iptables-restore"),
            "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n",
        )?;
        // With the nf_tables backend the emptied chains would still be
        // hooked in: remove the tables themselves.
        cmd::capture(env.topology.in_client_ns("nft").args(["flush", "ruleset"]))?;
        Ok(())
    }
}

/// nftables: the same allow list as one set of (address . port), looked up
/// by one rule in each of output and input, policy drop.
pub(super) struct Nftables {
    pub elements: usize,
}

const NFT_TABLE: &str = "enforcer_bench";

impl Nftables {
    fn ruleset(&self, allowed: &[Service]) -> String {
        let elements: Vec<String> = allow_list(self.elements, allowed)
            .iter()
            .map(|Service { addr, port }| format!("{addr} . {port}"))
            .collect();
        format!(
            "table ip {NFT_TABLE} {{\n\
             \tset allow {{\n\t\ttype ipv4_addr . inet_service\n\t\telements = {{ {} }}\n\t}}\n\
             \tchain output {{\n\t\ttype filter hook output priority 0; policy drop;\n\t\tip daddr . tcp dport @allow accept\n\t}}\n\
             \tchain input {{\n\t\ttype filter hook input priority 0; policy drop;\n\t\tip saddr . tcp sport @allow accept\n\t}}\n\
             }}\n",
            elements.join(", ")
        )
    }
}

impl Arm for Nftables {
    fn name(&self) -> String {
        format!("nftables-{}", self.elements)
    }
    fn filters(&self) -> bool {
        true
    }
    fn apply(&mut self, env: &ArmEnv<'_>) -> Result<()> {
        feed(
            env.topology.in_client_ns("nft").args(["-f", "-"]),
            &self.ruleset(env.allowed),
        )
    }
    fn remove(&mut self, env: &ArmEnv<'_>) -> Result<()> {
        cmd::capture(
            env.topology
                .in_client_ns("nft")
                .args(["delete", "table", "ip", NFT_TABLE]),
        )?;
        Ok(())
    }
}

/// Runs `cmd` with `input` on its stdin; fails unless it exits 0.
fn feed(cmd: &mut Command, input: &str) -> Result<()> {
    let line = cmd::display(cmd);
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start `{line}`"))?;
    let written = child
        .stdin
        .take()
        .context("no stdin pipe")?
        .write_all(input.as_bytes());
    let output = child
        .wait_with_output()
        .with_context(|| format!("waiting for `{line}`"))?;
    if !output.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    written.with_context(|| format!("writing the ruleset to `{line}`"))
}

/// An arm implemented by another program, given as `NAME=COMMAND`.
///
/// `COMMAND` is run with `sh -c` in the host's namespaces with
/// `ENFORCER_BENCH_CLIENT_CGROUP` (the client's cgroup v2 directory),
/// `ENFORCER_BENCH_CLIENT_NETNS`, `ENFORCER_BENCH_SERVER_NETNS` and
/// `ENFORCER_BENCH_ALLOW` (`tcp:ADDR:PORT,...`, the only services to allow)
/// set. It installs its filtering, prints a line `ready`, keeps the filtering
/// while its stdin is open, then removes it and exits.
pub(super) struct ProcessArm {
    name: String,
    command: String,
    running: Option<(Child, ChildStdin)>,
}

/// How long a process arm may take to become ready, and to clean up.
const PROCESS_ARM_TIMEOUT: Duration = Duration::from_secs(60);

impl ProcessArm {
    /// Parses `NAME=COMMAND`.
    pub(super) fn parse(spec: &str) -> Result<Self> {
        let (name, command) = spec
            .split_once('=')
            .filter(|(name, command)| !name.is_empty() && !command.trim().is_empty())
            .with_context(|| format!("--arm {spec:?}: expected NAME=COMMAND"))?;
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            bail!("--arm {spec:?}: the name may hold only letters, digits, '-', '_' and '.'");
        }
        Ok(Self {
            name: name.to_owned(),
            command: command.to_owned(),
            running: None,
        })
    }

    fn start(&mut self, envs: &[(&str, String)]) -> Result<()> {
        let mut child = Command::new("sh")
            .args(["-c", &self.command])
            .envs(envs.iter().map(|(k, v)| (*k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("could not start arm {}: {}", self.name, self.command))?;
        let stdin = child.stdin.take().context("no stdin pipe")?;
        let stdout = child.stdout.take().context("no stdout pipe")?;
        self.running = Some((child, stdin));
        // Wait for `ready` on a thread, so a hung command cannot hang the run.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let ready = lines.any(|line| line.is_ok_and(|l| l.trim() == "ready"));
            let _ = tx.send(ready);
            // Keep draining so the arm never blocks on a full pipe.
            for _ in lines {}
        });
        match rx.recv_timeout(PROCESS_ARM_TIMEOUT) {
            Ok(true) => Ok(()),
            Ok(false) => bail!("arm {} exited without printing `ready`", self.name),
            Err(_) => bail!(
                "arm {} did not print `ready` within {PROCESS_ARM_TIMEOUT:?}",
                self.name
            ),
        }
    }
}

impl Arm for ProcessArm {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn filters(&self) -> bool {
        true
    }
    fn apply(&mut self, env: &ArmEnv<'_>) -> Result<()> {
        let allow: Vec<String> = env
            .allowed
            .iter()
            .map(|Service { addr, port }| format!("tcp:{addr}:{port}"))
            .collect();
        let envs = [
            (
                "ENFORCER_BENCH_CLIENT_CGROUP",
                env.topology.client_cgroup.display().to_string(),
            ),
            (
                "ENFORCER_BENCH_CLIENT_NETNS",
                env.topology.client_ns.clone(),
            ),
            (
                "ENFORCER_BENCH_SERVER_NETNS",
                env.topology.server_ns.clone(),
            ),
            ("ENFORCER_BENCH_ALLOW", allow.join(",")),
        ];
        self.start(&envs)
    }
    fn remove(&mut self, _env: &ArmEnv<'_>) -> Result<()> {
        self.stop()
    }
}

impl ProcessArm {
    /// Closes the command's stdin and waits for it to remove its filtering
    /// and exit.
    fn stop(&mut self) -> Result<()> {
        let Some((mut child, stdin)) = self.running.take() else {
            return Ok(());
        };
        drop(stdin);
        let deadline = Instant::now() + PROCESS_ARM_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                if !status.success() {
                    bail!(
                        "arm {} failed while removing its filtering ({status})",
                        self.name
                    );
                }
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "arm {} did not exit within {PROCESS_ARM_TIMEOUT:?} of its stdin closing",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ProcessArm {
    fn drop(&mut self) {
        if let Some((mut child, stdin)) = self.running.take() {
            drop(stdin);
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REAL: [Service; 2] = [
        Service {
            addr: Ipv4Addr::new(198, 51, 100, 2),
            port: 5001,
        },
        Service {
            addr: Ipv4Addr::new(198, 51, 100, 2),
            port: 5201,
        },
    ];

    #[test]
    fn allow_list_has_n_distinct_entries_with_the_real_ones_last() {
        for n in [2, 10, 1000, 10_000] {
            let list = allow_list(n, &REAL);
            assert_eq!(list.len(), n);
            let distinct: std::collections::HashSet<(Ipv4Addr, u16)> =
                list.iter().map(|s| (s.addr, s.port)).collect();
            assert_eq!(distinct.len(), n, "duplicates in a list of {n}");
            assert_eq!(list[n - 1].port, 5201);
            assert_eq!(list[n - 2].port, 5001);
            assert!(
                list[..n - 2]
                    .iter()
                    .all(|s| s.addr.octets()[..3] == [203, 0, 113])
            );
        }
    }

    #[test]
    fn iptables_ruleset_ends_with_the_real_services_and_drops_the_rest() {
        let text = Iptables { rules: 10 }.ruleset(&REAL);
        assert!(text.contains(":OUTPUT DROP") && text.contains(":INPUT DROP"));
        let output: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("-A OUTPUT"))
            .collect();
        let input: Vec<&str> = text.lines().filter(|l| l.starts_with("-A INPUT")).collect();
        assert_eq!((output.len(), input.len()), (10, 10));
        assert_eq!(
            output[9],
            "-A OUTPUT -d 198.51.100.2/32 -p tcp -m tcp --dport 5201 -j ACCEPT"
        );
        assert_eq!(
            input[8],
            "-A INPUT -s 198.51.100.2/32 -p tcp -m tcp --sport 5001 -j ACCEPT"
        );
        assert!(text.ends_with("COMMIT\n"));
    }

    #[test]
    fn nftables_ruleset_holds_the_list_as_one_set() {
        let text = Nftables { elements: 1000 }.ruleset(&REAL);
        assert_eq!(
            text.matches(" . ").count(),
            1000 + 1 + 2,
            "elements, the set type and the two rules"
        );
        assert!(text.contains("198.51.100.2 . 5001, 198.51.100.2 . 5201 }"));
        assert_eq!(text.matches("policy drop").count(), 2);
    }

    #[test]
    fn process_arm_spec_is_name_equals_command() {
        let arm = ProcessArm::parse("enforcer=target/debug/hold --x").unwrap();
        assert_eq!(arm.name(), "enforcer");
        assert_eq!(arm.command, "target/debug/hold --x");
        assert!(ProcessArm::parse("noequals").is_err());
        assert!(ProcessArm::parse("=cmd").is_err());
        assert!(ProcessArm::parse("bad name=cmd").is_err());
    }

    #[test]
    fn process_arm_waits_for_ready_and_for_exit_after_stdin_closes() {
        let mut arm =
            ProcessArm::parse("t=echo starting; echo ready; cat >/dev/null; exit 0").unwrap();
        arm.start(&[]).unwrap();
        let (child, _) = arm.running.as_mut().unwrap();
        assert!(
            child.try_wait().unwrap().is_none(),
            "must keep running while stdin is open"
        );
        arm.stop().unwrap();
        assert!(arm.running.is_none());

        let mut failing = ProcessArm::parse("t=echo ready; cat >/dev/null; exit 3").unwrap();
        failing.start(&[]).unwrap();
        assert!(failing.stop().is_err(), "a failed cleanup must be reported");

        let mut never_ready = ProcessArm::parse("t=echo nope").unwrap();
        assert!(never_ready.start(&[]).is_err());
    }
}
