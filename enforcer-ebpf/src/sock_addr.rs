//! `cgroup/connect4|6` and `cgroup/sendmsg4|6`: judge an outgoing TCP
//! connection or UDP datagram before any packet exists, so that a denied
//! one fails at once with EPERM instead of timing out. When the destination
//! is a socket on this host (in the caller's network namespace), the
//! receiver's ingress is judged too. An allowed remote destination goes
//! into the verdict cache, where the packets of the TCP connection find it
//! (see `skb/`).
//!
//! A UDP `connect()` sends nothing: it only picks a destination (iputils
//! `ping` and glibc's address sorting `connect()` a UDP socket to learn
//! which source address the route gives). It is not judged; the socket's
//! datagrams are, when they are sent (`skb/`: a refused one fails the
//! send with EPERM).

use aya_ebpf::{
    EbpfContext as _,
    helpers::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_netns_cookie,
    },
    programs::SockAddrContext,
};
use enforcer_common::{
    cached_verdict::{CachedVerdict, ipv4_unmapped},
    config::Config,
    counters::GLOBAL_COUNTER_CACHED_VERDICTS,
    flow::{FlowKey, FlowValue},
    protocol::Protocol,
    verdict::{Action, Direction},
};

use crate::{
    judge::{self, PeerSocket, Remote, Verdict, event_due, now_ns, send_event},
    maps,
};

/// Which hook runs: `connect()` or `sendmsg()`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Connect,
    Sendmsg,
}

const ALLOW: i32 = 1;
/// Returning 0 from these hooks makes the syscall fail with EPERM.
const REFUSE: i32 = 0;

#[inline(always)]
pub fn handle(ctx: &SockAddrContext, family: u8, hook: Hook) -> i32 {
    let Some(cfg) = maps::config() else {
        return ALLOW;
    };
    if cfg.enabled == 0 {
        return ALLOW;
    }
    // SAFETY: the context pointer is valid for the program's run; the
    // verifier checks each field access.
    let sa = unsafe { &*ctx.sock_addr };
    let protocol = sa.protocol as u8;
    if protocol != Protocol::Tcp as u8 && protocol != Protocol::Udp as u8 {
        // Ping sockets and raw sockets are judged per packet.
        return ALLOW;
    }
    if protocol == Protocol::Udp as u8 && hook == Hook::Connect {
        return ALLOW;
    }
    if protocol == Protocol::Udp as u8 {
        // A UDP socket that bound its own port is (usually) a server: its
        // datagrams are mostly replies to flows that its ingress already
        // judged, which only the per-packet program can see. Leave them to
        // it; an egress drop of a datagram still fails `sendmsg()` with
        // EPERM.
        // SAFETY: the context's socket, which the verifier types as a full
        // socket.
        if unsafe { maps::SOCKET_BINDS.get(sa.__bindgen_anon_1.sk) }.is_some() {
            return ALLOW;
        }
    }
    // Network byte order, word by word (see `CachedVerdict::addr`).
    let words = if family == 4 {
        [sa.user_ip4, 0, 0, 0]
    } else {
        [
            sa.user_ip6[0],
            sa.user_ip6[1],
            sa.user_ip6[2],
            sa.user_ip6[3],
        ]
    };
    let (family, addr) = ipv4_unmapped(family, words);
    let port = u16::from_be(sa.user_port as u16);
    // SAFETY: a helper without memory arguments.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    // A destination this cgroup was allowed to reach under this policy
    // needs no judgement: the usual case of a client that connects again
    // and again to the same service.
    let cache_index = CachedVerdict::slot(cgroup_id, &addr, port, protocol);
    let mut allowed = maps::cached_verdict(cache_index);
    if allowed.matches(cgroup_id, family, protocol, &addr, port, cfg.generation) {
        maps::bump_global(GLOBAL_COUNTER_CACHED_VERDICTS);
    } else {
        let attempt = Attempt {
            cgroup_id,
            // SAFETY: a helper on the program's own context.
            netns: unsafe { bpf_get_netns_cookie(ctx.as_ptr()) },
            addr,
            port,
            family,
            protocol,
        };
        match judge_attempt(&cfg, &attempt, &mut allowed) {
            Outcome::Refused => return REFUSE,
            Outcome::AllowedRemote => maps::cache_verdict(cache_index, &mut allowed),
            // Judged again at its SYN: a connection to this host records its
            // flow there, where the receiving end looks for it.
            Outcome::AllowedHere => {}
        }
    }
    if protocol == Protocol::Tcp as u8 {
        // The socket may hold the flow of an earlier connection (a connect
        // after `connect(AF_UNSPEC)`), which would decide this one's
        // packets: they must find the verdict cache or be judged afresh.
        // Nothing stored is the usual case, and costs one pointer test.
        // SAFETY: the context's socket field (a full socket for the
        // verifier).
        unsafe { maps::SOCKET_FLOWS.delete(sa.__bindgen_anon_1.sk) };
    }
    ALLOW
}

/// A connection or datagram about to be sent.
struct Attempt {
    cgroup_id: u64,
    /// The caller's network namespace: only its sockets are this host's
    /// sockets to it.
    netns: u64,
    addr: [u32; 4],
    port: u16,
    family: u8,
    protocol: u8,
}

enum Outcome {
    Refused,
    /// Allowed to a destination outside this host: the verdict is in
    /// `allowed`.
    AllowedRemote,
    /// Allowed otherwise: to this host, in audit mode, or by an exception.
    AllowedHere,
}

/// Judges an attempt for its sender and, when the destination is a socket
/// on this host, for its receiver; reports what it refuses or audits.
#[inline(always)]
fn judge_attempt(cfg: &Config, attempt: &Attempt, allowed: &mut CachedVerdict) -> Outcome {
    let Attempt {
        cgroup_id,
        netns,
        addr,
        port,
        family,
        protocol,
    } = *attempt;
    let key = FlowKey {
        family,
        protocol,
        // No local port yet: this key never collides with a real flow and
        // only rate-limits the events of refused attempts.
        local_port: 0,
        remote_port: port,
        _pad: 0,
        local_addr: [0; 16],
        remote_addr: address_bytes(&addr),
    };
    let slot = cfg.active_slot;
    let local = judge::local_entry(slot, cgroup_id, |level| unsafe {
        bpf_get_current_ancestor_cgroup_id(level)
    });
    let remote = judge::resolve_remote(slot, &key, || {
        match maps::bound_port(netns, protocol, port) {
            Some(bound) => PeerSocket {
                cgroup_id: bound.cgroup_id,
                entry: maps::cgroup_entry(slot, bound.cgroup_id).unwrap_or(judge::NO_ENTRY),
            },
            None => PeerSocket::NONE,
        }
    });
    let sender = judge::judge(
        cfg,
        local,
        Direction::Egress as u8,
        protocol,
        &remote,
        port,
        port,
    );
    if sender.action == Action::Deny as u8 || judge::event_due(sender.action, 0, 1) {
        refused(
            cfg,
            &key,
            &sender,
            remote.identity,
            cgroup_id,
            Direction::Egress,
        );
        if sender.action == Action::Deny as u8 {
            return Outcome::Refused;
        }
    }
    if remote.local_socket {
        // The receiver sees the sender as its workload (or `host`).
        let sender_as_remote = Remote {
            identity: sender.local,
            external: false,
            local_entry: local,
            local_socket: true,
            peer_cgroup: cgroup_id,
        };
        let receiver = judge::judge(
            cfg,
            remote.local_entry,
            Direction::Ingress as u8,
            protocol,
            &sender_as_remote,
            port,
            0,
        );
        if receiver.action == Action::Deny as u8 || judge::event_due(receiver.action, 0, 1) {
            refused(
                cfg,
                &key.mirrored(),
                &receiver,
                sender.local,
                remote.peer_cgroup,
                Direction::Ingress,
            );
            if receiver.action == Action::Deny as u8 {
                return Outcome::Refused;
            }
        }
    }
    if sender.action != Action::Allow as u8 || !remote.external {
        return Outcome::AllowedHere;
    }
    *allowed = CachedVerdict {
        cgroup_id,
        addr,
        port,
        family,
        protocol,
        generation: cfg.generation,
        local: sender.local,
        remote: remote.identity,
        rule: sender.rule,
        _pad: 0,
        seal: 0,
    };
    Outcome::AllowedRemote
}

/// An address as the bytes of its network-order words.
#[inline(always)]
fn address_bytes(words: &[u32; 4]) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    bytes[0..4].copy_from_slice(&words[0].to_ne_bytes());
    bytes[4..8].copy_from_slice(&words[1].to_ne_bytes());
    bytes[8..12].copy_from_slice(&words[2].to_ne_bytes());
    bytes[12..16].copy_from_slice(&words[3].to_ne_bytes());
    bytes
}

/// Reports a refused (or audited) attempt, at most once a second per
/// destination, through a pseudo-flow that no packet can match.
#[inline(always)]
fn refused(
    cfg: &Config,
    key: &FlowKey,
    v: &Verdict,
    remote: u32,
    cgroup_id: u64,
    direction: Direction,
) {
    let now = now_ns();
    // SAFETY: plain integers.
    let last = match maps::FLOWS.get_ptr(key).map(|p| unsafe { *p }) {
        // Same verdict under the same policy: rate-limited.
        Some(f) if f.generation == cfg.generation && f.action == v.action => f.last_event_ns,
        _ => 0,
    };
    if !event_due(v.action, last, now) {
        return;
    }
    let flow = FlowValue {
        generation: cfg.generation,
        local: v.local,
        remote,
        rule: v.rule,
        cgroup_id,
        last_event_ns: now,
        action: v.action,
        direction: direction as u8,
        service_port: if direction == Direction::Egress {
            key.remote_port
        } else {
            key.local_port
        },
        // A pseudo-flow: no packet takes the fast path through it.
        quiet_until: 0,
    };
    let _ = maps::FLOWS.insert(key, flow, 0);
    send_event(cfg, key, &flow, now, direction);
}
