//! The daemon's life: READY only once enforcing, status/flows contract
//! JSON, kill -9 and restart without a gap, SIGTERM keeps enforcement,
//! `--uninstall` removes it.

mod daemon_support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use daemon_support::{Daemon, servers_and_web_policy, write_policy};
use enforcer_tests::{CgroupGuard, ProbeOutcome, privileged, tcp_connect};

#[test]
fn ready_means_enforcing_and_status_and_flows_speak_the_contract() {
    let _root = privileged!();
    let root = CgroupGuard::new().expect("cgroup");
    let web = root.child("web").expect("web cgroup");
    let (allowed, denied, policies) = servers_and_web_policy();

    let daemon = Daemon::start(&root, &policies.0);
    // READY=1 was received: enforcement must already be in place.
    assert_eq!(
        tcp_connect(&web, None, denied.addr()),
        ProbeOutcome::Eperm,
        "{}",
        daemon.log()
    );
    assert_eq!(tcp_connect(&web, None, allowed.addr()), ProbeOutcome::Ok);

    let out = daemon.cli(&["status", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    assert_eq!(status["pid"], daemon.pid());
    assert_eq!(
        status["policy"]["generation"].as_u64().map(|g| g > 0),
        Some(true)
    );
    assert_eq!(
        status["policy"]["content_hash"].as_str().map(str::len),
        Some(16)
    );
    assert_eq!(status["policy"]["source"], policies.0.display().to_string());
    assert_eq!(status["workloads"][0]["name"], "web");
    assert_eq!(status["workloads"][0]["mode"], "enforce");
    assert_eq!(
        status["workloads"][0]["cgroups"],
        serde_json::json!(["web"])
    );
    assert!(status["workloads"][0]["counters"]["deny"].is_u64());
    assert!(status["lost_events"].is_u64());
    assert_eq!(status["not_enforced"], serde_json::json!([]));

    // The text form too.
    let text = String::from_utf8(daemon.cli(&["status"]).stdout).unwrap();
    assert!(text.contains("workload web (enforce"), "{text}");

    // flows: the refused connection, in the contract's shape.
    let denied_remote = denied.addr().to_string();
    let mut record = serde_json::Value::Null;
    let found = Daemon::eventually(Duration::from_secs(2), || {
        let out = daemon.cli(&["flows", "--json", "--verdict", "deny", "--workload", "web"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).expect("flow JSON line");
            if v["remote"] == denied_remote {
                record = v;
                return true;
            }
        }
        false
    });
    assert!(found, "no deny record for {denied_remote}");
    assert_eq!(record["workload"], "web");
    assert_eq!(record["direction"], "egress");
    assert_eq!(record["protocol"], "tcp");
    assert_eq!(record["peer"], "host");
    assert_eq!(record["verdict"], "deny");
    assert_eq!(record["rule"], "default deny");
    let time = record["time"].as_str().unwrap();
    assert!(time.len() == 24 && time.ends_with('Z'), "{time}");
    assert!(record["local"].is_string());
    // Filters apply: no audit records exist.
    let out = daemon.cli(&["flows", "--json", "--verdict", "audit"]);
    assert!(out.status.success());
    assert!(out.stdout.is_empty());
}

#[test]
fn kill_9_keeps_enforcing_and_a_restart_adopts_without_a_gap() {
    let _root = privileged!();
    let root = CgroupGuard::new().expect("cgroup");
    let web = root.child("web").expect("web cgroup");
    let (allowed, denied, policies) = servers_and_web_policy();
    let mut daemon = Daemon::start(&root, &policies.0);
    let generation_before = daemon.status().policy.expect("policy").generation;

    let stop = AtomicBool::new(false);
    let rounds = AtomicUsize::new(0);
    let unexpected = std::thread::scope(|s| {
        let client = s.spawn(|| {
            let mut unexpected = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let ok = tcp_connect(&web, None, allowed.addr());
                let refused = tcp_connect(&web, None, denied.addr());
                if ok != ProbeOutcome::Ok || refused != ProbeOutcome::Eperm {
                    unexpected.push((ok, refused));
                }
                rounds.fetch_add(1, Ordering::Relaxed);
            }
            unexpected
        });
        let wait_rounds = |n: usize| {
            let target = rounds.load(Ordering::Relaxed) + n;
            assert!(Daemon::eventually(Duration::from_secs(20), || rounds
                .load(Ordering::Relaxed)
                >= target));
        };
        wait_rounds(3);
        daemon.kill9();
        // No daemon: the pinned programs and maps keep enforcing.
        wait_rounds(5);
        daemon.restart();
        wait_rounds(5);
        stop.store(true, Ordering::Relaxed);
        client.join().expect("client thread")
    });
    assert_eq!(
        unexpected,
        [],
        "unexpected results around kill -9 and restart"
    );
    let status = daemon.status();
    let policy = status.policy.expect("policy after restart");
    assert!(
        policy.generation > generation_before,
        "the restart re-applied the policy"
    );
    assert_eq!(status.reloads_failed, 0);
}

#[test]
fn sigterm_leaves_enforcement_in_place_and_uninstall_removes_it() {
    let _root = privileged!();
    let root = CgroupGuard::new().expect("cgroup");
    let web = root.child("web").expect("web cgroup");
    let (allowed, denied, policies) = servers_and_web_policy();
    let mut daemon = Daemon::start(&root, &policies.0);
    daemon.terminate();
    assert!(!daemon.socket.exists(), "the socket is removed on SIGTERM");
    assert_eq!(tcp_connect(&web, None, denied.addr()), ProbeOutcome::Eperm);
    assert_eq!(tcp_connect(&web, None, allowed.addr()), ProbeOutcome::Ok);

    let out = daemon.uninstall();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        tcp_connect(&web, None, denied.addr()),
        ProbeOutcome::Ok,
        "programs still attached"
    );
    assert!(
        !daemon.bpffs.exists(),
        "pins left under {}",
        daemon.bpffs.display()
    );
    // And `status` reports that no daemon answers.
    assert_eq!(daemon.cli(&["status"]).status.code(), Some(3));
}

#[test]
fn a_new_matching_cgroup_is_enforced_within_a_second() {
    let _root = privileged!();
    let root = CgroupGuard::new().expect("cgroup");
    let (allowed, denied, policies) = servers_and_web_policy();
    let daemon = Daemon::start(&root, &policies.0);
    let status = daemon.status();
    assert!(
        status
            .not_enforced
            .iter()
            .any(|p| p.starts_with("workload web: no cgroup")),
        "{:?}",
        status.not_enforced
    );
    // Not a workload yet: unmanaged processes are allowed by default.
    let other = root.child("other").expect("cgroup");
    assert_eq!(tcp_connect(&other, None, denied.addr()), ProbeOutcome::Ok);

    let started = std::time::Instant::now();
    let web2 = root.child("web2").expect("cgroup");
    let enforced = Daemon::eventually(Duration::from_secs(1), || {
        tcp_connect(&web2, None, denied.addr()) == ProbeOutcome::Eperm
    });
    assert!(enforced, "web2 not enforced within 1 s:\n{}", daemon.log());
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(tcp_connect(&web2, None, allowed.addr()), ProbeOutcome::Ok);
    // The kernel registered it at its creation; the daemon's view follows.
    let listed = Daemon::eventually(Duration::from_secs(1), || {
        daemon.status().workloads[0].cgroups == ["web2"]
    });
    let status = daemon.status();
    assert!(listed, "{:?}", status.workloads);
    assert!(status.not_enforced.is_empty(), "{:?}", status.not_enforced);
}

#[test]
fn a_restart_with_a_broken_policy_keeps_the_adopted_one_and_says_so() {
    let _root = privileged!();
    a_broken_policy_after_a_stop_keeps_the_adopted_one(Daemon::kill9);
}

#[test]
fn a_stop_and_start_with_a_broken_policy_keeps_the_adopted_one_and_says_so() {
    let _root = privileged!();
    // `systemctl stop` (SIGTERM) leaves enforcement in place.
    a_broken_policy_after_a_stop_keeps_the_adopted_one(Daemon::terminate);
}

/// The daemon enforces the web policy, stops (`stop`), and starts again
/// with a broken policy in its directory.
fn a_broken_policy_after_a_stop_keeps_the_adopted_one(stop: fn(&mut Daemon)) {
    let root = CgroupGuard::new().expect("cgroup");
    let web = root.child("web").expect("web cgroup");
    let (allowed, denied, policies) = servers_and_web_policy();
    let mut daemon = Daemon::start(&root, &policies.0);
    let hash = daemon.status().policy.expect("policy").content_hash;
    stop(&mut daemon);
    write_policy(&policies.0, "[workload.web]\ncgroup = 7\n");
    daemon.restart();

    let status = daemon.status();
    let rejection = status.last_rejection.expect("the startup rejection");
    assert_eq!(rejection.trigger, "startup");
    assert!(
        rejection.errors[0]
            .starts_with(&format!("{}:2:", policies.0.join("policy.toml").display())),
        "{:?}",
        rejection.errors
    );
    assert_adopted_and_rejected(&daemon, &policies.0, &hash);
    // The kernel still enforces the adopted policy.
    assert_eq!(tcp_connect(&web, None, denied.addr()), ProbeOutcome::Eperm);
    assert_eq!(tcp_connect(&web, None, allowed.addr()), ProbeOutcome::Ok);
}

/// `status` and systemd's STATUS= (sent with READY=1) show the policy in
/// force, the last good one that the state directory saved and the kernel
/// still enforced, labelled as adopted, and say that the configured one was
/// rejected (never "no policy in force").
fn assert_adopted_and_rejected(daemon: &Daemon, policies: &std::path::Path, hash: &str) {
    let status = daemon.status();
    let policy = status.policy.expect("the adopted policy is shown");
    assert_eq!(policy.content_hash, hash);
    assert_eq!(policy.origin.as_deref(), Some("adopted"));
    assert_eq!(policy.source, policies.display().to_string());
    assert!(
        status.not_enforced.iter().any(|p| p.contains("rejected")
            && p.contains(&policies.display().to_string())
            && p.contains("last good policy")
            && p.contains(hash)
            && p.contains("adopted")),
        "{:?}",
        status.not_enforced
    );
    assert!(
        !status
            .not_enforced
            .iter()
            .any(|p| p.contains("no policy in force")),
        "{:?}",
        status.not_enforced
    );
    let ready = daemon.ready_status().expect("STATUS= with READY=1");
    assert!(
        ready.contains(&format!("({hash}) of the last good policy"))
            && ready.contains("adopted")
            && ready.contains("REJECTED (startup)"),
        "{ready}"
    );
}
