//! Network namespaces with the daemon as production runs it: its programs
//! on the root of the cgroup v2 hierarchy, so that every process of this
//! machine passes them, the test hosts' processes (which belong to no
//! workload) included. Within one namespace two local ends see each other
//! as workloads; across namespaces each end judges the other by the address
//! it sees, as another machine; sockets of another namespace never change
//! a verdict of this one's workloads. Also `ping` (its UDP `connect()` probe)
//! and connected UDP sockets.

mod daemon_support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use daemon_support::{Daemon, Scratch, write_policy};
use enforcer_tests::{
    CgroupGuard, Probe, ProbeOutcome, Server, Spawner, TestHost, privileged, tcp_connect,
};

/// The policy: `store` (a server) admits `app` and the lab's test host
/// (198.51.100.2) on `port`/tcp; `app` may reach `store` there and on any
/// UDP port (which the store does not admit), and the lab on ICMP and UDP
/// `udp_port` only. Patterns are relative to the hierarchy's root.
fn policy(app: &CgroupGuard, store: &CgroupGuard, port: u16, udp_port: u16) -> String {
    let rel = |cg: &CgroupGuard| cg.relative_path().trim_start_matches('/').to_owned();
    format!(
        r#"[workload.app]
cgroup = "{app}"
labels = {{ app = "app" }}

[workload.store]
cgroup = "{store}"
labels = {{ app = "store" }}

[peer.lab]
cidrs = ["198.51.100.2/32"]
labels = {{ zone = "lab" }}

[[policy]]
name = "app"
select = {{ app = "app" }}
allow-out = [
  {{ to = [{{ app = "store" }}], ports = ["{port}/tcp", "udp"] }},
  {{ to = [{{ zone = "lab" }}], ports = ["icmp", "{udp_port}/udp"] }},
]

[[policy]]
name = "store"
select = {{ app = "store" }}
allow-in = [ {{ from = [{{ app = "app" }}, {{ zone = "lab" }}], ports = ["{port}/tcp"] }} ]
"#,
        app = rel(app),
        store = rel(store),
    )
}

/// Dropped in this order: the daemon (its programs detached), the
/// servers, the cgroups, the test host.
struct Setup {
    _daemon: Daemon,
    /// `store`'s server on every address of this host, on the port the
    /// policy admits.
    admitted: Server,
    /// `store`'s server on a port the policy does not admit.
    other: Server,
    udp_port: u16,
    app: CgroupGuard,
    store: CgroupGuard,
    _root: CgroupGuard,
    lab: TestHost,
    _policies: Scratch,
}

fn setup() -> Setup {
    let lab = TestHost::new("198.51.100.0/24", "2001:db8:51::/64").expect("test host");
    let root = CgroupGuard::new().expect("cgroup");
    let app = root.child("app").expect("cgroup");
    let store = root.child("store").expect("cgroup");
    let any = |port| SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port);
    let admitted = Server::tcp(Some(&store), None, any(0)).expect("server");
    let other = Server::tcp(Some(&store), None, any(0)).expect("server");
    let udp = Server::udp(None, Some(&lab), lab.socket_v4(0)).expect("udp server");
    let udp_port = udp.addr().port();
    drop(udp);
    let policies = Scratch::new("policies");
    write_policy(
        &policies.0,
        &policy(&app, &store, admitted.addr().port(), udp_port),
    );
    let daemon = Daemon::start_at_cgroup_root(&policies.0, &[]);
    Setup {
        _daemon: daemon,
        admitted,
        other,
        udp_port,
        app,
        store,
        _root: root,
        lab,
        _policies: policies,
    }
}

/// This host's address on the lab's link, port `port`.
fn here(s: &Setup, port: u16) -> SocketAddr {
    SocketAddr::new(s.lab.local_ipv4(), port)
}

#[test]
fn a_test_host_reaches_a_local_server_through_this_hosts_address_as_a_peer() {
    let _root = privileged!();
    let s = setup();
    // The lab's process belongs to no workload and sits in another
    // namespace: the store judges it by its source address (the `lab`
    // peer), and its own end (unmanaged) lets it connect.
    let admitted = Probe::tcp_connect(here(&s, s.admitted.addr().port()))
        .netns(&s.lab)
        .run();
    assert_eq!(admitted.outcome, ProbeOutcome::Ok, "{}", admitted.line);
    // A port the store does not admit: dropped at the store's side, as for
    // any remote client (a timeout, not a refusal at the lab's end).
    let refused = Probe::tcp_connect(here(&s, s.other.addr().port()))
        .netns(&s.lab)
        .timeout(Duration::from_millis(300))
        .run();
    assert_eq!(refused.outcome, ProbeOutcome::Timeout, "{}", refused.line);
    // On this host, app reaches the store through the same address, and
    // through loopback, as the workload it is; an unmanaged local process
    // is `host`, which the store does not admit: refused at its connect.
    let port = s.admitted.addr().port();
    for addr in [
        here(&s, port),
        SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
    ] {
        assert_eq!(tcp_connect(&s.app, None, addr), ProbeOutcome::Ok, "{addr}");
    }
    let unmanaged = Probe::tcp_connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).run();
    assert_eq!(unmanaged.outcome, ProbeOutcome::Eperm, "{}", unmanaged.line);
}

#[test]
fn a_bind_in_another_namespace_changes_no_verdict_here() {
    let _root = privileged!();
    let s = setup();
    let port = s.admitted.addr().port();
    let local = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    assert_eq!(tcp_connect(&s.app, None, local), ProbeOutcome::Ok);
    // Someone binds the store's port in the lab's namespace (as any user
    // can with `unshare -rn`), and lets it go again.
    let squatter = Server::tcp(None, Some(&s.lab), s.lab.socket_v4(port)).expect("server");
    assert_eq!(tcp_connect(&s.app, None, local), ProbeOutcome::Ok);
    drop(squatter);
    assert_eq!(tcp_connect(&s.app, None, local), ProbeOutcome::Ok);
    // And the store's other port is still refused to app at its connect.
    let other = SocketAddr::from((Ipv4Addr::LOCALHOST, s.other.addr().port()));
    assert_eq!(tcp_connect(&s.app, None, other), ProbeOutcome::Eperm);
}

#[test]
fn ping_and_connected_udp_work_where_allowed_and_are_refused_at_the_send() {
    let _root = privileged!();
    let s = setup();
    // iputils `ping` connect()s a UDP socket first to pick its source
    // address: allowed ICMP means ping works.
    let out = Spawner::new("ping")
        .args(["-n", "-c", "1", "-W", "2"])
        .arg(s.lab.ipv4().to_string())
        .cgroup(&s.app)
        .spawn()
        .expect("ping")
        .wait_with_output(Duration::from_secs(5))
        .expect("ping ends");
    assert!(out.status.success(), "ping: {out:?}");
    // A connected UDP socket: allowed to the admitted port, refused with
    // EPERM at its first send elsewhere (the connect itself goes through).
    let udp = Server::udp(None, Some(&s.lab), s.lab.socket_v4(s.udp_port)).expect("udp server");
    let allowed = Probe::udp_send(udp.addr())
        .cgroup(&s.app)
        .udp_connected()
        .run();
    assert_eq!(allowed.outcome, ProbeOutcome::Ok, "{}", allowed.line);
    let elsewhere = Probe::udp_send(s.lab.socket_v4(s.udp_port + 1))
        .cgroup(&s.app)
        .udp_connected()
        .timeout(Duration::from_millis(300))
        .run();
    assert_eq!(elsewhere.outcome, ProbeOutcome::Eperm, "{}", elsewhere.line);
    // The store does not admit the UDP that app may send it: refused at
    // the send too (the receiver is judged there, as at `sendmsg()`).
    let local_udp = Server::udp(
        Some(&s.store),
        None,
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
    )
    .expect("udp server");
    let to_store = Probe::udp_send(local_udp.addr())
        .cgroup(&s.app)
        .udp_connected()
        .timeout(Duration::from_millis(300))
        .run();
    assert_eq!(to_store.outcome, ProbeOutcome::Eperm, "{}", to_store.line);
}
