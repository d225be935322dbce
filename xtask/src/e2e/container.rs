//! A booted Debian under `systemd-nspawn`, and the guard that always takes it
//! down again.
//!
//! Each run boots an overlay of the cached image (writes go to a per-run
//! upper directory, the image stays pristine) in a cgroup of its own below
//! the host's cgroup v2 root, with a private network namespace that has only
//! loopback. The container's systemd therefore sees that cgroup as its root:
//! the enforcer inside attaches its programs there, never to the host's root
//! cgroup, and every packet the test sends stays inside the container.
//!
//! Teardown (on drop, so on every error path too) asks the container to power
//! off, then kills whatever is left through `cgroup.kill`, removes the
//! cgroups (which detaches any program the enforcer left attached), unmounts
//! everything below the run directory and deletes it. A run killed outright
//! is cleaned up by the next one ([`reap_stale_runs`]).

use std::fs;
use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::cmd::{self, step};

use super::image::CACHE_DIR;

/// Capabilities the container's bounding set must keep for the enforcer to
/// load programs and attach them to cgroups (see the recipe in
/// docs/install.md's test notes).
const CAPABILITIES: &str = "CAP_BPF,CAP_NET_ADMIN,CAP_PERFMON,CAP_SYS_ADMIN";

const BOOT_TIMEOUT: Duration = Duration::from_secs(90);
const POWEROFF_TIMEOUT: Duration = Duration::from_secs(20);

/// A running container.
pub(super) struct Container {
    run_dir: PathBuf,
    cgroup: PathBuf,
    nspawn: Option<Child>,
    init_pid: u32,
}

impl Container {
    /// Boots an overlay of `image` and waits until its systemd has finished
    /// starting up.
    pub(super) fn boot(image: &Path) -> Result<Self> {
        let run_dir = Path::new(CACHE_DIR)
            .join("runs")
            .join(std::process::id().to_string());
        let cgroup = cgroup2_root()?.join(format!("enforcer-e2e-{}", std::process::id()));
        let mut container = Self {
            run_dir,
            cgroup,
            nspawn: None,
            init_pid: 0,
        };
        // From here on, drop tears down whatever was set up.
        container.start(image)?;
        Ok(container)
    }

    fn start(&mut self, image: &Path) -> Result<()> {
        let root = self.run_dir.join("root");
        for dir in ["root", "upper", "work", "bpffs"] {
            fs::create_dir_all(self.run_dir.join(dir))
                .with_context(|| format!("cannot create {}", self.run_dir.join(dir).display()))?;
        }
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            image.display(),
            self.run_dir.join("upper").display(),
            self.run_dir.join("work").display()
        );
        cmd::run(
            Command::new("mount")
                .args(["-t", "overlay", "overlay", "-o", &options])
                .arg(&root),
        )?;

        // A host booted with systemd has a bpffs at /sys/fs/bpf; nspawn's
        // /sys has none (and is read-only), so the container gets a fresh
        // bpffs instance of its own there, never the host's pins.
        let bpffs = self.run_dir.join("bpffs");
        cmd::run(Command::new("mount").args(["-t", "bpf", "bpf"]).arg(&bpffs))?;

        fs::create_dir(&self.cgroup)
            .with_context(|| format!("cannot create the cgroup {}", self.cgroup.display()))?;

        let console = self.run_dir.join("console.log");
        let log = fs::File::create(&console)
            .with_context(|| format!("cannot create {}", console.display()))?;
        let mut nspawn = Command::new("systemd-nspawn");
        nspawn
            // bpf() map creation fails with EPERM under nspawn's seccomp filter.
            .env("SYSTEMD_SECCOMP", "0")
            // A full cgroup v2 hierarchy inside, even on a hybrid host.
            .env("SYSTEMD_NSPAWN_UNIFIED_HIERARCHY", "1")
            .arg("-D")
            .arg(&root)
            // No host systemd to register with: use our own cgroup as is.
            .args([
                "--keep-unit",
                "--register=no",
                "--boot",
                "--console=passive",
            ])
            .arg(format!("--machine=enforcer-e2e-{}", std::process::id()))
            .arg("--private-network")
            .arg(format!("--bind={}:/sys/fs/bpf", bpffs.display()))
            .arg(format!("--capability={CAPABILITIES}"))
            .stdin(Stdio::null())
            .stdout(
                log.try_clone()
                    .context("cannot duplicate the console log")?,
            )
            .stderr(log);
        let procs = self.cgroup.join("cgroup.procs");
        // SAFETY: between fork and exec the closure only opens and writes a
        // file and creates a process group: no allocation-dependent locks are
        // held by the child (the path is built before the fork).
        unsafe {
            nspawn.pre_exec(move || {
                // Into the container's cgroup before exec, so nothing of it
                // ever runs in the host's root cgroup.
                fs::OpenOptions::new()
                    .write(true)
                    .open(&procs)?
                    .write_all(b"0")?;
                // Its own process group: a Ctrl-C on the terminal reaches only
                // this program, whose guard then tears the container down.
                libc::setpgid(0, 0);
                Ok(())
            });
        }
        println!("+ {}", cmd::display(&nspawn));
        let child = nspawn.spawn().context("cannot start systemd-nspawn")?;
        let nspawn_pid = child.id();
        self.nspawn = Some(child);

        let started = Instant::now();
        self.init_pid = loop {
            if let Some(pid) = find_init(nspawn_pid) {
                break pid;
            }
            if let Some(child) = self.nspawn.as_mut()
                && let Some(status) = child.try_wait().context("cannot wait for systemd-nspawn")?
            {
                bail!(
                    "systemd-nspawn exited ({status}) before the container started:\n{}",
                    self.console_tail()
                );
            }
            if started.elapsed() > BOOT_TIMEOUT {
                bail!(
                    "the container's init did not appear:\n{}",
                    self.console_tail()
                );
            }
            sleep(Duration::from_millis(100));
        };

        let state = self.wait_booted(started)?;
        step(format!(
            "container booted in {:.1?}: pid 1 is host pid {}, system state `{state}`",
            started.elapsed(),
            self.init_pid
        ));
        if state == "degraded" {
            let failed = self.exec(&["systemctl", "--failed", "--no-legend", "--plain"])?;
            step(format!(
                "failed units in the container (accepted, reported):\n{}",
                String::from_utf8_lossy(&failed.stdout).trim_end()
            ));
        }
        Ok(())
    }

    /// Waits for `systemctl is-system-running` to leave `starting`:
    /// `running` and `degraded` are accepted.
    fn wait_booted(&mut self, started: Instant) -> Result<String> {
        loop {
            let output = self.exec(&["systemctl", "is-system-running"])?;
            let state = String::from_utf8_lossy(&output.stdout).trim().to_string();
            match state.as_str() {
                "running" | "degraded" => return Ok(state),
                "initializing" | "starting" | "" => {}
                other => bail!(
                    "the container's systemd is `{other}`, not running:\n{}",
                    self.console_tail()
                ),
            }
            if started.elapsed() > BOOT_TIMEOUT {
                bail!(
                    "the container was still `{state}` after {BOOT_TIMEOUT:?}:\n{}",
                    self.console_tail()
                );
            }
            sleep(Duration::from_millis(200));
        }
    }

    /// A command inside the container (all its namespaces), as root.
    pub(super) fn command(&self, argv: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg("-t")
            .arg(self.init_pid.to_string())
            .args(["-a", "--"])
            .args(argv)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("LANG", "C.UTF-8")
            .env("SYSTEMD_PAGER", "")
            .env("SYSTEMD_COLORS", "0");
        cmd
    }

    /// Runs `argv` inside and returns its output whatever its status.
    pub(super) fn exec(&self, argv: &[&str]) -> Result<Output> {
        if super::interrupted() {
            bail!(
                "interrupted (SIGINT/SIGTERM): stopping before `{}`",
                shell_line(argv)
            );
        }
        cmd::probe(&mut self.command(argv))
    }

    /// Runs `argv` inside, echoing it and its output; fails unless it
    /// exits 0.
    pub(super) fn run(&self, argv: &[&str]) -> Result<String> {
        println!("[container]# {}", shell_line(argv));
        let output = self.exec(argv)?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr);
        print_indented(&stdout);
        print_indented(&stderr);
        if !output.status.success() {
            bail!(
                "`{}` failed in the container ({})",
                shell_line(argv),
                output.status
            );
        }
        Ok(stdout)
    }

    /// Copies a host file into the container's file system.
    pub(super) fn copy_in(&self, from: &Path, to: &str) -> Result<()> {
        let dest = self.root().join(to.trim_start_matches('/'));
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        fs::copy(from, &dest)
            .with_context(|| format!("cannot copy {} to {}", from.display(), dest.display()))?;
        Ok(())
    }

    /// Writes a file inside the container.
    pub(super) fn write(&self, path: &str, contents: &str) -> Result<()> {
        let dest = self.root().join(path.trim_start_matches('/'));
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        fs::write(&dest, contents).with_context(|| format!("cannot write {}", dest.display()))
    }

    /// The container's cgroup on the host: its systemd's root cgroup.
    pub(super) fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    /// The container's root directory as seen from the host.
    pub(super) fn root(&self) -> PathBuf {
        self.run_dir.join("root")
    }

    fn console_tail(&self) -> String {
        let text = fs::read_to_string(self.run_dir.join("console.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn teardown(&mut self) {
        if let Some(mut nspawn) = self.nspawn.take() {
            // SIGTERM makes nspawn ask the container's systemd to power off.
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe {
                libc::kill(nspawn.id() as libc::pid_t, libc::SIGTERM);
            }
            let started = Instant::now();
            loop {
                match nspawn.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if started.elapsed() > POWEROFF_TIMEOUT => {
                        eprintln!("e2e teardown: the container did not power off, killing it");
                        let _ = nspawn.kill();
                        let _ = nspawn.wait();
                        break;
                    }
                    Ok(None) => sleep(Duration::from_millis(100)),
                }
            }
        }
        reap(&self.run_dir, &self.cgroup);
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Kills whatever is left in `cgroup` and removes it, unmounts everything
/// below `run_dir` and deletes it. Safe to call on parts that do not exist.
fn reap(run_dir: &Path, cgroup: &Path) {
    if cgroup.exists() {
        // cgroup.kill (Linux 5.14) SIGKILLs every process of the subtree.
        if let Err(e) = fs::write(cgroup.join("cgroup.kill"), "1") {
            eprintln!("e2e teardown: cannot kill {}: {e}", cgroup.display());
        }
        let started = Instant::now();
        while let Err(e) = remove_cgroup_tree(cgroup) {
            if started.elapsed() > Duration::from_secs(10) {
                eprintln!(
                    "e2e teardown: cannot remove the cgroup {}: {e}",
                    cgroup.display()
                );
                break;
            }
            sleep(Duration::from_millis(100));
        }
    }
    for mount in mounts_below(run_dir) {
        let status = Command::new("umount")
            .arg("--lazy")
            .arg(&mount)
            .stderr(Stdio::null())
            .status();
        if !status.is_ok_and(|s| s.success()) {
            eprintln!("e2e teardown: cannot unmount {}", mount.display());
        }
    }
    if run_dir.exists()
        && let Err(e) = fs::remove_dir_all(run_dir)
    {
        eprintln!("e2e teardown: cannot remove {}: {e}", run_dir.display());
    }
}

/// Depth-first rmdir of a cgroup subtree (cgroupfs has no recursive remove).
fn remove_cgroup_tree(dir: &Path) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            remove_cgroup_tree(&entry.path())?;
        }
    }
    match fs::remove_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Mount points at or below `dir`, deepest first.
fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let Ok(mountinfo) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut mounts: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|point| PathBuf::from(unescape_mountinfo(point)))
        .filter(|point| point.starts_with(dir))
        .collect();
    mounts.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    mounts.dedup();
    mounts
}

fn unescape_mountinfo(field: &str) -> String {
    field
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Cleans up after earlier runs that were killed before their guard ran:
/// their cgroups, mounts and directories, keyed by the pid that created them.
pub(super) fn reap_stale_runs() -> Result<()> {
    let cgroup_root = cgroup2_root()?;
    let runs = Path::new(CACHE_DIR).join("runs");
    let mut pids: Vec<u32> = Vec::new();
    if let Ok(entries) = fs::read_dir(&runs) {
        pids.extend(
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok()),
        );
    }
    if let Ok(entries) = fs::read_dir(&cgroup_root) {
        pids.extend(entries.flatten().filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix("enforcer-e2e-")?
                .parse::<u32>()
                .ok()
        }));
    }
    pids.sort_unstable();
    pids.dedup();
    for pid in pids {
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        step(format!(
            "cleaning up after an earlier run that was killed (pid {pid})"
        ));
        reap(
            &runs.join(pid.to_string()),
            &cgroup_root.join(format!("enforcer-e2e-{pid}")),
        );
    }
    Ok(())
}

/// The host's cgroup v2 mount point, from /proc/self/mountinfo (it is
/// /sys/fs/cgroup/unified on hybrid hosts).
fn cgroup2_root() -> Result<PathBuf> {
    let mountinfo =
        fs::read_to_string("/proc/self/mountinfo").context("cannot read /proc/self/mountinfo")?;
    mountinfo
        .lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            (right.split(' ').next() == Some("cgroup2")).then(|| {
                left.split(' ')
                    .nth(4)
                    .map(|p| PathBuf::from(unescape_mountinfo(p)))
            })?
        })
        .context("no cgroup v2 hierarchy is mounted on this host")
}

/// The container's PID 1 among the descendants of `nspawn_pid`: the process
/// whose innermost pid namespace number is 1.
fn find_init(nspawn_pid: u32) -> Option<u32> {
    let mut queue = vec![nspawn_pid];
    while let Some(pid) = queue.pop() {
        // A process that exited meanwhile is simply skipped.
        let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let nspid: Vec<&str> = status
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .map(|l| l.split_whitespace().collect())
            .unwrap_or_default();
        if nspid.len() > 1 && nspid.last() == Some(&"1") {
            return Some(pid);
        }
        let children =
            fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        queue.extend(
            children
                .split_whitespace()
                .filter_map(|c| c.parse::<u32>().ok()),
        );
    }
    None
}

/// `argv` as a shell line, for the log.
pub(super) fn shell_line(argv: &[&str]) -> String {
    let mut cmd = Command::new(argv.first().copied().unwrap_or_default());
    cmd.args(argv.iter().skip(1));
    cmd::display(&cmd)
}

pub(super) fn print_indented(text: &str) {
    for line in text.lines() {
        println!("    {line}");
    }
}
