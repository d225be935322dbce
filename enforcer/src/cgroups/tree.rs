//! A snapshot of a cgroup v2 subtree: every cgroup directory under the
//! root, by path relative to it, with its cgroup id (the inode number of the
//! directory, which is what `bpf_get_current_cgroup_id` returns) and its
//! owner. [`walk`](super::walk) takes it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::walk::{self, ScanError, ScanLimits};

/// One cgroup directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CgroupNode {
    /// The cgroup id: the directory's inode number.
    pub id: u64,
    /// The directory's owner (`st_uid`): root, or the user a subtree was
    /// delegated to (systemd `Delegate=`, user managers), who may create
    /// cgroups below it.
    pub owner_uid: u32,
    /// Whether its group or others bits let other users write it (make
    /// cgroups in it): a directory so opened is delegated to them.
    pub others_may_write: bool,
}

/// A cgroup that appeared, disappeared or changed owner between two
/// snapshots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CgroupChange {
    Created {
        path: String,
        id: u64,
    },
    Removed {
        path: String,
        id: u64,
    },
    /// The same directory (same id) has another owner, or other users may
    /// now (or no longer) write it: systemd creates a delegated cgroup as
    /// root and hands it over with `chown`.
    OwnerChanged {
        path: String,
        id: u64,
        owner_uid: u32,
    },
}

/// Every cgroup under a root directory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CgroupTree {
    root: PathBuf,
    /// Relative path (`""` for the root itself) to its node. A path may be
    /// longer than `PATH_MAX`: the walk opens each directory relative to
    /// its parent, and nothing turns these paths back into file names.
    nodes: BTreeMap<String, CgroupNode>,
}

impl CgroupTree {
    /// Walk the tree under `root` within the default [`ScanLimits`]. What
    /// cannot be walked is left out (see [`walk::scan`] for what is
    /// reported about it); only an unusable root is an error.
    pub fn scan(root: &Path) -> Result<CgroupTree, ScanError> {
        walk::scan(root, ScanLimits::default(), |_| {}).map(|scan| scan.tree)
    }

    /// A tree from explicit nodes, for tests of code that consumes trees
    /// (and for the walk).
    pub fn from_nodes(
        root: PathBuf,
        nodes: impl IntoIterator<Item = (String, CgroupNode)>,
    ) -> Self {
        CgroupTree {
            root,
            nodes: nodes.into_iter().collect(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Every cgroup as (relative path, id), in path order; the root is `""`.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.nodes.iter().map(|(p, node)| (p.as_str(), node.id))
    }

    /// Every cgroup as (relative path, node), in path order.
    pub fn nodes(&self) -> impl Iterator<Item = (&str, &CgroupNode)> {
        self.nodes.iter().map(|(p, node)| (p.as_str(), node))
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn node(&self, rel: &str) -> Option<&CgroupNode> {
        self.nodes.get(rel)
    }

    pub fn id_of(&self, rel: &str) -> Option<u64> {
        self.nodes.get(rel).map(|node| node.id)
    }

    /// The uid owning the cgroup directory at `rel`.
    pub fn owner_of(&self, rel: &str) -> Option<u32> {
        self.nodes.get(rel).map(|node| node.owner_uid)
    }

    /// Whether a user other than root controls a cgroup's directory: owns
    /// it, or may write it through its group or others bits (and so make
    /// cgroups in it). One the walk did not record counts as controlled by
    /// others.
    pub fn controlled_by_others(&self, rel: &str) -> bool {
        self.nodes
            .get(rel)
            .is_none_or(|node| node.owner_uid != 0 || node.others_may_write)
    }

    /// What changed from `self` to `newer`. A path whose id changed (removed
    /// and created again between two scans) is reported as both.
    pub fn changes_to(&self, newer: &CgroupTree) -> Vec<CgroupChange> {
        let mut changes = Vec::new();
        for (path, node) in &self.nodes {
            if newer.id_of(path) != Some(node.id) {
                changes.push(CgroupChange::Removed {
                    path: path.clone(),
                    id: node.id,
                });
            }
        }
        for (path, node) in &newer.nodes {
            match self.nodes.get(path) {
                Some(old) if old.id == node.id => {
                    if (old.owner_uid, old.others_may_write)
                        != (node.owner_uid, node.others_may_write)
                    {
                        changes.push(CgroupChange::OwnerChanged {
                            path: path.clone(),
                            id: node.id,
                            owner_uid: node.owner_uid,
                        });
                    }
                }
                _ => changes.push(CgroupChange::Created {
                    path: path.clone(),
                    id: node.id,
                }),
            }
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroups::test_trees::TempTree;

    fn node(id: u64, owner_uid: u32) -> CgroupNode {
        CgroupNode {
            id,
            owner_uid,
            others_may_write: false,
        }
    }

    #[test]
    fn changes_between_two_scans() {
        let t = TempTree::new();
        t.mkdir("a/b");
        t.mkdir("c");
        let tree = CgroupTree::scan(t.path()).unwrap();
        std::fs::remove_dir(t.join("c")).unwrap();
        t.mkdir("d");
        let newer = CgroupTree::scan(t.path()).unwrap();
        let changes = tree.changes_to(&newer);
        assert_eq!(changes.len(), 2);
        assert!(matches!(&changes[0], CgroupChange::Removed { path, .. } if path == "c"));
        assert!(matches!(&changes[1], CgroupChange::Created { path, .. } if path == "d"));
    }

    #[test]
    fn a_new_owner_is_a_change_and_a_new_id_is_two() {
        let root = PathBuf::from("/sys/fs/cgroup");
        let old = CgroupTree::from_nodes(
            root.clone(),
            [
                (String::new(), node(1, 0)),
                ("user.slice".into(), node(2, 0)),
                ("web".into(), node(3, 0)),
            ],
        );
        let new = CgroupTree::from_nodes(
            root,
            [
                (String::new(), node(1, 0)),
                ("user.slice".into(), node(2, 1000)),
                ("web".into(), node(4, 0)),
            ],
        );
        assert_eq!(
            old.changes_to(&new),
            [
                CgroupChange::Removed {
                    path: "web".into(),
                    id: 3
                },
                CgroupChange::OwnerChanged {
                    path: "user.slice".into(),
                    id: 2,
                    owner_uid: 1000
                },
                CgroupChange::Created {
                    path: "web".into(),
                    id: 4
                },
            ]
        );
        assert_eq!(new.owner_of("user.slice"), Some(1000));
        assert_eq!(new.id_of("web"), Some(4));
        assert_eq!(new.node("nope"), None);
    }

    #[test]
    fn a_missing_root_is_an_error() {
        assert!(CgroupTree::scan(Path::new("/nonexistent/enforcer-cgroup")).is_err());
    }
}
