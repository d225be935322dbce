//! The events the kernel programs send to userspace.

use crate::identity::Identity;

/// A verdict event sent to userspace through the events ring buffer, for
/// denied and audited connections (rate-limited per flow).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VerdictEvent {
    /// bpf_ktime_get_ns (CLOCK_MONOTONIC).
    pub time_ns: u64,
    /// The cgroup of the local socket.
    pub cgroup_id: u64,
    /// The local workload (or [`crate::identity::IDENTITY_HOST`]).
    pub local: Identity,
    /// The remote identity: a peer, a local workload, `host` or `world`.
    pub remote: Identity,
    /// The rule that decided (an index into the compiled rule table, or a `RULE_*` constant).
    pub rule: u32,
    /// 4 or 6.
    pub family: u8,
    /// A [`crate::protocol::Protocol`], or the raw IP protocol number.
    pub protocol: u8,
    /// A [`crate::verdict::Direction`]: who opened the connection.
    pub direction: u8,
    /// A [`crate::verdict::Action`]: `Deny` or `Audit` (or `Allow`).
    pub action: u8,
    /// Local port (host byte order; 0 for ICMP).
    pub local_port: u16,
    /// Remote port (host byte order; 0 for ICMP).
    pub remote_port: u16,
    /// The generation of the policy that decided.
    pub generation: u32,
    /// Local address (network byte order; an IPv4 address in the first 4 bytes).
    pub local_addr: [u8; 16],
    /// Remote address (network byte order; an IPv4 address in the first 4 bytes).
    pub remote_addr: [u8; 16],
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: `#[repr(C)]`, `Copy`, integers and byte arrays, no implicit
    // padding: any bit pattern is valid.
    unsafe impl aya::Pod for super::VerdictEvent {}
}
