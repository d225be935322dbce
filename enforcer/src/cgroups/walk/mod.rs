//! The walk behind a [`CgroupTree`] snapshot.
//!
//! Directory by directory through file descriptors: each one is opened
//! relative to its parent's descriptor (`openat`), so neither the depth of
//! the tree nor the length of a path matters (a delegated subtree can be
//! nested far past `PATH_MAX`). Whatever cannot be walked is skipped and
//! reported with a [`SkipReason`], never an error: the daemon must keep
//! discovering cgroups whatever a user with a delegated subtree does below
//! it. Only an unusable root is an error.
//!
//! The walk is bounded ([`ScanLimits`]): at most [`MAX_DEPTH`] levels below
//! the root, [`MAX_CGROUPS`] subdirectories and [`MAX_PATH_BYTES`] of
//! relative paths in all, so a hostile tree cannot make a rescan take
//! unbounded time, memory or file descriptors (one per level is open at a
//! time). Children are walked in byte order of their names, depth first, so
//! a bound cuts the same part of an unchanged tree at every rescan. And
//! delegated subtrees (directories of another user, or that others may
//! write to) are walked last, in a second pass: a cgroup directory belongs
//! to whoever made it, so a user can add cgroups only below a directory
//! root handed over, and filling the bounds there hides no cgroup root
//! made.

mod report;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;
use thiserror::Error;

use super::tree::{CgroupNode, CgroupTree};

pub use report::{ScanReport, SkipReason, Skipped};

/// Deepest level walked below the root (the root's children are level 1).
/// The cgroups of this level are recorded; their subdirectories are not.
pub const MAX_DEPTH: usize = 64;

/// Most subdirectories a walk considers below the root (recorded or
/// skipped), the size of the kernel's cgroup map.
pub const MAX_CGROUPS: usize = enforcer_common::capacity::MAX_CGROUPS as usize;

/// Most bytes of relative paths a snapshot holds (the paths of a deep tree
/// grow with the square of its depth). A host's few thousand cgroups take
/// well under a megabyte.
pub const MAX_PATH_BYTES: usize = 16 << 20;

/// A directory listing reads at most this many times
/// [`ScanLimits::max_cgroups`] entries, keeping the first in byte order.
pub const LISTING_FACTOR: usize = 4;

/// How many skipped directories a [`ScanReport`] names (all are counted).
pub const MAX_NAMED_SKIPS: usize = 16;

/// Bounds of one walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScanLimits {
    /// Deepest level walked (see [`MAX_DEPTH`]).
    pub max_depth: usize,
    /// Most subdirectories considered (see [`MAX_CGROUPS`]).
    pub max_cgroups: usize,
    /// Most bytes of relative paths recorded (see [`MAX_PATH_BYTES`]).
    pub max_path_bytes: usize,
}

impl Default for ScanLimits {
    fn default() -> Self {
        ScanLimits {
            max_depth: MAX_DEPTH,
            max_cgroups: MAX_CGROUPS,
            max_path_bytes: MAX_PATH_BYTES,
        }
    }
}

/// A snapshot and what its walk could not see.
#[derive(Clone, Debug)]
pub struct Scan {
    pub tree: CgroupTree,
    pub report: ScanReport,
}

/// The root itself cannot be walked: nothing can be discovered.
#[derive(Debug, Error)]
#[error("cannot {action} the cgroup root {}", root.display())]
pub struct ScanError {
    pub root: PathBuf,
    /// `open`, `stat` or `list`.
    pub action: &'static str,
    #[source]
    pub source: io::Error,
}

/// A directory the walk opened, shown to the visitor before it is listed
/// (so that a watch added then sees whatever is created after the listing).
pub struct Visit<'a> {
    /// Relative to the root (`""` for the root itself).
    pub path: &'a str,
    pub node: CgroupNode,
    /// The open directory, valid during the call.
    pub fd: BorrowedFd<'a>,
}

/// A directory being walked: its descriptor and the children not walked
/// yet, in reverse byte order (popped from the end).
struct Frame {
    fd: OwnedFd,
    path: String,
    depth: usize,
    children: Vec<CString>,
}

/// Which directories a pass descends into.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// Only those of the daemon's own user that nobody else may write to;
    /// the others are recorded and left for the second pass.
    Trusted,
    /// Every one.
    All,
}

/// Walk the tree under `root` within `limits`, calling `visit` for every
/// directory opened. See the module documentation.
///
/// Two passes: first what the daemon's own user (root) owns and nobody
/// else may write to, then the subtrees delegated to other users, with what
/// is left of the bounds. A cgroup directory is owned by whoever made it,
/// mode 0755, so a user can only add cgroups below a directory root handed
/// over (systemd `Delegate=`): a user filling the bounds hides delegated
/// subtrees (their own, and other users'), never a cgroup root made.
pub fn scan(
    root: &Path,
    limits: ScanLimits,
    mut visit: impl FnMut(Visit<'_>),
) -> Result<Scan, ScanError> {
    let root_error = |action, errno: Errno| ScanError {
        root: root.to_path_buf(),
        action,
        source: errno.into(),
    };
    let open_root =
        || rustix::fs::open(root, dir_flags(), Mode::empty()).map_err(|e| root_error("open", e));
    let root_fd = open_root()?;
    let root_node = rustix::fs::fstat(&root_fd)
        .map(|stat| node_of(&stat))
        .map_err(|e| root_error("stat", e))?;
    let mut walk = Walk {
        limits,
        trusted_uid: rustix::process::geteuid().as_raw(),
        budget: limits.max_cgroups,
        path_bytes: limits.max_path_bytes,
        limit_hit: false,
        nodes: BTreeMap::from([(String::new(), root_node)]),
        delegated: Vec::new(),
        report: ScanReport::default(),
    };
    visit(Visit {
        path: "",
        node: root_node,
        fd: root_fd.as_fd(),
    });
    let children = walk.list(&root_fd, "").map_err(|e| root_error("list", e))?;
    let frame = Frame {
        fd: root_fd,
        path: String::new(),
        depth: 0,
        children,
    };
    walk.below(frame, Pass::Trusted, &mut visit);
    let delegated = std::mem::take(&mut walk.delegated);
    if !delegated.is_empty() && !walk.limit_hit {
        let root_fd = open_root()?;
        for (path, depth) in delegated {
            if walk.limit_hit {
                break;
            }
            if let Some(frame) = walk.reopen(&root_fd, path, depth, &mut visit) {
                walk.below(frame, Pass::All, &mut visit);
            }
        }
    }
    let Walk { nodes, report, .. } = walk;
    Ok(Scan {
        tree: CgroupTree::from_nodes(root.to_path_buf(), nodes),
        report,
    })
}

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC
}

fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_owned()
    } else {
        format!("{parent}/{name}")
    }
}

fn is_dir(stat: &Stat) -> bool {
    FileType::from_raw_mode(stat.st_mode) == FileType::Directory
}

fn node_of(stat: &Stat) -> CgroupNode {
    CgroupNode {
        #[expect(
            clippy::useless_conversion,
            reason = "st_ino is c_ulong on some targets, u64 on others"
        )]
        id: u64::from(stat.st_ino),
        owner_uid: stat.st_uid,
        others_may_write: stat.st_mode & 0o022 != 0,
    }
}

/// The state of one walk.
struct Walk {
    limits: ScanLimits,
    /// The daemon's own user: its directories are walked first.
    trusted_uid: u32,
    /// Subdirectories that may still be considered.
    budget: usize,
    /// Bytes of paths that may still be recorded.
    path_bytes: usize,
    /// The size limit was hit (and recorded, once per walk).
    limit_hit: bool,
    nodes: BTreeMap<String, CgroupNode>,
    /// Delegated directories (path, depth) left for the second pass.
    delegated: Vec<(String, usize)>,
    report: ScanReport,
}

impl Walk {
    /// Depth first below `top`, in byte order, within the bounds.
    fn below(&mut self, top: Frame, pass: Pass, visit: &mut impl FnMut(Visit<'_>)) {
        let mut stack = vec![top];
        while let Some(frame) = stack.last_mut() {
            let Some(name) = frame.children.pop() else {
                stack.pop();
                continue;
            };
            if self.budget == 0 {
                self.size_limit(&frame.path);
                return;
            }
            self.budget -= 1;
            let Ok(utf8) = name.to_str() else {
                let lossy = join(&frame.path, &name.to_string_lossy());
                self.report.record(lossy, SkipReason::NotUtf8, None);
                continue;
            };
            let path = join(&frame.path, utf8);
            let Some(left) = self.path_bytes.checked_sub(path.len()) else {
                self.size_limit(&frame.path);
                return;
            };
            self.path_bytes = left;
            let depth = frame.depth + 1;
            let Some(fd) = self.open(&frame.fd, &name, &path) else {
                continue;
            };
            let Some(stat) = self.stat(&fd, &path) else {
                continue;
            };
            visit(Visit {
                path: &path,
                node: node_of(&stat),
                fd: fd.as_fd(),
            });
            let others_may_write = stat.st_mode & 0o022 != 0;
            if pass == Pass::Trusted && (stat.st_uid != self.trusted_uid || others_may_write) {
                self.delegated.push((path, depth));
                continue;
            }
            if let Some(frame) = self.enter(fd, path, depth) {
                stack.push(frame);
            }
        }
    }

    /// Record the directory open at `fd` (`path` in the tree).
    fn stat(&mut self, fd: &OwnedFd, path: &str) -> Option<Stat> {
        match rustix::fs::fstat(fd) {
            Ok(stat) => {
                self.nodes.insert(path.to_owned(), node_of(&stat));
                Some(stat)
            }
            Err(errno) => {
                self.report
                    .record(path.to_owned(), SkipReason::Error, Some(errno));
                None
            }
        }
    }

    /// The directory open at `fd`, ready to walk below, unless it is at
    /// the depth bound or has no subdirectories.
    fn enter(&mut self, fd: OwnedFd, path: String, depth: usize) -> Option<Frame> {
        if depth >= self.limits.max_depth {
            match subdirectories(&fd).and_then(|mut names| names.next().transpose()) {
                Ok(None) => {}
                Ok(Some(_)) => self.report.record(path, SkipReason::DepthLimit, None),
                Err(errno) => self.report.record(path, SkipReason::of(errno), Some(errno)),
            }
            return None;
        }
        match self.list(&fd, &path) {
            Ok(children) if children.is_empty() => None,
            Ok(children) => Some(Frame {
                fd,
                path,
                depth,
                children,
            }),
            Err(errno) => {
                self.report.record(path, SkipReason::of(errno), Some(errno));
                None
            }
        }
    }

    /// Open a delegated directory the first pass recorded again, one
    /// component at a time from the root (its path may be longer than
    /// `PATH_MAX`), ready to walk below.
    fn reopen(
        &mut self,
        root: &OwnedFd,
        path: String,
        depth: usize,
        visit: &mut impl FnMut(Visit<'_>),
    ) -> Option<Frame> {
        let mut fd = None;
        for component in path.split('/') {
            let parent = fd.as_ref().unwrap_or(root);
            let flags = dir_flags() | OFlags::NOFOLLOW;
            match rustix::fs::openat(parent, component, flags, Mode::empty()) {
                Ok(next) => fd = Some(next),
                Err(errno) => {
                    // Changed between the passes.
                    let reason = SkipReason::of(errno);
                    if reason == SkipReason::Vanished {
                        self.nodes.remove(&path);
                    }
                    self.report.record(path, reason, Some(errno));
                    return None;
                }
            }
        }
        let fd = fd?;
        let seen = self.nodes.get(&path).copied();
        let stat = self.stat(&fd, &path)?;
        if seen != Some(node_of(&stat)) {
            // Replaced between the passes: visited in neither yet.
            visit(Visit {
                path: &path,
                node: node_of(&stat),
                fd: fd.as_fd(),
            });
        }
        self.enter(fd, path, depth)
    }

    fn size_limit(&mut self, path: &str) {
        if !self.limit_hit {
            self.limit_hit = true;
            self.report
                .record(path.to_owned(), SkipReason::SizeLimit, None);
        }
    }

    /// Open the subdirectory `name` of `parent` (`path` in the tree), or
    /// record why not.
    fn open(&mut self, parent: &OwnedFd, name: &CString, path: &str) -> Option<OwnedFd> {
        let errno =
            match rustix::fs::openat(parent, name, dir_flags() | OFlags::NOFOLLOW, Mode::empty()) {
                Ok(fd) => return Some(fd),
                // A plain file whose type `getdents` did not tell, or an entry
                // replaced by one: not a cgroup.
                Err(Errno::NOTDIR | Errno::LOOP) => return None,
                Err(errno) => errno,
            };
        // Searching the parent is enough to learn the id and owner of a
        // cgroup that cannot be opened itself.
        match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) if is_dir(&stat) => {
                self.nodes.insert(path.to_owned(), node_of(&stat));
                self.report
                    .record(path.to_owned(), SkipReason::of(errno), Some(errno));
            }
            Ok(_) => {}
            Err(Errno::NOENT) => self
                .report
                .record(path.to_owned(), SkipReason::Vanished, None),
            Err(_) => self
                .report
                .record(path.to_owned(), SkipReason::of(errno), Some(errno)),
        }
        None
    }

    /// The subdirectory names of `fd` (`path` in the tree), in reverse
    /// byte order so that popping yields byte order. No more than the
    /// budget: a directory with more keeps the first in byte order (the
    /// same at every rescan) and records the size limit. At most
    /// [`LISTING_FACTOR`] times the cgroup bound are read.
    fn list(&mut self, fd: &OwnedFd, path: &str) -> Result<Vec<CString>, Errno> {
        let mut kept = std::collections::BinaryHeap::new();
        let mut truncated = false;
        let most = self.limits.max_cgroups.saturating_mul(LISTING_FACTOR);
        for (read, name) in subdirectories(fd)?.enumerate() {
            if read == most {
                truncated = true;
                break;
            }
            kept.push(name?);
            if kept.len() > self.budget {
                kept.pop(); // the greatest so far
                truncated = true;
            }
        }
        if truncated {
            self.size_limit(path);
        }
        let mut names = kept.into_vec();
        names.sort_unstable_by(|a, b| b.cmp(a));
        Ok(names)
    }
}

/// The names of the subdirectories of `fd`, entries of unknown type
/// included (opening them tells), in the order the filesystem gives.
fn subdirectories(fd: &OwnedFd) -> Result<impl Iterator<Item = Result<CString, Errno>>, Errno> {
    // `Dir` reads through its own descriptor, with its own position.
    let dir = Dir::read_from(fd)?;
    Ok(dir.filter_map(|entry| {
        let entry = match entry {
            Ok(entry) => entry,
            Err(errno) => return Some(Err(errno)),
        };
        let name = entry.file_name();
        let is_candidate = matches!(entry.file_type(), FileType::Directory | FileType::Unknown)
            && name.to_bytes() != b"."
            && name.to_bytes() != b"..";
        is_candidate.then(|| Ok(name.to_owned()))
    }))
}
