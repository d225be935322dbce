//! Real traffic between workloads on this machine and a test host in a
//! network namespace (over veth, documentation ranges only): peers by
//! longest prefix, port ranges, deny overriding allow, TCP, UDP and ICMP
//! echo in IPv4 and IPv6, inbound connections from a peer, and two local
//! workloads talking over this machine's own address.

mod dataplane_support;

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsFd as _,
    time::Duration,
};

use Action::{Allow, Deny};
use Direction::{Egress, Ingress};
use Protocol::{Icmp, Tcp, Udp};
use dataplane_support::{add_verdicts, empty_policy, enforced};
use enforcer::{
    compile::CompiledPolicy,
    dataplane::{Dataplane, DataplaneOptions, HostAddrs, ResolvedCgroup},
};
use enforcer_common::{
    address::{AddrKey4, AddrKey6},
    flow::FlowValue,
    identity::Identity,
    protocol::Protocol,
    verdict::{Action, Direction},
};
use enforcer_tests::fork::{close_pipe, pipe, spawn_in_cgroup, wait_child};
use enforcer_tests::{CgroupGuard, Probe, ProbeOutcome, Server, TestHost, privileged};
use socket2::{Domain, Socket, Type};

const A: Identity = 16;
const B: Identity = 17;
const OFFICE: Identity = 18;
const VENDOR: Identity = 19;

/// `office` owns the test host's whole subnets, `vendor` the test host's
/// own addresses: the longest prefix makes the test host `vendor`.
fn peers(host: &TestHost) -> CompiledPolicy {
    let mut p = empty_policy(
        &[(A, "a"), (B, "b")],
        &[(OFFICE, "office"), (VENDOR, "vendor")],
    );
    let std::net::IpAddr::V4(h4) = host.ipv4() else {
        panic!("ipv4")
    };
    let std::net::IpAddr::V6(h6) = host.ipv6() else {
        panic!("ipv6")
    };
    let mut net4 = h4.octets();
    net4[3] = 0;
    let mut net6 = h6.octets();
    net6[8..].fill(0);
    p.prefixes_v4 = vec![
        (
            AddrKey4 {
                prefix_len: 24,
                addr: net4,
            },
            OFFICE,
        ),
        (
            AddrKey4 {
                prefix_len: 32,
                addr: h4.octets(),
            },
            VENDOR,
        ),
    ];
    p.prefixes_v6 = vec![
        (
            AddrKey6 {
                prefix_len: 64,
                addr: net6,
            },
            OFFICE,
        ),
        (
            AddrKey6 {
                prefix_len: 128,
                addr: h6.octets(),
            },
            VENDOR,
        ),
    ];
    p.prefixes_v4.sort();
    p.prefixes_v6.sort();
    p
}

fn probe(report: enforcer_tests::ProbeReport) -> ProbeOutcome {
    eprintln!("{}", report.line);
    report.outcome
}

const SHORT: Duration = Duration::from_millis(400);

/// Where the programs are attached: the test's own cgroup, or the root of
/// the cgroup v2 hierarchy as the daemon runs in production, where every
/// process of this machine passes them (the test host's processes too,
/// which belong to no workload).
#[derive(Clone, Copy, Debug)]
enum AttachAt {
    TestCgroup,
    CgroupRoot,
}

fn attached(parent: &CgroupGuard, at: AttachAt) -> Dataplane {
    let (path, allow_root_cgroup) = match at {
        AttachAt::TestCgroup => (parent.path(), false),
        AttachAt::CgroupRoot => (
            enforcer_tests::cgroup2_mount().expect("cgroup v2 mount"),
            true,
        ),
    };
    let mut dp = Dataplane::load(&DataplaneOptions {
        allow_root_cgroup,
        ..DataplaneOptions::default()
    })
    .expect("load");
    dp.attach(path).expect("attach");
    dp
}

#[test]
fn egress_to_a_remote_peer_by_longest_prefix_ports_and_protocols() {
    let _root = privileged!();
    egress_to_a_remote_peer_by_longest_prefix_ports_and_protocols_at(AttachAt::TestCgroup);
}

#[test]
fn egress_to_a_remote_peer_by_longest_prefix_ports_and_protocols_with_the_programs_at_the_cgroup_root()
 {
    let _root = privileged!();
    egress_to_a_remote_peer_by_longest_prefix_ports_and_protocols_at(AttachAt::CgroupRoot);
}

fn egress_to_a_remote_peer_by_longest_prefix_ports_and_protocols_at(at: AttachAt) {
    let host = TestHost::new("198.51.100.0/24", "2001:db8:71::/64").expect("test host");
    let parent = CgroupGuard::new().expect("cgroup");
    let a = parent.child("a").expect("cgroup a");
    let mut dp = attached(&parent, at);

    let mut p = peers(&host);
    // 8000-8003/tcp to vendor (one 14-bit block), but 8002 denied (a longer
    // prefix: what the compiler emits for a deny inside an allowed range).
    add_verdicts(
        &mut p,
        &[
            (A, Egress, Tcp, VENDOR, 8000, 14, Allow),
            (A, Egress, Tcp, VENDOR, 8002, 16, Deny),
            // 9000/tcp only to office: the test host is vendor, so denied.
            (A, Egress, Tcp, OFFICE, 9000, 16, Allow),
            (A, Egress, Udp, VENDOR, 5353, 16, Allow),
            (A, Egress, Icmp, VENDOR, 0, 16, Allow),
        ],
    );
    let cgroups = [enforced(a.id(), A)];
    let addrs = HostAddrs::from_system().expect("host addresses");
    dp.apply(&p, &cgroups, &addrs).expect("apply");

    for v6 in [false, true] {
        let at = |port| {
            if v6 {
                host.socket_v6(port)
            } else {
                host.socket_v4(port)
            }
        };
        let servers: Vec<Server> = [8001, 8002, 8003, 9000]
            .into_iter()
            .map(|port| Server::tcp(None, Some(&host), at(port)).expect("tcp server"))
            .collect();
        let udp = Server::udp(None, Some(&host), at(5353)).expect("udp server");
        let udp_other = Server::udp(None, Some(&host), at(5354)).expect("udp server");
        let tcp = |s: &Server| probe(Probe::tcp_connect(s.addr()).cgroup(&a).timeout(SHORT).run());
        assert_eq!(
            tcp(&servers[0]),
            ProbeOutcome::Ok,
            "8001 in the allowed range (v6 {v6})"
        );
        assert_eq!(
            tcp(&servers[2]),
            ProbeOutcome::Ok,
            "8003 in the allowed range (v6 {v6})"
        );
        assert_eq!(
            tcp(&servers[1]),
            ProbeOutcome::Eperm,
            "8002 denied inside the range (v6 {v6})"
        );
        assert_eq!(
            tcp(&servers[3]),
            ProbeOutcome::Eperm,
            "9000 is for office only (v6 {v6})"
        );
        assert_eq!(
            probe(Probe::udp_send(udp.addr()).cgroup(&a).timeout(SHORT).run()),
            ProbeOutcome::Ok,
            "udp allowed (v6 {v6})"
        );
        assert_eq!(
            probe(
                Probe::udp_send(udp_other.addr())
                    .cgroup(&a)
                    .timeout(SHORT)
                    .run()
            ),
            ProbeOutcome::Eperm,
            "udp denied (v6 {v6})"
        );
        let ip = if v6 { host.ipv6() } else { host.ipv4() };
        assert_eq!(
            probe(Probe::ping(ip).cgroup(&a).timeout(SHORT).run()),
            ProbeOutcome::Ok,
            "ping allowed (v6 {v6})"
        );
    }

    // Without the ICMP rule, echo requests are dropped on egress.
    p.verdicts.retain(|(k, _)| k.protocol() != Icmp as u8);
    dp.apply(&p, &cgroups, &addrs).expect("apply");
    let ping = probe(Probe::ping(host.ipv4()).cgroup(&a).timeout(SHORT).run());
    assert!(
        matches!(ping, ProbeOutcome::Eperm | ProbeOutcome::Timeout),
        "ping must fail: {ping:?}"
    );
}

#[test]
fn inbound_from_a_peer_and_local_workloads_over_the_host_address() {
    let _root = privileged!();
    inbound_from_a_peer_and_local_workloads_over_the_host_address_at(AttachAt::TestCgroup);
}

#[test]
fn inbound_from_a_peer_and_local_workloads_over_the_host_address_with_the_programs_at_the_cgroup_root()
 {
    let _root = privileged!();
    inbound_from_a_peer_and_local_workloads_over_the_host_address_at(AttachAt::CgroupRoot);
}

fn inbound_from_a_peer_and_local_workloads_over_the_host_address_at(at: AttachAt) {
    let host = TestHost::new("203.0.113.0/24", "2001:db8:72::/64").expect("test host");
    let parent = CgroupGuard::new().expect("cgroup");
    let a = parent.child("a").expect("cgroup a");
    let b = parent.child("b").expect("cgroup b");
    let mut dp = attached(&parent, at);

    // B serves 7000 and 7001 on this machine's veth address.
    let local = host.local_ipv4();
    let open = Server::tcp(Some(&b), None, SocketAddr::new(local, 7000)).expect("server");
    let closed = Server::tcp(Some(&b), None, SocketAddr::new(local, 7001)).expect("server");
    let mut p = peers(&host);
    add_verdicts(&mut p, &[(B, Ingress, Tcp, VENDOR, 7000, 16, Allow)]);
    let cgroups = [enforced(a.id(), A), enforced(b.id(), B)];
    let addrs = HostAddrs::from_system().expect("host addresses");
    dp.apply(&p, &cgroups, &addrs).expect("apply");

    // From the test host (vendor): 7000 allowed in, 7001 dropped.
    let from_host = |s: &Server| {
        probe(
            Probe::tcp_connect(s.addr())
                .netns(&host)
                .timeout(SHORT)
                .run(),
        )
    };
    assert_eq!(from_host(&open), ProbeOutcome::Ok, "vendor may reach 7000");
    assert_eq!(
        from_host(&closed),
        ProbeOutcome::Timeout,
        "7001 is dropped on ingress"
    );

    // A -> B over this machine's own address: B sees A, not vendor or host.
    let from_a = |s: &Server| probe(Probe::tcp_connect(s.addr()).cgroup(&a).timeout(SHORT).run());
    assert_eq!(from_a(&open), ProbeOutcome::Eperm, "no rule for A yet");
    add_verdicts(&mut p, &[(A, Egress, Tcp, B, 7000, 16, Allow)]);
    dp.apply(&p, &cgroups, &addrs).expect("apply");
    assert_eq!(
        from_a(&open),
        ProbeOutcome::Eperm,
        "B's allow-in names vendor, not A"
    );
    add_verdicts(&mut p, &[(B, Ingress, Tcp, A, 7000, 16, Allow)]);
    dp.apply(&p, &cgroups, &addrs).expect("apply");
    assert_eq!(from_a(&open), ProbeOutcome::Ok, "both ends allow");
}

#[test]
fn inbound_tcp_and_udp_from_a_peer_over_ipv4_and_ipv6() {
    let _root = privileged!();
    inbound_tcp_and_udp_from_a_peer_over_ipv4_and_ipv6_at(AttachAt::TestCgroup);
}

#[test]
fn inbound_tcp_and_udp_from_a_peer_over_ipv4_and_ipv6_with_the_programs_at_the_cgroup_root() {
    let _root = privileged!();
    inbound_tcp_and_udp_from_a_peer_over_ipv4_and_ipv6_at(AttachAt::CgroupRoot);
}

fn inbound_tcp_and_udp_from_a_peer_over_ipv4_and_ipv6_at(at: AttachAt) {
    let host = TestHost::new("198.51.100.0/24", "2001:db8:73::/64").expect("test host");
    let parent = CgroupGuard::new().expect("cgroup");
    let b = parent.child("b").expect("cgroup b");
    let mut dp = attached(&parent, at);
    let mut p = peers(&host);
    add_verdicts(
        &mut p,
        &[
            (B, Ingress, Tcp, VENDOR, 7100, 16, Allow),
            (B, Ingress, Udp, VENDOR, 7200, 16, Allow),
        ],
    );
    let cgroups = [enforced(b.id(), B)];
    let addrs = HostAddrs::from_system().expect("host addresses");
    dp.apply(&p, &cgroups, &addrs).expect("apply");
    for local in [host.local_ipv4(), host.local_ipv6()] {
        let tcp_ok = Server::tcp(Some(&b), None, SocketAddr::new(local, 7100)).expect("server");
        let tcp_no = Server::tcp(Some(&b), None, SocketAddr::new(local, 7101)).expect("server");
        let udp_ok = Server::udp(Some(&b), None, SocketAddr::new(local, 7200)).expect("server");
        let udp_no = Server::udp(Some(&b), None, SocketAddr::new(local, 7201)).expect("server");
        let run = |probe_: Probe| probe(probe_.netns(&host).timeout(SHORT).run());
        assert_eq!(
            run(Probe::tcp_connect(tcp_ok.addr())),
            ProbeOutcome::Ok,
            "{local} tcp in"
        );
        assert_eq!(
            run(Probe::tcp_connect(tcp_no.addr())),
            ProbeOutcome::Timeout,
            "{local} tcp dropped"
        );
        assert_eq!(
            run(Probe::udp_send(udp_ok.addr())),
            ProbeOutcome::Ok,
            "{local} udp in"
        );
        assert_eq!(
            run(Probe::udp_send(udp_no.addr())),
            ProbeOutcome::Timeout,
            "{local} udp dropped"
        );
    }
}

/// Workload `a` (identity [`A`], enforced) in a cgroup under an attached
/// data plane, and a test host in `198.51.100.0/24` and `ipv6_subnet`.
/// Its fields drop in order (do not destructure it: bindings drop in
/// reverse): the programs before the cgroups, the child cgroup before its
/// parent.
struct WorkloadA {
    dp: Dataplane,
    a: CgroupGuard,
    _parent: CgroupGuard,
    host: TestHost,
    cgroups: [ResolvedCgroup; 1],
    addrs: HostAddrs,
}

impl WorkloadA {
    fn new(ipv6_subnet: &str) -> WorkloadA {
        let host = TestHost::new("198.51.100.0/24", ipv6_subnet).expect("test host");
        let parent = CgroupGuard::new().expect("cgroup");
        let a = parent.child("a").expect("cgroup a");
        let mut dp = Dataplane::load(&DataplaneOptions::default()).expect("load");
        dp.attach(parent.path()).expect("attach");
        WorkloadA {
            cgroups: [enforced(a.id(), A)],
            addrs: HostAddrs::from_system().expect("host addresses"),
            dp,
            a,
            _parent: parent,
            host,
        }
    }
}

/// [`peers`], with `a` allowed out to the test host (`vendor`) on `port`
/// over each of `protocols`.
fn host_allows(host: &TestHost, protocols: &[Protocol], port: u16) -> CompiledPolicy {
    let mut p = peers(host);
    for &proto in protocols {
        add_verdicts(&mut p, &[(A, Egress, proto, VENDOR, port, 16, Allow)]);
    }
    p
}

/// Whether a socket's flow is workload `a`'s with the test host (`vendor`),
/// with this action, opener and service port.
fn is_flow_of_a(flow: &FlowValue, action: u8, opener: u8, service_port: u16) -> bool {
    flow.local == A
        && flow.remote == VENDOR
        && flow.action == action
        && flow.direction == opener
        && flow.service_port == service_port
}

/// What happens to a short TCP connection that `connect()` opened to a
/// remote destination, while the policy allows it, once a change in the
/// verdict cache or in the policy reaches it.
#[derive(Clone, Copy, Debug, PartialEq)]
enum AfterConnect {
    /// The policy stops allowing it: its next packet is judged and dropped.
    Revoked,
    /// The verdict cache forgets it (as when another destination takes its
    /// slot): its next packet is judged, as the connection `connect()`
    /// opened, and allowed.
    Forgotten,
}

/// Connects from workload `a` to `to`, checks the connection while the
/// policy allows it, lets `change` happen, and checks the connection
/// after it. A connection `connect()` opened to an allowed remote
/// destination keeps no state: its packets find their verdict in the cache
/// that `connect` filled (no packet judged, no flow on the socket, none in
/// `FLOWS`). Once the cache no longer holds it, its next packet is judged
/// as the connection it is (opened by `a`, to `to`'s port) and the flow is
/// kept on its socket. `bind_first`: the client binds its own port before
/// connecting (`BOUND_PORTS` then holds it, as it holds a listener's).
fn connect_then(w: &mut WorkloadA, to: SocketAddr, bind_first: bool, change: AfterConnect) {
    let (go_rd, go_wr) = pipe();
    let dp_ref = &w.dp;
    // Exit codes: 0 as expected; 10.. the step that failed.
    let child = spawn_in_cgroup(w.a.path(), move || {
        let new_flows = || dp_ref.global_counters().map(|c| c.new_flows).ok();
        let before = new_flows();
        let connected = if bind_first {
            connect_from_bound_port(to)
        } else {
            TcpStream::connect_timeout(&to, SHORT)
        };
        let Ok(mut c) = connected else {
            return 10;
        };
        let _ = c.set_read_timeout(Some(SHORT));
        let mut b = [0u8; 1];
        if c.write_all(b"x").is_err() || c.read_exact(&mut b).is_err() {
            return 11;
        }
        // `connect` judged the connection; no packet of it was judged.
        if before.is_none() || new_flows() != before {
            return 12;
        }
        match dp_ref.socket_flow(c.as_fd()) {
            Ok(None) => {}
            Ok(Some(_)) => return 13,
            Err(_) => return 14,
        }
        let Ok(local_port) = c.local_addr().map(|a| a.port()) else {
            return 15;
        };
        match dp_ref.flows() {
            Ok(flows)
                if !flows
                    .iter()
                    .any(|(k, _)| k.protocol == Tcp as u8 && k.local_port == local_port) => {}
            Ok(_) => return 16,
            Err(_) => return 17,
        }
        // Wait for the change.
        // SAFETY: blocking read of one byte from our pipe.
        if unsafe { libc::read(go_rd, b.as_mut_ptr().cast(), 1) } != 1 {
            return 18;
        }
        let _ = c.write_all(b"y");
        let answered = c.read_exact(&mut b).is_ok();
        let expected_action = match change {
            AfterConnect::Revoked if answered => return 19,
            AfterConnect::Forgotten if !answered => return 20,
            AfterConnect::Revoked => Deny as u8,
            AfterConnect::Forgotten => Allow as u8,
        };
        // Judged as what it is, and kept on the socket.
        match dp_ref.socket_flow(c.as_fd()) {
            Ok(Some(f)) if is_flow_of_a(&f, expected_action, Egress as u8, to.port()) => 0,
            Ok(Some(_)) => 21,
            Ok(None) => 22,
            Err(_) => 23,
        }
    });
    // The child connects and checks first; the parent gives it a moment.
    std::thread::sleep(Duration::from_millis(300));
    match change {
        AfterConnect::Revoked => {
            w.dp.apply(&peers(&w.host), &w.cgroups, &w.addrs)
                .expect("apply");
        }
        AfterConnect::Forgotten => w.dp.clear_cached_verdicts().expect("clear the cache"),
    }
    // SAFETY: one byte to our own pipe.
    assert_eq!(unsafe { libc::write(go_wr, b"g".as_ptr().cast(), 1) }, 1);
    let code = wait_child(child);
    close_pipe(go_rd, go_wr);
    assert_eq!(
        code, 0,
        "{to} ({change:?}, bind first {bind_first}): step {code} failed (see `connect_then`'s exit codes)"
    );
}

/// A TCP client socket that binds a port of its own (chosen by the kernel)
/// before connecting.
fn connect_from_bound_port(to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(to), Type::STREAM, None)?;
    let any: std::net::IpAddr = if to.is_ipv4() {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    };
    socket.bind(&SocketAddr::new(any, 0).into())?;
    socket.connect_timeout(&to.into(), SHORT)?;
    Ok(socket.into())
}

/// A TCP connection to a remote destination keeps no state of its own while
/// the verdict cache holds its destination, and a policy change still
/// reaches it: its next packet is judged again and dropped.
#[test]
fn a_tcp_connection_takes_its_verdict_from_the_cache_and_is_revoked() {
    let _root = privileged!();
    let mut w = WorkloadA::new("2001:db8:74::/64");
    let allowed = host_allows(&w.host, &[Tcp], 8001);
    for server_addr in [w.host.socket_v4(8001), w.host.socket_v6(8001)] {
        for bind_first in [false, true] {
            w.dp.apply(&allowed, &w.cgroups, &w.addrs).expect("apply");
            let server = Server::tcp(None, Some(&w.host), server_addr).expect("tcp server");
            connect_then(&mut w, server.addr(), bind_first, AfterConnect::Revoked);
        }
    }
}

/// A connection that carries more than a request and its answer moves its
/// verdict from the cache onto its socket, without being judged: from then
/// on its packets find it there.
#[test]
fn a_long_connection_moves_its_cached_verdict_onto_its_socket() {
    let _root = privileged!();
    let mut w = WorkloadA::new("2001:db8:78::/64");
    let allowed = host_allows(&w.host, &[Tcp], 8004);
    w.dp.apply(&allowed, &w.cgroups, &w.addrs).expect("apply");
    for server_addr in [w.host.socket_v4(8004), w.host.socket_v6(8004)] {
        let server = Server::tcp(None, Some(&w.host), server_addr).expect("tcp server");
        let to = server.addr();
        let dp_ref = &w.dp;
        // Exit codes: 0 as expected; 10.. the step that failed.
        let child = spawn_in_cgroup(w.a.path(), move || {
            let new_flows = || dp_ref.global_counters().map(|c| c.new_flows).ok();
            let before = new_flows();
            let Ok(mut c) = TcpStream::connect_timeout(&to, SHORT) else {
                return 10;
            };
            let _ = c.set_read_timeout(Some(SHORT));
            let mut b = [0u8; 1];
            if c.write_all(b"x").is_err() || c.read_exact(&mut b).is_err() {
                return 11;
            }
            // A request and its answer: still nothing on the socket.
            if !matches!(dp_ref.socket_flow(c.as_fd()), Ok(None)) {
                return 12;
            }
            // Each round trip is at least a segment each way.
            for _ in 0..20 {
                if c.write_all(b"x").is_err() || c.read_exact(&mut b).is_err() {
                    return 13;
                }
            }
            if before.is_none() || new_flows() != before {
                return 14;
            }
            match dp_ref.socket_flow(c.as_fd()) {
                Ok(Some(f)) if is_flow_of_a(&f, Allow as u8, Egress as u8, to.port()) => 0,
                Ok(Some(_)) => 15,
                Ok(None) => 16,
                Err(_) => 17,
            }
        });
        let code = wait_child(child);
        assert_eq!(
            code, 0,
            "{to}: step {code} failed (see the test's exit codes)"
        );
    }
}

/// A connection whose destination the verdict cache no longer holds is
/// judged as the connection `connect()` opened, from its socket: even
/// with a service port above the client's own port, where a connection
/// first seen mid-stream would be taken for one the other end opened (and
/// here refused, since nothing may reach `a`).
#[test]
fn a_connection_the_verdict_cache_forgot_is_judged_as_the_one_connect_opened() {
    let _root = privileged!();
    // Above every port this host hands out to clients.
    const PORT: u16 = 65_001;
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .expect("ip_local_port_range");
    let highest: u16 = range
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("ip_local_port_range");
    assert!(highest < PORT, "clients may get ports up to {highest}");
    let mut w = WorkloadA::new("2001:db8:76::/64");
    let allowed = host_allows(&w.host, &[Tcp], PORT);
    w.dp.apply(&allowed, &w.cgroups, &w.addrs).expect("apply");
    for server_addr in [w.host.socket_v4(PORT), w.host.socket_v6(PORT)] {
        let server = Server::tcp(None, Some(&w.host), server_addr).expect("tcp server");
        for bind_first in [false, true] {
            connect_then(&mut w, server.addr(), bind_first, AfterConnect::Forgotten);
        }
    }
}

/// A connection that a listener of `a` accepted is never taken for one `a`
/// opened, even when the verdict cache holds `a`'s verdict for the other
/// end's very address and port: it is judged (inbound, to the listener's
/// port) and keeps its flow on its socket, where a policy change finds it.
/// Also when the listener never called `bind()` (the kernel chose its port
/// at `listen()`, where `post_bind4|6` do not run).
#[test]
fn an_accepted_connection_is_judged_even_when_the_cache_holds_its_peer() {
    let _root = privileged!();
    const LISTENER: u16 = 7300;
    const PEER_PORT: u16 = 7301;
    let mut w = WorkloadA::new("2001:db8:77::/64");
    let mut p = host_allows(&w.host, &[Tcp], PEER_PORT);
    // Inbound from the test host to every port: an unbound listener's port
    // is the kernel's choice.
    add_verdicts(&mut p, &[(A, Ingress, Tcp, VENDOR, 0, 0, Allow)]);
    w.dp.apply(&p, &w.cgroups, &w.addrs).expect("apply");
    for (local, remote) in [
        (w.host.local_ipv4(), w.host.ipv4()),
        (w.host.local_ipv6(), w.host.ipv6()),
    ] {
        for bound in [true, false] {
            accept_with_the_peer_cached(&w, local, remote, bound, LISTENER, PEER_PORT);
        }
    }
}

/// One case of [`an_accepted_connection_is_judged_even_when_the_cache_holds_its_peer`]:
/// a listener of `a` on `local` (port `listener_port`, or the kernel's
/// choice when not `bound`), `a`'s verdict for `remote:peer_port` in the
/// cache, and a probe from `remote:peer_port` to the listener.
fn accept_with_the_peer_cached(
    w: &WorkloadA,
    local: std::net::IpAddr,
    remote: std::net::IpAddr,
    bound: bool,
    listener_port: u16,
    peer_port: u16,
) {
    let (ready_rd, ready_wr) = pipe();
    let dp_ref = &w.dp;
    // Exit codes: 0 as expected; 10.. the step that failed.
    let child = spawn_in_cgroup(w.a.path(), move || {
        let listening = if bound {
            TcpListener::bind(SocketAddr::new(local, listener_port))
        } else {
            listen_unbound(local.is_ipv4())
        };
        let Ok(listener) = listening else {
            return 10;
        };
        let Ok(port) = listener.local_addr().map(|a| a.port()) else {
            return 10;
        };
        // `a` may open connections to the test host's port PEER_PORT:
        // `connect` keeps that verdict, though nothing listens there.
        match TcpStream::connect_timeout(&SocketAddr::new(remote, peer_port), SHORT) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
            _ => return 11,
        }
        // The listener's port, to our own pipe.
        // SAFETY: two bytes from our stack to our own pipe.
        if unsafe { libc::write(ready_wr, port.to_ne_bytes().as_ptr().cast(), 2) } != 2 {
            return 12;
        }
        if listener.set_nonblocking(true).is_err() {
            return 13;
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        let mut accepted = loop {
            match listener.accept() {
                Ok((stream, _)) => break stream,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if std::time::Instant::now() > deadline {
                        return 14;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(_) => return 15,
            }
        };
        let _ = accepted.set_nonblocking(false);
        let _ = accepted.set_read_timeout(Some(SHORT));
        // Echo what the probe sends.
        let mut buf = [0u8; 256];
        let Ok(n @ 1..) = accepted.read(&mut buf) else {
            return 16;
        };
        if accepted.write_all(&buf[..n]).is_err() {
            return 17;
        }
        match dp_ref.socket_flow(accepted.as_fd()) {
            Ok(Some(f)) if is_flow_of_a(&f, Allow as u8, Ingress as u8, port) => 0,
            Ok(Some(_)) => 18,
            Ok(None) => 19,
            Err(_) => 20,
        }
    });
    // The child's end only: a child that fails early closes the pipe.
    // SAFETY: our copy of the write end, not used again.
    unsafe { libc::close(ready_wr) };
    let mut b = [0u8; 2];
    // SAFETY: blocking read of two bytes from our pipe.
    let ready = unsafe { libc::read(ready_rd, b.as_mut_ptr().cast(), 2) } == 2;
    let outcome = ready.then(|| {
        probe(
            Probe::tcp_connect(SocketAddr::new(local, u16::from_ne_bytes(b)))
                .netns(&w.host)
                .bind(SocketAddr::new(remote, peer_port))
                .timeout(SHORT)
                .run(),
        )
    });
    let code = wait_child(child);
    // SAFETY: our read end, not used again.
    unsafe { libc::close(ready_rd) };
    assert_eq!(
        code, 0,
        "{local} (bound {bound}): step {code} failed (see the test's exit codes)"
    );
    assert_eq!(
        outcome,
        Some(ProbeOutcome::Ok),
        "{local} (bound {bound}): the probe"
    );
}

/// A TCP socket that listens without binding: the kernel picks its port
/// (on every address of the family) at `listen()`.
fn listen_unbound(ipv4: bool) -> std::io::Result<TcpListener> {
    let domain = if ipv4 { Domain::IPV4 } else { Domain::IPV6 };
    let socket = Socket::new(domain, Type::STREAM, None)?;
    socket.listen(16)?;
    Ok(socket.into())
}

/// A dual-stack socket connecting to an IPv4-mapped IPv6 address
/// (`::ffff:a.b.c.d`) sends IPv4, and is judged as IPv4: allowed where the
/// IPv4 address is, refused where it is not, and its packets recognised by
/// the verdict cache that `connect6` filled (none of them judged).
#[test]
fn an_ipv4_mapped_destination_is_judged_as_ipv4() {
    let _root = privileged!();
    let mut w = WorkloadA::new("2001:db8:79::/64");
    let allowed = host_allows(&w.host, &[Tcp], 8005);
    w.dp.apply(&allowed, &w.cgroups, &w.addrs).expect("apply");
    let server = Server::tcp(None, Some(&w.host), w.host.socket_v4(8005)).expect("tcp server");
    let mapped = |port: u16| {
        let std::net::IpAddr::V4(v4) = w.host.ipv4() else {
            panic!("the test host's IPv4 address");
        };
        SocketAddr::new(v4.to_ipv6_mapped().into(), port)
    };
    let run = |p: Probe| probe(p.cgroup(&w.a).timeout(SHORT).run());
    let new_flows = |dp: &Dataplane| dp.global_counters().expect("counters").new_flows;

    let before = new_flows(&w.dp);
    assert_eq!(
        run(Probe::tcp_connect(mapped(server.addr().port()))),
        ProbeOutcome::Ok,
        "allowed"
    );
    assert_eq!(new_flows(&w.dp), before, "no packet judged");
    assert_eq!(
        run(Probe::tcp_connect(mapped(8006))),
        ProbeOutcome::Eperm,
        "refused"
    );
}

/// `connect` and `sendmsg` keep the verdicts that allowed a remote
/// destination: the next connection (or datagram) from the same cgroup to
/// the same address, port and protocol takes it without being judged, and
/// a policy change ends it.
#[test]
fn a_destination_reached_again_takes_the_cached_verdict_until_the_policy_changes() {
    let _root = privileged!();
    let mut w = WorkloadA::new("2001:db8:75::/64");
    let allowed = host_allows(&w.host, &[Tcp, Udp], 8002);
    let cached = |dp: &Dataplane| dp.global_counters().expect("counters").cached_verdicts;
    let run = |p: Probe| probe(p.cgroup(&w.a).timeout(SHORT).run());

    for (server_addr, denied_port) in [
        (w.host.socket_v4(8002), w.host.socket_v4(8003)),
        (w.host.socket_v6(8002), w.host.socket_v6(8003)),
    ] {
        w.dp.apply(&allowed, &w.cgroups, &w.addrs).expect("apply");
        let tcp = Server::tcp(None, Some(&w.host), server_addr).expect("tcp server");
        let udp = Server::udp(None, Some(&w.host), server_addr).expect("udp server");
        for (what, attempt) in [
            ("tcp", Probe::tcp_connect(tcp.addr())),
            ("udp", Probe::udp_send(udp.addr())),
        ] {
            // The first is judged and its verdict kept; the second takes it.
            assert_eq!(run(attempt.clone()), ProbeOutcome::Ok, "{what} first");
            let before = cached(&w.dp);
            assert_eq!(run(attempt.clone()), ProbeOutcome::Ok, "{what} again");
            assert_eq!(cached(&w.dp), before + 1, "{what}: the cached verdict");
        }
        // Another port of the same address is judged, and refused.
        let before = cached(&w.dp);
        assert_eq!(
            run(Probe::tcp_connect(denied_port)),
            ProbeOutcome::Eperm,
            "{denied_port}"
        );
        assert_eq!(cached(&w.dp), before, "{denied_port} judged");

        // The policy changes: no cached verdict outlives it.
        w.dp.apply(&peers(&w.host), &w.cgroups, &w.addrs)
            .expect("apply");
        let before = cached(&w.dp);
        assert_eq!(
            run(Probe::tcp_connect(tcp.addr())),
            ProbeOutcome::Eperm,
            "tcp after the change"
        );
        assert_eq!(
            run(Probe::udp_send(udp.addr())),
            ProbeOutcome::Eperm,
            "udp after the change"
        );
        assert_eq!(cached(&w.dp), before, "judged after the change");
    }
}
