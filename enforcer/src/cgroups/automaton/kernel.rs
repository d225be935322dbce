//! The automaton as the tables the kernel's cgroup tracer reads.

use enforcer_common::cgroup_match::{
    ExactKey, GlobRule, MatchState, STATE_ACCEPT_DELEGATED, STATE_FROM_DELEGATED, STATE_HAS_EXACT,
    name_hash, name_words,
};

use super::{Accept, Automaton, Takes};

/// The tables the kernel's tracer reads for one slot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelTables {
    /// Indexed by state id (entry 0 unused).
    pub states: Vec<MatchState>,
    pub exact: Vec<(ExactKey, u32)>,
    pub globs: Vec<GlobRule>,
}

impl Automaton {
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
