//! Test cgroups on the cgroup v2 hierarchy, removed with everything in them.

use std::{
    ffi::CString,
    fs,
    io::{self, Write},
    os::{fd::OwnedFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
    sync::OnceLock,
    time::Duration,
};

use rustix::fs::{AtFlags, CWD, Dir, FileType, Mode, OFlags};
use rustix::io::Errno;

use crate::{
    error::{Error, Result},
    util::{next_serial, poll_until},
};

/// Prefix of every top-level cgroup this crate creates; followed by
/// `<pid>-<serial>`, so that leftovers of a killed run can be recognised.
pub const CGROUP_PREFIX: &str = "enforcer-test-";

/// How long teardown waits for killed processes to leave a cgroup.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The mount point of the cgroup v2 hierarchy (from `/proc/self/mountinfo`):
/// `/sys/fs/cgroup/unified` on hybrid hosts, `/sys/fs/cgroup` on pure v2.
pub fn cgroup2_mount() -> Result<&'static Path> {
    static MOUNT: OnceLock<Option<PathBuf>> = OnceLock::new();
    MOUNT
        .get_or_init(|| {
            let text = fs::read_to_string("/proc/self/mountinfo").ok()?;
            parse_cgroup2_mount(&text)
        })
        .as_deref()
        .ok_or(Error::NoCgroup2)
}

/// Finds the first cgroup2 mount point in mountinfo text.
fn parse_cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPER"
        let (left, right) = line.split_once(" - ")?;
        if right.split(' ').next()? != "cgroup2" {
            return None;
        }
        let mount_point = left.split(' ').nth(4)?;
        Some(PathBuf::from(unescape_mountinfo(mount_point)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            let d = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(d, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup v2 path of a process relative to the mount (the `0::` line
/// of `/proc/PID/cgroup`), e.g. `/enforcer-test-42-0`.
pub fn cgroup_of_pid(pid: u32) -> Result<String> {
    let file = format!("/proc/{pid}/cgroup");
    let text = fs::read_to_string(&file).map_err(|e| Error::io("read", &file, e))?;
    text.lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(str::to_owned)
        .ok_or_else(|| Error::BadOutput {
            what: file,
            output: text.clone(),
        })
}

/// A cgroup created for one test. Dropping it kills every process in it
/// and in its descendants, waits until they are gone and removes the
/// directories, deepest first.
///
/// Top-level test cgroups are named `enforcer-test-<pid>-<serial>` directly
/// under the cgroup2 mount; [`CgroupGuard::child`] nests further ones. The
/// test runner itself is never moved into one, and teardown moves it back
/// out first should a test have done so.
#[derive(Debug)]
pub struct CgroupGuard {
    path: PathBuf,
    relative: String,
    id: u64,
    /// `/proc/self/cgroup` at creation, where the runner is put back if a
    /// test moved it into this cgroup.
    runner_home: String,
    removed: bool,
}

impl CgroupGuard {
    /// Creates a fresh top-level test cgroup.
    pub fn new() -> Result<Self> {
        let mount = cgroup2_mount()?;
        let name = format!("{CGROUP_PREFIX}{}-{}", std::process::id(), next_serial());
        Self::create(mount.join(name))
    }

    /// Creates a child cgroup `name` (one path component) inside this one.
    /// The child gets its own guard; it is also removed when this one is.
    pub fn child(&self, name: &str) -> Result<Self> {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(Error::io(
                "mkdir",
                self.path.join(name),
                io::Error::new(io::ErrorKind::InvalidInput, "not a single path component"),
            ));
        }
        Self::create(self.path.join(name))
    }

    /// Like [`CgroupGuard::child`], but the directory is made by `uid` (a
    /// user who may write this one, e.g. after [`CgroupGuard::chown`]), as
    /// a user manager or a delegated service makes its cgroups: the kernel
    /// sees who made it.
    pub fn child_as(&self, name: &str, uid: u32) -> Result<Self> {
        let path = self.path.join(name);
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(Error::io(
                "mkdir",
                path,
                io::Error::new(io::ErrorKind::InvalidInput, "not a single path component"),
            ));
        }
        mkdir_as(&path, uid)?;
        Self::adopt(path)
    }

    /// Hands the directory to `uid`, as systemd does for `Delegate=` units
    /// and user managers.
    pub fn chown(&self, uid: u32) -> Result<()> {
        std::os::unix::fs::chown(&self.path, Some(uid), Some(uid))
            .map_err(|e| Error::io("chown", &self.path, e))
    }

    fn create(path: PathBuf) -> Result<Self> {
        fs::create_dir(&path).map_err(|e| Error::io("mkdir", &path, e))?;
        Self::adopt(path)
    }

    /// The guard of a cgroup directory that exists.
    fn adopt(path: PathBuf) -> Result<Self> {
        let mount = cgroup2_mount()?;
        let id = fs::metadata(&path)
            .map_err(|e| Error::io("stat", &path, e))?
            .ino();
        let relative = path
            .strip_prefix(mount)
            .map(|rel| format!("/{}", rel.display()))
            .unwrap_or_default();
        Ok(Self {
            path,
            relative,
            id,
            runner_home: cgroup_of_pid(std::process::id())?,
            removed: false,
        })
    }

    /// Nests `levels` cgroups named `name` below this one, each made
    /// relative to its parent's descriptor (`mkdirat`), so that the chain
    /// may reach past `PATH_MAX`, where paths cannot go; returns the
    /// deepest one, open (for `mkdirat` below it). They go with this
    /// guard: teardown removes relative to descriptors too.
    pub fn nest(&self, name: &str, levels: usize) -> Result<OwnedFd> {
        let mut fd =
            open_dir(CWD, &self.path).map_err(|e| Error::io("open", &self.path, e.into()))?;
        for level in 1..=levels {
            let shown = || self.path.join(format!("{name}/ (level {level})"));
            rustix::fs::mkdirat(&fd, name, Mode::from_raw_mode(0o755))
                .map_err(|e| Error::io("mkdirat", shown(), e.into()))?;
            fd = open_dir(&fd, name).map_err(|e| Error::io("openat", shown(), e.into()))?;
        }
        Ok(fd)
    }

    /// The directory of the cgroup (under the cgroup2 mount).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path relative to the mount, as `/proc/PID/cgroup` shows it
    /// (`/enforcer-test-42-0/web`).
    pub fn relative_path(&self) -> &str {
        &self.relative
    }

    /// The cgroup id: the inode number of its directory, which is what
    /// `bpf_get_current_cgroup_id` and `bpf_skb_cgroup_id` report.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Pids directly in this cgroup (not in its children).
    pub fn procs(&self) -> Result<Vec<u32>> {
        read_procs(&self.path)
    }

    /// Whether `pid` is in exactly this cgroup.
    pub fn contains(&self, pid: u32) -> bool {
        cgroup_of_pid(pid).is_ok_and(|cg| cg == self.relative)
    }

    /// Whether any process is in this cgroup or a descendant
    /// (`populated` in `cgroup.events`).
    pub fn populated(&self) -> Result<bool> {
        populated(&self.path)
    }

    /// Moves an existing process into this cgroup.
    pub fn add_pid(&self, pid: u32) -> Result<()> {
        let procs = self.path.join("cgroup.procs");
        fs::write(&procs, pid.to_string()).map_err(|e| Error::io("write", procs, e))
    }

    /// Tears the cgroup down now and reports whether it worked, unlike
    /// `Drop`, which can only print what went wrong.
    pub fn remove(mut self) -> Result<()> {
        self.removed = true;
        teardown(&self.path, Some(&self.runner_home))
    }
}

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        if !self.removed
            && let Err(err) = teardown(&self.path, Some(&self.runner_home))
        {
            // Drop cannot return an error; stderr reaches the test output.
            eprintln!(
                "enforcer-tests: removing cgroup {}: {err}",
                self.path.display()
            );
        }
    }
}

/// `mkdir` as `uid` (with that user's uid as its gid and no supplementary
/// groups), for directories the kernel must see made by that user: a
/// delegated cgroup subtree, a user manager's cgroups. Root makes it
/// directly.
pub fn mkdir_as(dir: &Path, uid: u32) -> Result<()> {
    if uid == 0 {
        return fs::create_dir(dir).map_err(|e| Error::io("mkdir", dir, e));
    }
    let status = std::process::Command::new("setpriv")
        .args([
            format!("--reuid={uid}"),
            format!("--regid={uid}"),
            "--clear-groups".into(),
            "mkdir".into(),
        ])
        .arg(dir)
        .status()
        .map_err(|e| Error::io("setpriv mkdir", dir, e))?;
    if !status.success() {
        return Err(Error::io(
            "mkdir",
            dir,
            io::Error::other(format!("as uid {uid}: {status}")),
        ));
    }
    Ok(())
}

fn read_procs(dir: &Path) -> Result<Vec<u32>> {
    let file = dir.join("cgroup.procs");
    let text = fs::read_to_string(&file).map_err(|e| Error::io("read", &file, e))?;
    Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

fn populated(dir: &Path) -> Result<bool> {
    let file = dir.join("cgroup.events");
    let text = fs::read_to_string(&file).map_err(|e| Error::io("read", &file, e))?;
    Ok(text.lines().any(|l| l == "populated 1"))
}

/// All directories of the subtree rooted at `dir`, parents before children.
fn subtree(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        if let Ok(entries) = fs::read_dir(&out[i]) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    out.push(entry.path());
                }
            }
        }
        i += 1;
    }
    out
}

/// Kills everything in the subtree at `dir`, waits until it is empty and
/// removes it deepest first. `runner_home` is where to move this process
/// should it find itself inside (`None`: the root cgroup). What every
/// cgroup guard, the reaper and the benchmark's sandboxes remove with.
pub fn teardown(dir: &Path, runner_home: Option<&str>) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let mount = cgroup2_mount()?;
    // Never kill the test runner: if a test moved it in, move it back out.
    let me = std::process::id();
    let mine = mount.join(cgroup_of_pid(me)?.trim_start_matches('/'));
    if mine.starts_with(dir) {
        let home = runner_home
            .filter(|h| !mount.join(h.trim_start_matches('/')).starts_with(dir))
            .unwrap_or("/");
        let procs = mount
            .join(home.trim_start_matches('/'))
            .join("cgroup.procs");
        fs::write(&procs, me.to_string()).map_err(|e| Error::io("write", &procs, e))?;
    }

    kill_subtree(dir);
    let drained = poll_until(DRAIN_TIMEOUT, || {
        match populated(dir) {
            Ok(false) => Some(()),
            Err(_) if !dir.exists() => Some(()),
            _ => {
                // Without cgroup.kill a process may fork between our read
                // of cgroup.procs and the kill: keep killing until empty.
                kill_subtree(dir);
                None
            }
        }
    });
    if drained.is_none() {
        let left: Vec<String> = subtree(dir)
            .iter()
            .flat_map(|d| read_procs(d).unwrap_or_default())
            .map(|p| p.to_string())
            .collect();
        return Err(Error::Cleanup(format!(
            "{} still has processes after {DRAIN_TIMEOUT:?}: {}",
            dir.display(),
            left.join(" ")
        )));
    }

    remove_subtree(dir)
}

fn open_dir(
    parent: impl std::os::fd::AsFd,
    path: impl rustix::path::Arg,
) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        parent,
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Removes the directories of the subtree at `dir`, deepest first, each
/// relative to its parent's descriptor: a subtree may nest past
/// `PATH_MAX`, where paths cannot reach.
fn remove_subtree(dir: &Path) -> Result<()> {
    let fd = match open_dir(CWD, dir) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(Error::io("open", dir, e.into())),
    };
    remove_below(&fd, dir)?;
    drop(fd);
    rmdir_at(CWD, dir, dir)
}

/// Removes every directory below `parent` (shown as `shown` in errors).
fn remove_below(parent: &OwnedFd, shown: &Path) -> Result<()> {
    let names: Vec<CString> = Dir::read_from(parent)
        .map_err(|e| Error::io("opendir", shown, e.into()))?
        .filter_map(std::result::Result::ok)
        .filter(|entry| entry.file_type() == FileType::Directory)
        .map(|entry| entry.file_name().to_owned())
        .filter(|name| name.to_bytes() != b"." && name.to_bytes() != b"..")
        .collect();
    for name in names {
        let shown = shown.join(name.to_string_lossy().as_ref());
        match open_dir(parent, &name) {
            Ok(child) => remove_below(&child, &shown)?,
            Err(Errno::NOENT) => continue,
            Err(e) => return Err(Error::io("openat", shown, e.into())),
        }
        rmdir_at(parent, &name, &shown)?;
    }
    Ok(())
}

/// `rmdir`, relative to `parent`. It can briefly fail with EBUSY while
/// exiting tasks are still being released; retry within the bound.
fn rmdir_at(
    parent: impl std::os::fd::AsFd,
    name: impl rustix::path::Arg + Copy,
    shown: &Path,
) -> Result<()> {
    let mut last = None;
    let done = poll_until(DRAIN_TIMEOUT, || {
        match rustix::fs::unlinkat(&parent, name, AtFlags::REMOVEDIR) {
            Ok(()) | Err(Errno::NOENT) => Some(()),
            Err(e) => {
                last = Some(io::Error::from(e));
                None
            }
        }
    });
    match done {
        Some(()) => Ok(()),
        None => Err(Error::io(
            "rmdir",
            shown,
            last.unwrap_or_else(|| io::Error::other("rmdir did not succeed")),
        )),
    }
}

/// Sends SIGKILL to every process in the subtree: one write to
/// `cgroup.kill` (Linux 5.14+), else each pid from every `cgroup.procs`.
fn kill_subtree(dir: &Path) {
    let kill_file = dir.join("cgroup.kill");
    if kill_file.exists() {
        let written = fs::OpenOptions::new()
            .write(true)
            .open(&kill_file)
            .and_then(|mut f| f.write_all(b"1"));
        if written.is_ok() {
            return;
        }
    }
    kill_each_pid(dir);
}

/// The fallback of [`kill_subtree`] for kernels without `cgroup.kill`:
/// SIGKILL every pid listed in the subtree, deepest cgroups first.
fn kill_each_pid(dir: &Path) {
    let me = std::process::id();
    for sub in subtree(dir).iter().rev() {
        for pid in read_procs(sub).unwrap_or_default() {
            if pid == me {
                continue;
            }
            if let Ok(pid) = libc::pid_t::try_from(pid) {
                // SAFETY: plain kill(2) on a pid read from cgroup.procs.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_mount_on_hybrid_and_unified_hosts() {
        let hybrid = "25 30 0:22 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs ro,mode=755\n\
                      41 25 0:38 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw\n\
                      42 25 0:39 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(
            parse_cgroup2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified =
            "30 1 0:26 / /sys/fs/cgroup rw,nosuid,nodev - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            parse_cgroup2_mount(unified),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(
            parse_cgroup2_mount("30 1 0:26 / /x rw - cgroup cgroup rw\n"),
            None
        );
    }

    #[test]
    fn the_fallback_without_cgroup_kill_empties_a_forking_tree() {
        let _root = crate::privileged!();
        let cg = CgroupGuard::new().unwrap();
        let leaf = cg.child("leaf").unwrap();
        // A shell that keeps forking; kill-by-pid must outrun it.
        let mut shell = crate::Spawner::new("sh")
            .args(["-c", "echo up; while true; do sleep 30 & sleep 0.01; done"])
            .cgroup(&leaf)
            .spawn()
            .unwrap();
        assert_eq!(
            shell.read_line(Duration::from_secs(5)).unwrap().as_deref(),
            Some("up")
        );
        let emptied = poll_until(DRAIN_TIMEOUT, || {
            kill_each_pid(cg.path());
            (!cg.populated().unwrap()).then_some(())
        });
        assert!(emptied.is_some(), "left: {:?}", leaf.procs());
        cg.remove().unwrap();
    }

    #[test]
    fn unescapes_mountinfo_octal() {
        assert_eq!(unescape_mountinfo(r"/mnt/a\040b"), "/mnt/a b");
        assert_eq!(unescape_mountinfo(r"/plain"), "/plain");
        assert_eq!(unescape_mountinfo(r"/trailing\04"), r"/trailing\04");
    }
}
