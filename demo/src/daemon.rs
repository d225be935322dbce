//! The enforcer daemon (`enforcer run`) as a child of the demo, with its own
//! pin directory and socket, and the demo's cgroup root. Stopped and
//! uninstalled on drop: the daemon leaves its programs pinned and enforcing
//! when it exits (so that a restart never opens the host), so the demo
//! removes them with `enforcer run --uninstall`.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use enforcer::api::{Client, FlowRecord, Request, Response, StatusReport};
use enforcer_tests::{DaemonProcess, DaemonSpec};

/// How long the daemon may take to put the policy in force.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long it may take to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a verdict event may take to reach the daemon's history.
const EVENT_TIMEOUT: Duration = Duration::from_millis(300);

/// A running `enforcer run`: the test toolkit's daemon harness with the
/// demo's paths.
pub(crate) struct Daemon {
    spec: DaemonSpec,
    process: Option<DaemonProcess>,
    /// Flow records already handed out.
    seen: usize,
}

/// The `enforcer` binary, built next to this one (`cargo xtask demo`
/// builds both).
pub(crate) fn enforcer_binary() -> Result<PathBuf> {
    let me = std::env::current_exe().context("locating enforcer-demo")?;
    let path = me.with_file_name("enforcer");
    if !path.is_file() {
        bail!(
            "{} not found: build it (`cargo build --release -p enforcer`, which `cargo xtask demo` does), \
             or run the demo with --library",
            path.display()
        );
    }
    Ok(path)
}

/// Where the demo's daemon keeps things, named by the demo's pid.
pub(crate) struct Paths {
    /// `--socket`.
    pub socket: PathBuf,
    /// `--bpffs`.
    pub bpffs: PathBuf,
    /// `--state-dir`: the demo's own (never the machine's
    /// `/var/lib/enforcer`).
    pub state_dir: PathBuf,
    /// The daemon's log and sd_notify socket.
    pub files: PathBuf,
}

impl Paths {
    /// Everything the demo's daemon may leave, for the cleanup check.
    pub(crate) fn all(&self) -> [&Path; 4] {
        [&self.socket, &self.bpffs, &self.state_dir, &self.files]
    }
}

/// The daemon's socket, pin directory, state and files: the demo's own, by
/// its pid.
pub(crate) fn paths() -> Paths {
    let tag = format!("enforcer-demo-{}", std::process::id());
    let socket = PathBuf::from("/run").join(format!("{tag}.sock"));
    Paths {
        bpffs: PathBuf::from("/sys/fs/bpf").join(&tag),
        state_dir: socket.with_extension("state"),
        files: socket.with_extension("files"),
        socket,
    }
}

impl Daemon {
    /// Starts the daemon and waits until the policy is in force with every
    /// one of `expect_cgroups` (relative to `cgroup_root`) resolved.
    pub(crate) fn start(
        enforcer: &Path,
        policies: &Path,
        cgroup_root: &Path,
        expect_cgroups: usize,
    ) -> Result<Daemon> {
        let paths = paths();
        let policies = std::path::absolute(policies)
            .with_context(|| format!("resolving {}", policies.display()))?;
        std::fs::create_dir(&paths.files)
            .with_context(|| format!("creating {}", paths.files.display()))?;
        let spec = DaemonSpec::new(enforcer, policies, cgroup_root, &paths.bpffs, &paths.files)
            .socket(&paths.socket)
            .state_dir(&paths.state_dir)
            // The example denies SSH from the office on purpose; the
            // default failsafe (22/tcp) would keep it open.
            .args(["--failsafe", "none"])
            .env_remove("ENFORCER_SOCKET")
            .ready_timeout(READY_TIMEOUT);
        // Made before it starts, so that a failed start cleans up too.
        let mut daemon = Daemon {
            spec,
            process: None,
            seen: 0,
        };
        let started = Instant::now();
        daemon.process = Some(daemon.spec.start().context("starting enforcer run")?);
        daemon.wait_resolved(expect_cgroups, started + READY_TIMEOUT)?;
        Ok(daemon)
    }

    /// The settings every client invocation shares: no socket of this
    /// machine's daemon.
    fn base(&self) -> Command {
        let mut cmd = Command::new(self.spec.binary());
        cmd.env_remove("ENFORCER_SOCKET");
        cmd
    }

    /// Waits (after READY=1) until the status shows the policy and every
    /// expected cgroup.
    fn wait_resolved(&mut self, expect_cgroups: usize, deadline: Instant) -> Result<()> {
        loop {
            if let Some(process) = self.process.as_mut()
                && let Some(status) = process.try_wait()?
            {
                bail!(
                    "enforcer run exited ({status}) at start:\n{}",
                    self.spec.log().trim()
                );
            }
            if let Ok(status) = self.status() {
                let cgroups: usize = status.workloads.iter().map(|w| w.cgroups.len()).sum();
                if status.policy.is_some() && cgroups >= expect_cgroups {
                    if !status.not_enforced.is_empty() {
                        bail!("the daemon reports: {}", status.not_enforced.join("; "));
                    }
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "enforcer run did not put the policy in force within {READY_TIMEOUT:?}:\n{}",
                    self.spec.log().trim()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(DaemonProcess::pid)
    }

    pub(crate) fn socket(&self) -> &Path {
        self.spec.socket_path()
    }

    pub(crate) fn bpffs(&self) -> &Path {
        self.spec.bpffs()
    }

    fn client(&self) -> Result<Client> {
        let client = Client::connect(self.spec.socket_path())?;
        client.set_timeout(Some(Duration::from_secs(5)))?;
        Ok(client)
    }

    /// The daemon's `status` answer.
    pub(crate) fn status(&self) -> Result<StatusReport> {
        match self.client()?.call(&Request::Status)? {
            Response::Status(report) => Ok(*report),
            other => bail!("unexpected answer to status: {other:?}"),
        }
    }

    /// Every flow record of the history.
    fn flows(&self) -> Result<Vec<FlowRecord>> {
        let mut client = self.client()?;
        client.send(&Request::Flows {
            follow: false,
            workload: None,
            verdict: None,
        })?;
        let mut out = Vec::new();
        while let Some(response) = client.receive()? {
            match response {
                Response::Flow(record) => out.push(record),
                Response::End => break,
                other => bail!("unexpected answer to flows: {other:?}"),
            }
        }
        Ok(out)
    }

    /// The new flow records; when `wanted` is given, waits (briefly) until
    /// one satisfies it, since the daemon reads the kernel's events
    /// asynchronously.
    pub(crate) fn new_records(
        &mut self,
        wanted: Option<&dyn Fn(&FlowRecord) -> bool>,
    ) -> Result<Vec<FlowRecord>> {
        let deadline = Instant::now() + EVENT_TIMEOUT;
        let mut fresh = Vec::new();
        loop {
            let all = self.flows()?;
            fresh.extend(all.iter().skip(self.seen).cloned());
            self.seen = all.len().max(self.seen);
            let done = match wanted {
                None => true,
                Some(f) => fresh.iter().any(f),
            };
            if done || Instant::now() > deadline {
                return Ok(fresh);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs `enforcer ARGS --socket SOCKET` and returns what it printed.
    pub(crate) fn cli(&self, args: &[&str]) -> Result<String> {
        let out = self
            .base()
            .args(args)
            .arg("--socket")
            .arg(self.spec.socket_path())
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running enforcer {}", args.join(" ")))?;
        if !out.status.success() {
            bail!(
                "enforcer {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// SIGTERM, wait, then remove the pins. Reports what went wrong.
    fn stop(&mut self) -> Result<()> {
        if let Some(mut process) = self.process.take() {
            // The daemon may already have had the terminal's SIGINT.
            if process.stop(libc::SIGTERM, STOP_TIMEOUT).is_err() {
                eprintln!("enforcer-demo: enforcer run ignored SIGTERM; killing it");
            }
            drop(process);
        }
        let mut problems = Vec::new();
        if let Err(e) = enforcer_tests::daemon::uninstall(self.spec.binary(), self.spec.bpffs()) {
            problems.push(e.to_string());
        }
        for dir in [self.spec.state_dir_path(), self.spec.files()] {
            if let Err(e) = std::fs::remove_dir_all(dir)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                problems.push(format!("removing {}: {e}", dir.display()));
            }
        }
        if self.spec.socket_path().exists()
            && let Err(e) = std::fs::remove_file(self.spec.socket_path())
        {
            problems.push(format!(
                "removing {}: {e}",
                self.spec.socket_path().display()
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            bail!("{}", problems.join("; "))
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("enforcer-demo: stopping the daemon: {e:#}");
        }
    }
}

/// The port of an `ADDR:PORT` / `[ADDR]:PORT` of a flow record.
pub(crate) fn port_of(addr: &str) -> Option<u16> {
    addr.parse::<SocketAddr>().ok().map(|a| a.port())
}
