//! The binary contract between the enforcer's userspace and its kernel
//! programs: every eBPF map key and value, as `#[repr(C)]` types with
//! explicit padding, so both sides (and the reference evaluator) share one
//! definition and a layout mismatch is a compile error.
//!
//! The data model is documented in `docs/dataplane.md`. In short:
//!
//! - every entity (workload, peer, `world`, `host`) has a numeric
//!   [`Identity`];
//! - the local side of a packet is the workload owning the socket's cgroup
//!   ([`CgroupEntry`]), whose verdict class keys the verdict lookup;
//! - the remote side is found by longest-prefix match over addresses
//!   ([`AddrKey4`], [`AddrKey6`]) or, for traffic between two sockets on this
//!   host, from the other socket's own flow or bound port;
//! - a new connection's verdict comes from [`VerdictKey`] lookups, at most
//!   three (exact remote, every external address, any remote), first hit
//!   wins; the compiler folds wildcard rules into the more specific levels so
//!   that "first hit" equals "deny wins over every allow";
//! - the verdict of a connection is kept in [`FlowKey`] -> [`FlowValue`],
//!   stamped with the policy generation, so a policy change re-evaluates it at
//!   its next packet.
#![no_std]

pub mod cgroup_match;
pub mod map_names;
pub mod packet;

/// Bumped whenever a map's key or value layout changes. Pins live under a
/// directory named after it, so a new binary never reuses an old map with a
/// different layout.
pub const LAYOUT_VERSION: u32 = 6;

/// The name of the pin directory for this layout, under the bpffs
/// directory given to the loader (`<bpffs>/v6/`).
pub const LAYOUT_DIR: &str = "v6";

/// A numeric identity for an entity. Identities are assigned by the compiler.
pub type Identity = u32;

/// No identity: not a valid entity.
pub const IDENTITY_NONE: Identity = 0;
/// Every address outside this host that no peer covers.
pub const IDENTITY_WORLD: Identity = 1;
/// Processes on this host that belong to no workload, and this host's own
/// addresses when no local socket can be found for them.
pub const IDENTITY_HOST: Identity = 2;
/// The first identity the compiler hands out to workloads and peers.
pub const IDENTITY_FIRST_ALLOCATED: Identity = 16;
/// Verdict-key wildcard: every address outside this host (the `world`
/// selector, which covers peers too).
pub const IDENTITY_ANY_EXTERNAL: Identity = 0xffff_fffe;
/// Verdict-key wildcard: any remote entity (the `any` selector).
pub const IDENTITY_ANY: Identity = 0xffff_ffff;

/// Protocol numbers as used in keys. ICMP and ICMPv6 share [`PROTO_ICMP`].
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
/// The IP protocol number of ICMPv6 on the wire (normalised to
/// [`PROTO_ICMP`] in keys).
pub const IPPROTO_ICMPV6: u8 = 58;

/// Direction of a connection as seen from the local workload.
pub const DIRECTION_EGRESS: u8 = 1;
pub const DIRECTION_INGRESS: u8 = 2;

/// Verdict actions.
pub const ACTION_NONE: u8 = 0;
pub const ACTION_ALLOW: u8 = 1;
pub const ACTION_DENY: u8 = 2;
/// Would have been denied, allowed because the workload is in audit mode.
pub const ACTION_AUDIT: u8 = 3;

/// Workload modes (also used for `--unmanaged`, where `audit` means allow
/// and report and `enforce` means deny).
pub const MODE_ENFORCE: u8 = 0;
pub const MODE_AUDIT: u8 = 1;
pub const MODE_OFF: u8 = 2;
/// `--unmanaged allow`: host processes are not checked.
pub const MODE_ALLOW: u8 = 2;

/// The rule index meaning "no rule decided: default deny".
pub const RULE_DEFAULT_DENY: u32 = u32::MAX;
/// The rule index meaning "allowed by a built-in exception" (loopback to
/// itself, neighbour discovery, DHCP replies, failsafe ports).
pub const RULE_BUILTIN: u32 = u32::MAX - 1;
/// The rule index meaning "decided by the `--unmanaged` setting".
pub const RULE_UNMANAGED: u32 = u32::MAX - 2;
/// The rule index meaning "not checked: the workload is in mode `off`".
pub const RULE_MODE_OFF: u32 = u32::MAX - 3;

/// Number of bits of [`VerdictKey::data`] before the port: workload (32),
/// direction (8), protocol (8), remote identity (32).
pub const VERDICT_FIXED_PREFIX_BITS: u32 = 80;
/// Full length of a verdict key: the fixed part plus the 16-bit port.
pub const VERDICT_KEY_BITS: u32 = VERDICT_FIXED_PREFIX_BITS + 16;

/// Key of the longest-prefix-match trie from remote IPv4 prefixes to
/// identities. Same layout as the kernel's `struct bpf_lpm_trie_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AddrKey4 {
    pub prefix_len: u32,
    /// Network byte order.
    pub addr: [u8; 4],
}

/// Key of the longest-prefix-match trie from remote IPv6 prefixes to
/// identities.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AddrKey6 {
    pub prefix_len: u32,
    /// Network byte order.
    pub addr: [u8; 16],
}

/// Key of the verdict trie: a longest-prefix match whose fixed part (80
/// bits: workload class, direction, protocol, remote identity, all
/// big-endian; see [`CgroupEntry::class`]) is
/// always matched in full, and whose last 16 bits are the service port, so
/// that a port range compiles to at most 30 prefix-aligned blocks instead of
/// one entry per port. `prefix_len` is 80 + the number of port bits fixed.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VerdictKey {
    pub prefix_len: u32,
    pub data: [u8; 12],
}

impl VerdictKey {
    /// A key matching exactly one port (or, with `port_bits < 16`, the
    /// aligned block of ports that shares the first `port_bits` bits).
    pub const fn new(
        workload: Identity,
        direction: u8,
        protocol: u8,
        remote: Identity,
        port: u16,
        port_bits: u8,
    ) -> Self {
        let w = workload.to_be_bytes();
        let r = remote.to_be_bytes();
        let p = port.to_be_bytes();
        VerdictKey {
            prefix_len: VERDICT_FIXED_PREFIX_BITS + port_bits as u32,
            data: [
                w[0], w[1], w[2], w[3], direction, protocol, r[0], r[1], r[2], r[3], p[0], p[1],
            ],
        }
    }

    pub const fn workload(&self) -> Identity {
        u32::from_be_bytes([self.data[0], self.data[1], self.data[2], self.data[3]])
    }
    pub const fn direction(&self) -> u8 {
        self.data[4]
    }
    pub const fn protocol(&self) -> u8 {
        self.data[5]
    }
    pub const fn remote(&self) -> Identity {
        u32::from_be_bytes([self.data[6], self.data[7], self.data[8], self.data[9]])
    }
    pub const fn port(&self) -> u16 {
        u16::from_be_bytes([self.data[10], self.data[11]])
    }
    /// How many leading bits of the port are fixed (0..=16).
    pub const fn port_bits(&self) -> u32 {
        self.prefix_len.saturating_sub(VERDICT_FIXED_PREFIX_BITS)
    }
}

/// The decision stored for a block of ports.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VerdictValue {
    /// Index into the compiled policy's rule table, or [`RULE_DEFAULT_DENY`].
    pub rule: u32,
    /// [`ACTION_ALLOW`] or [`ACTION_DENY`].
    pub action: u8,
    pub _pad: [u8; 3],
}

/// Value of the cgroup map (key: the cgroup v2 id, i.e. the inode number of
/// its directory).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CgroupEntry {
    pub workload: Identity,
    /// The workload's verdict class: the identity its verdict keys are
    /// stored under (workloads with identical verdict rows share one set).
    /// Only the verdict lookup uses it; flows, events and counters name
    /// the workload.
    pub class: Identity,
    /// [`MODE_ENFORCE`], [`MODE_AUDIT`] or [`MODE_OFF`].
    pub mode: u8,
    pub _pad: [u8; 3],
}

/// Global settings, in a single-entry array map. Written by the daemon.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Config {
    /// Which set of policy maps (0 or 1) is in force. Flipping it is the
    /// atomic policy swap.
    pub active_slot: u32,
    /// Policy generation; flows stamped with another one are re-evaluated.
    pub generation: u32,
    /// Mode for processes that belong to no workload: [`MODE_ALLOW`],
    /// [`MODE_AUDIT`] or [`MODE_ENFORCE`] (deny).
    pub unmanaged: u8,
    /// Non-zero once the daemon has filled the maps; until then every
    /// program allows everything.
    pub enabled: u8,
    /// The kernel's tick rate (`HZ`, jiffies per second): the event rate
    /// limit in jiffies, which the denied fast path checks against
    /// [`FlowValue::quiet_until`] with an inlined jiffies read instead of a
    /// clock helper call. 0 (unknown, or a `CONFIG` written by an earlier
    /// daemon, where this was padding) disables that shortcut.
    pub jiffies_per_second: u16,
}

/// Which policy a policy slot holds, one per slot in [`map_names::SLOT_POLICIES`]
/// (index = slot). Written by the daemon with each policy it writes into a
/// slot, never read by the programs: it tells a restarted daemon what the
/// kernel enforces, which the pins keep across a restart (not a reboot).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SlotPolicy {
    /// The compiled policy's content hash.
    pub content_hash: u64,
    /// When the policy was written, in milliseconds since the Unix epoch;
    /// 0: unknown (never written, or a write that did not finish), and then
    /// `content_hash` means nothing.
    pub applied_unix_ms: u64,
}

/// How many entries [`map_names::SLOT_POLICIES`] has: one per policy slot.
pub const POLICY_SLOTS: u32 = 2;

/// Key of the failsafe map: inbound (protocol, local port) pairs that stay
/// reachable whatever the policy says.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortKey {
    pub protocol: u8,
    pub _pad: u8,
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
    pub protocol: u8,
    pub _pad: u8,
    pub port: u16,
    pub _pad2: u32,
}

/// Value of the bound-port map (key: [`BoundPortKey`]): which local socket
/// owns a port of a network namespace, learned at `bind()`, so that a
/// workload connecting to a local address is matched against the receiving
/// workload.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BoundPort {
    pub cgroup_id: u64,
    /// The socket cookie of the bound socket, so that `sock_release` of
    /// another socket that shared the port does not forget this one.
    pub cookie: u64,
}

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
    /// [`PROTO_TCP`], [`PROTO_UDP`] or [`PROTO_ICMP`].
    pub protocol: u8,
    pub local_port: u16,
    pub remote_port: u16,
    pub _pad: u16,
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
}

impl FlowKey {
    /// The flow a packet belongs to, as seen from the local socket: on
    /// egress the local end is the source, on ingress the destination. For
    /// echo messages the local port is the identifier and the remote port 0.
    /// An ICMP error is keyed by the connection it quotes, which this host
    /// sent: the quoted source is the local end.
    pub const fn of_packet(p: &packet::Packet, direction: u8) -> FlowKey {
        let echo = p.class == packet::CLASS_ECHO_REQUEST
            || p.class == packet::CLASS_ECHO_REPLY
            || (p.class == packet::CLASS_ICMP_ERROR && p.protocol == PROTO_ICMP);
        let local_is_src = direction == DIRECTION_EGRESS || p.class == packet::CLASS_ICMP_ERROR;
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
    /// The local workload (or [`IDENTITY_HOST`]).
    pub local: Identity,
    /// The remote entity.
    pub remote: Identity,
    /// The rule that decided (see [`VerdictValue::rule`]).
    pub rule: u32,
    /// The cgroup of the owning socket.
    pub cgroup_id: u64,
    /// Last time (bpf_ktime_get_ns) an event was sent for this flow: the
    /// per-flow event rate limit.
    pub last_event_ns: u64,
    /// [`ACTION_ALLOW`], [`ACTION_DENY`] or [`ACTION_AUDIT`].
    pub action: u8,
    /// Who opened the connection: [`DIRECTION_EGRESS`] (this socket) or
    /// [`DIRECTION_INGRESS`] (the remote end).
    pub direction: u8,
    /// The service port: the destination port of the first packet.
    pub service_port: u16,
    /// The low 32 bits of the jiffies count before which no event is due
    /// for this flow (the last event plus [`Config::jiffies_per_second`]).
    /// The flow is quiet while this is 1 to `jiffies_per_second` ticks
    /// ahead (wrapping difference); otherwise, and when it is 0 (no event
    /// sent yet, tick rate unknown, or a flow written where this was
    /// padding), the rate limit is checked against `last_event_ns`.
    pub quiet_until: u32,
}

/// A verdict that `connect4|6` or `sendmsg4|6` reached for a destination
/// outside this host and allowed, kept in a cache shared by every CPU
/// ([`map_names::CACHED_VERDICTS`]). The next connection (or datagram) from the
/// same cgroup to the same destination, under the same policy generation,
/// skips the judgement; and every packet of a TCP connection that
/// `connect()` opened is recognised by it, so that such a connection needs
/// no state of its own (see `docs/dataplane.md`).
///
/// Two programs may write the same slot at once (on two CPUs, or one
/// preempted between two of its stores): [`CachedVerdict::seal`] covers
/// every other field, so a slot mixed from two writes is a miss rather
/// than another destination's verdict.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CachedVerdict {
    pub cgroup_id: u64,
    /// The destination address as four words in network byte order (an
    /// IPv4 address in the first): word loads, where a byte array would
    /// cost the BPF programs a load per byte.
    pub addr: [u32; 4],
    pub port: u16,
    /// 4 or 6; 0 in a slot never written.
    pub family: u8,
    pub protocol: u8,
    pub generation: u32,
    /// The local workload (or [`IDENTITY_HOST`]) the verdict was for.
    pub local: Identity,
    /// The remote identity (a peer or [`IDENTITY_WORLD`]).
    pub remote: Identity,
    pub rule: u32,
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

/// Slots of [`map_names::CACHED_VERDICTS`] (a power of two): destinations
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
    pub protocol: u8,
    pub direction: u8,
    /// [`ACTION_DENY`] or [`ACTION_AUDIT`] (or [`ACTION_ALLOW`]).
    pub action: u8,
    pub local_port: u16,
    pub remote_port: u16,
    pub generation: u32,
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
}

/// Key of the per-CPU counters map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CounterKey {
    /// The local workload (or [`IDENTITY_HOST`]).
    pub workload: Identity,
    /// [`ACTION_ALLOW`], [`ACTION_DENY`] or [`ACTION_AUDIT`].
    pub action: u8,
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
/// allowed from [`map_names::CACHED_VERDICTS`] without judging them.
pub const GLOBAL_COUNTER_CACHED_VERDICTS: u32 = 4;
/// Number of cgroups the tracer registered in a policy slot at their
/// creation (a cgroup registered in both slots counts twice).
pub const GLOBAL_COUNTER_CGROUPS_REGISTERED: u32 = 5;
/// Number of cgroups the tracer did not register because their workload
/// had reached its quota ([`cgroup_match::Registration::max_cgroups_per_workload`]).
pub const GLOBAL_COUNTER_REGISTRATIONS_REFUSED: u32 = 6;
/// Number of cgroups whose automaton states, or whose match entry, did not
/// fit: their descendants are left to the daemon.
pub const GLOBAL_COUNTER_MATCH_OVERFLOWS: u32 = 7;
pub const GLOBAL_COUNTERS: u32 = 8;

/// Map capacities. The compiler rejects a policy whose entries exceed them,
/// before anything is written.
pub const MAX_CGROUPS: u32 = 65_536;
pub const MAX_PREFIXES_V4: u32 = 262_144;
pub const MAX_PREFIXES_V6: u32 = 262_144;
pub const MAX_VERDICTS: u32 = 1_048_576;
pub const MAX_FLOWS: u32 = 262_144;
pub const MAX_BOUND_PORTS: u32 = 65_536;
pub const MAX_FAILSAFE_PORTS: u32 = 64;
pub const MAX_COUNTERS: u32 = 16_384;
/// Local identities (`host` and the first workloads) below this are counted
/// in the per-CPU array [`map_names::WORKLOAD_COUNTERS`] at index
/// `identity * COUNTER_ACTIONS + action`: a direct index per packet instead
/// of a hash lookup. Higher identities are counted in [`map_names::COUNTERS`].
pub const COUNTED_IDENTITIES: u32 = 1024;
/// Action slots per identity in [`map_names::WORKLOAD_COUNTERS`].
pub const COUNTER_ACTIONS: u32 = 4;
pub const WORKLOAD_COUNTER_SLOTS: u32 = COUNTED_IDENTITIES * COUNTER_ACTIONS;
pub const EVENTS_RING_BYTES: u32 = 1 << 20;

/// Words of [`map_names::TCP_BOUND_PORT_BITS`]: one bit per TCP port.
pub const TCP_BOUND_PORT_WORDS: u32 = 65_536 / 64;

/// The word of [`map_names::TCP_BOUND_PORT_BITS`] holding a port's bit, and the
/// bit.
#[inline(always)]
pub const fn tcp_bound_port_bit(port: u16) -> (u32, u64) {
    ((port >> 6) as u32, 1 << (port & 63))
}

#[cfg(feature = "user")]
mod user {
    use super::*;

    // SAFETY: every type is `#[repr(C)]`, `Copy`, made only of integers and
    // byte arrays, with explicit padding fields, so any bit pattern is valid.
    unsafe impl aya::Pod for AddrKey4 {}
    unsafe impl aya::Pod for AddrKey6 {}
    unsafe impl aya::Pod for VerdictKey {}
    unsafe impl aya::Pod for VerdictValue {}
    unsafe impl aya::Pod for CgroupEntry {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for PortKey {}
    unsafe impl aya::Pod for BoundPortKey {}
    unsafe impl aya::Pod for BoundPort {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowValue {}
    unsafe impl aya::Pod for CachedVerdict {}
    unsafe impl aya::Pod for VerdictEvent {}
    unsafe impl aya::Pod for CounterKey {}
    unsafe impl aya::Pod for cgroup_match::Registration {}
    unsafe impl aya::Pod for cgroup_match::MatchState {}
    unsafe impl aya::Pod for cgroup_match::ExactKey {}
    unsafe impl aya::Pod for cgroup_match::GlobRule {}
    unsafe impl aya::Pod for cgroup_match::CgroupMatch {}
    unsafe impl aya::Pod for SlotPolicy {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<AddrKey4>(), 8);
        assert_eq!(size_of::<AddrKey6>(), 20);
        assert_eq!(size_of::<VerdictKey>(), 16);
        assert_eq!(size_of::<VerdictValue>(), 8);
        assert_eq!(size_of::<CgroupEntry>(), 12);
        assert_eq!(size_of::<Config>(), 12);
        assert_eq!(size_of::<PortKey>(), 4);
        assert_eq!(size_of::<BoundPortKey>(), 16);
        assert_eq!(size_of::<FlowKey>(), 40);
        assert_eq!(size_of::<FlowValue>(), 40);
        assert_eq!(size_of::<CachedVerdict>(), 56);
        assert_eq!(size_of::<VerdictEvent>(), 72);
        assert_eq!(size_of::<CounterKey>(), 8);
        assert_eq!(size_of::<BoundPort>(), 16);
        assert_eq!(size_of::<cgroup_match::Registration>(), 56);
        assert_eq!(size_of::<cgroup_match::MatchState>(), 20);
        assert_eq!(size_of::<cgroup_match::ExactKey>(), 16);
        assert_eq!(size_of::<cgroup_match::GlobRule>(), 80);
        assert_eq!(size_of::<cgroup_match::CgroupMatch>(), 40);
        assert_eq!(size_of::<SlotPolicy>(), 16);
    }

    fn cached(addr: u8, rule: u32) -> CachedVerdict {
        let mut c = CachedVerdict {
            cgroup_id: 4242,
            addr: [u32::from(addr); 4],
            port: 5432,
            family: 6,
            protocol: PROTO_TCP,
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
        assert!(c.matches(4242, 6, PROTO_TCP, &[7; 4], 5432, 9));
        assert!(!c.matches(4243, 6, PROTO_TCP, &[7; 4], 5432, 9), "cgroup");
        assert!(!c.matches(4242, 4, PROTO_TCP, &[7; 4], 5432, 9), "family");
        assert!(!c.matches(4242, 6, PROTO_UDP, &[7; 4], 5432, 9), "protocol");
        assert!(!c.matches(4242, 6, PROTO_TCP, &[8; 4], 5432, 9), "address");
        assert!(!c.matches(4242, 6, PROTO_TCP, &[7; 4], 5433, 9), "port");
        assert!(
            !c.matches(4242, 6, PROTO_TCP, &[7; 4], 5432, 10),
            "generation"
        );
        let never_written = CachedVerdict {
            seal: 0,
            ..cached(0, 0)
        };
        assert!(!never_written.matches(4242, 6, PROTO_TCP, &[0; 4], 5432, 9));
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
        assert!(!torn_value.matches(4242, 6, PROTO_TCP, &[7; 4], 5432, 9));
        let torn_key = CachedVerdict {
            addr: second.addr,
            ..first
        };
        assert!(!torn_key.matches(4242, 6, PROTO_TCP, &[8; 4], 5432, 9));
        let late_seal = CachedVerdict {
            seal: second.seal,
            ..first
        };
        assert!(!late_seal.matches(4242, 6, PROTO_TCP, &[7; 4], 5432, 9));
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
            let slot = CachedVerdict::slot(77, &[1; 4], port, PROTO_TCP);
            assert!(slot < CACHED_VERDICT_SLOTS);
            seen[slot as usize] = true;
        }
        let used = seen.iter().filter(|s| **s).count();
        assert!(
            used > CACHED_VERDICT_SLOTS as usize * 3 / 4,
            "{used} slots used"
        );
    }

    #[test]
    fn verdict_key_round_trips_its_fields() {
        let key = VerdictKey::new(17, DIRECTION_INGRESS, PROTO_TCP, 0xdead_beef, 5432, 16);
        assert_eq!(key.workload(), 17);
        assert_eq!(key.direction(), DIRECTION_INGRESS);
        assert_eq!(key.protocol(), PROTO_TCP);
        assert_eq!(key.remote(), 0xdead_beef);
        assert_eq!(key.port(), 5432);
        assert_eq!(key.port_bits(), 16);
        assert_eq!(key.prefix_len, VERDICT_KEY_BITS);
    }

    #[test]
    fn flow_keys_of_both_directions_mirror_each_other() {
        let mut p = packet::Packet {
            family: 4,
            protocol: PROTO_TCP,
            class: packet::CLASS_TRANSPORT,
            tcp_flags: 0,
            sport: 40000,
            dport: 443,
            src: [1; 16],
            dst: [2; 16],
        };
        let out = FlowKey::of_packet(&p, DIRECTION_EGRESS);
        assert_eq!((out.local_port, out.remote_port), (40000, 443));
        assert_eq!(out.local_addr, [1; 16]);
        // The receiver sees the same packet on ingress: its key is the mirror.
        let inb = FlowKey::of_packet(&p, DIRECTION_INGRESS);
        assert_eq!(inb, out.mirrored());
        // Echo: local port is the identifier in both directions.
        p.class = packet::CLASS_ECHO_REPLY;
        p.protocol = PROTO_ICMP;
        p.dport = 0;
        let reply = FlowKey::of_packet(&p, DIRECTION_INGRESS);
        assert_eq!((reply.local_port, reply.remote_port), (40000, 0));
        assert_eq!(reply.local_addr, [2; 16]);
        // An error quoting what we sent is keyed like our own egress.
        p.class = packet::CLASS_ICMP_ERROR;
        p.protocol = PROTO_UDP;
        p.dport = 53;
        let err = FlowKey::of_packet(&p, DIRECTION_INGRESS);
        assert_eq!(
            (err.local_port, err.remote_port, err.local_addr),
            (40000, 53, [1; 16])
        );
    }

    #[test]
    fn mirroring_twice_is_identity() {
        let key = FlowKey {
            family: 4,
            protocol: PROTO_UDP,
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
