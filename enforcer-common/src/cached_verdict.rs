//! The verdict cache of `connect4|6` and `sendmsg4|6`: allowed remote
//! destinations, shared by every CPU.

use crate::identity::Identity;

/// A verdict that `connect4|6` or `sendmsg4|6` reached for a destination
/// outside this host and allowed, kept in a cache shared by every CPU
/// ([`crate::map_names::CACHED_VERDICTS`]). The next connection (or datagram)
/// from the same cgroup to the same destination, under the same policy
/// generation, skips the judgement; and every packet of a TCP connection
/// that `connect()` opened is recognised by it, so that such a connection
/// needs no state of its own (see `docs/dataplane.md`).
///
/// Two programs may write the same slot at once (on two CPUs, or one
/// preempted between two of its stores): [`CachedVerdict::seal`] covers
/// every other field, so a slot mixed from two writes is a miss rather
/// than another destination's verdict.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CachedVerdict {
    /// The cgroup of the socket whose `connect()` or `sendmsg()` was judged.
    pub cgroup_id: u64,
    /// The destination address as four words in network byte order (an
    /// IPv4 address in the first): word loads, where a byte array would
    /// cost the BPF programs a load per byte.
    pub addr: [u32; 4],
    /// The destination port (host byte order).
    pub port: u16,
    /// 4 or 6; 0 in a slot never written.
    pub family: u8,
    /// A [`crate::protocol::Protocol`].
    pub protocol: u8,
    /// The generation of the policy the verdict was judged under.
    pub generation: u32,
    /// The local workload (or [`crate::identity::IDENTITY_HOST`]) the
    /// verdict was for.
    pub local: Identity,
    /// The remote identity (a peer or [`crate::identity::IDENTITY_WORLD`]).
    pub remote: Identity,
    /// The rule that allowed it.
    pub rule: u32,
    /// Padding (zero).
    pub _pad: u32,
    /// A checksum of every field above ([`CachedVerdict::seal`]).
    pub seal: u64,
}

/// A destination as the verdict cache and the judgement take it: an
/// IPv4-mapped IPv6 address (`::ffff:a.b.c.d`), which a dual-stack socket
/// sends as IPv4, becomes that IPv4 address. `addr` is four network-order
/// words (see [`CachedVerdict::addr`]), an IPv4 address in the first.
#[inline(always)]
pub fn ipv4_unmapped(family: u8, addr: [u32; 4]) -> (u8, [u32; 4]) {
    // The third word holds the bytes 00 00 ff ff in memory order.
    if family == 6 && addr[0] == 0 && addr[1] == 0 && addr[2] == 0x0000_ffff_u32.to_be() {
        (4, [addr[3], 0, 0, 0])
    } else {
        (family, addr)
    }
}

/// Slots of [`crate::map_names::CACHED_VERDICTS`] (a power of two): destinations
/// (per cgroup) that keep their verdict at once, before two of them are
/// likely to share a slot.
pub const CACHED_VERDICT_SLOTS: u32 = 4096;

impl CachedVerdict {
    /// A slot never written: it matches nothing (family 0, no seal).
    pub const NEVER_WRITTEN: CachedVerdict = CachedVerdict {
        cgroup_id: 0,
        addr: [0; 4],
        port: 0,
        family: 0,
        protocol: 0,
        generation: 0,
        local: 0,
        remote: 0,
        rule: 0,
        _pad: 0,
        seal: 0,
    };

    /// The cache slot of a destination, from the fields that identify it.
    #[inline(always)]
    pub fn slot(cgroup_id: u64, addr: &[u32; 4], port: u16, protocol: u8) -> u32 {
        let h = mix(
            mix(cgroup_id, pair(addr[0], addr[1])),
            pair(addr[2], addr[3]) ^ ((u64::from(port) << 8) | u64::from(protocol)),
        );
        (h >> 32) as u32 & (CACHED_VERDICT_SLOTS - 1)
    }

    /// Whether this slot holds the verdict for exactly this destination
    /// from this cgroup under this generation, written whole.
    #[inline(always)]
    pub fn matches(
        &self,
        cgroup_id: u64,
        family: u8,
        protocol: u8,
        addr: &[u32; 4],
        port: u16,
        generation: u32,
    ) -> bool {
        self.family == family
            && self.cgroup_id == cgroup_id
            && self.port == port
            && self.protocol == protocol
            && self.generation == generation
            && self.addr == *addr
            && self.seal == self.checksum()
    }

    /// Sets the seal, once every other field is written.
    #[inline(always)]
    pub fn seal(&mut self) {
        self.seal = self.checksum();
    }

    #[inline(always)]
    fn checksum(&self) -> u64 {
        // Word by word, without an array: the BPF stack is small.
        let mut h = mix(0x243f_6a88_85a3_08d3, self.cgroup_id);
        h = mix(h, pair(self.addr[0], self.addr[1]));
        h = mix(h, pair(self.addr[2], self.addr[3]));
        h = mix(
            h,
            u64::from(self.port)
                | (u64::from(self.family) << 16)
                | (u64::from(self.protocol) << 24)
                | (u64::from(self.generation) << 32),
        );
        h = mix(h, u64::from(self.local) | (u64::from(self.remote) << 32));
        h = mix(h, u64::from(self.rule) | (u64::from(self._pad) << 32));
        // Never 0, the seal of a slot never written.
        h | 1
    }
}

/// One round of a multiply-xorshift hash (the finaliser of SplitMix64).
#[inline(always)]
const fn mix(h: u64, word: u64) -> u64 {
    let mut x = (h ^ word).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x
}

#[inline(always)]
const fn pair(low: u32, high: u32) -> u64 {
    low as u64 | ((high as u64) << 32)
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: `#[repr(C)]`, `Copy`, integers with an explicit padding
    // field: any bit pattern is valid.
    unsafe impl aya::Pod for super::CachedVerdict {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Protocol;

    const TCP: u8 = Protocol::Tcp as u8;
    const UDP: u8 = Protocol::Udp as u8;

    fn cached(addr: u8, rule: u32) -> CachedVerdict {
        let mut c = CachedVerdict {
            cgroup_id: 4242,
            addr: [u32::from(addr); 4],
            port: 5432,
            family: 6,
            protocol: TCP,
            generation: 9,
            local: 17,
            remote: 18,
            rule,
            _pad: 0,
            seal: 0,
        };
        c.seal();
        c
    }

    #[test]
    fn a_cached_verdict_matches_only_its_own_destination_and_generation() {
        let c = cached(7, 3);
        assert!(c.matches(4242, 6, TCP, &[7; 4], 5432, 9));
        assert!(!c.matches(4243, 6, TCP, &[7; 4], 5432, 9), "cgroup");
        assert!(!c.matches(4242, 4, TCP, &[7; 4], 5432, 9), "family");
        assert!(!c.matches(4242, 6, UDP, &[7; 4], 5432, 9), "protocol");
        assert!(!c.matches(4242, 6, TCP, &[8; 4], 5432, 9), "address");
        assert!(!c.matches(4242, 6, TCP, &[7; 4], 5433, 9), "port");
        assert!(!c.matches(4242, 6, TCP, &[7; 4], 5432, 10), "generation");
        let never_written = CachedVerdict {
            seal: 0,
            ..cached(0, 0)
        };
        assert!(!never_written.matches(4242, 6, TCP, &[0; 4], 5432, 9));
        // Not even a lookup of all zeros: no seal is 0.
        assert!(!CachedVerdict::NEVER_WRITTEN.matches(0, 0, 0, &[0; 4], 0, 0));
    }

    #[test]
    fn a_cached_verdict_mixed_from_two_writes_is_a_miss() {
        // Another program overwrote part of the slot between two stores of
        // the first one: the seal of either write no longer fits.
        let first = cached(7, 3);
        let second = cached(8, 4);
        let torn_value = CachedVerdict {
            rule: second.rule,
            ..first
        };
        assert!(!torn_value.matches(4242, 6, TCP, &[7; 4], 5432, 9));
        let torn_key = CachedVerdict {
            addr: second.addr,
            ..first
        };
        assert!(!torn_key.matches(4242, 6, TCP, &[8; 4], 5432, 9));
        let late_seal = CachedVerdict {
            seal: second.seal,
            ..first
        };
        assert!(!late_seal.matches(4242, 6, TCP, &[7; 4], 5432, 9));
    }

    #[test]
    fn an_ipv4_mapped_address_becomes_ipv4_and_others_stay() {
        let words = |b: [u8; 16]| {
            [0, 4, 8, 12].map(|i| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]))
        };
        let v4 = u32::from_ne_bytes([198, 51, 100, 2]);
        let mapped = words(
            core::net::Ipv4Addr::new(198, 51, 100, 2)
                .to_ipv6_mapped()
                .octets(),
        );
        assert_eq!(ipv4_unmapped(6, mapped), (4, [v4, 0, 0, 0]));
        let v6 = words(core::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0xffff, 2).octets());
        assert_eq!(ipv4_unmapped(6, v6), (6, v6));
        // `::ffff:0:a.b.c.d` (IPv4-translated) is not mapped.
        let translated = words([0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 198, 51, 100, 2]);
        assert_eq!(ipv4_unmapped(6, translated), (6, translated));
        assert_eq!(ipv4_unmapped(4, [v4, 0, 0, 0]), (4, [v4, 0, 0, 0]));
    }

    #[test]
    fn cached_verdict_slots_stay_in_range_and_spread() {
        let mut seen = [false; CACHED_VERDICT_SLOTS as usize];
        for port in 0..(CACHED_VERDICT_SLOTS * 4) as u16 {
            let slot = CachedVerdict::slot(77, &[1; 4], port, TCP);
            assert!(slot < CACHED_VERDICT_SLOTS);
            seen[slot as usize] = true;
        }
        let used = seen.iter().filter(|s| **s).count();
        assert!(
            used > CACHED_VERDICT_SLOTS as usize * 3 / 4,
            "{used} slots used"
        );
    }
}
