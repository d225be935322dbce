//! Writing a compiled policy into one policy slot, and the capacity check
//! that runs before anything is written.
//!
//! A slot is rewritten in place: [`SlotContent`] is what a slot holds, as
//! sorted vectors of the maps' keys and values; when the data plane knows
//! what the slot holds, [`update_slot`] deletes the keys that are gone and
//! writes only the entries that are new or changed (consecutive policies
//! differ little, and each map update costs microseconds). When it does not
//! know, [`replace_slot`] empties the maps and fills them.

use std::net::IpAddr;

use aya::maps::{HashMap, LpmTrie, MapData, lpm_trie::Key};
use enforcer_common::{
    address::{AddrKey4, AddrKey6},
    capacity::{MAX_CGROUPS, MAX_PREFIXES_V4, MAX_PREFIXES_V6, MAX_VERDICTS},
    identity::{IDENTITY_HOST, Identity},
    map_names,
    verdict::{VerdictKey, VerdictValue},
    workload::CgroupEntry,
};

use super::{
    HostAddrs, ResolvedCgroup,
    error::{Result, ensure_capacity, read_err, write_err},
    handles,
};
use crate::compile::CompiledPolicy;

/// Everything one policy slot holds, each map's entries sorted by key
/// (unique keys). About 24 bytes per verdict entry: 1.4 MiB for the 59,731
/// entries of the benchmark's size 10,000.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SlotContent {
    pub cgroups: Vec<(u64, CgroupEntry)>,
    pub addr4: Vec<(AddrKey4, Identity)>,
    pub addr6: Vec<(AddrKey6, Identity)>,
    pub verdicts: Vec<(VerdictKey, VerdictValue)>,
}

/// Masks trie keys to their prefix (see [`masked`]), then [`canonical`].
fn canonical_trie<K: TrieKey + Ord, V>(entries: &mut Vec<(K, V)>) {
    for entry in entries.iter_mut() {
        entry.0 = entry.0.masked();
    }
    canonical(entries);
}

/// Sorts by key; of entries with the same key the last one stays, as when
/// they are written into a map one after the other.
fn canonical<K: Ord, V>(entries: &mut Vec<(K, V)>) {
    if entries.windows(2).all(|w| w[0].0 < w[1].0) {
        return;
    }
    entries.reverse();
    // Stable: of equal keys, the last written now comes first and stays.
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    entries.dedup_by(|later, kept| later.0 == kept.0);
}

impl SlotContent {
    /// What a slot holds once `policy` is written with these cgroups and
    /// this host's addresses: the policy's peers plus this host's own
    /// addresses as `host` (host routes, so they win over any peer prefix).
    pub fn of(policy: &CompiledPolicy, cgroups: &[ResolvedCgroup], host: &HostAddrs) -> Self {
        let mut addr4 = policy.prefixes_v4.clone();
        let mut addr6 = policy.prefixes_v6.clone();
        push_host_routes(&mut addr4, &mut addr6, host);
        let mut content = SlotContent {
            cgroups: cgroups
                .iter()
                .map(|c| (c.cgroup_id, cgroup_entry(c)))
                .collect(),
            addr4,
            addr6,
            verdicts: policy.verdicts.clone(),
        };
        canonical(&mut content.cgroups);
        canonical_trie(&mut content.addr4);
        canonical_trie(&mut content.addr6);
        canonical_trie(&mut content.verdicts);
        content
    }

    /// The same content without this host's addresses: every `host`
    /// entry of the address tries (only host routes carry that identity).
    /// A peer prefix that a host route replaced at the same key is not in
    /// the slot, and so not in the result either.
    pub fn without_host_routes(&self) -> SlotContent {
        SlotContent {
            cgroups: self.cgroups.clone(),
            addr4: self
                .addr4
                .iter()
                .filter(|e| e.1 != IDENTITY_HOST)
                .copied()
                .collect(),
            addr6: self
                .addr6
                .iter()
                .filter(|e| e.1 != IDENTITY_HOST)
                .copied()
                .collect(),
            verdicts: self.verdicts.clone(),
        }
    }

    /// The host addresses written into the address tries as host routes:
    /// the full-length `host` entries but the unspecified addresses (the
    /// other routes of [`HostAddrs::always`] are also addresses of `lo`,
    /// which [`HostAddrs::from_system`] lists).
    pub fn host_addrs(&self) -> HostAddrs {
        let v4 = self
            .addr4
            .iter()
            .filter(|(k, id)| *id == IDENTITY_HOST && k.prefix_len == 32)
            .map(|(k, _)| IpAddr::from(k.addr));
        let v6 = self
            .addr6
            .iter()
            .filter(|(k, id)| *id == IDENTITY_HOST && k.prefix_len == 128)
            .map(|(k, _)| IpAddr::from(k.addr));
        let mut addrs: Vec<IpAddr> = v4.chain(v6).filter(|a| !a.is_unspecified()).collect();
        addrs.sort();
        HostAddrs { addrs }
    }

    /// This content with `host`'s addresses (and [`HostAddrs::always`])
    /// as host routes, which win over a peer prefix at the same key.
    pub fn with_host_routes(mut self, host: &HostAddrs) -> SlotContent {
        push_host_routes(&mut self.addr4, &mut self.addr6, host);
        canonical_trie(&mut self.addr4);
        canonical_trie(&mut self.addr6);
        self
    }

    /// Sets (or adds) one cgroup's entry.
    pub(crate) fn put_cgroup(&mut self, c: &ResolvedCgroup) {
        let entry = (c.cgroup_id, cgroup_entry(c));
        match self.cgroups.binary_search_by_key(&c.cgroup_id, |e| e.0) {
            Ok(i) => self.cgroups[i] = entry,
            Err(i) => self.cgroups.insert(i, entry),
        }
    }

    /// Removes one cgroup's entry, if present.
    pub(crate) fn remove_cgroup(&mut self, cgroup_id: u64) {
        if let Ok(i) = self.cgroups.binary_search_by_key(&cgroup_id, |e| e.0) {
            self.cgroups.remove(i);
        }
    }
}

/// Appends this host's addresses and [`HostAddrs::always`] as `host`
/// routes; the caller puts the entries in canonical order, where these,
/// written last, win over a peer prefix at the same key.
fn push_host_routes(
    addr4: &mut Vec<(AddrKey4, Identity)>,
    addr6: &mut Vec<(AddrKey6, Identity)>,
    host: &HostAddrs,
) {
    let host_routes = host
        .addrs
        .iter()
        .map(|a| (*a, if a.is_ipv4() { 32 } else { 128 }))
        .chain(HostAddrs::always());
    for (addr, len) in host_routes {
        let prefix_len = u32::from(len);
        match addr {
            IpAddr::V4(a) => addr4.push((
                AddrKey4 {
                    prefix_len,
                    addr: a.octets(),
                },
                IDENTITY_HOST,
            )),
            IpAddr::V6(a) => addr6.push((
                AddrKey6 {
                    prefix_len,
                    addr: a.octets(),
                },
                IDENTITY_HOST,
            )),
        }
    }
}

fn cgroup_entry(c: &ResolvedCgroup) -> CgroupEntry {
    c.entry()
}

/// How to turn one map's content into another's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan<K, V> {
    /// Keys to remove: present before, absent after.
    pub delete: Vec<K>,
    /// Entries to write: absent before, or with another value.
    pub put: Vec<(K, V)>,
}

/// The changes from `old` to `new` (both sorted by unique keys), by one
/// merge of the two.
pub fn plan<K: Ord + Copy, V: PartialEq + Copy>(old: &[(K, V)], new: &[(K, V)]) -> Plan<K, V> {
    use std::cmp::Ordering;
    let mut plan = Plan {
        delete: Vec::new(),
        put: Vec::new(),
    };
    let (mut i, mut j) = (0, 0);
    while i < old.len() && j < new.len() {
        match old[i].0.cmp(&new[j].0) {
            Ordering::Less => {
                plan.delete.push(old[i].0);
                i += 1;
            }
            Ordering::Greater => {
                plan.put.push(new[j]);
                j += 1;
            }
            Ordering::Equal => {
                if old[i].1 != new[j].1 {
                    plan.put.push(new[j]);
                }
                i += 1;
                j += 1;
            }
        }
    }
    plan.delete.extend(old[i..].iter().map(|e| e.0));
    plan.put.extend_from_slice(&new[j..]);
    plan
}

/// Rejects a policy that does not fit, before anything is written.
pub(crate) fn check_capacity(content: &SlotContent) -> Result<()> {
    ensure_capacity(&[
        (map_names::CGROUPS[0], content.cgroups.len(), MAX_CGROUPS),
        (map_names::ADDR4[0], content.addr4.len(), MAX_PREFIXES_V4),
        (map_names::ADDR6[0], content.addr6.len(), MAX_PREFIXES_V6),
        (map_names::VERDICTS[0], content.verdicts.len(), MAX_VERDICTS),
    ])
}

/// The LPM-trie key of a stored key type: the same bytes.
trait TrieKey: Copy {
    type Data: aya::Pod;
    fn trie_key(&self) -> Key<Self::Data>;
    fn from_trie_key(key: &Key<Self::Data>) -> Self;
    /// The same key with the bits past its prefix cleared.
    fn masked(self) -> Self;
}

/// `data` with every bit past the first `prefix_len` cleared. The kernel's
/// LPM trie compares only the prefix: keys that differ past it are one
/// entry, so the record of a slot must not hold them as two.
fn masked<const N: usize>(mut data: [u8; N], prefix_len: u32) -> [u8; N] {
    let bits = prefix_len as usize;
    for (i, byte) in data.iter_mut().enumerate() {
        let kept = bits.saturating_sub(i * 8).min(8);
        *byte &= !(0xffu16 >> kept) as u8;
    }
    data
}

/// The three trie keys differ only in the name and width of their data.
macro_rules! trie_key {
    ($key:ident, $data:ident, $bytes:literal) => {
        impl TrieKey for $key {
            type Data = [u8; $bytes];
            fn trie_key(&self) -> Key<[u8; $bytes]> {
                Key::new(self.prefix_len, self.$data)
            }
            fn from_trie_key(key: &Key<[u8; $bytes]>) -> Self {
                $key {
                    prefix_len: key.prefix_len(),
                    $data: key.data(),
                }
            }
            fn masked(self) -> Self {
                $key {
                    $data: masked(self.$data, self.prefix_len),
                    ..self
                }
            }
        }
    };
}

trie_key!(AddrKey4, addr, 4);
trie_key!(AddrKey6, addr, 16);
trie_key!(VerdictKey, data, 12);

/// Writes a trie's changes: removals first, then the new and changed
/// entries. A key already gone is fine (the outcome is the same).
fn update_trie<K: TrieKey, V: aya::Pod>(
    ebpf: &mut aya::Ebpf,
    name: &'static str,
    plan: &Plan<K, V>,
) -> Result<()> {
    let mut m: LpmTrie<&mut MapData, K::Data, V> = handles::typed_mut(ebpf, name)?;
    for k in &plan.delete {
        handles::removed(m.remove(&k.trie_key()), name)?;
    }
    for (k, v) in &plan.put {
        m.insert(&k.trie_key(), *v, 0).map_err(write_err(name))?;
    }
    Ok(())
}

/// Writes the cgroup entry of one cgroup into a slot.
pub(crate) fn put_cgroup(ebpf: &mut aya::Ebpf, slot: usize, c: &ResolvedCgroup) -> Result<()> {
    let name = map_names::CGROUPS[slot];
    let mut m: HashMap<&mut MapData, u64, CgroupEntry> = handles::typed_mut(ebpf, name)?;
    m.insert(c.cgroup_id, cgroup_entry(c), 0)
        .map_err(write_err(name))
}

/// Removes one cgroup from a slot; absent is fine.
pub(crate) fn delete_cgroup(ebpf: &mut aya::Ebpf, slot: usize, cgroup_id: u64) -> Result<()> {
    let name = map_names::CGROUPS[slot];
    let mut m: HashMap<&mut MapData, u64, CgroupEntry> = handles::typed_mut(ebpf, name)?;
    handles::removed(m.remove(&cgroup_id), name)
}

/// Turns the address and verdict tries of `slot`, known to hold `old`,
/// into `new`: only the differences are written. The cgroup map is written
/// apart (`registration::write_cgroups`), against what it really holds:
/// the cgroup tracer adds to it.
pub(crate) fn update_slot(
    ebpf: &mut aya::Ebpf,
    slot: usize,
    old: &SlotContent,
    new: &SlotContent,
) -> Result<()> {
    update_trie(ebpf, map_names::ADDR4[slot], &plan(&old.addr4, &new.addr4))?;
    update_trie(ebpf, map_names::ADDR6[slot], &plan(&old.addr6, &new.addr6))?;
    update_trie(
        ebpf,
        map_names::VERDICTS[slot],
        &plan(&old.verdicts, &new.verdicts),
    )
}

/// Replaces whatever the tries of `slot` hold with `new`: each emptied,
/// then filled (the cgroup map as in [`update_slot`]).
pub(crate) fn replace_slot(ebpf: &mut aya::Ebpf, slot: usize, new: &SlotContent) -> Result<()> {
    handles::clear_trie::<[u8; 4], Identity>(ebpf, map_names::ADDR4[slot])?;
    handles::clear_trie::<[u8; 16], Identity>(ebpf, map_names::ADDR6[slot])?;
    handles::clear_trie::<[u8; 12], VerdictValue>(ebpf, map_names::VERDICTS[slot])?;
    update_slot(ebpf, slot, &SlotContent::default(), new)
}

fn read_trie<K: TrieKey + Ord, V: aya::Pod>(
    ebpf: &aya::Ebpf,
    name: &'static str,
) -> Result<Vec<(K, V)>> {
    let m: LpmTrie<&MapData, K::Data, V> = handles::typed(ebpf, name)?;
    let mut out = Vec::new();
    for item in &m {
        let (k, v) = item.map_err(read_err(name))?;
        out.push((K::from_trie_key(&k).masked(), v));
    }
    out.sort_unstable_by_key(|e| e.0);
    Ok(out)
}

/// Reads back what `slot` holds in the kernel.
pub(crate) fn read_slot(ebpf: &aya::Ebpf, slot: usize) -> Result<SlotContent> {
    let name = map_names::CGROUPS[slot];
    let m: HashMap<&MapData, u64, CgroupEntry> = handles::typed(ebpf, name)?;
    let mut cgroups: Vec<(u64, CgroupEntry)> =
        m.iter().collect::<Result<_, _>>().map_err(read_err(name))?;
    cgroups.sort_unstable_by_key(|e| e.0);
    Ok(SlotContent {
        cgroups,
        addr4: read_trie(ebpf, map_names::ADDR4[slot])?,
        addr6: read_trie(ebpf, map_names::ADDR6[slot])?,
        verdicts: read_trie(ebpf, map_names::VERDICTS[slot])?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_differ_past_their_prefix_are_one_entry() {
        assert_eq!(masked([0xff; 4], 0), [0; 4]);
        assert_eq!(masked([0xff; 4], 12), [0xff, 0xf0, 0, 0]);
        assert_eq!(masked([0xff; 4], 32), [0xff; 4]);
        // 2001:db8:1:0:5::/64 is 2001:db8:1::/64 to the trie.
        let key = |last: u8| AddrKey6 {
            prefix_len: 64,
            addr: [
                0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, last, 0, 0, 0, 0, 0, 0,
            ],
        };
        let mut entries = vec![(key(5), 7), (key(0), 8)];
        canonical_trie(&mut entries);
        assert_eq!(entries, vec![(key(0), 8)]);
    }

    #[test]
    fn the_plan_deletes_what_is_gone_and_puts_what_is_new_or_changed() {
        let old = [(1, 'a'), (2, 'b'), (4, 'd'), (6, 'f'), (9, 'i')];
        let new = [(0, 'z'), (2, 'b'), (4, 'D'), (5, 'e'), (9, 'i'), (10, 'j')];
        let p = plan(&old, &new);
        assert_eq!(p.delete, vec![1, 6]);
        assert_eq!(p.put, vec![(0, 'z'), (4, 'D'), (5, 'e'), (10, 'j')]);
    }

    #[test]
    fn plans_from_and_to_nothing_are_fills_and_clears() {
        let some = [(1, 'a'), (2, 'b')];
        let fill = plan(&[], &some);
        assert!(fill.delete.is_empty());
        assert_eq!(fill.put, some.to_vec());
        let clear = plan(&some, &[]);
        assert_eq!(clear.delete, vec![1, 2]);
        assert!(clear.put.is_empty());
        let same = plan(&some, &some);
        assert!(same.delete.is_empty() && same.put.is_empty());
    }

    #[test]
    fn applying_a_plan_gives_the_new_content() {
        // A small deterministic sweep of random contents.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..200 {
            let mut content = |n: u64| -> Vec<(u8, u8)> {
                let mut v: Vec<(u8, u8)> = (0..next() % n)
                    .map(|_| ((next() % 40) as u8, (next() % 3) as u8))
                    .collect();
                canonical(&mut v);
                v
            };
            let (old, new) = (content(30), content(30));
            let p = plan(&old, &new);
            let mut map: std::collections::BTreeMap<u8, u8> = old.iter().copied().collect();
            for k in &p.delete {
                assert!(map.remove(k).is_some(), "deletes only present keys");
            }
            for (k, v) in &p.put {
                assert_ne!(map.insert(*k, *v), Some(*v), "writes only changes");
            }
            assert_eq!(map.into_iter().collect::<Vec<_>>(), new);
        }
    }

    #[test]
    fn canonical_order_keeps_the_last_of_equal_keys() {
        let mut v = vec![(3, 'a'), (1, 'b'), (3, 'c'), (2, 'd'), (1, 'e')];
        canonical(&mut v);
        assert_eq!(v, vec![(1, 'e'), (2, 'd'), (3, 'c')]);
    }

    #[test]
    fn host_routes_come_off_a_slot_and_go_back_with_other_addresses() {
        let mut p = crate::diff::testkit::PolicyBuilder::new();
        p.workload("web");
        p.peer("lab", &["198.51.100.0/24", "2001:db8::/32"]);
        let policy = p.build();
        let host = |addrs: &[&str]| {
            let mut addrs: Vec<IpAddr> = addrs.iter().map(|a| a.parse().unwrap()).collect();
            addrs.sort();
            HostAddrs { addrs }
        };
        let before = host(&["127.0.0.1", "::1", "198.51.100.7", "2001:db8::5"]);
        let c = ResolvedCgroup {
            cgroup_id: 7,
            workload: 16,
            class: 16,
            mode: 0,
        };
        let content = SlotContent::of(&policy, &[c], &before);
        assert_eq!(content.host_addrs(), before);
        let base = content.without_host_routes();
        assert!(base.addr4.iter().all(|e| e.1 != IDENTITY_HOST));
        assert!(base.addr6.iter().all(|e| e.1 != IDENTITY_HOST));
        assert_eq!(base.cgroups, content.cgroups);
        assert_eq!(base.verdicts, content.verdicts);
        assert_eq!(base.clone().with_host_routes(&before), content);
        // An address gone, another new: what a fresh write would hold.
        let after = host(&["127.0.0.1", "::1", "198.51.100.9"]);
        assert_eq!(
            base.with_host_routes(&after),
            SlotContent::of(&policy, &[c], &after)
        );
    }

    #[test]
    fn content_of_a_policy_adds_host_routes_over_peers_and_tracks_cgroups() {
        use std::net::Ipv4Addr;
        let mut p = crate::diff::testkit::PolicyBuilder::new();
        p.workload("web");
        p.peer("lab", &["198.51.100.7/32", "2001:db8::/32"]);
        let policy = p.build();
        let host = HostAddrs {
            addrs: vec![IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7))],
        };
        let c = ResolvedCgroup {
            cgroup_id: 7,
            workload: 16,
            class: 16,
            mode: 0,
        };
        let mut content = SlotContent::of(&policy, &[c], &host);
        let seven = AddrKey4 {
            prefix_len: 32,
            addr: [198, 51, 100, 7],
        };
        let at = content.addr4.binary_search_by_key(&seven, |e| e.0).unwrap();
        assert_eq!(content.addr4[at].1, IDENTITY_HOST, "the host route wins");
        assert!(content.addr4.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(
            content
                .addr6
                .iter()
                .any(|(k, id)| k.prefix_len == 32 && *id == 17)
        );
        content.put_cgroup(&ResolvedCgroup {
            cgroup_id: 3,
            mode: 1,
            ..c
        });
        content.put_cgroup(&ResolvedCgroup { mode: 2, ..c });
        assert_eq!(
            content
                .cgroups
                .iter()
                .map(|(id, e)| (*id, e.mode))
                .collect::<Vec<_>>(),
            vec![(3, 1), (7, 2)]
        );
        content.remove_cgroup(3);
        content.remove_cgroup(99);
        assert_eq!(content.cgroups.len(), 1);
    }
}
