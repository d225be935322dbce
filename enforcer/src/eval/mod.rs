//! The reference evaluator: judges a connection from the compiled entries
//! exactly as the kernel does (the same lookup chain over the same keys),
//! so tests can compare the kernel against it. It never looks at the
//! source policy; [`source`] is the independent oracle over the source
//! model that the tests compare this one with.

pub mod source;

use std::net::IpAddr;

use enforcer_common::{
    address::{AddrKey4, AddrKey6},
    identity::{IDENTITY_ANY, IDENTITY_ANY_EXTERNAL, IDENTITY_HOST, IDENTITY_WORLD, Identity},
    verdict::{Action, Direction, RULE_DEFAULT_DENY, VERDICT_FIXED_PREFIX_BITS, VerdictKey},
};

use crate::compile::{CompiledPolicy, EntityKind};
use crate::policy::{Endpoint, ServicePort, Verdict};

/// A new connection as the kernel sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Connection {
    /// The local workload.
    pub local: Identity,
    /// Direction::Egress or Direction::Ingress.
    pub direction: u8,
    /// The remote entity.
    pub remote: Identity,
    /// Protocol::Tcp, Protocol::Udp or Protocol::Icmp.
    pub protocol: u8,
    /// The service port (0 for ICMP echo).
    pub port: u16,
}

/// The policy's decision for a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Decision {
    /// Action::Allow or Action::Deny.
    pub action: u8,
    /// Index in `CompiledPolicy::rules`, or RULE_DEFAULT_DENY.
    pub rule: u32,
}

impl Decision {
    pub fn verdict(self) -> Verdict {
        Verdict::from_action(self.action)
    }
}

/// Longest-prefix match over the verdict entries, as the kernel's LPM trie
/// does: the longest stored key whose first `prefix_len` bits equal the
/// lookup key's.
fn lpm_verdict(
    policy: &CompiledPolicy,
    w: Identity,
    d: u8,
    p: u8,
    r: Identity,
    port: u16,
) -> Option<Decision> {
    // The fixed 80 bits always match in full, so only the port bits vary:
    // try every port prefix length from the longest down.
    for bits in (0..=16u8).rev() {
        let mask = if bits == 0 {
            0
        } else {
            u16::MAX << (16 - bits)
        };
        let key = VerdictKey::new(w, d, p, r, port & mask, bits);
        debug_assert_eq!(key.prefix_len, VERDICT_FIXED_PREFIX_BITS + u32::from(bits));
        if let Ok(i) = policy.verdicts.binary_search_by(|(k, _)| k.cmp(&key)) {
            let v = policy.verdicts[i].1;
            return Some(Decision {
                action: v.action,
                rule: v.rule,
            });
        }
    }
    None
}

/// Whether an identity is outside this host (a peer or `world`): the
/// kernel consults the ANY_EXTERNAL level only for those.
fn is_external(policy: &CompiledPolicy, r: Identity) -> bool {
    r == IDENTITY_WORLD || policy.entity(r).is_some_and(|e| e.kind == EntityKind::Peer)
}

/// Judges a new connection exactly as the kernel's lookup chain does: the
/// exact remote, then ANY_EXTERNAL (peers and world only), then ANY, then
/// default deny. Modes are not applied here.
pub fn evaluate(policy: &CompiledPolicy, conn: &Connection) -> Decision {
    let Connection {
        local,
        direction,
        remote,
        protocol,
        port,
    } = *conn;
    // The entries are stored under the workload's class, as the kernel
    // looks them up.
    let local = policy.class_of(local);
    lpm_verdict(policy, local, direction, protocol, remote, port)
        .or_else(|| {
            is_external(policy, remote)
                .then(|| {
                    lpm_verdict(
                        policy,
                        local,
                        direction,
                        protocol,
                        IDENTITY_ANY_EXTERNAL,
                        port,
                    )
                })
                .flatten()
        })
        .or_else(|| lpm_verdict(policy, local, direction, protocol, IDENTITY_ANY, port))
        .unwrap_or(Decision {
            action: Action::Deny as u8,
            rule: RULE_DEFAULT_DENY,
        })
}

/// The identity of a remote address: longest-prefix match over the peers'
/// prefixes, `world` when none covers it. (This host's own addresses are
/// added by the daemon, not the compiler, so they resolve to `world` here.)
pub fn resolve_addr(policy: &CompiledPolicy, addr: IpAddr) -> Identity {
    match addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            for len in (0..=32u32).rev() {
                let masked = if len == 0 {
                    0
                } else {
                    bits & (u32::MAX << (32 - len))
                };
                let key = AddrKey4 {
                    prefix_len: len,
                    addr: masked.to_be_bytes(),
                };
                if let Ok(i) = policy.prefixes_v4.binary_search_by(|(k, _)| k.cmp(&key)) {
                    return policy.prefixes_v4[i].1;
                }
            }
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            for len in (0..=128u32).rev() {
                let masked = if len == 0 {
                    0
                } else {
                    bits & (u128::MAX << (128 - len))
                };
                let key = AddrKey6 {
                    prefix_len: len,
                    addr: masked.to_be_bytes(),
                };
                if let Ok(i) = policy.prefixes_v6.binary_search_by(|(k, _)| k.cmp(&key)) {
                    return policy.prefixes_v6[i].1;
                }
            }
        }
    }
    IDENTITY_WORLD
}

/// The identity an endpoint stands for in a compiled policy.
pub fn endpoint_identity(policy: &CompiledPolicy, e: &Endpoint) -> Identity {
    match e {
        Endpoint::Workload(n) | Endpoint::Peer(n) => {
            policy.identity_of(n.as_str()).unwrap_or(IDENTITY_WORLD)
        }
        Endpoint::World => IDENTITY_WORLD,
        Endpoint::Host => IDENTITY_HOST,
        // Loopback addresses are always this host; other local addresses
        // are only known to the daemon, so they resolve like remote ones.
        Endpoint::Addr(a) if a.is_loopback() => IDENTITY_HOST,
        Endpoint::Addr(a) => resolve_addr(policy, *a),
    }
}

/// How an endpoint is written.
pub fn endpoint_name(e: &Endpoint) -> String {
    match e {
        Endpoint::Workload(n) | Endpoint::Peer(n) => n.to_string(),
        Endpoint::World => "world".into(),
        Endpoint::Host => "host".into(),
        Endpoint::Addr(a) => a.to_string(),
    }
}

/// One workload end's judgement of a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndDecision {
    pub connection: Connection,
    pub decision: Decision,
}

/// The policy's verdict on a flow between two entities.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Neither end is a workload: the policy does not govern it (this
    /// host's unmanaged processes follow the daemon's `--unmanaged`
    /// setting; traffic between remote addresses never reaches a workload).
    Ungoverned,
    /// The sender's egress (when it is a workload) and the receiver's
    /// ingress (when it is a workload), in that order; the flow is allowed
    /// when every end allows it.
    Judged(Vec<EndDecision>),
}

impl Flow {
    /// `None` when ungoverned.
    pub fn verdict(&self) -> Option<Verdict> {
        match self {
            Flow::Ungoverned => None,
            Flow::Judged(ends) => Some(
                if ends
                    .iter()
                    .all(|e| e.decision.action == Action::Allow as u8)
                {
                    Verdict::Allow
                } else {
                    Verdict::Deny
                },
            ),
        }
    }

    /// The rules that decided: on a denial, the first denying end's rule;
    /// on an allow, every end's rule (joined with " and ").
    pub fn deciding_rules(&self, policy: &CompiledPolicy) -> String {
        let Flow::Judged(ends) = self else {
            return "no rule (neither end is a workload)".into();
        };
        if let Some(denied) = ends
            .iter()
            .find(|e| e.decision.action != Action::Allow as u8)
        {
            return policy.rule_name(denied.decision.rule);
        }
        let names: Vec<String> = ends
            .iter()
            .map(|e| policy.rule_name(e.decision.rule))
            .collect();
        names.join(" and ")
    }
}

/// Judges a flow from `from` to `to` on `port`: the sender's egress if it
/// is a workload, the receiver's ingress if it is a workload; both must
/// allow (semantics 5). Modes are not applied: this is the policy's verdict.
pub fn judge_flow(
    policy: &CompiledPolicy,
    from: Identity,
    to: Identity,
    port: ServicePort,
) -> Flow {
    let is_workload = |id| policy.workload(id).is_some();
    let mut ends = Vec::new();
    if is_workload(from) {
        let connection = Connection {
            local: from,
            direction: Direction::Egress as u8,
            remote: to,
            protocol: port.protocol,
            port: port.port,
        };
        ends.push(EndDecision {
            connection,
            decision: evaluate(policy, &connection),
        });
    }
    if is_workload(to) {
        let connection = Connection {
            local: to,
            direction: Direction::Ingress as u8,
            remote: from,
            protocol: port.protocol,
            port: port.port,
        };
        ends.push(EndDecision {
            connection,
            decision: evaluate(policy, &connection),
        });
    }
    if ends.is_empty() {
        Flow::Ungoverned
    } else {
        Flow::Judged(ends)
    }
}

#[cfg(test)]
mod tests {
    use enforcer_common::{address::AddrKey4, protocol::Protocol, verdict::VerdictValue};

    use super::*;
    use crate::compile::EntityInfo;

    const W: Identity = 16;
    const PEER: Identity = 17;

    fn value(rule: u32, action: u8) -> VerdictValue {
        VerdictValue {
            rule,
            action,
            _pad: [0; 3],
        }
    }

    /// Entries written by hand, so the lookup is checked against the
    /// kernel's rules and not against what the compiler happens to emit.
    fn policy() -> CompiledPolicy {
        let mut verdicts = vec![
            // 8000-8063 allowed by rule 0, but 8010 denied by rule 1.
            (
                VerdictKey::new(
                    W,
                    Direction::Ingress as u8,
                    Protocol::Tcp as u8,
                    PEER,
                    8000,
                    10,
                ),
                value(0, Action::Allow as u8),
            ),
            (
                VerdictKey::new(
                    W,
                    Direction::Ingress as u8,
                    Protocol::Tcp as u8,
                    PEER,
                    8010,
                    16,
                ),
                value(1, Action::Deny as u8),
            ),
            // Every external address: port 22 denied by rule 2.
            (
                VerdictKey::new(
                    W,
                    Direction::Ingress as u8,
                    Protocol::Tcp as u8,
                    IDENTITY_ANY_EXTERNAL,
                    22,
                    16,
                ),
                value(2, Action::Deny as u8),
            ),
            // Anyone: every TCP port allowed by rule 3.
            (
                VerdictKey::new(
                    W,
                    Direction::Ingress as u8,
                    Protocol::Tcp as u8,
                    IDENTITY_ANY,
                    0,
                    0,
                ),
                value(3, Action::Allow as u8),
            ),
        ];
        verdicts.sort_by_key(|(k, _)| *k);
        let mut prefixes_v4 = vec![
            (
                AddrKey4 {
                    prefix_len: 24,
                    addr: [203, 0, 113, 0],
                },
                PEER,
            ),
            (
                AddrKey4 {
                    prefix_len: 32,
                    addr: [203, 0, 113, 9],
                },
                18,
            ),
        ];
        prefixes_v4.sort();
        CompiledPolicy {
            entities: vec![
                EntityInfo::new(IDENTITY_WORLD, EntityKind::World, "world"),
                EntityInfo::new(IDENTITY_HOST, EntityKind::Host, "host"),
                EntityInfo::new(W, EntityKind::Workload, "w"),
                EntityInfo::new(PEER, EntityKind::Peer, "p"),
                EntityInfo::new(18, EntityKind::Peer, "q"),
            ],
            workloads: vec![],
            prefixes_v4,
            prefixes_v6: vec![],
            verdicts,
            rules: vec![],
            next_expiry: None,
            content_hash: 0,
        }
    }

    fn judge(remote: Identity, port: u16) -> (u8, u32) {
        let d = evaluate(
            &policy(),
            &Connection {
                local: W,
                direction: Direction::Ingress as u8,
                remote,
                protocol: Protocol::Tcp as u8,
                port,
            },
        );
        (d.action, d.rule)
    }

    #[test]
    fn the_longest_port_prefix_wins() {
        assert_eq!(judge(PEER, 8000), (Action::Allow as u8, 0));
        assert_eq!(judge(PEER, 8010), (Action::Deny as u8, 1));
        assert_eq!(judge(PEER, 8063), (Action::Allow as u8, 0));
    }

    #[test]
    fn levels_are_tried_in_order_and_the_first_hit_decides() {
        // No exact entry for 8064: the ANY level decides.
        assert_eq!(judge(PEER, 8064), (Action::Allow as u8, 3));
        // The exact level hides the ANY_EXTERNAL deny for port 22 only when
        // it has an entry for 22; here it has none.
        assert_eq!(judge(PEER, 22), (Action::Deny as u8, 2));
        assert_eq!(judge(IDENTITY_WORLD, 22), (Action::Deny as u8, 2));
        // ANY_EXTERNAL is skipped for this host and for workloads.
        assert_eq!(judge(IDENTITY_HOST, 22), (Action::Allow as u8, 3));
        assert_eq!(judge(W, 22), (Action::Allow as u8, 3));
        // Another protocol or direction: nothing matches.
        let d = evaluate(
            &policy(),
            &Connection {
                local: W,
                direction: Direction::Egress as u8,
                remote: PEER,
                protocol: Protocol::Tcp as u8,
                port: 22,
            },
        );
        assert_eq!((d.action, d.rule), (Action::Deny as u8, RULE_DEFAULT_DENY));
    }

    #[test]
    fn addresses_resolve_by_longest_prefix() {
        let p = policy();
        assert_eq!(resolve_addr(&p, "203.0.113.9".parse().unwrap()), 18);
        assert_eq!(resolve_addr(&p, "203.0.113.10".parse().unwrap()), PEER);
        assert_eq!(
            resolve_addr(&p, "198.51.100.1".parse().unwrap()),
            IDENTITY_WORLD
        );
        assert_eq!(
            resolve_addr(&p, "2001:db8::1".parse().unwrap()),
            IDENTITY_WORLD
        );
        assert_eq!(
            endpoint_identity(&p, &Endpoint::Addr("::1".parse().unwrap())),
            IDENTITY_HOST
        );
    }
}
