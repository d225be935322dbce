//! Discovery against what any user with a delegated cgroup subtree can
//! make: a cgroup of mode 000 and a chain of cgroups nested past PATH_MAX
//! (and past the walk's depth bound), before the daemon starts and while
//! it runs. The daemon runs with the packaged unit's capabilities (no
//! CAP_DAC_OVERRIDE, no CAP_DAC_READ_SEARCH: mode 000 shuts it out even as
//! root); it must start, report the skips in `status` and the metrics, and
//! keep enforcing new cgroups.

mod daemon_support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use daemon_support::{Daemon, scrape_metrics, servers_and_web_policy};
use enforcer::cgroups::walk::MAX_DEPTH;
use enforcer_tests::{CgroupGuard, ProbeOutcome, privileged, tcp_connect};

/// The packaged unit's capabilities (`packaging/systemd/enforcer.service`).
const PACKAGED_CAPABILITIES: &[&str] = &[
    "setpriv",
    "--bounding-set=-all,+bpf,+net_admin,+perfmon",
    "--inh-caps=-all",
    "--",
];

/// A name as long as a delegated user may pick (255 is the limit).
fn long_name(tag: char) -> String {
    std::iter::repeat_n(tag, 200).collect()
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// The daemon's effective capabilities, from `/proc/PID/status`.
fn effective_capabilities(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .expect("CapEff line")
}

#[test]
fn unreadable_and_overlong_cgroups_are_skipped_and_enforcement_goes_on() {
    let _root = privileged!();
    let started = Instant::now();
    let root = CgroupGuard::new().expect("cgroup");

    // Before the daemon: a cgroup of mode 000 with one inside, and a chain
    // 70 deep of 200-byte names (past PATH_MAX at level 21, past the
    // walk's depth bound at level 64 below the root). Teardown removes
    // them relative to descriptors, with root's own DAC capabilities.
    let locked_before = root.child("locked-before").expect("cgroup");
    let _hidden_before = locked_before.child("inside").expect("cgroup");
    chmod(locked_before.path(), 0o000);
    let deep_before = root.child("deep-before").expect("cgroup");
    drop(deep_before.nest(&long_name('b'), 70).expect("deep chain"));

    let (allowed, denied, policies) = servers_and_web_policy();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let daemon = Daemon::start_wrapped(
        &root,
        &policies.0,
        &["--metrics", &addr],
        PACKAGED_CAPABILITIES,
    );
    // Bits 1 and 2 of `CapEff` (linux/capability.h).
    let dac = (1 << 1) | (1 << 2);
    assert_eq!(
        effective_capabilities(daemon.pid()) & dac,
        0,
        "the daemon must run without DAC capabilities for mode 000 to matter"
    );

    // The root, locked-before (its id and owner come from its parent),
    // deep-before and the 63 chain links down to level 64.
    let expected = 1 + 1 + 1 + (MAX_DEPTH - 1) as u64;
    let discovery = daemon.status().cgroup_discovery;
    assert_eq!(
        discovery.cgroups,
        expected,
        "{discovery:?}\n{}",
        daemon.log()
    );
    assert_eq!(discovery.skipped.unreadable, 1, "{discovery:?}");
    assert_eq!(discovery.skipped.depth_limit, 1, "{discovery:?}");
    assert_eq!(discovery.rescans_failed, 0);
    let reasons: Vec<(&str, &str)> = discovery
        .skipped_paths
        .iter()
        .map(|s| (s.path.as_str(), s.reason.as_str()))
        .collect();
    assert!(
        reasons.contains(&("locked-before", "unreadable")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|(p, r)| p.starts_with("deep-before/bbb") && *r == "depth_limit"),
        "{reasons:?}"
    );

    // While it runs, in a subtree delegated to another user (walked in
    // the second pass, after what root owns): another cgroup of mode 000,
    // and a chain past PATH_MAX (within the depth bound), then one more
    // cgroup at its bottom. Each must be seen through inotify, long before
    // the 30 s periodic rescan.
    let delegated = root.child("delegated").expect("cgroup");
    std::os::unix::fs::chown(delegated.path(), Some(65534), Some(65534)).expect("chown");
    let locked_during = delegated.child("locked").expect("cgroup");
    let _hidden_during = locked_during.child("inside").expect("cgroup");
    chmod(locked_during.path(), 0o000);
    let deep_during = delegated.child("deep").expect("cgroup");
    let bottom = deep_during.nest(&long_name('d'), 30).expect("deep chain");
    assert!(30 * 201 > libc::PATH_MAX as usize);
    let during = 1 + 1 + 1 + 30;
    let seen = Daemon::eventually(Duration::from_secs(5), || {
        let d = daemon.status().cgroup_discovery;
        d.cgroups == expected + during && d.skipped.unreadable == 2
    });
    assert!(
        seen,
        "{:?}\n{}",
        daemon.status().cgroup_discovery,
        daemon.log()
    );
    rustix::fs::mkdirat(&bottom, "one-more", rustix::fs::Mode::from_raw_mode(0o755))
        .expect("mkdirat past PATH_MAX");
    let seen = Daemon::eventually(Duration::from_secs(5), || {
        daemon.status().cgroup_discovery.cgroups == expected + during + 1
    });
    assert!(seen, "{:?}", daemon.status().cgroup_discovery);
    drop(bottom);

    let body = scrape_metrics(&addr);
    assert!(
        body.contains("enforcer_cgroups_skipped{reason=\"unreadable\"} 2\n"),
        "{body}"
    );
    assert!(
        body.contains("enforcer_cgroups_skipped{reason=\"depth_limit\"} 1\n"),
        "{body}"
    );
    assert!(
        body.contains(&format!("enforcer_cgroups {}\n", expected + during + 1)),
        "{body}"
    );
    assert!(
        body.contains("enforcer_cgroup_rescans_failed_total 0\n"),
        "{body}"
    );

    let text = daemon.cli(&["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("CGROUPS NOT WALKED (unreadable 2, depth_limit 1)")),
        "{text}"
    );

    // A cgroup matching a workload, created after all that, is enforced.
    let web = root.child("web1").expect("cgroup");
    let enforced = Daemon::eventually(Duration::from_secs(2), || {
        tcp_connect(&web, None, denied.addr()) == ProbeOutcome::Eperm
    });
    assert!(enforced, "web1 not enforced:\n{}", daemon.log());
    assert_eq!(tcp_connect(&web, None, allowed.addr()), ProbeOutcome::Ok);
    // The kernel registered it at its creation; the daemon's view follows.
    let listed = Daemon::eventually(Duration::from_secs(2), || {
        daemon.status().workloads[0].cgroups == ["web1"]
    });
    assert!(listed, "{:?}", daemon.status().workloads);

    // Logged, but not at every rescan: one line per 10 s at most.
    let log = daemon.log();
    let lines = log
        .lines()
        .filter(|l| l.contains("cgroup discovery cannot walk parts of the tree"))
        .count();
    let bound = 1 + started.elapsed().as_secs() / 10;
    assert!(
        (1..=bound as usize).contains(&lines),
        "{lines} lines in {:?}:\n{log}",
        started.elapsed()
    );
}
