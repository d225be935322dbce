//! The sockets of a packet: its own (what kind, and the workload holding
//! its cgroup), and the one at the other end when that is on this host.

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
    cached_verdict::ipv4_unmapped, config::Config, flow::FlowKey, identity::IDENTITY_NONE,
    protocol::Protocol, workload::CgroupEntry,
};

use crate::{
    judge::{self, PeerSocket},
    maps,
};

/// The packet's socket, as far as the per-packet path tells them apart.
#[derive(Clone, Copy)]
pub(super) enum PacketSocket {
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
pub(super) fn packet_socket(ctx: &SkBuffContext) -> PacketSocket {
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
    if protocol != u32::from(Protocol::Tcp as u8) {
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
pub(super) struct LocalEnd {
    pub(super) cgroup_id: u64,
    /// `workload` is `IDENTITY_NONE` when no workload holds the cgroup (a
    /// plain value, see `judge::local_entry`).
    pub(super) entry: CgroupEntry,
}

impl LocalEnd {
    /// Not looked for yet (no cgroup has this id: ids are inode numbers).
    pub(super) const UNKNOWN: LocalEnd = LocalEnd {
        cgroup_id: u64::MAX,
        entry: judge::NO_ENTRY,
    };

    #[inline(always)]
    pub(super) fn is_unknown(&self) -> bool {
        self.cgroup_id == u64::MAX
    }

    #[inline(always)]
    pub(super) fn of(ctx: &SkBuffContext, cfg: &Config) -> LocalEnd {
        let skb = ctx.skb.skb;
        // SAFETY: helpers on the program's own context.
        let cgroup_id = unsafe { bpf_skb_cgroup_id(skb) };
        let entry = judge::find_local_entry(cfg.active_slot, cgroup_id, |level| unsafe {
            bpf_skb_ancestor_cgroup_id(skb, level)
        });
        LocalEnd { cgroup_id, entry }
    }

    #[inline(always)]
    pub(super) fn workload(&self) -> Option<CgroupEntry> {
        (self.entry.workload != IDENTITY_NONE).then_some(self.entry)
    }
}

/// The packet's socket when it is a full TCP socket that is not listening
/// (a listener sees the first packets of every connection to its port).
#[inline(always)]
pub(super) fn connected_tcp_socket(ctx: &SkBuffContext) -> Option<*mut bpf_sock> {
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
    (protocol == u32::from(Protocol::Tcp as u8)).then_some((full, state))
}

/// Segments a connection sends and receives before its flow goes onto its
/// socket. A short connection (a request and its answer) stays below and
/// never pays for the storage; a longer one pays once, and its packets
/// then find their flow on the socket, which touches fewer cache lines
/// than the verdict cache (a packet after an idle wait finds them cold).
pub(super) const SEGMENTS_BEFORE_STORAGE: u32 = 16;

/// Whether a connection has carried enough segments to keep its flow.
#[inline(always)]
pub(super) fn long_lived(sk: *mut bpf_sock) -> bool {
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

/// Where a connected socket is connected to: family, address (network
/// order words, an IPv4 address in the first) and port, as `connect4|6`
/// key the verdict cache (an IPv4-mapped IPv6 address as IPv4).
#[inline(always)]
pub(super) fn destination(sk: *mut bpf_sock) -> Option<(u8, [u32; 4], u16)> {
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
pub(super) fn mark_listener_port(ctx: &SkBuffContext, port: u16) {
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
pub(super) fn opened_by_connect(sk: *mut bpf_sock) -> bool {
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
pub(super) fn peer_socket(ctx: &SkBuffContext, slot: u32, key: &FlowKey) -> PeerSocket {
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
        match Protocol::from_raw(key.protocol) {
            Some(Protocol::Tcp) => {
                bpf_sk_lookup_tcp(ctx.as_ptr(), &mut tuple, size, CURRENT_NETNS, 0)
            }
            Some(Protocol::Udp) => {
                bpf_sk_lookup_udp(ctx.as_ptr(), &mut tuple, size, CURRENT_NETNS, 0)
            }
            Some(Protocol::Icmp) | None => return PeerSocket::NONE,
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
