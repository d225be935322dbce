//! The events the kernel programs send to userspace.

use crate::identity::Identity;

/// A verdict event sent to userspace through the events ring buffer, for
/// denied and audited connections (rate-limited per flow).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VerdictEvent {
    /// bpf_ktime_get_ns (CLOCK_MONOTONIC).
    pub time_ns: u64,
    pub cgroup_id: u64,
    pub local: Identity,
    pub remote: Identity,
    pub rule: u32,
    pub family: u8,
    /// A [`crate::protocol::Protocol`], or the raw IP protocol number.
    pub protocol: u8,
    /// A [`crate::verdict::Direction`]: who opened the connection.
    pub direction: u8,
    /// A [`crate::verdict::Action`]: `Deny` or `Audit` (or `Allow`).
    pub action: u8,
    pub local_port: u16,
    pub remote_port: u16,
    pub generation: u32,
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: `#[repr(C)]`, `Copy`, integers and byte arrays, no implicit
    // padding: any bit pattern is valid.
    unsafe impl aya::Pod for super::VerdictEvent {}
}
