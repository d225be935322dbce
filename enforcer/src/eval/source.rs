//! A deliberately naive evaluator over the source model: iterate every
//! rule, match selectors and ports, deny wins, smallest rule reported. It
//! shares nothing with the compiler, so tests use it as an independent
//! oracle for the compiled entries.

use std::time::SystemTime;

use enforcer_common::verdict::Direction;

use crate::policy::{Name, PolicySet, RuleRef, Selector, ServicePort, Verdict};

/// An entity of the source model.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Entity {
    Workload(Name),
    Peer(Name),
    World,
    Host,
}

/// What the source model says about one end of a connection: the verdict
/// and the deciding rule (`None`: default deny).
pub fn evaluate(
    set: &PolicySet,
    now: SystemTime,
    local: &Name,
    direction: u8,
    remote: &Entity,
    port: ServicePort,
) -> (Verdict, Option<RuleRef>) {
    let Some(workload) = set.workloads.iter().find(|w| &w.name == local) else {
        return (Verdict::Deny, None);
    };
    let mut best_deny: Option<RuleRef> = None;
    let mut best_allow: Option<RuleRef> = None;
    for policy in &set.policies {
        let selected = policy.select.iter().any(|s| match &s.value {
            Selector::Labels(t) => Selector::matches_labels(t, &workload.labels),
            Selector::Workload(n) => n == local,
            _ => false,
        });
        if !selected {
            continue;
        }
        for rule in &policy.rules {
            let dir = if rule.section.direction() == Direction::Egress as u8 {
                Direction::Egress as u8
            } else {
                Direction::Ingress as u8
            };
            if dir != direction || !rule.active_at(now) {
                continue;
            }
            if !rule
                .remotes
                .iter()
                .any(|s| selector_matches(set, &s.value, remote))
            {
                continue;
            }
            let covers = rule.port_specs().iter().any(|spec| {
                let (p, lo, hi) = spec.interval();
                p == port.protocol && lo <= port.port && port.port <= hi
            });
            if !covers {
                continue;
            }
            let r = RuleRef::of(policy, rule);
            let slot = if rule.section.is_deny() {
                &mut best_deny
            } else {
                &mut best_allow
            };
            if slot.as_ref().is_none_or(|b| r < *b) {
                *slot = Some(r);
            }
        }
    }
    match (best_deny, best_allow) {
        (Some(d), _) => (Verdict::Deny, Some(d)),
        (None, Some(a)) => (Verdict::Allow, Some(a)),
        (None, None) => (Verdict::Deny, None),
    }
}

fn selector_matches(set: &PolicySet, s: &Selector, e: &Entity) -> bool {
    match (s, e) {
        (Selector::Any, _) => true,
        (Selector::World, Entity::World | Entity::Peer(_)) => true,
        (Selector::Host, Entity::Host) => true,
        (Selector::Workload(n), Entity::Workload(m)) => n == m,
        (Selector::Peer(n), Entity::Peer(m)) => n == m,
        (Selector::Labels(t), Entity::Workload(m)) => set
            .workloads
            .iter()
            .any(|w| &w.name == m && Selector::matches_labels(t, &w.labels)),
        (Selector::Labels(t), Entity::Peer(m)) => set
            .peers
            .iter()
            .any(|p| &p.name == m && Selector::matches_labels(t, &p.labels)),
        _ => false,
    }
}
