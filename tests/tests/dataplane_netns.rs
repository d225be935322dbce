//! Real traffic between workloads on this machine and a test host in a
//! network namespace (over veth, documentation ranges only): peers by
//! longest prefix, port ranges, deny overriding allow, TCP, UDP and ICMP
//! echo in IPv4 and IPv6, inbound connections from a peer, and two local
//! workloads talking over this machine's own address.

mod dataplane_support;

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::fd::AsFd as _,
    time::Duration,
};

use dataplane_support::{
    close_pipe, empty_policy, pipe, require_root, spawn_in_cgroup, wait_child,
};
use enforcer::{
    compile::compiled::CompiledPolicy,
    dataplane::{Dataplane, DataplaneOptions, HostAddrs, ResolvedCgroup},
};
use enforcer_common::{
    ACTION_ALLOW, ACTION_DENY, AddrKey4, AddrKey6, DIRECTION_EGRESS, DIRECTION_INGRESS, Identity,
    MODE_ENFORCE, PROTO_ICMP, PROTO_TCP, PROTO_UDP, VerdictKey, VerdictValue,
};
use enforcer_tests::{CgroupGuard, Probe, ProbeOutcome, Server, TestHost};

const A: Identity = 16;
const B: Identity = 17;
const OFFICE: Identity = 18;
const VENDOR: Identity = 19;

#[expect(
    clippy::too_many_arguments,
    reason = "one verdict-key field per argument, as VerdictKey::new"
)]
fn entry(
    p: &mut CompiledPolicy,
    w: Identity,
    d: u8,
    proto: u8,
    r: Identity,
    port: u16,
    bits: u8,
    action: u8,
) {
    p.verdicts.push((
        VerdictKey::new(w, d, proto, r, port, bits),
        VerdictValue {
            rule: 0,
            action,
            _pad: [0; 3],
        },
    ));
    p.verdicts.sort_by_key(|(k, _)| *k);
}

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

#[test]
fn egress_to_a_remote_peer_by_longest_prefix_ports_and_protocols() {
    let Some(_root) = require_root() else {
        return;
    };
    let host = TestHost::new("198.51.100.0/24", "2001:db8:71::/64").expect("test host");
    let parent = CgroupGuard::new().expect("cgroup");
    let a = parent.child("a").expect("cgroup a");
    let mut dp = Dataplane::load(&DataplaneOptions::default()).expect("load");
    dp.attach(parent.path()).expect("attach");

    let mut p = peers(&host);
    // 8000-8003/tcp to vendor (one 14-bit block), but 8002 denied (a longer
    // prefix: what the compiler emits for a deny inside an allowed range).
    entry(
        &mut p,
        A,
        DIRECTION_EGRESS,
        PROTO_TCP,
        VENDOR,
        8000,
        14,
        ACTION_ALLOW,
    );
    entry(
        &mut p,
        A,
        DIRECTION_EGRESS,
        PROTO_TCP,
        VENDOR,
        8002,
        16,
        ACTION_DENY,
    );
    // 9000/tcp only to office: the test host is vendor, so denied.
    entry(
        &mut p,
        A,
        DIRECTION_EGRESS,
        PROTO_TCP,
        OFFICE,
        9000,
        16,
        ACTION_ALLOW,
    );
    entry(
        &mut p,
        A,
        DIRECTION_EGRESS,
        PROTO_UDP,
        VENDOR,
        5353,
        16,
        ACTION_ALLOW,
    );
    entry(
        &mut p,
        A,
        DIRECTION_EGRESS,
        PROTO_ICMP,
        VENDOR,
        0,
        16,
        ACTION_ALLOW,
    );
    let cgroups = [ResolvedCgroup {
        cgroup_id: a.id(),
        workload: A,
        class: A,
        mode: MODE_ENFORCE,
    }];
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
    p.verdicts.retain(|(k, _)| k.protocol() != PROTO_ICMP);
    dp.apply(&p, &cgroups, &addrs).expect("apply");
    let ping = probe(Probe::ping(host.ipv4()).cgroup(&a).timeout(SHORT).run());
    assert!(
        matches!(ping, ProbeOutcome::Eperm | ProbeOutcome::Timeout),
        "ping must fail: {ping:?}"
    );
}

#[test]
fn inbound_from_a_peer_and_local_workloads_over_the_host_address() {
    let Some(_root) = require_root() else {
        return;
    };
    let host = TestHost::new("203.0.113.0/24", "2001:db8:72::/64").expect("test host");
    let parent = CgroupGuard::new().expect("cgroup");
    let a = parent.child("a").expect("cgroup a");
    let b = parent.child("b").expect("cgroup b");
    let mut dp = Dataplane::load(&DataplaneOptions::default()).expect("load");
    dp.attach(parent.path()).expect("attach");

    // B serves 7000 and 7001 on this machine's veth address.
    let local = host.local_ipv4();
    let open = Server::tcp(Some(&b), None, SocketAddr::new(local, 7000)).expect("server");
    let closed = Server::tcp(Some(&b), None, SocketAddr::new(local, 7001)).expect("server");
    let mut p = peers(&host);
    entry(
        &mut p,
        B,
        DIRECTION_INGRESS,
        PROTO_TCP,
        VENDOR,
        7000,
        16,
        ACTION_ALLOW,
    );
    let cgroups = [
        ResolvedCgroup {
            cgroup_id: a.id(),
            workload: A,
            class: A,
            mode: MODE_ENFORCE,
        },
        ResolvedCgroup {
            cgroup_id: b.id(),
            workload: B,
            class: B,
            mode: MODE_ENFORCE,
        },
    ];
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
    entry(
        &mut p,
        A,
        DIRECTION_EGRESS,
        PROTO_TCP,
        B,
        7000,
        16,
        ACTION_ALLOW,
    );
    dp.apply(&p, &cgroups, &addrs).expect("apply");
    assert_eq!(
        from_a(&open),
        ProbeOutcome::Eperm,
        "B's allow-in names vendor, not A"
    );
    entry(
        &mut p,
        B,
        DIRECTION_INGRESS,
        PROTO_TCP,
        A,
        7000,
        16,
        ACTION_ALLOW,
    );
    dp.apply(&p, &cgroups, &addrs).expect("apply");
    assert_eq!(from_a(&open), ProbeOutcome::Ok, "both ends allow");
}

#[test]
fn inbound_tcp_and_udp_from_a_peer_over_ipv4_and_ipv6() {
    let Some(_root) = require_root() else {
        return;
    };
    let host = TestHost::new("198.51.100.0/24", "2001:db8:73::/64").expect("test host");
    let parent = CgroupGuard::new().expect("cgroup");
    let b = parent.child("b").expect("cgroup b");
    let mut dp = Dataplane::load(&DataplaneOptions::default()).expect("load");
    dp.attach(parent.path()).expect("attach");
    let mut p = peers(&host);
    entry(
        &mut p,
        B,
        DIRECTION_INGRESS,
        PROTO_TCP,
        VENDOR,
        7100,
        16,
        ACTION_ALLOW,
    );
    entry(
        &mut p,
        B,
        DIRECTION_INGRESS,
        PROTO_UDP,
        VENDOR,
        7200,
        16,
        ACTION_ALLOW,
    );
    let cgroups = [ResolvedCgroup {
        cgroup_id: b.id(),
        workload: B,
        class: B,
        mode: MODE_ENFORCE,
    }];
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
            cgroups: [ResolvedCgroup {
                cgroup_id: a.id(),
                workload: A,
                class: A,
                mode: MODE_ENFORCE,
            }],
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
fn host_allows(host: &TestHost, protocols: &[u8], port: u16) -> CompiledPolicy {
    let mut p = peers(host);
    for &proto in protocols {
        entry(
            &mut p,
            A,
            DIRECTION_EGRESS,
            proto,
            VENDOR,
            port,
            16,
            ACTION_ALLOW,
        );
    }
    p
}

/// A connected TCP socket keeps its flow on itself (`SOCKET_FLOWS`), not in
/// the shared `FLOWS` table; its SYN takes the verdict `connect` took, so no
/// packet is judged twice; and a policy change still reaches it: its next
/// packet is judged again and dropped.
#[test]
fn a_tcp_connection_keeps_its_flow_on_its_socket_and_is_revoked() {
    let Some(_root) = require_root() else {
        return;
    };
    let mut w = WorkloadA::new("2001:db8:74::/64");
    let allowed = host_allows(&w.host, &[PROTO_TCP], 8001);

    for server_addr in [w.host.socket_v4(8001), w.host.socket_v6(8001)] {
        w.dp.apply(&allowed, &w.cgroups, &w.addrs).expect("apply");
        let server = Server::tcp(None, Some(&w.host), server_addr).expect("tcp server");
        let to = server.addr();
        let (go_rd, go_wr) = pipe();
        let dp_ref = &w.dp;
        // Exit codes: 0 revoked as expected; 10.. the step that failed.
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
            // `connect` judged the connection; no packet of it was judged
            // again (the SYN took that verdict).
            if before.is_none() || new_flows() != before {
                return 20;
            }
            match dp_ref.socket_flow(c.as_fd()) {
                Ok(Some(s))
                    if s.flow.local == A
                        && s.flow.remote == VENDOR
                        && s.flow.action == ACTION_ALLOW
                        && s.flow.direction == DIRECTION_EGRESS
                        && s.flow.service_port == 8001
                        && s.connect_family == 0 => {}
                Ok(Some(_)) => return 12,
                Ok(None) => return 13,
                Err(_) => return 14,
            }
            let Ok(local_port) = c.local_addr().map(|a| a.port()) else {
                return 15;
            };
            match dp_ref.flows() {
                Ok(flows)
                    if !flows
                        .iter()
                        .any(|(k, _)| k.protocol == PROTO_TCP && k.local_port == local_port) => {}
                Ok(_) => return 16,
                Err(_) => return 17,
            }
            // Wait for the policy change.
            // SAFETY: blocking read of one byte from our pipe.
            if unsafe { libc::read(go_rd, b.as_mut_ptr().cast(), 1) } != 1 {
                return 18;
            }
            let _ = c.write_all(b"y");
            match c.read_exact(&mut b) {
                Ok(()) => 19,
                Err(_) => 0,
            }
        });
        // The child connects and checks while the policy allows, then the
        // policy stops allowing; the parent gives it a moment first.
        std::thread::sleep(Duration::from_millis(300));
        w.dp.apply(&peers(&w.host), &w.cgroups, &w.addrs)
            .expect("apply");
        // SAFETY: one byte to our own pipe.
        assert_eq!(unsafe { libc::write(go_wr, b"g".as_ptr().cast(), 1) }, 1);
        let code = wait_child(child);
        close_pipe(go_rd, go_wr);
        assert_eq!(
            code, 0,
            "{to}: step {code} failed (see the test's exit codes)"
        );
    }
}

/// Keeps the calling thread, and the processes it starts, on the CPU it
/// runs on (the cache of connect verdicts is per CPU); the previous
/// affinity comes back on drop.
struct OnOneCpu(libc::cpu_set_t);

impl OnOneCpu {
    fn new() -> OnOneCpu {
        let size = std::mem::size_of::<libc::cpu_set_t>();
        // SAFETY: plain syscalls on the calling thread, with sets on our
        // own stack.
        unsafe {
            let mut previous: libc::cpu_set_t = std::mem::zeroed();
            assert_eq!(libc::sched_getaffinity(0, size, &mut previous), 0);
            let cpu = libc::sched_getcpu();
            assert!(cpu >= 0, "sched_getcpu");
            let mut one: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu as usize, &mut one);
            assert_eq!(libc::sched_setaffinity(0, size, &one), 0);
            OnOneCpu(previous)
        }
    }
}

impl Drop for OnOneCpu {
    fn drop(&mut self) {
        // SAFETY: as in `new`.
        unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &self.0) };
    }
}

/// `connect` and `sendmsg` keep the verdicts that allowed a remote
/// destination: the next connection (or datagram) from the same cgroup to
/// the same address, port and protocol takes it without being judged, and
/// a policy change ends it.
#[test]
fn a_destination_reached_again_takes_the_cached_verdict_until_the_policy_changes() {
    let Some(_root) = require_root() else {
        return;
    };
    let mut w = WorkloadA::new("2001:db8:75::/64");
    let allowed = host_allows(&w.host, &[PROTO_TCP, PROTO_UDP], 8002);
    let _cpu = OnOneCpu::new();
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
