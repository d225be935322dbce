//! Effective reachability of one compiled policy, by interval arithmetic
//! over its verdict entries, following the kernel's lookup chain
//! (`docs/dataplane.md`): the exact remote, then `ANY_EXTERNAL` for peers
//! and `world`, then `ANY`; the first level with an entry for a port
//! decides; no entry anywhere is default deny.

use rustc_hash::FxHashMap;

use enforcer_common::{
    identity::{IDENTITY_ANY, IDENTITY_ANY_EXTERNAL, Identity},
    protocol::Protocol,
    verdict::{Action, Direction, RULE_DEFAULT_DENY, VerdictKey},
};

use super::ports::{PORT_MAX, PortMap, combine, combine_into};
use crate::compile::{CompiledPolicy, EntityKind};

/// The protocols a verdict key can carry, in report order.
pub const PROTOCOLS: [u8; 3] = [
    Protocol::Tcp as u8,
    Protocol::Udp as u8,
    Protocol::Icmp as u8,
];

/// The last "port" of a protocol: ICMP echo is a single port 0.
pub fn port_max(protocol: u8) -> u16 {
    if protocol == Protocol::Icmp as u8 {
        0
    } else {
        PORT_MAX
    }
}

/// `tcp`, `udp`, `icmp`.
pub fn protocol_name(protocol: u8) -> &'static str {
    match Protocol::from_raw(protocol) {
        Some(Protocol::Tcp) => "tcp",
        Some(Protocol::Udp) => "udp",
        Some(Protocol::Icmp) => "icmp",
        None => "unknown",
    }
}

/// The effective decision for a port: allowed or not, and the rules that
/// decided. Between two workloads an allow needs both ends, so it names two
/// rules (the sender's, then the receiver's); otherwise `rules[1]` is
/// [`RULE_DEFAULT_DENY`] and unused. Rule numbers index the policy's
/// `rules` table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Effective {
    pub allow: bool,
    pub rules: [u32; 2],
}

impl Effective {
    pub const DEFAULT_DENY: Effective = Effective {
        allow: false,
        rules: [RULE_DEFAULT_DENY, RULE_DEFAULT_DENY],
    };

    fn single(allow: bool, rule: u32) -> Self {
        Effective {
            allow,
            rules: [rule, RULE_DEFAULT_DENY],
        }
    }
}

type GroupKey = (Identity, u8, u8, Identity);

/// The wildcard levels of one (workload, direction, protocol), resolved
/// once: most remotes have no entry of their own, so their verdicts are
/// exactly these maps.
struct Wildcards {
    /// `ANY`: what non-external remotes (workloads, `host`) fall back to.
    internal: PortMap<Effective>,
    /// `ANY_EXTERNAL` over `ANY`: what peers and `world` fall back to.
    external: PortMap<Effective>,
}

/// One policy, indexed for reachability queries.
pub struct Reach<'a> {
    policy: &'a CompiledPolicy,
    /// Per (workload class, direction, protocol, remote) the resolved port
    /// map: the entries are keyed by class (see `CompiledWorkload::class`).
    groups: FxHashMap<GroupKey, PortMap<Effective>>,
    wildcards: FxHashMap<(Identity, u8, u8), Wildcards>,
    /// The workloads whose class is another workload's.
    classes: FxHashMap<Identity, Identity>,
    kinds: FxHashMap<Identity, EntityKind>,
    empty: PortMap<Effective>,
}

/// Reusable buffers for [`Reach`] queries, so that the diff's hundreds of
/// thousands of queries do not allocate.
#[derive(Debug, Default)]
pub struct Scratch {
    out: PortMap<Effective>,
    inn: PortMap<Effective>,
    both: PortMap<Effective>,
}

impl<'a> Reach<'a> {
    pub fn new(policy: &'a CompiledPolicy) -> Self {
        // The key's bytes are (workload, direction, protocol, remote, port),
        // big-endian: as one integer (with the port bits below), sorting
        // groups the entries and orders each group by port.
        let mut entries: Vec<(u128, Effective)> = policy
            .verdicts
            .iter()
            .map(|(key, value)| {
                let mut wide = [0u8; 16];
                wide[..12].copy_from_slice(&key.data);
                wide[12] = key.port_bits() as u8;
                let decision = Effective::single(value.action == Action::Allow as u8, value.rule);
                (u128::from_be_bytes(wide), decision)
            })
            .collect();
        entries.sort_unstable_by_key(|e| e.0);
        let mut groups: FxHashMap<GroupKey, PortMap<Effective>> = FxHashMap::default();
        groups.reserve(entries.len() / 4);
        for run in entries.chunk_by(|a, b| a.0 >> 48 == b.0 >> 48) {
            let bytes = run[0].0.to_be_bytes();
            let key = VerdictKey {
                prefix_len: 0,
                data: [
                    bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7],
                    bytes[8], bytes[9], bytes[10], bytes[11],
                ],
            };
            let group = (
                key.workload(),
                key.direction(),
                key.protocol(),
                key.remote(),
            );
            let blocks = run.iter().map(|(k, decision)| {
                let b = k.to_be_bytes();
                (
                    u16::from_be_bytes([b[10], b[11]]),
                    u32::from(b[12]),
                    *decision,
                )
            });
            let map = PortMap::from_sorted_blocks(blocks.clone())
                .unwrap_or_else(|| PortMap::from_blocks(blocks));
            groups.insert(group, map);
        }
        let empty = PortMap::default();
        let mut wildcards = FxHashMap::default();
        for &(w, d, p, _) in groups.keys() {
            wildcards.entry((w, d, p)).or_insert_with(|| {
                let level = |r: Identity| groups.get(&(w, d, p, r)).unwrap_or(&empty);
                let any = level(IDENTITY_ANY);
                let external = combine(level(IDENTITY_ANY_EXTERNAL), any, port_max(p), first_hit);
                Wildcards {
                    internal: any.clone(),
                    external,
                }
            });
        }
        let kinds = policy
            .entities
            .iter()
            .map(|e| (e.identity, e.kind))
            .collect();
        let classes = policy
            .workloads
            .iter()
            .filter(|w| w.class != w.identity)
            .map(|w| (w.identity, w.class))
            .collect();
        Reach {
            policy,
            groups,
            wildcards,
            classes,
            kinds,
            empty,
        }
    }

    pub fn policy(&self) -> &'a CompiledPolicy {
        self.policy
    }

    /// The kind of an identity, if the policy knows it.
    pub fn kind(&self, identity: Identity) -> Option<EntityKind> {
        self.kinds.get(&identity).copied()
    }

    /// What one workload's own policy says about `remote`, in `direction`,
    /// over the protocol's ports. Ports absent from the result are default
    /// deny.
    pub fn one_side(
        &self,
        workload: Identity,
        direction: u8,
        protocol: u8,
        remote: Identity,
    ) -> PortMap<Effective> {
        let mut buf = PortMap::default();
        self.one_side_in(workload, direction, protocol, remote, &mut buf)
            .clone()
    }

    /// [`Self::one_side`], using `buf` when a new map must be built.
    pub fn one_side_in<'s>(
        &'s self,
        workload: Identity,
        direction: u8,
        protocol: u8,
        remote: Identity,
        buf: &'s mut PortMap<Effective>,
    ) -> &'s PortMap<Effective> {
        let class = self.classes.get(&workload).copied().unwrap_or(workload);
        let Some(wild) = self.wildcards.get(&(class, direction, protocol)) else {
            return &self.empty;
        };
        let external = matches!(
            self.kind(remote),
            Some(EntityKind::Peer | EntityKind::World)
        );
        let base = if external {
            &wild.external
        } else {
            &wild.internal
        };
        match self.groups.get(&(class, direction, protocol, remote)) {
            None => base,
            Some(exact) if base.is_empty() => exact,
            Some(exact) => {
                combine_into(exact, base, port_max(protocol), first_hit, buf);
                buf
            }
        }
    }

    /// The effective verdict of traffic from workload `from` to workload
    /// `to` (semantics 5): the sender's egress and the receiver's ingress
    /// must both allow. A deny names the sender's rule when the sender
    /// refuses (its check runs first), else the receiver's.
    pub fn between_workloads(
        &self,
        from: Identity,
        to: Identity,
        protocol: u8,
    ) -> PortMap<Effective> {
        let mut scratch = Scratch::default();
        self.between_workloads_in(from, to, protocol, &mut scratch)
            .clone()
    }

    /// [`Self::between_workloads`], building maps in `scratch`.
    pub fn between_workloads_in<'s>(
        &'s self,
        from: Identity,
        to: Identity,
        protocol: u8,
        scratch: &'s mut Scratch,
    ) -> &'s PortMap<Effective> {
        let Scratch { out, inn, both } = scratch;
        let out = self.one_side_in(from, Direction::Egress as u8, protocol, to, out);
        let inn = self.one_side_in(to, Direction::Ingress as u8, protocol, from, inn);
        // Nothing allowed out, or only allows facing a receiver that
        // accepts nothing: default deny everywhere.
        if out.is_empty() || (inn.is_empty() && out.segments().iter().all(|s| s.2.allow)) {
            return &self.empty;
        }
        let judge = |o: Option<&Effective>, i: Option<&Effective>| {
            let o = o.copied().unwrap_or(Effective::DEFAULT_DENY);
            let i = i.copied().unwrap_or(Effective::DEFAULT_DENY);
            let e = match (o.allow, i.allow) {
                (true, true) => Effective {
                    allow: true,
                    rules: [o.rules[0], i.rules[0]],
                },
                (false, _) => o,
                (true, false) => i,
            };
            (e != Effective::DEFAULT_DENY).then_some(e)
        };
        combine_into(out, inn, port_max(protocol), judge, both);
        both
    }
}

/// Lookup levels: the more specific map decides where it has an entry.
fn first_hit(a: Option<&Effective>, b: Option<&Effective>) -> Option<Effective> {
    a.or(b).copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::testkit::PolicyBuilder;
    use enforcer_common::{
        identity::{IDENTITY_HOST, IDENTITY_WORLD},
        verdict::Action,
    };

    #[test]
    fn exact_level_shadows_wildcards_and_gaps_fall_through() {
        let mut b = PolicyBuilder::new();
        let db = b.workload("db");
        let office = b.peer("office", &["203.0.113.0/24"]);
        // `any` may reach 5432; office is denied 5000-5999 (folded in as
        // the exact level).
        let allow_any = b.grant(
            ("db", "allow-in", 0),
            (db, Direction::Ingress, IDENTITY_ANY),
            (Protocol::Tcp, 5432..=5432, Action::Allow),
        );
        let deny_office = b.grant(
            ("db", "deny-in", 0),
            (db, Direction::Ingress, office),
            (Protocol::Tcp, 5000..=5999, Action::Deny),
        );
        let p = b.build();
        let r = Reach::new(&p);
        let o = r.one_side(db, Direction::Ingress as u8, Protocol::Tcp as u8, office);
        assert_eq!(
            o.segments(),
            &[(5000, 5999, Effective::single(false, deny_office))]
        );
        let w = r.one_side(
            db,
            Direction::Ingress as u8,
            Protocol::Tcp as u8,
            IDENTITY_WORLD,
        );
        assert_eq!(
            w.segments(),
            &[(5432, 5432, Effective::single(true, allow_any))]
        );
        assert!(
            r.one_side(db, Direction::Ingress as u8, Protocol::Udp as u8, office)
                .is_empty()
        );
    }

    #[test]
    fn class_members_are_judged_by_their_class_and_diff_like_their_own_rows() {
        // The same policy twice: web and api with identical rows each, and
        // api stored as a member of web's class.
        let build = |shared: bool| {
            let mut b = PolicyBuilder::new();
            let web = b.workload("web");
            let api = b.workload("api");
            b.peer("office", &["203.0.113.0/24"]);
            for w in [web, api] {
                b.grant(
                    ("front", "allow-in", 0),
                    (w, Direction::Ingress, IDENTITY_ANY),
                    (Protocol::Tcp, 443..=443, Action::Allow),
                );
                b.grant(
                    ("front", "deny-in", 0),
                    (w, Direction::Ingress, IDENTITY_WORLD),
                    (Protocol::Tcp, 1..=1023, Action::Deny),
                );
            }
            if shared {
                b.set_class(api, web);
            }
            (b.build(), web, api)
        };
        let (own, web, api) = build(false);
        let (shared, _, _) = build(true);
        assert!(shared.verdicts.len() < own.verdicts.len());
        let (r_own, r_shared) = (Reach::new(&own), Reach::new(&shared));
        for remote in [IDENTITY_WORLD, IDENTITY_HOST, web] {
            let member =
                r_shared.one_side(api, Direction::Ingress as u8, Protocol::Tcp as u8, remote);
            assert!(!member.is_empty());
            assert_eq!(
                member,
                r_own.one_side(api, Direction::Ingress as u8, Protocol::Tcp as u8, remote)
            );
            assert_eq!(
                member,
                r_shared.one_side(web, Direction::Ingress as u8, Protocol::Tcp as u8, remote)
            );
        }
        assert_eq!(
            r_shared.between_workloads(web, api, Protocol::Tcp as u8),
            r_own.between_workloads(web, api, Protocol::Tcp as u8)
        );
        let input = |p: &CompiledPolicy| crate::diff::DiffInput::from_compiled(p.clone());
        assert!(crate::diff::diff(&input(&own), &input(&shared)).is_empty());
        // A real change to the class is reported for the member too.
        let (mut narrower, _, _) = build(true);
        narrower
            .verdicts
            .retain(|(k, _)| k.remote() != IDENTITY_ANY);
        let d = crate::diff::diff(&input(&shared), &input(&narrower));
        let text = format!("{d:?}");
        assert!(text.contains("api") && text.contains("web"), "{text}");
    }

    #[test]
    fn any_external_applies_to_peers_and_world_only() {
        let mut b = PolicyBuilder::new();
        let web = b.workload("web");
        let api = b.workload("api");
        b.peer("office", &["203.0.113.0/24"]);
        b.grant(
            ("web", "allow-in", 0),
            (web, Direction::Ingress, IDENTITY_ANY_EXTERNAL),
            (Protocol::Tcp, 443..=443, Action::Allow),
        );
        let p = b.build();
        let r = Reach::new(&p);
        assert!(
            !r.one_side(
                web,
                Direction::Ingress as u8,
                Protocol::Tcp as u8,
                IDENTITY_WORLD
            )
            .is_empty()
        );
        assert!(
            r.one_side(web, Direction::Ingress as u8, Protocol::Tcp as u8, api)
                .is_empty()
        );
        assert!(
            r.one_side(
                web,
                Direction::Ingress as u8,
                Protocol::Tcp as u8,
                IDENTITY_HOST
            )
            .is_empty()
        );
    }

    #[test]
    fn workload_pairs_need_both_ends() {
        let mut b = PolicyBuilder::new();
        let web = b.workload("web");
        let api = b.workload("api");
        let out = b.grant(
            ("web", "allow-out", 0),
            (web, Direction::Egress, api),
            (Protocol::Tcp, 8000..=8100, Action::Allow),
        );
        let inn = b.grant(
            ("api", "allow-in", 0),
            (api, Direction::Ingress, web),
            (Protocol::Tcp, 8080..=8080, Action::Allow),
        );
        let p = b.build();
        let r = Reach::new(&p);
        let m = r.between_workloads(web, api, Protocol::Tcp as u8);
        assert_eq!(
            m.segments(),
            &[(
                8080,
                8080,
                Effective {
                    allow: true,
                    rules: [out, inn]
                }
            )]
        );
        // The sender refusing names the sender's rule.
        let mut b = PolicyBuilder::new();
        let web = b.workload("web");
        let api = b.workload("api");
        let deny = b.grant(
            ("web", "deny-out", 0),
            (web, Direction::Egress, api),
            (Protocol::Tcp, 0..=65535, Action::Deny),
        );
        b.grant(
            ("api", "allow-in", 0),
            (api, Direction::Ingress, web),
            (Protocol::Tcp, 8080..=8080, Action::Allow),
        );
        let p = b.build();
        let m = Reach::new(&p).between_workloads(web, api, Protocol::Tcp as u8);
        assert_eq!(m.segments(), &[(0, 65535, Effective::single(false, deny))]);
    }
}
