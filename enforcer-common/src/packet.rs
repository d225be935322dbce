//! Packet parsing shared by the kernel programs and the host tests.
//!
//! The parser reads through [`PacketBytes`], so the same code runs in the
//! kernel (over `bpf_skb_load_bytes`) and on the host (over a byte slice),
//! where it is unit-tested. Input starts at the IP header, as in
//! `cgroup_skb` programs. Every loop is bounded so the verifier accepts it.

use crate::protocol::{IPPROTO_ICMPV6, Protocol};

/// Fixed-size reads at an offset from the start of the IP header.
pub trait PacketBytes {
    /// The `N` bytes at `offset`, or `None` when the packet is shorter.
    fn read<const N: usize>(&self, offset: usize) -> Option<Bytes<N>>;
}

/// `N` bytes read from a packet. 8-byte aligned: in an `Option<[u8; N]>`
/// the bytes would sit at offset 1, and the kernel programs would then
/// reassemble every word of them byte by byte.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bytes<const N: usize>(pub [u8; N]);

impl<const N: usize> core::ops::Deref for Bytes<N> {
    type Target = [u8; N];
    #[inline(always)]
    fn deref(&self) -> &[u8; N] {
        &self.0
    }
}

impl PacketBytes for [u8] {
    #[inline(always)]
    fn read<const N: usize>(&self, offset: usize) -> Option<Bytes<N>> {
        let end = offset.checked_add(N)?;
        let bytes = self.get(offset..end)?;
        let mut out = Bytes([0u8; N]);
        out.0.copy_from_slice(bytes);
        Some(out)
    }
}

/// What a packet is, for the verdict logic.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PacketClass {
    /// Anything else: another protocol, or a fragment after the first.
    Other = 0,
    /// TCP or UDP with ports.
    Transport = 1,
    /// ICMP or ICMPv6 echo request; `sport` is the identifier, `dport` 0.
    EchoRequest = 2,
    /// ICMP or ICMPv6 echo reply; `sport` is the identifier, `dport` 0.
    EchoReply = 3,
    /// An ICMP error (unreachable, time exceeded, parameter problem, packet
    /// too big). The addresses, ports and protocol are those of the packet
    /// *quoted* in the error, i.e. the packet this host sent that caused it.
    IcmpError = 4,
    /// ICMPv6 router solicitation/advertisement, neighbour
    /// solicitation/advertisement, redirect (types 133–137): always allowed.
    NeighbourDiscovery = 5,
    /// Any other ICMP message.
    IcmpOther = 6,
}

/// TCP flag bits (byte 13 of the TCP header): FIN.
pub const TCP_FIN: u8 = 0x01;
/// SYN.
pub const TCP_SYN: u8 = 0x02;
/// RST.
pub const TCP_RST: u8 = 0x04;
/// ACK.
pub const TCP_ACK: u8 = 0x10;

/// The fields of a packet the data plane judges on.
///
/// 8-byte aligned, with the addresses at 8-aligned offsets, so that the
/// kernel programs move them as whole words rather than byte by byte.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    /// 4 or 6.
    pub family: u8,
    /// Protocol as used in keys: a [`Protocol`] (ICMPv6 as
    /// [`Protocol::Icmp`]), or the raw IP protocol number for anything else.
    pub protocol: u8,
    /// What the packet is.
    pub class: PacketClass,
    /// TCP flags, 0 for other protocols.
    pub tcp_flags: u8,
    /// Source port (host order); the echo identifier for echo messages.
    pub sport: u16,
    /// Destination port (host order); 0 for echo messages.
    pub dport: u16,
    /// Source address, network order; IPv4 in the first 4 bytes.
    pub src: [u8; 16],
    /// Destination address, network order; IPv4 in the first 4 bytes.
    pub dst: [u8; 16],
}

impl Packet {
    /// A pure TCP SYN: the first packet of a connection.
    pub const fn is_tcp_syn(&self) -> bool {
        self.protocol == Protocol::Tcp as u8 && self.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    }
}

/// IPv6 extension headers skipped before the transport header, at most.
const MAX_IPV6_EXTENSIONS: usize = 6;

const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AUTH: u8 = 51;
const IPV6_DEST_OPTS: u8 = 60;

/// An IPv4 address in the first 4 bytes of 16, the rest zero. Written as
/// one whole value (not a copy into a zeroed array) so that the kernel
/// programs store it as two words instead of calling `memset`.
#[inline(always)]
const fn ipv4_in_16(addr: [u8; 4]) -> [u8; 16] {
    (u32::from_le_bytes(addr) as u128).to_le_bytes()
}

/// Parses the IP packet that starts at offset 0. `None` when it is too
/// short or malformed; non-first fragments and unknown protocols are
/// [`PacketClass::Other`].
#[inline(always)]
pub fn parse<B: PacketBytes + ?Sized>(bytes: &B) -> Option<Packet> {
    let first = bytes.read::<1>(0)?;
    let mut p = Packet {
        family: 0,
        protocol: 0,
        class: PacketClass::Other,
        tcp_flags: 0,
        sport: 0,
        dport: 0,
        src: [0; 16],
        dst: [0; 16],
    };
    let (wire_proto, l4) = match first[0] >> 4 {
        4 => {
            let h = bytes.read::<20>(0)?;
            let ihl = usize::from(h[0] & 0x0f) * 4;
            if ihl < 20 {
                return None;
            }
            p.family = 4;
            // The addresses as reads of their own, not bytes of `h`: the
            // kernel programs then load each as one word instead of
            // reassembling it from the words of `h` byte by byte.
            p.src = ipv4_in_16(bytes.read::<4>(12)?.0);
            p.dst = ipv4_in_16(bytes.read::<4>(16)?.0);
            p.protocol = h[9];
            let frag_offset = u16::from_be_bytes([h[6], h[7]]) & 0x1fff;
            if frag_offset != 0 {
                return Some(p);
            }
            (h[9], ihl)
        }
        6 => {
            let h = bytes.read::<40>(0)?;
            p.family = 6;
            p.src.copy_from_slice(&h[8..24]);
            p.dst.copy_from_slice(&h[24..40]);
            let mut next = h[6];
            let mut off = 40usize;
            let mut i = 0;
            while i < MAX_IPV6_EXTENSIONS {
                i += 1;
                match next {
                    IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS => {
                        let e = bytes.read::<2>(off)?;
                        next = e[0];
                        off += (usize::from(e[1]) + 1) * 8;
                    }
                    IPV6_AUTH => {
                        let e = bytes.read::<2>(off)?;
                        next = e[0];
                        off += (usize::from(e[1]) + 2) * 4;
                    }
                    IPV6_FRAGMENT => {
                        let e = bytes.read::<4>(off)?;
                        next = e[0];
                        off += 8;
                        if u16::from_be_bytes([e[2], e[3]]) & 0xfff8 != 0 {
                            p.protocol = next;
                            return Some(p);
                        }
                    }
                    _ => break,
                }
            }
            p.protocol = next;
            (next, off)
        }
        _ => return None,
    };
    match Protocol::from_raw(wire_proto) {
        Some(Protocol::Tcp) => {
            let t = bytes.read::<14>(l4)?;
            p.sport = u16::from_be_bytes([t[0], t[1]]);
            p.dport = u16::from_be_bytes([t[2], t[3]]);
            p.tcp_flags = t[13];
            p.class = PacketClass::Transport;
        }
        Some(Protocol::Udp) => {
            let u = bytes.read::<4>(l4)?;
            p.sport = u16::from_be_bytes([u[0], u[1]]);
            p.dport = u16::from_be_bytes([u[2], u[3]]);
            p.class = PacketClass::Transport;
        }
        Some(Protocol::Icmp) if p.family == 4 => {
            let m = bytes.read::<8>(l4)?;
            p.protocol = Protocol::Icmp as u8;
            match m[0] {
                8 | 0 => {
                    p.class = if m[0] == 8 {
                        PacketClass::EchoRequest
                    } else {
                        PacketClass::EchoReply
                    };
                    p.sport = u16::from_be_bytes([m[4], m[5]]);
                }
                3 | 11 | 12 => return parse_quoted(bytes, l4 + 8, p),
                _ => p.class = PacketClass::IcmpOther,
            }
        }
        None if wire_proto == IPPROTO_ICMPV6 && p.family == 6 => {
            let m = bytes.read::<8>(l4)?;
            p.protocol = Protocol::Icmp as u8;
            match m[0] {
                128 | 129 => {
                    p.class = if m[0] == 128 {
                        PacketClass::EchoRequest
                    } else {
                        PacketClass::EchoReply
                    };
                    p.sport = u16::from_be_bytes([m[4], m[5]]);
                }
                1..=4 => return parse_quoted(bytes, l4 + 8, p),
                133..=137 => p.class = PacketClass::NeighbourDiscovery,
                _ => p.class = PacketClass::IcmpOther,
            }
        }
        _ => {}
    }
    Some(p)
}

/// Parses the packet quoted in an ICMP error at `off` (without IPv6
/// extension headers, and only TCP, UDP or echo inside). Falls back to
/// [`PacketClass::IcmpOther`] when the quote is not understood, so the
/// error is judged as plain ICMP.
#[inline(always)]
fn parse_quoted<B: PacketBytes + ?Sized>(bytes: &B, off: usize, outer: Packet) -> Option<Packet> {
    let mut q = Packet {
        class: PacketClass::IcmpOther,
        ..outer
    };
    let Some(first) = bytes.read::<1>(off) else {
        return Some(q);
    };
    let (proto, l4) = match (first[0] >> 4, outer.family) {
        (4, 4) => {
            let Some(h) = bytes.read::<20>(off) else {
                return Some(q);
            };
            let ihl = usize::from(h[0] & 0x0f) * 4;
            if ihl < 20 {
                return Some(q);
            }
            q.src = ipv4_in_16([h[12], h[13], h[14], h[15]]);
            q.dst = ipv4_in_16([h[16], h[17], h[18], h[19]]);
            (h[9], off + ihl)
        }
        (6, 6) => {
            let Some(h) = bytes.read::<40>(off) else {
                return Some(q);
            };
            q.src.copy_from_slice(&h[8..24]);
            q.dst.copy_from_slice(&h[24..40]);
            (h[6], off + 40)
        }
        _ => return Some(q),
    };
    // The quote holds at least the first 8 bytes of the transport header.
    let Some(t) = bytes.read::<8>(l4) else {
        return Some(q);
    };
    let echo = t[0] == 8 || t[0] == 128;
    match Protocol::from_raw(proto) {
        Some(Protocol::Tcp | Protocol::Udp) => {
            q.protocol = proto;
            q.sport = u16::from_be_bytes([t[0], t[1]]);
            q.dport = u16::from_be_bytes([t[2], t[3]]);
        }
        // An echo request this host sent, over ICMP or ICMPv6.
        _ if echo && (proto == Protocol::Icmp as u8 || proto == IPPROTO_ICMPV6) => {
            q.protocol = Protocol::Icmp as u8;
            q.sport = u16::from_be_bytes([t[4], t[5]]);
            q.dport = 0;
        }
        _ => return Some(q),
    }
    q.class = PacketClass::IcmpError;
    q.tcp_flags = 0;
    Some(q)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: u8 = Protocol::Tcp as u8;
    const UDP: u8 = Protocol::Udp as u8;
    const ICMP: u8 = Protocol::Icmp as u8;

    fn ipv4(proto: u8, l4: &[u8]) -> [u8; 64] {
        let mut b = [0u8; 64];
        b[0] = 0x45;
        b[9] = proto;
        b[12..16].copy_from_slice(&[198, 51, 100, 1]);
        b[16..20].copy_from_slice(&[203, 0, 113, 9]);
        b[20..20 + l4.len()].copy_from_slice(l4);
        b
    }

    fn ipv6(next: u8, rest: &[u8]) -> [u8; 128] {
        let mut b = [0u8; 128];
        b[0] = 0x60;
        b[6] = next;
        b[8..10].copy_from_slice(&[0x20, 0x01]);
        b[10..12].copy_from_slice(&[0x0d, 0xb8]);
        b[23] = 1;
        b[24..26].copy_from_slice(&[0x20, 0x01]);
        b[26..28].copy_from_slice(&[0x0d, 0xb8]);
        b[39] = 2;
        b[40..40 + rest.len()].copy_from_slice(rest);
        b
    }

    #[test]
    fn parses_ipv4_tcp_syn() {
        let mut tcp = [0u8; 20];
        tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&443u16.to_be_bytes());
        tcp[13] = TCP_SYN;
        let b = ipv4(TCP, &tcp);
        let p = parse(&b[..40]).unwrap();
        assert_eq!(p.family, 4);
        assert_eq!(p.protocol, TCP);
        assert_eq!(p.class, PacketClass::Transport);
        assert_eq!((p.sport, p.dport), (40000, 443));
        assert!(p.is_tcp_syn());
        assert_eq!(&p.src[..4], &[198, 51, 100, 1]);
        assert_eq!(&p.dst[..4], &[203, 0, 113, 9]);
        assert_eq!(&p.src[4..], &[0; 12]);
    }

    #[test]
    fn syn_ack_is_not_a_syn() {
        let mut tcp = [0u8; 20];
        tcp[13] = TCP_SYN | TCP_ACK;
        let b = ipv4(TCP, &tcp);
        assert!(!parse(&b[..40]).unwrap().is_tcp_syn());
    }

    #[test]
    fn truncated_packets_are_rejected() {
        let b = ipv4(TCP, &[0; 20]);
        assert_eq!(parse(&b[..10]), None);
        assert_eq!(parse(&b[..30]), None);
        assert_eq!(parse(&[][..]), None);
        assert_eq!(parse(&[0x75u8; 40][..]), None);
    }

    #[test]
    fn ipv4_options_shift_the_transport_header() {
        let mut b = [0u8; 64];
        b[0] = 0x46; // 24-byte header
        b[9] = UDP;
        b[24..26].copy_from_slice(&53u16.to_be_bytes());
        b[26..28].copy_from_slice(&5353u16.to_be_bytes());
        let p = parse(&b[..]).unwrap();
        assert_eq!((p.sport, p.dport), (53, 5353));
    }

    #[test]
    fn non_first_fragments_have_no_ports() {
        let mut b = ipv4(UDP, &[0, 53, 0, 53]);
        b[7] = 1;
        let p = parse(&b[..]).unwrap();
        assert_eq!(p.class, PacketClass::Other);
        assert_eq!(p.sport, 0);
    }

    #[test]
    fn parses_icmp_echo_and_errors() {
        let b = ipv4(ICMP, &[8, 0, 0, 0, 0x12, 0x34, 0, 1]);
        let p = parse(&b[..]).unwrap();
        assert_eq!(p.class, PacketClass::EchoRequest);
        assert_eq!((p.protocol, p.sport, p.dport), (ICMP, 0x1234, 0));

        // Port unreachable quoting a UDP packet 198.51.100.7:1000 -> 203.0.113.5:53.
        let mut err = [0u8; 36];
        err[0] = 3;
        err[1] = 3;
        err[8] = 0x45;
        err[8 + 9] = UDP;
        err[8 + 12..8 + 16].copy_from_slice(&[198, 51, 100, 7]);
        err[8 + 16..8 + 20].copy_from_slice(&[203, 0, 113, 5]);
        err[28..30].copy_from_slice(&1000u16.to_be_bytes());
        err[30..32].copy_from_slice(&53u16.to_be_bytes());
        let b = ipv4(ICMP, &err);
        let p = parse(&b[..]).unwrap();
        assert_eq!(p.class, PacketClass::IcmpError);
        assert_eq!(p.protocol, UDP);
        assert_eq!((p.sport, p.dport), (1000, 53));
        assert_eq!(&p.src[..4], &[198, 51, 100, 7]);
        assert_eq!(&p.dst[..4], &[203, 0, 113, 5]);
    }

    #[test]
    fn parses_ipv6_udp_behind_extension_headers() {
        // Hop-by-hop (8 bytes) then destination options (16 bytes) then UDP.
        let mut rest = [0u8; 32];
        rest[0] = IPV6_DEST_OPTS;
        rest[8] = UDP;
        rest[9] = 1;
        rest[24..26].copy_from_slice(&546u16.to_be_bytes());
        rest[26..28].copy_from_slice(&547u16.to_be_bytes());
        let b = ipv6(IPV6_HOP_BY_HOP, &rest);
        let p = parse(&b[..]).unwrap();
        assert_eq!(p.family, 6);
        assert_eq!(p.protocol, UDP);
        assert_eq!((p.sport, p.dport), (546, 547));
        assert_eq!(p.dst[15], 2);
    }

    #[test]
    fn parses_icmpv6_classes() {
        let b = ipv6(IPPROTO_ICMPV6, &[128, 0, 0, 0, 0, 7, 0, 1]);
        let p = parse(&b[..]).unwrap();
        assert_eq!(
            (p.class, p.protocol, p.sport),
            (PacketClass::EchoRequest, ICMP, 7)
        );
        let b = ipv6(IPPROTO_ICMPV6, &[135, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            parse(&b[..]).unwrap().class,
            PacketClass::NeighbourDiscovery
        );
        let b = ipv6(IPPROTO_ICMPV6, &[130, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(parse(&b[..]).unwrap().class, PacketClass::IcmpOther);
    }

    #[test]
    fn ipv6_fragments_after_the_first_have_no_ports() {
        let mut rest = [0u8; 16];
        rest[0] = TCP;
        rest[3] = 0x08; // offset 1
        let b = ipv6(IPV6_FRAGMENT, &rest);
        let p = parse(&b[..]).unwrap();
        assert_eq!((p.class, p.protocol), (PacketClass::Other, TCP));
    }
}
