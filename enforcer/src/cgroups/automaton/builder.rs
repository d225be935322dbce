//! Building the automaton's states from the selectors, one transition at
//! a time.

use enforcer_common::cgroup_match::{MAX_GLOB_LEN, STATE_NONE};

use super::{Accept, AutomatonError, Node, Segment};

pub(super) struct Builder {
    pub(super) nodes: Vec<Node>,
}

impl Builder {
    pub(super) fn state(&mut self, from_delegated: bool) -> u16 {
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

    pub(super) fn add_glob(&mut self, from: u16, pattern: &[u8], to: u16) {
        self.node(from).globs.push((pattern.to_vec(), to));
    }

    /// The state `segment` leads to from `from`, made if new. Its
    /// transitions may be taken from delegated cgroups when any selector
    /// through it says so.
    pub(super) fn edge(&mut self, from: u16, segment: Segment, from_delegated: bool) -> u16 {
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

    pub(super) fn accept(&mut self, state: u16, accept: Accept) {
        let node = self.node(state);
        // Identical selectors share a state; the lower identity keeps it
        // (workloads arrive in identity order).
        if node.accept.is_none() {
            node.accept = Some(accept);
        }
    }

    /// `user.slice/user-UID.slice/user@UID.service`, then the user
    /// manager's `.slice` chain: the state units of that user hang off.
    pub(super) fn user_chain(&mut self, user_root: u16, uid: u32) -> u16 {
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
    pub(super) fn pattern(
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
