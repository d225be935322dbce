//! Workload selectors to cgroups: which cgroup directories each workload's
//! `unit` / `cgroup` selector matches in a [`CgroupTree`].
//!
//! A [`Resolution`] lists only directly matched cgroups (what `status`
//! shows). Their descendants belong to them: the kernel program looks a
//! socket's cgroup up, then its ancestors from the deepest up, so the deepest
//! matched cgroup wins and a cgroup created below a match is covered from its
//! first packet. The receiving side of a local connection is looked up
//! exactly, though, so [`kernel_entries`] lists the descendants too for the
//! kernel's cgroup map.

use std::collections::BTreeMap;

use enforcer_common::Identity;

use super::tree::CgroupTree;
use crate::compile::compiled::CompiledWorkload;

/// One cgroup matched by a workload selector.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MatchedCgroup {
    /// Path relative to the cgroup root (`""` is the root itself).
    pub path: String,
    /// The cgroup id (inode number of the directory).
    pub id: u64,
    pub workload: Identity,
    /// MODE_ENFORCE, MODE_AUDIT or MODE_OFF.
    pub mode: u8,
}

/// A cgroup that several workloads' selectors match directly (for example
/// `unit = "a.service"` and `cgroup = "**/a.service"`). The first workload in
/// identity order gets it; the others are reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ambiguity {
    pub path: String,
    /// Workload names, the winner first.
    pub workloads: Vec<String>,
}

/// The result of matching every workload against a tree.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resolution {
    /// Sorted by path.
    pub cgroups: Vec<MatchedCgroup>,
    pub ambiguities: Vec<Ambiguity>,
}

impl Resolution {
    /// The cgroups of one workload.
    pub fn of_workload(&self, workload: Identity) -> impl Iterator<Item = &MatchedCgroup> {
        self.cgroups.iter().filter(move |c| c.workload == workload)
    }

    /// The workload that owns a cgroup path: that of the deepest matched
    /// cgroup at or above it (what the kernel's ancestor walk finds).
    pub fn owner_of(&self, path: &str) -> Option<&MatchedCgroup> {
        let mut candidate = Some(path);
        while let Some(p) = candidate {
            if let Ok(at) = self.cgroups.binary_search_by(|c| c.path.as_str().cmp(p)) {
                return Some(&self.cgroups[at]);
            }
            candidate = if p.is_empty() {
                None
            } else {
                Some(p.rsplit_once('/').map_or("", |(parent, _)| parent))
            };
        }
        None
    }
}

/// What the kernel's cgroup map must hold for a resolution: every cgroup
/// of `tree` at or below a matched one, with its owner's workload and mode
/// (the deepest match wins), as `(cgroup id, workload, mode)` in path order.
/// The kernel finds the local side of a socket by walking ancestors, but it
/// looks a *receiving* socket's cgroup (from `BOUND_PORTS`) up exactly, so a
/// server in a child of a matched cgroup must be listed itself.
pub fn kernel_entries(resolution: &Resolution, tree: &CgroupTree) -> Vec<(u64, Identity, u8)> {
    tree.iter()
        .filter_map(|(path, id)| {
            resolution
                .owner_of(path)
                .map(|owner| (id, owner.workload, owner.mode))
        })
        .collect()
}

/// Workload selectors, ready to match cgroup paths. Matching itself is the
/// compiler's [`CgroupSelector::matches`](crate::compile::compiled::CgroupSelector::matches),
/// the same code that validated the patterns.
pub struct Matcher {
    /// In identity order, which ambiguity resolution relies on.
    workloads: Vec<CompiledWorkload>,
}

impl Matcher {
    pub fn new(workloads: &[CompiledWorkload]) -> Matcher {
        let mut workloads = workloads.to_vec();
        workloads.sort_by_key(|w| w.identity);
        Matcher { workloads }
    }

    /// Match every cgroup of `tree`.
    pub fn resolve(&self, tree: &CgroupTree) -> Resolution {
        let mut cgroups = Vec::new();
        let mut ambiguities = Vec::new();
        for (path, id) in tree.iter() {
            let mut hits = self.workloads.iter().filter(|w| w.selector.matches(path));
            let Some(winner) = hits.next() else { continue };
            let losers: Vec<String> = hits.map(|w| w.name.clone()).collect();
            if !losers.is_empty() {
                let mut names = vec![winner.name.clone()];
                names.extend(losers);
                ambiguities.push(Ambiguity {
                    path: path.to_owned(),
                    workloads: names,
                });
            }
            cgroups.push(MatchedCgroup {
                path: path.to_owned(),
                id,
                workload: winner.identity,
                mode: winner.mode,
            });
        }
        // `tree.iter()` is in path order already; keep the invariant explicit.
        cgroups.sort_by(|a, b| a.path.cmp(&b.path));
        Resolution {
            cgroups,
            ambiguities,
        }
    }
}

/// Count matched cgroups per workload identity.
pub fn count_by_workload(resolution: &Resolution) -> BTreeMap<Identity, usize> {
    let mut counts = BTreeMap::new();
    for c in &resolution.cgroups {
        *counts.entry(c.workload).or_insert(0) += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use enforcer_common::{MODE_AUDIT, MODE_ENFORCE};

    use super::*;
    use crate::cgroups::tree::CgroupNode;
    use crate::compile::compiled::CgroupSelector;

    fn workload(
        identity: Identity,
        name: &str,
        selector: CgroupSelector,
        mode: u8,
    ) -> CompiledWorkload {
        CompiledWorkload {
            identity,
            class: identity,
            name: name.to_owned(),
            selector,
            mode,
        }
    }

    fn tree() -> CgroupTree {
        let paths = [
            "",
            "system.slice",
            "system.slice/nginx.service",
            "system.slice/nginx.service/worker",
            "system.slice/api-1.service",
            "system.slice/api-2.service",
            "system.slice/db.service",
            "user.slice/nginx.service",
            "kubepods/pod1/ctr.scope",
        ];
        CgroupTree::from_nodes(
            PathBuf::from("/sys/fs/cgroup"),
            paths.iter().enumerate().map(|(i, p)| {
                let node = CgroupNode {
                    id: 100 + i as u64,
                    owner_uid: 0,
                };
                (p.to_string(), node)
            }),
        )
    }

    #[test]
    fn unit_matches_a_directory_name_anywhere() {
        let m = Matcher::new(&[workload(
            16,
            "web",
            CgroupSelector::Unit("nginx.service".into()),
            MODE_ENFORCE,
        )]);
        let r = m.resolve(&tree());
        let paths: Vec<&str> = r.cgroups.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(
            paths,
            ["system.slice/nginx.service", "user.slice/nginx.service"]
        );
        assert_eq!(r.cgroups[0].id, 102);
        // Descendants belong to the matched cgroup without being listed.
        assert_eq!(
            r.owner_of("system.slice/nginx.service/worker")
                .unwrap()
                .workload,
            16
        );
        assert!(r.owner_of("system.slice/db.service").is_none());
        assert!(r.owner_of("").is_none());
    }

    #[test]
    fn kernel_entries_list_descendants_with_the_deepest_owner() {
        let m = Matcher::new(&[
            workload(
                16,
                "system",
                CgroupSelector::Glob("system.slice".into()),
                MODE_AUDIT,
            ),
            workload(
                17,
                "web",
                CgroupSelector::Unit("nginx.service".into()),
                MODE_ENFORCE,
            ),
        ]);
        let t = tree();
        let entries = kernel_entries(&m.resolve(&t), &t);
        assert_eq!(
            entries,
            vec![
                (101, 16, MODE_AUDIT),   // system.slice
                (104, 16, MODE_AUDIT),   // system.slice/api-1.service
                (105, 16, MODE_AUDIT),   // system.slice/api-2.service
                (106, 16, MODE_AUDIT),   // system.slice/db.service
                (102, 17, MODE_ENFORCE), // system.slice/nginx.service
                (103, 17, MODE_ENFORCE), // its worker child
                (107, 17, MODE_ENFORCE), // user.slice/nginx.service
            ]
        );
    }

    #[test]
    fn globs_match_relative_paths_and_the_deepest_match_wins() {
        let m = Matcher::new(&[
            workload(
                16,
                "api",
                CgroupSelector::Glob("system.slice/api-*.service".into()),
                MODE_AUDIT,
            ),
            workload(
                17,
                "everything",
                CgroupSelector::Glob("system.slice".into()),
                MODE_ENFORCE,
            ),
            workload(
                18,
                "pods",
                CgroupSelector::Glob("kubepods/**/*.scope".into()),
                MODE_ENFORCE,
            ),
        ]);
        let r = m.resolve(&tree());
        assert_eq!(r.of_workload(16).count(), 2);
        assert_eq!(r.of_workload(16).next().unwrap().mode, MODE_AUDIT);
        assert_eq!(
            r.owner_of("system.slice/api-2.service").unwrap().workload,
            16
        );
        assert_eq!(r.owner_of("system.slice/db.service").unwrap().workload, 17);
        assert_eq!(r.owner_of("kubepods/pod1/ctr.scope").unwrap().workload, 18);
        assert_eq!(count_by_workload(&r)[&17], 1);
        assert!(r.ambiguities.is_empty());
    }

    #[test]
    fn two_selectors_on_one_cgroup_are_reported_and_decided_by_identity() {
        let m = Matcher::new(&[
            workload(
                17,
                "late",
                CgroupSelector::Unit("db.service".into()),
                MODE_ENFORCE,
            ),
            workload(
                16,
                "early",
                CgroupSelector::Glob("**/db.service".into()),
                MODE_ENFORCE,
            ),
        ]);
        let r = m.resolve(&tree());
        assert_eq!(r.cgroups.len(), 1);
        assert_eq!(r.cgroups[0].workload, 16);
        assert_eq!(
            r.ambiguities,
            [Ambiguity {
                path: "system.slice/db.service".into(),
                workloads: vec!["early".into(), "late".into()]
            }]
        );
    }
}
