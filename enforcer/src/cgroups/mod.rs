//! Cgroup discovery: where the cgroup v2 hierarchy is, which cgroups each
//! workload selector matches, and which cgroups come and go.
//!
//! - [`mount`]: the cgroup v2 mount from `/proc/self/mountinfo`, and the
//!   cgroup v1 `net_cls` / `net_prio` hierarchies that silently break cgroup
//!   socket matching;
//! - [`tree`]: a snapshot of the cgroups under a root, with their ids and
//!   owners;
//! - [`walk`]: how the snapshot is taken: through directory descriptors,
//!   bounded, skipping (and reporting) what it cannot walk;
//! - [`discovery`]: what the walks could not see and whether rescans
//!   fail, for `status`, the metrics and rate-limited logs;
//! - [`automaton`]: workload selectors as an automaton over cgroup path
//!   segments, the one the kernel's cgroup tracer runs too;
//! - [`resolve`]: workload selectors to matched cgroups;
//! - [`sockets`]: ports bound before the daemon started, with their
//!   owners' cgroups;
//! - [`watch`]: inotify + periodic rescans, reporting changes in
//!   milliseconds.

pub mod automaton;
pub mod discovery;
pub mod mount;
pub mod resolve;
pub mod sockets;
pub mod tree;
pub mod walk;
pub mod watch;

#[cfg(test)]
mod test_trees;

use std::path::{Path, PathBuf};

use thiserror::Error;

pub use automaton::{Automaton, AutomatonError, StateSet, uid_of_user};
pub use discovery::{Discovery, DiscoveryStatus};
pub use mount::V1Conflict;
pub use resolve::{Ambiguity, CgroupStates, MatchedCgroup, Matcher, Resolution};
pub use tree::{CgroupChange, CgroupNode, CgroupTree};
pub use walk::{ScanError, ScanLimits, SkipReason};
pub use watch::{CgroupWatcher, TreeUpdate, WatchError, WatchOptions};

/// Why the cgroup root cannot be determined.
#[derive(Debug, Error)]
pub enum RootError {
    #[error("cannot read /proc/self/mountinfo")]
    Mountinfo(#[source] std::io::Error),
    #[error("no cgroup v2 hierarchy is mounted (cgroup2 not found in /proc/self/mountinfo)")]
    NoCgroup2,
    #[error("--cgroup-root {given} is not inside the cgroup v2 hierarchy mounted at {mount}")]
    OutsideHierarchy { given: PathBuf, mount: PathBuf },
    #[error("--cgroup-root {path}")]
    Inaccessible {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The cgroup v2 mount point of this host.
pub fn cgroup2_mount() -> Result<PathBuf, RootError> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").map_err(RootError::Mountinfo)?;
    mount::cgroup2_mount(&text).ok_or(RootError::NoCgroup2)
}

/// The cgroup v1 hierarchies that break cgroup v2 socket matching on this
/// host (empty when all is well, or when mountinfo cannot be read).
pub fn v1_conflicts() -> Vec<V1Conflict> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|text| mount::v1_conflicts(&text))
        .unwrap_or_default()
}

/// The directory workloads are resolved under: the cgroup v2 mount, or
/// `narrowed` when given. A relative `narrowed` is taken relative to the
/// mount; an absolute one must lie inside it (the enforcer must never watch
/// a cgroup v1 hierarchy or a plain directory by mistake).
pub fn cgroup_root(narrowed: Option<&Path>) -> Result<PathBuf, RootError> {
    let mount = cgroup2_mount()?;
    let Some(narrowed) = narrowed else {
        return Ok(mount);
    };
    let candidate = if narrowed.is_absolute() {
        narrowed.to_path_buf()
    } else {
        mount.join(narrowed)
    };
    let canonical = candidate
        .canonicalize()
        .map_err(|source| RootError::Inaccessible {
            path: candidate.clone(),
            source,
        })?;
    let mount_canonical = mount.canonicalize().unwrap_or(mount.clone());
    if !canonical.starts_with(&mount_canonical) {
        return Err(RootError::OutsideHierarchy {
            given: candidate,
            mount,
        });
    }
    Ok(canonical)
}
