//! One step of the automaton: the states a child cgroup is in, found in
//! the order the kernel's tracer finds them.

use enforcer_common::cgroup_match::{REACHED_PER_STEP, STATE_NONE, STATES_PER_CGROUP};

use super::{Accept, Automaton, Node, StateSet, Takes};

/// The states found for a child, in the kernel's order: the states its
/// name leads to are noted first ([`Walk::reach`]), then looked at in that
/// order ([`Walk::settle`]), each bringing its `also` state to the end of
/// the list.
pub(super) struct Walk {
    reached: Vec<u16>,
    pub(super) states: StateSet,
    count: usize,
    pub(super) accepts: Vec<Accept>,
    parent_delegated: bool,
    delegated: bool,
}

impl Walk {
    pub(super) fn new(parent_delegated: bool, delegated: bool) -> Walk {
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

    pub(super) fn reach(&mut self, id: u16) {
        if self.reached.len() < REACHED_PER_STEP {
            self.reached.push(id);
        } else {
            self.states.overflow = true;
        }
    }

    pub(super) fn settle(&mut self, automaton: &Automaton) {
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
