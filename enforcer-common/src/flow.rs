//! Connection tracking: the flow a packet belongs to, and what is known
//! about it once its first packet was judged.

use crate::{
    identity::Identity,
    packet::{Packet, PacketClass},
    protocol::Protocol,
    verdict::Direction,
};

/// Key of the connection-tracking map, as seen from the socket that owns
/// the flow. Addresses are in network byte order; IPv4 addresses occupy the
/// first 4 bytes and the rest is zero. Ports are host byte order. For ICMP
/// echo, `local_port` is the echo identifier and `remote_port` is 0.
/// 8-byte aligned (the layout is unchanged: no padding) so that the kernel
/// programs build and hash it in whole words.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// 4 or 6.
    pub family: u8,
    /// A [`Protocol`], or the raw IP protocol number for any other.
    pub protocol: u8,
    /// Local port (host byte order).
    pub local_port: u16,
    /// Remote port (host byte order).
    pub remote_port: u16,
    /// Padding (zero): the key is hashed whole.
    pub _pad: u16,
    /// Local address (network byte order; an IPv4 address in the first 4 bytes).
    pub local_addr: [u8; 16],
    /// Remote address (network byte order; an IPv4 address in the first 4 bytes).
    pub remote_addr: [u8; 16],
}

impl FlowKey {
    /// The flow a packet belongs to, as seen from the local socket: on
    /// egress the local end is the source, on ingress the destination. For
    /// echo messages the local port is the identifier and the remote port 0.
    /// An ICMP error is keyed by the connection it quotes, which this host
    /// sent: the quoted source is the local end.
    pub const fn of_packet(p: &Packet, direction: Direction) -> FlowKey {
        let echo = matches!(p.class, PacketClass::EchoRequest | PacketClass::EchoReply)
            || (matches!(p.class, PacketClass::IcmpError) && p.protocol == Protocol::Icmp as u8);
        let local_is_src =
            matches!(direction, Direction::Egress) || matches!(p.class, PacketClass::IcmpError);
        let (local_addr, remote_addr, local_port, remote_port) = if echo {
            if local_is_src {
                (p.src, p.dst, p.sport, 0)
            } else {
                (p.dst, p.src, p.sport, 0)
            }
        } else if local_is_src {
            (p.src, p.dst, p.sport, p.dport)
        } else {
            (p.dst, p.src, p.dport, p.sport)
        };
        FlowKey {
            family: p.family,
            protocol: p.protocol,
            local_port,
            remote_port,
            _pad: 0,
            local_addr,
            remote_addr,
        }
    }

    /// The same flow as seen from the other end, which is where the other
    /// socket stores it when both ends are on this host.
    pub const fn mirrored(&self) -> FlowKey {
        FlowKey {
            family: self.family,
            protocol: self.protocol,
            local_port: self.remote_port,
            remote_port: self.local_port,
            _pad: 0,
            local_addr: self.remote_addr,
            remote_addr: self.local_addr,
        }
    }
}

/// What is known about a connection once its first packet was judged.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowValue {
    /// The policy generation the verdict was taken under.
    pub generation: u32,
    /// The local workload (or [`crate::identity::IDENTITY_HOST`]).
    pub local: Identity,
    /// The remote entity.
    pub remote: Identity,
    /// The rule that decided (see [`crate::verdict::VerdictValue::rule`]).
    pub rule: u32,
    /// The cgroup of the owning socket.
    pub cgroup_id: u64,
    /// Last time (bpf_ktime_get_ns) an event was sent for this flow: the
    /// per-flow event rate limit.
    pub last_event_ns: u64,
    /// A [`crate::verdict::Action`].
    pub action: u8,
    /// Who opened the connection, a [`Direction`]: `Egress` (this socket)
    /// or `Ingress` (the remote end).
    pub direction: u8,
    /// The service port: the destination port of the first packet.
    pub service_port: u16,
    /// The low 32 bits of the jiffies count before which no event is due
    /// for this flow (the last event plus
    /// [`crate::config::Config::jiffies_per_second`]).
    /// The flow is quiet while this is 1 to `jiffies_per_second` ticks
    /// ahead (wrapping difference); otherwise, and when it is 0 (no event
    /// sent yet, tick rate unknown, or a flow written where this was
    /// padding), the rate limit is checked against `last_event_ns`.
    pub quiet_until: u32,
}

#[cfg(feature = "user")]
mod user {
    use super::{FlowKey, FlowValue};

    // SAFETY: `#[repr(C)]`, `Copy`, integers and byte arrays with explicit
    // padding fields: any bit pattern is valid.
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowValue {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_keys_of_both_directions_mirror_each_other() {
        let mut p = Packet {
            family: 4,
            protocol: Protocol::Tcp as u8,
            class: PacketClass::Transport,
            tcp_flags: 0,
            sport: 40000,
            dport: 443,
            src: [1; 16],
            dst: [2; 16],
        };
        let out = FlowKey::of_packet(&p, Direction::Egress);
        assert_eq!((out.local_port, out.remote_port), (40000, 443));
        assert_eq!(out.local_addr, [1; 16]);
        // The receiver sees the same packet on ingress: its key is the mirror.
        let inb = FlowKey::of_packet(&p, Direction::Ingress);
        assert_eq!(inb, out.mirrored());
        // Echo: local port is the identifier in both directions.
        p.class = PacketClass::EchoReply;
        p.protocol = Protocol::Icmp as u8;
        p.dport = 0;
        let reply = FlowKey::of_packet(&p, Direction::Ingress);
        assert_eq!((reply.local_port, reply.remote_port), (40000, 0));
        assert_eq!(reply.local_addr, [2; 16]);
        // An error quoting what we sent is keyed like our own egress.
        p.class = PacketClass::IcmpError;
        p.protocol = Protocol::Udp as u8;
        p.dport = 53;
        let err = FlowKey::of_packet(&p, Direction::Ingress);
        assert_eq!(
            (err.local_port, err.remote_port, err.local_addr),
            (40000, 53, [1; 16])
        );
    }

    #[test]
    fn mirroring_twice_is_identity() {
        let key = FlowKey {
            family: 4,
            protocol: Protocol::Udp as u8,
            local_port: 1,
            remote_port: 2,
            _pad: 0,
            local_addr: [1; 16],
            remote_addr: [2; 16],
        };
        assert_eq!(key.mirrored().mirrored(), key);
        assert_eq!(key.mirrored().local_port, 2);
    }
}
