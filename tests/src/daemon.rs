//! A real `enforcer run` as a child process: the one daemon harness of the
//! root tests, the demo, the benchmarks and the memory example.
//!
//! [`DaemonSpec`] says where the daemon lives (its binary, policy
//! directory, `--cgroup-root`, `--bpffs`, `--socket`, `--state-dir`, and a
//! directory for its sd_notify socket and log) and how it runs (more
//! options, a wrapper command, environment); [`DaemonSpec::start`] starts
//! it and waits for READY=1, i.e. enforcement in place. The running
//! [`DaemonProcess`] is killed and reaped when dropped. Its pins outlive it
//! on purpose (a daemon that exits never opens the host), so whoever chose
//! the bpffs directory removes them with [`uninstall`].
//!
//! Nothing here links the enforcer: the daemon is driven through its
//! command line, its sd_notify messages, signals and `/proc`, so that
//! `xtask` uses it without building the enforcer crate. Callers that speak
//! the daemon's API bring their own client.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Read as _;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// How often a wait for an sd_notify message looks at the child again.
const NOTIFY_POLL: Duration = Duration::from_millis(100);

/// How to run one `enforcer run`; [`DaemonSpec::start`] may be called again
/// for a restart with the same settings.
#[derive(Clone, Debug)]
pub struct DaemonSpec {
    binary: PathBuf,
    policies: PathBuf,
    cgroup_root: PathBuf,
    bpffs: PathBuf,
    files: PathBuf,
    socket: PathBuf,
    state_dir: PathBuf,
    extra: Vec<OsString>,
    wrapper: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    env_remove: Vec<OsString>,
    ready_timeout: Duration,
    own_process_group: bool,
}

impl DaemonSpec {
    /// `binary run --config /dev/null --policies POLICIES --cgroup-root
    /// CGROUP_ROOT --bpffs BPFFS`, with its socket (`enforcer.sock`), state
    /// directory (`state`), sd_notify socket (`notify.sock`) and log
    /// (`daemon.log`, its stderr) in `files`, an existing directory.
    /// `ENFORCER_LOG=info`; READY=1 awaited for 30 s.
    pub fn new(
        binary: impl Into<PathBuf>,
        policies: impl Into<PathBuf>,
        cgroup_root: impl Into<PathBuf>,
        bpffs: impl Into<PathBuf>,
        files: impl Into<PathBuf>,
    ) -> Self {
        let files = files.into();
        Self {
            binary: binary.into(),
            policies: policies.into(),
            cgroup_root: cgroup_root.into(),
            bpffs: bpffs.into(),
            socket: files.join("enforcer.sock"),
            state_dir: files.join("state"),
            files,
            extra: Vec::new(),
            wrapper: Vec::new(),
            env: vec![("ENFORCER_LOG".into(), "info".into())],
            env_remove: Vec::new(),
            ready_timeout: Duration::from_secs(30),
            own_process_group: false,
        }
    }

    /// `--socket` elsewhere than in the files directory.
    #[must_use]
    pub fn socket(mut self, socket: impl Into<PathBuf>) -> Self {
        self.socket = socket.into();
        self
    }

    /// `--state-dir` elsewhere than in the files directory.
    #[must_use]
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.state_dir = dir.into();
        self
    }

    /// More `enforcer run` options, after the ones above.
    #[must_use]
    pub fn args<S: AsRef<OsStr>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.extra
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Runs the daemon under a command (`setpriv ... --`, a profiler): the
    /// words before the binary.
    #[must_use]
    pub fn wrapper<S: AsRef<OsStr>>(mut self, words: impl IntoIterator<Item = S>) -> Self {
        self.wrapper = words.into_iter().map(|w| w.as_ref().to_owned()).collect();
        self
    }

    /// Sets an environment variable of the daemon (`ENFORCER_LOG` included).
    #[must_use]
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        let key = key.into();
        self.env.retain(|(k, _)| *k != key);
        self.env.push((key, value.into()));
        self
    }

    /// Removes an environment variable this process would pass on.
    #[must_use]
    pub fn env_remove(mut self, key: impl Into<OsString>) -> Self {
        self.env_remove.push(key.into());
        self
    }

    /// How long [`DaemonSpec::start`] waits for READY=1.
    #[must_use]
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// The daemon in a process group of its own (Ctrl-C reaches only this
    /// process, whose guards then stop it in order) and killed when this
    /// process dies (even by SIGKILL).
    #[must_use]
    pub fn own_process_group(mut self) -> Self {
        self.own_process_group = true;
        self
    }

    /// The `enforcer` binary.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// `--policies`.
    pub fn policies(&self) -> &Path {
        &self.policies
    }

    /// `--cgroup-root`.
    pub fn cgroup_root(&self) -> &Path {
        &self.cgroup_root
    }

    /// `--bpffs`.
    pub fn bpffs(&self) -> &Path {
        &self.bpffs
    }

    /// `--socket`.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// `--state-dir`.
    pub fn state_dir_path(&self) -> &Path {
        &self.state_dir
    }

    /// The directory of its sd_notify socket and log (and by default of its
    /// socket and state).
    pub fn files(&self) -> &Path {
        &self.files
    }

    /// The daemon's stderr, written by [`DaemonSpec::start`].
    pub fn log_path(&self) -> PathBuf {
        self.files.join("daemon.log")
    }

    /// The daemon's log so far (empty when there is none).
    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = fs::File::open(self.log_path()) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    /// The last `lines` lines of [`DaemonSpec::log`], for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = self.log();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Starts the daemon and waits until it reports READY=1. A daemon that
    /// exits first is [`Error::DaemonExited`] (with its status), one that
    /// exits right after READY=1 [`Error::DaemonExitedAfterReady`].
    pub fn start(&self) -> Result<DaemonProcess> {
        let notify_path = self.files.join("notify.sock");
        let _ = fs::remove_file(&notify_path);
        let notify =
            UnixDatagram::bind(&notify_path).map_err(|e| Error::io("bind", &notify_path, e))?;
        notify
            .set_read_timeout(Some(NOTIFY_POLL))
            .map_err(|e| Error::io("set a timeout on", &notify_path, e))?;
        let log_path = self.log_path();
        let log = fs::File::create(&log_path).map_err(|e| Error::io("create", &log_path, e))?;
        let mut command = match self.wrapper.split_first() {
            Some((program, words)) => {
                let mut c = Command::new(program);
                c.args(words).arg(&self.binary);
                c
            }
            None => Command::new(&self.binary),
        };
        command
            // An empty configuration: nothing of /etc/enforcer applies.
            .args(["run", "--config", "/dev/null", "--policies"])
            .arg(&self.policies)
            .arg("--cgroup-root")
            .arg(&self.cgroup_root)
            .arg("--bpffs")
            .arg(&self.bpffs)
            .arg("--socket")
            .arg(&self.socket)
            // Never the machine's /var/lib/enforcer.
            .arg("--state-dir")
            .arg(&self.state_dir)
            .args(&self.extra)
            .env("NOTIFY_SOCKET", &notify_path)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        for key in &self.env_remove {
            command.env_remove(key);
        }
        if self.own_process_group {
            command.process_group(0);
            // SAFETY: prctl only sets a flag of the child process; it
            // allocates nothing and is async-signal-safe.
            unsafe {
                command.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = command
            .spawn()
            .map_err(|e| Error::io("spawn", &self.binary, e))?;
        let mut daemon = DaemonProcess {
            child,
            pid: None,
            notify: NotifyReader::start(notify),
            ready: String::new(),
            frozen: false,
        };
        let deadline = Instant::now() + self.ready_timeout;
        loop {
            if let Some(message) = daemon.receive()
                && message.lines().any(|l| l == "READY=1")
            {
                daemon.ready = message;
                return Ok(daemon);
            }
            if let Some(status) = daemon.try_wait()? {
                // Anything it sent after all, READY=1 included, tells
                // the caller more than the exit alone.
                while let Some(message) = daemon.receive() {
                    if message.lines().any(|l| l == "READY=1") {
                        return Err(Error::DaemonExitedAfterReady {
                            status,
                            log: self.log(),
                        });
                    }
                }
                return Err(Error::DaemonExited {
                    status,
                    log: self.log(),
                });
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("READY=1 from enforcer run; its log:\n{}", self.log()),
                    timeout: self.ready_timeout,
                });
            }
        }
    }
}

/// A running `enforcer run` (possibly under a wrapper), killed and reaped
/// when dropped.
#[derive(Debug)]
pub struct DaemonProcess {
    child: Child,
    /// The daemon's own pid when it runs under a wrapper that forks.
    pid: Option<u32>,
    notify: NotifyReader,
    ready: String,
    frozen: bool,
}

impl DaemonProcess {
    /// The daemon's pid ([`DaemonProcess::set_pid`]'s, under a wrapper that
    /// forks; the child's otherwise).
    pub fn pid(&self) -> u32 {
        self.pid.unwrap_or_else(|| self.child.id())
    }

    /// Records the daemon's own pid (from its `status`) when a wrapper
    /// forked it: signals then go to the daemon, not the wrapper.
    pub fn set_pid(&mut self, pid: u32) {
        self.pid = Some(pid);
    }

    /// The sd_notify message that carried READY=1.
    pub fn ready_message(&self) -> &str {
        &self.ready
    }

    /// One sd_notify message, if one arrives within a short poll.
    fn receive(&self) -> Option<String> {
        let messages = self
            .notify
            .messages
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        messages.recv_timeout(NOTIFY_POLL).ok()
    }

    /// The sd_notify lines received from now until `stop` returns true for
    /// one (the lines so far, that one last), or `None` after `within`.
    pub fn wait_notify(
        &self,
        within: Duration,
        mut stop: impl FnMut(&str) -> bool,
    ) -> Option<Vec<String>> {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            if let Some(message) = self.receive() {
                for line in message.lines() {
                    seen.push(line.to_owned());
                    if stop(line) {
                        return Some(seen);
                    }
                }
            }
        }
        None
    }

    /// Its exit status, if it has exited (reaped then).
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        self.child
            .try_wait()
            .map_err(|e| Error::io("wait for", format!("pid {}", self.child.id()), e))
    }

    /// Sends `signal` to the daemon.
    pub fn signal(&self, signal: libc::c_int) -> Result<()> {
        let pid = self.pid();
        // SAFETY: kill with the pid of our own child, not yet reaped (or
        // of the daemon a wrapper we run forked), so not reused.
        let rc = unsafe { libc::kill(pid as libc::pid_t, signal) };
        if rc != 0 {
            return Err(Error::io(
                "kill",
                format!("pid {pid}"),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// SIGKILL and reap (nothing if it already exited).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends `signal` (after SIGCONT when frozen: a stopped process would
    /// keep it pending) and waits up to `within` for the exit, whose status
    /// it returns; a daemon that already exited gives its status at once.
    /// After a timeout it is still running ([`DaemonProcess::kill`], or
    /// drop, ends it).
    pub fn stop(&mut self, signal: libc::c_int, within: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        if self.frozen {
            self.thaw()?;
        }
        self.signal(signal)?;
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("the daemon to exit after signal {signal}"),
                    timeout: within,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGSTOP, and waits until every thread of the daemon is stopped: it
    /// runs nothing (no integrity check, no rescan) until
    /// [`DaemonProcess::thaw`]. Its programs stay attached.
    pub fn freeze(&mut self, within: Duration) -> Result<()> {
        self.signal(libc::SIGSTOP)?;
        self.frozen = true;
        let tasks = PathBuf::from(format!("/proc/{}/task", self.pid()));
        let deadline = Instant::now() + within;
        loop {
            if all_stopped(&tasks)? {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: "every thread of the daemon to stop after SIGSTOP".to_owned(),
                    timeout: within,
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGCONT after [`DaemonProcess::freeze`].
    pub fn thaw(&mut self) -> Result<()> {
        self.signal(libc::SIGCONT)?;
        self.frozen = false;
        Ok(())
    }
}

/// Reads the daemon's sd_notify messages as they come, on a thread of its
/// own, into a queue that [`DaemonProcess`] reads when asked: the kernel
/// queues only a few datagrams (`net.unix.max_dgram_qlen`, 10 here), and a
/// daemon whose notification finds the queue full blocks in it.
#[derive(Debug)]
struct NotifyReader {
    /// In a mutex so that a daemon may be shared between threads.
    messages: Mutex<Receiver<String>>,
    done: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl NotifyReader {
    fn start(socket: UnixDatagram) -> Self {
        let (sender, messages) = mpsc::channel();
        let done = Arc::new(AtomicBool::new(false));
        let stop = Arc::clone(&done);
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // The socket's read timeout bounds each wait, so the flag is
            // seen within one poll.
            while !stop.load(Ordering::Relaxed) {
                if let Ok(n) = socket.recv(&mut buf)
                    && sender
                        .send(String::from_utf8_lossy(&buf[..n]).into_owned())
                        .is_err()
                {
                    return;
                }
            }
        });
        Self {
            messages: Mutex::new(messages),
            done,
            thread: Some(thread),
        }
    }
}

impl Drop for NotifyReader {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether every thread under `/proc/PID/task` is stopped (state `T` or
/// `t` in its `stat`).
fn all_stopped(tasks: &Path) -> Result<bool> {
    for task in fs::read_dir(tasks).map_err(|e| Error::io("read", tasks, e))? {
        let task = task.map_err(|e| Error::io("read", tasks, e))?;
        let stat_path = task.path().join("stat");
        let stat = match fs::read_to_string(&stat_path) {
            Ok(stat) => stat,
            // A thread that exited meanwhile.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io("read", stat_path, e)),
        };
        if !matches!(task_state(&stat), Some('T' | 't')) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The state letter of a `/proc/.../stat` line: the field after the
/// command, which is in parentheses and may hold spaces and parentheses.
fn task_state(stat: &str) -> Option<char> {
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// `binary run --config /dev/null --uninstall --bpffs BPFFS`: detaches
/// what a daemon attached and removes its pins.
pub fn uninstall_command(binary: &Path, bpffs: &Path) -> Command {
    let mut command = Command::new(binary);
    command
        .args(["run", "--config", "/dev/null", "--uninstall", "--bpffs"])
        .arg(bpffs)
        .stdin(Stdio::null());
    command
}

/// [`uninstall_command`] (when `binary` exists), then removes whatever is
/// left of `bpffs` (unlinking a pin drops the kernel's reference too).
/// Nothing to do when `bpffs` does not exist.
pub fn uninstall(binary: &Path, bpffs: &Path) -> Result<()> {
    if !bpffs.exists() {
        return Ok(());
    }
    let uninstalled = if binary.is_file() {
        match uninstall_command(binary, bpffs).output() {
            Ok(out) if out.status.success() => Ok(()),
            Ok(out) => Err(Error::Command {
                command: format!(
                    "{} run --uninstall --bpffs {}",
                    binary.display(),
                    bpffs.display()
                ),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            }),
            Err(e) => Err(Error::io("spawn", binary, e)),
        }
    } else {
        Ok(())
    };
    match fs::remove_dir_all(bpffs) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("remove", bpffs, e)),
    }
    uninstalled
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_follows_the_command_whatever_it_holds() {
        assert_eq!(task_state("42 (enforcer) S 1 42 42 0"), Some('S'));
        assert_eq!(task_state("42 (tokio-rt (x) y) T 1 42"), Some('T'));
        assert_eq!(task_state("42 (enforcer"), None);
    }
}
