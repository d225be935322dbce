//! The name of every map: the name of its static in the kernel programs
//! (`enforcer-ebpf/src/maps.rs`), which the object carries, and the name
//! under which the loader pins it. Userspace takes every name from here;
//! a unit test of the loader (`dataplane::adoption`) checks that [`ALL`] is
//! exactly the set of maps the built object defines.

/// Array of one [`crate::config::Config`]: the settings the programs read first.
pub const CONFIG: &str = "CONFIG";
/// Per slot: cgroup id -> [`crate::workload::CgroupEntry`].
pub const CGROUPS: [&str; 2] = ["CGROUPS_0", "CGROUPS_1"];
/// Per slot: the LPM trie of remote IPv4 prefixes ([`crate::address::AddrKey4`]) to identities.
pub const ADDR4: [&str; 2] = ["ADDR4_0", "ADDR4_1"];
/// Per slot: the LPM trie of remote IPv6 prefixes ([`crate::address::AddrKey6`]) to identities.
pub const ADDR6: [&str; 2] = ["ADDR6_0", "ADDR6_1"];
/// Per slot: the LPM trie of verdicts ([`crate::verdict::VerdictKey`] -> [`crate::verdict::VerdictValue`]).
pub const VERDICTS: [&str; 2] = ["VERDICTS_0", "VERDICTS_1"];
/// LRU hash of flows ([`crate::flow::FlowKey`] -> [`crate::flow::FlowValue`]) that no socket keeps.
pub const FLOWS: &str = "FLOWS";
/// Socket-local storage (`BPF_MAP_TYPE_SK_STORAGE`) of
/// [`crate::flow::FlowValue`]: the flow of a connected TCP socket whose
/// packets were judged (not one that the verdict cache recognises).
pub const SOCKET_FLOWS: &str = "SOCKET_FLOWS";
/// [`crate::ports::BoundPortKey`] -> [`crate::ports::BoundPort`]: the local sockets that own a port.
pub const BOUND_PORTS: &str = "BOUND_PORTS";
/// Array of [`crate::ports::TCP_BOUND_PORT_WORDS`] words, memory-mappable: a
/// bit per TCP port, set while `BOUND_PORTS` holds the port. The
/// per-packet path's test for a listener's port: a hash lookup of each
/// new connection's port would be a cache miss per packet.
pub const TCP_BOUND_PORT_BITS: &str = "TCP_BOUND_PORT_BITS";
/// Socket-local storage of [`crate::ports::BoundPortKey`]: which port a
/// socket bound, so that `sock_release` (which cannot read the socket's
/// port) can forget it, and the per-packet path can tell a socket that
/// bound its own port from one a listener accepted.
pub const SOCKET_BINDS: &str = "SOCKET_BINDS";
/// Hash of [`crate::ports::PortKey`]: inbound ports kept reachable whatever the policy.
pub const FAILSAFE: &str = "FAILSAFE";
/// The ring buffer of [`crate::event::VerdictEvent`]s.
pub const EVENTS: &str = "EVENTS";
/// Per-CPU hash of packets per [`crate::counters::CounterKey`] for identities past the array.
pub const COUNTERS: &str = "COUNTERS";
/// Per-CPU array of packets per (identity, action) for identities below
/// [`crate::counters::COUNTED_IDENTITIES`].
pub const WORKLOAD_COUNTERS: &str = "WORKLOAD_COUNTERS";
/// Per-CPU array of the `GLOBAL_COUNTER_*` counters.
pub const GLOBAL_COUNTERS: &str = "GLOBAL_COUNTERS";
/// Array of [`crate::cached_verdict::CachedVerdict`], shared by every CPU: recent
/// verdicts of `connect4|6` and `sendmsg4|6` that allowed a remote
/// destination.
pub const CACHED_VERDICTS: &str = "CACHED_VERDICTS";
/// The cgroup tracer's settings ([`crate::cgroup_match::Registration`]).
pub const REGISTRATION: &str = "REGISTRATION";
/// Cgroup id -> [`crate::cgroup_match::CgroupMatch`]: the automaton
/// states of each cgroup that can lead its children to a workload.
pub const CGROUP_MATCH: &str = "CGROUP_MATCH";
/// `slot * MAX_MATCH_STATES + state id` ->
/// [`crate::cgroup_match::MatchState`].
pub const MATCH_STATES: &str = "MATCH_STATES";
/// [`crate::cgroup_match::ExactKey`] -> next state.
pub const MATCH_EXACT: &str = "MATCH_EXACT";
/// `slot * MAX_MATCH_GLOBS + index` -> [`crate::cgroup_match::GlobRule`].
pub const MATCH_GLOBS: &str = "MATCH_GLOBS";
/// Per slot: workload identity -> how many `CGROUPS` entries it has
/// (the tracer's quota).
pub const REGISTERED_CGROUPS: [&str; 2] = ["REGISTERED_CGROUPS_0", "REGISTERED_CGROUPS_1"];
/// How many `CGROUP_MATCH` entries are of delegated cgroups.
pub const DELEGATED_MATCHES: &str = "DELEGATED_MATCHES";
/// The tracer's per-CPU scratch space (a cgroup name, a loop's state).
pub const MATCH_SCRATCH: &str = "MATCH_SCRATCH";
/// Array of [`crate::config::SlotPolicy`], one per policy slot: the content
/// hash of the policy each slot holds.
pub const SLOT_POLICIES: &str = "SLOT_POLICIES";

/// Every map of the object. The order is part of the pinned layout: the
/// manifest pinned beside the maps records the id of `ALL[i]` in its slot
/// `1 + i`, so a new map goes at the end, with a new `LAYOUT_VERSION`.
pub const ALL: [&str; 30] = [
    CONFIG,
    CGROUPS[0],
    CGROUPS[1],
    ADDR4[0],
    ADDR4[1],
    ADDR6[0],
    ADDR6[1],
    VERDICTS[0],
    VERDICTS[1],
    FLOWS,
    SOCKET_FLOWS,
    BOUND_PORTS,
    TCP_BOUND_PORT_BITS,
    SOCKET_BINDS,
    FAILSAFE,
    EVENTS,
    COUNTERS,
    WORKLOAD_COUNTERS,
    GLOBAL_COUNTERS,
    CACHED_VERDICTS,
    REGISTRATION,
    CGROUP_MATCH,
    MATCH_STATES,
    MATCH_EXACT,
    MATCH_GLOBS,
    REGISTERED_CGROUPS[0],
    REGISTERED_CGROUPS[1],
    DELEGATED_MATCHES,
    MATCH_SCRATCH,
    SLOT_POLICIES,
];

#[cfg(test)]
mod tests {
    use super::ALL;

    #[test]
    fn every_name_is_listed_once() {
        for (i, name) in ALL.iter().enumerate() {
            assert!(!ALL[..i].contains(name), "{name} is listed twice");
        }
    }
}
