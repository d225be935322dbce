//! Policy changes on a running daemon: many reloads under traffic, invalid
//! policies rejected (by SIGHUP, file change and `apply`) with the running
//! one kept, and `apply --confirm` rolling back unless confirmed.

mod daemon_support;

use std::time::Duration;

use daemon_support::{Daemon, Scratch, apply_request, loopback, mkfifo, web_policy, write_policy};
use enforcer::api::{Request, Response};
use enforcer_tests::{CgroupGuard, ProbeOutcome, Server, privileged, tcp_connect};

/// Two servers and a policy directory allowing `web` to reach the first.
struct Setup {
    root: CgroupGuard,
    web: CgroupGuard,
    a: Server,
    b: Server,
    policies: Scratch,
}

fn setup() -> Setup {
    let root = CgroupGuard::new().expect("cgroup");
    let web = root.child("web").expect("web cgroup");
    let a = Server::tcp(None, None, loopback()).expect("server");
    let b = Server::tcp(None, None, loopback()).expect("server");
    let policies = Scratch::new("policies");
    write_policy(&policies.0, &web_policy(a.addr().port()));
    Setup {
        root,
        web,
        a,
        b,
        policies,
    }
}

#[test]
fn two_hundred_reloads_under_traffic_without_a_failure() {
    let _root = privileged!();
    let s = setup();
    let daemon = Daemon::start(&s.root, &s.policies.0);
    let dirs = [Scratch::new("pa"), Scratch::new("pb")];
    write_policy(&dirs[0].0, &web_policy(s.a.addr().port()));
    write_policy(
        &dirs[1].0,
        &format!(
            "{}\n# another hash, same verdicts\n[peer.unused]\ncidrs = [\"203.0.113.9\"]\n",
            web_policy(s.a.addr().port())
        ),
    );

    // A client connects all along; its verdicts must never change.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (last_generation, unexpected, rounds) = std::thread::scope(|scope| {
        let traffic = scope.spawn(|| {
            let (mut unexpected, mut rounds) = (Vec::new(), 0);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let ok = tcp_connect(&s.web, None, s.a.addr());
                let refused = tcp_connect(&s.web, None, s.b.addr());
                if ok != ProbeOutcome::Ok || refused != ProbeOutcome::Eperm {
                    unexpected.push((ok, refused));
                }
                rounds += 1;
            }
            (unexpected, rounds)
        });
        let mut client = daemon.client();
        let mut last_generation = 0;
        let requests = [
            apply_request(&dirs[0].0, false),
            apply_request(&dirs[1].0, false),
        ];
        for i in 0..200 {
            // Alternate, starting with the one that differs from the running policy.
            match client.call(&requests[(i + 1) % 2]).expect("apply") {
                Response::Applied {
                    generation,
                    unchanged,
                    ..
                } => {
                    assert!(!unchanged, "reload {i} found nothing to change");
                    assert!(
                        generation > last_generation,
                        "generation went from {last_generation} to {generation}"
                    );
                    last_generation = generation;
                }
                other => panic!("reload {i}: {other:?}\n{}", daemon.log()),
            }
            // Give the client time to cross several swaps.
            std::thread::sleep(Duration::from_millis(5));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (unexpected, rounds) = traffic.join().expect("traffic thread");
        (last_generation, unexpected, rounds)
    });
    assert_eq!(unexpected, [], "verdicts changed during reloads");
    assert!(
        rounds >= 5,
        "only {rounds} traffic rounds during the reloads"
    );
    let status = daemon.status();
    assert_eq!(status.reloads_failed, 0);
    assert!(status.reloads_ok >= 201);
    assert_eq!(status.policy.unwrap().generation, last_generation);
}

fn assert_rejected_with_position(daemon: &Daemon, trigger: &str, file: &str) {
    let mut status = daemon.status();
    let shown = Daemon::eventually(Duration::from_secs(3), || {
        status = daemon.status();
        status
            .last_rejection
            .as_ref()
            .is_some_and(|r| r.trigger == trigger)
    });
    assert!(shown, "no {trigger} rejection in status: {status:?}");
    let rejection = status.last_rejection.unwrap();
    let first = &rejection.errors[0];
    // FILE:LINE:COL: message
    let rest = first
        .strip_prefix(&format!("{file}:"))
        .unwrap_or_else(|| panic!("{first}"));
    let mut parts = rest.splitn(3, ':');
    assert!(parts.next().unwrap().parse::<u32>().is_ok(), "{first}");
    assert!(parts.next().unwrap().parse::<u32>().is_ok(), "{first}");
    assert!(status.reloads_failed > 0);
    let text = String::from_utf8(daemon.cli(&["status"]).stdout).unwrap();
    assert!(text.contains("REJECTED"), "{text}");
}

#[test]
fn invalid_policies_are_rejected_and_the_running_one_stays() {
    let _root = privileged!();
    let s = setup();
    let daemon = Daemon::start(&s.root, &s.policies.0);
    let hash = daemon.status().policy.unwrap().content_hash;
    let broken =
        "[workload.web]\ncgroup = \"web*\"\nlabels = { app = \"web\" }\nmode = \"sometimes\"\n";
    let file = s.policies.0.join("policy.toml").display().to_string();

    // 1. A file change.
    write_policy(&s.policies.0, broken);
    assert_rejected_with_position(&daemon, "file change", &file);
    // 2. SIGHUP, tracked by systemd as RELOADING=1 ... READY=1.
    daemon.signal(libc::SIGHUP);
    let notified = daemon
        .wait_notify("READY=1", Duration::from_secs(3))
        .expect("no READY=1 after SIGHUP");
    let reloading = notified
        .iter()
        .position(|l| l == "RELOADING=1")
        .unwrap_or_else(|| panic!("no RELOADING=1: {notified:?}"));
    assert!(
        notified[reloading + 1].starts_with("MONOTONIC_USEC="),
        "{notified:?}"
    );
    assert_eq!(notified.last().map(String::as_str), Some("READY=1"));
    // `systemctl status` shows the rejection through STATUS=.
    let status_line = daemon
        .wait_notify_prefix("STATUS=", Duration::from_secs(3))
        .expect("no STATUS= after the reload");
    assert!(
        status_line.contains("REJECTED (sighup)") && status_line.contains(&file),
        "{status_line}"
    );
    assert!(Daemon::eventually(Duration::from_secs(3), || daemon
        .status()
        .reloads_failed
        >= 2));
    assert_rejected_with_position(&daemon, "sighup", &file);
    // 3. apply (the daemon's own validation: the request bypasses the CLI).
    match daemon.call(&apply_request(&s.policies.0, false)) {
        Response::Rejected { errors } => {
            assert!(errors[0].starts_with(&format!("{file}:")), "{errors:?}");
        }
        other => panic!("{other:?}"),
    }
    assert_rejected_with_position(&daemon, "apply", &file);
    // ... and through the CLI: exit 1 with FILE:LINE:COL.
    let out = daemon.cli(&["apply", s.policies.0.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("{file}:")));

    // The source only names the files in messages, but it must be an
    // absolute path.
    let Request::Apply { files, .. } = apply_request(&s.policies.0, false) else {
        unreachable!()
    };
    match daemon.call(&Request::Apply {
        source: "policies".into(),
        files,
        confirm_ms: None,
        allow_empty: false,
    }) {
        Response::Error { message } => assert!(message.contains("absolute"), "{message}"),
        other => panic!("{other:?}"),
    }

    // The running policy is untouched and still enforced.
    assert_eq!(daemon.status().policy.unwrap().content_hash, hash);
    assert_eq!(tcp_connect(&s.web, None, s.a.addr()), ProbeOutcome::Ok);
    assert_eq!(tcp_connect(&s.web, None, s.b.addr()), ProbeOutcome::Eperm);

    // A valid file again clears the rejection.
    write_policy(&s.policies.0, &web_policy(s.b.addr().port()));
    assert!(Daemon::eventually(Duration::from_secs(3), || daemon
        .status()
        .last_rejection
        .is_none()));
    assert_eq!(tcp_connect(&s.web, None, s.b.addr()), ProbeOutcome::Ok);
    assert_eq!(tcp_connect(&s.web, None, s.a.addr()), ProbeOutcome::Eperm);
}

#[test]
fn apply_confirm_rolls_back_unless_confirmed() {
    let _root = privileged!();
    let s = setup();
    let daemon = Daemon::start(&s.root, &s.policies.0);
    let original = daemon.status().policy.unwrap().content_hash;
    let candidate = Scratch::new("candidate");
    write_policy(&candidate.0, &web_policy(s.b.addr().port()));

    // Not confirmed: back to the original after 2 s.
    let out = daemon.cli(&["apply", candidate.0.to_str().unwrap(), "--confirm", "2s"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(tcp_connect(&s.web, None, s.b.addr()), ProbeOutcome::Ok);
    assert_eq!(tcp_connect(&s.web, None, s.a.addr()), ProbeOutcome::Eperm);
    let pending = daemon.status().policy.unwrap();
    assert!(pending.rollback_at.is_some());
    assert_ne!(pending.content_hash, original);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        Daemon::eventually(Duration::from_secs(2), || {
            daemon.status().policy.unwrap().content_hash == original
        }),
        "no rollback:\n{}",
        daemon.log()
    );
    assert_eq!(tcp_connect(&s.web, None, s.a.addr()), ProbeOutcome::Ok);
    assert_eq!(tcp_connect(&s.web, None, s.b.addr()), ProbeOutcome::Eperm);
    assert!(daemon.status().policy.unwrap().rollback_at.is_none());

    // Confirmed: it stays.
    let out = daemon.cli(&["apply", candidate.0.to_str().unwrap(), "--confirm", "2s"]);
    assert_eq!(out.status.code(), Some(0));
    let out = daemon.cli(&["confirm"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(Duration::from_millis(2500));
    assert_ne!(daemon.status().policy.unwrap().content_hash, original);
    assert_eq!(tcp_connect(&s.web, None, s.b.addr()), ProbeOutcome::Ok);
    // Nothing left to confirm.
    assert_eq!(daemon.cli(&["confirm"]).status.code(), Some(1));
}

#[test]
fn an_until_expiry_takes_effect_on_time_without_a_trigger() {
    let _root = privileged!();
    let s = setup();
    // `web` may reach `b` until a few seconds from now.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let until =
        enforcer::rfc3339::format_millis(std::time::UNIX_EPOCH + Duration::from_secs(now + 3));
    let until = until.replace(".000Z", "Z");
    let policy = format!(
        "{}\n[[policy]]\nname = \"temporary\"\nselect = {{ app = \"web\" }}\nallow-out = [ {{ to = [\"host\"], ports = [\"{}/tcp\"], until = \"{until}\" }} ]\n",
        web_policy(s.a.addr().port()),
        s.b.addr().port()
    );
    write_policy(&s.policies.0, &policy);
    let daemon = Daemon::start(&s.root, &s.policies.0);
    let status = daemon.status().policy.unwrap();
    assert_eq!(
        status.next_expiry.as_deref(),
        Some(until.replace('Z', ".000Z").as_str())
    );
    assert_eq!(
        tcp_connect(&s.web, None, s.b.addr()),
        ProbeOutcome::Ok,
        "{}",
        daemon.log()
    );
    let cut = Daemon::eventually(Duration::from_secs(6), || {
        tcp_connect(&s.web, None, s.b.addr()) == ProbeOutcome::Eperm
    });
    assert!(cut, "the expired rule still allows:\n{}", daemon.log());
    let expired_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(expired_at < (now + 5) as f64, "expiry took effect late");
    assert_eq!(tcp_connect(&s.web, None, s.a.addr()), ProbeOutcome::Ok);
    let status = daemon.status();
    assert!(status.policy.unwrap().next_expiry.is_none());
    assert_eq!(status.reloads_failed, 0);
}

/// `status` answered, quickly: the daemon is not stuck.
fn assert_responsive(daemon: &Daemon) -> enforcer::api::StatusReport {
    let started = std::time::Instant::now();
    let status = daemon.status();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "status took {:?}",
        started.elapsed()
    );
    status
}

#[test]
fn apply_refuses_fifos_and_endless_files_naming_them() {
    let _root = privileged!();
    let s = setup();
    let daemon = Daemon::start(&s.root, &s.policies.0);
    let before = daemon.status().policy.unwrap();

    // A valid policy beside a FIFO nobody writes to, then beside a symlink
    // to an endless device.
    let dir = Scratch::new("odd");
    write_policy(&dir.0, &web_policy(s.b.addr().port()));
    let odd = dir.0.join("zz.toml");
    for (make, kind) in [
        (
            &(|p: &std::path::Path| mkfifo(p)) as &dyn Fn(&std::path::Path),
            "a FIFO",
        ),
        (
            &|p: &std::path::Path| std::os::unix::fs::symlink("/dev/zero", p).unwrap(),
            "a character device",
        ),
    ] {
        make(&odd);
        let out = daemon.cli(&["apply", dir.0.to_str().unwrap(), "--allow-empty"]);
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!(
                "{}: it is {kind}, not a regular file",
                odd.display()
            )),
            "{stderr}"
        );
        let status = assert_responsive(&daemon);
        let policy = status.policy.unwrap();
        assert_eq!(
            (policy.generation, &policy.content_hash),
            (before.generation, &before.content_hash)
        );
        std::fs::remove_file(&odd).unwrap();
    }
    assert_eq!(tcp_connect(&s.web, None, s.b.addr()), ProbeOutcome::Eperm);

    // The daemon checks what it receives: file names are plain `*.toml`
    // names, never paths.
    let Request::Apply { mut files, .. } = apply_request(&dir.0, false) else {
        unreachable!()
    };
    files[0].name = "../../etc/passwd.toml".into();
    match daemon.call(&Request::Apply {
        source: dir.0.display().to_string(),
        files,
        confirm_ms: None,
        allow_empty: false,
    }) {
        Response::Rejected { errors } => {
            assert!(errors[0].contains("without a directory"), "{errors:?}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        daemon.status().policy.unwrap().generation,
        before.generation
    );
}

#[test]
fn a_fifo_in_the_policy_directory_is_rejected_on_reload() {
    let _root = privileged!();
    let s = setup();
    let daemon = Daemon::start(&s.root, &s.policies.0);
    let before = daemon.status().policy.unwrap();
    let fifo = s.policies.0.join("zz.toml");
    let named = format!("{}: it is a FIFO", fifo.display());

    // Its creation is a file change: rejected, naming it.
    mkfifo(&fifo);
    let mut status = daemon.status();
    let rejected = Daemon::eventually(Duration::from_secs(3), || {
        status = daemon.status();
        status
            .last_rejection
            .as_ref()
            .is_some_and(|r| r.trigger == "file change")
    });
    assert!(rejected, "{status:?}\n{}", daemon.log());
    let errors = &status.last_rejection.as_ref().unwrap().errors;
    assert!(errors[0].contains(&named), "{errors:?}");

    // SIGHUP reads the same directory: rejected again, at once.
    daemon.signal(libc::SIGHUP);
    daemon
        .wait_notify("READY=1", Duration::from_secs(3))
        .expect("no READY=1 after SIGHUP: the reload hangs");
    assert!(Daemon::eventually(Duration::from_secs(3), || daemon
        .status()
        .last_rejection
        .is_some_and(
            |r| r.trigger == "sighup" && r.errors[0].contains(&named)
        )));
    let status = assert_responsive(&daemon);
    assert_eq!(status.policy.unwrap().content_hash, before.content_hash);
    assert_eq!(tcp_connect(&s.web, None, s.a.addr()), ProbeOutcome::Ok);
    assert_eq!(tcp_connect(&s.web, None, s.b.addr()), ProbeOutcome::Eperm);
}

#[test]
fn an_empty_policy_set_replaces_workloads_only_when_asked() {
    let _root = privileged!();
    let s = setup();
    let daemon = Daemon::start(&s.root, &s.policies.0);
    let before = daemon.status().policy.unwrap();
    let intact = || {
        let policy = daemon.status().policy.unwrap();
        assert_eq!(
            (policy.generation, &policy.content_hash),
            (before.generation, &before.content_hash)
        );
        assert_eq!(tcp_connect(&s.web, None, s.b.addr()), ProbeOutcome::Eperm);
    };

    // A directory with no policy file (a typo, an unmounted volume).
    let empty = Scratch::new("empty");
    let out = daemon.cli(&["apply", empty.0.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("has no workload") && stdout.contains("--allow-empty"),
        "{stdout}"
    );
    intact();
    // A directory whose only policy file is a FIFO: not even read.
    let fifo_only = Scratch::new("fifo");
    mkfifo(&fifo_only.0.join("a.toml"));
    for extra in [None, Some("--allow-empty")] {
        let mut args = vec!["apply", fifo_only.0.to_str().unwrap()];
        args.extend(extra);
        let out = daemon.cli(&args);
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("a.toml: it is a FIFO"));
        intact();
    }
    // Emptying the configured directory: the file change is refused too,
    // saying how to do it on purpose.
    std::fs::remove_file(s.policies.0.join("policy.toml")).unwrap();
    let mut status = daemon.status();
    let refused = Daemon::eventually(Duration::from_secs(3), || {
        status = daemon.status();
        status
            .last_rejection
            .as_ref()
            .is_some_and(|r| r.trigger == "file change")
    });
    assert!(refused, "{status:?}");
    let errors = &status.last_rejection.as_ref().unwrap().errors;
    assert!(
        errors[0].contains(&format!(
            "run `enforcer apply --allow-empty {}`",
            s.policies.0.display()
        )),
        "{errors:?}"
    );
    intact();

    // Asked for: nothing is enforced any more.
    let out = daemon.cli(&["apply", empty.0.to_str().unwrap(), "--allow-empty"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let status = daemon.status();
    assert!(status.workloads.is_empty());
    assert_ne!(status.policy.unwrap().generation, before.generation);
    assert_eq!(tcp_connect(&s.web, None, s.b.addr()), ProbeOutcome::Ok);
}

#[test]
fn an_adopted_policy_is_not_replaced_by_an_empty_directory() {
    let _root = privileged!();
    let s = setup();
    let mut daemon = Daemon::start(&s.root, &s.policies.0);
    // The daemon dies; its policy stays pinned. It comes back to an empty
    // directory (a volume not mounted yet, say).
    daemon.kill9();
    std::fs::remove_file(s.policies.0.join("policy.toml")).unwrap();
    daemon.restart();
    let status = daemon.status();
    // What stays in force is the pinned policy, which the state directory
    // holds too: adopted with its compiled form.
    assert_eq!(
        status.policy.as_ref().and_then(|p| p.origin.as_deref()),
        Some("adopted"),
        "{status:?}"
    );
    let rejection = status
        .last_rejection
        .expect("the empty directory was refused");
    assert_eq!(rejection.trigger, "startup");
    assert!(
        rejection.errors[0].contains("the policy adopted from an earlier daemon"),
        "{rejection:?}"
    );
    assert_eq!(tcp_connect(&s.web, None, s.b.addr()), ProbeOutcome::Eperm);
    assert_eq!(tcp_connect(&s.web, None, s.a.addr()), ProbeOutcome::Ok);
    // The same through apply, unless asked for.
    let empty = Scratch::new("empty");
    let out = daemon.cli(&["apply", empty.0.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(tcp_connect(&s.web, None, s.b.addr()), ProbeOutcome::Eperm);
    let out = daemon.cli(&["apply", empty.0.to_str().unwrap(), "--allow-empty"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(tcp_connect(&s.web, None, s.b.addr()), ProbeOutcome::Ok);
}

/// Applies `dir` and expects it refused whole with an error containing
/// `says`; the policy in force (`hash`) stays, and is still enforced.
fn assert_refused_whole(s: &Setup, daemon: &Daemon, dir: &std::path::Path, says: &str, hash: &str) {
    match daemon.call(&apply_request(dir, false)) {
        Response::Rejected { errors } => {
            assert!(errors.iter().any(|e| e.contains(says)), "{errors:?}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(daemon.status().policy.unwrap().content_hash, hash);
    assert_eq!(tcp_connect(&s.web, None, s.a.addr()), ProbeOutcome::Ok);
    assert_eq!(tcp_connect(&s.web, None, s.b.addr()), ProbeOutcome::Eperm);
}

#[test]
fn a_policy_past_the_maps_capacity_is_refused_whole() {
    let _root = privileged!();
    let s = setup();
    let daemon = Daemon::start(&s.root, &s.policies.0);
    let hash = daemon.status().policy.unwrap().content_hash;

    // One IPv4 prefix more than the address maps hold: the candidate also
    // opens `web` to port b, which must never take effect. The prefixes are
    // every other address of 10.0.0.0/8 (nothing to merge), in four files
    // under the size limit of one file.
    let big = Scratch::new("past-capacity");
    write_policy(&big.0, &web_policy(s.b.addr().port()));
    let count = enforcer_common::capacity::MAX_PREFIXES_V4 as usize + 1;
    let files = 4;
    for file in 0..files {
        let mut text = format!("[peer.bulk{file}]\nlabels = {{ zone = \"bulk\" }}\ncidrs = [\n");
        for i in (file..count).step_by(files) {
            let [_, a, b, c] = (2 * i as u32).to_be_bytes();
            text.push_str(&format!("\"10.{a}.{b}.{c}/32\",\n"));
        }
        text.push_str("]\n");
        std::fs::write(big.0.join(format!("bulk{file}.toml")), text).expect("write");
    }
    std::fs::write(
        big.0.join("bulk.toml"),
        "[[policy]]\nname = \"bulk\"\nselect = { app = \"web\" }\n\
         allow-out = [ { to = [{ zone = \"bulk\" }], ports = [\"443/tcp\"] } ]\n",
    )
    .expect("write");
    assert_refused_whole(&s, &daemon, &big.0, "IPv4 prefixes", &hash);

    // More `*` patterns after one path than the kernel's cgroup matcher
    // follows from one directory: refused by the data plane, before
    // anything is written.
    let globs = Scratch::new("globs");
    let mut text = web_policy(s.b.addr().port());
    for i in 0..=enforcer_common::cgroup_match::MAX_GLOBS_PER_STATE {
        text.push_str(&format!(
            "\n[workload.g{i}]\ncgroup = \"g{i}-*\"\nlabels = {{ app = \"g{i}\" }}\n"
        ));
    }
    write_policy(&globs.0, &text);
    assert_refused_whole(
        &s,
        &daemon,
        &globs.0,
        "`*` segments follow the same path",
        &hash,
    );
    assert!(daemon.status().reloads_failed >= 2);
}
