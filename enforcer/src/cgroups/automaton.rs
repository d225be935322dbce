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

use std::collections::BTreeMap;

use enforcer_common::{
    cgroup_match::{
        ExactKey, GlobRule, MAX_GLOB_LEN, MAX_GLOBS_PER_STATE, MAX_MATCH_EXACT, MAX_MATCH_GLOBS,
        MAX_MATCH_STATES, MatchState, REACHED_PER_STEP, STATE_ACCEPT_DELEGATED,
        STATE_FROM_DELEGATED, STATE_HAS_EXACT, STATE_NONE, STATES_PER_CGROUP, glob_matches,
        name_hash, name_words,
    },
    identity::Identity,
};

use crate::compile::CompiledWorkload;
use crate::policy::{CgroupSelector, UnitUser};

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

/// The tables the kernel's tracer reads for one slot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelTables {
    /// Indexed by state id (entry 0 unused).
    pub states: Vec<MatchState>,
    pub exact: Vec<(ExactKey, u32)>,
    pub globs: Vec<GlobRule>,
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

    /// The kernel's tables for this automaton, exact names hashed with
    /// `name_key`.
    pub fn kernel_tables(&self, name_key: [u64; 2]) -> KernelTables {
        let mut tables = KernelTables::default();
        for (id, node) in self.nodes.iter().enumerate() {
            let mut flags = 0;
            if !node.exact.is_empty() {
                flags |= STATE_HAS_EXACT;
            }
            if node.from_delegated {
                flags |= STATE_FROM_DELEGATED;
            }
            let accept = node.accept.unwrap_or(Accept {
                workload: 0,
                class: 0,
                mode: 0,
                takes: Takes::Root,
            });
            // The kernel's `delegated` is the creator's: a system unit is
            // a non-delegated cgroup to it (see `Takes::SystemUnit`).
            if accept.takes == Takes::Anyone {
                flags |= STATE_ACCEPT_DELEGATED;
            }
            tables.states.push(MatchState {
                glob_first: tables.globs.len() as u32,
                glob_count: node.globs.len() as u16,
                also: node.also,
                flags,
                mode: accept.mode,
                _pad: [0; 2],
                workload: accept.workload,
                class: accept.class,
            });
            for (pattern, next) in &node.globs {
                if let Some(rule) = GlobRule::new(pattern, u32::from(*next)) {
                    tables.globs.push(rule);
                }
            }
            for (name, next) in &node.exact {
                // Longer names cannot be cgroup names: never matched.
                let Some(words) = name_words(name) else {
                    continue;
                };
                tables.exact.push((
                    ExactKey {
                        state: id as u32,
                        // The data plane sets the slot it writes.
                        slot: 0,
                        name_hash: name_hash(name_key, &words, name.len()),
                    },
                    u32::from(*next),
                ));
            }
        }
        tables.exact.sort();
        tables
    }
}

/// The states found for a child, in the kernel's order: the states its
/// name leads to are noted first ([`Walk::reach`]), then looked at in that
/// order ([`Walk::settle`]), each bringing its `also` state to the end of
/// the list.
struct Walk {
    reached: Vec<u16>,
    states: StateSet,
    count: usize,
    accepts: Vec<Accept>,
    parent_delegated: bool,
    delegated: bool,
}

impl Walk {
    fn new(parent_delegated: bool, delegated: bool) -> Walk {
        Walk {
            reached: Vec::with_capacity(REACHED_PER_STEP),
            states: StateSet::default(),
            count: 0,
            accepts: Vec::new(),
            parent_delegated,
            delegated,
        }
    }

    fn takes(&self, accept: &Accept) -> bool {
        match accept.takes {
            Takes::Root => !self.delegated,
            Takes::SystemUnit => !self.parent_delegated,
            Takes::Anyone => true,
        }
    }

    fn reach(&mut self, id: u16) {
        if self.reached.len() < REACHED_PER_STEP {
            self.reached.push(id);
        } else {
            self.states.overflow = true;
        }
    }

    fn settle(&mut self, automaton: &Automaton) {
        let mut i = 0;
        while i < self.reached.len() {
            let id = self.reached[i];
            i += 1;
            let Some(node) = automaton.nodes.get(usize::from(id)) else {
                continue;
            };
            self.arrive(id, node);
            if node.also != STATE_NONE {
                self.reach(node.also);
            }
        }
    }

    fn arrive(&mut self, id: u16, node: &Node) {
        if let Some(accept) = node.accept
            && self.takes(&accept)
            && !self.accepts.contains(&accept)
        {
            self.accepts.push(accept);
        }
        let has_transitions = !node.exact.is_empty() || !node.globs.is_empty();
        if !has_transitions || (self.delegated && !node.from_delegated) {
            return;
        }
        if self.states.states[..self.count].contains(&id) {
            return;
        }
        if self.count < STATES_PER_CGROUP {
            self.states.states[self.count] = id;
            self.count += 1;
        } else {
            self.states.overflow = true;
        }
    }
}

struct Builder {
    nodes: Vec<Node>,
}

impl Builder {
    fn state(&mut self, from_delegated: bool) -> u16 {
        self.nodes.push(Node {
            from_delegated,
            ..Node::default()
        });
        // Beyond u16 the capacity check fails anyway; ids wrap harmlessly
        // until then.
        (self.nodes.len() - 1) as u16
    }

    fn node(&mut self, id: u16) -> &mut Node {
        &mut self.nodes[usize::from(id)]
    }

    fn add_glob(&mut self, from: u16, pattern: &[u8], to: u16) {
        self.node(from).globs.push((pattern.to_vec(), to));
    }

    /// The state `segment` leads to from `from`, made if new. Its
    /// transitions may be taken from delegated cgroups when any selector
    /// through it says so.
    fn edge(&mut self, from: u16, segment: Segment, from_delegated: bool) -> u16 {
        let existing = match &segment {
            Segment::Exact(name) => self.nodes[usize::from(from)].exact.get(name).copied(),
            Segment::Glob(pattern) => self.nodes[usize::from(from)]
                .globs
                .iter()
                .find(|(p, _)| p == pattern)
                .map(|&(_, to)| to),
        };
        let to = match existing {
            Some(to) => to,
            None => {
                let to = self.state(false);
                match segment {
                    Segment::Exact(name) => {
                        self.node(from).exact.insert(name, to);
                    }
                    Segment::Glob(pattern) => self.add_glob(from, &pattern, to),
                }
                to
            }
        };
        self.node(to).from_delegated |= from_delegated;
        to
    }

    /// The `**` state after `from`: it loops on any segment and is reached
    /// together with `from`.
    fn any_depth(&mut self, from: u16, from_delegated: bool) -> u16 {
        let existing = self.nodes[usize::from(from)].also;
        let any = if existing != STATE_NONE {
            existing
        } else {
            let any = self.state(false);
            self.add_glob(any, b"*", any);
            self.node(from).also = any;
            any
        };
        self.node(any).from_delegated |= from_delegated;
        any
    }

    fn accept(&mut self, state: u16, accept: Accept) {
        let node = self.node(state);
        // Identical selectors share a state; the lower identity keeps it
        // (workloads arrive in identity order).
        if node.accept.is_none() {
            node.accept = Some(accept);
        }
    }

    /// `user.slice/user-UID.slice/user@UID.service`, then the user
    /// manager's `.slice` chain: the state units of that user hang off.
    fn user_chain(&mut self, user_root: u16, uid: u32) -> u16 {
        let slice = self.edge(user_root, Segment::Exact(b"user.slice".to_vec()), false);
        let user_slice = self.edge(
            slice,
            Segment::Exact(format!("user-{uid}.slice").into_bytes()),
            false,
        );
        let manager_name = format!("user@{uid}.service").into_bytes();
        let is_new = !self.nodes[usize::from(user_slice)]
            .exact
            .contains_key(&manager_name);
        let manager = self.edge(user_slice, Segment::Exact(manager_name), true);
        if is_new {
            self.add_glob(manager, b"*.slice", manager);
        }
        manager
    }

    /// Walks (and extends) the pattern trie; the state where `pattern`
    /// ends.
    fn pattern(
        &mut self,
        root: u16,
        pattern: &str,
        delegated: bool,
        workload: &str,
    ) -> Result<u16, AutomatonError> {
        self.node(root).from_delegated |= delegated;
        let mut state = root;
        let mut previous_any = false;
        for segment in pattern.split('/') {
            if segment == "**" {
                // `a/**/**/b` is `a/**/b`.
                if !previous_any {
                    state = self.any_depth(state, delegated);
                }
                previous_any = true;
                continue;
            }
            previous_any = false;
            if segment.contains('*') && segment.len() > MAX_GLOB_LEN {
                return Err(AutomatonError::GlobTooLong {
                    workload: workload.to_owned(),
                    segment: segment.to_owned(),
                    max: MAX_GLOB_LEN,
                });
            }
            state = self.edge(state, Segment::of(segment), delegated);
        }
        Ok(state)
    }
}

/// A user's uid on this host, from the password database.
pub fn uid_of_user(user: &UnitUser) -> Option<u32> {
    match user {
        UnitUser::Uid(uid) => Some(*uid),
        UnitUser::Name(name) => {
            let c_name = std::ffi::CString::new(name.as_str()).ok()?;
            let mut buffer = vec![0 as libc::c_char; 16 * 1024];
            // SAFETY: all-zero is a valid `struct passwd` (integers and
            // null pointers).
            let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
            let mut result: *mut libc::passwd = std::ptr::null_mut();
            // SAFETY: every pointer is valid for the call, and the length
            // passed is the buffer's.
            let rc = unsafe {
                libc::getpwnam_r(
                    c_name.as_ptr(),
                    &mut entry,
                    buffer.as_mut_ptr(),
                    buffer.len(),
                    &mut result,
                )
            };
            (rc == 0 && !result.is_null()).then_some(entry.pw_uid)
        }
    }
}

#[cfg(test)]
mod tests {
    use enforcer_common::workload::Mode;

    use super::*;

    fn workload(identity: Identity, selector: CgroupSelector) -> CompiledWorkload {
        CompiledWorkload {
            identity,
            class: identity,
            name: format!("w{identity}"),
            selector,
            mode: if identity.is_multiple_of(2) {
                Mode::Enforce as u8
            } else {
                Mode::Audit as u8
            },
        }
    }

    fn users(user: &UnitUser) -> Option<u32> {
        match user {
            UnitUser::Uid(uid) => Some(*uid),
            UnitUser::Name(name) if name == "alice" => Some(1000),
            UnitUser::Name(_) => None,
        }
    }

    /// The workload owning `path` (its own cgroup, not an ancestor's), with
    /// the directories on the way owned by `owners` (root where absent).
    fn owner(a: &Automaton, path: &str, owners: &[(&str, u32)]) -> Option<Identity> {
        let mut states = a.initial();
        let mut delegated = false;
        let mut winner = None;
        let mut at = String::new();
        for segment in path.split('/') {
            if !at.is_empty() {
                at.push('/');
            }
            at.push_str(segment);
            let owned = owners.iter().any(|&(p, uid)| p == at && uid != 0);
            let child_delegated = delegated || owned;
            let step = a.step(&states, delegated, segment.as_bytes(), child_delegated);
            winner = step.winner().map(|w| w.workload);
            states = step.states;
            delegated = child_delegated;
        }
        winner
    }

    fn automaton(selectors: Vec<CgroupSelector>) -> Automaton {
        let workloads: Vec<_> = selectors
            .into_iter()
            .enumerate()
            .map(|(i, s)| workload(16 + i as Identity, s))
            .collect();
        Automaton::build(&workloads, users).unwrap()
    }

    #[test]
    fn a_unit_is_the_system_managers_unit_at_the_end_of_a_slice_chain() {
        let a = automaton(vec![CgroupSelector::Unit("nginx.service".into())]);
        for path in [
            "system.slice/nginx.service",
            "system.slice/system-web.slice/nginx.service",
            "machine.slice/nginx.service",
            "nginx.service",
            "user.slice/user-1000.slice/nginx.service",
        ] {
            assert_eq!(owner(&a, path, &[]), Some(16), "{path}");
        }
        for path in [
            // Under a user manager, inside another unit, outside the slices.
            "user.slice/user-1000.slice/user@1000.service/app.slice/nginx.service",
            "user.slice/user-1000.slice/user@1000.service/nginx.service",
            "system.slice/docker.service/nginx.service",
            "system.slice/other.scope/x.slice/nginx.service",
            "enforcer-test/nginx.service",
            "system.slice/nginx.service/child",
        ] {
            assert_eq!(owner(&a, path, &[]), None, "{path}");
        }
        // A slice handed to a user is a delegated subtree: not the system
        // manager's. The unit's own directory may be (`Delegate=`).
        assert_eq!(
            owner(
                &a,
                "system.slice/bob.slice/nginx.service",
                &[("system.slice/bob.slice", 1001)]
            ),
            None
        );
        assert_eq!(
            owner(
                &a,
                "system.slice/nginx.service",
                &[("system.slice/nginx.service", 33)]
            ),
            Some(16)
        );
    }

    #[test]
    fn a_user_unit_is_that_users_managers_unit_only() {
        let a = automaton(vec![
            CgroupSelector::UserUnit {
                unit: "sync.service".into(),
                user: UnitUser::Name("alice".into()),
            },
            CgroupSelector::UserUnit {
                unit: "sync.service".into(),
                user: UnitUser::Name("mallory".into()),
            },
        ]);
        let alice = [("user.slice/user-1000.slice/user@1000.service", 1000)];
        for path in [
            "user.slice/user-1000.slice/user@1000.service/app.slice/sync.service",
            "user.slice/user-1000.slice/user@1000.service/sync.service",
            "user.slice/user-1000.slice/user@1000.service/a.slice/b.slice/sync.service",
        ] {
            assert_eq!(owner(&a, path, &alice), Some(16), "{path}");
        }
        for path in [
            "user.slice/user-1001.slice/user@1001.service/app.slice/sync.service",
            "system.slice/sync.service",
            "user.slice/user-1000.slice/sync.service",
            "user.slice/user-1000.slice/user@1000.service/x.service/sync.service",
        ] {
            assert_eq!(owner(&a, path, &alice), None, "{path}");
        }
        assert_eq!(
            a.unknown_users(),
            [("w17".to_owned(), "mallory".to_owned())]
        );
    }

    #[test]
    fn patterns_match_root_owned_cgroups_unless_delegated() {
        let a = automaton(vec![
            CgroupSelector::Glob("system.slice/api-*.service".into()),
            CgroupSelector::DelegatedGlob("system.slice/ci.service/job-*".into()),
            CgroupSelector::Glob("kubepods/**/*.scope".into()),
            CgroupSelector::Glob("batch/**".into()),
        ]);
        assert_eq!(owner(&a, "system.slice/api-1.service", &[]), Some(16));
        assert_eq!(owner(&a, "system.slice/api.service", &[]), None);
        let handed = [("system.slice/api-1.service", 1000)];
        assert_eq!(owner(&a, "system.slice/api-1.service", &handed), None);
        let ci = [("system.slice/ci.service", 999)];
        assert_eq!(owner(&a, "system.slice/ci.service/job-7", &ci), Some(17));
        assert_eq!(owner(&a, "kubepods/a.scope", &[]), Some(18));
        assert_eq!(owner(&a, "kubepods/p1/c/x.scope", &[]), Some(18));
        assert_eq!(owner(&a, "kubepods/p1/c/x.slice", &[]), None);
        assert_eq!(owner(&a, "batch", &[]), Some(19));
        assert_eq!(owner(&a, "batch/a/b", &[]), Some(19));
        let user_pod = [("kubepods/p1", 1000)];
        assert_eq!(owner(&a, "kubepods/p1/x.scope", &user_pod), None);
    }

    #[test]
    fn the_lowest_identity_wins_and_both_are_reported() {
        let a = automaton(vec![
            CgroupSelector::Glob("**/db.service".into()),
            CgroupSelector::Unit("db.service".into()),
        ]);
        let system = a.step(&a.initial(), false, b"system.slice", false);
        let step = a.step(&system.states, false, b"db.service", false);
        assert_eq!(step.winner().map(|w| w.workload), Some(16));
        assert_eq!(step.accepts.len(), 2);
    }

    /// The reference: `*` within a segment, `**` for any number of segments.
    fn path_glob(pattern: &[&str], path: &[&str]) -> bool {
        match pattern.split_first() {
            None => path.is_empty(),
            Some((&"**", rest)) => (0..=path.len()).any(|k| path_glob(rest, &path[k..])),
            Some((p, rest)) => match path.split_first() {
                Some((s, tail)) => {
                    let rule = GlobRule::new(p.as_bytes(), 0).unwrap();
                    glob_matches(&rule, s.as_bytes()) && path_glob(rest, tail)
                }
                None => false,
            },
        }
    }

    #[test]
    fn patterns_match_as_the_reference_does() {
        let patterns = [
            "a/*",
            "a/**/z",
            "**/z",
            "*/b*/**",
            "a/b",
            "**/x*y/**/z",
            "a/**",
            "*",
        ];
        let segments = ["a", "b", "bb", "z", "xy", "xay", "q"];
        // Every path of up to four segments over the alphabet.
        let mut paths: Vec<Vec<&str>> = vec![vec![]];
        for _ in 0..4 {
            let longer: Vec<Vec<&str>> = paths
                .iter()
                .filter(|p| p.len() == paths.last().map_or(0, Vec::len))
                .flat_map(|p| {
                    segments.iter().map(move |s| {
                        let mut q = p.clone();
                        q.push(*s);
                        q
                    })
                })
                .collect();
            paths.extend(longer);
        }
        for pattern in patterns {
            let a = automaton(vec![CgroupSelector::Glob(pattern.into())]);
            let split: Vec<&str> = pattern.split('/').collect();
            for path in paths.iter().filter(|p| !p.is_empty()) {
                let expected = path_glob(&split, path);
                let got = owner(&a, &path.join("/"), &[]) == Some(16);
                assert_eq!(got, expected, "{pattern} against {}", path.join("/"));
            }
        }
    }

    #[test]
    fn the_kernel_tables_hold_every_transition() {
        let a = automaton(vec![
            CgroupSelector::Unit("nginx.service".into()),
            CgroupSelector::Glob("system.slice/api-*.service".into()),
            CgroupSelector::Glob("kubepods/**/*.scope".into()),
        ]);
        let tables = a.kernel_tables([1, 2]);
        assert_eq!(tables.states.len(), a.nodes.len());
        let globs: usize = a.nodes.iter().map(|n| n.globs.len()).sum();
        assert_eq!(tables.globs.len(), globs);
        let exact: usize = a.nodes.iter().map(|n| n.exact.len()).sum();
        assert_eq!(tables.exact.len(), exact);
        // Each state's globs are a contiguous run in its order.
        for (id, node) in a.nodes.iter().enumerate() {
            let state = tables.states[id];
            assert_eq!(usize::from(state.glob_count), node.globs.len());
            for (k, (_, next)) in node.globs.iter().enumerate() {
                let rule = tables.globs[state.glob_first as usize + k];
                assert_eq!(rule.next_state, u32::from(*next));
            }
        }
    }

    #[test]
    fn selectors_past_the_kernels_capacity_are_refused() {
        let long = format!("system.slice/{}*", "x".repeat(MAX_GLOB_LEN));
        let err = Automaton::build(&[workload(16, CgroupSelector::Glob(long))], users).unwrap_err();
        assert!(matches!(err, AutomatonError::GlobTooLong { .. }), "{err}");
        let many: Vec<_> = (0..=MAX_GLOBS_PER_STATE)
            .map(|i| workload(16 + i, CgroupSelector::Glob(format!("s/a{i}-*"))))
            .collect();
        let err = Automaton::build(&many, users).unwrap_err();
        assert!(
            matches!(err, AutomatonError::TooManyGlobsAfterOnePath { .. }),
            "{err}"
        );
        // A state per unit: as many units as the states hold (with the
        // empty state, the root's and the system chain's), and one more
        // is refused.
        let units = |n: u32| -> Vec<_> {
            (0..n)
                .map(|i| workload(16 + i, CgroupSelector::Unit(format!("w{i}.service"))))
                .collect()
        };
        let fits = MAX_MATCH_STATES - 4;
        assert!(Automaton::build(&units(fits), users).is_ok());
        let err = Automaton::build(&units(fits + 1), users).unwrap_err();
        assert!(matches!(err, AutomatonError::TooManyStates { .. }), "{err}");
    }
}
