//! Workload selectors as an automaton over cgroup path segments: the one
//! description of "which cgroups are whose" that the kernel's cgroup tracer
//! runs at every `mkdir` and the daemon runs over the cgroups that exist.
//! The step here mirrors the tracer's (`enforcer-ebpf/src/registration.rs`)
//! state for state, including the order in which states are found and the
//! overflow past [`STATES_PER_CGROUP`], so both register the same cgroups.
//!
//! The automaton (see `docs/dataplane.md`, "Cgroups from their creation"):
//!
//! - the **system chain** state: every cgroup whose path from the root is
//!   a chain of root-owned `.slice` directories is in it (`*.slice` loops
//!   back to it); `unit = "X"` is an exact transition from it to X's
//!   accepting state. A unit's own directory may belong to another user
//!   (systemd hands it over with `Delegate=`); its ancestors may not.
//! - the **user chain** of each user that a `user = ...` names:
//!   `user.slice` / `user-UID.slice` / `user@UID.service`, then `.slice`
//!   directories (the user manager's own, which belong to that user), then
//!   the unit.
//! - the **pattern trie** of the `cgroup = "PATTERN"` selectors: a state
//!   per distinct path prefix; a segment with `*` is a glob transition, one
//!   without an exact one; `**` is a state that loops on any segment and
//!   is reached together with the state before it (`also`). A pattern
//!   matches only root-owned cgroups unless it says `delegated = true`.

mod builder;
mod kernel;
mod step;
mod users;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use enforcer_common::{
    cgroup_match::{
        GlobRule, MAX_GLOBS_PER_STATE, MAX_MATCH_EXACT, MAX_MATCH_GLOBS, MAX_MATCH_STATES,
        STATE_NONE, STATES_PER_CGROUP, glob_matches,
    },
    identity::Identity,
};

use crate::compile::CompiledWorkload;
use crate::policy::{CgroupSelector, UnitUser};

use builder::Builder;
pub use kernel::KernelTables;
use step::Walk;
pub use users::uid_of_user;

/// Why selectors cannot become an automaton the kernel can hold.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AutomatonError {
    #[error(
        "the workload selectors need {needed} cgroup matching states; the kernel holds {max}: merge patterns that share a path"
    )]
    TooManyStates { needed: usize, max: u32 },
    #[error("the workload selectors have {needed} exact cgroup names; the kernel holds {max}")]
    TooManyNames { needed: usize, max: u32 },
    #[error("the workload selectors have {needed} `*` path segments; the kernel holds {max}")]
    TooManyGlobs { needed: usize, max: u32 },
    #[error(
        "{count} `*` segments follow the same path prefix; the kernel follows at most {max} from one cgroup"
    )]
    TooManyGlobsAfterOnePath { count: usize, max: u32 },
    #[error(
        "workload {workload}: the pattern segment `{segment}` has a `*` and is longer than {max} bytes: shorten it or name the cgroup exactly"
    )]
    GlobTooLong {
        workload: String,
        segment: String,
        max: usize,
    },
}

/// A workload whose own cgroup a cgroup reaching a state is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Accept {
    pub workload: Identity,
    pub class: Identity,
    pub mode: u8,
    /// Which cgroups it takes, by who controls them.
    pub takes: Takes,
}

/// Which cgroups an accepting state takes, by who controls them. A cgroup
/// is *delegated* when it or an ancestor is controlled by a user other
/// than root: owned by one, or writable by group or others.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Takes {
    /// Only cgroups that are not delegated (`cgroup = "PATTERN"`).
    Root,
    /// A cgroup whose parent is not delegated, whatever its own owner: the
    /// system manager's unit, whose own directory systemd may hand to the
    /// unit's user afterwards (`Delegate=`). The kernel, which sees the
    /// creator instead, requires root to have made it (a user can only make
    /// a directory in one it controls).
    SystemUnit,
    /// Any cgroup (`delegated = true`, a user manager's unit).
    Anyone,
}

/// How a state is left.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Segment {
    Exact(Vec<u8>),
    Glob(Vec<u8>),
}

impl Segment {
    fn of(text: &str) -> Segment {
        if text.contains('*') {
            Segment::Glob(text.as_bytes().to_vec())
        } else {
            Segment::Exact(text.as_bytes().to_vec())
        }
    }
}

#[derive(Clone, Debug, Default)]
struct Node {
    exact: BTreeMap<Vec<u8>, u16>,
    /// In the order they were added: the kernel tries them in this order.
    globs: Vec<(Vec<u8>, u16)>,
    /// The `**` state reached with this one.
    also: u16,
    /// Transitions may be taken from a delegated cgroup.
    from_delegated: bool,
    accept: Option<Accept>,
}

/// The states a cgroup is in, in one slot, as the kernel keeps them
/// (`CgroupMatch::states`): in the order found, [`STATE_NONE`] after the
/// last.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct StateSet {
    pub states: [u16; STATES_PER_CGROUP],
    /// More states were found than fit: the kernel cannot follow this
    /// cgroup's children.
    pub overflow: bool,
}

impl StateSet {
    pub fn is_empty(&self) -> bool {
        self.states[0] == STATE_NONE
    }

    fn ids(&self) -> impl Iterator<Item = u16> + '_ {
        self.states.iter().copied().take_while(|&s| s != STATE_NONE)
    }
}

/// What one step found: the child's states and the workloads whose own
/// cgroup it is (the lowest identity wins; more than one is an ambiguity
/// to report).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Step {
    pub states: StateSet,
    pub accepts: Vec<Accept>,
}

impl Step {
    /// The workload that gets the cgroup, as the kernel decides.
    pub fn winner(&self) -> Option<Accept> {
        self.accepts.iter().copied().min_by_key(|a| a.workload)
    }
}

/// The automaton of one policy on this host.
#[derive(Clone, Debug)]
pub struct Automaton {
    /// Indexed by state id; id 0 is [`STATE_NONE`] and unused.
    nodes: Vec<Node>,
    /// The states of the root cgroup.
    initial: StateSet,
    /// `(workload, user)` for every `user = ...` this host does not know:
    /// those workloads match nothing here.
    unknown_users: Vec<(String, String)>,
}

impl Automaton {
    /// The automaton of `workloads`; `uid_of` resolves `user = ...` on this
    /// host (`None`: no such user).
    pub fn build(
        workloads: &[CompiledWorkload],
        uid_of: impl Fn(&UnitUser) -> Option<u32>,
    ) -> Result<Automaton, AutomatonError> {
        let mut builder = Builder {
            nodes: vec![Node::default()],
        };
        let pattern_root = builder.state(false);
        let system_chain = builder.state(false);
        builder.add_glob(system_chain, b"*.slice", system_chain);
        let user_root = builder.state(false);
        let mut unknown_users = Vec::new();
        let mut ordered: Vec<&CompiledWorkload> = workloads.iter().collect();
        ordered.sort_by_key(|w| w.identity);
        for w in ordered {
            let accept = |takes| Accept {
                workload: w.identity,
                class: w.class,
                mode: w.mode,
                takes,
            };
            match &w.selector {
                CgroupSelector::Unit(unit) => {
                    let to = builder.edge(system_chain, Segment::Exact(unit.clone().into()), false);
                    builder.accept(to, accept(Takes::SystemUnit));
                }
                CgroupSelector::UserUnit { unit, user } => {
                    let Some(uid) = uid_of(user) else {
                        unknown_users.push((w.name.clone(), user.to_string()));
                        continue;
                    };
                    let user_chain = builder.user_chain(user_root, uid);
                    let to = builder.edge(user_chain, Segment::Exact(unit.clone().into()), true);
                    builder.accept(to, accept(Takes::Anyone));
                }
                CgroupSelector::Glob(pattern) => {
                    let to = builder.pattern(pattern_root, pattern, false, &w.name)?;
                    builder.accept(to, accept(Takes::Root));
                }
                CgroupSelector::DelegatedGlob(pattern) => {
                    let to = builder.pattern(pattern_root, pattern, true, &w.name)?;
                    builder.accept(to, accept(Takes::Anyone));
                }
            }
        }
        let automaton = Automaton {
            nodes: builder.nodes,
            initial: StateSet::default(),
            unknown_users,
        };
        automaton.check_capacity()?;
        let mut walk = Walk::new(false, false);
        for root in [pattern_root, system_chain, user_root] {
            walk.reach(root);
        }
        walk.settle(&automaton);
        Ok(Automaton {
            initial: walk.states,
            ..automaton
        })
    }

    fn check_capacity(&self) -> Result<(), AutomatonError> {
        if self.nodes.len() > MAX_MATCH_STATES as usize {
            return Err(AutomatonError::TooManyStates {
                needed: self.nodes.len() - 1,
                max: MAX_MATCH_STATES - 1,
            });
        }
        let names: usize = self.nodes.iter().map(|n| n.exact.len()).sum();
        if names > MAX_MATCH_EXACT as usize {
            return Err(AutomatonError::TooManyNames {
                needed: names,
                max: MAX_MATCH_EXACT,
            });
        }
        let globs: usize = self.nodes.iter().map(|n| n.globs.len()).sum();
        if globs > MAX_MATCH_GLOBS as usize {
            return Err(AutomatonError::TooManyGlobs {
                needed: globs,
                max: MAX_MATCH_GLOBS,
            });
        }
        if let Some(n) = self
            .nodes
            .iter()
            .find(|n| n.globs.len() > MAX_GLOBS_PER_STATE as usize)
        {
            return Err(AutomatonError::TooManyGlobsAfterOnePath {
                count: n.globs.len(),
                max: MAX_GLOBS_PER_STATE,
            });
        }
        Ok(())
    }

    /// The states of the root cgroup (the daemon's `--cgroup-root`).
    pub fn initial(&self) -> StateSet {
        self.initial
    }

    /// Workloads naming a user this host does not know, with that user.
    pub fn unknown_users(&self) -> &[(String, String)] {
        &self.unknown_users
    }

    /// The states and accepting workloads of a child named `name` of a
    /// cgroup in `parent`: the tracer's step. `delegated` is whether the
    /// child is delegated (it or an ancestor belongs to a user other than
    /// root).
    pub fn step(
        &self,
        parent: &StateSet,
        parent_delegated: bool,
        name: &[u8],
        delegated: bool,
    ) -> Step {
        let mut walk = Walk::new(parent_delegated, delegated);
        for id in parent.ids() {
            let Some(node) = self.nodes.get(usize::from(id)) else {
                continue;
            };
            if parent_delegated && !node.from_delegated {
                continue;
            }
            if let Some(&next) = node.exact.get(name) {
                walk.reach(next);
            }
            for (pattern, next) in node.globs.iter().take(MAX_GLOBS_PER_STATE as usize) {
                // Built from a pattern `check_capacity` accepted.
                if let Some(rule) = GlobRule::new(pattern, u32::from(*next))
                    && glob_matches(&rule, name)
                {
                    walk.reach(*next);
                }
            }
        }
        walk.settle(self);
        Step {
            states: walk.states,
            accepts: walk.accepts,
        }
    }
}
