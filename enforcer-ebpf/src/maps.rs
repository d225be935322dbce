//! Every map the programs use, with accessors that pick the active policy
//! slot. The names and types are the ABI in `enforcer-common`.

use core::{ffi::c_void, ptr};

use aya_ebpf::{
    bindings::{
        BPF_F_MMAPABLE, BPF_F_NO_PREALLOC, BPF_SK_STORAGE_GET_F_CREATE, bpf_map_type, bpf_sock,
    },
    helpers::generated::{bpf_sk_storage_delete, bpf_sk_storage_get},
    macros::map,
    maps::{
        Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf, lpm_trie::Key,
    },
};
use enforcer_common::{
    cached_verdict::{CACHED_VERDICT_SLOTS, CachedVerdict},
    capacity::{
        EVENTS_RING_BYTES, MAX_BOUND_PORTS, MAX_CGROUPS, MAX_COUNTERS, MAX_FAILSAFE_PORTS,
        MAX_FLOWS, MAX_PREFIXES_V4, MAX_PREFIXES_V6, MAX_VERDICTS,
    },
    cgroup_match::{
        CgroupMatch, ExactKey, GlobRule, MAX_COUNTED_WORKLOADS, MAX_MATCH_EXACT, MAX_MATCH_GLOBS,
        MAX_MATCH_STATES, MatchState, NAME_WORDS, REACHED_PER_STEP, Registration,
        STATES_PER_CGROUP,
    },
    config::{Config, POLICY_SLOTS, SlotPolicy},
    counters::{
        COUNTED_IDENTITIES, COUNTER_ACTIONS, CounterKey, GLOBAL_COUNTERS as GLOBAL_COUNTER_SLOTS,
        WORKLOAD_COUNTER_SLOTS,
    },
    flow::{FlowKey, FlowValue},
    identity::{IDENTITY_WORLD, Identity},
    ports::{BoundPort, BoundPortKey, PortKey, TCP_BOUND_PORT_WORDS, tcp_bound_port_bit},
    verdict::{VerdictKey, VerdictValue},
    workload::CgroupEntry,
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

/// Which policy each slot holds (see `SlotPolicy`): written by the daemon,
/// read by the next one after a restart; no program reads it.
#[map]
static SLOT_POLICIES: Array<SlotPolicy> = Array::with_max_entries(POLICY_SLOTS, 0);

#[map]
pub static FLOWS: LruHashMap<FlowKey, FlowValue> = LruHashMap::with_max_entries(MAX_FLOWS, 0);

/// The flows of connected TCP sockets whose packets were judged, stored on
/// the socket itself: the kernel frees them with it, and a lookup follows
/// the socket's own pointer instead of hashing a 4-tuple into a table
/// shared by every connection. A connection that `connect()` opened to an
/// allowed remote destination usually has none: the verdict cache
/// recognises its packets (see `skb/flow_store.rs`), which spares each connection an
/// allocation.
#[unsafe(link_section = ".maps")]
#[unsafe(export_name = "SOCKET_FLOWS")]
pub static SOCKET_FLOWS: SocketStorage<FlowValue> = SocketStorage::new();

#[map]
pub static BOUND_PORTS: HashMap<BoundPortKey, BoundPort> =
    HashMap::with_max_entries(MAX_BOUND_PORTS, 0);

/// A bit per TCP port, set while `BOUND_PORTS` holds it (see
/// [`tcp_port_bound`]). Memory-mappable, so that the daemon's seeding sets
/// and clears bits atomically beside the programs.
#[map]
static TCP_BOUND_PORT_BITS: Array<u64> =
    Array::with_max_entries(TCP_BOUND_PORT_WORDS, BPF_F_MMAPABLE);

/// The port a socket bound, stored on the socket: `sock_release`, which
/// cannot read a socket's port, finds it here, and a socket that never
/// bound one (every client) costs it one pointer test instead of a hash
/// lookup.
#[unsafe(link_section = ".maps")]
#[unsafe(export_name = "SOCKET_BINDS")]
pub static SOCKET_BINDS: SocketStorage<BoundPortKey> = SocketStorage::new();

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

/// Recent verdicts of `connect4|6` and `sendmsg4|6` that allowed a remote
/// destination, direct-mapped by [`CachedVerdict::slot`]. Shared by every
/// CPU: a connection's replies are often judged on another CPU than the
/// one that connected. Written only on a miss, so the usual slot is read
/// by every CPU and written by none; the seal makes a slot written by two
/// CPUs at once a miss.
#[map]
static CACHED_VERDICTS: Array<CachedVerdict> = Array::with_max_entries(CACHED_VERDICT_SLOTS, 0);

// The cgroup tracer's maps (see `registration.rs`). The `CGROUPS_*` maps
// are preallocated hash maps, which tracing programs may write.

#[map]
pub static REGISTRATION: Array<Registration> = Array::with_max_entries(1, 0);
#[map]
pub static CGROUP_MATCH: HashMap<u64, CgroupMatch> = HashMap::with_max_entries(MAX_CGROUPS, 0);
#[map]
static MATCH_STATES: Array<MatchState> = Array::with_max_entries(2 * MAX_MATCH_STATES, 0);
#[map]
static MATCH_EXACT: HashMap<ExactKey, u32> = HashMap::with_max_entries(2 * MAX_MATCH_EXACT, 0);
#[map]
static MATCH_GLOBS: Array<GlobRule> = Array::with_max_entries(2 * MAX_MATCH_GLOBS, 0);
// Memory-mappable: the daemon sets the counts it knows without a system
// call per workload.
#[map]
static REGISTERED_CGROUPS_0: Array<u32> =
    Array::with_max_entries(MAX_COUNTED_WORKLOADS, BPF_F_MMAPABLE);
#[map]
static REGISTERED_CGROUPS_1: Array<u32> =
    Array::with_max_entries(MAX_COUNTED_WORKLOADS, BPF_F_MMAPABLE);
#[map]
pub static DELEGATED_MATCHES: Array<u32> = Array::with_max_entries(1, 0);
#[map]
pub static MATCH_SCRATCH: PerCpuArray<MatchScratch> = PerCpuArray::with_max_entries(1, 0);

/// The tracer's per-CPU scratch space: the new cgroup's name and the state
/// of its loops. In a map value rather than on the stack: the verifier does
/// not track a map value's contents, so each loop callback is checked once
/// instead of once per combination of values found so far.
#[repr(C)]
pub struct MatchScratch {
    /// The new cgroup's name, little-endian words.
    pub name: [u64; NAME_WORDS],
    pub walk: Walk,
}

/// One slot's step from a parent's states to its new child's.
#[repr(C)]
pub struct Walk {
    /// The child's states found so far.
    pub states: [u16; STATES_PER_CGROUP],
    pub count: u8,
    /// Non-zero when more states were found than fit.
    pub overflow: u8,
    /// Whether the child is delegated.
    pub delegated: u8,
    pub parent_delegated: u8,
    pub slot: u8,
    /// The accepting workload with the lowest identity (`IDENTITY_NONE`
    /// for none).
    pub accept: CgroupEntry,
    pub parent_states: [u16; STATES_PER_CGROUP],
    pub hash: u64,
    /// The name's length in bytes.
    pub len: u32,
    /// The first glob rule of the parent state being followed.
    pub glob_first: u32,
    /// The glob rule being matched.
    pub glob_rule: u32,
    /// The states the child's name leads to, in the order found, before
    /// they are sorted into `states` and `accept`.
    pub reached: [u16; REACHED_PER_STEP],
    pub reached_count: u32,
    /// The glob positions reached so far by the name's bytes.
    pub positions: u64,
}

/// A `BPF_MAP_TYPE_SK_STORAGE` map definition, in the BTF form (`.maps`
/// section) the loader reads: such a map needs the BTF ids of its key and
/// value, which the legacy definitions cannot carry. aya-ebpf's own
/// `SkStorage` only takes a `sock_addr` context; this one takes any socket
/// pointer the verifier knows as a full socket.
#[repr(C)]
pub struct SocketStorage<T> {
    // The field names and pointer types are the BTF map definition format;
    // the pointers are never read.
    r#type: *const [i32; bpf_map_type::BPF_MAP_TYPE_SK_STORAGE as usize],
    key: *const i32,
    value: *const T,
    max_entries: *const [i32; 0],
    map_flags: *const [i32; BPF_F_NO_PREALLOC as usize],
}

// SAFETY: a placeholder the loader replaces with a map reference; nothing
// in it is ever dereferenced by the program.
unsafe impl<T> Sync for SocketStorage<T> {}

impl<T> SocketStorage<T> {
    pub const fn new() -> Self {
        Self {
            r#type: ptr::null(),
            key: ptr::null(),
            value: ptr::null(),
            max_entries: ptr::null(),
            map_flags: ptr::null(),
        }
    }

    #[inline(always)]
    fn as_ptr(&self) -> *mut c_void {
        ptr::from_ref(self).cast_mut().cast()
    }

    /// The value stored on `sk`, if any.
    ///
    /// # Safety
    /// `sk` is a full socket pointer the verifier accepts (from
    /// `bpf_sk_fullsock`, or a `sock_addr` context's socket).
    #[inline(always)]
    pub unsafe fn get(&self, sk: *mut bpf_sock) -> Option<*mut T> {
        // SAFETY: per the caller.
        let p = unsafe { bpf_sk_storage_get(self.as_ptr(), sk.cast(), ptr::null_mut(), 0) };
        (!p.is_null()).then_some(p.cast())
    }

    /// Stores `value` on `sk`, replacing what was there. `None` when the
    /// kernel could not allocate the storage.
    ///
    /// # Safety
    /// As [`Self::get`].
    #[inline(always)]
    pub unsafe fn set(&self, sk: *mut bpf_sock, value: &T) -> Option<*mut T>
    where
        T: Copy,
    {
        let mut initial = *value;
        // SAFETY: per the caller; `initial` is a value-sized stack buffer.
        let p = unsafe {
            bpf_sk_storage_get(
                self.as_ptr(),
                sk.cast(),
                ptr::from_mut(&mut initial).cast(),
                u64::from(BPF_SK_STORAGE_GET_F_CREATE),
            )
        };
        if p.is_null() {
            return None;
        }
        let p: *mut T = p.cast();
        // An existing value is returned as it was: overwrite it.
        // SAFETY: a value-sized pointer into the socket's storage.
        unsafe { *p = *value };
        Some(p)
    }

    /// Forgets the value stored on `sk`, if any.
    ///
    /// # Safety
    /// As [`Self::get`].
    #[inline(always)]
    pub unsafe fn delete(&self, sk: *mut bpf_sock) {
        // SAFETY: per the caller. Nothing stored is not an error here.
        let _ = unsafe { bpf_sk_storage_delete(self.as_ptr(), sk.cast()) };
    }
}

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

/// The socket bound to `port` in the network namespace `netns`, if the
/// programs saw its `bind()` (or the daemon seeded it).
#[inline(always)]
pub fn bound_port(netns: u64, protocol: u8, port: u16) -> Option<BoundPort> {
    let key = BoundPortKey {
        netns,
        protocol,
        _pad: 0,
        port,
        _pad2: 0,
    };
    // SAFETY: the value is plain integers.
    unsafe { BOUND_PORTS.get(key).copied() }
}

/// Whether a socket of this host bound this TCP port (a listener's port, or
/// one a client bound itself): 8 KiB of bits that stay in the CPU cache,
/// where a hash lookup of each new connection's port would not.
#[inline(always)]
pub fn tcp_port_bound(port: u16) -> bool {
    let (word, bit) = tcp_bound_port_bit(port);
    TCP_BOUND_PORT_BITS.get(word).is_some_and(|w| w & bit != 0)
}

/// Sets or clears a TCP port's bit, atomically: other ports share the word.
#[inline(always)]
pub fn mark_tcp_port(port: u16, bound: bool) {
    let (word, bit) = tcp_bound_port_bit(port);
    let Some(p) = TCP_BOUND_PORT_BITS.get_ptr_mut(word) else {
        return;
    };
    // The BPF target has no atomic read-modify-write in `core`; the
    // instruction set has (`BPF_ATOMIC` with `BPF_OR` / `BPF_AND`).
    // SAFETY: an aligned word of the map's value, which outlives the
    // program run; every writer changes it atomically.
    unsafe {
        if bound {
            core::arch::asm!(
                "lock *(u64 *)({p} + 0) |= {v}",
                p = in(reg) p,
                v = in(reg) bit,
                options(nostack, preserves_flags),
            );
        } else {
            core::arch::asm!(
                "lock *(u64 *)({p} + 0) &= {v}",
                p = in(reg) p,
                v = in(reg) !bit,
                options(nostack, preserves_flags),
            );
        }
    }
}

/// What cache slot `index` holds, copied once: the caller
/// checks the copy with [`CachedVerdict::matches`], whose seal tells a
/// whole write from a mixed one. A missing slot reads as never written.
#[inline(always)]
pub fn cached_verdict(index: u32) -> CachedVerdict {
    match CACHED_VERDICTS.get_ptr(index) {
        // SAFETY: plain integers; one volatile copy, so that the fields
        // checked are the fields used (another CPU may be writing them).
        Some(p) => unsafe { ptr::read_volatile(p) },
        None => CachedVerdict::NEVER_WRITTEN,
    }
}

/// Seals a verdict and stores it in its cache slot.
#[inline(always)]
pub fn cache_verdict(index: u32, verdict: &mut CachedVerdict) {
    verdict.seal();
    if let Some(p) = CACHED_VERDICTS.get_ptr_mut(index) {
        // SAFETY: plain integers; a write that races another one (on another
        // CPU, or by a program that preempted this one) leaves a slot whose
        // seal does not match: a miss.
        unsafe { ptr::write_volatile(p, *verdict) };
    }
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

/// A slot's automaton state `id`.
#[inline(always)]
pub fn match_state(slot: u32, id: u16) -> Option<MatchState> {
    MATCH_STATES
        .get((slot & 1) * MAX_MATCH_STATES + u32::from(id))
        .copied()
}

/// An exact-name transition (the key names its slot).
#[inline(always)]
pub fn match_exact(key: &ExactKey) -> Option<u32> {
    // SAFETY: the value is a plain integer.
    unsafe { MATCH_EXACT.get(key).copied() }
}

/// A slot's glob rule `index`.
#[inline(always)]
pub fn match_glob(slot: u32, index: u32) -> Option<&'static GlobRule> {
    MATCH_GLOBS.get((slot & 1) * MAX_MATCH_GLOBS + index)
}

/// Where a slot counts a workload's registered cgroups.
#[inline(always)]
pub fn registered_count(slot: usize, workload: Identity) -> Option<*mut u32> {
    if slot == 0 {
        REGISTERED_CGROUPS_0.get_ptr_mut(workload)
    } else {
        REGISTERED_CGROUPS_1.get_ptr_mut(workload)
    }
}

/// Adds `delta` (wrapping) to a counter other CPUs change too.
#[inline(always)]
pub fn atomic_add(counter: *mut u32, delta: u32) {
    // SAFETY: an aligned word of a map value, which outlives the program
    // run; every writer changes it atomically.
    unsafe {
        core::arch::asm!(
            "lock *(u32 *)({p} + 0) += {v}",
            p = in(reg) counter,
            v = in(reg) u64::from(delta),
            options(nostack, preserves_flags),
        );
    }
}

/// Adds a cgroup to a slot's cgroup map unless it is there already.
#[inline(always)]
pub fn insert_cgroup(slot: usize, cgroup_id: u64, entry: &CgroupEntry) -> bool {
    // `BPF_NOEXIST`: the daemon's entry, if it wrote one first, stands.
    const NOEXIST: u64 = 1;
    if slot == 0 {
        CGROUPS_0.insert(cgroup_id, *entry, NOEXIST).is_ok()
    } else {
        CGROUPS_1.insert(cgroup_id, *entry, NOEXIST).is_ok()
    }
}

/// Removes a cgroup from a slot's cgroup map; what it held, if anything.
#[inline(always)]
pub fn remove_cgroup(slot: usize, cgroup_id: u64) -> Option<CgroupEntry> {
    let entry = cgroup_entry(slot as u32, cgroup_id)?;
    let removed = if slot == 0 {
        CGROUPS_0.remove(cgroup_id)
    } else {
        CGROUPS_1.remove(cgroup_id)
    };
    removed.is_ok().then_some(entry)
}
