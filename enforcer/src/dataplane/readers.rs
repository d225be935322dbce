//! What the kernel records as packets pass: tracked flows (in `FLOWS` and
//! on connected sockets), the verdict cache, counters and events.

use std::{collections::BTreeMap, os::fd::BorrowedFd};

use aya::maps::{Array, HashMap, MapData, SkStorage};
use enforcer_common::{
    cached_verdict::{CACHED_VERDICT_SLOTS, CachedVerdict},
    flow::{FlowKey, FlowValue},
    identity::Identity,
    map_names,
};

use super::{
    CounterReader, Dataplane, EventReader, GlobalCounters, counters,
    error::{DataplaneError, Result, read_err, write_err},
    handles,
};

impl Dataplane {
    /// Every tracked connection.
    pub fn flows(&self) -> Result<Vec<(FlowKey, FlowValue)>> {
        let name = map_names::FLOWS;
        let m: HashMap<&MapData, FlowKey, FlowValue> = handles::typed(&self.ebpf, name)?;
        m.iter().collect::<Result<_, _>>().map_err(read_err(name))
    }

    /// The tracked connection with this key, if any.
    pub fn flow(&self, key: &FlowKey) -> Result<Option<FlowValue>> {
        let name = map_names::FLOWS;
        let m: HashMap<&MapData, FlowKey, FlowValue> = handles::typed(&self.ebpf, name)?;
        handles::found(m.get(key, 0), name)
    }

    /// The flow the kernel keeps on a connected TCP socket of this process
    /// (`SOCKET_FLOWS`), if it has one: a connection that `connect()`
    /// opened to an allowed remote destination usually has none (the
    /// verdict cache recognises its packets).
    pub fn socket_flow(&self, socket: BorrowedFd<'_>) -> Result<Option<FlowValue>> {
        let name = map_names::SOCKET_FLOWS;
        let m: SkStorage<&MapData, FlowValue> = handles::typed(&self.ebpf, name)?;
        handles::found(m.get(&socket, 0), name)
    }

    /// Forgets every tracked connection (tests and benchmarks).
    pub fn clear_flows(&mut self) -> Result<()> {
        handles::clear_hash::<FlowKey, FlowValue>(&mut self.ebpf, map_names::FLOWS)
    }

    /// Empties the verdict cache (tests): each connection it recognised is
    /// judged again at its next packet, and keeps its flow on its socket.
    pub fn clear_cached_verdicts(&mut self) -> Result<()> {
        let name = map_names::CACHED_VERDICTS;
        let mut m = handles::typed_mut::<Array<_, CachedVerdict>>(&mut self.ebpf, name)?;
        for index in 0..CACHED_VERDICT_SLOTS {
            m.set(index, CachedVerdict::NEVER_WRITTEN, 0)
                .map_err(write_err(name))?;
        }
        Ok(())
    }

    /// Takes the events ring buffer (once).
    pub fn take_events(&mut self) -> Result<EventReader> {
        let map = self
            .ebpf
            .take_map(map_names::EVENTS)
            .ok_or(DataplaneError::EventsAlreadyTaken)?;
        EventReader::new(map)
    }

    /// Packets per (workload, action), summed over CPUs.
    pub fn counters(&self) -> Result<BTreeMap<(Identity, u8), u64>> {
        counters::read_counters(
            handles::map(&self.ebpf, map_names::COUNTERS)?,
            handles::map(&self.ebpf, map_names::WORKLOAD_COUNTERS)?,
        )
    }

    /// The global counters, summed over CPUs.
    pub fn global_counters(&self) -> Result<GlobalCounters> {
        counters::read_global_counters(handles::map(&self.ebpf, map_names::GLOBAL_COUNTERS)?)
    }

    /// Handles of the counter maps of their own, to read counters without
    /// this value (and without the lock a daemon holds on it).
    pub fn counter_reader(&self) -> Result<CounterReader> {
        CounterReader::duplicate(
            handles::map(&self.ebpf, map_names::COUNTERS)?,
            handles::map(&self.ebpf, map_names::WORKLOAD_COUNTERS)?,
            handles::map(&self.ebpf, map_names::GLOBAL_COUNTERS)?,
        )
    }
}
