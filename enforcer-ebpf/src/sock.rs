//! `cgroup/post_bind4|6` and `cgroup/sock_release`: remember which cgroup
//! owns each bound port of each network namespace, so that a connection to
//! one of this host's own addresses from the same namespace is judged
//! against the receiving workload.

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_current_cgroup_id, bpf_get_netns_cookie, bpf_get_socket_cookie},
    programs::SockContext,
};
use enforcer_common::{
    ports::{BoundPort, BoundPortKey},
    protocol::Protocol,
};

use crate::maps;

/// `cgroup/sock` hooks must return 1 or the operation fails.
const CONTINUE: i32 = 1;

/// The bound port of a socket in its network namespace; only readable in
/// `post_bind4|6`.
#[inline(always)]
fn port_key(ctx: &SockContext) -> Option<BoundPortKey> {
    // SAFETY: the verifier checks each context field access.
    let sk = unsafe { &*ctx.sock };
    let protocol = sk.protocol as u8;
    let port = sk.src_port as u16;
    if port == 0 || (protocol != Protocol::Tcp as u8 && protocol != Protocol::Udp as u8) {
        return None;
    }
    Some(BoundPortKey {
        // SAFETY: a helper on the program's own context.
        netns: unsafe { bpf_get_netns_cookie(ctx.as_ptr()) },
        protocol,
        _pad: 0,
        port,
        _pad2: 0,
    })
}

#[inline(always)]
pub fn bound(ctx: &SockContext) -> i32 {
    let Some(key) = port_key(ctx) else {
        return CONTINUE;
    };
    // SAFETY: helpers on the program's own context.
    let value = unsafe {
        BoundPort {
            cgroup_id: bpf_get_current_cgroup_id(),
            cookie: bpf_get_socket_cookie(ctx.as_ptr()),
        }
    };
    let _ = maps::BOUND_PORTS.insert(key, value, 0);
    if key.protocol == Protocol::Tcp as u8 {
        // Even when the table is full: a port marked without an entry is
        // only a slower path for clients that happen to use it.
        maps::mark_tcp_port(key.port, true);
    }
    // SAFETY: the context is the socket (`cgroup_sock` programs pass it as
    // the helper's socket argument).
    let _ = unsafe { maps::SOCKET_BINDS.set(ctx.sock, &key) };
    CONTINUE
}

#[inline(always)]
pub fn released(ctx: &SockContext) -> i32 {
    // SAFETY: as in `bound`; the value is plain integers. The kernel frees
    // the storage with the socket.
    let Some(key) = (unsafe { maps::SOCKET_BINDS.get(ctx.sock) }).map(|p| unsafe { *p }) else {
        return CONTINUE;
    };
    // SAFETY: helper on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // Another socket may have bound the port since (SO_REUSEPORT, or after
    // this one stopped listening): forget the port only if it is ours. Its
    // bit in `TCP_BOUND_PORT_BITS` stays: another namespace may hold the
    // same port, and a user of one namespace must not be able to clear a
    // bit that another's listener needs; the daemon clears the bits of
    // ports no namespace holds any more.
    if maps::bound_port(key.netns, key.protocol, key.port).is_some_and(|b| b.cookie == cookie) {
        let _ = maps::BOUND_PORTS.remove(key);
    }
    CONTINUE
}
