//! Reading the verdict counters: per workload and action, and the global
//! ones. A [`CounterReader`] holds its own handles (duplicated descriptors)
//! of the three counter maps, so `status` and metrics read them without
//! the [`Dataplane`](super::Dataplane), and without the daemon's lock on
//! it: thousands of lookups never hold up a policy change.

use std::collections::BTreeMap;
use std::os::fd::AsFd as _;

use aya::maps::{Map, MapData, MapError, PerCpuArray, PerCpuHashMap};
use enforcer_common::{
    counters::{
        COUNTED_IDENTITIES, COUNTER_ACTIONS, CounterKey, GLOBAL_COUNTER_CACHED_VERDICTS,
        GLOBAL_COUNTER_DROPPED, GLOBAL_COUNTER_EVENTS_LOST, GLOBAL_COUNTER_NEW_FLOWS,
        GLOBAL_COUNTER_PACKETS, WORKLOAD_COUNTER_SLOTS,
    },
    identity::Identity,
    map_names,
};

use super::error::{DataplaneError, Result, read_err, type_err};

/// Totals over every CPU of the global counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GlobalCounters {
    pub packets: u64,
    pub new_flows: u64,
    pub dropped: u64,
    pub events_lost: u64,
    /// Connections and datagrams that `connect4|6` or `sendmsg4|6` allowed
    /// from their per-CPU cache of recent verdicts, without judging them.
    pub cached_verdicts: u64,
    /// Cgroups the tracer registered at their creation.
    pub cgroups_registered: u64,
    /// Cgroups the tracer left out: their workload was at its quota in
    /// every slot that matched them.
    pub registrations_refused: u64,
    /// Cgroups whose automaton states did not fit the kernel's tables.
    pub match_overflows: u64,
}

/// Packets per (workload, action), summed over CPUs, from
/// [`map_names::COUNTERS`] and [`map_names::WORKLOAD_COUNTERS`].
pub(super) fn read_counters(hashed: &Map, indexed: &Map) -> Result<BTreeMap<(Identity, u8), u64>> {
    let name = map_names::COUNTERS;
    let m: PerCpuHashMap<&MapData, CounterKey, u64> =
        PerCpuHashMap::try_from(hashed).map_err(type_err(name))?;
    let mut out = BTreeMap::new();
    for item in &m {
        let (k, per_cpu) = item.map_err(read_err(name))?;
        out.insert((k.workload, k.action), per_cpu.iter().sum());
    }
    let name = map_names::WORKLOAD_COUNTERS;
    let a: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(indexed).map_err(type_err(name))?;
    for index in 0..WORKLOAD_COUNTER_SLOTS {
        let packets: u64 = a.get(&index, 0).map_err(read_err(name))?.iter().sum();
        if packets != 0 {
            *out.entry((index / COUNTER_ACTIONS, (index % COUNTER_ACTIONS) as u8))
                .or_default() += packets;
        }
    }
    Ok(out)
}

/// The global counters ([`map_names::GLOBAL_COUNTERS`]), summed over CPUs.
pub(super) fn read_global_counters(global: &Map) -> Result<GlobalCounters> {
    let name = map_names::GLOBAL_COUNTERS;
    let m: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(global).map_err(type_err(name))?;
    let sum = |i: u32| -> Result<u64> { Ok(m.get(&i, 0).map_err(read_err(name))?.iter().sum()) };
    Ok(GlobalCounters {
        packets: sum(GLOBAL_COUNTER_PACKETS)?,
        new_flows: sum(GLOBAL_COUNTER_NEW_FLOWS)?,
        dropped: sum(GLOBAL_COUNTER_DROPPED)?,
        events_lost: sum(GLOBAL_COUNTER_EVENTS_LOST)?,
        cached_verdicts: sum(GLOBAL_COUNTER_CACHED_VERDICTS)?,
        cgroups_registered: sum(enforcer_common::counters::GLOBAL_COUNTER_CGROUPS_REGISTERED)?,
        registrations_refused: sum(
            enforcer_common::counters::GLOBAL_COUNTER_REGISTRATIONS_REFUSED,
        )?,
        match_overflows: sum(enforcer_common::counters::GLOBAL_COUNTER_MATCH_OVERFLOWS)?,
    })
}

/// Read-only handles of the counter maps, independent of the
/// [`Dataplane`](super::Dataplane) they came from (see
/// [`Dataplane::counter_reader`](super::Dataplane::counter_reader)).
#[derive(Debug)]
pub struct CounterReader {
    hashed: Map,
    indexed: Map,
    global: Map,
}

impl CounterReader {
    /// New handles of the same maps: each descriptor is duplicated.
    pub(super) fn duplicate(hashed: &Map, indexed: &Map, global: &Map) -> Result<Self> {
        let dup = |name: &'static str, map: &Map| -> Result<Map> {
            let data: &MapData = match map {
                Map::PerCpuHashMap(data) | Map::PerCpuArray(data) => data,
                _ => return Err(DataplaneError::MissingMap(name)),
            };
            let fd = data
                .fd()
                .as_fd()
                .try_clone_to_owned()
                .map_err(|source| DataplaneError::UnableToDuplicateMap { name, source })?;
            MapData::from_fd(fd)
                .and_then(Map::from_map_data)
                .map_err(read_err(name))
        };
        Ok(CounterReader {
            hashed: dup(map_names::COUNTERS, hashed)?,
            indexed: dup(map_names::WORKLOAD_COUNTERS, indexed)?,
            global: dup(map_names::GLOBAL_COUNTERS, global)?,
        })
    }

    /// Packets of one (workload, action), summed over CPUs, read where
    /// the kernel counts them (`bump_counter`): an array slot for the
    /// first [`COUNTED_IDENTITIES`] identities, the hash map above. One
    /// lookup, where [`Dataplane::counters`](super::Dataplane::counters)
    /// reads every slot.
    pub fn counter(&self, workload: Identity, action: u8) -> Result<u64> {
        if workload < COUNTED_IDENTITIES && u32::from(action) < COUNTER_ACTIONS {
            let name = map_names::WORKLOAD_COUNTERS;
            let a: PerCpuArray<&MapData, u64> =
                PerCpuArray::try_from(&self.indexed).map_err(type_err(name))?;
            let index = workload * COUNTER_ACTIONS + u32::from(action);
            return Ok(a.get(&index, 0).map_err(read_err(name))?.iter().sum());
        }
        let name = map_names::COUNTERS;
        let m: PerCpuHashMap<&MapData, CounterKey, u64> =
            PerCpuHashMap::try_from(&self.hashed).map_err(type_err(name))?;
        let key = CounterKey {
            workload,
            action,
            _pad: [0; 3],
        };
        match m.get(&key, 0) {
            Ok(per_cpu) => Ok(per_cpu.iter().sum()),
            Err(MapError::KeyNotFound) => Ok(0),
            Err(e) => Err(read_err(name)(e)),
        }
    }

    /// The global counters, summed over CPUs.
    pub fn global_counters(&self) -> Result<GlobalCounters> {
        read_global_counters(&self.global)
    }
}
