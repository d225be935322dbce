//! The gate in front of every root-only test: requirements, skip-or-fail,
//! and a machine-wide lock so that root tests never overlap.

use std::{
    cell::Cell,
    fs::{self, File, OpenOptions},
    io::{Read, Write},
    os::{fd::AsRawFd, unix::fs::OpenOptionsExt},
    path::{Path, PathBuf},
    process::Command,
    sync::{Mutex, MutexGuard, OnceLock, mpsc},
    thread,
    time::Duration,
};

use crate::{cgroup::cgroup2_mount, reap::reap_stale};

/// The lock file shared by every process using this crate on the machine.
const LOCK_PATH: &str = "/run/enforcer-tests.lock";
/// Default bound on waiting for another run's root test to finish;
/// override with `ENFORCER_TEST_LOCK_TIMEOUT_SECS`.
const LOCK_TIMEOUT: Duration = Duration::from_secs(900);

/// Held for the duration of one root test (see [`require_root`]). While it
/// lives, no other root test of this process or of any other process using
/// this crate runs, so test hosts never compete for address ranges.
#[derive(Debug)]
pub struct Privileged {
    _process: MutexGuard<'static, ()>,
    _machine: File,
}

impl Drop for Privileged {
    fn drop(&mut self) {
        HOLDS_LOCK.with(|h| h.set(false));
    }
}

thread_local! {
    static HOLDS_LOCK: Cell<bool> = const { Cell::new(false) };
}

/// Checks that this process can run root tests, then takes the machine-wide
/// root-test lock and returns it; drop it at the end of the test (the
/// [`privileged!`](crate::privileged!) macro keeps it for the whole test).
///
/// If a requirement is missing (not root, no cgroup v2, no bpf file system
/// type, no network namespaces, no `ip`), it prints `SKIPPED: <reason>` and
/// returns `None` — unless the environment variable `CI` is set (to any
/// value), in which case it panics: a skip must never hide a regression.
///
/// The first call in a process also removes what earlier, killed runs left
/// behind ([`reap_stale`]).
///
/// # Panics
/// Under `CI` when a requirement is missing; when the lock cannot be taken
/// within the timeout; when called twice on one thread without dropping the
/// first guard.
pub fn require_root() -> Option<Privileged> {
    require_root_with_probe(None)
}

/// [`require_root`], also recording where the `probe` binary is; used by
/// [`privileged!`](crate::privileged!), which knows it at compile time.
#[doc(hidden)]
pub fn require_root_with_probe(probe: Option<&'static str>) -> Option<Privileged> {
    if let Some(path) = probe {
        crate::probe::set_probe_path(Path::new(path));
    }
    if let Some(reason) = missing_requirement() {
        if std::env::var_os("CI").is_some() {
            panic!("root-only test cannot run, and CI is set so it must not skip: {reason}");
        }
        eprintln!("SKIPPED: {reason}");
        return None;
    }
    if HOLDS_LOCK.with(Cell::get) {
        panic!("require_root called twice in one test: keep the first guard");
    }
    let guard = lock();
    HOLDS_LOCK.with(|h| h.set(true));

    static REAPED: OnceLock<()> = OnceLock::new();
    REAPED.get_or_init(|| match reap_stale() {
        Ok(items) if !items.is_empty() => {
            eprintln!(
                "enforcer-tests: removed leftovers of dead runs: {}",
                items.join(", ")
            );
        }
        Ok(_) => {}
        Err(err) => eprintln!("enforcer-tests: removing leftovers of dead runs: {err}"),
    });
    Some(guard)
}

/// Skips the rest of the test (by `return`ing) unless it can run as root;
/// otherwise evaluates to a [`Privileged`] guard to keep for the whole test.
/// Under `CI` a missing requirement panics instead of skipping.
///
/// ```no_run
/// #[test]
/// fn something_as_root() {
///     let _root = enforcer_tests::privileged!();
///     // ... guards, probes, assertions ...
/// }
/// ```
///
/// It also tells the helpers where Cargo built the `probe` binary
/// (`CARGO_BIN_EXE_probe`, known when compiling this crate's tests).
#[macro_export]
macro_rules! privileged {
    () => {
        match $crate::privileged::require_root_with_probe(::core::option_env!(
            "CARGO_BIN_EXE_probe"
        )) {
            ::core::option::Option::Some(guard) => guard,
            ::core::option::Option::None => return,
        }
    };
}

/// Why root tests cannot run here, or `None` if they can.
pub fn missing_requirement() -> Option<String> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (run the root tests with sudo)".into());
    }
    if let Err(err) = cgroup2_mount() {
        return Some(err.to_string());
    }
    let filesystems = fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !filesystems
        .lines()
        .any(|l| l.split_whitespace().last() == Some("bpf"))
    {
        return Some("the kernel has no bpf file system (CONFIG_BPF_SYSCALL)".into());
    }
    if !Path::new("/proc/self/ns/net").exists() {
        return Some("the kernel has no network namespaces (CONFIG_NET_NS)".into());
    }
    if socket_matching_disabled() {
        return Some(
            "the kernel log says \"disabling cgroup2 socket matching\" (a cgroup v1 net_cls or \
             net_prio hierarchy was activated): cgroup BPF programs cannot match sockets until reboot"
                .into(),
        );
    }
    let ip_ok = Command::new("ip")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ip_ok {
        return Some("`ip` from iproute2 is not installed".into());
    }
    None
}

/// Whether the kernel has turned off cgroup2 socket matching, which it
/// does for good (until reboot) once a v1 `net_cls`/`net_prio` controller
/// is used on a hybrid host. Read from the kernel log (`/dev/kmsg`); if the
/// log is unreadable or has rotated past the message, this says `false`.
pub fn socket_matching_disabled() -> bool {
    const MESSAGE: &[u8] = b"disabling cgroup2 socket matching";
    let Ok(kmsg) = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")
    else {
        return false;
    };
    let mut kmsg = kmsg;
    // Each read returns one record; EAGAIN marks the end of the buffer.
    let mut record = [0u8; 8192];
    loop {
        match kmsg.read(&mut record) {
            Ok(0) => return false,
            Ok(n) => {
                if record[..n].windows(MESSAGE.len()).any(|w| w == MESSAGE) {
                    return true;
                }
            }
            // EPIPE: a record was overwritten while reading; keep going.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {}
            Err(_) => return false,
        }
    }
}

fn lock() -> Privileged {
    // Threads of one test binary (if run without --test-threads=1) queue
    // here; flock below then orders whole processes.
    static PROCESS: Mutex<()> = Mutex::new(());
    let process = PROCESS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);

    let timeout = std::env::var("ENFORCER_TEST_LOCK_TIMEOUT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(LOCK_TIMEOUT, Duration::from_secs);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(LOCK_PATH)
        .unwrap_or_else(|e| panic!("open {LOCK_PATH}: {e}"));
    let fd = file.as_raw_fd();
    // SAFETY: flock on an fd we own.
    let got_it_now = unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } == 0;
    let mut file = if got_it_now {
        file
    } else {
        let holder = fs::read_to_string(LOCK_PATH).unwrap_or_default();
        eprintln!(
            "enforcer-tests: waiting up to {timeout:?} for the root-test lock {LOCK_PATH} (last taken by {})",
            holder.trim()
        );
        wait_for_lock(file, timeout).unwrap_or_else(|| {
            panic!(
                "another root test run held {LOCK_PATH} for more than {timeout:?} \
                 (last taken by {}); raise ENFORCER_TEST_LOCK_TIMEOUT_SECS or stop it",
                holder.trim()
            )
        })
    };
    // Record the holder for the message above; purely informative.
    let _ = file.set_len(0).and_then(|()| {
        let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("?"));
        writeln!(file, "pid {} ({})", std::process::id(), exe.display())
    });
    Privileged {
        _process: process,
        _machine: file,
    }
}

/// Blocks in `flock` on a helper thread (fair queueing in the kernel,
/// unlike polling) and gives up after `timeout`. If it gives up, the thread
/// releases the lock as soon as it gets it.
fn wait_for_lock(file: File, timeout: Duration) -> Option<File> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
            // If the receiver gave up, dropping `file` here unlocks.
            let _ = tx.send(file);
        }
    });
    rx.recv_timeout(timeout).ok()
}
