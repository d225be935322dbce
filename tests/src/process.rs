//! Child processes placed in a test cgroup and/or a test host's namespace,
//! killed and reaped when their guard drops.

use std::{
    ffi::OsStr,
    fs::{File, OpenOptions},
    io::{self, Read, Write},
    os::{
        fd::{AsRawFd, OwnedFd, RawFd},
        unix::process::{CommandExt, ExitStatusExt},
    },
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use crate::{
    cgroup::{CgroupGuard, cgroup_of_pid, cgroup2_mount},
    error::{Error, Result},
    netns::TestHost,
    util::poll_until,
};

/// How long `Drop` waits for a SIGKILLed child to be reaped.
const REAP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for the rest of an exited child's stderr.
const STDERR_DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// Builds a child process: a [`Command`] plus where to put it.
///
/// The child joins the cgroup first and enters the namespace second, both
/// between `fork` and `exec` (so the program never runs outside its place,
/// and `/sys` is never remounted as `ip netns exec` would do, which makes a
/// later `cgroup.procs` write silently miss). Stdin is a pipe (so that the
/// child sees EOF when its guard goes away), stdout is a pipe read through
/// [`ChildGuard::read_line`], stderr is collected in the background.
///
/// A long-running, chatty child whose stdout nobody reads blocks once the
/// pipe is full (64 KiB): give such a child [`Spawner::stdout`] with
/// `Stdio::null()` or a file.
#[derive(Debug)]
#[must_use]
pub struct Spawner {
    command: Command,
    cgroup: Option<PathBuf>,
    netns: Option<PathBuf>,
    stdout: Option<Stdio>,
}

impl Spawner {
    /// A child running `program`.
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Self::from_command(Command::new(program))
    }

    /// A child from a prepared command. Its stdio settings are replaced.
    pub fn from_command(command: Command) -> Self {
        Self {
            command,
            cgroup: None,
            netns: None,
            stdout: None,
        }
    }

    /// Sends the child's stdout elsewhere instead of a pipe (then
    /// [`ChildGuard::read_line`] sees end of file at once).
    pub fn stdout(mut self, stdout: Stdio) -> Self {
        self.stdout = Some(stdout);
        self
    }

    /// Appends an argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.command.arg(arg);
        self
    }

    /// Appends arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.command.args(args);
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.command.env(key, value);
        self
    }

    /// Runs the child in this test cgroup.
    pub fn cgroup(self, cgroup: &CgroupGuard) -> Self {
        self.cgroup_dir(cgroup.path())
    }

    /// Runs the child in the cgroup v2 directory `dir` (which must be under
    /// the cgroup2 mount).
    pub fn cgroup_dir(mut self, dir: &Path) -> Self {
        self.cgroup = Some(dir.to_path_buf());
        self
    }

    /// Runs the child inside the test host's network namespace.
    pub fn netns(self, host: &TestHost) -> Self {
        self.netns_file(&host.netns_path())
    }

    /// Runs the child in the network namespace at `path` (e.g.
    /// `/run/netns/NAME`).
    pub fn netns_file(mut self, path: &Path) -> Self {
        self.netns = Some(path.to_path_buf());
        self
    }

    /// Starts the child. When this returns the child has exec'd, inside its
    /// cgroup (checked against `/proc/PID/cgroup`) and namespace.
    pub fn spawn(self) -> Result<ChildGuard> {
        let Self {
            mut command,
            cgroup,
            netns,
            stdout,
        } = self;
        // Open everything before fork: between fork and exec only
        // async-signal-safe calls are allowed, so no allocation, no paths.
        let procs_fd = cgroup
            .as_ref()
            .map(|dir| open_fd(&dir.join("cgroup.procs"), true))
            .transpose()?;
        let netns_fd = netns
            .as_ref()
            .map(|path| open_fd(path, false))
            .transpose()?;
        let procs_raw = procs_fd.as_ref().map(AsRawFd::as_raw_fd);
        let netns_raw = netns_fd.as_ref().map(AsRawFd::as_raw_fd);
        command
            .stdin(Stdio::piped())
            .stdout(stdout.unwrap_or_else(Stdio::piped))
            .stderr(Stdio::piped());
        // SAFETY: the closure only calls getpid, write and setns on file
        // descriptors opened above, and formats into a stack buffer.
        unsafe {
            command.pre_exec(move || place_self(procs_raw, netns_raw));
        }
        let program = command.get_program().to_string_lossy().into_owned();
        let mut child = command
            .spawn()
            .map_err(|e| Error::io("spawn", &program, e))?;
        drop((procs_fd, netns_fd));

        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut stderr_reader = None;
        if let Some(mut pipe) = child.stderr.take() {
            let sink = Arc::clone(&stderr);
            // Collect stderr so the child never blocks on a full pipe and
            // failures can quote it.
            stderr_reader = Some(thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = pipe.read(&mut buf) {
                    sink.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .extend_from_slice(&buf[..n]);
                }
            }));
        }
        let guard = ChildGuard {
            pid: child.id(),
            stdin: child.stdin.take(),
            stdout: child.stdout.take().map(LineReader::new),
            child,
            stderr,
            stderr_reader,
            program,
            status: None,
        };
        if let Some(dir) = &cgroup {
            let expected = match dir.strip_prefix(cgroup2_mount()?) {
                Ok(rel) => format!("/{}", rel.display()),
                Err(_) => dir.display().to_string(),
            };
            let actual = cgroup_of_pid(guard.pid)?;
            if actual != expected {
                return Err(Error::WrongCgroup {
                    pid: guard.pid,
                    expected,
                    actual,
                });
            }
        }
        Ok(guard)
    }
}

pub(crate) fn open_fd(path: &Path, write: bool) -> Result<OwnedFd> {
    let file: File = OpenOptions::new()
        .read(!write)
        .write(write)
        .open(path)
        .map_err(|e| Error::io("open", path, e))?;
    Ok(file.into())
}

/// Runs in the child between fork and exec: join the cgroup, then the
/// network namespace. Only async-signal-safe calls.
pub(crate) fn place_self(procs: Option<RawFd>, netns: Option<RawFd>) -> io::Result<()> {
    if let Some(fd) = procs {
        // SAFETY: getpid cannot fail.
        let pid = unsafe { libc::getpid() };
        let mut buf = [0u8; 20];
        let text = format_decimal(pid.unsigned_abs(), &mut buf);
        // SAFETY: writes `text.len()` bytes from a live stack buffer.
        let written = unsafe { libc::write(fd, text.as_ptr().cast(), text.len()) };
        if written < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    if let Some(fd) = netns {
        // SAFETY: setns on an fd we opened on a namespace file.
        if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Decimal digits of `n` in `buf`, without allocating.
fn format_decimal(mut n: u32, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// Reads lines from a pipe with a deadline (`poll` before every `read`).
#[derive(Debug)]
struct LineReader {
    pipe: ChildStdout,
    buf: Vec<u8>,
    eof: bool,
}

impl LineReader {
    fn new(pipe: ChildStdout) -> Self {
        Self {
            pipe,
            buf: Vec::new(),
            eof: false,
        }
    }

    /// The next line without its newline; `Ok(None)` at end of file,
    /// `Err(Timeout)` if none arrives in time.
    fn read_line(&mut self, timeout: Duration, what: &str) -> Result<Option<String>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                let text = String::from_utf8_lossy(&line[..pos]).into_owned();
                return Ok(Some(text));
            }
            if self.eof {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                let rest = std::mem::take(&mut self.buf);
                return Ok(Some(String::from_utf8_lossy(&rest).into_owned()));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Timeout {
                    what: format!("a line from {what}"),
                    timeout,
                });
            }
            let mut pfd = libc::pollfd {
                fd: self.pipe.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = libc::c_int::try_from(left.as_millis().max(1)).unwrap_or(libc::c_int::MAX);
            // SAFETY: one valid pollfd.
            let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
            if ready < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(Error::io("poll", format!("stdout of {what}"), err));
            }
            if ready == 0 {
                continue;
            }
            let mut chunk = [0u8; 4096];
            match self.pipe.read(&mut chunk) {
                Ok(0) => self.eof = true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io("read", format!("stdout of {what}"), e)),
            }
        }
    }
}

/// How a child ended and what it printed; see [`ChildGuard::wait_with_output`].
#[derive(Debug)]
pub struct ChildOutput {
    /// Its exit status.
    pub status: ExitStatus,
    /// Its stdout lines (those not read before), without newlines.
    pub lines: Vec<String>,
    /// Everything it printed on stderr.
    pub stderr: String,
}

/// A running child. Dropping it SIGKILLs and reaps it (bounded).
#[derive(Debug)]
pub struct ChildGuard {
    child: Child,
    pid: u32,
    stdin: Option<ChildStdin>,
    stdout: Option<LineReader>,
    stderr: Arc<Mutex<Vec<u8>>>,
    stderr_reader: Option<thread::JoinHandle<()>>,
    program: String,
    status: Option<ExitStatus>,
}

impl ChildGuard {
    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The next line the child printed on stdout, without its newline;
    /// `Ok(None)` once stdout is closed; [`Error::Timeout`] if no full
    /// line arrives within `timeout`.
    pub fn read_line(&mut self, timeout: Duration) -> Result<Option<String>> {
        let what = self.describe();
        match self.stdout.as_mut() {
            Some(reader) => reader.read_line(timeout, &what),
            None => Ok(None),
        }
    }

    /// Writes `line` and a newline to the child's stdin.
    pub fn write_line(&mut self, line: &str) -> Result<()> {
        let what = self.describe();
        let stdin = self.stdin.as_mut().ok_or_else(|| {
            Error::io(
                "write",
                format!("stdin of {what}"),
                io::ErrorKind::BrokenPipe.into(),
            )
        })?;
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .map_err(|e| Error::io("write", format!("stdin of {what}"), e))
    }

    /// Closes the child's stdin (it reads end of file).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// What the child printed on stderr so far.
    pub fn stderr(&self) -> String {
        let bytes = self
            .stderr
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Whether the child has not exited yet.
    pub fn is_running(&mut self) -> bool {
        self.try_wait().is_none()
    }

    fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Waits up to `timeout` for the child to exit; `None` if it is still
    /// running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        poll_until(timeout, || self.try_wait())
    }

    /// Waits up to `timeout` for the child to exit and returns its status,
    /// its remaining stdout lines and its stderr; kills it and fails on
    /// timeout.
    pub fn wait_with_output(mut self, timeout: Duration) -> Result<ChildOutput> {
        let deadline = Instant::now() + timeout;
        let mut lines = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_line(left) {
                Ok(Some(line)) => lines.push(line),
                Ok(None) => break,
                Err(Error::Timeout { .. }) => {
                    return Err(Error::Timeout {
                        what: format!("{} to finish (stderr: {})", self.describe(), self.stderr()),
                        timeout,
                    });
                }
                Err(err) => return Err(err),
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match self.wait_timeout(left) {
            Some(status) => {
                // The reader thread may still hold the last bytes; it ends
                // at end of file, unless a grandchild keeps stderr open.
                if let Some(reader) = &self.stderr_reader {
                    poll_until(STDERR_DRAIN_TIMEOUT, || reader.is_finished().then_some(()));
                }
                Ok(ChildOutput {
                    status,
                    lines,
                    stderr: self.stderr(),
                })
            }
            None => Err(Error::Timeout {
                what: format!("{} to exit", self.describe()),
                timeout,
            }),
        }
    }

    /// Sends SIGKILL and reaps the child, waiting at most a few seconds.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.try_wait() {
            return Ok(status);
        }
        // Err only means it is already gone; try_wait below tells.
        let _ = self.child.kill();
        self.wait_timeout(REAP_TIMEOUT)
            .ok_or_else(|| Error::Timeout {
                what: format!("{} to die after SIGKILL", self.describe()),
                timeout: REAP_TIMEOUT,
            })
    }

    /// Sends `signal` to the child.
    pub fn signal(&mut self, signal: libc::c_int) -> Result<()> {
        let pid = libc::pid_t::try_from(self.pid).unwrap_or(libc::pid_t::MAX);
        if self.try_wait().is_some() {
            return Err(Error::io(
                "kill",
                format!("pid {} (already exited)", self.pid),
                io::Error::from_raw_os_error(libc::ESRCH),
            ));
        }
        // SAFETY: kill(2) on our own child, not reaped yet (checked just
        // above, and only we reap it), so the pid cannot have been reused.
        if unsafe { libc::kill(pid, signal) } != 0 {
            return Err(Error::io(
                "kill",
                format!("pid {}", self.pid),
                io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!("{} (pid {})", self.program, self.pid)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Err(err) = self.kill() {
            // Drop cannot return an error; stderr reaches the test output.
            eprintln!("enforcer-tests: {err}");
        }
    }
}

/// Describes how a child ended, for messages: `exit 3` or `signal 9`.
pub fn describe_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit {code}"),
        (None, Some(sig)) => format!("signal {sig}"),
        _ => status.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_decimal_without_allocating() {
        let mut buf = [0u8; 20];
        assert_eq!(format_decimal(0, &mut buf), b"0");
        assert_eq!(format_decimal(4_194_304, &mut buf), b"4194304");
        assert_eq!(format_decimal(u32::MAX, &mut buf), b"4294967295");
    }

    #[test]
    fn reads_lines_and_exit_status_of_a_plain_child() {
        let mut child = Spawner::new("sh")
            .args(["-c", "echo one; echo two >&2; read x; echo got $x; exit 3"])
            .spawn()
            .unwrap();
        assert_eq!(
            child.read_line(Duration::from_secs(5)).unwrap().as_deref(),
            Some("one")
        );
        assert!(matches!(
            child.read_line(Duration::from_millis(50)),
            Err(Error::Timeout { .. })
        ));
        child.write_line("hello").unwrap();
        let out = child.wait_with_output(Duration::from_secs(5)).unwrap();
        assert_eq!(out.lines, ["got hello"]);
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stderr, "two\n");
    }

    #[test]
    fn stdout_can_be_discarded() {
        let mut child = Spawner::new("sh")
            .args(["-c", "yes | head -c 200000; echo done >&2"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        assert_eq!(child.read_line(Duration::from_secs(1)).unwrap(), None);
        let out = child.wait_with_output(Duration::from_secs(5)).unwrap();
        assert!(out.status.success());
        assert_eq!(out.stderr, "done\n");
    }

    #[test]
    fn drop_kills_the_child() {
        let child = Spawner::new("sleep").arg("60").spawn().unwrap();
        let pid = child.pid();
        drop(child);
        assert!(!crate::util::pid_alive(pid), "pid {pid} survived its guard");
    }
}
