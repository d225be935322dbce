//! Forked copies of the test process in a test cgroup, running a closure:
//! for tests whose workload is a few plain socket calls (no program to
//! exec). The child joins the cgroup the way a [`crate::Spawner`] child does,
//! before it runs anything, and ends with `_exit(code)`.
//!
//! A child that the test does not wait for is killed by its cgroup's
//! [`crate::CgroupGuard`] at the latest.

use std::{
    io,
    os::fd::{AsRawFd as _, RawFd},
    path::Path,
};

use crate::process::{open_fd, place_self};

/// The exit code of a child that could not join its cgroup.
pub const JOIN_FAILED: i32 = 200;

/// Forks a child into the cgroup directory `cgroup` running `f` and returns
/// its pid without waiting; the child exits with `f`'s value. Panics if the
/// cgroup cannot be opened or `fork` fails.
///
/// The child only makes system calls before `f`, so forking from the
/// (multi-threaded) test harness is safe as long as `f` does the same:
/// plain socket calls, no locks another thread may hold.
pub fn spawn_in_cgroup(cgroup: &Path, f: impl FnOnce() -> i32) -> i32 {
    let procs = open_fd(&cgroup.join("cgroup.procs"), true)
        .unwrap_or_else(|e| panic!("open the cgroup to join: {e}"));
    let procs_raw: RawFd = procs.as_raw_fd();
    // SAFETY: between fork and `f`, the child only calls getpid, write and
    // close on a descriptor opened above; `f` is the caller's promise.
    unsafe {
        let pid = libc::fork();
        assert!(pid >= 0, "fork: {}", io::Error::last_os_error());
        if pid == 0 {
            if place_self(Some(procs_raw), None).is_err() {
                libc::_exit(JOIN_FAILED);
            }
            libc::close(procs_raw);
            libc::_exit(f());
        }
        pid
    }
}

/// Runs `f` in a forked child placed in `cgroup` and waits for it: the
/// child's exit code.
pub fn in_cgroup(cgroup: &Path, f: impl FnOnce() -> i32) -> i32 {
    wait_child(spawn_in_cgroup(cgroup, f))
}

/// Waits for a child started by [`spawn_in_cgroup`]: its exit code. Panics
/// if it did not exit normally.
pub fn wait_child(pid: i32) -> i32 {
    let mut status = 0;
    // SAFETY: waitpid on our own child, into a local.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status), "child did not exit normally");
    libc::WEXITSTATUS(status)
}

/// Kills a child started by [`spawn_in_cgroup`] and reaps it.
pub fn kill_child(pid: i32) {
    // SAFETY: signalling and reaping our own child.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        let mut status = 0;
        libc::waitpid(pid, &mut status, 0);
    }
}

/// A pipe `(read end, write end)`, to tell a forked child when to go on.
pub fn pipe() -> (i32, i32) {
    let mut fds = [0i32; 2];
    // SAFETY: a pipe for this process and its children, into a local array.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe");
    (fds[0], fds[1])
}

/// Closes both ends of a [`pipe`].
pub fn close_pipe(rd: i32, wr: i32) {
    // SAFETY: closing our own pipe ends.
    unsafe {
        libc::close(rd);
        libc::close(wr);
    }
}
