//! `cgroup_skb` ingress and egress: the per-packet path. One flow lookup
//! (on the TCP socket itself, else in `FLOWS`) decides every packet of a
//! known connection under the current policy generation; only the first
//! packet of a connection (or the first after a policy change) runs the full
//! judgement. A TCP connection that `connect()` opened to an allowed remote
//! destination is known without a flow of its own: the verdict cache that
//! `connect4|6` filled holds its destination.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_TCP_LISTEN, bpf_sock, bpf_sock_tuple, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1,
        bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2,
    },
    helpers::{
        bpf_sk_fullsock, bpf_skb_ancestor_cgroup_id, bpf_skb_cgroup_id, bpf_tcp_sock,
        generated::{
            bpf_sk_ancestor_cgroup_id, bpf_sk_cgroup_id, bpf_sk_lookup_tcp, bpf_sk_lookup_udp,
            bpf_sk_release,
        },
    },
    programs::SkBuffContext,
};
use enforcer_common::{
    ACTION_ALLOW, ACTION_DENY, CachedVerdict, CgroupEntry, Config, DIRECTION_EGRESS,
    DIRECTION_INGRESS, FlowKey, FlowValue, GLOBAL_COUNTER_DROPPED, GLOBAL_COUNTER_NEW_FLOWS,
    GLOBAL_COUNTER_PACKETS, IDENTITY_HOST, IDENTITY_NONE, Identity, MODE_ALLOW, PROTO_TCP,
    PROTO_UDP, ipv4_unmapped,
    packet::{
        self, Bytes, CLASS_ECHO_REPLY, CLASS_ICMP_ERROR, CLASS_NEIGHBOUR_DISCOVERY, Packet,
        PacketBytes, TCP_ACK, TCP_SYN,
    },
};

use crate::{
    judge::{
        self, PeerSocket, Remote, coarse_now_ns, event_due, now_ns, quiet, quiet_until, send_event,
    },
    maps,
};

const PASS: i32 = 1;
const DROP: i32 = 0;

struct Skb<'a>(&'a SkBuffContext);

impl Skb<'_> {
    /// The `N` bytes at the constant offset `OFF` when they are in the
    /// linear part of the packet. A constant offset keeps the bounds check
    /// in the form the verifier accepts (packet pointer against data_end).
    #[inline(always)]
    fn direct<const OFF: usize, const N: usize>(&self) -> Option<Bytes<N>> {
        let skb = self.0.skb.skb;
        // SAFETY: reading two fields of the program's own context.
        let (data, end) = unsafe { ((*skb).data as usize, (*skb).data_end as usize) };
        // `data + 1 > end` would compile to `data >= end`, from which the
        // verifier learns no range: check at least 2 bytes (a shorter
        // packet takes the helper path, with the same result).
        let span = if OFF + N < 2 { 2 } else { OFF + N };
        if data + span > end {
            return None;
        }
        // Whole words, largest first: an IPv6 header is five 8-byte loads
        // instead of forty byte loads, shifts and ors.
        let base = data + OFF;
        let mut bytes = Bytes([0u8; N]);
        let out = &mut bytes.0;
        let mut i = 0;
        while i + 8 <= N {
            // SAFETY (this and the loads below): inside [data, data_end).
            out[i..i + 8].copy_from_slice(&unsafe { load_u64(base + i) }.to_ne_bytes());
            i += 8;
        }
        if i + 4 <= N {
            out[i..i + 4].copy_from_slice(&unsafe { load_u32(base + i) }.to_ne_bytes());
            i += 4;
        }
        if i + 2 <= N {
            out[i..i + 2].copy_from_slice(&unsafe { load_u16(base + i) }.to_ne_bytes());
            i += 2;
        }
        if i < N {
            // SAFETY: as above; a byte has no alignment.
            out[i] = unsafe { *(base as *const u8).add(i) };
        }
        Some(bytes)
    }
}

// Unaligned word loads from the packet. In Rust (`read_unaligned`) LLVM's
// BPF backend splits them into byte loads, since BPF does not promise
// misaligned access; the verifier allows it for packet pointers wherever the
// kernel has efficient unaligned access (x86-64, arm64, ...: it only
// enforces packet alignment with `BPF_F_STRICT_ALIGNMENT` or on
// architectures without it). Inline assembly emits the single load.

/// # Safety
/// The 8 bytes at `addr` are inside the packet (checked against data_end).
#[inline(always)]
unsafe fn load_u64(addr: usize) -> u64 {
    let v: u64;
    // SAFETY: per the caller; a plain load, no stack, no side effect.
    unsafe {
        core::arch::asm!(
            "{v} = *(u64 *)({a} + 0)",
            a = in(reg) addr,
            v = lateout(reg) v,
            options(pure, readonly, nostack, preserves_flags),
        );
    }
    v
}

/// # Safety
/// As [`load_u64`], for 4 bytes.
#[inline(always)]
unsafe fn load_u32(addr: usize) -> u32 {
    let v: u64;
    // SAFETY: as in `load_u64`.
    unsafe {
        core::arch::asm!(
            "{v} = *(u32 *)({a} + 0)",
            a = in(reg) addr,
            v = lateout(reg) v,
            options(pure, readonly, nostack, preserves_flags),
        );
    }
    v as u32
}

/// # Safety
/// As [`load_u64`], for 2 bytes.
#[inline(always)]
unsafe fn load_u16(addr: usize) -> u16 {
    let v: u64;
    // SAFETY: as in `load_u64`.
    unsafe {
        core::arch::asm!(
            "{v} = *(u16 *)({a} + 0)",
            a = in(reg) addr,
            v = lateout(reg) v,
            options(pure, readonly, nostack, preserves_flags),
        );
    }
    v as u16
}

impl PacketBytes for Skb<'_> {
    /// The usual header offsets (the IP header, and the transport header
    /// after an option-less IPv4 or extension-less IPv6 header) are read
    /// directly from the linear part of the packet: no helper call, and only
    /// the bytes the parser uses are loaded. Anything else, or data outside
    /// the linear part, goes through `bpf_skb_load_bytes`.
    #[inline(always)]
    fn read<const N: usize>(&self, offset: usize) -> Option<Bytes<N>> {
        let direct = match offset {
            0 => self.direct::<0, N>(),
            12 => self.direct::<12, N>(),
            16 => self.direct::<16, N>(),
            20 => self.direct::<20, N>(),
            40 => self.direct::<40, N>(),
            _ => None,
        };
        match direct {
            Some(bytes) => Some(bytes),
            None => self.0.load::<[u8; N]>(offset).ok().map(Bytes),
        }
    }
}

const fn opposite(direction: u8) -> u8 {
    if direction == DIRECTION_EGRESS {
        DIRECTION_INGRESS
    } else {
        DIRECTION_EGRESS
    }
}

/// Who opened a connection we see for the first time at this packet, and
/// its service port. A connection already running when the enforcer
/// started (mid-stream TCP) is assumed to be served on the lower port.
#[inline(always)]
fn opener_and_service(p: &Packet, key: &FlowKey, direction: u8) -> (u8, u16) {
    if p.class == CLASS_ICMP_ERROR {
        return (DIRECTION_EGRESS, key.remote_port);
    }
    if p.class == CLASS_ECHO_REPLY {
        return (opposite(direction), 0);
    }
    if p.protocol == PROTO_TCP && p.tcp_flags & TCP_SYN == 0 {
        return if key.remote_port <= key.local_port {
            (DIRECTION_EGRESS, key.remote_port)
        } else {
            (DIRECTION_INGRESS, key.local_port)
        };
    }
    if p.protocol == PROTO_TCP && p.tcp_flags & TCP_ACK != 0 {
        // SYN-ACK: the other end opened it, to its source port.
        return (opposite(direction), p.sport);
    }
    (direction, p.dport)
}

#[inline(always)]
pub fn handle(ctx: &SkBuffContext, direction: u8) -> i32 {
    let Some(cfg) = maps::config() else {
        return PASS;
    };
    if cfg.enabled == 0 {
        return PASS;
    }
    maps::bump_global(GLOBAL_COUNTER_PACKETS);
    let socket = packet_socket(ctx);
    // The usual packet: one of an allowed connection, on its socket. No
    // parsing: the socket says it is TCP and where it is connected, and its
    // storage or the verdict cache holds the verdict.
    if let PacketSocket::Connected(sk) = socket
        && let Some((local, action)) = known_connection(ctx, &cfg, sk)
        && action != ACTION_DENY
    {
        maps::bump_counter(local, action);
        return PASS;
    }
    // A TCP packet's local end is found once, here: a socket in no workload
    // may need nothing more.
    let mut known_local = LocalEnd::UNKNOWN;
    if !matches!(socket, PacketSocket::Other) {
        let local = LocalEnd::of(ctx, &cfg);
        if local.workload().is_none() && unmanaged_passes(&cfg, socket) {
            if direction == DIRECTION_INGRESS
                && let PacketSocket::Listener(sk) = socket
            {
                // As `judge_packet` does for the SYN (see `mark_listener_port`).
                // SAFETY: a field of a full socket (host byte order).
                let port = unsafe { (*sk).src_port } as u16;
                if !maps::tcp_port_bound(port) {
                    maps::mark_tcp_port(port, true);
                }
            }
            maps::bump_counter(IDENTITY_HOST, ACTION_ALLOW);
            return PASS;
        }
        known_local = local;
    }
    let Some(p) = packet::parse(&Skb(ctx)) else {
        // Not IP or truncated: the stack drops what it cannot parse itself.
        return PASS;
    };
    if p.class == CLASS_NEIGHBOUR_DISCOVERY {
        return PASS;
    }
    let key = FlowKey::of_packet(&p, direction);
    let verdict = judge_packet(ctx, &cfg, &p, &key, direction, known_local);
    if verdict == DROP {
        maps::bump_global(GLOBAL_COUNTER_DROPPED);
    }
    verdict
}

/// The packet's socket, as far as the per-packet path tells them apart.
#[derive(Clone, Copy)]
enum PacketSocket {
    /// A full TCP socket that is not listening.
    Connected(*mut bpf_sock),
    /// A listening TCP socket: it sees the first packets of every
    /// connection to its port.
    Listener(*mut bpf_sock),
    /// A request socket (a SYN-ACK's) or one in TIME_WAIT: only TCP makes
    /// them.
    PartialTcp,
    /// Another protocol's socket, or none (`BPF_PROG_TEST_RUN` gives a
    /// socket of no protocol).
    Other,
}

#[inline(always)]
fn packet_socket(ctx: &SkBuffContext) -> PacketSocket {
    // SAFETY: as in `tcp_socket`.
    let sk = unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return PacketSocket::Other;
    }
    // SAFETY: a helper on the context's socket pointer.
    let full = unsafe { bpf_sk_fullsock(sk) };
    if full.is_null() {
        return PacketSocket::PartialTcp;
    }
    // SAFETY: fields of a full socket, checked by the verifier.
    let (protocol, state) = unsafe { ((*full).protocol, (*full).state) };
    if protocol != u32::from(PROTO_TCP) {
        PacketSocket::Other
    } else if state == BPF_TCP_LISTEN {
        PacketSocket::Listener(full)
    } else {
        PacketSocket::Connected(full)
    }
}

/// The local end of a packet: its socket's cgroup and the workload that
/// holds it, if any.
#[derive(Clone, Copy)]
struct LocalEnd {
    cgroup_id: u64,
    /// `workload` is `IDENTITY_NONE` when no workload holds the cgroup (a
    /// plain value, see `judge::local_entry`).
    entry: CgroupEntry,
}

impl LocalEnd {
    /// Not looked for yet (no cgroup has this id: ids are inode numbers).
    const UNKNOWN: LocalEnd = LocalEnd {
        cgroup_id: u64::MAX,
        entry: judge::NO_ENTRY,
    };

    #[inline(always)]
    fn is_unknown(&self) -> bool {
        self.cgroup_id == u64::MAX
    }

    #[inline(always)]
    fn of(ctx: &SkBuffContext, cfg: &Config) -> LocalEnd {
        let skb = ctx.skb.skb;
        // SAFETY: helpers on the program's own context.
        let cgroup_id = unsafe { bpf_skb_cgroup_id(skb) };
        let entry = judge::find_local_entry(cfg.active_slot, cgroup_id, |level| unsafe {
            bpf_skb_ancestor_cgroup_id(skb, level)
        });
        LocalEnd { cgroup_id, entry }
    }

    #[inline(always)]
    fn workload(&self) -> Option<CgroupEntry> {
        (self.entry.workload != IDENTITY_NONE).then_some(self.entry)
    }
}

/// Whether a packet of a TCP socket in no workload passes as it is, under
/// `unmanaged = allow`: such a socket is allowed whatever its other end,
/// and finding it again costs less than remembering it (an LRU insert for
/// a listener's SYN, socket storage for an accepted connection, and for
/// every packet the lookups of a flow that cannot be there). The other
/// end, when it is a workload of this host, judges its own packets. A
/// connection that lasts past [`SEGMENTS_BEFORE_STORAGE`] is judged and
/// its flow kept on its socket, where its later packets find it sooner.
/// Not for UDP, whose datagrams to a local socket are judged for their
/// receiver at their send.
#[inline(always)]
fn unmanaged_passes(cfg: &Config, socket: PacketSocket) -> bool {
    judge::unmanaged_mode(cfg) == MODE_ALLOW
        && match socket {
            PacketSocket::Connected(sk) => !long_lived(sk),
            PacketSocket::Listener(_) | PacketSocket::PartialTcp => true,
            PacketSocket::Other => false,
        }
}

/// Where a packet's flow is kept: on its connected TCP socket, or in the
/// shared `FLOWS` table (other protocols, listening sockets, and packets the
/// kernel gives no full socket, such as `BPF_PROG_TEST_RUN`'s).
#[derive(Clone, Copy)]
enum Store {
    Socket(*mut bpf_sock),
    Table,
}

#[inline(always)]
fn store_of(ctx: &SkBuffContext, p: &Packet) -> Store {
    if p.protocol != PROTO_TCP {
        return Store::Table;
    }
    match connected_tcp_socket(ctx) {
        Some(sk) => Store::Socket(sk),
        None => Store::Table,
    }
}

/// The packet's socket when it is a full TCP socket that is not listening
/// (a listener sees the first packets of every connection to its port).
#[inline(always)]
fn connected_tcp_socket(ctx: &SkBuffContext) -> Option<*mut bpf_sock> {
    tcp_socket(ctx)
        .filter(|&(_, state)| state != BPF_TCP_LISTEN)
        .map(|(sk, _)| sk)
}

/// The packet's socket when it is a full TCP socket, and its state.
#[inline(always)]
fn tcp_socket(ctx: &SkBuffContext) -> Option<(*mut bpf_sock, u32)> {
    // SAFETY: reading the program's own context; the verifier types the
    // field as a socket pointer that may be null.
    let sk = unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return None;
    }
    // SAFETY: a helper on the context's socket pointer.
    let full = unsafe { bpf_sk_fullsock(sk) };
    if full.is_null() {
        return None;
    }
    // SAFETY: fields of a full socket, checked by the verifier.
    let (protocol, state) = unsafe { ((*full).protocol, (*full).state) };
    (protocol == u32::from(PROTO_TCP)).then_some((full, state))
}

/// The local workload and action of the socket's connection when they are
/// known under the current generation: from the flow on the socket, or,
/// for a connection without one, from the verdict cache. A SYN needs no
/// check here: `connect4|6` remove the socket's flow before every
/// connection it opens (see `sock_addr.rs`), so a flow found here is the
/// connection's own.
#[inline(always)]
fn known_connection(
    ctx: &SkBuffContext,
    cfg: &Config,
    sk: *mut bpf_sock,
) -> Option<(Identity, u8)> {
    // SAFETY: `sk` is a full socket (see `connected_tcp_socket`).
    let Some(stored) = (unsafe { maps::SOCKET_FLOWS.get(sk) }) else {
        let flow = cached_connection(ctx, cfg, sk)?;
        if long_lived(sk) {
            // From here on the flow on the socket is cheaper to find.
            // SAFETY: as above. Without memory for it, the cache serves.
            let _ = unsafe { maps::SOCKET_FLOWS.set(sk, &flow) };
        }
        return Some((flow.local, ACTION_ALLOW));
    };
    // SAFETY: the socket's storage, which lives as long as the socket.
    let flow = unsafe { &*stored };
    (flow.generation == cfg.generation).then_some((flow.local, flow.action))
}

/// Segments a connection sends and receives before its flow goes onto its
/// socket. A short connection (a request and its answer) stays below and
/// never pays for the storage; a longer one pays once, and its packets
/// then find their flow on the socket, which touches fewer cache lines
/// than the verdict cache (a packet after an idle wait finds them cold).
const SEGMENTS_BEFORE_STORAGE: u32 = 16;

/// Whether a connection has carried enough segments to keep its flow.
#[inline(always)]
fn long_lived(sk: *mut bpf_sock) -> bool {
    // SAFETY: a helper on a full socket; it returns null for another
    // protocol than TCP.
    let tcp = unsafe { bpf_tcp_sock(sk) };
    if tcp.is_null() {
        return false;
    }
    // SAFETY: fields of the TCP socket, checked by the verifier.
    let (sent, received) = unsafe { ((*tcp).segs_out, (*tcp).segs_in) };
    sent.saturating_add(received) >= SEGMENTS_BEFORE_STORAGE
}

/// The flow of a connection that `connect()` opened, when the verdict cache
/// holds its destination (allowed for the socket's cgroup under the
/// current generation). Such a connection's verdict is that of its
/// destination, which is why it needs no flow of its own. A connection a
/// listener accepted is never taken for one: the cache holds what a
/// workload may open, not what it may accept.
#[inline(always)]
fn cached_connection(ctx: &SkBuffContext, cfg: &Config, sk: *mut bpf_sock) -> Option<FlowValue> {
    // First: an accepted socket (most of those that get here without a
    // flow) is told apart from its port, before the cache line of a slot
    // is read.
    if !opened_by_connect(sk) {
        return None;
    }
    let (family, addr, port) = destination(sk)?;
    // SAFETY: a helper on the program's own context: the socket's cgroup,
    // which `connect4|6` keyed the verdict by (the process's, unless the
    // socket moved between processes: then a miss).
    let cgroup_id = unsafe { bpf_skb_cgroup_id(ctx.skb.skb) };
    let cached = maps::cached_verdict(CachedVerdict::slot(cgroup_id, &addr, port, PROTO_TCP));
    cached
        .matches(cgroup_id, family, PROTO_TCP, &addr, port, cfg.generation)
        .then_some(FlowValue {
            generation: cached.generation,
            local: cached.local,
            remote: cached.remote,
            rule: cached.rule,
            cgroup_id,
            last_event_ns: 0,
            action: ACTION_ALLOW,
            direction: DIRECTION_EGRESS,
            service_port: port,
            quiet_until: 0,
        })
}

/// Where a connected socket is connected to: family, address (network
/// order words, an IPv4 address in the first) and port, as `connect4|6`
/// key the verdict cache (an IPv4-mapped IPv6 address as IPv4).
#[inline(always)]
fn destination(sk: *mut bpf_sock) -> Option<(u8, [u32; 4], u16)> {
    // SAFETY: fields of a full socket, checked by the verifier.
    let s = unsafe { &*sk };
    let port = u16::from_be(s.dst_port);
    if s.family == AF_INET {
        return Some((4, [s.dst_ip4, 0, 0, 0], port));
    }
    if s.family != AF_INET6 {
        return None;
    }
    let words = [s.dst_ip6[0], s.dst_ip6[1], s.dst_ip6[2], s.dst_ip6[3]];
    let (family, addr) = ipv4_unmapped(6, words);
    Some((family, addr, port))
}

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

/// Marks the port of the listener a SYN reached, when `post_bind4|6` did
/// not: a socket that listens without `bind()` gets its port from the
/// kernel without passing them, and the sockets it accepts must not take
/// the verdict cache either (see [`opened_by_connect`]). The bit is only
/// written when unset; it stays after the listener closes, which costs
/// a client that later gets this port only the slower path.
#[inline(always)]
fn mark_listener_port(ctx: &SkBuffContext, port: u16) {
    if !maps::tcp_port_bound(port)
        && tcp_socket(ctx).is_some_and(|(_, state)| state == BPF_TCP_LISTEN)
    {
        maps::mark_tcp_port(port, true);
    }
}

/// Whether a connected TCP socket opened its connection with `connect()`
/// rather than being accepted by a listener: an accepted socket has its
/// listener's port, which a socket bound (`TCP_BOUND_PORT_BITS`, in any
/// network namespace); a client usually has a port nobody bound, or one it
/// bound itself (then `SOCKET_BINDS` is on it: an accepted socket never
/// carries its listener's storage).
#[inline(always)]
fn opened_by_connect(sk: *mut bpf_sock) -> bool {
    // SAFETY: a field of a full socket (host byte order).
    let local_port = unsafe { (*sk).src_port } as u16;
    // SAFETY: `sk` is a full socket.
    !maps::tcp_port_bound(local_port) || unsafe { maps::SOCKET_BINDS.get(sk) }.is_some()
}

/// The socket at the other end of a connection to one of this host's own
/// addresses, in this packet's network namespace: the one a packet of the
/// flow's 4-tuple would be delivered to (a listener, a connected socket,
/// or a bound UDP socket), and its workload. A socket in another namespace
/// is another machine's.
#[inline(always)]
fn peer_socket(ctx: &SkBuffContext, slot: u32, key: &FlowKey) -> PeerSocket {
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    let size = if key.family == 4 {
        tuple.__bindgen_anon_1.ipv4 = bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 {
            saddr: word(&key.local_addr, 0),
            daddr: word(&key.remote_addr, 0),
            sport: key.local_port.to_be(),
            dport: key.remote_port.to_be(),
        };
        size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1>()
    } else {
        tuple.__bindgen_anon_1.ipv6 = bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2 {
            saddr: [0, 1, 2, 3].map(|i| word(&key.local_addr, i)),
            daddr: [0, 1, 2, 3].map(|i| word(&key.remote_addr, i)),
            sport: key.local_port.to_be(),
            dport: key.remote_port.to_be(),
        };
        size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2>()
    } as u32;
    // `BPF_F_CURRENT_NETNS`: the packet's own namespace.
    const CURRENT_NETNS: u64 = u64::MAX;
    // SAFETY: helpers on the program's own context and a tuple of `size`
    // bytes on the stack. A socket found is released below on every path.
    let sk = unsafe {
        match key.protocol {
            PROTO_TCP => bpf_sk_lookup_tcp(ctx.as_ptr(), &mut tuple, size, CURRENT_NETNS, 0),
            PROTO_UDP => bpf_sk_lookup_udp(ctx.as_ptr(), &mut tuple, size, CURRENT_NETNS, 0),
            _ => return PeerSocket::NONE,
        }
    };
    if sk.is_null() {
        return PeerSocket::NONE;
    }
    // SAFETY: `sk` is the referenced socket the lookup returned.
    let cgroup_id = unsafe { bpf_sk_cgroup_id(sk.cast()) };
    let entry = judge::find_local_entry(slot, cgroup_id, |level| unsafe {
        bpf_sk_ancestor_cgroup_id(sk.cast(), level)
    });
    // SAFETY: as above; released once.
    unsafe { bpf_sk_release(sk.cast()) };
    PeerSocket { cgroup_id, entry }
}

/// Word `i` of an address as network-order bytes.
#[inline(always)]
fn word(addr: &[u8; 16], i: usize) -> u32 {
    let b = i * 4;
    u32::from_ne_bytes([addr[b], addr[b + 1], addr[b + 2], addr[b + 3]])
}

impl Store {
    /// The packet's flow, if one is known. A socket without one yet may
    /// inherit its listener's, which the first packets recorded in
    /// `FLOWS`: it moves onto the socket, so later packets find it there.
    #[inline(always)]
    fn find(self, p: &Packet, key: &FlowKey) -> Option<*mut FlowValue> {
        let Store::Socket(sk) = self else {
            return maps::FLOWS.get_ptr_mut(key);
        };
        // SAFETY: `sk` is a full socket (see `store_of`).
        if let Some(stored) = unsafe { maps::SOCKET_FLOWS.get(sk) } {
            return Some(stored);
        }
        // A connection this socket opens has no earlier record.
        if p.is_tcp_syn() {
            return None;
        }
        let inherited = maps::FLOWS.get_ptr_mut(key)?;
        // SAFETY: a pointer into the map value (see `judge_packet`).
        let flow = unsafe { *inherited };
        // SAFETY: as above.
        match unsafe { maps::SOCKET_FLOWS.set(sk, &flow) } {
            Some(stored) => Some(stored),
            None => Some(inherited),
        }
    }

    /// Records a judged flow: on its socket, or in `FLOWS` (also when the
    /// socket has no memory for it).
    #[inline(always)]
    fn record(self, key: &FlowKey, flow: &FlowValue) {
        if let Store::Socket(sk) = self {
            // SAFETY: `sk` is a full socket (see `store_of`).
            if unsafe { maps::SOCKET_FLOWS.set(sk, flow) }.is_some() {
                return;
            }
        }
        // A full LRU map evicts; an error here only costs a re-judgement.
        let _ = maps::FLOWS.insert(key, flow, 0);
    }
}

#[inline(always)]
fn judge_packet(
    ctx: &SkBuffContext,
    cfg: &Config,
    p: &Packet,
    key: &FlowKey,
    direction: u8,
    known_local: LocalEnd,
) -> i32 {
    let mut last_event_ns = 0;
    let mut quiet_until_jiffies = 0;
    let mut opener_service = None;
    if direction == DIRECTION_INGRESS && p.is_tcp_syn() {
        mark_listener_port(ctx, key.local_port);
    }
    let store = store_of(ctx, p);
    if let Some(flow) = store.find(p, key) {
        // SAFETY: a pointer into a map value: the LRU may recycle a `FLOWS`
        // entry concurrently, which at worst misjudges one packet of a flow
        // that was being evicted anyway; a socket's storage lives as long as
        // the socket, which the packet holds.
        let current = unsafe { *flow };
        // A SYN starts a new connection even if the 4-tuple was used before.
        let restart = p.is_tcp_syn();
        if current.generation == cfg.generation && !restart {
            maps::bump_counter(current.local, current.action);
            if current.action != ACTION_DENY {
                return PASS;
            }
            // Within the quiet period after an event (one inlined jiffies
            // load), nothing else is due: the usual denied packet stops here.
            if quiet(cfg, current.quiet_until) {
                return DROP;
            }
            // Otherwise the coarse clock (same base, a tick's resolution)
            // decides; the precise one is read only for the event itself.
            if event_due(current.action, current.last_event_ns, coarse_now_ns()) {
                let now = now_ns();
                // SAFETY: as above.
                unsafe {
                    (*flow).last_event_ns = now;
                    (*flow).quiet_until = quiet_until(cfg);
                }
                send_event(cfg, key, &current, now, direction);
            }
            return DROP;
        }
        // A retransmitted SYN keeps the rate limit; a new policy may change
        // the verdict, which is worth a new event at once.
        if current.generation == cfg.generation {
            last_event_ns = current.last_event_ns;
            quiet_until_jiffies = current.quiet_until;
        }
        if !restart && p.class != CLASS_ICMP_ERROR {
            opener_service = Some((current.direction, current.service_port));
        }
    }
    maps::bump_global(GLOBAL_COUNTER_NEW_FLOWS);
    let (opener, service_port) = match (opener_service, store) {
        (Some(known), _) => known,
        // A connection that `connect()` opened, whose flow is not stored
        // (the verdict cache knew it, until a policy change or another
        // destination took its slot): it is judged as what it is, whatever
        // its ports, rather than guessed from them.
        (None, Store::Socket(sk)) if opened_by_connect(sk) => (DIRECTION_EGRESS, key.remote_port),
        (None, _) => opener_and_service(p, key, direction),
    };

    let local_end = if known_local.is_unknown() {
        LocalEnd::of(ctx, cfg)
    } else {
        known_local
    };
    let cgroup_id = local_end.cgroup_id;
    let local = local_end.workload();
    let remote = judge::resolve_remote(cfg.active_slot, key, || {
        peer_socket(ctx, cfg.active_slot, key)
    });
    let mut v = judge::judge(
        cfg,
        local,
        opener,
        key.protocol,
        &remote,
        service_port,
        key.remote_port,
    );
    if opener == DIRECTION_EGRESS
        && key.protocol == PROTO_UDP
        && remote.local_socket
        && v.action != ACTION_DENY
    {
        // A datagram to a socket of this host that its receiver refuses is
        // refused at its send, as `sendmsg()` is (EPERM), not dropped at
        // the receiver: a connected UDP socket sends without that hook.
        let receiver = judge::judge(
            cfg,
            remote.local_entry,
            DIRECTION_INGRESS,
            PROTO_UDP,
            &Remote {
                identity: v.local,
                external: false,
                local_entry: local,
                local_socket: true,
                peer_cgroup: cgroup_id,
            },
            service_port,
            key.local_port,
        );
        if receiver.action == ACTION_DENY {
            v = judge::Verdict {
                action: ACTION_DENY,
                rule: receiver.rule,
                local: v.local,
            };
        }
    }
    let now = now_ns();
    let mut flow = FlowValue {
        generation: cfg.generation,
        local: v.local,
        remote: remote.identity,
        rule: v.rule,
        cgroup_id,
        last_event_ns,
        action: v.action,
        direction: opener,
        service_port,
        quiet_until: quiet_until_jiffies,
    };
    if event_due(v.action, last_event_ns, now) {
        flow.last_event_ns = now;
        flow.quiet_until = quiet_until(cfg);
        send_event(cfg, key, &flow, now, direction);
    }
    store.record(key, &flow);
    maps::bump_counter(v.local, v.action);
    if v.action == ACTION_DENY { DROP } else { PASS }
}
