//! Workload selectors to cgroups: which cgroup directories each workload's
//! selector matches in a [`CgroupTree`], by running the selector
//! [`Automaton`] from the root down, as the kernel's cgroup tracer does at
//! each cgroup's creation.
//!
//! A [`Resolution`] lists only directly matched cgroups (what `status`
//! shows). Their descendants belong to them: the kernel program looks a
//! socket's cgroup up, then its ancestors from the deepest up, so the deepest
//! matched cgroup wins and a cgroup created below a match is covered from its
//! first packet. The receiving side of a local connection is looked up
//! exactly, though, so [`kernel_entries`] lists the descendants too for the
//! kernel's cgroup map.

use std::collections::BTreeMap;

use enforcer_common::identity::Identity;

use super::automaton::{Automaton, AutomatonError, StateSet};
use super::tree::CgroupTree;
use crate::compile::CompiledWorkload;
use crate::policy::UnitUser;

/// One cgroup matched by a workload selector.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MatchedCgroup {
    /// Path relative to the cgroup root (`""` is the root itself).
    pub path: String,
    /// The cgroup id (inode number of the directory).
    pub id: u64,
    pub workload: Identity,
    /// Mode::Enforce, Mode::Audit or Mode::Off.
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

/// What the kernel keeps about one cgroup to match its children
/// (`CgroupMatch`, one slot of it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CgroupStates {
    pub states: StateSet,
    /// It or an ancestor belongs to a user other than root.
    pub delegated: bool,
}

/// The result of matching every workload against a tree.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resolution {
    /// Sorted by path.
    pub cgroups: Vec<MatchedCgroup>,
    pub ambiguities: Vec<Ambiguity>,
    /// The automaton states of every cgroup that has some, by cgroup id:
    /// what the kernel needs to match the children created later.
    pub states: BTreeMap<u64, CgroupStates>,
}

impl Resolution {
    /// The cgroups of every workload, each list in path order: one pass,
    /// where a lookup per workload would be quadratic in a large policy.
    pub fn by_workload(&self) -> BTreeMap<Identity, Vec<&MatchedCgroup>> {
        let mut by_workload: BTreeMap<Identity, Vec<&MatchedCgroup>> = BTreeMap::new();
        for c in &self.cgroups {
            by_workload.entry(c.workload).or_default().push(c);
        }
        by_workload
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

/// What the kernel's cgroup map holds for a resolution.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelEntries {
    /// `(cgroup id, workload, mode)` in path order.
    pub entries: Vec<(u64, Identity, u8)>,
    /// Cgroups left out past their workload's quota, per workload.
    pub refused: BTreeMap<Identity, usize>,
}

/// What the kernel's cgroup map must hold for a resolution: every cgroup
/// of `tree` at or below a matched one, with its owner's workload and mode
/// (the deepest match wins), at most `quota` per workload. The kernel finds the local side of a socket by walking
/// ancestors, but it looks a *receiving* socket's cgroup (from
/// `BOUND_PORTS`) up exactly, so a server in a child of a matched cgroup
/// must be listed itself.
pub fn kernel_entries(resolution: &Resolution, tree: &CgroupTree, quota: usize) -> KernelEntries {
    let mut taken: BTreeMap<Identity, usize> = BTreeMap::new();
    let mut out = KernelEntries::default();
    for (path, id) in tree.iter() {
        let Some(owner) = resolution.owner_of(path) else {
            continue;
        };
        let count = taken.entry(owner.workload).or_default();
        if *count >= quota {
            *out.refused.entry(owner.workload).or_default() += 1;
            continue;
        }
        *count += 1;
        out.entries.push((id, owner.workload, owner.mode));
    }
    out
}

/// Workload selectors, ready to match cgroup paths with the same automaton
/// the kernel runs.
#[derive(Clone, Debug)]
pub struct Matcher {
    automaton: Automaton,
    /// Workload names by identity, for the ambiguity report.
    names: BTreeMap<Identity, String>,
}

impl Matcher {
    /// The matcher of `workloads` on this host (`uid_of` resolves `user =
    /// ...`). Fails when the selectors do not fit the kernel's tables.
    pub fn new(
        workloads: &[CompiledWorkload],
        uid_of: impl Fn(&UnitUser) -> Option<u32>,
    ) -> Result<Matcher, AutomatonError> {
        Ok(Matcher {
            automaton: Automaton::build(workloads, uid_of)?,
            names: workloads
                .iter()
                .map(|w| (w.identity, w.name.clone()))
                .collect(),
        })
    }

    pub fn automaton(&self) -> &Automaton {
        &self.automaton
    }

    /// Match every cgroup of `tree`, parents before children.
    pub fn resolve(&self, tree: &CgroupTree) -> Resolution {
        let mut resolution = Resolution::default();
        // The states of the cgroups walked so far, by path.
        let mut known: BTreeMap<&str, CgroupStates> = BTreeMap::new();
        for (path, id) in tree.iter() {
            let owned_by_others = tree.controlled_by_others(path);
            let here = if path.is_empty() {
                CgroupStates {
                    states: self.automaton.initial(),
                    delegated: owned_by_others,
                }
            } else {
                let (parent_path, name) = path.rsplit_once('/').unwrap_or(("", path));
                // A parent the walk could not read: nothing below it is
                // known either.
                let Some(parent) = known.get(parent_path).copied() else {
                    continue;
                };
                let delegated = parent.delegated || owned_by_others;
                let step = self.automaton.step(
                    &parent.states,
                    parent.delegated,
                    name.as_bytes(),
                    delegated,
                );
                if let Some(winner) = step.winner() {
                    if step.accepts.len() > 1 {
                        let mut names = vec![self.name(winner.workload)];
                        names.extend(
                            step.accepts
                                .iter()
                                .filter(|a| a.workload != winner.workload)
                                .map(|a| self.name(a.workload)),
                        );
                        resolution.ambiguities.push(Ambiguity {
                            path: path.to_owned(),
                            workloads: names,
                        });
                    }
                    resolution.cgroups.push(MatchedCgroup {
                        path: path.to_owned(),
                        id,
                        workload: winner.workload,
                        mode: winner.mode,
                    });
                }
                CgroupStates {
                    states: step.states,
                    delegated,
                }
            };
            if !here.states.is_empty() {
                resolution.states.insert(id, here);
            }
            known.insert(path, here);
        }
        // `tree.iter()` is in path order already; keep the invariant explicit.
        resolution.cgroups.sort_by(|a, b| a.path.cmp(&b.path));
        resolution
    }

    fn name(&self, workload: Identity) -> String {
        self.names
            .get(&workload)
            .cloned()
            .unwrap_or_else(|| workload.to_string())
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use enforcer_common::workload::Mode;

    use super::*;
    use crate::cgroups::tree::CgroupNode;
    use crate::policy::CgroupSelector;

    fn tree() -> CgroupTree {
        tree_owned_by(|_| 0)
    }

    fn tree_owned_by(owner: impl Fn(&str) -> u32) -> CgroupTree {
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
            "kubepods",
            "kubepods/pod1",
            "user.slice",
        ];
        CgroupTree::from_nodes(
            PathBuf::from("/sys/fs/cgroup"),
            paths.iter().enumerate().map(|(i, p)| {
                let node = CgroupNode {
                    id: 100 + i as u64,
                    owner_uid: owner(p),
                    others_may_write: false,
                };
                (p.to_string(), node)
            }),
        )
    }

    fn unit(name: &str) -> CgroupSelector {
        CgroupSelector::Unit(name.into())
    }

    fn glob(pattern: &str) -> CgroupSelector {
        CgroupSelector::Glob(pattern.into())
    }

    /// A matcher for workloads given as `(identity, name, selector, mode)`.
    fn matcher(workloads: &[(Identity, &str, CgroupSelector, Mode)]) -> Matcher {
        let workloads: Vec<CompiledWorkload> = workloads
            .iter()
            .map(|(identity, name, selector, mode)| CompiledWorkload {
                identity: *identity,
                class: *identity,
                name: (*name).to_owned(),
                selector: selector.clone(),
                mode: *mode as u8,
            })
            .collect();
        Matcher::new(&workloads, |_| None).unwrap()
    }

    fn resolve(m: &Matcher, t: &CgroupTree) -> Resolution {
        m.resolve(t)
    }

    #[test]
    fn a_unit_matches_the_system_managers_unit_with_its_descendants() {
        let m = matcher(&[(16, "web", unit("nginx.service"), Mode::Enforce)]);
        let r = resolve(&m, &tree());
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
        // The root and the slices keep the chain's state for their children.
        assert!(r.states.contains_key(&100) && r.states.contains_key(&101));
    }

    #[test]
    fn a_cgroup_another_user_controls_matches_no_pattern() {
        let m = matcher(&[(16, "api", glob("system.slice/api-*.service"), Mode::Enforce)]);
        let t = tree_owned_by(|p| {
            if p == "system.slice/api-2.service" {
                1000
            } else {
                0
            }
        });
        let r = m.resolve(&t);
        let paths: Vec<&str> = r.cgroups.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(paths, ["system.slice/api-1.service"]);
    }

    #[test]
    fn kernel_entries_list_descendants_with_the_deepest_owner_within_the_quota() {
        let m = matcher(&[
            (16, "system", glob("system.slice"), Mode::Audit),
            (17, "web", unit("nginx.service"), Mode::Enforce),
        ]);
        let t = tree();
        let r = resolve(&m, &t);
        let KernelEntries { entries, refused } = kernel_entries(&r, &t, usize::MAX);
        assert_eq!(
            entries,
            vec![
                (101, 16, Mode::Audit as u8),   // system.slice
                (104, 16, Mode::Audit as u8),   // system.slice/api-1.service
                (105, 16, Mode::Audit as u8),   // system.slice/api-2.service
                (106, 16, Mode::Audit as u8),   // system.slice/db.service
                (102, 17, Mode::Enforce as u8), // system.slice/nginx.service
                (103, 17, Mode::Enforce as u8), // its worker child
                (107, 17, Mode::Enforce as u8), // user.slice/nginx.service
            ]
        );
        assert!(refused.is_empty());
        let KernelEntries { entries, refused } = kernel_entries(&r, &t, 2);
        assert_eq!(entries.len(), 4);
        assert_eq!(refused, BTreeMap::from([(16, 2), (17, 1)]));
    }

    #[test]
    fn globs_match_relative_paths_and_the_deepest_match_wins() {
        let m = matcher(&[
            (16, "api", glob("system.slice/api-*.service"), Mode::Audit),
            (17, "everything", glob("system.slice"), Mode::Enforce),
            (18, "pods", glob("kubepods/**/*.scope"), Mode::Enforce),
        ]);
        let r = resolve(&m, &tree());
        let by_workload = r.by_workload();
        assert_eq!(by_workload[&16].len(), 2);
        assert_eq!(by_workload[&16][0].mode, Mode::Audit as u8);
        assert_eq!(
            r.owner_of("system.slice/api-2.service").unwrap().workload,
            16
        );
        assert_eq!(r.owner_of("system.slice/db.service").unwrap().workload, 17);
        assert_eq!(r.owner_of("kubepods/pod1/ctr.scope").unwrap().workload, 18);
        assert_eq!(by_workload[&17].len(), 1);
        assert!(r.ambiguities.is_empty());
    }

    #[test]
    fn two_selectors_on_one_cgroup_are_reported_and_decided_by_identity() {
        let m = matcher(&[
            (17, "late", unit("db.service"), Mode::Enforce),
            (16, "early", glob("**/db.service"), Mode::Enforce),
        ]);
        let r = resolve(&m, &tree());
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
