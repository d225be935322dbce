//! `cgroup_skb` ingress and egress: the per-packet path. One flow lookup
//! (on the TCP socket itself, else in `FLOWS`) decides every packet of a
//! known connection under the current policy generation; only the first
//! packet of a connection (or the first after a policy change) runs the full
//! judgement. A TCP connection that `connect()` opened to an allowed remote
//! destination is known without a flow of its own: the verdict cache that
//! `connect4|6` filled holds its destination.

mod bytes;
mod flow_store;
mod socket;

use aya_ebpf::programs::SkBuffContext;
use enforcer_common::{
    config::Config,
    counters::{GLOBAL_COUNTER_DROPPED, GLOBAL_COUNTER_NEW_FLOWS, GLOBAL_COUNTER_PACKETS},
    flow::{FlowKey, FlowValue},
    identity::IDENTITY_HOST,
    packet::{self, Packet, PacketClass, TCP_ACK, TCP_SYN},
    protocol::Protocol,
    verdict::{Action, Direction},
    workload::Mode,
};

use crate::{
    judge::{self, Remote, coarse_now_ns, event_due, now_ns, quiet, quiet_until, send_event},
    maps,
};
use bytes::Skb;
use flow_store::{Store, known_connection, store_of};
use socket::{
    LocalEnd, PacketSocket, long_lived, mark_listener_port, opened_by_connect, packet_socket,
    peer_socket,
};

const PASS: i32 = 1;
const DROP: i32 = 0;

/// Who opened a connection we see for the first time at this packet, and
/// its service port. A connection already running when the enforcer
/// started (mid-stream TCP) is assumed to be served on the lower port.
#[inline(always)]
fn opener_and_service(p: &Packet, key: &FlowKey, direction: Direction) -> (u8, u16) {
    if p.class == PacketClass::IcmpError {
        return (Direction::Egress as u8, key.remote_port);
    }
    if p.class == PacketClass::EchoReply {
        return (direction.opposite() as u8, 0);
    }
    if p.protocol == Protocol::Tcp as u8 && p.tcp_flags & TCP_SYN == 0 {
        return if key.remote_port <= key.local_port {
            (Direction::Egress as u8, key.remote_port)
        } else {
            (Direction::Ingress as u8, key.local_port)
        };
    }
    if p.protocol == Protocol::Tcp as u8 && p.tcp_flags & TCP_ACK != 0 {
        // SYN-ACK: the other end opened it, to its source port.
        return (direction.opposite() as u8, p.sport);
    }
    (direction as u8, p.dport)
}

#[inline(always)]
pub fn handle(ctx: &SkBuffContext, direction: Direction) -> i32 {
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
        && action != Action::Deny as u8
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
            if direction == Direction::Ingress
                && let PacketSocket::Listener(sk) = socket
            {
                // As `judge_packet` does for the SYN (see `mark_listener_port`).
                // SAFETY: a field of a full socket (host byte order).
                let port = unsafe { (*sk).src_port } as u16;
                if !maps::tcp_port_bound(port) {
                    maps::mark_tcp_port(port, true);
                }
            }
            maps::bump_counter(IDENTITY_HOST, Action::Allow as u8);
            return PASS;
        }
        known_local = local;
    }
    let Some(p) = packet::parse(&Skb(ctx)) else {
        // Not IP or truncated: the stack drops what it cannot parse itself.
        return PASS;
    };
    if p.class == PacketClass::NeighbourDiscovery {
        return PASS;
    }
    let key = FlowKey::of_packet(&p, direction);
    let verdict = judge_packet(ctx, &cfg, &p, &key, direction, known_local);
    if verdict == DROP {
        maps::bump_global(GLOBAL_COUNTER_DROPPED);
    }
    verdict
}

/// Whether a packet of a TCP socket in no workload passes as it is, under
/// `unmanaged = allow`: such a socket is allowed whatever its other end,
/// and finding it again costs less than remembering it (an LRU insert for
/// a listener's SYN, socket storage for an accepted connection, and for
/// every packet the lookups of a flow that cannot be there). The other
/// end, when it is a workload of this host, judges its own packets. A
/// connection that lasts past `socket::SEGMENTS_BEFORE_STORAGE` is judged and
/// its flow kept on its socket, where its later packets find it sooner.
/// Not for UDP, whose datagrams to a local socket are judged for their
/// receiver at their send.
#[inline(always)]
fn unmanaged_passes(cfg: &Config, socket: PacketSocket) -> bool {
    judge::unmanaged_mode(cfg) == Mode::Off
        && match socket {
            PacketSocket::Connected(sk) => !long_lived(sk),
            PacketSocket::Listener(_) | PacketSocket::PartialTcp => true,
            PacketSocket::Other => false,
        }
}

#[inline(always)]
fn judge_packet(
    ctx: &SkBuffContext,
    cfg: &Config,
    p: &Packet,
    key: &FlowKey,
    direction: Direction,
    known_local: LocalEnd,
) -> i32 {
    let mut last_event_ns = 0;
    let mut quiet_until_jiffies = 0;
    let mut opener_service = None;
    if direction == Direction::Ingress && p.is_tcp_syn() {
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
            if current.action != Action::Deny as u8 {
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
        if !restart && p.class != PacketClass::IcmpError {
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
        (None, Store::Socket(sk)) if opened_by_connect(sk) => {
            (Direction::Egress as u8, key.remote_port)
        }
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
    if opener == Direction::Egress as u8
        && key.protocol == Protocol::Udp as u8
        && remote.local_socket
        && v.action != Action::Deny as u8
    {
        // A datagram to a socket of this host that its receiver refuses is
        // refused at its send, as `sendmsg()` is (EPERM), not dropped at
        // the receiver: a connected UDP socket sends without that hook.
        let receiver = judge::judge(
            cfg,
            remote.local_entry,
            Direction::Ingress as u8,
            Protocol::Udp as u8,
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
        if receiver.action == Action::Deny as u8 {
            v = judge::Verdict {
                action: Action::Deny as u8,
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
    if v.action == Action::Deny as u8 {
        DROP
    } else {
        PASS
    }
}
