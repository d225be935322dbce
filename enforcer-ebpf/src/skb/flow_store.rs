//! Where a packet's flow is kept and found: on its connected TCP socket,
//! in the shared `FLOWS` table, or, for a connection that `connect()`
//! opened, in the verdict cache.

use aya_ebpf::{bindings::bpf_sock, helpers::bpf_skb_cgroup_id, programs::SkBuffContext};
use enforcer_common::{
    cached_verdict::CachedVerdict,
    config::Config,
    flow::{FlowKey, FlowValue},
    identity::Identity,
    packet::Packet,
    protocol::Protocol,
    verdict::{Action, Direction},
};

use super::socket::{connected_tcp_socket, destination, long_lived, opened_by_connect};
use crate::maps;

/// Where a packet's flow is kept: on its connected TCP socket, or in the
/// shared `FLOWS` table (other protocols, listening sockets, and packets the
/// kernel gives no full socket, such as `BPF_PROG_TEST_RUN`'s).
#[derive(Clone, Copy)]
pub(super) enum Store {
    Socket(*mut bpf_sock),
    Table,
}

#[inline(always)]
pub(super) fn store_of(ctx: &SkBuffContext, p: &Packet) -> Store {
    if p.protocol != Protocol::Tcp as u8 {
        return Store::Table;
    }
    match connected_tcp_socket(ctx) {
        Some(sk) => Store::Socket(sk),
        None => Store::Table,
    }
}

impl Store {
    /// The packet's flow, if one is known. A socket without one yet may
    /// inherit its listener's, which the first packets recorded in
    /// `FLOWS`: it moves onto the socket, so later packets find it there.
    #[inline(always)]
    pub(super) fn find(self, p: &Packet, key: &FlowKey) -> Option<*mut FlowValue> {
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
    pub(super) fn record(self, key: &FlowKey, flow: &FlowValue) {
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

/// The local workload and action of the socket's connection when they are
/// known under the current generation: from the flow on the socket, or,
/// for a connection without one, from the verdict cache. A SYN needs no
/// check here: `connect4|6` remove the socket's flow before every
/// connection it opens (see `sock_addr.rs`), so a flow found here is the
/// connection's own.
#[inline(always)]
pub(super) fn known_connection(
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
        return Some((flow.local, Action::Allow as u8));
    };
    // SAFETY: the socket's storage, which lives as long as the socket.
    let flow = unsafe { &*stored };
    (flow.generation == cfg.generation).then_some((flow.local, flow.action))
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
    let cached = maps::cached_verdict(CachedVerdict::slot(
        cgroup_id,
        &addr,
        port,
        Protocol::Tcp as u8,
    ));
    cached
        .matches(
            cgroup_id,
            family,
            Protocol::Tcp as u8,
            &addr,
            port,
            cfg.generation,
        )
        .then_some(FlowValue {
            generation: cached.generation,
            local: cached.local,
            remote: cached.remote,
            rule: cached.rule,
            cgroup_id,
            last_event_ns: 0,
            action: Action::Allow as u8,
            direction: Direction::Egress as u8,
            service_port: port,
            quiet_until: 0,
        })
}
