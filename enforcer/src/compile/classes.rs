//! Local verdict classes: workloads whose verdict rows are identical (same
//! direction, protocol, remote, port block and value for every entry)
//! share one set of rows, stored under the class's representative, the
//! lowest identity among them. Policies select workloads by label, so the
//! workloads of one app usually have the same rows: at the bench's size
//! 10,000 this stores 59,731 entries instead of 298,655.

use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher, Hash, Hasher};

use enforcer_common::{
    identity::Identity,
    verdict::{VerdictKey, VerdictValue},
};
use rustc_hash::FxHashMap;

use super::compiled::CompiledWorkload;

/// The part of a verdict row that does not name the workload.
fn row(entry: &(VerdictKey, VerdictValue)) -> (u32, &[u8], &VerdictValue) {
    (entry.0.prefix_len, &entry.0.data[4..], &entry.1)
}

fn same_rows(a: &[(VerdictKey, VerdictValue)], b: &[(VerdictKey, VerdictValue)]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| row(x) == row(y))
}

/// Sets every workload's `class` and keeps only the rows of the classes'
/// representatives. `workloads` is sorted by identity; `verdicts` may be in
/// any order and comes back sorted by key. Deterministic: the classes
/// depend only on the set of rows, never on their order.
pub(super) fn assign(
    workloads: &mut [CompiledWorkload],
    verdicts: &mut Vec<(VerdictKey, VerdictValue)>,
) {
    // Group the rows by workload, each group in one canonical order (keys
    // are unique, so the order is total).
    verdicts.sort_unstable_by_key(|(k, _)| (k.data, k.prefix_len));
    // A workload's rows hash to a bucket of candidate representatives,
    // compared in full. Workloads come in ascending identity order, so the
    // first of a class is its lowest identity.
    let hasher = BuildHasherDefault::<DefaultHasher>::default();
    let mut buckets: FxHashMap<u64, Vec<(Identity, std::ops::Range<usize>)>> = FxHashMap::default();
    let mut class_of: FxHashMap<Identity, Identity> = FxHashMap::default();
    let mut start = 0;
    for group in verdicts.chunk_by(|a, b| a.0.workload() == b.0.workload()) {
        let range = start..start + group.len();
        start = range.end;
        let workload = group[0].0.workload();
        let mut h = hasher.build_hasher();
        for entry in group {
            row(entry).hash(&mut h);
        }
        let digest = h.finish();
        let candidates = buckets.entry(digest).or_default();
        let class = match candidates
            .iter()
            .find(|(_, r)| same_rows(&verdicts[r.clone()], group))
        {
            Some((rep, _)) => *rep,
            None => {
                candidates.push((workload, range));
                workload
            }
        };
        class_of.insert(workload, class);
    }
    // Workloads without rows share the class of the lowest of them (no
    // rows either: default deny everywhere).
    let mut empty_class = None;
    for w in workloads.iter_mut() {
        w.class = match class_of.get(&w.identity) {
            Some(&c) => c,
            None => *empty_class.get_or_insert(w.identity),
        };
    }
    verdicts.retain(|(k, _)| {
        let w = k.workload();
        class_of.get(&w).is_none_or(|&c| c == w)
    });
    verdicts.sort_unstable_by_key(|(k, _)| *k);
}

#[cfg(test)]
mod tests {
    use enforcer_common::{
        protocol::Protocol,
        verdict::{Action, Direction},
    };

    use super::*;
    use crate::policy::CgroupSelector;

    fn workloads(ids: &[Identity]) -> Vec<CompiledWorkload> {
        ids.iter()
            .map(|&identity| CompiledWorkload {
                identity,
                class: identity,
                name: format!("w{identity}"),
                selector: CgroupSelector::Unit(format!("w{identity}.service")),
                mode: 0,
            })
            .collect()
    }

    fn value(rule: u32, action: u8) -> VerdictValue {
        VerdictValue {
            rule,
            action,
            _pad: [0; 3],
        }
    }

    /// The rows of a web-like workload (`rule` varies the values).
    fn rows(w: Identity, rule: u32) -> Vec<(VerdictKey, VerdictValue)> {
        vec![
            (
                VerdictKey::new(
                    w,
                    Direction::Ingress as u8,
                    Protocol::Tcp as u8,
                    40,
                    443,
                    16,
                ),
                value(rule, Action::Allow as u8),
            ),
            (
                VerdictKey::new(
                    w,
                    Direction::Ingress as u8,
                    Protocol::Tcp as u8,
                    41,
                    1024,
                    6,
                ),
                value(rule + 1, Action::Deny as u8),
            ),
            (
                VerdictKey::new(w, Direction::Egress as u8, Protocol::Udp as u8, 42, 53, 16),
                value(rule, Action::Allow as u8),
            ),
        ]
    }

    fn classes(w: &[CompiledWorkload]) -> Vec<(Identity, Identity)> {
        w.iter().map(|w| (w.identity, w.class)).collect()
    }

    #[test]
    fn identical_rows_share_the_lowest_identity() {
        let mut w = workloads(&[16, 17, 18, 19]);
        let mut v = [rows(18, 0), rows(16, 0), rows(17, 5), rows(19, 0)].concat();
        assign(&mut w, &mut v);
        assert_eq!(classes(&w), vec![(16, 16), (17, 17), (18, 16), (19, 16)]);
        // Only the representatives' rows are left, sorted by key.
        let mut expected = [rows(16, 0), rows(17, 5)].concat();
        expected.sort_unstable_by_key(|(k, _)| *k);
        assert_eq!(v, expected);
    }

    #[test]
    fn a_different_value_port_block_or_missing_row_is_another_class() {
        let mut w = workloads(&[16, 17, 18, 19]);
        let mut other_action = rows(17, 0);
        other_action[0].1.action = Action::Deny as u8;
        let mut other_block = rows(18, 0);
        other_block[1].0 = VerdictKey::new(
            18,
            Direction::Ingress as u8,
            Protocol::Tcp as u8,
            41,
            1024,
            7,
        );
        let mut fewer = rows(19, 0);
        fewer.pop();
        let mut v = [rows(16, 0), other_action, other_block, fewer].concat();
        let before = v.len();
        assign(&mut w, &mut v);
        assert_eq!(classes(&w), vec![(16, 16), (17, 17), (18, 18), (19, 19)]);
        assert_eq!(v.len(), before);
    }

    #[test]
    fn workloads_without_rows_share_one_class() {
        let mut w = workloads(&[16, 17, 18, 19]);
        let mut v = rows(17, 0);
        assign(&mut w, &mut v);
        assert_eq!(classes(&w), vec![(16, 16), (17, 17), (18, 16), (19, 16)]);
        assert_eq!(v.len(), 3);
    }

    #[test]
    fn classes_do_not_depend_on_the_order_of_the_rows() {
        let input = [
            rows(20, 3),
            rows(16, 0),
            rows(18, 0),
            rows(17, 3),
            rows(19, 0),
        ]
        .concat();
        let mut reference: Option<(Vec<(Identity, Identity)>, Vec<_>)> = None;
        // Rotations and the reverse of the input.
        for turn in 0..input.len() + 1 {
            let mut v = input.clone();
            if turn == input.len() {
                v.reverse();
            } else {
                v.rotate_left(turn);
            }
            let mut w = workloads(&[16, 17, 18, 19, 20]);
            assign(&mut w, &mut v);
            let got = (classes(&w), v);
            match &reference {
                None => reference = Some(got),
                Some(r) => assert_eq!(&got, r, "rotation {turn}"),
            }
        }
        let (c, v) = reference.unwrap();
        assert_eq!(c, vec![(16, 16), (17, 17), (18, 16), (19, 16), (20, 17)]);
        assert_eq!(v.len(), 6);
    }
}
