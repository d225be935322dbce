//! The daemon's local API and endpoints: who may use the socket, `flows
//! --follow`, and the Prometheus endpoint.

mod daemon_support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use daemon_support::{
    Daemon, Scratch, enforcer_bin, servers_and_web_policy, web_policy, write_policy,
};
use enforcer_tests::{CgroupGuard, ProbeOutcome, privileged, tcp_connect};

/// `enforcer status` as another user.
fn status_as(daemon: &Daemon, uid: u32, gid: u32) -> std::process::Output {
    Command::new(enforcer_bin())
        .args(["status", "--json", "--socket"])
        .arg(&daemon.socket)
        .uid(uid)
        .gid(gid)
        .output()
        .expect("run enforcer status")
}

#[test]
fn only_root_and_the_socket_group_may_use_the_socket() {
    let _root = privileged!();
    let root = CgroupGuard::new().expect("cgroup");
    let policies = Scratch::new("policies");
    write_policy(&policies.0, &web_policy(9));
    // Group 4242 may talk to the daemon.
    let daemon = Daemon::start_with(&root, &policies.0, &["--socket-group", "4242"]);
    let meta = std::fs::metadata(&daemon.socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    use std::os::unix::fs::MetadataExt;
    assert_eq!(meta.gid(), 4242);
    // The scratch directory must be traversable by the test users.
    std::fs::set_permissions(daemon.scratch(), std::fs::Permissions::from_mode(0o755)).unwrap();

    let member = status_as(&daemon, 4242, 4242);
    assert!(
        member.status.success(),
        "{}",
        String::from_utf8_lossy(&member.stderr)
    );
    let stranger = status_as(&daemon, 4343, 4343);
    assert_eq!(
        stranger.status.code(),
        Some(3),
        "the socket mode keeps strangers out"
    );

    // Even if the socket's mode is widened, the peer credential check
    // refuses a stranger.
    std::fs::set_permissions(&daemon.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let stranger = status_as(&daemon, 4343, 4343);
    assert!(!stranger.status.success());
    assert!(
        String::from_utf8_lossy(&stranger.stderr).contains("permission denied"),
        "{stranger:?}"
    );
    assert!(stranger.stdout.is_empty(), "a refused client got a status");
}

#[test]
fn flows_follow_streams_new_events() {
    let _root = privileged!();
    let root = CgroupGuard::new().expect("cgroup");
    let web = root.child("web").expect("cgroup");
    let (_allowed, denied, policies) = servers_and_web_policy();
    let daemon = Daemon::start(&root, &policies.0);

    let mut follower = Command::new(enforcer_bin())
        .args([
            "flows",
            "--follow",
            "--json",
            "--workload",
            "web",
            "--socket",
        ])
        .arg(&daemon.socket)
        .stdout(Stdio::piped())
        .spawn()
        .expect("flows --follow");
    let stdout = follower.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // Let the follower connect before the event happens.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(tcp_connect(&web, None, denied.addr()), ProbeOutcome::Eperm);
    let line = rx
        .recv_timeout(Duration::from_secs(3))
        .expect("no followed event");
    let record: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(record["remote"], denied.addr().to_string());
    assert_eq!(record["verdict"], "deny");
    // Still following: no `end`, the process keeps running.
    assert!(follower.try_wait().unwrap().is_none());
    let _ = follower.kill();
    let _ = follower.wait();
}

#[test]
fn the_metrics_endpoint_serves_prometheus_text() {
    let _root = privileged!();
    let root = CgroupGuard::new().expect("cgroup");
    let policies = Scratch::new("policies");
    write_policy(&policies.0, &web_policy(9));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let daemon = Daemon::start_with(&root, &policies.0, &["--metrics", &addr]);
    let generation = daemon.status().policy.unwrap().generation;
    let mut body = String::new();
    let fetched = Daemon::eventually(Duration::from_secs(3), || {
        let Ok(mut s) = TcpStream::connect(&addr) else {
            return false;
        };
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
            .unwrap();
        body.clear();
        s.read_to_string(&mut body).is_ok() && body.starts_with("HTTP/1.0 200")
    });
    assert!(fetched, "{body}");
    assert!(
        body.contains(&format!("enforcer_policy_generation {generation}\n")),
        "{body}"
    );
    assert!(
        body.contains("enforcer_reloads_total{result=\"success\"} 1\n"),
        "{body}"
    );
    assert!(
        body.contains("enforcer_packets_total{workload=\"web\",verdict=\"deny\"}"),
        "{body}"
    );
    assert!(body.contains("enforcer_events_lost_total 0\n"), "{body}");
}
