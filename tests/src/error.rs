//! The one error type of the test infrastructure.

use std::{fmt, io, path::PathBuf, time::Duration};

/// Why a guard, a child process or a probe could not be set up.
///
/// `Debug` prints the same text as `Display` (which already includes the
/// underlying OS error), so that `.expect("...")` in a test shows a readable
/// message rather than a struct dump.
#[derive(thiserror::Error)]
pub enum Error {
    /// A system call or file operation on `path` failed.
    #[error("{call} {path}: {source}")]
    Io {
        /// What was attempted (`"mkdir"`, `"read"`, `"setns"`, ...).
        call: &'static str,
        /// The file or directory it was attempted on.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// `/proc/self/mountinfo` lists no cgroup2 file system.
    #[error(
        "no cgroup v2 file system is mounted (nothing of type cgroup2 in /proc/self/mountinfo)"
    )]
    NoCgroup2,
    /// An external command (usually `ip`) exited unsuccessfully.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line, for the message.
        command: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// An `enforcer run` exited before it reported READY=1.
    #[error("the daemon exited with {status} before READY=1:\n{log}")]
    DaemonExited {
        /// Its exit status.
        status: std::process::ExitStatus,
        /// Its log.
        log: String,
    },
    /// An `enforcer run` reported READY=1, then exited at once.
    #[error("the daemon sent READY=1, then exited with {status}:\n{log}")]
    DaemonExitedAfterReady {
        /// Its exit status.
        status: std::process::ExitStatus,
        /// Its log.
        log: String,
    },
    /// A bounded wait ran out.
    #[error("timed out after {timeout:?} waiting for {what}")]
    Timeout {
        /// What was being waited for.
        what: String,
        /// How long.
        timeout: Duration,
    },
    /// A subnet or address could not be parsed.
    #[error("invalid subnet or address `{0}` (expected e.g. 198.51.100.0/24 or 2001:db8:1::/64)")]
    BadSubnet(String),
    /// A test asked for addresses outside the documentation ranges.
    #[error(
        "{0} is outside the ranges tests may use (198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32)"
    )]
    NotDocumentationRange(String),
    /// The requested range is already used by an address or route of this
    /// machine; assigning it would break or hijack existing traffic.
    #[error("{subnet} is already in use on this machine: {used_by}")]
    RangeInUse {
        /// The subnet the test asked for.
        subnet: String,
        /// The conflicting address or route, as `ip` shows it.
        used_by: String,
    },
    /// A child process printed something the caller could not understand.
    #[error("unexpected output from {what}: {output:?}")]
    BadOutput {
        /// Which process.
        what: String,
        /// The offending output (possibly with its stderr appended).
        output: String,
    },
    /// A spawned process did not end up in the cgroup it was placed in.
    #[error("pid {pid} is in cgroup {actual:?}, not in {expected:?}")]
    WrongCgroup {
        /// The child's pid.
        pid: u32,
        /// Where it should be (path relative to the cgroup2 mount).
        expected: String,
        /// Where `/proc/PID/cgroup` says it is.
        actual: String,
    },
    /// The `probe` binary was not found.
    #[error(
        "cannot find the probe binary (set ENFORCER_PROBE, or build it with `cargo build -p enforcer-tests --bin probe`): {0}"
    )]
    ProbeNotFound(String),
    /// A cleanup step failed; the message lists what was left behind.
    #[error("cleanup incomplete: {0}")]
    Cleanup(String),
}

impl Error {
    /// Wraps an `io::Error` with the call and path it came from.
    pub(crate) fn io(call: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            call,
            path: path.into(),
            source,
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
