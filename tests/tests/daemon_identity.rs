//! Identities that cannot be borrowed and no unfiltered window, with a
//! real daemon and real connections: a unit of a workload's name made
//! anywhere but by the system manager is not the workload; a workload
//! restarted while the daemon is killed or stopped is enforced from its
//! first connection.

mod daemon_support;

use std::time::Duration;

use daemon_support::{Daemon, Scratch, loopback, write_policy};
use enforcer_tests::{CgroupGuard, ProbeOutcome, Server, privileged, tcp_connect};

/// Users who own the delegated trees (no account is needed).
const ALICE: u32 = 4242;
const MALLORY: u32 = 4343;

/// `db` (the system unit `db.service`) and `sync` (alice's user unit
/// `db.service`) may reach only `allowed` on this host.
fn policy(allowed: u16) -> String {
    format!(
        r#"[workload.db]
unit = "db.service"
labels = {{ app = "db" }}

[workload.sync]
unit = "db.service"
user = {ALICE}
labels = {{ app = "sync" }}

[[policy]]
name = "db"
select = {{ app = "db" }}
allow-out = [ {{ to = ["host"], ports = ["{allowed}/tcp"] }} ]

[[policy]]
name = "sync"
select = {{ app = "sync" }}
allow-out = [ {{ to = ["host"], ports = ["{allowed}/tcp"] }} ]
"#
    )
}

/// Whether processes in `cg` are enforced as a workload that may reach
/// `allowed` only: `denied` refused at once, `allowed` reached.
fn enforced(cg: &CgroupGuard, allowed: &Server, denied: &Server) -> bool {
    tcp_connect(cg, None, denied.addr()) == ProbeOutcome::Eperm
        && tcp_connect(cg, None, allowed.addr()) == ProbeOutcome::Ok
}

/// Whether processes in `cg` are unmanaged (allowed everywhere by default).
fn unmanaged(cg: &CgroupGuard, denied: &Server) -> bool {
    tcp_connect(cg, None, denied.addr()) == ProbeOutcome::Ok
}

#[test]
fn a_unit_of_a_workloads_name_made_by_someone_else_is_not_the_workload() {
    let _root = privileged!();
    let root = CgroupGuard::new().expect("cgroup");
    let allowed = Server::tcp(None, None, loopback()).expect("server");
    let denied = Server::tcp(None, None, loopback()).expect("server");
    let policies = Scratch::new("policies");
    write_policy(&policies.0, &policy(allowed.addr().port()));
    // Made before the daemon starts (the daemon resolves them) and after
    // (the kernel registers them at their creation): the same verdicts.
    let system = root.child("system.slice").expect("cgroup");
    let before = system.child("db.service").expect("cgroup");
    let user_slice = root.child("user.slice").expect("cgroup");
    let alice_slice = user_slice
        .child(&format!("user-{ALICE}.slice"))
        .expect("cgroup");
    let manager = alice_slice
        .child(&format!("user@{ALICE}.service"))
        .expect("cgroup");
    manager.chown(ALICE).expect("chown");
    let daemon = Daemon::start(&root, &policies.0);

    // The system manager's unit, before and after the daemon started.
    assert!(enforced(&before, &allowed, &denied), "{}", daemon.log());
    let restarted = system.child("system-db.slice").expect("cgroup");
    let after = restarted.child("db.service").expect("cgroup");
    assert!(enforced(&after, &allowed, &denied), "{}", daemon.log());

    // Alice's user manager makes `db.service`: not the system unit, but
    // her workload `sync`, which names her.
    let app = manager.child_as("app.slice", ALICE).expect("cgroup");
    let hers = app.child_as("db.service", ALICE).expect("cgroup");
    assert!(enforced(&hers, &allowed, &denied), "{}", daemon.log());
    // Mallory's manager: neither.
    let mallory_slice = user_slice
        .child(&format!("user-{MALLORY}.slice"))
        .expect("cgroup");
    let mallory = mallory_slice
        .child(&format!("user@{MALLORY}.service"))
        .expect("cgroup");
    mallory.chown(MALLORY).expect("chown");
    let borrowed = mallory.child_as("db.service", MALLORY).expect("cgroup");
    assert!(unmanaged(&borrowed, &denied));

    // A delegated slice, a directory inside another unit, and a directory
    // outside the slices: none is the system manager's unit.
    let handed = system.child("bob.slice").expect("cgroup");
    handed.chown(MALLORY).expect("chown");
    let in_handed = handed.child_as("db.service", MALLORY).expect("cgroup");
    assert!(unmanaged(&in_handed, &denied));
    let docker = system.child("docker.service").expect("cgroup");
    let inside = docker.child("db.service").expect("cgroup");
    assert!(unmanaged(&inside, &denied));
    let other = root.child("other").expect("cgroup");
    let outside = other.child("db.service").expect("cgroup");
    assert!(unmanaged(&outside, &denied));

    // The daemon's own view agrees.
    let listed = Daemon::eventually(Duration::from_secs(2), || {
        let status = daemon.status();
        let cgroups = |name: &str| {
            status
                .workloads
                .iter()
                .find(|w| w.name == name)
                .map(|w| w.cgroups.clone())
                .unwrap_or_default()
        };
        cgroups("db")
            == [
                "system.slice/db.service",
                "system.slice/system-db.slice/db.service",
            ]
            && cgroups("sync")
                == [format!(
                    "user.slice/user-{ALICE}.slice/user@{ALICE}.service/app.slice/db.service"
                )]
    });
    assert!(listed, "{:?}", daemon.status().workloads);
}

/// Restarts a workload's service while the daemon is down, `rounds`
/// times: its cgroup is removed and made again (a new cgroup id), and its
/// first connections are judged as the workload's, not as unmanaged.
fn restarts_stay_enforced(
    system: &CgroupGuard,
    store: &mut Option<(CgroupGuard, Server)>,
    allowed_port: u16,
    denied: &Server,
    rounds: usize,
) {
    for round in 0..rounds {
        let app = system.child("app.service").expect("cgroup");
        let to_store = tcp_connect(
            &app,
            None,
            (std::net::Ipv4Addr::LOCALHOST, allowed_port).into(),
        );
        let to_denied = tcp_connect(&app, None, denied.addr());
        assert_eq!(to_store, ProbeOutcome::Ok, "round {round}: app to store");
        assert_eq!(
            to_denied,
            ProbeOutcome::Eperm,
            "round {round}: app elsewhere"
        );
        app.remove().expect("rmdir app.service");
        // The server restarts too, now and then: a new cgroup, a new bind.
        if round % 10 == 9 {
            *store = None;
            *store = Some(start_store(system, allowed_port));
        }
    }
}

fn start_store(system: &CgroupGuard, port: u16) -> (CgroupGuard, Server) {
    let cg = system.child("store.service").expect("cgroup");
    let server = Server::tcp(
        Some(&cg),
        None,
        (std::net::Ipv4Addr::LOCALHOST, port).into(),
    )
    .expect("store server");
    (cg, server)
}

fn store_policy() -> &'static str {
    r#"[workload.app]
unit = "app.service"
labels = { app = "app" }

[workload.store]
unit = "store.service"
labels = { app = "store" }

[[policy]]
name = "app"
select = { app = "app" }
allow-out = [ { to = [{ app = "store" }], ports = ["tcp"] } ]

[[policy]]
name = "store"
select = { app = "store" }
allow-in = [ { from = [{ app = "app" }], ports = ["tcp"] } ]
"#
}

#[test]
fn services_restarted_while_the_daemon_is_killed_or_stopped_stay_enforced() {
    let _root = privileged!();
    let root = CgroupGuard::new().expect("cgroup");
    let system = root.child("system.slice").expect("cgroup");
    let denied = Server::tcp(None, None, loopback()).expect("server");
    // A free port for the store, which restarts on it.
    let port = Server::tcp(None, None, loopback())
        .expect("probe port")
        .addr()
        .port();
    let mut store = Some(start_store(&system, port));
    let policies = Scratch::new("policies");
    write_policy(&policies.0, store_policy());
    let mut daemon = Daemon::start(&root, &policies.0);
    restarts_stay_enforced(&system, &mut store, port, &denied, 3);

    daemon.kill9();
    restarts_stay_enforced(&system, &mut store, port, &denied, 100);

    daemon.restart();
    daemon.signal(libc::SIGSTOP);
    restarts_stay_enforced(&system, &mut store, port, &denied, 100);
    daemon.signal(libc::SIGCONT);

    // Awake, the daemon sees the cgroups the kernel registered.
    let listed = Daemon::eventually(Duration::from_secs(2), || {
        let status = daemon.status();
        status
            .workloads
            .iter()
            .any(|w| w.name == "store" && w.cgroups == ["system.slice/store.service"])
    });
    assert!(listed, "{:?}", daemon.status().workloads);
    // The 100 restarts while it was stopped were the kernel's doing
    // (counters of the maps, which outlive each daemon).
    let registration = daemon.status().cgroup_registration;
    assert!(registration.at_creation, "{registration:?}");
    assert!(registration.registered >= 200, "{registration:?}");
    assert_eq!(registration.refused, 0, "{registration:?}");
}
