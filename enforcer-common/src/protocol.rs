//! The transport protocols as keys carry them.

/// A protocol as used in keys: the IP protocol number, with ICMP and
/// ICMPv6 both [`Protocol::Icmp`]. Key fields hold the raw byte (a packet
/// of another protocol keeps its own number); [`Protocol::from_raw`] tells
/// these three apart.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// ICMP and ICMPv6.
    Icmp = 1,
    /// TCP.
    Tcp = 6,
    /// UDP.
    Udp = 17,
}

impl Protocol {
    /// The protocol a key byte names, `None` for any other protocol.
    #[inline(always)]
    pub const fn from_raw(raw: u8) -> Option<Protocol> {
        match raw {
            1 => Some(Protocol::Icmp),
            6 => Some(Protocol::Tcp),
            17 => Some(Protocol::Udp),
            _ => None,
        }
    }
}

/// The IP protocol number of ICMPv6 on the wire (normalised to
/// [`Protocol::Icmp`] in keys).
pub const IPPROTO_ICMPV6: u8 = 58;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_protocol_round_trips_and_others_are_none() {
        for p in [Protocol::Icmp, Protocol::Tcp, Protocol::Udp] {
            assert_eq!(Protocol::from_raw(p as u8), Some(p));
        }
        assert_eq!(Protocol::from_raw(IPPROTO_ICMPV6), None);
        assert_eq!(Protocol::from_raw(0), None);
    }
}
