//! Every map the programs use, with accessors that pick the active policy
//! slot. The names and types are the ABI in `enforcer-common`.

use aya_ebpf::{
    macros::map,
    maps::{
        Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf, lpm_trie::Key,
    },
};
use enforcer_common::{
    BoundPort, COUNTED_IDENTITIES, COUNTER_ACTIONS, CgroupEntry, Config, CounterKey,
    EVENTS_RING_BYTES, FlowKey, FlowValue, GLOBAL_COUNTERS as GLOBAL_COUNTER_SLOTS, IDENTITY_WORLD,
    Identity, MAX_BOUND_PORTS, MAX_CGROUPS, MAX_COUNTERS, MAX_FAILSAFE_PORTS, MAX_FLOWS,
    MAX_PREFIXES_V4, MAX_PREFIXES_V6, MAX_VERDICTS, PortKey, VerdictKey, VerdictValue,
    WORKLOAD_COUNTER_SLOTS,
};

#[map]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

#[map]
static CGROUPS_0: HashMap<u64, CgroupEntry> = HashMap::with_max_entries(MAX_CGROUPS, 0);
#[map]
static CGROUPS_1: HashMap<u64, CgroupEntry> = HashMap::with_max_entries(MAX_CGROUPS, 0);

#[map]
static ADDR4_0: LpmTrie<[u8; 4], Identity> = LpmTrie::with_max_entries(MAX_PREFIXES_V4, 0);
#[map]
static ADDR4_1: LpmTrie<[u8; 4], Identity> = LpmTrie::with_max_entries(MAX_PREFIXES_V4, 0);
#[map]
static ADDR6_0: LpmTrie<[u8; 16], Identity> = LpmTrie::with_max_entries(MAX_PREFIXES_V6, 0);
#[map]
static ADDR6_1: LpmTrie<[u8; 16], Identity> = LpmTrie::with_max_entries(MAX_PREFIXES_V6, 0);

#[map]
static VERDICTS_0: LpmTrie<[u8; 12], VerdictValue> = LpmTrie::with_max_entries(MAX_VERDICTS, 0);
#[map]
static VERDICTS_1: LpmTrie<[u8; 12], VerdictValue> = LpmTrie::with_max_entries(MAX_VERDICTS, 0);

#[map]
pub static FLOWS: LruHashMap<FlowKey, FlowValue> = LruHashMap::with_max_entries(MAX_FLOWS, 0);

#[map]
pub static BOUND_PORTS: HashMap<PortKey, BoundPort> = HashMap::with_max_entries(MAX_BOUND_PORTS, 0);

#[map]
pub static BOUND_SOCKETS: HashMap<u64, PortKey> = HashMap::with_max_entries(MAX_BOUND_PORTS, 0);

#[map]
static FAILSAFE: HashMap<PortKey, u8> = HashMap::with_max_entries(MAX_FAILSAFE_PORTS, 0);

#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);

#[map]
static COUNTERS: PerCpuHashMap<CounterKey, u64> = PerCpuHashMap::with_max_entries(MAX_COUNTERS, 0);

#[map]
static WORKLOAD_COUNTERS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(WORKLOAD_COUNTER_SLOTS, 0);

#[map]
static GLOBAL_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(GLOBAL_COUNTER_SLOTS, 0);

/// The settings, copied once per program run so that one packet is judged
/// wholly under one policy slot and generation.
#[inline(always)]
pub fn config() -> Option<Config> {
    CONFIG.get(0).copied()
}

#[inline(always)]
pub fn cgroup_entry(slot: u32, cgroup_id: u64) -> Option<CgroupEntry> {
    // SAFETY: the values are plain integers; a concurrent update can at
    // worst give a stale entry, which the generation check repairs.
    unsafe {
        if slot == 0 {
            CGROUPS_0.get(cgroup_id).copied()
        } else {
            CGROUPS_1.get(cgroup_id).copied()
        }
    }
}

/// The identity owning a remote address by longest prefix, `world` when
/// no prefix covers it. `family` 4 reads the first 4 bytes.
#[inline(always)]
pub fn address_identity(slot: u32, family: u8, addr: &[u8; 16]) -> Identity {
    let found = if family == 4 {
        let key = Key::new(32, [addr[0], addr[1], addr[2], addr[3]]);
        if slot == 0 {
            ADDR4_0.get(&key).copied()
        } else {
            ADDR4_1.get(&key).copied()
        }
    } else {
        let key = Key::new(128, *addr);
        if slot == 0 {
            ADDR6_0.get(&key).copied()
        } else {
            ADDR6_1.get(&key).copied()
        }
    };
    found.unwrap_or(IDENTITY_WORLD)
}

#[inline(always)]
pub fn verdict(slot: u32, key: &VerdictKey) -> Option<VerdictValue> {
    let key = Key::new(key.prefix_len, key.data);
    if slot == 0 {
        VERDICTS_0.get(&key).copied()
    } else {
        VERDICTS_1.get(&key).copied()
    }
}

#[inline(always)]
pub fn is_failsafe(protocol: u8, port: u16) -> bool {
    let key = PortKey {
        protocol,
        _pad: 0,
        port,
    };
    // SAFETY: the value is a plain byte.
    unsafe { FAILSAFE.get(key).is_some() }
}

#[inline(always)]
pub fn bound_port(protocol: u8, port: u16) -> Option<BoundPort> {
    let key = PortKey {
        protocol,
        _pad: 0,
        port,
    };
    // SAFETY: the value is plain integers.
    unsafe { BOUND_PORTS.get(key).copied() }
}

/// Adds one to a global counter of this CPU.
#[inline(always)]
pub fn bump_global(index: u32) {
    if let Some(p) = GLOBAL_COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot: no other writer while this program runs.
        unsafe { *p += 1 };
    }
}

/// Adds one packet to the (workload, action) counter of this CPU.
#[inline(always)]
pub fn bump_counter(workload: Identity, action: u8) {
    // The usual case (host and the first workloads) is an array slot: no
    // hashing on the per-packet path.
    if workload < COUNTED_IDENTITIES && u32::from(action) < COUNTER_ACTIONS {
        if let Some(p) =
            WORKLOAD_COUNTERS.get_ptr_mut(workload * COUNTER_ACTIONS + u32::from(action))
        {
            // SAFETY: per-CPU slot: no other writer while this program runs.
            unsafe { *p += 1 };
        }
        return;
    }
    let key = CounterKey {
        workload,
        action,
        _pad: [0; 3],
    };
    match COUNTERS.get_ptr_mut(key) {
        // SAFETY: per-CPU value: no other writer while this program runs.
        Some(p) => unsafe { *p += 1 },
        None => {
            // Full map: the packet goes uncounted rather than judged
            // differently.
            let _ = COUNTERS.insert(key, 1, 0);
        }
    }
}
