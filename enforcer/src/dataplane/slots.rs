//! Writing a compiled policy into one policy slot, and the capacity check
//! that runs before anything is written.

use std::net::IpAddr;

use aya::maps::{HashMap, LpmTrie, MapData, lpm_trie::Key};
use enforcer_common::{
    CgroupEntry, IDENTITY_HOST, Identity, MAX_CGROUPS, MAX_PREFIXES_V4, MAX_PREFIXES_V6,
    MAX_VERDICTS, VerdictValue, maps,
};

use super::{
    HostAddrs, ResolvedCgroup,
    error::{DataplaneError, Result, read_err, type_err, write_err},
};
use crate::compile::compiled::CompiledPolicy;

/// The address entries of a slot: the policy's peers plus this host's own
/// addresses as `host` (host routes, so they win over any peer prefix).
/// Address-trie entries of one family.
pub(crate) type AddrEntries<const N: usize> = Vec<(Key<[u8; N]>, Identity)>;

pub(crate) fn address_entries(
    policy: &CompiledPolicy,
    host: &HostAddrs,
) -> (AddrEntries<4>, AddrEntries<16>) {
    let mut v4: Vec<_> = policy
        .prefixes_v4
        .iter()
        .map(|(k, id)| (Key::new(k.prefix_len, k.addr), *id))
        .collect();
    let mut v6: Vec<_> = policy
        .prefixes_v6
        .iter()
        .map(|(k, id)| (Key::new(k.prefix_len, k.addr), *id))
        .collect();
    let host_routes = host
        .addrs
        .iter()
        .map(|a| (*a, if a.is_ipv4() { 32 } else { 128 }))
        .chain(HostAddrs::always());
    for (addr, len) in host_routes {
        match addr {
            IpAddr::V4(a) => v4.push((Key::new(u32::from(len), a.octets()), IDENTITY_HOST)),
            IpAddr::V6(a) => v6.push((Key::new(u32::from(len), a.octets()), IDENTITY_HOST)),
        }
    }
    (v4, v6)
}

/// Rejects a policy that does not fit, before anything is written.
pub(crate) fn check_capacity(
    policy: &CompiledPolicy,
    cgroups: &[ResolvedCgroup],
    host: &HostAddrs,
) -> Result<()> {
    let (v4, v6) = address_entries(policy, host);
    let checks = [
        (maps::CGROUPS[0], cgroups.len(), MAX_CGROUPS),
        (maps::ADDR4[0], v4.len(), MAX_PREFIXES_V4),
        (maps::ADDR6[0], v6.len(), MAX_PREFIXES_V6),
        (maps::VERDICTS[0], policy.verdicts.len(), MAX_VERDICTS),
    ];
    for (map, needed, capacity) in checks {
        if needed > capacity as usize {
            return Err(DataplaneError::CapacityExceeded {
                map,
                needed,
                capacity,
            });
        }
    }
    Ok(())
}

fn map<'a>(ebpf: &'a mut aya::Ebpf, name: &'static str) -> Result<&'a mut aya::maps::Map> {
    ebpf.map_mut(name).ok_or(DataplaneError::MissingMap(name))
}

/// Empties a hash map (keys first collected, since deleting while
/// iterating restarts the walk).
pub(crate) fn clear_hash<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut aya::Ebpf,
    name: &'static str,
) -> Result<()> {
    let mut m: HashMap<&mut MapData, K, V> =
        HashMap::try_from(map(ebpf, name)?).map_err(type_err(name))?;
    let keys: Vec<K> = m.keys().collect::<Result<_, _>>().map_err(read_err(name))?;
    for k in keys {
        m.remove(&k).map_err(write_err(name))?;
    }
    Ok(())
}

fn clear_trie<K: aya::Pod, V: aya::Pod>(ebpf: &mut aya::Ebpf, name: &'static str) -> Result<()> {
    let mut m: LpmTrie<&mut MapData, K, V> =
        LpmTrie::try_from(map(ebpf, name)?).map_err(type_err(name))?;
    let keys: Vec<Key<K>> = m.keys().collect::<Result<_, _>>().map_err(read_err(name))?;
    for k in keys {
        m.remove(&k).map_err(write_err(name))?;
    }
    Ok(())
}

fn fill_trie<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut aya::Ebpf,
    name: &'static str,
    entries: impl IntoIterator<Item = (Key<K>, V)>,
) -> Result<()> {
    let mut m: LpmTrie<&mut MapData, K, V> =
        LpmTrie::try_from(map(ebpf, name)?).map_err(type_err(name))?;
    for (k, v) in entries {
        m.insert(&k, v, 0).map_err(write_err(name))?;
    }
    Ok(())
}

/// Writes the cgroup entry of one cgroup into a slot.
pub(crate) fn put_cgroup(ebpf: &mut aya::Ebpf, slot: usize, c: &ResolvedCgroup) -> Result<()> {
    let name = maps::CGROUPS[slot];
    let mut m: HashMap<&mut MapData, u64, CgroupEntry> =
        HashMap::try_from(map(ebpf, name)?).map_err(type_err(name))?;
    let entry = CgroupEntry {
        workload: c.workload,
        class: c.class,
        mode: c.mode,
        _pad: [0; 3],
    };
    m.insert(c.cgroup_id, entry, 0).map_err(write_err(name))
}

/// Removes one cgroup from a slot; absent is fine.
pub(crate) fn delete_cgroup(ebpf: &mut aya::Ebpf, slot: usize, cgroup_id: u64) -> Result<()> {
    let name = maps::CGROUPS[slot];
    let mut m: HashMap<&mut MapData, u64, CgroupEntry> =
        HashMap::try_from(map(ebpf, name)?).map_err(type_err(name))?;
    match m.remove(&cgroup_id) {
        Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(e) => Err(write_err(name)(e)),
    }
}

/// Replaces the whole content of `slot` with the policy.
pub(crate) fn write_slot(
    ebpf: &mut aya::Ebpf,
    slot: usize,
    policy: &CompiledPolicy,
    cgroups: &[ResolvedCgroup],
    host: &HostAddrs,
) -> Result<()> {
    clear_hash::<u64, CgroupEntry>(ebpf, maps::CGROUPS[slot])?;
    clear_trie::<[u8; 4], Identity>(ebpf, maps::ADDR4[slot])?;
    clear_trie::<[u8; 16], Identity>(ebpf, maps::ADDR6[slot])?;
    clear_trie::<[u8; 12], VerdictValue>(ebpf, maps::VERDICTS[slot])?;
    for c in cgroups {
        put_cgroup(ebpf, slot, c)?;
    }
    let (v4, v6) = address_entries(policy, host);
    fill_trie(ebpf, maps::ADDR4[slot], v4)?;
    fill_trie(ebpf, maps::ADDR6[slot], v6)?;
    fill_trie(
        ebpf,
        maps::VERDICTS[slot],
        policy
            .verdicts
            .iter()
            .map(|(k, v)| (Key::new(k.prefix_len, k.data), *v)),
    )?;
    Ok(())
}
