//! The daemon's local API and endpoints: who may use the socket and what
//! each role may ask, what one client can cost (connection caps, idle and
//! request timeouts), `flows --follow`, and the Prometheus endpoint, which
//! like `status` never waits for a policy load.

mod daemon_support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use daemon_support::{
    Daemon, Scratch, TestGroup, as_user, enforcer_bin, scrape_metrics, servers_and_web_policy,
    web_policy, write_policy,
};
use enforcer::api::{Request, Response};
use enforcer_tests::{CgroupGuard, ProbeOutcome, privileged, tcp_connect};

/// Uids no account on the test machine has.
const READER: u32 = 4301;
const ADMIN: u32 = 4302;
const STRANGER: u32 = 4303;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A test cgroup root, and a policy directory holding the web policy
/// (port 9): what the daemons of these tests start from.
fn root_and_web_policy() -> (CgroupGuard, Scratch) {
    let root = CgroupGuard::new().expect("cgroup");
    let policies = Scratch::new("policies");
    write_policy(&policies.0, &web_policy(9));
    (root, policies)
}

/// Lets other users reach the socket in the daemon's scratch directory.
fn open_scratch(daemon: &Daemon) {
    std::fs::set_permissions(daemon.scratch(), std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn socket_group_keeps_its_meaning_and_the_peer_check_stays() {
    let _root = privileged!();
    let (root, policies) = root_and_web_policy();
    // The setting of earlier versions: group 4242 may use the socket, apply
    // included.
    let daemon = Daemon::start_with(&root, &policies.0, &["--socket-group", "4242"]);
    assert!(
        daemon.log().contains("earlier name of admin_group"),
        "{}",
        daemon.log()
    );
    let meta = std::fs::metadata(&daemon.socket).unwrap();
    // 0660 whose group bits are the ACL's mask; the file keeps the
    // daemon's group: no chown, so no CAP_CHOWN needed.
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), 0);
    open_scratch(&daemon);

    let member = daemon.cli_as(4242, 4242, &[], &["status", "--json"]);
    assert!(member.status.success(), "{}", text(&member.stderr));
    let candidate = Scratch::new("candidate");
    write_policy(&candidate.0, &web_policy(10));
    let applied = daemon.cli_as(4242, 4242, &[], &["apply", candidate.0.to_str().unwrap()]);
    assert_eq!(
        applied.status.code(),
        Some(0),
        "{}{}",
        text(&applied.stdout),
        text(&applied.stderr)
    );

    let stranger = daemon.cli_as(STRANGER, STRANGER, &[], &["status", "--json"]);
    assert_eq!(
        stranger.status.code(),
        Some(3),
        "the socket's ACL keeps strangers out"
    );
    assert!(
        text(&stranger.stderr).contains("Permission denied"),
        "{stranger:?}"
    );

    // Even if the socket's mode is widened, the peer credential check
    // refuses a stranger.
    std::fs::set_permissions(&daemon.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let stranger = daemon.cli_as(STRANGER, STRANGER, &[], &["status", "--json"]);
    assert!(!stranger.status.success());
    assert!(
        text(&stranger.stderr).contains("permission denied: uid 4303 is not root"),
        "{stranger:?}"
    );
    assert!(stranger.stdout.is_empty(), "a refused client got a status");
}

#[test]
fn the_read_group_reads_and_the_admin_group_applies() {
    let _root = privileged!();
    let (root, policies) = root_and_web_policy();
    let readers = TestGroup::new("r");
    let admins = TestGroup::new("a");
    let daemon = Daemon::start_with(
        &root,
        &policies.0,
        &["--read-group", &readers.name, "--admin-group", &admins.name],
    );
    open_scratch(&daemon);
    let hash = daemon.status().policy.unwrap().content_hash;
    let candidate = Scratch::new("candidate");
    write_policy(&candidate.0, &web_policy(10));
    let candidate = candidate.0.to_str().unwrap().to_owned();

    // A reader (the group as a supplementary group): status and flows ...
    let status = daemon.cli_as(READER, READER, &[readers.gid], &["status", "--json"]);
    assert!(status.status.success(), "{}", text(&status.stderr));
    let report: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(report["policy"]["content_hash"], hash.as_str());
    let flows = daemon.cli_as(READER, READER, &[readers.gid], &["flows", "--json"]);
    assert!(flows.status.success(), "{}", text(&flows.stderr));
    // ... but neither apply nor confirm: one clear line each.
    let apply = daemon.cli_as(READER, READER, &[readers.gid], &["apply", &candidate]);
    assert_eq!(apply.status.code(), Some(2));
    let line = text(&apply.stderr);
    assert!(
        line.contains("permission denied: `apply` needs root or the admin group")
            && line.contains(&admins.name),
        "{line}"
    );
    let confirm = daemon.cli_as(READER, READER, &[readers.gid], &["confirm"]);
    assert_eq!(confirm.status.code(), Some(1));
    assert!(
        text(&confirm.stderr).contains("permission denied: `confirm` needs"),
        "{confirm:?}"
    );
    assert_eq!(daemon.status().policy.unwrap().content_hash, hash);

    // An admin (the group as the primary group) may apply and confirm.
    let apply = daemon.cli_as(
        ADMIN,
        admins.gid,
        &[],
        &["apply", &candidate, "--confirm", "1m"],
    );
    assert_eq!(
        apply.status.code(),
        Some(0),
        "{}{}",
        text(&apply.stdout),
        text(&apply.stderr)
    );
    let confirm = daemon.cli_as(ADMIN, admins.gid, &[], &["confirm"]);
    assert_eq!(confirm.status.code(), Some(0), "{}", text(&confirm.stderr));
    assert_ne!(daemon.status().policy.unwrap().content_hash, hash);

    // Anyone else cannot even connect: the socket's ACL names the groups.
    let stranger = daemon.cli_as(STRANGER, STRANGER, &[], &["status"]);
    assert_eq!(stranger.status.code(), Some(3), "{stranger:?}");

    // A reader never gets to send megabytes: its request lines are short.
    let socket = daemon.socket.clone();
    let answer = as_user(READER, READER, &[readers.gid], || {
        let mut stream = UnixStream::connect(&socket).expect("connect");
        stream
            .set_write_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let _ = stream.write_all(&vec![b' '; 1 << 20]);
        line_within(&stream, Duration::from_secs(5))
    });
    let answer = answer.expect("an answer");
    assert!(
        answer.contains("request too long: this client may send at most 16384 bytes"),
        "{answer}"
    );
}

/// Reads one line, or what the daemon said before closing; `None` when
/// nothing came within `within`.
fn line_within(stream: &UnixStream, within: Duration) -> Option<String> {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut line = String::new();
    match BufReader::new(stream).read_line(&mut line) {
        Ok(_) => Some(line),
        Err(_) => None,
    }
}

#[test]
fn a_flood_of_idle_connections_leaves_the_daemon_serving() {
    let _root = privileged!();
    let root = CgroupGuard::new().expect("cgroup");
    let readers = TestGroup::new("r");
    let (_allowed, denied, policies) = servers_and_web_policy();
    let daemon = Daemon::start_with(
        &root,
        &policies.0,
        &[
            "--read-group",
            &readers.name,
            "--max-connections",
            "64",
            "--max-connections-per-user",
            "8",
        ],
    );
    open_scratch(&daemon);

    // 1,100 connections from one unprivileged member of the read group,
    // none of which ever sends a request.
    let socket = daemon.socket.clone();
    let flood: Vec<UnixStream> = as_user(READER, READER, &[readers.gid], || {
        (0..1100)
            .map(|_| UnixStream::connect(&socket).expect("connect"))
            .collect()
    });
    // All but that user's share were turned away at once, with a reason.
    let mut refused = 0;
    for stream in &flood {
        if let Some(line) = line_within(stream, Duration::from_millis(5))
            && line.contains("too many connections: uid 4301 already holds 8")
        {
            refused += 1;
        }
    }
    assert_eq!(refused, 1100 - 8, "{}", daemon.log());

    // Root is answered at once ...
    let started = Instant::now();
    let status = daemon.status();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "status took {:?}",
        started.elapsed()
    );
    assert!(status.policy.is_some());
    // ... and so is another reader: one user cannot take every slot.
    let other = as_user(READER + 10, READER + 10, &[readers.gid], || {
        let mut client = enforcer::api::Client::connect(&daemon.socket).expect("connect");
        client.set_timeout(Some(Duration::from_secs(5))).unwrap();
        client.call(&Request::Status).expect("status")
    });
    assert!(matches!(other, Response::Status(_)), "{other:?}");
    // The daemon still follows cgroups: a new one matching `web` is
    // enforced within a second.
    let web = root.child("web-late").expect("cgroup");
    let enforced = Daemon::eventually(Duration::from_secs(1), || {
        tcp_connect(&web, None, denied.addr()) == ProbeOutcome::Eperm
    });
    assert!(enforced, "a new cgroup was not enforced:\n{}", daemon.log());
    drop(flood);
}

#[test]
fn the_daemon_survives_running_out_of_descriptors() {
    let _root = privileged!();
    let (root, policies) = root_and_web_policy();
    // About 115 descriptors are the daemon's own (its maps, programs and
    // links among them): 192 leave room for a few dozen clients only.
    let daemon = Daemon::start_wrapped(
        &root,
        &policies.0,
        &["--idle-timeout", "2s"],
        &["prlimit", "--nofile=192:192", "--"],
    );
    // More connections than descriptors: accept fails (EMFILE) and the
    // rest wait in the backlog.
    let held: Vec<UnixStream> = (0..260)
        .map(|_| UnixStream::connect(&daemon.socket).expect("connect"))
        .collect();
    let failing = Daemon::eventually(Duration::from_secs(5), || {
        daemon.log().contains("accept on the API socket failed")
    });
    assert!(
        failing,
        "accept never ran out of descriptors:\n{}",
        daemon.log()
    );
    drop(held);
    // Descriptors come back (the clients hung up, or the idle timeout
    // closed them): the daemon answers again.
    let answered = Daemon::eventually(Duration::from_secs(10), || {
        enforcer::api::Client::connect(&daemon.socket)
            .ok()
            .and_then(|mut c| {
                c.set_timeout(Some(Duration::from_secs(1))).ok()?;
                c.call(&Request::Status).ok()
            })
            .is_some_and(|r| matches!(r, Response::Status(_)))
    });
    assert!(
        answered,
        "no status after running out of descriptors:\n{}",
        daemon.log()
    );
}

#[test]
fn idle_and_slow_clients_are_disconnected_but_followers_are_not() {
    let _root = privileged!();
    let (root, policies) = root_and_web_policy();
    let daemon = Daemon::start_with(
        &root,
        &policies.0,
        &["--idle-timeout", "1s", "--request-timeout", "1s"],
    );
    let follower = Command::new(enforcer_bin())
        .args(["flows", "--follow", "--json", "--socket"])
        .arg(&daemon.socket)
        .stdout(Stdio::null())
        .spawn()
        .expect("flows --follow");
    let mut follower = KillOnDrop(follower);

    // Connected, and silent.
    let idle = UnixStream::connect(&daemon.socket).unwrap();
    let started = Instant::now();
    let line = line_within(&idle, Duration::from_secs(5)).expect("an answer");
    assert!(line.contains("no request for 1 s"), "{line}");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        line_within(&idle, Duration::from_secs(5)).as_deref(),
        Some(""),
        "then closed"
    );

    // A request begun but never finished.
    let mut slow = UnixStream::connect(&daemon.socket).unwrap();
    slow.write_all(b"{\"request\":\"sta").unwrap();
    let line = line_within(&slow, Duration::from_secs(5)).expect("an answer");
    assert!(
        line.contains("was not complete 1 s after it began"),
        "{line}"
    );

    // A follower is busy, not idle: still connected after the timeouts.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        follower.0.try_wait().unwrap().is_none(),
        "flows --follow was cut off"
    );
    assert!(daemon.status().policy.is_some());
}

/// Kills the child when dropped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
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
    let (root, policies) = root_and_web_policy();
    let addr = free_metrics_addr();
    let daemon = Daemon::start_with(&root, &policies.0, &["--metrics", &addr]);
    let generation = daemon.status().policy.unwrap().generation;
    let body = scrape_metrics(&addr);
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

/// One scrape of the metrics endpoint: the body.
fn scrape(addr: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.starts_with("HTTP/1.0 200").then_some(body)
}

/// Status and scrapes are answered from the published status and counter
/// handles of their own: while an apply reads, compiles and installs a
/// large policy, each is answered in well under a second (when status
/// took the engine's lock while a load held it, they waited seconds).
#[test]
fn status_and_metrics_never_wait_for_a_policy_load() {
    let _root = privileged!();
    let (root, policies) = root_and_web_policy();
    let addr = free_metrics_addr();
    let daemon = Daemon::start_with(&root, &policies.0, &["--metrics", &addr]);
    // A large policy (the benchmark's generator): seconds to read and
    // compile in a debug build. Few workloads, so that `status` itself
    // stays cheap (three counter lookups per workload).
    let large = Scratch::new("large");
    enforcer_bench::policy::write(
        &large.0,
        enforcer_bench::policy::Shape {
            workloads: 100,
            peers: LARGE,
            rules: LARGE,
        },
        enforcer_bench::policy::Variant::Base,
    )
    .expect("write the large policy");
    let request = daemon_support::apply_request(&large.0, false);

    let (took, slowest, probes) = std::thread::scope(|scope| {
        let apply = scope.spawn(|| {
            let started = Instant::now();
            let answer = daemon.call(&request);
            (started.elapsed(), answer)
        });
        // Until the apply is answered: scrapes and status, each timed.
        let (mut slowest, mut probes) = (Duration::ZERO, 0);
        while !apply.is_finished() {
            let started = Instant::now();
            let body = scrape(&addr).expect("a scrape during the apply");
            assert!(body.contains("enforcer_policy_generation "), "{body}");
            let status = daemon.status();
            assert!(status.policy.is_some());
            slowest = slowest.max(started.elapsed());
            probes += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
        let (took, answer) = apply.join().expect("apply thread");
        assert!(matches!(answer, Response::Applied { .. }), "{answer:?}");
        (took, slowest, probes)
    });
    // The apply must be long enough for the check to mean something.
    assert!(
        took > Duration::from_secs(2),
        "the apply took only {took:?}"
    );
    assert!(probes >= 10, "only {probes} probes in {took:?}");
    assert!(
        slowest < Duration::from_millis(500),
        "a scrape and a status took {slowest:?} while a {took:?} apply ran"
    );
}

/// Workloads, peers and rules of the policy applied while status and
/// metrics are probed.
const LARGE: usize = 10_000;

fn free_metrics_addr() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("127.0.0.1:{port}")
}
