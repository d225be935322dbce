//! Local connections to services on this host: the receiving workload must
//! be recognised even when its server was listening before the daemon
//! started (no `bind()` for the kernel to see), and when its workload names
//! a parent of the cgroup the server runs in (`system-postgresql.slice`
//! around `postgresql@15-main.service`).

mod daemon_support;

use std::net::SocketAddr;

use daemon_support::{Daemon, Scratch, loopback, write_policy};
use enforcer_tests::{CgroupGuard, ProbeOutcome, Server, privileged, tcp_connect};

/// `db` (cgroup `db_selector`) accepts `port` from `app` only; `other` has
/// no policy, so only the receiving side can refuse it.
fn policy(db_selector: &str, port: u16) -> String {
    format!(
        r#"[workload.db]
{db_selector}
labels = {{ app = "db" }}

[workload.app]
cgroup = "app"
labels = {{ app = "app" }}

[workload.other]
cgroup = "other"
labels = {{ app = "other" }}

[[policy]]
name = "db"
select = {{ app = "db" }}
allow-in = [ {{ from = [{{ app = "app" }}], ports = ["{port}/tcp"] }} ]

[[policy]]
name = "app"
select = {{ app = "app" }}
allow-out = [ {{ to = [{{ app = "db" }}], ports = ["{port}/tcp"] }} ]
"#
    )
}

fn assert_db_is_the_receiver(app: &CgroupGuard, other: &CgroupGuard, server: &Server) {
    assert_eq!(
        tcp_connect(app, None, server.addr()),
        ProbeOutcome::Ok,
        "the allowed client must reach the server"
    );
    // Refused at connect() (EPERM), not a hang: the receiver's ingress is
    // judged on the sending side for a local connection.
    assert_eq!(
        tcp_connect(other, None, server.addr()),
        ProbeOutcome::Eperm,
        "the denied client must be refused at once"
    );
}

#[test]
fn a_server_listening_before_the_daemon_started_is_the_receiving_workload() {
    let _root = privileged!();
    let root = CgroupGuard::new().expect("cgroup");
    let db = root.child("db").expect("db cgroup");
    let app = root.child("app").expect("app cgroup");
    let other = root.child("other").expect("other cgroup");
    // The server binds before any program is attached: the kernel never
    // sees its bind().
    let server = Server::tcp(Some(&db), None, loopback()).expect("server");
    let policies = Scratch::new("policies");
    write_policy(
        &policies.0,
        &policy(r#"cgroup = "db""#, server.addr().port()),
    );

    let daemon = Daemon::start(&root, &policies.0);
    assert_db_is_the_receiver(&app, &other, &server);
    // The policy is in force (not merely adopted).
    let status = daemon.status();
    assert!(status.policy.is_some(), "{:?}", status.not_enforced);
}

#[test]
fn a_workload_naming_a_parent_cgroup_receives_for_its_children() {
    let _root = privileged!();
    let root = CgroupGuard::new().expect("cgroup");
    let slice = root.child("system-pg.slice").expect("slice cgroup");
    let app = root.child("app").expect("app cgroup");
    let other = root.child("other").expect("other cgroup");
    let policies = Scratch::new("policies");
    // The port is only known once the server listens; the server's cgroup
    // is created after the daemon started (the watcher must add it), and
    // the server binds while the programs are attached.
    let probe_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
        l.local_addr().unwrap().port()
    };
    write_policy(
        &policies.0,
        &policy(r#"unit = "system-pg.slice""#, probe_port),
    );
    let daemon = Daemon::start(&root, &policies.0);
    let instance = slice.child("pg@15-main.service").expect("child cgroup");
    let server = Server::tcp(
        Some(&instance),
        None,
        SocketAddr::from(([127, 0, 0, 1], probe_port)),
    )
    .expect("server");
    assert!(
        Daemon::eventually(std::time::Duration::from_secs(3), || tcp_connect(
            &app,
            None,
            server.addr()
        ) == ProbeOutcome::Ok),
        "the allowed client never reached the server in the child cgroup"
    );
    assert_db_is_the_receiver(&app, &other, &server);
    // status lists the directly matched cgroup, not every descendant.
    let status = daemon.status();
    let db = status
        .workloads
        .iter()
        .find(|w| w.name == "db")
        .expect("db workload");
    assert_eq!(db.cgroups, ["system-pg.slice"], "{status:?}");
}

#[test]
fn a_child_cgroup_server_running_before_the_daemon_started_is_recognised() {
    let _root = privileged!();
    let root = CgroupGuard::new().expect("cgroup");
    let slice = root.child("system-pg.slice").expect("slice cgroup");
    let instance = slice.child("pg@15-main.service").expect("child cgroup");
    let app = root.child("app").expect("app cgroup");
    let other = root.child("other").expect("other cgroup");
    let server = Server::tcp(Some(&instance), None, loopback()).expect("server");
    let policies = Scratch::new("policies");
    write_policy(
        &policies.0,
        &policy(r#"unit = "system-pg.slice""#, server.addr().port()),
    );
    let _daemon = Daemon::start(&root, &policies.0);
    assert_db_is_the_receiver(&app, &other, &server);
}

/// The packaged daemon has only CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (no
/// CAP_SYS_PTRACE: it cannot read another user's `/proc/PID/fd`), and
/// servers run as their own users: the scan must still find them.
#[test]
fn a_server_of_another_user_is_found_by_a_daemon_with_the_packaged_capabilities() {
    use enforcer_tests::Spawner;

    let _root = privileged!();
    let root = CgroupGuard::new().expect("cgroup");
    let db = root.child("db").expect("db cgroup");
    let app = root.child("app").expect("app cgroup");
    let other = root.child("other").expect("other cgroup");
    // nobody may not reach the checkout: it runs a copy of the probe.
    let probe =
        enforcer_tests::ReachableCopy::of(&enforcer_tests::probe_path().expect("probe binary"))
            .expect("a copy of the probe nobody may run");
    let mut server = Spawner::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(probe.path())
        .args(["tcp-listen", "127.0.0.1:0", "--exit-on-stdin-eof"])
        .cgroup(&db)
        .spawn()
        .expect("server as nobody");
    let line = server
        .read_line(std::time::Duration::from_secs(5))
        .expect("server output")
        .unwrap_or_else(|| panic!("server exited: {}", server.stderr()));
    let addr: SocketAddr = line
        .strip_prefix("ready ")
        .and_then(|a| a.trim().parse().ok())
        .unwrap_or_else(|| panic!("unexpected server output {line:?}"));
    let policies = Scratch::new("policies");
    write_policy(&policies.0, &policy(r#"cgroup = "db""#, addr.port()));
    let _daemon = Daemon::start_wrapped(
        &root,
        &policies.0,
        &[],
        &[
            "setpriv",
            "--bounding-set=-all,+bpf,+net_admin,+perfmon",
            "--inh-caps=-all",
            "--",
        ],
    );
    assert_eq!(tcp_connect(&app, None, addr), ProbeOutcome::Ok);
    assert_eq!(tcp_connect(&other, None, addr), ProbeOutcome::Eperm);
}

/// `Dataplane::seed_bound_ports` adds what the kernel does not know, never
/// replaces an entry the kernel wrote, and forgets seeded entries whose
/// port is no longer bound; the per-packet path's bit of each TCP port
/// follows the table, whether the kernel or the seeding changed it.
#[test]
fn seeded_ports_never_replace_the_kernels_and_are_pruned() {
    use enforcer::dataplane::{Dataplane, DataplaneOptions};
    use enforcer_common::protocol::Protocol;

    let _root = privileged!();
    let root = CgroupGuard::new().expect("cgroup");
    let svc = root.child("svc").expect("svc cgroup");
    let mut dp = Dataplane::load(&DataplaneOptions::default()).expect("load");
    dp.attach(root.path()).expect("attach");
    // Bound while attached: the kernel's entry, with the socket's cookie.
    let server = Server::tcp(Some(&svc), None, loopback()).expect("server");
    let bound = server.addr().port();
    let unknown = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
        l.local_addr().unwrap().port()
    };
    let entry = |dp: &Dataplane, port: u16| {
        dp.bound_ports()
            .unwrap()
            .into_iter()
            .find(|(k, _)| k.protocol == Protocol::Tcp as u8 && k.port == port)
            .map(|(_, v)| v)
    };
    let marked = |dp: &Dataplane, port: u16| dp.tcp_port_marked_bound(port).expect("port bits");
    let kernel = entry(&dp, bound).expect("the kernel recorded the bind");
    assert_eq!(kernel.cgroup_id, svc.id());
    assert_ne!(kernel.cookie, 0);
    assert!(marked(&dp, bound), "the kernel marked its port");
    assert!(!marked(&dp, unknown));

    let netns = enforcer::dataplane::netns_cookie().expect("netns cookie");
    let added = dp
        .seed_bound_ports(
            netns,
            &[
                (Protocol::Tcp as u8, bound, 4242),
                (Protocol::Tcp as u8, unknown, 4343),
            ],
        )
        .expect("seed");
    assert_eq!(added, 1);
    assert_eq!(entry(&dp, bound), Some(kernel), "the kernel's entry stays");
    let seeded = entry(&dp, unknown).expect("seeded");
    assert_eq!((seeded.cgroup_id, seeded.cookie), (4343, 0));
    assert!(marked(&dp, unknown), "seeded, marked");

    // The next scan no longer sees `unknown` bound: its seeded entry goes,
    // the kernel's stays.
    assert_eq!(dp.seed_bound_ports(netns, &[]).expect("seed"), 0);
    assert_eq!(entry(&dp, unknown), None);
    assert_eq!(entry(&dp, bound), Some(kernel));
    assert!(!marked(&dp, unknown), "pruned, unmarked");
    assert!(marked(&dp, bound));

    // The server closes its socket: the kernel forgets the port; its bit
    // goes at the next seeding, which sees no namespace holding it.
    drop(server);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while entry(&dp, bound).is_some() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(entry(&dp, bound), None, "released");
    assert!(marked(&dp, bound), "only the daemon clears a bit");
    dp.seed_bound_ports(netns, &[]).expect("seed");
    assert!(!marked(&dp, bound), "released, unmarked");
}
