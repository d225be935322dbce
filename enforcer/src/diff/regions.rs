//! Which entity owns each remote address, in OLD and in NEW.
//!
//! Peers are matched across the two policies by name, but an address can
//! change hands: a new narrower peer carves a hole out of a wider one, a
//! removed peer's addresses fall back to `world`. The address space (IPv4
//! and IPv6) is cut into regions on which both policies' longest-prefix
//! match is constant; each region knows its owner in OLD and in NEW.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use enforcer_common::{
    address::{AddrKey4, AddrKey6},
    identity::{IDENTITY_WORLD, Identity},
};

/// An address family's space as `u128` integers (IPv4 in the low 32 bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn bits(self) -> u32 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }
    fn max(self) -> u128 {
        match self {
            Family::V4 => u128::from(u32::MAX),
            Family::V6 => u128::MAX,
        }
    }
}

/// One inclusive address range of a family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AddrRange {
    pub family: Family,
    pub lo: u128,
    pub hi: u128,
}

impl AddrRange {
    /// The minimal list of CIDR prefixes covering the range, spelled the
    /// usual way (`203.0.113.0/25`, `2001:db8::/32`).
    pub fn cidrs(&self) -> Vec<String> {
        let bits = self.family.bits();
        let mut out = Vec::new();
        let mut lo = self.lo;
        loop {
            // The largest aligned block starting at `lo` that fits.
            let mut size_log = lo.trailing_zeros().min(bits);
            while size_log > 0 && block_end(lo, size_log) > self.hi {
                size_log -= 1;
            }
            out.push(format_prefix(self.family, lo, bits - size_log));
            let end = block_end(lo, size_log);
            if end >= self.hi {
                break;
            }
            lo = end + 1;
        }
        out
    }
}

fn block_end(lo: u128, size_log: u32) -> u128 {
    if size_log >= 128 {
        u128::MAX
    } else {
        lo | ((1u128 << size_log) - 1)
    }
}

fn format_prefix(family: Family, addr: u128, len: u32) -> String {
    match family {
        Family::V4 => format!("{}/{len}", Ipv4Addr::from(addr as u32)),
        Family::V6 => format!("{}/{len}", Ipv6Addr::from(addr)),
    }
}

/// One policy's prefixes as ranges, `(lo, hi, identity)`.
fn ranges_v4(prefixes: &[(AddrKey4, Identity)]) -> Vec<(u128, u128, Identity)> {
    prefixes
        .iter()
        .map(|(key, id)| {
            let (lo, hi) =
                prefix_range(u128::from(u32::from_be_bytes(key.addr)), key.prefix_len, 32);
            (lo, hi, *id)
        })
        .collect()
}

fn ranges_v6(prefixes: &[(AddrKey6, Identity)]) -> Vec<(u128, u128, Identity)> {
    prefixes
        .iter()
        .map(|(key, id)| {
            let (lo, hi) = prefix_range(u128::from_be_bytes(key.addr), key.prefix_len, 128);
            (lo, hi, *id)
        })
        .collect()
}

fn prefix_range(addr: u128, prefix_len: u32, bits: u32) -> (u128, u128) {
    let host_bits = bits - prefix_len.min(bits);
    let lo = if host_bits >= 128 {
        0
    } else {
        addr & !((1u128 << host_bits) - 1)
    };
    (lo, block_end(lo, host_bits))
}

/// Longest-prefix resolution of nested-or-disjoint prefixes into disjoint
/// pieces; addresses outside every prefix are left out (they are `world`).
fn lpm_pieces(mut ranges: Vec<(u128, u128, Identity)>) -> Vec<(u128, u128, Identity)> {
    ranges.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    let mut out: Vec<(u128, u128, Identity)> = Vec::new();
    let mut stack: Vec<(u128, Identity)> = Vec::new();
    // `None` once the cursor has passed the end of the family's space.
    let mut pos: Option<u128> = Some(0);
    let emit =
        |out: &mut Vec<(u128, u128, Identity)>, pos: &mut Option<u128>, hi: u128, id: Identity| {
            if let Some(p) = *pos
                && p <= hi
            {
                match out.last_mut() {
                    Some(last) if last.2 == id && last.1.checked_add(1) == Some(p) => last.1 = hi,
                    _ => out.push((p, hi, id)),
                }
                *pos = hi.checked_add(1);
            }
        };
    for (lo, hi, id) in ranges {
        while let Some(&(top_hi, top_id)) = stack.last() {
            if top_hi >= lo {
                break;
            }
            emit(&mut out, &mut pos, top_hi, top_id);
            stack.pop();
        }
        if let Some(&(_, top_id)) = stack.last()
            && pos.is_some_and(|p| p < lo)
        {
            emit(&mut out, &mut pos, lo - 1, top_id);
        }
        pos = pos.map(|p| p.max(lo));
        stack.push((hi, id));
    }
    while let Some((top_hi, top_id)) = stack.pop() {
        emit(&mut out, &mut pos, top_hi, top_id);
    }
    out
}

/// Cuts a family's space into pieces where both sides' owner is constant,
/// and calls `f(range, old_owner, new_owner)` for each (world included).
fn overlay(
    family: Family,
    old: &[(u128, u128, Identity)],
    new: &[(u128, u128, Identity)],
    mut f: impl FnMut(AddrRange, Identity, Identity),
) {
    let max = family.max();
    let (mut i, mut j) = (0usize, 0usize);
    let mut pos = 0u128;
    loop {
        while i < old.len() && old[i].1 < pos {
            i += 1;
        }
        while j < new.len() && new[j].1 < pos {
            j += 1;
        }
        let mut end = max;
        let o = owner_at(old, i, pos, &mut end);
        let n = owner_at(new, j, pos, &mut end);
        f(
            AddrRange {
                family,
                lo: pos,
                hi: end,
            },
            o,
            n,
        );
        if end >= max {
            break;
        }
        pos = end + 1;
    }
}

fn owner_at(pieces: &[(u128, u128, Identity)], i: usize, pos: u128, end: &mut u128) -> Identity {
    match pieces.get(i) {
        Some(&(lo, hi, id)) if lo <= pos => {
            *end = (*end).min(hi);
            id
        }
        Some(&(lo, _, _)) => {
            *end = (*end).min(lo - 1);
            IDENTITY_WORLD
        }
        None => IDENTITY_WORLD,
    }
}

/// The address regions of an OLD/NEW pair, grouped by (old owner, new
/// owner) identity; ranges sorted (IPv4 first).
pub fn regions(
    old_v4: &[(AddrKey4, Identity)],
    old_v6: &[(AddrKey6, Identity)],
    new_v4: &[(AddrKey4, Identity)],
    new_v6: &[(AddrKey6, Identity)],
) -> BTreeMap<(Identity, Identity), Vec<AddrRange>> {
    let mut out: BTreeMap<(Identity, Identity), Vec<AddrRange>> = BTreeMap::new();
    let mut add = |range: AddrRange, o: Identity, n: Identity| {
        let list = out.entry((o, n)).or_default();
        match list.last_mut() {
            Some(last)
                if last.family == range.family && last.hi.checked_add(1) == Some(range.lo) =>
            {
                last.hi = range.hi;
            }
            _ => list.push(range),
        }
    };
    overlay(
        Family::V4,
        &lpm_pieces(ranges_v4(old_v4)),
        &lpm_pieces(ranges_v4(new_v4)),
        &mut add,
    );
    overlay(
        Family::V6,
        &lpm_pieces(ranges_v6(old_v6)),
        &lpm_pieces(ranges_v6(new_v6)),
        &mut add,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(a: [u8; 4], len: u32) -> AddrKey4 {
        AddrKey4 {
            prefix_len: len,
            addr: a,
        }
    }

    #[test]
    fn narrower_peer_carves_a_hole() {
        let old = [(v4([203, 0, 113, 0], 24), 20)];
        let new = [
            (v4([203, 0, 113, 0], 24), 20),
            (v4([203, 0, 113, 5], 32), 21),
        ];
        let r = regions(&old, &[], &new, &[]);
        let moved = &r[&(20, 21)];
        assert_eq!(moved.len(), 1);
        assert_eq!(moved[0].cidrs(), vec!["203.0.113.5/32"]);
        let kept: Vec<String> = r[&(20, 20)].iter().flat_map(AddrRange::cidrs).collect();
        assert_eq!(
            kept,
            vec![
                "203.0.113.0/30",
                "203.0.113.4/32",
                "203.0.113.6/31",
                "203.0.113.8/29",
                "203.0.113.16/28",
                "203.0.113.32/27",
                "203.0.113.64/26",
                "203.0.113.128/25",
            ]
        );
        // World stays world everywhere else, in both families.
        let world = &r[&(IDENTITY_WORLD, IDENTITY_WORLD)];
        assert!(
            world
                .iter()
                .any(|x| x.family == Family::V6 && x.lo == 0 && x.hi == u128::MAX)
        );
        assert_eq!(r.len(), 3);
    }

    #[test]
    fn removed_peer_falls_back_to_world() {
        let old = [(v4([198, 51, 100, 17], 32), 20)];
        let r = regions(&old, &[], &[], &[]);
        assert_eq!(
            r[&(20, IDENTITY_WORLD)][0].cidrs(),
            vec!["198.51.100.17/32"]
        );
    }

    #[test]
    fn v6_full_space_and_prefixes() {
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        let key = AddrKey6 {
            prefix_len: 32,
            addr: a,
        };
        let r = regions(&[], &[], &[], &[(key, 30)]);
        assert_eq!(r[&(IDENTITY_WORLD, 30)][0].cidrs(), vec!["2001:db8::/32"]);
        let zero = AddrRange {
            family: Family::V6,
            lo: 0,
            hi: u128::MAX,
        };
        assert_eq!(zero.cidrs(), vec!["::/0"]);
        let all4 = AddrRange {
            family: Family::V4,
            lo: 0,
            hi: u128::from(u32::MAX),
        };
        assert_eq!(all4.cidrs(), vec!["0.0.0.0/0"]);
    }
}
