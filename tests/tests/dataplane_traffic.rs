//! Real traffic from processes in test cgroups, over loopback: TCP and UDP,
//! IPv4 and IPv6, two local workloads, a cgroup created after the policy,
//! audit mode and events, unmanaged processes, the failsafe port, and
//! revocation of an established connection.

mod dataplane_support;

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    path::Path,
    time::{Duration, Instant},
};

use Action::Allow;
use Direction::{Egress, Ingress};
use Protocol::{Tcp, Udp};
use dataplane_support::*;
use enforcer::{
    compile::CompiledPolicy,
    dataplane::{
        Dataplane, DataplaneOptions, FailsafePort, HostAddrs, ResolvedCgroup, UnmanagedMode,
    },
};
use enforcer_common::{
    identity::{IDENTITY_HOST, Identity},
    protocol::Protocol,
    verdict::{Action, Direction, RULE_DEFAULT_DENY},
    workload::Mode,
};
use enforcer_tests::fork::{close_pipe, in_cgroup, kill_child, pipe, spawn_in_cgroup, wait_child};
use enforcer_tests::{CgroupGuard, privileged};

const A: Identity = 16;
const B: Identity = 17;
const T: Duration = Duration::from_millis(1500);
const LO4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const LO6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

/// A parent cgroup (the attach point) with workload children `a` and `b`
/// and an unmanaged child `u`.
struct Setup {
    dp: Dataplane,
    a: CgroupGuard,
    b: CgroupGuard,
    u: CgroupGuard,
    /// The attach point; its guard removes the children too.
    _parent: CgroupGuard,
}

impl Setup {
    fn new() -> Setup {
        let parent = CgroupGuard::new().expect("cgroup");
        let a = parent.child("a").expect("cgroup");
        let b = parent.child("b").expect("cgroup");
        let u = parent.child("u").expect("cgroup");
        let mut dp = Dataplane::load(&DataplaneOptions::default()).expect("load");
        dp.attach(parent.path()).expect("attach");
        Setup {
            dp,
            a,
            b,
            u,
            _parent: parent,
        }
    }

    fn cgroups(&self, mode_a: u8) -> Vec<ResolvedCgroup> {
        vec![
            ResolvedCgroup {
                cgroup_id: self.a.id(),
                workload: A,
                class: A,
                mode: mode_a,
            },
            enforced(self.b.id(), B),
        ]
    }

    fn apply(&mut self, p: &CompiledPolicy, mode_a: u8) {
        let cgroups = self.cgroups(mode_a);
        self.dp
            .apply(p, &cgroups, &HostAddrs::default())
            .expect("apply");
    }
}

fn policy() -> CompiledPolicy {
    empty_policy(&[(A, "a"), (B, "b")], &[])
}

/// A TCP echo server on a free IPv4 loopback port, run by a child in
/// `cgroup` and already listening; its address and the child's pid (for
/// `kill_child`).
fn tcp_echo_in(cgroup: &Path) -> (SocketAddr, i32) {
    let server = SocketAddr::new(LO4, free_port(LO4, false));
    let pid = spawn_in_cgroup(cgroup, || tcp_echo_forever(server));
    wait_listening(server);
    (server, pid)
}

#[test]
fn tcp_and_udp_to_the_host_both_families() {
    let _root = privileged!();
    let mut s = Setup::new();
    for ip in [LO4, LO6] {
        let tcp_ok = tcp_echo_server(SocketAddr::new(ip, 0));
        let tcp_no = tcp_echo_server(SocketAddr::new(ip, 0));
        let udp_ok = udp_echo_server(SocketAddr::new(ip, 0));
        let udp_no = udp_echo_server(SocketAddr::new(ip, 0));
        let mut p = policy();
        add_verdicts(
            &mut p,
            &[
                (A, Egress, Tcp, IDENTITY_HOST, tcp_ok.port(), 16, Allow),
                (A, Egress, Udp, IDENTITY_HOST, udp_ok.port(), 16, Allow),
            ],
        );
        s.apply(&p, Mode::Enforce as u8);
        assert_eq!(
            in_cgroup(s.a.path(), || tcp_exchange(tcp_ok, T)),
            OK,
            "{ip} tcp allowed"
        );
        assert_eq!(
            in_cgroup(s.a.path(), || tcp_exchange(tcp_no, T)),
            EPERM,
            "{ip} tcp denied"
        );
        assert_eq!(
            in_cgroup(s.a.path(), || udp_exchange(udp_ok, T)),
            OK,
            "{ip} udp allowed"
        );
        assert_eq!(
            in_cgroup(s.a.path(), || udp_exchange(udp_no, T)),
            EPERM,
            "{ip} udp denied"
        );
        // Unmanaged processes are allowed by default.
        assert_eq!(
            in_cgroup(s.u.path(), || tcp_exchange(tcp_no, T)),
            OK,
            "{ip} unmanaged"
        );
    }
    let counters = s.dp.counters().expect("counters");
    assert!(
        counters.get(&(A, Allow as u8)).copied().unwrap_or(0) > 0,
        "{counters:?}"
    );
}

#[test]
fn two_local_workloads_need_both_ends_to_allow() {
    let _root = privileged!();
    let mut s = Setup::new();
    let (server, pid) = tcp_echo_in(s.b.path());
    let port = server.port();
    // Only A's allow-out: B's ingress refuses, so connect() fails at once.
    let mut p = policy();
    add_verdicts(&mut p, &[(A, Egress, Tcp, B, port, 16, Allow)]);
    s.apply(&p, Mode::Enforce as u8);
    let started = Instant::now();
    assert_eq!(
        in_cgroup(s.a.path(), || tcp_exchange(server, T)),
        EPERM,
        "receiver refuses"
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    // Only B's allow-in: A's egress refuses.
    let mut p = policy();
    add_verdicts(&mut p, &[(B, Ingress, Tcp, A, port, 16, Allow)]);
    s.apply(&p, Mode::Enforce as u8);
    assert_eq!(
        in_cgroup(s.a.path(), || tcp_exchange(server, T)),
        EPERM,
        "sender refuses"
    );
    // Both: allowed, and each end saw the other as its workload.
    add_verdicts(&mut p, &[(A, Egress, Tcp, B, port, 16, Allow)]);
    s.apply(&p, Mode::Enforce as u8);
    assert_eq!(
        in_cgroup(s.a.path(), || tcp_exchange(server, T)),
        OK,
        "both allow"
    );
    let flows = s.dp.flows().expect("flows");
    assert!(
        flows
            .iter()
            .any(|(k, v)| k.remote_port == port && v.local == A && v.remote == B),
        "client flow names B: {flows:?}"
    );
    assert!(
        flows
            .iter()
            .any(|(k, v)| k.local_port == port && v.local == B && v.remote == A),
        "server flow names A: {flows:?}"
    );
    kill_child(pid);
}

#[test]
fn a_cgroup_created_after_the_policy_is_enforced() {
    let _root = privileged!();
    let mut s = Setup::new();
    let denied = tcp_echo_server(SocketAddr::new(LO4, 0));
    s.apply(&policy(), Mode::Enforce as u8);
    let late = s.a.child("late").expect("cgroup");
    assert_eq!(in_cgroup(late.path(), || tcp_exchange(denied, T)), EPERM);
}

#[test]
fn audit_mode_allows_and_reports() {
    let _root = privileged!();
    let mut s = Setup::new();
    let mut events = s.dp.take_events().expect("events");
    let server = tcp_echo_server(SocketAddr::new(LO4, 0));
    s.apply(&policy(), Mode::Audit as u8);
    assert_eq!(in_cgroup(s.a.path(), || tcp_exchange(server, T)), OK);
    let got = events.drain();
    assert!(
        got.iter().any(|e| e.action == Action::Audit as u8
            && e.local == A
            && e.remote_port == server.port()
            && e.rule == RULE_DEFAULT_DENY
            && e.direction == Egress as u8),
        "audit event expected: {got:?}"
    );
    // In enforce mode the refusal is reported as a deny.
    s.apply(&policy(), Mode::Enforce as u8);
    assert_eq!(in_cgroup(s.a.path(), || tcp_exchange(server, T)), EPERM);
    let got = events.drain();
    assert!(
        got.iter()
            .any(|e| e.action == Action::Deny as u8 && e.local == A),
        "{got:?}"
    );
}

#[test]
fn unmanaged_processes_follow_the_setting() {
    let _root = privileged!();
    let mut s = Setup::new();
    let server = tcp_echo_server(SocketAddr::new(LO4, 0));
    s.apply(&policy(), Mode::Enforce as u8);
    assert_eq!(
        in_cgroup(s.u.path(), || tcp_exchange(server, T)),
        OK,
        "allow"
    );
    s.dp.set_unmanaged(UnmanagedMode::Deny).expect("deny");
    assert_eq!(
        in_cgroup(s.u.path(), || tcp_exchange(server, T)),
        EPERM,
        "deny"
    );
    s.dp.set_unmanaged(UnmanagedMode::Audit).expect("audit");
    assert_eq!(
        in_cgroup(s.u.path(), || tcp_exchange(server, T)),
        OK,
        "audit"
    );
}

#[test]
fn the_failsafe_port_stays_reachable() {
    let _root = privileged!();
    let mut s = Setup::new();
    let (server, pid) = tcp_echo_in(s.b.path());
    let port = server.port();
    s.apply(&policy(), Mode::Enforce as u8);
    // This process is not filtered, but B's ingress drops the SYN.
    assert_eq!(
        tcp_exchange(server, Duration::from_millis(500)),
        TIMEOUT,
        "isolated"
    );
    s.dp.set_failsafe(&[FailsafePort {
        protocol: Tcp as u8,
        port,
    }])
    .expect("failsafe");
    assert_eq!(tcp_exchange(server, T), OK, "failsafe");
    s.dp.set_failsafe(&[]).expect("no failsafe");
    assert_eq!(
        tcp_exchange(server, Duration::from_millis(500)),
        TIMEOUT,
        "isolated again"
    );
    kill_child(pid);
}

#[test]
fn revocation_cuts_an_established_connection() {
    let _root = privileged!();
    let mut s = Setup::new();
    let server = tcp_echo_server(SocketAddr::new(LO4, 0));
    let mut p = policy();
    add_verdicts(
        &mut p,
        &[(A, Egress, Tcp, IDENTITY_HOST, server.port(), 16, Allow)],
    );
    s.apply(&p, Mode::Enforce as u8);
    // Tells the child when the policy changed.
    let (rd, wr) = pipe();
    let child = spawn_in_cgroup(s.a.path(), move || {
        let Ok(mut c) = TcpStream::connect_timeout(&server, T) else {
            return 10;
        };
        let _ = c.set_read_timeout(Some(T));
        let mut b = [0u8; 1];
        if c.write_all(b"x").is_err() || c.read_exact(&mut b).is_err() {
            return 11;
        }
        // SAFETY: blocking read of one byte from the pipe.
        if unsafe { libc::read(rd, b.as_mut_ptr().cast(), 1) } != 1 {
            return 12;
        }
        let _ = c.write_all(b"y");
        match c.read_exact(&mut b) {
            Ok(()) => 13,
            Err(_) => 0,
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    s.apply(&policy(), Mode::Enforce as u8);
    // SAFETY: one byte to our own pipe.
    assert_eq!(unsafe { libc::write(wr, b"go".as_ptr().cast(), 1) }, 1);
    let code = wait_child(child);
    close_pipe(rd, wr);
    assert_eq!(code, 0, "the established connection must be cut");
}

#[test]
fn the_cgroup_watcher_adds_and_removes_cgroups() {
    let _root = privileged!();
    let mut s = Setup::new();
    let server = tcp_echo_server(SocketAddr::new(LO4, 0));
    s.apply(&policy(), Mode::Enforce as u8);
    // `u` is unmanaged (allowed) until the watcher maps it to workload A.
    assert_eq!(in_cgroup(s.u.path(), || tcp_exchange(server, T)), OK);
    s.dp.add_cgroup(enforced(s.u.id(), A)).expect("add cgroup");
    assert_eq!(in_cgroup(s.u.path(), || tcp_exchange(server, T)), EPERM);
    assert_eq!(s.dp.cgroups().count(), 3);
    s.dp.remove_cgroup(s.u.id()).expect("remove cgroup");
    assert_eq!(in_cgroup(s.u.path(), || tcp_exchange(server, T)), OK);
    // The next apply receives the full list again and keeps it coherent.
    s.apply(&policy(), Mode::Enforce as u8);
    assert_eq!(in_cgroup(s.a.path(), || tcp_exchange(server, T)), EPERM);
    assert_eq!(in_cgroup(s.u.path(), || tcp_exchange(server, T)), OK);
}

#[test]
fn an_ingress_drop_is_reported_and_counted() {
    let _root = privileged!();
    let mut s = Setup::new();
    let mut events = s.dp.take_events().expect("events");
    let (server, pid) = tcp_echo_in(s.b.path());
    let port = server.port();
    s.apply(&policy(), Mode::Enforce as u8);
    let before = s.dp.global_counters().expect("counters");
    assert_eq!(tcp_exchange(server, Duration::from_millis(300)), TIMEOUT);
    let after = s.dp.global_counters().expect("counters");
    assert!(after.dropped > before.dropped, "{before:?} -> {after:?}");
    let got = events.drain();
    // Only inbound events count: the teardown of `wait_listening`'s probe
    // connection, opened before the policy, may also leave egress events.
    let inbound: Vec<_> = got
        .iter()
        .filter(|e| e.local == B && e.local_port == port && e.direction == Ingress as u8)
        .collect();
    let hit = inbound
        .first()
        .unwrap_or_else(|| panic!("inbound deny event for B expected: {got:?}"));
    assert_eq!(hit.action, Action::Deny as u8);
    assert_eq!(hit.remote, IDENTITY_HOST);
    assert_eq!(hit.rule, RULE_DEFAULT_DENY);
    // Retransmitted SYNs within a second do not flood the ring buffer.
    assert!(inbound.len() <= 2, "rate limit: {got:?}");
    kill_child(pid);
}
