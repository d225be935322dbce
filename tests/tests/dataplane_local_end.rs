//! The local end of real traffic. A cgroup that is not registered itself
//! is its deepest registered ancestor's, however deep it is. Sockets in no
//! workload under `unmanaged = allow` are allowed without anything
//! recorded for a short connection (no flow in `FLOWS`, none on the
//! socket, no packet counted as a new flow), keep the flow on the socket of
//! a connection that lasts, and a change to `unmanaged = deny` still cuts
//! an established connection.

mod dataplane_support;

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener},
    os::fd::AsFd as _,
    time::{Duration, Instant},
};

use Action::Allow;
use Direction::Egress;
use Protocol::Tcp;
use dataplane_support::{EPERM, OK, add_verdicts, empty_policy, tcp_echo_server, tcp_exchange};
use enforcer::dataplane::{Dataplane, DataplaneOptions, HostAddrs, ResolvedCgroup, UnmanagedMode};
use enforcer_common::{
    identity::{IDENTITY_HOST, Identity},
    protocol::Protocol,
    verdict::{Action, Direction},
    workload::Mode,
};
use enforcer_tests::fork::{in_cgroup, pipe, spawn_in_cgroup, wait_child};
use enforcer_tests::{CgroupGuard, ProbeOutcome, TcpHold, TestHost, privileged};

const A: Identity = 16;
const B: Identity = 17;

/// Workload `a` (which may open nothing) holds cgroup `a`, workload `b`
/// (which may reach this host's echo server) its child `a/b`; `u` is no
/// workload's. Cgroups below them that nobody registered belong to the
/// deepest registered one: `a/b/c/d` and one sixteen levels below `a/b`
/// (past the 16 levels the programs search, counted from the root) to `b`,
/// `a/x/y` to `a`, `u/v` to none.
#[test]
fn an_unregistered_cgroup_is_its_deepest_registered_ancestors() {
    let _root = privileged!();
    let parent = CgroupGuard::new().expect("cgroup");
    let a = parent.child("a").expect("a");
    let b = a.child("b").expect("a/b");
    let u = parent.child("u").expect("u");
    let mut deep = vec![b.child("c").expect("a/b/c")];
    for level in 0..15 {
        let next = deep[level].child("d").expect("a/b/c/d...");
        deep.push(next);
    }
    let x = a.child("x").expect("a/x");
    let y = x.child("y").expect("a/x/y");
    let v = u.child("v").expect("u/v");
    let server = tcp_echo_server(SocketAddr::from(([127, 0, 0, 1], 0)));
    let mut policy = empty_policy(&[(A, "a"), (B, "b")], &[]);
    add_verdicts(
        &mut policy,
        &[(B, Egress, Tcp, IDENTITY_HOST, server.port(), 16, Allow)],
    );
    let mut dp = Dataplane::load(&DataplaneOptions::default()).expect("load");
    dp.attach(parent.path()).expect("attach");
    let entry = |cgroup: &CgroupGuard, workload| ResolvedCgroup {
        cgroup_id: cgroup.id(),
        workload,
        class: workload,
        mode: Mode::Enforce as u8,
    };
    dp.apply(
        &policy,
        &[entry(&a, A), entry(&b, B)],
        &HostAddrs::from_system().expect("host addresses"),
    )
    .expect("apply");
    let t = Duration::from_millis(1500);
    let exchange = |cgroup: &CgroupGuard| in_cgroup(cgroup.path(), || tcp_exchange(server, t));
    assert_eq!(exchange(&b), OK, "a/b");
    assert_eq!(exchange(&deep[1]), OK, "a/b/c/d");
    assert_eq!(exchange(&deep[15]), OK, "sixteen levels below a/b");
    assert_eq!(exchange(&a), EPERM, "a");
    assert_eq!(exchange(&y), EPERM, "a/x/y");
    assert_eq!(exchange(&v), OK, "u/v, no workload's");
}

const SHORT: Duration = Duration::from_millis(400);
/// Exchanges after which the connection has carried well over the 16
/// segments past which a flow is kept on its socket.
const LONG: usize = 14;

/// A server in an unmanaged cgroup under the programs (the test host's
/// client, in its own namespace and an unfiltered cgroup, runs none):
/// after one exchange nothing is recorded of its connection; after
/// [`LONG`], its socket holds an allowed flow of `host`; once unmanaged
/// processes are denied, its next packet is dropped.
#[test]
fn an_unmanaged_server_records_nothing_until_its_connection_lasts() {
    let _root = privileged!();
    let host = TestHost::new("198.51.100.0/24", "2001:db8:7d::/64").expect("test host");
    let parent = CgroupGuard::new().expect("cgroup");
    let unmanaged = parent.child("u").expect("cgroup u");
    let client_cgroup = CgroupGuard::new().expect("client cgroup");
    let mut dp = Dataplane::load(&DataplaneOptions::default()).expect("load");
    dp.attach(parent.path()).expect("attach");
    // A policy in force, in which `u` is no workload.
    dp.apply(
        &empty_policy(&[(A, "a")], &[]),
        &[],
        &HostAddrs::from_system().expect("host addresses"),
    )
    .expect("apply");
    let local = host.local_ipv4();
    let (ready_rd, ready_wr) = pipe();
    let dp_ref = &dp;
    // Exit codes: 0 as expected; 10.. the step that failed.
    let child = spawn_in_cgroup(unmanaged.path(), move || {
        let Ok(listener) = TcpListener::bind(SocketAddr::new(local, 0)) else {
            return 10;
        };
        let Ok(port) = listener.local_addr().map(|a| a.port()) else {
            return 10;
        };
        let Ok(before) = dp_ref.global_counters().map(|c| c.new_flows) else {
            return 11;
        };
        // SAFETY: two bytes from our stack to our own pipe.
        if unsafe { libc::write(ready_wr, port.to_ne_bytes().as_ptr().cast(), 2) } != 2 {
            return 12;
        }
        if listener.set_nonblocking(true).is_err() {
            return 13;
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut accepted = loop {
            match listener.accept() {
                Ok((stream, _)) => break stream,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        return 14;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(_) => return 15,
            }
        };
        let _ = accepted.set_nonblocking(false);
        let _ = accepted.set_read_timeout(Some(Duration::from_secs(2)));
        let mut echoed = 0;
        let mut buf = [0u8; 64];
        // Echo until the client stops (its last message is dropped).
        while let Ok(n @ 1..) = accepted.read(&mut buf) {
            // The last answer's flow is read before the answer goes out:
            // once the client has it, the test turns `unmanaged` to deny
            // and the next segment is judged (and recorded) under that.
            if echoed + 1 == LONG {
                match dp_ref.socket_flow(accepted.as_fd()) {
                    Ok(Some(f)) if f.local == IDENTITY_HOST && f.action == Allow as u8 => {}
                    Ok(Some(_)) => return 22,
                    Ok(None) => return 23,
                    Err(_) => return 24,
                }
            }
            if accepted.write_all(&buf[..n]).is_err() {
                return 16;
            }
            echoed += 1;
            if echoed == 1 {
                // Allowed, and nothing of it recorded anywhere.
                match dp_ref.socket_flow(accepted.as_fd()) {
                    Ok(None) => {}
                    Ok(Some(_)) => return 17,
                    Err(_) => return 18,
                }
                match dp_ref.flows() {
                    Ok(flows)
                        if !flows
                            .iter()
                            .any(|(k, _)| k.protocol == Tcp as u8 && k.local_port == port) => {}
                    Ok(_) => return 19,
                    Err(_) => return 20,
                }
                if dp_ref.global_counters().map(|c| c.new_flows).ok() != Some(before) {
                    return 21;
                }
            }
        }
        if echoed == LONG { 0 } else { 25 }
    });
    // SAFETY: our copy of the write end, not used again.
    unsafe { libc::close(ready_wr) };
    let mut b = [0u8; 2];
    // SAFETY: blocking read of two bytes from our pipe.
    let ready = unsafe { libc::read(ready_rd, b.as_mut_ptr().cast(), 2) } == 2;
    let exchanges = ready.then(|| {
        let to = SocketAddr::new(local, u16::from_ne_bytes(b));
        let mut hold =
            TcpHold::open(&client_cgroup, Some(&host), to, SHORT).expect("the client starts");
        let connected = hold.connect_report().outcome.clone();
        let allowed: Vec<ProbeOutcome> = (0..LONG).map(|_| hold.exchange().outcome).collect();
        dp.set_unmanaged(UnmanagedMode::Deny).expect("deny");
        (connected, allowed, hold.exchange().outcome)
    });
    let code = wait_child(child);
    // SAFETY: our read end, not used again.
    unsafe { libc::close(ready_rd) };
    let (connected, allowed, denied) = exchanges.expect("the server listens");
    assert_eq!(connected, ProbeOutcome::Ok, "the connection");
    assert!(
        allowed.iter().all(|o| *o == ProbeOutcome::Ok),
        "allowed exchanges: {allowed:?}"
    );
    assert_ne!(
        denied,
        ProbeOutcome::Ok,
        "an exchange after `unmanaged = deny`"
    );
    assert_eq!(code, 0, "step {code} failed (see the test's exit codes)");
}
