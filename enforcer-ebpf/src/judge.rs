//! The verdict of a new connection: identities, built-in exceptions,
//! modes, and the verdict-trie lookup chain of `docs/dataplane.md`.

use aya_ebpf::helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns};
use enforcer_common::{
    config::Config,
    counters::GLOBAL_COUNTER_EVENTS_LOST,
    event::VerdictEvent,
    flow::{FlowKey, FlowValue},
    identity::{IDENTITY_ANY, IDENTITY_ANY_EXTERNAL, IDENTITY_HOST, IDENTITY_NONE, Identity},
    protocol::Protocol,
    verdict::{
        Action, Direction, RULE_BUILTIN, RULE_DEFAULT_DENY, RULE_MODE_OFF, RULE_UNMANAGED,
        VerdictKey,
    },
    workload::{CgroupEntry, Mode},
};

use crate::maps;

/// Deepest cgroup level searched for a workload ancestor.
pub const MAX_CGROUP_DEPTH: i32 = 16;

/// Events for one flow are sent at most this often.
const EVENT_INTERVAL_NS: u64 = 1_000_000_000;

/// The remote end of a connection.
#[derive(Clone, Copy)]
pub struct Remote {
    pub identity: Identity,
    /// From the address trie (a peer or `world`), not a local socket.
    pub external: bool,
    /// The cgroup entry of the local socket at the other end, if any.
    pub local_entry: Option<CgroupEntry>,
    /// The other end is a socket on this host that was found.
    pub local_socket: bool,
    /// That socket's cgroup (0 when none was found).
    pub peer_cgroup: u64,
}

/// The socket at the other end of a connection to this host's own
/// address, in the same network namespace, as the caller finds it. Plain
/// values with sentinels rather than `Option`s: LLVM may carry an
/// undefined payload of a `None` in a register, which the verifier rejects.
#[derive(Clone, Copy)]
pub struct PeerSocket {
    /// 0: no socket was found.
    pub cgroup_id: u64,
    /// Its workload's cgroup entry; `workload` is [`IDENTITY_NONE`] when it
    /// is in none.
    pub entry: CgroupEntry,
}

impl PeerSocket {
    pub const NONE: PeerSocket = PeerSocket {
        cgroup_id: 0,
        entry: NO_ENTRY,
    };
}

/// A cgroup entry meaning "no workload".
pub const NO_ENTRY: CgroupEntry = CgroupEntry {
    workload: IDENTITY_NONE,
    class: IDENTITY_NONE,
    mode: 0,
    _pad: [0; 3],
};

/// What was decided for a connection.
#[derive(Clone, Copy)]
pub struct Verdict {
    /// An [`Action`] byte: the kernel programs carry actions as the bytes
    /// the maps hold, and only compare them.
    pub action: u8,
    pub rule: u32,
    pub local: Identity,
}

/// Resolves the local workload: the cgroup itself, else its ancestors from
/// the deepest up (`ancestor(level)` returns 0 past the cgroup's own level).
#[inline(always)]
pub fn local_entry(
    slot: u32,
    cgroup_id: u64,
    ancestor: impl Fn(i32) -> u64,
) -> Option<CgroupEntry> {
    let entry = find_local_entry(slot, cgroup_id, ancestor);
    // Built from a value defined on every path: LLVM may otherwise carry an
    // undefined payload of `None` in a register, which the verifier rejects
    // as an uninitialised read.
    if entry.workload == IDENTITY_NONE {
        None
    } else {
        Some(entry)
    }
}

/// [`local_entry`], with `workload` [`IDENTITY_NONE`] when none is found.
#[inline(always)]
pub fn find_local_entry(slot: u32, cgroup_id: u64, ancestor: impl Fn(i32) -> u64) -> CgroupEntry {
    if let Some(e) = maps::cgroup_entry(slot, cgroup_id) {
        return e;
    }
    // From the root's children down, the deepest ancestor with an entry
    // winning. The walk ends at the cgroup's own level (its own id) or past
    // it (0): as many helper calls as the cgroup is deep, most cgroups
    // being two or three levels down, where walking up from the deepest
    // possible level took `MAX_CGROUP_DEPTH` for every cgroup of no
    // workload.
    let mut found = NO_ENTRY;
    let mut level = 1;
    while level <= MAX_CGROUP_DEPTH {
        let id = ancestor(level);
        if id == 0 || id == cgroup_id {
            break;
        }
        if let Some(e) = maps::cgroup_entry(slot, id) {
            found = e;
        }
        level += 1;
    }
    found
}

/// Resolves the remote end of a flow from its key. An address outside
/// this host is a peer or `world`. For this host's own addresses, the
/// socket at the other end, which `peer` finds in the caller's network
/// namespace, is the remote end: its workload, or `host`. A socket in
/// another namespace is not found: that end is judged as another machine
/// would be, by its address.
#[inline(always)]
pub fn resolve_remote(slot: u32, key: &FlowKey, peer: impl FnOnce() -> PeerSocket) -> Remote {
    let identity = maps::address_identity(slot, key.family, &key.remote_addr);
    if identity != IDENTITY_HOST {
        return Remote {
            identity,
            external: true,
            local_entry: None,
            local_socket: false,
            peer_cgroup: 0,
        };
    }
    let found = peer();
    let in_workload = found.entry.workload != IDENTITY_NONE;
    Remote {
        identity: if in_workload {
            found.entry.workload
        } else {
            IDENTITY_HOST
        },
        external: false,
        local_entry: in_workload.then_some(found.entry),
        local_socket: found.cgroup_id != 0,
        peer_cgroup: found.cgroup_id,
    }
}

/// The verdict-trie chain for the local workload's verdict class: exact
/// remote, every external address (only for peers and `world`), any
/// remote; default deny.
#[inline(always)]
pub fn lookup(
    slot: u32,
    class: Identity,
    direction: u8,
    protocol: u8,
    remote: &Remote,
    port: u16,
) -> (u8, u32) {
    let key = VerdictKey::new(class, direction, protocol, remote.identity, port, 16);
    if let Some(v) = maps::verdict(slot, &key) {
        return (v.action, v.rule);
    }
    if remote.external {
        let key = VerdictKey::new(class, direction, protocol, IDENTITY_ANY_EXTERNAL, port, 16);
        if let Some(v) = maps::verdict(slot, &key) {
            return (v.action, v.rule);
        }
    }
    let key = VerdictKey::new(class, direction, protocol, IDENTITY_ANY, port, 16);
    if let Some(v) = maps::verdict(slot, &key) {
        return (v.action, v.rule);
    }
    (Action::Deny as u8, RULE_DEFAULT_DENY)
}

/// The mode of processes in no workload (`--unmanaged`): `Off` (allow),
/// `Audit`, or `Enforce` (deny, also for a byte no daemon writes).
#[inline(always)]
pub fn unmanaged_mode(cfg: &Config) -> Mode {
    Mode::from_raw_or_enforce(cfg.unmanaged)
}

/// Judges a new connection opened in `opener` direction (a [`Direction`]
/// byte, as flows keep it) to `service_port`.
#[inline(always)]
pub fn judge(
    cfg: &Config,
    local: Option<CgroupEntry>,
    opener: u8,
    protocol: u8,
    remote: &Remote,
    service_port: u16,
    remote_port: u16,
) -> Verdict {
    // The verdict keys are stored under the workload's class; everything
    // else (flows, events, counters, the self-traffic exception) names the
    // workload itself.
    let (workload, class, mode) = match local {
        Some(e) => (e.workload, e.class, Mode::from_raw_or_enforce(e.mode)),
        None => (IDENTITY_HOST, IDENTITY_HOST, unmanaged_mode(cfg)),
    };
    let allow = |rule| Verdict {
        action: Action::Allow as u8,
        rule,
        local: workload,
    };
    // Built-in exceptions, whatever the mode: a workload talking to itself
    // on this host, inbound failsafe ports, DHCP replies.
    if local.is_some() && !remote.external && remote.identity == workload {
        return allow(RULE_BUILTIN);
    }
    if opener == Direction::Ingress as u8 {
        if maps::is_failsafe(protocol, service_port) {
            return allow(RULE_BUILTIN);
        }
        if protocol == Protocol::Udp as u8
            && ((remote_port == 67 && service_port == 68)
                || (remote_port == 547 && service_port == 546))
        {
            return allow(RULE_BUILTIN);
        }
    }
    if mode == Mode::Off {
        return allow(if local.is_some() {
            RULE_MODE_OFF
        } else {
            RULE_UNMANAGED
        });
    }
    let (action, rule) = if local.is_some() {
        lookup(
            cfg.active_slot,
            class,
            opener,
            protocol,
            remote,
            service_port,
        )
    } else {
        (Action::Deny as u8, RULE_UNMANAGED)
    };
    let action = if action == Action::Deny as u8 && mode == Mode::Audit {
        Action::Audit as u8
    } else {
        action
    };
    Verdict {
        action,
        rule,
        local: workload,
    }
}

/// Sends a verdict event, counting it as lost when the ring buffer is full.
#[inline(always)]
pub fn send_event(
    cfg: &Config,
    key: &FlowKey,
    flow: &FlowValue,
    now: u64,
    packet_direction: Direction,
) {
    let event = VerdictEvent {
        time_ns: now,
        cgroup_id: flow.cgroup_id,
        local: flow.local,
        remote: flow.remote,
        rule: flow.rule,
        family: key.family,
        protocol: key.protocol,
        direction: if flow.direction != 0 {
            flow.direction
        } else {
            packet_direction as u8
        },
        action: flow.action,
        local_port: key.local_port,
        remote_port: key.remote_port,
        generation: cfg.generation,
        local_addr: key.local_addr,
        remote_addr: key.remote_addr,
    };
    match maps::EVENTS.reserve::<VerdictEvent>(0) {
        Some(mut entry) => {
            entry.write(event);
            entry.submit(0);
        }
        None => maps::bump_global(GLOBAL_COUNTER_EVENTS_LOST),
    }
}

/// Whether an event is due for a flow whose last event was at `last`.
/// `now` may be the coarse clock, which lags the precise one `last` was
/// taken from by up to a tick: a `now` before `last` is not due.
#[inline(always)]
pub fn event_due(action: u8, last: u64, now: u64) -> bool {
    (action == Action::Deny as u8 || action == Action::Audit as u8)
        && (last == 0 || (now > last && now - last >= EVENT_INTERVAL_NS))
}

#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: no arguments, no memory access.
    unsafe { bpf_ktime_get_ns() }
}

/// `CLOCK_MONOTONIC` at tick resolution: the rate-limit check of a denied
/// flow whose quiet period is unknown or over.
#[inline(always)]
pub fn coarse_now_ns() -> u64 {
    // SAFETY: no arguments, no memory access.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// The low 32 bits of the kernel's jiffies count. The verifier inlines
/// `bpf_jiffies64` into one load of `jiffies` (64-bit JIT), where the clock
/// helpers are real calls: this is the per-packet rate-limit check.
#[inline(always)]
pub fn jiffies() -> u32 {
    // SAFETY: no arguments, no memory access.
    unsafe { bpf_jiffies64() as u32 }
}

/// Whether `quiet_until` (see `FlowValue::quiet_until`) is known and not
/// yet reached: no event can be due, whatever the precise clock says.
#[inline(always)]
pub fn quiet(cfg: &Config, quiet_until: u32) -> bool {
    // Ticks left until the end of the quiet period, which is at most one
    // period away. More than that (a value from an earlier lap of the 32-bit
    // count, or no tick rate) is not quiet: the clock check then decides,
    // so a wrapped count costs a clock read, never a lost event.
    let left = quiet_until.wrapping_sub(jiffies());
    quiet_until != 0 && left != 0 && left <= u32::from(cfg.jiffies_per_second)
}

/// The `quiet_until` of a flow whose event is sent now: one rate-limit
/// interval of jiffies from now, or 0 (unknown) when the daemon did not give
/// the tick rate.
#[inline(always)]
pub fn quiet_until(cfg: &Config) -> u32 {
    if cfg.jiffies_per_second == 0 {
        return 0;
    }
    // The interval is one second: one second's worth of jiffies.
    let until = jiffies().wrapping_add(u32::from(cfg.jiffies_per_second));
    // 0 means unknown; one tick later is as good.
    if until == 0 { 1 } else { until }
}
