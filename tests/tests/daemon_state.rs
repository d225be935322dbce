//! The state directory and what it makes possible: after a restart with an
//! invalid policy, `apply --confirm` rolls back to the adopted policy
//! (compiled from the saved text, or as the kernel held it) without ever
//! switching enforcement off; a failed rollback is retried and reported;
//! after a reboot (no pins) the last good policy is put back in force, and
//! with none the daemon never reports ready.

mod daemon_support;

use std::path::Path;
use std::time::{Duration, Instant};

use daemon_support::{Daemon, Scratch, servers_and_web_policy, web_policy, write_policy};
use enforcer::api::{Request, Response, StatusReport};
use enforcer_tests::{CgroupGuard, ProbeOutcome, Server, privileged, tcp_connect};

const BROKEN: &str = "[workload.web]\ncgroup = 7\n";

/// A daemon started with policy A (web may reach `a`, not `b`), killed
/// with -9 and started again with an invalid policy directory: it adopts
/// what the kernel enforces.
struct Adopted {
    /// Kept alive: the daemon's cgroup root and policy directory.
    _root: CgroupGuard,
    web: CgroupGuard,
    a: Server,
    b: Server,
    _policies: Scratch,
    daemon: Daemon,
    /// Policy A's content hash.
    hash: String,
}

/// `damage` runs on the state directory between the kill and the restart.
fn adopted(damage: impl FnOnce(&Path)) -> Adopted {
    let root = CgroupGuard::new().expect("cgroup");
    let web = root.child("web").expect("web cgroup");
    let (a, b, policies) = servers_and_web_policy();
    let mut daemon = Daemon::start(&root, &policies.0);
    let hash = daemon.status().policy.expect("policy").content_hash;
    daemon.kill9();
    damage(&daemon.state_dir);
    write_policy(&policies.0, BROKEN);
    daemon.restart();
    Adopted {
        _root: root,
        web,
        a,
        b,
        _policies: policies,
        daemon,
        hash,
    }
}

impl Adopted {
    /// (a, b) as the workload sees them now.
    fn probe(&self) -> (ProbeOutcome, ProbeOutcome) {
        (
            tcp_connect(&self.web, None, self.a.addr()),
            tcp_connect(&self.web, None, self.b.addr()),
        )
    }

    /// Policy A: `a` allowed, `b` refused at once.
    fn assert_policy_a(&self) {
        assert_eq!(
            self.probe(),
            (ProbeOutcome::Ok, ProbeOutcome::Eperm),
            "{}",
            self.daemon.log()
        );
    }

    /// `apply --confirm WINDOW` of policy B (web may reach `b` only), in
    /// force at once.
    fn apply_b_on_probation(&self, window: &str) -> Scratch {
        let candidate = Scratch::new("candidate");
        write_policy(&candidate.0, &web_policy(self.b.addr().port()));
        let out = self
            .daemon
            .cli(&["apply", candidate.0.to_str().unwrap(), "--confirm", window]);
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(self.probe(), (ProbeOutcome::Eperm, ProbeOutcome::Ok));
        candidate
    }

    /// Probes in a loop until policy A is back (or `within` passes), from
    /// policy B: never both allowed (enforcement off). Returns how long A
    /// took to come back.
    fn wait_for_a_never_open(&self, within: Duration) -> Duration {
        let started = Instant::now();
        let mut rounds = 0;
        let mut straddling = 0;
        loop {
            let round = self.probe();
            rounds += 1;
            // A connection to `b` that `connect()` allowed under B and
            // whose handshake is judged under A is dropped: refused, not
            // at once. Only the one round that meets the switch can see it.
            if round == (ProbeOutcome::Eperm, ProbeOutcome::Timeout) {
                straddling += 1;
                assert!(
                    straddling == 1,
                    "`b` connected under B and dropped in {straddling} rounds, not only at the switch\n{}",
                    self.daemon.log()
                );
                continue;
            }
            // From B to A, `a` probed first: both allowed only when
            // nothing is enforced (both refused is `a` under B, then `b`
            // under A); anything but allowed or refused at once is wrong.
            assert!(
                matches!(round.0, ProbeOutcome::Ok | ProbeOutcome::Eperm)
                    && matches!(round.1, ProbeOutcome::Ok | ProbeOutcome::Eperm)
                    && round != (ProbeOutcome::Ok, ProbeOutcome::Ok),
                "enforcement off, or neither policy in force (round {rounds}): {round:?}\n{}",
                self.daemon.log()
            );
            if round == (ProbeOutcome::Ok, ProbeOutcome::Eperm) {
                let back = started.elapsed();
                // The kernel goes back first; the state directory and the
                // published status follow within moments.
                let settled = Daemon::eventually(Duration::from_secs(3), || {
                    self.daemon
                        .status()
                        .policy
                        .is_none_or(|p| p.rollback_at.is_none())
                });
                assert!(
                    settled,
                    "policy A is back but the status still shows the probation\n{}",
                    self.daemon.log()
                );
                return back;
            }
            assert!(
                started.elapsed() < within,
                "policy A not back within {within:?} ({rounds} rounds of B)\n{}",
                self.daemon.log()
            );
        }
    }
}

fn garble(state_dir: &Path) {
    let file = state_dir.join("last-good.json");
    let text = std::fs::read(&file).expect("the last good policy was saved");
    std::fs::write(&file, &text[..text.len() / 2]).expect("truncate");
}

fn assert_last_good_shown(status: &StatusReport, origin: &str, hash: &str) {
    let policy = status
        .policy
        .as_ref()
        .expect("the last good policy is shown");
    assert_eq!(policy.origin.as_deref(), Some(origin));
    assert_eq!(policy.content_hash, hash);
    assert_eq!(policy.rollback_at, None);
    assert!(
        status.not_enforced.iter().any(|p| p.contains("rejected")
            && p.contains("last good policy")
            && p.contains(origin)),
        "{:?}",
        status.not_enforced
    );
    assert!(
        !status.not_enforced.iter().any(|p| p.contains("rollback")),
        "{:?}",
        status.not_enforced
    );
}

#[test]
fn a_rollback_returns_to_the_adopted_last_good_policy_never_disabling_enforcement() {
    let _root = privileged!();
    let s = adopted(|_| {});
    assert_last_good_shown(&s.daemon.status(), "adopted", &s.hash);
    s.assert_policy_a();

    let _candidate = s.apply_b_on_probation("1s");
    let back = s.wait_for_a_never_open(Duration::from_secs(5));
    assert!(
        back >= Duration::from_millis(500),
        "rolled back early: {back:?}"
    );
    assert_last_good_shown(&s.daemon.status(), "adopted", &s.hash);
    s.assert_policy_a();
}

#[test]
fn a_rollback_returns_to_a_kernel_policy_whose_saved_text_was_garbled() {
    let _root = privileged!();
    let s = adopted(garble);
    let file = s.daemon.state_dir.join("last-good.json");
    // The garbled file is named and ignored; the kernel's policy stays as
    // it is, adopted without a compiled form.
    let log = s.daemon.log();
    assert!(
        log.contains(&format!("{}: not a saved policy", file.display())) && log.contains("ignored"),
        "{log}"
    );
    let kernel_policy_shown = |status: &StatusReport| {
        assert!(status.policy.is_none());
        assert!(
            status
                .not_enforced
                .iter()
                .any(|p| p.contains("pinned by an earlier daemon")
                    && p.contains(&s.hash)
                    && p.contains("is still in force (adopted)")),
            "{:?}",
            status.not_enforced
        );
    };
    kernel_policy_shown(&s.daemon.status());
    s.assert_policy_a();

    let _candidate = s.apply_b_on_probation("1s");
    assert!(s.daemon.status().policy.is_some());
    s.wait_for_a_never_open(Duration::from_secs(5));
    let status = s.daemon.status();
    kernel_policy_shown(&status);
    assert!(
        !status.not_enforced.iter().any(|p| p.contains("rollback")),
        "{:?}",
        status.not_enforced
    );
    s.assert_policy_a();
}

/// Sets the daemon's soft limit of open files; returns the old limits.
fn set_open_files_limit(pid: u32, soft: Option<libc::rlimit>) -> libc::rlimit {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit reads `new` (when given) and writes `old`.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            soft.as_ref().map_or(std::ptr::null(), |l| l as *const _),
            &mut old,
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    old
}

/// A rollback fails for real when the daemon has no file descriptor left
/// (it lists this host's addresses through a new netlink socket before
/// writing the maps): fd exhaustion, reproduced by lowering its open-files
/// limit to the three descriptors every process has. The unconfirmed
/// policy stays in force (never nothing), `status` says so, and once
/// descriptors are available again a retry puts the adopted policy back.
#[test]
fn a_failed_rollback_is_reported_and_retried_until_it_succeeds() {
    let _root = privileged!();
    let s = adopted(|_| {});
    // Long enough to lower the limit before the rollback is due.
    let _candidate = s.apply_b_on_probation("2s");
    // Connected (and accepted: one request answered) before the limit:
    // status must still be answerable over it. A connection only queued
    // would wait for an accept that has no descriptor left.
    let mut client = s.daemon.client();
    assert!(matches!(
        client.call(&Request::Status).expect("status"),
        Response::Status(_)
    ));
    let pid = s.daemon.pid();
    let old = set_open_files_limit(pid, None);
    let exhausted = libc::rlimit {
        rlim_cur: 3,
        rlim_max: old.rlim_max,
    };
    set_open_files_limit(pid, Some(exhausted));
    struct Restore(u32, libc::rlimit);
    impl Drop for Restore {
        fn drop(&mut self) {
            set_open_files_limit(self.0, Some(self.1));
        }
    }
    let restore = Restore(pid, old);

    let status =
        |client: &mut enforcer::api::Client| match client.call(&Request::Status).expect("status") {
            Response::Status(report) => *report,
            other => panic!("unexpected answer {other:?}"),
        };
    let mut failing = None;
    let reported = Daemon::eventually(Duration::from_secs(6), || {
        let report = status(&mut client);
        failing = report
            .not_enforced
            .iter()
            .find(|p| p.starts_with("rollback failed"))
            .cloned();
        failing.is_some()
    });
    assert!(reported, "no rollback failure reported\n{}", s.daemon.log());
    let failing = failing.unwrap_or_default();
    assert!(
        failing.contains("the unconfirmed policy is still in force")
            && failing.contains("next attempt at"),
        "{failing}"
    );
    // Meanwhile the unconfirmed policy B is enforced, not nothing.
    assert_eq!(s.probe(), (ProbeOutcome::Eperm, ProbeOutcome::Ok));
    // A second attempt fails too (1 s later), still reported.
    assert!(Daemon::eventually(Duration::from_secs(4), || status(
        &mut client
    )
    .not_enforced
    .iter()
    .any(
        |p| p.starts_with("rollback failed: ") && p.contains("attempt 2 ")
    )));
    assert!(
        s.daemon
            .log()
            .contains("cannot roll back the unconfirmed policy, which stays in force; retrying"),
        "{}",
        s.daemon.log()
    );

    drop(restore);
    // The next attempt (at most 4 s after the second) succeeds.
    s.wait_for_a_never_open(Duration::from_secs(8));
    let report = status(&mut client);
    assert_last_good_shown(&report, "adopted", &s.hash);
}

#[test]
fn after_a_reboot_an_invalid_policy_gives_way_to_the_last_good_one() {
    let _root = privileged!();
    let root = CgroupGuard::new().expect("cgroup");
    let web = root.child("web").expect("web cgroup");
    let (a, b, policies) = servers_and_web_policy();
    let mut daemon = Daemon::start(&root, &policies.0);
    let hash = daemon.status().policy.expect("policy").content_hash;
    daemon.terminate();
    // A reboot: the pins (in memory) are gone, the state directory stays.
    let out = daemon.uninstall();
    assert!(out.status.success());
    assert_eq!(tcp_connect(&web, None, b.addr()), ProbeOutcome::Ok);
    write_policy(&policies.0, BROKEN);
    daemon.restart();

    let ready = daemon.ready_status().expect("STATUS= with READY=1");
    assert!(
        ready.contains("of the last good policy")
            && ready.contains("restored")
            && ready.contains("REJECTED (startup)"),
        "{ready}"
    );
    let status = daemon.status();
    assert_last_good_shown(&status, "restored", &hash);
    assert_eq!(status.last_rejection.expect("rejection").trigger, "startup");
    assert_eq!(tcp_connect(&web, None, a.addr()), ProbeOutcome::Ok);
    assert_eq!(tcp_connect(&web, None, b.addr()), ProbeOutcome::Eperm);
}

/// Starts a daemon that must exit before READY=1; returns its log.
fn refused_start(daemon: &mut Daemon) -> String {
    let Err(status) = daemon.try_restart() else {
        panic!(
            "READY=1 with nothing enforced:
{}",
            daemon.log()
        )
    };
    assert_eq!(status.code(), Some(2), "{}", daemon.log());
    daemon.log()
}

#[test]
fn after_a_reboot_an_invalid_policy_and_nothing_saved_never_report_ready() {
    let _root = privileged!();
    let root = CgroupGuard::new().expect("cgroup");
    let web = root.child("web").expect("web cgroup");
    let policies = Scratch::new("policies");
    write_policy(&policies.0, BROKEN);
    let mut daemon = Daemon::prepare(&root, &policies.0, &[], &[]);
    let log = refused_start(&mut daemon);
    assert!(
        log.contains("refusing to start with nothing enforced")
            && log.contains(&format!("{}:2:", policies.0.join("policy.toml").display()))
            && log.contains(&format!(
                "{} does not exist",
                daemon.state_dir.join("last-good.json").display()
            )),
        "{log}"
    );
    // Nothing was attached.
    let server = Server::tcp(None, None, daemon_support::loopback()).expect("server");
    assert_eq!(tcp_connect(&web, None, server.addr()), ProbeOutcome::Ok);
}

#[test]
fn a_garbled_state_file_is_named_and_never_put_in_force() {
    let _root = privileged!();
    let root = CgroupGuard::new().expect("cgroup");
    let (_a, _b, policies) = servers_and_web_policy();
    let mut daemon = Daemon::start(&root, &policies.0);
    daemon.terminate();
    assert!(daemon.uninstall().status.success());
    garble(&daemon.state_dir);
    write_policy(&policies.0, BROKEN);
    let log = refused_start(&mut daemon);
    let file = daemon.state_dir.join("last-good.json");
    assert!(
        log.contains(&format!(
            "{}: not a saved policy (EOF while parsing",
            file.display()
        )) && log.contains("truncated or damaged; ignored")
            && log.contains("refusing to start with nothing enforced"),
        "{log}"
    );
}

#[test]
fn a_confirmed_policy_becomes_the_last_good_one_and_an_unconfirmed_one_never_does() {
    let _root = privileged!();
    let s = adopted(|_| {});
    // Unconfirmed, rolled back: the last good policy stays A.
    let _candidate = s.apply_b_on_probation("1s");
    s.wait_for_a_never_open(Duration::from_secs(5));
    assert!(!s.daemon.state_dir.join("probation.json").exists());
    // Confirmed: B becomes the last good policy, which a reboot with an
    // invalid policy puts back.
    let _candidate = s.apply_b_on_probation("1m");
    assert!(s.daemon.state_dir.join("probation.json").exists());
    let b_hash = s.daemon.status().policy.expect("policy").content_hash;
    assert!(s.daemon.cli(&["confirm"]).status.success());
    assert!(!s.daemon.state_dir.join("probation.json").exists());
    let saved = std::fs::read_to_string(s.daemon.state_dir.join("last-good.json")).unwrap();
    assert!(saved.contains(&b_hash), "{saved}");
}
