//! Port intervals: the sweep that turns overlapping rule intervals into
//! disjoint decided intervals, and the cover of an interval by aligned
//! prefix blocks.

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
#[cfg(test)]
pub(crate) fn decide(contribs: &[Contribution]) -> Vec<Decided> {
    let mut out = Vec::new();
    decide_into(contribs, &mut Sweep::default(), &mut out);
    out
}

/// Scratch buffers of [`decide_into`], reused across calls.
#[derive(Default)]
pub(crate) struct Sweep {
    events: Vec<(u32, bool, usize)>,
    denies: Vec<u32>,
    allows: Vec<u32>,
}

/// [`decide`] into `out` (cleared first), reusing `sweep`'s buffers.
pub(crate) fn decide_into(contribs: &[Contribution], sweep: &mut Sweep, out: &mut Vec<Decided>) {
    out.clear();
    if let [c] = contribs {
        out.push(Decided {
            low: c.low,
            high: c.high,
            deny: c.deny,
            rule: c.rule,
        });
        return;
    }
    // Events at port positions (u32 so `high + 1` never overflows):
    // (position, is_start, index).
    let Sweep {
        events,
        denies,
        allows,
    } = sweep;
    events.clear();
    denies.clear();
    allows.clear();
    for (i, c) in contribs.iter().enumerate() {
        events.push((u32::from(c.low), true, i));
        events.push((u32::from(c.high) + 1, false, i));
    }
    events.sort_unstable();
    // Multisets of the rules covering the current position. Levels hold a
    // handful of contributions, so plain vectors beat ordered maps here.
    let mut i = 0;
    while i < events.len() {
        let pos = events[i].0;
        while i < events.len() && events[i].0 == pos {
            let (_, start, idx) = events[i];
            let c = contribs[idx];
            let set = if c.deny { &mut *denies } else { &mut *allows };
            if start {
                set.push(c.rule);
            } else if let Some(at) = set.iter().position(|&r| r == c.rule) {
                set.swap_remove(at);
            }
            i += 1;
        }
        let Some(&next) = events.get(i).map(|(p, _, _)| p) else {
            break;
        };
        let decision = match (denies.iter().min(), allows.iter().min()) {
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
}

/// The minimal cover of `[low, high]` by aligned blocks, as
/// (first port, number of fixed leading port bits).
#[cfg(test)]
pub(crate) fn aligned_blocks(low: u16, high: u16) -> Vec<(u16, u8)> {
    let mut out = Vec::new();
    aligned_blocks_into(low, high, &mut out);
    out
}

/// [`aligned_blocks`], appended to `out`.
pub(crate) fn aligned_blocks_into(low: u16, high: u16, out: &mut Vec<(u16, u8)>) {
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
