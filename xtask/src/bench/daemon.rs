//! The real `enforcer run` daemon of the control-plane benchmark and of the
//! root-attached arm, in a [`Sandbox`] of its own: a fresh cgroup v2
//! directory as its cgroup root (the control plane) or the hierarchy's
//! root (the root arm, as in production), a private bpffs directory for its
//! pins, and a temporary directory for its socket, log and policies.
//! Everything is removed when the sandbox is dropped (after an error or
//! Ctrl-C too): the pins, and with them whatever the daemon attached, and
//! the fresh cgroup. The leftovers of a run killed with SIGKILL are removed
//! by the next run.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use enforcer_tests::{DaemonProcess, DaemonSpec};

use super::topology::remove_cgroup;
use crate::cmd::step;
use crate::setup;

/// Names of a control-plane sandbox's cgroup, bpffs and temporary
/// directories, followed by the benchmark's process id. Not
/// `enforcer-bench-`, so that the end-to-end topology's own stale cleanup
/// never mistakes them for its own.
pub(super) const CONTROL_PREFIX: &str = "enforcer-cpbench-";
/// The same for the root-attached arm's (which has no cgroup of its own).
pub(super) const ROOT_ARM_PREFIX: &str = "enforcer-rootbench-";
const BPFFS: &str = "/sys/fs/bpf";
/// How long the daemon may take to report READY=1, and to exit on SIGTERM.
const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a sandbox's daemon attaches its programs (`--cgroup-root`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CgroupRoot {
    /// A fresh, empty cgroup that the sandbox creates and removes.
    Fresh,
    /// The root of the cgroup v2 hierarchy: every socket of the host runs
    /// the programs, as in production.
    Hierarchy,
}

/// The directories one benchmark run gives its daemons.
pub(super) struct Sandbox {
    /// The release `enforcer` binary.
    enforcer: PathBuf,
    /// Socket, sd_notify socket, log and policy directories.
    pub dir: PathBuf,
    /// The daemon's `cgroup_root`: created empty by the sandbox, or the
    /// cgroup v2 mount.
    pub cgroup: PathBuf,
    /// The daemon's `bpffs` directory (created by the daemon).
    pub bpffs: PathBuf,
    created_dir: bool,
    created_cgroup: bool,
}

impl Sandbox {
    /// Removes what earlier runs of the same `prefix` left behind, then
    /// creates the directories of this run, named `prefix` and the
    /// benchmark's pid.
    pub(super) fn create(enforcer: &Path, prefix: &'static str, root: CgroupRoot) -> Result<Self> {
        let cgroup_mount = setup::cgroup2_mount()?;
        remove_stale(enforcer, prefix, &cgroup_mount)?;
        let name = format!("{prefix}{}", std::process::id());
        let mut sandbox = Self {
            enforcer: enforcer.to_path_buf(),
            dir: std::env::temp_dir().join(&name),
            cgroup: match root {
                CgroupRoot::Fresh => cgroup_mount.join(&name),
                CgroupRoot::Hierarchy => cgroup_mount,
            },
            bpffs: Path::new(BPFFS).join(&name),
            created_dir: false,
            created_cgroup: false,
        };
        // Recorded as soon as each exists, so that dropping a half-built
        // sandbox removes exactly what was made.
        fs::create_dir(&sandbox.dir)
            .with_context(|| format!("cannot create {}", sandbox.dir.display()))?;
        sandbox.created_dir = true;
        if root == CgroupRoot::Fresh {
            fs::create_dir(&sandbox.cgroup)
                .with_context(|| format!("cannot create cgroup {}", sandbox.cgroup.display()))?;
            sandbox.created_cgroup = true;
        }
        step(format!(
            "daemon sandbox: cgroup root {}, bpffs {}, files in {}",
            sandbox.cgroup.display(),
            sandbox.bpffs.display(),
            sandbox.dir.display()
        ));
        Ok(sandbox)
    }

    pub(super) fn socket(&self) -> PathBuf {
        self.dir.join("enforcer.sock")
    }

    /// Detaches the programs and removes the pins a daemon left under the
    /// sandbox's bpffs directory (`enforcer run --uninstall`), so that the
    /// next daemon starts from nothing rather than adopting them.
    pub(super) fn uninstall(&self) -> Result<()> {
        uninstall(&self.enforcer, &self.bpffs)
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Err(e) = self.uninstall() {
            eprintln!("warning: {e:#}");
        }
        if self.created_cgroup
            && let Err(e) = remove_cgroup(&self.cgroup)
        {
            eprintln!("warning: {e:#}");
        }
        if self.created_dir
            && let Err(e) = fs::remove_dir_all(&self.dir)
        {
            eprintln!("warning: cannot remove {}: {e}", self.dir.display());
        }
    }
}

/// `enforcer run --uninstall` on `bpffs`, then removes the directory
/// itself (whatever the uninstall could not, or everything when the binary
/// is not built yet).
fn uninstall(enforcer: &Path, bpffs: &Path) -> Result<()> {
    Ok(enforcer_tests::daemon::uninstall(enforcer, bpffs)?)
}

/// Removes the sandboxes of earlier runs killed with SIGKILL, of the
/// control plane and of the root arm, whichever this run measures: a root
/// arm's pins keep its programs attached at the cgroup root until then.
pub(super) fn remove_stale_sandboxes(enforcer: &Path) -> Result<()> {
    let cgroup_mount = setup::cgroup2_mount()?;
    for prefix in [CONTROL_PREFIX, ROOT_ARM_PREFIX] {
        remove_stale(enforcer, prefix, &cgroup_mount)?;
    }
    Ok(())
}

/// Removes sandboxes named `prefix` of earlier runs whose process is gone.
/// Their daemon died with them (it is started with a parent-death signal);
/// what it attached stays until its pins are uninstalled, here.
fn remove_stale(enforcer: &Path, prefix: &str, cgroup_mount: &Path) -> Result<()> {
    let stale = |dir: &Path| -> Result<Vec<PathBuf>> {
        let mut found = Vec::new();
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if stale_pid(&name, prefix).is_some_and(|pid| !Path::new("/proc").join(pid).exists()) {
                found.push(entry.path());
            }
        }
        Ok(found)
    };
    for bpffs in stale(Path::new(BPFFS))? {
        step(format!(
            "removing pins {} left by an earlier run",
            bpffs.display()
        ));
        uninstall(enforcer, &bpffs)?;
    }
    for cgroup in stale(cgroup_mount)? {
        step(format!(
            "removing cgroup {} left by an earlier run",
            cgroup.display()
        ));
        remove_cgroup(&cgroup)?;
    }
    for dir in stale(&std::env::temp_dir())? {
        step(format!("removing {} left by an earlier run", dir.display()));
        fs::remove_dir_all(&dir).with_context(|| format!("cannot remove {}", dir.display()))?;
    }
    Ok(())
}

/// The process id in a sandbox directory's name.
fn stale_pid<'a>(name: &'a str, prefix: &str) -> Option<&'a str> {
    name.strip_prefix(prefix)
        .filter(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
}

/// Resident memory of a process, from `/proc/PID/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Memory {
    /// `VmRSS`: resident now.
    pub rss_kib: u64,
    /// `VmHWM`: the most it was ever resident.
    pub peak_kib: u64,
}

/// Reads `VmRSS` and `VmHWM` (in kB) from the text of `/proc/PID/status`.
pub(super) fn parse_status(text: &str) -> Result<Memory> {
    let field = |name: &str| {
        enforcer_bench::proc_status::kib(text, name)
            .with_context(|| format!("no {name} size in kB in /proc/PID/status"))
    };
    Ok(Memory {
        rss_kib: field("VmRSS")?,
        peak_kib: field("VmHWM")?,
    })
}

/// A running `enforcer run` (the test toolkit's), killed and reaped when
/// dropped.
pub(super) struct Daemon {
    spec: DaemonSpec,
    process: DaemonProcess,
}

impl Daemon {
    /// Starts the daemon on the sandbox with `policies` as its policy
    /// directory, and waits until it reports READY=1 (sd_notify): the
    /// programs are attached and the socket answers.
    pub(super) fn start(sandbox: &Sandbox, policies: &Path) -> Result<Self> {
        let spec = DaemonSpec::new(
            &sandbox.enforcer,
            policies,
            &sandbox.cgroup,
            &sandbox.bpffs,
            &sandbox.dir,
        )
        .socket(sandbox.socket())
        .ready_timeout(START_TIMEOUT)
        // Ctrl-C reaches the benchmark, whose guards then stop the daemon
        // in order; a benchmark killed with SIGKILL takes its daemon along.
        .own_process_group();
        let process = spec
            .start()
            .with_context(|| format!("could not start {} run", sandbox.enforcer.display()))?;
        Ok(Self { spec, process })
    }

    pub(super) fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Its resident memory now.
    pub(super) fn memory(&self) -> Result<Memory> {
        let path = format!("/proc/{}/status", self.pid());
        let text = fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        parse_status(&text).with_context(|| format!("in {path}"))
    }

    /// The end of its log, for error messages.
    pub(super) fn log_tail(&self) -> String {
        self.spec.log_tail(20)
    }

    /// SIGSTOP, and waits until every thread of the daemon is stopped: it
    /// runs nothing (no integrity check, no rescan) until [`Daemon::thaw`].
    /// Its programs stay attached.
    pub(super) fn freeze(&mut self) -> Result<()> {
        Ok(self.process.freeze(STOP_TIMEOUT)?)
    }

    /// SIGCONT after [`Daemon::freeze`].
    pub(super) fn thaw(&mut self) -> Result<()> {
        Ok(self.process.thaw()?)
    }

    /// SIGTERM (after SIGCONT when frozen), and waits for a clean exit
    /// (SIGKILL when dropped after a timeout).
    pub(super) fn stop(mut self) -> Result<()> {
        let status = self.process.stop(libc::SIGTERM, STOP_TIMEOUT)?;
        if !status.success() {
            bail!("the daemon exited with {status}:\n{}", self.log_tail());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_gives_rss_and_peak_in_kib() {
        let text = "Name:\tenforcer\nVmPeak:\t  123456 kB\nVmHWM:\t   24576 kB\nVmRSS:\t   12288 kB\nRssAnon:\t    8000 kB\n";
        assert_eq!(
            parse_status(text).unwrap(),
            Memory {
                rss_kib: 12_288,
                peak_kib: 24_576
            }
        );
    }

    #[test]
    fn status_without_the_fields_is_an_error() {
        assert!(parse_status("Name:\tkthreadd\nState:\tS (sleeping)\n").is_err());
        assert!(parse_status("VmHWM:\t1 kB\nVmRSS:\tlots kB\n").is_err());
        assert!(parse_status("VmHWM:\t1 kB\nVmRSS:\t2 MB\n").is_err());
        // `VmRSSx` is not `VmRSS`.
        assert!(parse_status("VmHWM:\t1 kB\nVmRSSx:\t2 kB\n").is_err());
    }

    #[test]
    fn the_status_of_this_process_parses() {
        let text = fs::read_to_string("/proc/self/status").unwrap();
        let memory = parse_status(&text).unwrap();
        assert!(memory.rss_kib > 0 && memory.peak_kib >= memory.rss_kib);
    }

    #[test]
    fn stale_names_end_with_a_pid() {
        assert_eq!(
            stale_pid("enforcer-cpbench-4242", CONTROL_PREFIX),
            Some("4242")
        );
        assert_eq!(stale_pid("enforcer-cpbench-", CONTROL_PREFIX), None);
        assert_eq!(stale_pid("enforcer-cpbench-12-x", CONTROL_PREFIX), None);
        assert_eq!(stale_pid("enforcer-bench-4242", CONTROL_PREFIX), None);
        assert_eq!(stale_pid("enforcer-bench-4242", ROOT_ARM_PREFIX), None);
        assert_eq!(stale_pid("enforcer-cpbench-4242", ROOT_ARM_PREFIX), None);
        assert_eq!(
            stale_pid("enforcer-rootbench-7", ROOT_ARM_PREFIX),
            Some("7")
        );
    }
}
