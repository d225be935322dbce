//! A snapshot of a cgroup v2 subtree: every cgroup directory under the
//! root, by path relative to it, with its cgroup id (the inode number of the
//! directory, which is what `bpf_get_current_cgroup_id` returns).

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A cgroup that appeared or disappeared between two snapshots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CgroupChange {
    Created { path: String, id: u64 },
    Removed { path: String, id: u64 },
}

/// Every cgroup under a root directory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CgroupTree {
    root: PathBuf,
    /// Relative path (`""` for the root itself) to cgroup id.
    nodes: BTreeMap<String, u64>,
}

impl CgroupTree {
    /// Walk the tree under `root`. Cgroups that vanish while being walked
    /// are skipped (systemd creates and removes scopes all the time); an
    /// unreadable root is an error.
    pub fn scan(root: &Path) -> io::Result<CgroupTree> {
        let root_meta = std::fs::metadata(root)?;
        if !root_meta.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("{} is not a directory", root.display()),
            ));
        }
        let mut nodes = BTreeMap::new();
        nodes.insert(String::new(), root_meta.ino());
        let mut pending = vec![(root.to_path_buf(), String::new())];
        while let Some((dir, rel)) = pending.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound && !rel.is_empty() => continue,
                Err(e) => return Err(e),
            };
            for entry in entries {
                let Ok(entry) = entry else { continue };
                // `file_type` does not follow symlinks: a cgroup fs has
                // none, but a narrowed root on another fs might.
                let Ok(kind) = entry.file_type() else {
                    continue;
                };
                if !kind.is_dir() {
                    continue;
                }
                let Ok(meta) = entry.metadata() else { continue };
                let name = entry.file_name().to_string_lossy().into_owned();
                let child_rel = if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                nodes.insert(child_rel.clone(), meta.ino());
                pending.push((entry.path(), child_rel));
            }
        }
        Ok(CgroupTree {
            root: root.to_path_buf(),
            nodes,
        })
    }

    /// A tree from explicit nodes, for tests of code that consumes trees.
    pub fn from_nodes(root: PathBuf, nodes: impl IntoIterator<Item = (String, u64)>) -> Self {
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
        self.nodes.iter().map(|(p, id)| (p.as_str(), *id))
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn id_of(&self, rel: &str) -> Option<u64> {
        self.nodes.get(rel).copied()
    }

    /// Whether a user other than root controls a cgroup's directory: owns
    /// it, or may write it through its group or others bits (and so make
    /// cgroups in it). An unreadable one counts as controlled by others.
    pub fn controlled_by_others(&self, rel: &str) -> bool {
        std::fs::symlink_metadata(self.dir_of(rel))
            .map_or(true, |m| m.uid() != 0 || m.mode() & 0o022 != 0)
    }

    /// The absolute directory of a relative cgroup path.
    pub fn dir_of(&self, rel: &str) -> PathBuf {
        if rel.is_empty() {
            self.root.clone()
        } else {
            self.root.join(rel)
        }
    }

    /// What changed from `self` to `newer`. A path whose id changed (removed
    /// and created again between two scans) is reported as both.
    pub fn changes_to(&self, newer: &CgroupTree) -> Vec<CgroupChange> {
        let mut changes = Vec::new();
        for (path, &id) in &self.nodes {
            if newer.nodes.get(path) != Some(&id) {
                changes.push(CgroupChange::Removed {
                    path: path.clone(),
                    id,
                });
            }
        }
        for (path, &id) in &newer.nodes {
            if self.nodes.get(path) != Some(&id) {
                changes.push(CgroupChange::Created {
                    path: path.clone(),
                    id,
                });
            }
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_nested_directories_with_their_inodes() {
        let dir = std::env::temp_dir().join(format!("enforcer-tree-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("a/b")).unwrap();
        std::fs::create_dir_all(dir.join("c")).unwrap();
        std::fs::write(dir.join("a/cgroup.procs"), "").unwrap();
        let tree = CgroupTree::scan(&dir).unwrap();
        let paths: Vec<&str> = tree.iter().map(|(p, _)| p).collect();
        assert_eq!(paths, ["", "a", "a/b", "c"]);
        let ino = std::fs::metadata(dir.join("a/b")).unwrap().ino();
        assert_eq!(tree.id_of("a/b"), Some(ino));
        assert_eq!(tree.dir_of("a/b"), dir.join("a/b"));

        std::fs::remove_dir(dir.join("c")).unwrap();
        std::fs::create_dir(dir.join("d")).unwrap();
        let newer = CgroupTree::scan(&dir).unwrap();
        let changes = tree.changes_to(&newer);
        assert_eq!(changes.len(), 2);
        assert!(matches!(&changes[0], CgroupChange::Removed { path, .. } if path == "c"));
        assert!(matches!(&changes[1], CgroupChange::Created { path, .. } if path == "d"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_root_is_an_error() {
        assert!(CgroupTree::scan(Path::new("/nonexistent/enforcer-cgroup")).is_err());
    }
}
