//! Counters: packets per workload and action, and the global counters.

use crate::identity::Identity;

/// Key of the per-CPU counters map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CounterKey {
    /// The local workload (or [`crate::identity::IDENTITY_HOST`]).
    pub workload: Identity,
    /// A [`crate::verdict::Action`].
    pub action: u8,
    /// Padding (zero).
    pub _pad: [u8; 3],
}

/// Index in the global counters array (a per-CPU array) of the number of
/// events lost because the ring buffer was full.
pub const GLOBAL_COUNTER_EVENTS_LOST: u32 = 0;
/// Number of packets judged on the per-packet path.
pub const GLOBAL_COUNTER_PACKETS: u32 = 1;
/// Number of new flows judged.
pub const GLOBAL_COUNTER_NEW_FLOWS: u32 = 2;
/// Number of packets dropped.
pub const GLOBAL_COUNTER_DROPPED: u32 = 3;
/// Number of connections and datagrams that `connect4|6` or `sendmsg4|6`
/// allowed from [`crate::map_names::CACHED_VERDICTS`] without judging them.
pub const GLOBAL_COUNTER_CACHED_VERDICTS: u32 = 4;
/// Number of cgroups the tracer registered in a policy slot at their
/// creation (a cgroup registered in both slots counts twice).
pub const GLOBAL_COUNTER_CGROUPS_REGISTERED: u32 = 5;
/// Number of cgroups the tracer did not register because their workload
/// had reached its quota
/// ([`crate::cgroup_match::Registration::max_cgroups_per_workload`]).
pub const GLOBAL_COUNTER_REGISTRATIONS_REFUSED: u32 = 6;
/// Number of cgroups whose automaton states, or whose match entry, did not
/// fit: their descendants are left to the daemon.
pub const GLOBAL_COUNTER_MATCH_OVERFLOWS: u32 = 7;
/// Number of global counters.
pub const GLOBAL_COUNTERS: u32 = 8;

/// Local identities (`host` and the first workloads) below this are counted
/// in the per-CPU array [`crate::map_names::WORKLOAD_COUNTERS`] at index
/// `identity * COUNTER_ACTIONS + action`: a direct index per packet instead
/// of a hash lookup. Higher identities are counted in
/// [`crate::map_names::COUNTERS`].
pub const COUNTED_IDENTITIES: u32 = 1024;
/// Action slots per identity in [`crate::map_names::WORKLOAD_COUNTERS`].
pub const COUNTER_ACTIONS: u32 = 4;
/// Slots of [`crate::map_names::WORKLOAD_COUNTERS`].
pub const WORKLOAD_COUNTER_SLOTS: u32 = COUNTED_IDENTITIES * COUNTER_ACTIONS;

#[cfg(feature = "user")]
mod user {
    // SAFETY: `#[repr(C)]`, `Copy`, integers with an explicit padding
    // field: any bit pattern is valid.
    unsafe impl aya::Pod for super::CounterKey {}
}
