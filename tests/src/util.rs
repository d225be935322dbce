//! Small shared pieces: unique names, bounded polling, running `ip`.

use std::{
    io::Read,
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use crate::error::{Error, Result};

/// How long an `ip` invocation may take before it counts as hung.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// A number unique within this process, for names of cgroups, namespaces
/// and links. Together with the pid it makes names unique on the machine,
/// and the pid in the name lets a later run reap what a killed run left.
pub(crate) fn next_serial() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Whether a process with this pid exists (zombies count as existing).
pub(crate) fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Polls `check` until it returns `Some`, sleeping a little longer each
/// time (1 ms up to 20 ms), or gives up after `timeout`.
pub(crate) fn poll_until<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Runs a command to completion within [`COMMAND_TIMEOUT`] and returns its
/// stdout; a non-zero exit becomes [`Error::Command`] with its stderr.
pub(crate) fn run(program: &str, args: &[&str]) -> Result<String> {
    let command = format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::io("spawn", program, e))?;
    // Drain both pipes on threads so that a chatty command cannot block on
    // a full pipe while we wait for it.
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let out = thread::spawn(move || read_all(stdout.as_mut()));
    let err = thread::spawn(move || read_all(stderr.as_mut()));
    let status = poll_until(COMMAND_TIMEOUT, || child.try_wait().ok().flatten());
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(Error::Timeout {
            what: format!("`{command}`"),
            timeout: COMMAND_TIMEOUT,
        });
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    if status.success() {
        Ok(stdout)
    } else {
        Err(Error::Command {
            command,
            status: status.to_string(),
            stderr: stderr.trim().to_owned(),
        })
    }
}

fn read_all(pipe: Option<&mut impl Read>) -> String {
    let mut text = String::new();
    if let Some(pipe) = pipe {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    text
}

/// Runs `ip ARGS...`.
pub(crate) fn ip(args: &[&str]) -> Result<String> {
    run("ip", args)
}

/// `bpftool -j ARGS`, parsed (`null` when it prints nothing, as `cgroup
/// show` of a cgroup without programs does); panics when bpftool fails, so
/// a test never mistakes a failed query for an empty answer.
pub fn bpftool_json<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> serde_json::Value {
    let out = Command::new("bpftool")
        .arg("-j")
        .args(args)
        .output()
        .expect("run bpftool");
    assert!(
        out.status.success(),
        "bpftool {:?}: {}",
        args.iter().map(AsRef::as_ref).collect::<Vec<_>>(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}
