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
use enforcer_tests::{ChildGuard, Spawner};

/// How long the daemon may take to put the policy in force.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long it may take to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a verdict event may take to reach the daemon's history.
const EVENT_TIMEOUT: Duration = Duration::from_millis(300);

/// A running `enforcer run`.
pub(crate) struct Daemon {
    child: Option<ChildGuard>,
    enforcer: PathBuf,
    socket: PathBuf,
    bpffs: PathBuf,
    /// `--state-dir`: the demo's own (never the machine's
    /// `/var/lib/enforcer`), removed when it stops.
    state_dir: PathBuf,
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

/// The daemon's socket and pin directory: the demo's own, by its pid.
pub(crate) fn paths() -> (PathBuf, PathBuf) {
    let tag = format!("enforcer-demo-{}", std::process::id());
    (
        PathBuf::from("/run").join(format!("{tag}.sock")),
        PathBuf::from("/sys/fs/bpf").join(tag),
    )
}

impl Daemon {
    /// The settings every invocation shares: no configuration file of this
    /// machine, the demo's own pins.
    fn base(&self) -> Command {
        let mut cmd = Command::new(&self.enforcer);
        cmd.env_remove("ENFORCER_SOCKET");
        cmd
    }

    /// Starts the daemon and waits until the policy is in force with every
    /// one of `expect_cgroups` (relative to `cgroup_root`) resolved.
    pub(crate) fn start(
        enforcer: &Path,
        policies: &Path,
        cgroup_root: &Path,
        expect_cgroups: usize,
    ) -> Result<Daemon> {
        let (socket, bpffs) = paths();
        let mut daemon = Daemon {
            child: None,
            enforcer: enforcer.to_path_buf(),
            // Checked by the demo's cleanup check under the same name.
            state_dir: socket.with_extension("state"),
            socket,
            bpffs,
            seen: 0,
        };
        let policies = std::path::absolute(policies)
            .with_context(|| format!("resolving {}", policies.display()))?;
        let args: Vec<std::ffi::OsString> = vec![
            "run".into(),
            // An empty configuration: nothing of /etc/enforcer applies.
            "--config".into(),
            "/dev/null".into(),
            "--policies".into(),
            policies.into(),
            "--cgroup-root".into(),
            cgroup_root.into(),
            "--bpffs".into(),
            daemon.bpffs.clone().into(),
            "--socket".into(),
            daemon.socket.clone().into(),
            "--state-dir".into(),
            daemon.state_dir.clone().into(),
            // The example denies SSH from the office on purpose; the
            // default failsafe (22/tcp) would keep it open.
            "--failsafe".into(),
            "none".into(),
        ];
        let child = Spawner::from_command(daemon.base())
            .args(&args)
            .stdout(Stdio::null())
            .spawn()
            .context("starting enforcer run")?;
        daemon.child = Some(child);
        daemon.wait_ready(expect_cgroups)?;
        Ok(daemon)
    }

    fn wait_ready(&mut self, expect_cgroups: usize) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && !child.is_running()
            {
                bail!("enforcer run exited at start:\n{}", child.stderr().trim());
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
                let stderr = self.child.as_ref().map(ChildGuard::stderr);
                bail!(
                    "enforcer run did not put the policy in force within {READY_TIMEOUT:?}:\n{}",
                    stderr.unwrap_or_default().trim()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(ChildGuard::pid)
    }

    pub(crate) fn socket(&self) -> &Path {
        &self.socket
    }

    pub(crate) fn bpffs(&self) -> &Path {
        &self.bpffs
    }

    fn client(&self) -> Result<Client> {
        let client = Client::connect(&self.socket)?;
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
            .arg(&self.socket)
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
        if let Some(mut child) = self.child.take() {
            if child.is_running() {
                // The daemon may already have had the terminal's SIGINT.
                let _ = child.signal(libc::SIGTERM);
                if child.wait_timeout(STOP_TIMEOUT).is_none() {
                    eprintln!("enforcer-demo: enforcer run ignored SIGTERM; killing it");
                }
            }
            drop(child);
        }
        let mut problems = Vec::new();
        if let Err(e) = std::fs::remove_dir_all(&self.state_dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            problems.push(format!("removing {}: {e}", self.state_dir.display()));
        }
        if self.bpffs.exists() {
            let out = self
                .base()
                .args(["run", "--config", "/dev/null", "--uninstall", "--bpffs"])
                .arg(&self.bpffs)
                .stdin(Stdio::null())
                .output();
            match out {
                Ok(o) if o.status.success() => {}
                Ok(o) => problems.push(format!(
                    "enforcer run --uninstall failed ({}): {}",
                    o.status,
                    String::from_utf8_lossy(&o.stderr).trim()
                )),
                Err(e) => problems.push(format!("enforcer run --uninstall: {e}")),
            }
            // Whatever --uninstall left (it removes the directory when it
            // removed everything in it).
            if self.bpffs.exists()
                && let Err(e) = std::fs::remove_dir_all(&self.bpffs)
            {
                problems.push(format!("removing {}: {e}", self.bpffs.display()));
            }
        }
        if self.socket.exists()
            && let Err(e) = std::fs::remove_file(&self.socket)
        {
            problems.push(format!("removing {}: {e}", self.socket.display()));
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
