//! Port intervals: the sweep that turns overlapping rule intervals into
//! disjoint decided intervals, and the cover of an interval by aligned
//! prefix blocks.

use std::collections::BTreeMap;

/// One rule's contribution to a (workload, direction, protocol, remote)
/// level: an inclusive port interval, whether it denies, and the rule's
/// index in the sorted rule table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Contribution {
    pub low: u16,
    pub high: u16,
    pub deny: bool,
    pub rule: u32,
}

/// A disjoint interval and its decision: deny wins over allow; among the
/// rules deciding the same way, the smallest rule index is reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Decided {
    pub low: u16,
    pub high: u16,
    pub deny: bool,
    pub rule: u32,
}

/// Sweeps the contributions (in any order) into sorted, disjoint, maximal
/// intervals. Ports that no contribution covers are absent.
pub(crate) fn decide(contribs: &[Contribution]) -> Vec<Decided> {
    // Events at port positions (u32 so `high + 1` never overflows):
    // (position, is_start, index).
    let mut events: Vec<(u32, bool, usize)> = Vec::with_capacity(contribs.len() * 2);
    for (i, c) in contribs.iter().enumerate() {
        events.push((u32::from(c.low), true, i));
        events.push((u32::from(c.high) + 1, false, i));
    }
    events.sort_unstable();
    // Multisets of the rules covering the current position.
    let mut denies: BTreeMap<u32, u32> = BTreeMap::new();
    let mut allows: BTreeMap<u32, u32> = BTreeMap::new();
    let mut out: Vec<Decided> = Vec::new();
    let mut i = 0;
    while i < events.len() {
        let pos = events[i].0;
        while i < events.len() && events[i].0 == pos {
            let (_, start, idx) = events[i];
            let c = contribs[idx];
            let set = if c.deny { &mut denies } else { &mut allows };
            if start {
                *set.entry(c.rule).or_insert(0) += 1;
            } else if let Some(n) = set.get_mut(&c.rule) {
                *n -= 1;
                if *n == 0 {
                    set.remove(&c.rule);
                }
            }
            i += 1;
        }
        let Some(&next) = events.get(i).map(|(p, _, _)| p) else {
            break;
        };
        let decision = match (denies.keys().next(), allows.keys().next()) {
            (Some(&r), _) => Some((true, r)),
            (None, Some(&r)) => Some((false, r)),
            (None, None) => None,
        };
        let Some((deny, rule)) = decision else {
            continue;
        };
        // Positions are < 65536 here: `next` is at most 65536, and the
        // segment is [pos, next - 1].
        let (low, high) = (pos as u16, (next - 1) as u16);
        match out.last_mut() {
            Some(last)
                if last.deny == deny && last.rule == rule && u32::from(last.high) + 1 == pos =>
            {
                last.high = high;
            }
            _ => out.push(Decided {
                low,
                high,
                deny,
                rule,
            }),
        }
    }
    out
}

/// The minimal cover of `[low, high]` by aligned blocks, as
/// (first port, number of fixed leading port bits).
pub(crate) fn aligned_blocks(low: u16, high: u16) -> Vec<(u16, u8)> {
    let mut out = Vec::new();
    let mut lo = u32::from(low);
    let hi = u32::from(high);
    while lo <= hi {
        // The largest block starting at `lo` that is aligned and fits.
        let mut size: u32 = if lo == 0 {
            1 << 16
        } else {
            1 << lo.trailing_zeros().min(16)
        };
        while lo + size - 1 > hi {
            size >>= 1;
        }
        let bits = 16 - size.trailing_zeros();
        out.push((lo as u16, bits as u8));
        lo += size;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(low: u16, high: u16, deny: bool, rule: u32) -> Contribution {
        Contribution {
            low,
            high,
            deny,
            rule,
        }
    }

    #[test]
    fn deny_wins_and_smallest_rule_is_reported() {
        let d = decide(&[
            c(1, 100, false, 5),
            c(50, 60, true, 7),
            c(1, 10, false, 2),
            c(55, 200, true, 3),
        ]);
        let got: Vec<_> = d.iter().map(|d| (d.low, d.high, d.deny, d.rule)).collect();
        assert_eq!(
            got,
            vec![
                (1, 10, false, 2),
                (11, 49, false, 5),
                (50, 54, true, 7),
                (55, 200, true, 3)
            ]
        );
    }

    #[test]
    fn adjacent_equal_decisions_merge_and_gaps_stay() {
        let d = decide(&[
            c(1, 5, false, 1),
            c(6, 9, false, 1),
            c(20, 20, false, 1),
            c(0, 65535, false, 4),
        ]);
        let got: Vec<_> = d.iter().map(|d| (d.low, d.high, d.rule)).collect();
        assert_eq!(
            got,
            vec![
                (0, 0, 4),
                (1, 9, 1),
                (10, 19, 4),
                (20, 20, 1),
                (21, 65535, 4)
            ]
        );
        let gap = decide(&[c(1, 5, false, 1), c(7, 9, false, 1)]);
        assert_eq!(gap.len(), 2);
    }

    #[test]
    fn blocks_cover_exactly_and_minimally() {
        assert_eq!(aligned_blocks(0, 65535), vec![(0, 0)]);
        assert_eq!(aligned_blocks(443, 443), vec![(443, 16)]);
        assert_eq!(aligned_blocks(8000, 8003), vec![(8000, 14)]);
        assert_eq!(aligned_blocks(1, 65535).len(), 16);
        assert_eq!(aligned_blocks(1, 65534).len(), 30);
        for (lo, hi) in [(1u16, 1000u16), (80, 80), (1024, 65535), (3, 17)] {
            let blocks = aligned_blocks(lo, hi);
            let mut next = u32::from(lo);
            for (start, bits) in blocks {
                assert_eq!(u32::from(start), next);
                let size = 1u32 << (16 - bits);
                assert_eq!(u32::from(start) % size, 0);
                next += size;
            }
            assert_eq!(next, u32::from(hi) + 1);
        }
    }
}
