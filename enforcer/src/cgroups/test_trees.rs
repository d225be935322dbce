//! Temporary directory trees for the walk and watcher tests: built and
//! removed relative to directory descriptors (so they may nest past
//! `PATH_MAX`), and a way to run code without the capabilities that let
//! root read any directory.

use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, CWD, Dir, FileType, Mode, OFlags};
use rustix::thread::{CapabilitySet, capabilities, set_capabilities};

/// A temporary directory, removed (deepest first, relative to
/// descriptors, modes restored) when dropped, also when a test fails.
pub(super) struct TempTree {
    dir: tempfile::TempDir,
}

impl TempTree {
    pub(super) fn new() -> TempTree {
        TempTree {
            dir: tempfile::Builder::new()
                .prefix("enforcer-cgroups-")
                .tempdir()
                .expect("temporary directory"),
        }
    }

    pub(super) fn path(&self) -> &Path {
        self.dir.path()
    }

    pub(super) fn join(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub(super) fn mkdir(&self, rel: &str) {
        std::fs::create_dir_all(self.join(rel)).expect("mkdir");
    }

    pub(super) fn chmod(&self, rel: &str, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(self.join(rel), std::fs::Permissions::from_mode(mode))
            .expect("chmod");
    }

    /// `levels` nested directories named `name` below `rel`, made relative
    /// to each other's descriptors; returns the deepest one's path relative
    /// to the tree and an open descriptor of it.
    pub(super) fn chain(&self, rel: &str, name: &str, levels: usize) -> (String, OwnedFd) {
        let mut fd = open_dir(CWD, self.join(rel)).expect("open the chain's parent");
        let mut path = rel.to_owned();
        for _ in 0..levels {
            rustix::fs::mkdirat(&fd, name, Mode::from_raw_mode(0o755)).expect("mkdirat");
            fd = open_dir(&fd, name).expect("open a chain link");
            path = if path.is_empty() {
                name.to_owned()
            } else {
                format!("{path}/{name}")
            };
        }
        (path, fd)
    }
}

impl Drop for TempTree {
    fn drop(&mut self) {
        if let Ok(fd) = open_dir(CWD, self.dir.path()) {
            remove_below(&fd);
        }
    }
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

/// Remove everything below `dir`, depth first, each entry relative to its
/// parent's descriptor; directories a test made unreadable get their mode
/// back first. Best effort: the temporary directory's own removal reports
/// what is left.
fn remove_below(dir: &OwnedFd) {
    let Ok(entries) = Dir::read_from(dir) else {
        return;
    };
    let entries: Vec<(CString, FileType)> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_bytes() != b"." && e.file_name().to_bytes() != b"..")
        .map(|e| (e.file_name().to_owned(), e.file_type()))
        .collect();
    for (name, kind) in entries {
        if kind == FileType::Directory {
            let _ = rustix::fs::chmodat(dir, &name, Mode::from_raw_mode(0o755), AtFlags::empty());
            if let Ok(child) = open_dir(dir, &name) {
                remove_below(&child);
            }
            let _ = rustix::fs::unlinkat(dir, &name, AtFlags::REMOVEDIR);
        } else {
            let _ = rustix::fs::unlinkat(dir, &name, AtFlags::empty());
        }
    }
}

/// Run `f` on a thread without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH
/// (capabilities are per thread), as the packaged daemon runs: a
/// directory of mode 000 is then unreadable even to root.
pub(super) fn without_dac_capabilities<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let mut caps = capabilities(None).expect("capget");
                caps.effective -= CapabilitySet::DAC_OVERRIDE | CapabilitySet::DAC_READ_SEARCH;
                set_capabilities(None, caps).expect("capset");
                f()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}
