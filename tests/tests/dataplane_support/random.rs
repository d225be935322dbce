//! The seeded random compiled policies of the data plane tests: one
//! generator, shaped per test by [`PolicyShape`] (how many workloads, peers,
//! prefixes and verdicts), always drawing from every kind of entry the data
//! plane knows (IPv4 and IPv6 prefixes of many lengths, TCP, UDP and ICMP,
//! all special remotes, port ranges, allow and deny, verdict classes).

use std::net::{Ipv4Addr, Ipv6Addr};

use enforcer::{
    compile::{CompiledPolicy, CompiledWorkload},
    policy::{CgroupSelector, RuleRef, Section},
};
use enforcer_common::{
    address::{AddrKey4, AddrKey6},
    identity::{IDENTITY_ANY, IDENTITY_ANY_EXTERNAL, IDENTITY_HOST, IDENTITY_WORLD},
    protocol::Protocol,
    verdict::{Action, Direction, VerdictKey, VerdictValue},
    workload::Mode,
};

use super::{Rng, empty_policy};

/// How many rule references a random policy has (verdicts name one of them).
pub(crate) const RANDOM_RULES: u32 = 32;

/// What a random policy is made of.
pub(crate) struct PolicyShape<'a> {
    /// Workloads that are their own verdict class and hold the verdicts.
    pub(crate) workloads: &'a [(u32, &'a str)],
    /// A workload with no verdicts of its own: each policy makes it a member
    /// of the class of one of `member_classes`, so the kernel must look its
    /// verdicts up under the class while naming the workload itself.
    pub(crate) member: (u32, &'a str),
    pub(crate) member_classes: &'a [u32],
    pub(crate) peers: &'a [(u32, &'a str)],
    /// Up to this many IPv4 prefixes, and as many IPv6 prefixes.
    pub(crate) max_prefixes: u64,
    /// Up to this many verdict draws (equal keys collapse).
    pub(crate) max_verdicts: u64,
}

/// An address in the documentation ranges 198.51.100.0/24 and 203.0.113.0/24.
pub(crate) fn random_v4(rng: &mut Rng) -> Ipv4Addr {
    let base = if rng.chance(50) {
        [198, 51, 100]
    } else {
        [203, 0, 113]
    };
    Ipv4Addr::new(base[0], base[1], base[2], rng.below(256) as u8)
}

/// An address in 2001:db8:0..3::/64 (documentation range).
pub(crate) fn random_v6(rng: &mut Rng) -> Ipv6Addr {
    Ipv6Addr::new(
        0x2001,
        0xdb8,
        rng.below(4) as u16,
        0,
        0,
        0,
        0,
        rng.below(256) as u16,
    )
}

/// Mostly a few hot ports so that rules and packets meet; never the DHCP
/// client ports, which are always allowed inbound.
pub(crate) fn random_port(rng: &mut Rng) -> u16 {
    let p = if rng.chance(70) {
        [22, 53, 80, 443, 5432, 8080, 8081, 9000][rng.below(8) as usize]
    } else {
        rng.below(65536) as u16
    };
    if matches!(p, 68 | 546) { 69 } else { p }
}

fn pick<T: Copy>(rng: &mut Rng, from: &[T]) -> T {
    from[rng.below(from.len() as u64) as usize]
}

/// A random policy of this shape (all workloads in enforce mode).
pub(crate) fn random_policy(rng: &mut Rng, shape: &PolicyShape<'_>) -> CompiledPolicy {
    let mut named = shape.workloads.to_vec();
    named.push(shape.member);
    let mut p = empty_policy(&named, shape.peers);
    let member_class = pick(rng, shape.member_classes);
    p.workloads = named
        .iter()
        .map(|&(identity, name)| CompiledWorkload {
            identity,
            class: if identity == shape.member.0 {
                member_class
            } else {
                identity
            },
            name: name.into(),
            selector: CgroupSelector::Unit(format!("{name}.service")),
            mode: Mode::Enforce as u8,
        })
        .collect();
    p.rules = (0..RANDOM_RULES)
        .map(|i| RuleRef {
            policy: "random".into(),
            section: Section::AllowIn,
            index: i as usize,
        })
        .collect();
    let peer = |rng: &mut Rng| pick(rng, shape.peers).0;
    let mut v4 = std::collections::BTreeMap::new();
    let mut v6 = std::collections::BTreeMap::new();
    for _ in 0..rng.below(shape.max_prefixes) {
        let len = pick(rng, &[8u32, 16, 24, 25, 26, 28, 30, 32]);
        let a = u32::from(random_v4(rng)) & (u32::MAX << (32 - len));
        v4.insert(
            AddrKey4 {
                prefix_len: len,
                addr: a.to_be_bytes(),
            },
            peer(rng),
        );
        let len6 = pick(rng, &[32u32, 48, 64, 120, 128]);
        let a6 = u128::from(random_v6(rng)) & (u128::MAX << (128 - len6));
        v6.insert(
            AddrKey6 {
                prefix_len: len6,
                addr: a6.to_be_bytes(),
            },
            peer(rng),
        );
    }
    p.prefixes_v4 = v4.into_iter().collect();
    p.prefixes_v6 = v6.into_iter().collect();
    let mut verdicts = std::collections::BTreeMap::new();
    for _ in 0..rng.below(shape.max_verdicts) {
        // Only the classes' representatives have entries.
        let w = pick(rng, shape.workloads).0;
        let d = if rng.chance(50) {
            Direction::Egress as u8
        } else {
            Direction::Ingress as u8
        };
        let proto = pick(
            rng,
            &[
                Protocol::Tcp as u8,
                Protocol::Udp as u8,
                Protocol::Icmp as u8,
            ],
        );
        let r = match rng.below(8) {
            0 => IDENTITY_WORLD,
            1 => IDENTITY_ANY_EXTERNAL,
            2 => IDENTITY_ANY,
            3 => IDENTITY_HOST,
            _ => peer(rng),
        };
        let (port, bits) = if proto == Protocol::Icmp as u8 {
            (0, 16)
        } else {
            let bits = pick(rng, &[0u8, 4, 8, 12, 14, 15, 16, 16, 16]);
            let mask = if bits == 0 {
                0
            } else {
                u16::MAX << (16 - bits)
            };
            (random_port(rng) & mask, bits)
        };
        let action = if rng.chance(30) {
            Action::Deny as u8
        } else {
            Action::Allow as u8
        };
        verdicts.insert(
            VerdictKey::new(w, d, proto, r, port, bits),
            VerdictValue {
                rule: rng.below(u64::from(RANDOM_RULES)) as u32,
                action,
                _pad: [0; 3],
            },
        );
    }
    p.verdicts = verdicts.into_iter().collect();
    p
}
