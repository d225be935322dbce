//! The capacities of the maps. The compiler rejects a policy whose entries
//! exceed them, before anything is written.

/// Entries of each slot's cgroup map, and of the tracer's `CGROUP_MATCH`.
pub const MAX_CGROUPS: u32 = 65_536;
/// IPv4 prefixes of each slot's address trie.
pub const MAX_PREFIXES_V4: u32 = 262_144;
/// IPv6 prefixes of each slot's address trie.
pub const MAX_PREFIXES_V6: u32 = 262_144;
/// Entries of each slot's verdict trie.
pub const MAX_VERDICTS: u32 = 1_048_576;
/// Flows of the connection-tracking table (an LRU map).
pub const MAX_FLOWS: u32 = 262_144;
/// Bound ports of every network namespace.
pub const MAX_BOUND_PORTS: u32 = 65_536;
/// Failsafe (protocol, port) pairs.
pub const MAX_FAILSAFE_PORTS: u32 = 64;
/// (workload, action) counters of identities past
/// [`crate::counters::COUNTED_IDENTITIES`].
pub const MAX_COUNTERS: u32 = 16_384;
/// Size of the events ring buffer.
pub const EVENTS_RING_BYTES: u32 = 1 << 20;
