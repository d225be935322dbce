//! Ports: the failsafe ports, and which local socket bound which port.

/// Key of the failsafe map: inbound (protocol, local port) pairs that stay
/// reachable whatever the policy says.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortKey {
    /// A [`crate::protocol::Protocol`].
    pub protocol: u8,
    /// Padding (zero).
    pub _pad: u8,
    /// The port (host byte order).
    pub port: u16,
}

/// Key of the bound-port map: a (protocol, port) in one network namespace.
/// A socket bound in another namespace (a container, a test host, a user's
/// `unshare -rn`) is another machine's: it never stands for this host's
/// port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BoundPortKey {
    /// The namespace's cookie (`bpf_get_netns_cookie`, `SO_NETNS_COOKIE`).
    pub netns: u64,
    /// A [`crate::protocol::Protocol`].
    pub protocol: u8,
    /// Padding (zero).
    pub _pad: u8,
    /// The port (host byte order).
    pub port: u16,
    /// Padding (zero).
    pub _pad2: u32,
}

/// Value of the bound-port map (key: [`BoundPortKey`]): which local socket
/// owns a port of a network namespace, learned at `bind()`, so that a
/// workload connecting to a local address is matched against the receiving
/// workload.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BoundPort {
    /// The cgroup of the socket that bound the port.
    pub cgroup_id: u64,
    /// The socket cookie of the bound socket, so that `sock_release` of
    /// another socket that shared the port does not forget this one.
    pub cookie: u64,
}

/// Words of [`crate::map_names::TCP_BOUND_PORT_BITS`]: one bit per TCP port.
pub const TCP_BOUND_PORT_WORDS: u32 = 65_536 / 64;

/// The word of [`crate::map_names::TCP_BOUND_PORT_BITS`] holding a port's bit,
/// and the bit.
#[inline(always)]
pub const fn tcp_bound_port_bit(port: u16) -> (u32, u64) {
    ((port >> 6) as u32, 1 << (port & 63))
}

#[cfg(feature = "user")]
mod user {
    use super::{BoundPort, BoundPortKey, PortKey};

    // SAFETY: `#[repr(C)]`, `Copy`, integers with explicit padding fields:
    // any bit pattern is valid.
    unsafe impl aya::Pod for PortKey {}
    unsafe impl aya::Pod for BoundPortKey {}
    unsafe impl aya::Pod for BoundPort {}
}
