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

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;
use thiserror::Error;

use super::tree::{CgroupNode, CgroupTree};

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

/// Why part of the tree was not walked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SkipReason {
    /// The directory cannot be opened or listed (its mode denies it): it is
    /// in the snapshot (its id and owner come from its parent), what lies
    /// below it is not.
    Unreadable,
    /// Removed while the walk reached it: normal churn (systemd creates and
    /// removes scopes all the time).
    Vanished,
    /// At [`ScanLimits::max_depth`] and has subdirectories, which are not
    /// walked.
    DepthLimit,
    /// The walk stopped in this directory at [`ScanLimits::max_cgroups`]
    /// or [`ScanLimits::max_path_bytes`]: the rest of the tree is not
    /// walked.
    SizeLimit,
    /// The name is not UTF-8: selectors and `status` speak UTF-8, and a
    /// lossy conversion could make two names one. Skipped with its subtree.
    NotUtf8,
    /// Anything else (file descriptors or memory exhausted, I/O errors).
    Error,
}

impl SkipReason {
    /// Every reason, in the order `status` and the metrics list them.
    pub const ALL: [SkipReason; 6] = [
        SkipReason::Unreadable,
        SkipReason::Vanished,
        SkipReason::DepthLimit,
        SkipReason::SizeLimit,
        SkipReason::NotUtf8,
        SkipReason::Error,
    ];

    /// The name in `status --json` and in the metrics' `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::Unreadable => "unreadable",
            SkipReason::Vanished => "vanished",
            SkipReason::DepthLimit => "depth_limit",
            SkipReason::SizeLimit => "size_limit",
            SkipReason::NotUtf8 => "not_utf8",
            SkipReason::Error => "error",
        }
    }

    fn of(errno: Errno) -> SkipReason {
        match errno {
            Errno::ACCESS | Errno::PERM => SkipReason::Unreadable,
            Errno::NOENT => SkipReason::Vanished,
            _ => SkipReason::Error,
        }
    }
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One directory the walk skipped (or did not walk below).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// Relative to the root, as in the tree (a name that is not UTF-8 is
    /// shown lossily). May be longer than `PATH_MAX`.
    pub path: String,
    pub reason: SkipReason,
    /// The `errno` behind an `unreadable` or `error` skip.
    pub errno: Option<i32>,
}

/// What a walk could not see.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanReport {
    counts: BTreeMap<SkipReason, u64>,
    named: Vec<Skipped>,
}

impl ScanReport {
    /// Directories skipped for `reason`.
    pub fn count(&self, reason: SkipReason) -> u64 {
        self.counts.get(&reason).copied().unwrap_or(0)
    }

    /// Skipped directories of every reason.
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    /// The first [`MAX_NAMED_SKIPS`] skipped directories, in walk order.
    pub fn named(&self) -> &[Skipped] {
        &self.named
    }

    fn record(&mut self, path: String, reason: SkipReason, errno: Option<Errno>) {
        *self.counts.entry(reason).or_insert(0) += 1;
        if self.named.len() < MAX_NAMED_SKIPS {
            self.named.push(Skipped {
                path,
                reason,
                errno: errno.map(Errno::raw_os_error),
            });
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use crate::cgroups::test_trees::{TempTree, without_dac_capabilities};

    fn paths(tree: &CgroupTree) -> Vec<&str> {
        tree.iter().map(|(p, _)| p).collect()
    }

    fn no_visit(_: Visit<'_>) {}

    #[test]
    fn records_every_directory_with_its_inode_and_owner() {
        let t = TempTree::new();
        t.mkdir("a/b");
        t.mkdir("c");
        std::fs::write(t.join("a/cgroup.procs"), "").unwrap();
        let is_root = rustix::process::geteuid().is_root();
        if is_root {
            // Root can hand a directory over, as systemd does for `Delegate=`.
            rustix::fs::chown(t.join("c"), Some(rustix::fs::Uid::from_raw(65534)), None).unwrap();
        }
        let mut visited = Vec::new();
        let scan = scan(t.path(), ScanLimits::default(), |v| {
            visited.push(v.path.to_owned())
        })
        .unwrap();
        assert_eq!(paths(&scan.tree), ["", "a", "a/b", "c"]);
        assert_eq!(visited, ["", "a", "a/b", "c"], "byte order, depth first");
        assert_eq!(scan.report, ScanReport::default());
        for rel in ["a/b", "c"] {
            let meta = std::fs::metadata(t.join(rel)).unwrap();
            let node = scan.tree.node(rel).unwrap();
            assert_eq!((node.id, node.owner_uid), (meta.ino(), meta.uid()), "{rel}");
        }
        if is_root {
            assert_eq!(scan.tree.owner_of("c"), Some(65534));
            assert_eq!(scan.tree.owner_of("a"), Some(0));
        }
    }

    /// Mode 000 denies even root once CAP_DAC_OVERRIDE and
    /// CAP_DAC_READ_SEARCH are gone, as in the packaged daemon.
    #[test]
    fn an_unreadable_directory_is_recorded_and_not_walked_into() {
        let t = TempTree::new();
        t.mkdir("locked/inside");
        t.mkdir("open/child");
        t.chmod("locked", 0o000);
        let scan = without_dac_capabilities(|| scan(t.path(), ScanLimits::default(), no_visit))
            .expect("a bad child never fails the walk");
        assert_eq!(paths(&scan.tree), ["", "locked", "open", "open/child"]);
        let meta = std::fs::metadata(t.join("locked")).unwrap();
        assert_eq!(
            scan.tree.id_of("locked"),
            Some(meta.ino()),
            "known from its parent"
        );
        assert_eq!(scan.tree.owner_of("locked"), Some(meta.uid()));
        assert_eq!(scan.report.count(SkipReason::Unreadable), 1);
        assert_eq!(scan.report.total(), 1);
        assert_eq!(
            scan.report.named(),
            [Skipped {
                path: "locked".into(),
                reason: SkipReason::Unreadable,
                errno: Some(libc::EACCES),
            }]
        );
    }

    #[test]
    fn an_unreadable_root_is_an_error() {
        let t = TempTree::new();
        t.mkdir("root/child");
        t.chmod("root", 0o000);
        let error = without_dac_capabilities(|| {
            scan(&t.join("root"), ScanLimits::default(), no_visit).unwrap_err()
        });
        assert_eq!(error.action, "open");
        assert_eq!(error.source.raw_os_error(), Some(libc::EACCES));
        let missing = scan(&t.join("missing"), ScanLimits::default(), no_visit).unwrap_err();
        assert!(
            missing.to_string().contains("cannot open the cgroup root"),
            "{missing}"
        );
    }

    #[test]
    fn a_directory_removed_during_the_walk_is_skipped_as_vanished() {
        let t = TempTree::new();
        t.mkdir("a/x");
        t.mkdir("a/y/below");
        t.mkdir("b");
        // `a` is listed (x and y) before x is visited; y goes then.
        let y = t.join("a/y");
        let scan = scan(t.path(), ScanLimits::default(), |v| {
            if v.path == "a/x" {
                std::fs::remove_dir_all(&y).unwrap();
            }
        })
        .unwrap();
        assert_eq!(paths(&scan.tree), ["", "a", "a/x", "b"]);
        assert_eq!(scan.report.count(SkipReason::Vanished), 1);
        assert_eq!(scan.report.named()[0].path, "a/y");
    }

    #[test]
    fn a_tree_deeper_than_path_max_is_walked_whole() {
        let t = TempTree::new();
        let name = "d".repeat(200);
        let (deepest, fd) = t.chain("", &name, 30);
        assert!(deepest.len() > libc::PATH_MAX as usize);
        let id = rustix::fs::fstat(&fd).unwrap().st_ino;
        drop(fd);
        let scan = scan(t.path(), ScanLimits::default(), no_visit).unwrap();
        assert_eq!(scan.tree.len(), 31);
        assert_eq!(scan.tree.id_of(&deepest), Some(id));
        assert_eq!(scan.report, ScanReport::default());
    }

    #[test]
    fn the_depth_bound_records_where_it_stopped() {
        let t = TempTree::new();
        t.chain("", "a", 5);
        t.mkdir("leaf/x/y");
        let limits = ScanLimits {
            max_depth: 3,
            ..ScanLimits::default()
        };
        let scan = scan(t.path(), limits, no_visit).unwrap();
        assert_eq!(
            paths(&scan.tree),
            ["", "a", "a/a", "a/a/a", "leaf", "leaf/x", "leaf/x/y"]
        );
        // `leaf/x/y` is at the bound too, but has nothing below it.
        assert_eq!(
            scan.report.named(),
            [Skipped {
                path: "a/a/a".into(),
                reason: SkipReason::DepthLimit,
                errno: None,
            }]
        );
    }

    #[test]
    fn the_cgroup_count_bound_stops_the_walk_at_the_same_place_every_time() {
        let t = TempTree::new();
        for name in ["a/1", "a/2", "a/3", "b/1", "b/2", "c"] {
            t.mkdir(name);
        }
        let limits = ScanLimits {
            max_cgroups: 5,
            ..ScanLimits::default()
        };
        for _ in 0..3 {
            let scan = scan(t.path(), limits, no_visit).unwrap();
            assert_eq!(paths(&scan.tree), ["", "a", "a/1", "a/2", "a/3", "b"]);
            assert_eq!(scan.report.count(SkipReason::SizeLimit), 1);
            assert_eq!(scan.report.total(), 1);
        }
        // A directory with more children than the budget left.
        let limits = ScanLimits {
            max_cgroups: 2,
            ..ScanLimits::default()
        };
        let scan = scan(t.path(), limits, no_visit).unwrap();
        assert_eq!(scan.tree.len(), 3);
        assert_eq!(scan.report.count(SkipReason::SizeLimit), 1);
    }

    #[test]
    fn the_path_bytes_bound_stops_a_tree_of_long_paths() {
        let t = TempTree::new();
        let name = "n".repeat(100);
        t.chain("", &name, 10);
        t.mkdir("z");
        // Paths of 100, 201, 302, 403... bytes: three fit in 1000, not four.
        let limits = ScanLimits {
            max_path_bytes: 1000,
            ..ScanLimits::default()
        };
        let scan = scan(t.path(), limits, no_visit).unwrap();
        assert_eq!(scan.tree.len(), 4, "{:?}", paths(&scan.tree));
        assert_eq!(scan.report.count(SkipReason::SizeLimit), 1);
        assert_eq!(scan.tree.id_of("z"), None, "the walk stopped");
    }

    /// A directory others may write to (or owned by another user) is a
    /// delegated subtree: walked after everything else, so filling the
    /// bounds there hides nothing outside it.
    #[test]
    fn delegated_subtrees_are_walked_last() {
        let t = TempTree::new();
        for name in [
            "a-delegated/1",
            "a-delegated/2",
            "a-delegated/3",
            "a-delegated/4",
        ] {
            t.mkdir(name);
        }
        t.mkdir("b/x");
        t.mkdir("c");
        t.chmod("a-delegated", 0o777);
        let limits = ScanLimits {
            max_cgroups: 5,
            ..ScanLimits::default()
        };
        let mut visited = Vec::new();
        let scan = scan(t.path(), limits, |v| visited.push(v.path.to_owned())).unwrap();
        assert_eq!(
            paths(&scan.tree),
            ["", "a-delegated", "a-delegated/1", "b", "b/x", "c"]
        );
        assert_eq!(
            visited,
            ["", "a-delegated", "b", "b/x", "c", "a-delegated/1"],
            "each directory once, the delegated one's subtree last"
        );
        assert_eq!(
            scan.report.named(),
            [Skipped {
                path: "a-delegated".into(),
                reason: SkipReason::SizeLimit,
                errno: None,
            }]
        );
        // Within the bounds, the delegated subtree is walked whole.
        let whole = super::scan(t.path(), ScanLimits::default(), no_visit).unwrap();
        assert_eq!(whole.tree.len(), 9);
        assert_eq!(whole.report.total(), 0);
    }

    #[test]
    fn a_name_that_is_not_utf8_is_skipped_with_its_subtree() {
        use std::os::unix::ffi::OsStrExt;
        let t = TempTree::new();
        let bad = t.path().join(std::ffi::OsStr::from_bytes(b"web\xff"));
        std::fs::create_dir_all(bad.join("inside")).unwrap();
        t.mkdir("web1");
        let scan = scan(t.path(), ScanLimits::default(), no_visit).unwrap();
        assert_eq!(paths(&scan.tree), ["", "web1"]);
        assert_eq!(scan.report.count(SkipReason::NotUtf8), 1);
        assert_eq!(scan.report.named()[0].path, "web\u{fffd}");
    }

    #[test]
    fn symlinks_and_files_are_not_cgroups() {
        let t = TempTree::new();
        t.mkdir("real");
        std::os::unix::fs::symlink(t.join("real"), t.join("link")).unwrap();
        std::fs::write(t.join("file"), "").unwrap();
        let scan = scan(t.path(), ScanLimits::default(), no_visit).unwrap();
        assert_eq!(paths(&scan.tree), ["", "real"]);
        assert_eq!(scan.report.total(), 0);
    }
}
