//! The programs loaded and attached to a test
//! cgroup refuse a denied connection at once (EPERM) and allow an allowed
//! one; dropping or uninstalling leaves nothing attached and no pins.

mod dataplane_support;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use Action::Allow;
use Direction::Egress;
use Protocol::Tcp;
use dataplane_support::*;
use enforcer::dataplane::{Dataplane, DataplaneOptions, HostAddrs, ResolvedCgroup};
use enforcer_common::{
    identity::IDENTITY_HOST,
    layout::LAYOUT_DIR,
    protocol::Protocol,
    verdict::{Action, Direction},
};
use enforcer_tests::fork::in_cgroup;
use enforcer_tests::{CgroupGuard, privileged};

const WEB: u32 = 16;

/// A policy letting workload WEB connect to `host` on `port` only.
fn allow_port(port: u16) -> enforcer::compile::CompiledPolicy {
    let mut p = empty_policy(&[(WEB, "web")], &[]);
    add_verdicts(
        &mut p,
        &[(WEB, Egress, Tcp, IDENTITY_HOST, port, 16, Allow)],
    );
    p
}

fn connect_from(cg: &CgroupGuard, to: SocketAddr) -> (i32, Duration) {
    let start = Instant::now();
    let code = in_cgroup(cg.path(), || tcp_exchange(to, Duration::from_secs(3)));
    (code, start.elapsed())
}

#[test]
fn denied_connect_fails_at_once_and_allowed_one_succeeds() {
    let _root = privileged!();
    let allowed = tcp_echo_server("127.0.0.1:0".parse().unwrap());
    let denied = tcp_echo_server("127.0.0.1:0".parse().unwrap());
    let cg = CgroupGuard::new().expect("cgroup");
    let mut dp = Dataplane::load(&DataplaneOptions::default()).expect("load");
    dp.attach(cg.path()).expect("attach");
    assert_eq!(attached_programs(cg.path()), 9);

    // Before any policy, everything passes.
    assert_eq!(connect_from(&cg, denied).0, OK);

    let cgroups = [enforced(cg.id(), WEB)];
    dp.apply(&allow_port(allowed.port()), &cgroups, &HostAddrs::default())
        .expect("apply");

    assert_eq!(connect_from(&cg, allowed).0, OK, "allowed port");
    let (code, took) = connect_from(&cg, denied);
    assert_eq!(code, EPERM, "denied port must fail with EPERM");
    assert!(
        took < Duration::from_secs(1),
        "EPERM must be immediate, took {took:?}"
    );

    // This process is outside the cgroup: not filtered.
    assert_eq!(tcp_exchange(denied, Duration::from_secs(3)), OK);

    drop(dp);
    assert_eq!(
        attached_programs(cg.path()),
        0,
        "dropping detaches everything"
    );
    assert_eq!(connect_from(&cg, denied).0, OK);
}

/// Two local servers, a test cgroup of workload WEB, and a pin root.
/// Fields drop in order: the pins go before the cgroup.
struct Pinned {
    allowed: SocketAddr,
    denied: SocketAddr,
    pins: PinRoot,
    cg: CgroupGuard,
    options: DataplaneOptions,
    cgroups: [ResolvedCgroup; 1],
}

impl Pinned {
    fn new() -> Pinned {
        let cg = CgroupGuard::new().expect("cgroup");
        let pins = PinRoot::new();
        Pinned {
            allowed: tcp_echo_server("127.0.0.1:0".parse().unwrap()),
            denied: tcp_echo_server("127.0.0.1:0".parse().unwrap()),
            options: DataplaneOptions {
                pin_root: Some(pins.path.clone()),
                ..Default::default()
            },
            cgroups: [enforced(cg.id(), WEB)],
            pins,
            cg,
        }
    }
}

#[test]
fn pinned_enforcement_outlives_the_loader_is_adopted_and_uninstalls_cleanly() {
    let _root = privileged!();
    let t = Pinned::new();
    let (allowed, denied) = (t.allowed, t.denied);
    {
        let mut dp = Dataplane::load(&t.options).expect("load");
        dp.attach(t.cg.path()).expect("attach");
        let generation = dp
            .apply(
                &allow_port(allowed.port()),
                &t.cgroups,
                &HostAddrs::default(),
            )
            .expect("apply");
        assert_eq!(generation, 1);
    }
    // The loader is gone; the pinned links and maps still enforce.
    assert_eq!(attached_programs(t.cg.path()), 9);
    assert_eq!(connect_from(&t.cg, denied).0, EPERM);
    assert_eq!(connect_from(&t.cg, allowed).0, OK);

    // A new process adopts the pinned state: same policy, links replaced.
    {
        let mut dp = Dataplane::load(&t.options).expect("reload");
        assert_eq!(dp.config().expect("config").generation, 1);
        assert_eq!(dp.cgroups().count(), 1);
        dp.attach(t.cg.path()).expect("re-attach");
        assert_eq!(
            attached_programs(t.cg.path()),
            9,
            "old links replaced, not doubled"
        );
        assert_eq!(connect_from(&t.cg, denied).0, EPERM);
        let generation = dp
            .apply(
                &allow_port(denied.port()),
                &t.cgroups,
                &HostAddrs::default(),
            )
            .expect("apply");
        assert_eq!(generation, 2);
        assert_eq!(connect_from(&t.cg, denied).0, OK);
        assert_eq!(connect_from(&t.cg, allowed).0, EPERM);
    }

    Dataplane::uninstall(&t.pins.path).expect("uninstall");
    assert_eq!(
        attached_programs(t.cg.path()),
        0,
        "uninstall detaches everything"
    );
    assert!(!t.pins.path.join(LAYOUT_DIR).exists(), "no pins left");
    assert_eq!(connect_from(&t.cg, allowed).0, OK);
    assert_eq!(connect_from(&t.cg, denied).0, OK);
}

#[test]
fn refuses_the_root_cgroup() {
    let _root = privileged!();
    let mut dp = Dataplane::load(&DataplaneOptions::default()).expect("load");
    let err = dp
        .attach(enforcer_tests::cgroup2_mount().expect("cgroup v2 mount"))
        .expect_err("root must be refused");
    assert!(err.to_string().contains("root cgroup"), "{err}");
}

#[test]
fn removing_the_cgroup_leaves_no_link_behind() {
    let _root = privileged!();
    // Unpinned: links die with the cgroup and the loader.
    let cg = CgroupGuard::new().expect("cgroup");
    let id = cg.id();
    let mut dp = Dataplane::load(&DataplaneOptions::default()).expect("load");
    dp.attach(cg.path()).expect("attach");
    assert_eq!(links_to_cgroup(id), 9);
    drop(cg);
    drop(dp);
    assert_eq!(
        links_to_cgroup(id),
        0,
        "no link left for the removed cgroup"
    );

    // Pinned: the cgroup goes away under the pinned links; uninstall still
    // cleans everything.
    let cg = CgroupGuard::new().expect("cgroup");
    let id = cg.id();
    let pins = PinRoot::new();
    let options = DataplaneOptions {
        pin_root: Some(pins.path.clone()),
        ..Default::default()
    };
    {
        let mut dp = Dataplane::load(&options).expect("load");
        dp.attach(cg.path()).expect("attach");
    }
    assert_eq!(links_to_cgroup(id), 9, "pinned links outlive the loader");
    drop(cg);
    Dataplane::uninstall(&pins.path).expect("uninstall");
    assert_eq!(links_to_cgroup(id), 0);
    assert!(!pins.path.join(LAYOUT_DIR).exists(), "no pins left");
}

#[test]
fn programs_of_an_earlier_layout_are_retired_once_ours_enforce() {
    let _root = privileged!();
    let t = Pinned::new();
    let (allowed, denied) = (t.allowed, t.denied);
    // An "earlier binary": its pins moved to the directory of layout v1,
    // still attached and enforcing a policy that denies `allowed`.
    {
        let mut dp = Dataplane::load(&t.options).expect("load");
        dp.apply(
            &allow_port(denied.port()),
            &t.cgroups,
            &HostAddrs::default(),
        )
        .expect("apply");
        dp.attach(t.cg.path()).expect("attach");
    }
    let old = t.pins.path.join("v1");
    std::fs::rename(t.pins.path.join(LAYOUT_DIR), &old).expect("rename the pins to v1");
    assert_eq!(attached_programs(t.cg.path()), 9);

    let mut dp = Dataplane::load(&t.options).expect("load the new layout");
    dp.apply(
        &allow_port(allowed.port()),
        &t.cgroups,
        &HostAddrs::default(),
    )
    .expect("apply");
    dp.attach(t.cg.path()).expect("attach");
    assert_eq!(attached_programs(t.cg.path()), 18, "both layouts attached");
    // Both enforce: each denies what the other allows.
    assert_eq!(connect_from(&t.cg, allowed).0, EPERM);
    assert_eq!(connect_from(&t.cg, denied).0, EPERM);
    assert_eq!(
        dp.retire_older_layouts().expect("retire"),
        vec![old.clone()]
    );
    assert_eq!(
        attached_programs(t.cg.path()),
        9,
        "the old programs are gone"
    );
    assert!(!old.exists(), "the old pins are gone");
    assert_eq!(connect_from(&t.cg, allowed).0, OK);
    assert_eq!(connect_from(&t.cg, denied).0, EPERM);
    assert!(dp.retire_older_layouts().expect("retire again").is_empty());
    drop(dp);

    // `uninstall` removes earlier layouts too.
    {
        let mut dp = Dataplane::load(&t.options).expect("load");
        dp.attach(t.cg.path()).expect("attach");
    }
    std::fs::rename(t.pins.path.join(LAYOUT_DIR), &old).expect("rename the pins to v1");
    Dataplane::uninstall(&t.pins.path).expect("uninstall");
    assert_eq!(attached_programs(t.cg.path()), 0);
    assert!(!old.exists());
}
