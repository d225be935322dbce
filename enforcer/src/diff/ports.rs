//! Piecewise functions over the 16-bit service port space.
//!
//! Reachability is computed by interval arithmetic over the verdict
//! entries, never by probing 65,536 ports: a [`PortMap`] is a sorted list of
//! disjoint inclusive segments, each carrying a value; ports outside every
//! segment have no value (at a lookup level: "no entry here, fall through").

/// The highest port of a protocol's domain. ICMP echo has a single "port"
/// (0); TCP and UDP have the whole 16-bit space.
pub const PORT_MAX: u16 = u16::MAX;

/// A sparse piecewise function from ports to `T`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortMap<T> {
    /// Sorted, disjoint, inclusive `(lo, hi, value)`; two adjacent segments
    /// never carry equal values (they are coalesced).
    segs: Vec<(u16, u16, T)>,
}

impl<T> Default for PortMap<T> {
    fn default() -> Self {
        PortMap { segs: Vec::new() }
    }
}

impl<T: Clone + PartialEq> PortMap<T> {
    /// The segments, sorted and disjoint.
    pub fn segments(&self) -> &[(u16, u16, T)] {
        &self.segs
    }

    pub fn is_empty(&self) -> bool {
        self.segs.is_empty()
    }

    /// Appends a segment that starts after every existing one, merging it
    /// with the last one when they touch and carry the same value.
    fn push(&mut self, lo: u16, hi: u16, value: T) {
        if let Some(last) = self.segs.last_mut()
            && u32::from(last.1) + 1 == u32::from(lo)
            && last.2 == value
        {
            last.1 = hi;
            return;
        }
        self.segs.push((lo, hi, value));
    }

    /// The fast path of [`Self::from_blocks`]: blocks already in port order
    /// and disjoint (as the compiler writes them) become segments directly.
    /// `None` when they are not, so the caller resolves them in full.
    pub fn from_sorted_blocks(
        blocks: impl ExactSizeIterator<Item = (u16, u32, T)>,
    ) -> Option<Self> {
        let mut out = PortMap {
            segs: Vec::with_capacity(blocks.len()),
        };
        let mut next: u32 = 0;
        for (port, bits, value) in blocks {
            let bits = bits.min(16);
            let span: u32 = 1 << (16 - bits);
            let lo = u32::from(port) & !(span - 1);
            if lo < next {
                return None;
            }
            next = lo + span;
            out.push(lo as u16, (next - 1) as u16, value);
        }
        Some(out)
    }

    /// Resolves prefix-aligned port blocks the way an LPM trie does: where
    /// blocks nest, the longest prefix (the innermost block) wins.
    /// Each block is `(first port, number of fixed leading bits, value)`;
    /// the low bits of the first port beyond `bits` are ignored, as the
    /// kernel ignores them.
    pub fn from_blocks(blocks: impl IntoIterator<Item = (u16, u32, T)>) -> Self {
        // (lo, hi, value) with wider blocks first among equal starts, so an
        // enclosing block is always pushed before the blocks it contains.
        let mut ranges: Vec<(u32, u32, T)> = blocks
            .into_iter()
            .map(|(port, bits, value)| {
                let bits = bits.min(16);
                let span: u32 = 1 << (16 - bits);
                let lo = u32::from(port) & !(span - 1);
                (lo, lo + span - 1, value)
            })
            .collect();
        ranges.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));

        let mut out = PortMap::default();
        let mut stack: Vec<(u32, T)> = Vec::new();
        let mut pos: u32 = 0;
        let emit = |out: &mut PortMap<T>, pos: &mut u32, hi: u32, value: &T| {
            if *pos <= hi {
                out.push(*pos as u16, hi as u16, value.clone());
                *pos = hi + 1;
            }
        };
        for (lo, hi, value) in ranges {
            while let Some((top_hi, top_value)) = stack.last() {
                if *top_hi >= lo {
                    break;
                }
                emit(&mut out, &mut pos, *top_hi, top_value);
                stack.pop();
            }
            if let Some((_, top_value)) = stack.last()
                && pos < lo
            {
                emit(&mut out, &mut pos, lo - 1, top_value);
            }
            pos = pos.max(lo);
            stack.push((hi, value));
        }
        while let Some((top_hi, top_value)) = stack.pop() {
            emit(&mut out, &mut pos, top_hi, &top_value);
        }
        out
    }

    /// The value at one port.
    pub fn get(&self, port: u16) -> Option<&T> {
        let i = self.segs.partition_point(|s| s.1 < port);
        self.segs
            .get(i)
            .filter(|s| s.0 <= port)
            .map(|(_, _, value)| value)
    }
}

/// Walks two maps together over `0..=max` and keeps `f(a, b)` wherever it
/// is `Some`, coalescing equal neighbours. Linear in the number of segments.
pub fn combine<A, B, C, F>(a: &PortMap<A>, b: &PortMap<B>, max: u16, f: F) -> PortMap<C>
where
    A: Clone + PartialEq,
    B: Clone + PartialEq,
    C: Clone + PartialEq,
    F: FnMut(Option<&A>, Option<&B>) -> Option<C>,
{
    let mut out = PortMap::default();
    combine_into(a, b, max, f, &mut out);
    out
}

/// [`combine`] into `out`, reusing its allocation (the diff runs hundreds
/// of thousands of these).
pub fn combine_into<A, B, C, F>(
    a: &PortMap<A>,
    b: &PortMap<B>,
    max: u16,
    mut f: F,
    out: &mut PortMap<C>,
) where
    A: Clone + PartialEq,
    B: Clone + PartialEq,
    C: Clone + PartialEq,
    F: FnMut(Option<&A>, Option<&B>) -> Option<C>,
{
    let (a, b) = (a.segments(), b.segments());
    let max = u32::from(max);
    out.segs.clear();
    let (mut i, mut j) = (0usize, 0usize);
    let mut pos: u32 = 0;
    while pos <= max {
        while i < a.len() && u32::from(a[i].1) < pos {
            i += 1;
        }
        while j < b.len() && u32::from(b[j].1) < pos {
            j += 1;
        }
        let mut end = max;
        let av = value_at(a, i, pos, &mut end);
        let bv = value_at(b, j, pos, &mut end);
        if let Some(c) = f(av, bv) {
            out.push(pos as u16, end as u16, c);
        }
        pos = end + 1;
    }
}

/// The value of segment `i` at `pos` if it covers `pos`, and lowers `end` to
/// the last port before this segment's coverage changes.
fn value_at<'a, T>(segs: &'a [(u16, u16, T)], i: usize, pos: u32, end: &mut u32) -> Option<&'a T> {
    let (lo, hi, value) = segs.get(i)?;
    let (lo, hi) = (u32::from(*lo), u32::from(*hi));
    if lo <= pos {
        *end = (*end).min(hi);
        Some(value)
    } else {
        *end = (*end).min(lo - 1);
        None
    }
}

/// `"any"` for the whole domain, `"443"` for one port, `"8000-8100"` for a
/// range: the contract's spelling.
pub fn format_ports(lo: u16, hi: u16, max: u16) -> String {
    if lo == 0 && hi == max {
        "any".to_owned()
    } else if lo == hi {
        lo.to_string()
    } else {
        format!("{lo}-{hi}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segs<T: Clone + PartialEq>(m: &PortMap<T>) -> Vec<(u16, u16, T)> {
        m.segments().to_vec()
    }

    #[test]
    fn disjoint_blocks_coalesce_into_ranges() {
        // 8000-8100 as its aligned cover.
        let mut blocks = Vec::new();
        let (mut lo, hi) = (8000u32, 8100u32);
        while lo <= hi {
            let mut size = 1u32 << lo.trailing_zeros().min(16);
            while lo + size - 1 > hi {
                size >>= 1;
            }
            blocks.push((lo as u16, 16 - size.trailing_zeros(), 'a'));
            lo += size;
        }
        assert!(blocks.len() > 1);
        let m = PortMap::from_blocks(blocks);
        assert_eq!(segs(&m), vec![(8000, 8100, 'a')]);
    }

    #[test]
    fn longest_prefix_wins_where_blocks_nest() {
        // Whole space 'a', 1024-2047 'b', 1500 'c'.
        let m = PortMap::from_blocks([(0, 0, 'a'), (1024, 6, 'b'), (1500, 16, 'c')]);
        assert_eq!(
            segs(&m),
            vec![
                (0, 1023, 'a'),
                (1024, 1499, 'b'),
                (1500, 1500, 'c'),
                (1501, 2047, 'b'),
                (2048, 65535, 'a'),
            ]
        );
        assert_eq!(m.get(1500), Some(&'c'));
        assert_eq!(m.get(70), Some(&'a'));
    }

    #[test]
    fn sorted_fast_path_agrees_and_refuses_nesting() {
        let blocks = [
            (80, 16, 1u8),
            (81, 16, 1u8),
            (1024, 6, 2u8),
            (65535, 16, 3u8),
        ];
        let fast = PortMap::from_sorted_blocks(blocks.into_iter()).expect("sorted and disjoint");
        assert_eq!(fast, PortMap::from_blocks(blocks));
        assert_eq!(
            segs(&fast),
            vec![(80, 81, 1), (1024, 2047, 2), (65535, 65535, 3)]
        );
        // Nested or out of order: left to the full resolution.
        assert!(PortMap::from_sorted_blocks([(0, 0, 1u8), (443, 16, 2u8)].into_iter()).is_none());
        assert!(PortMap::from_sorted_blocks([(443, 16, 1u8), (80, 16, 2u8)].into_iter()).is_none());
    }

    #[test]
    fn gaps_stay_empty() {
        let m = PortMap::from_blocks([(443, 16, 1u8), (80, 16, 1u8)]);
        assert_eq!(segs(&m), vec![(80, 80, 1), (443, 443, 1)]);
        assert_eq!(m.get(81), None);
    }

    #[test]
    fn last_port_is_reachable() {
        let m = PortMap::from_blocks([(65535, 16, 1u8), (0, 1, 2u8)]);
        assert_eq!(segs(&m), vec![(0, 32767, 2), (65535, 65535, 1)]);
    }

    #[test]
    fn combine_overlays_and_respects_the_domain() {
        let top = PortMap::from_blocks([(443, 16, 't')]);
        let below = PortMap::from_blocks([(0, 0, 'b')]);
        let m = combine(&top, &below, PORT_MAX, |a, b| a.or(b).copied());
        assert_eq!(
            segs(&m),
            vec![(0, 442, 'b'), (443, 443, 't'), (444, 65535, 'b')]
        );
        let icmp = combine(&top, &below, 0, |a, b| a.or(b).copied());
        assert_eq!(segs(&icmp), vec![(0, 0, 'b')]);
    }

    #[test]
    fn port_spelling() {
        assert_eq!(format_ports(0, 65535, PORT_MAX), "any");
        assert_eq!(format_ports(0, 0, 0), "any");
        assert_eq!(format_ports(443, 443, PORT_MAX), "443");
        assert_eq!(format_ports(8000, 8100, PORT_MAX), "8000-8100");
    }
}
