//! Cgroups registered by the kernel at their creation: the cgroup tracer
//! (`tp_btf/cgroup_mkdir`) must register exactly what the daemon's
//! resolution of the same tree gives (`cgroups::Matcher`, the same
//! automaton), for real cgroups made by root and by another user, in
//! random trees. Both policy slots are checked.

mod dataplane_support;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use dataplane_support::seeded_rng;
use enforcer::{
    cgroups::{CgroupTree, Matcher, uid_of_user},
    compile::CompiledPolicy,
    dataplane::{Dataplane, DataplaneOptions, HostAddrs, RegistrationLimits, ResolvedCgroup},
};
use enforcer_common::workload::CgroupEntry;
use enforcer_tests::{CgroupGuard, cgroup::mkdir_as, privileged};

/// The user of the delegated trees (any uid but root will do; no account
/// is needed to own a directory).
const USER: u32 = 4242;

/// Selectors of every kind, relative to the test's cgroup root.
fn policy_text() -> String {
    format!(
        r#"
[workload.db]
unit = "db.service"

[workload.mine]
unit = "db.service"
user = {USER}

[workload.api]
cgroup = "system.slice/api-*.service"

[workload.jobs]
cgroup = "**/job-*"
delegated = true

[workload.scopes]
cgroup = "*/**/x*y.scope"
"#
    )
}

fn compile(text: &str) -> CompiledPolicy {
    let sources = [(PathBuf::from("registration.toml"), text.to_owned())];
    let loaded = enforcer::policy::load_sources(&sources).expect("valid policy");
    enforcer::check::compile_loaded(loaded, SystemTime::now())
        .expect("compiles")
        .0
}

/// What the daemon would put in the kernel's cgroup map for this tree.
fn expected(policy: &CompiledPolicy, matcher: &Matcher, root: &Path) -> Vec<ResolvedCgroup> {
    let tree = CgroupTree::scan(root).expect("scan");
    let resolution = matcher.resolve(&tree);
    ResolvedCgroup::of_resolution(&resolution, &tree, policy, usize::MAX).0
}

/// Puts the policy in force as the daemon does: the automaton and the
/// states of the cgroups that exist, then the flip.
fn apply(dp: &mut Dataplane, policy: &CompiledPolicy, matcher: &Matcher, root: &Path) {
    let tables = matcher
        .automaton()
        .kernel_tables(dp.name_key().expect("registration enabled"));
    dp.stage(policy, &HostAddrs::default(), Some(&tables))
        .expect("stage");
    let tree = CgroupTree::scan(root).expect("scan");
    let resolution = matcher.resolve(&tree);
    let cgroups = expected(policy, matcher, root);
    dp.stage_cgroups(&cgroups, Some(&resolution.states))
        .expect("stage cgroups");
    dp.commit().expect("commit");
}

fn kernel_slot(dp: &Dataplane, slot: usize) -> BTreeMap<u64, CgroupEntry> {
    dp.read_slot(slot)
        .expect("read slot")
        .cgroups
        .into_iter()
        .collect()
}

fn as_map(cgroups: &[ResolvedCgroup]) -> BTreeMap<u64, CgroupEntry> {
    cgroups.iter().map(|c| (c.cgroup_id, c.entry())).collect()
}

/// The cgroup names the random trees are made of: slices, units of both
/// managers, pattern matches and misses.
const NAMES: [&str; 14] = [
    "system.slice",
    "user.slice",
    "app.slice",
    "db.service",
    "api-1.service",
    "api.service",
    "job-7",
    "x1y.scope",
    "xy.scope",
    "misc",
    "worker",
    "user-4242.slice",
    "user@4242.service",
    "other.scope",
];

#[test]
fn the_kernel_registers_what_the_daemon_resolves_in_random_trees() {
    let _root = privileged!();
    let (seed, mut rng) = seeded_rng();
    let root = CgroupGuard::new().expect("cgroup");
    let policy = compile(&policy_text());
    let matcher = Matcher::new(&policy.workloads, uid_of_user).expect("matcher");
    let mut dp = Dataplane::load(&DataplaneOptions::default()).expect("load");
    dp.enable_registration(RegistrationLimits::default())
        .expect("the cgroup tracer loads");
    // Twice: both slots hold the automaton, and the tracer registers in
    // both.
    apply(&mut dp, &policy, &matcher, root.path());
    apply(&mut dp, &policy, &matcher, root.path());

    // A skeleton the random growth starts from: the system slice, a user
    // manager's tree handed to its user as systemd does, a delegated
    // directory.
    let mut dirs = vec![root.path().to_path_buf()];
    for (path, owner) in [
        ("system.slice", 0),
        ("user.slice", 0),
        ("user.slice/user-4242.slice", 0),
        ("user.slice/user-4242.slice/user@4242.service", USER),
        ("batch", USER),
    ] {
        let dir = root.path().join(path);
        std::fs::create_dir(&dir).expect("mkdir");
        std::os::unix::fs::chown(&dir, Some(owner), Some(owner)).expect("chown");
        dirs.push(dir);
    }
    // Then one cgroup of each workload, so that the random rest never
    // leaves one out, and random growth.
    let planted = [
        "system.slice/db.service",
        "user.slice/user-4242.slice/user@4242.service/app.slice",
        "user.slice/user-4242.slice/user@4242.service/app.slice/db.service",
        "system.slice/api-1.service",
        "batch/job-7",
        "system.slice/misc",
        "system.slice/misc/x1y.scope",
    ];
    for round in 0..400 {
        let dir = match planted.get(round) {
            Some(path) => root.path().join(path),
            None => {
                let parent = &dirs[rng.below(dirs.len() as u64) as usize];
                parent.join(NAMES[rng.below(NAMES.len() as u64) as usize])
            }
        };
        let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
            continue;
        };
        let name = name.to_str().expect("a name of NAMES");
        if dir.exists() {
            continue;
        }
        // Whoever owns the parent makes the child; a user manager's own
        // cgroup is made by root and then handed to its user, as systemd
        // does.
        let owner = std::fs::metadata(parent).expect("stat").uid();
        mkdir_as(&dir, owner).expect("mkdir");
        if name == "user@4242.service" && owner == 0 {
            std::os::unix::fs::chown(&dir, Some(USER), Some(USER)).expect("chown");
        }
        dirs.push(dir);
        if round % 20 == 19 {
            let wanted = as_map(&expected(&policy, &matcher, root.path()));
            for slot in 0..2 {
                assert_eq!(
                    kernel_slot(&dp, slot),
                    wanted,
                    "slot {slot} after {round} rounds (seed {seed})"
                );
            }
        }
    }
    // Some of what the daemon resolves must be there, or the test proves
    // nothing: every workload kind registered at least once.
    let wanted = expected(&policy, &matcher, root.path());
    for name in ["db", "mine", "api", "jobs", "scopes"] {
        let identity = policy.identity_of(name).expect("workload");
        assert!(
            wanted.iter().any(|c| c.workload == identity),
            "no cgroup of {name} in the random tree (seed {seed}): {wanted:?}"
        );
    }

    // Removing cgroups removes their entries.
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for dir in dirs.iter().filter(|d| d.as_path() != root.path()).take(100) {
        let _ = std::fs::remove_dir(dir);
    }
    let wanted = as_map(&expected(&policy, &matcher, root.path()));
    for slot in 0..2 {
        assert_eq!(kernel_slot(&dp, slot), wanted, "slot {slot} after removals");
    }
}

#[test]
fn a_workload_past_its_quota_registers_no_more_and_others_still_do() {
    let _root = privileged!();
    let root = CgroupGuard::new().expect("cgroup");
    let policy = compile(&policy_text());
    let matcher = Matcher::new(&policy.workloads, uid_of_user).expect("matcher");
    let mut dp = Dataplane::load(&DataplaneOptions::default()).expect("load");
    dp.enable_registration(RegistrationLimits {
        max_cgroups_per_workload: 5,
        ..RegistrationLimits::default()
    })
    .expect("the cgroup tracer loads");
    apply(&mut dp, &policy, &matcher, root.path());
    let jobs = policy.identity_of("jobs").expect("jobs");
    // A user floods the delegated pattern.
    let base = root.path().join("batch");
    std::fs::create_dir(&base).expect("mkdir");
    std::os::unix::fs::chown(&base, Some(USER), Some(USER)).expect("chown");
    for i in 0..50 {
        mkdir_as(&base.join(format!("job-{i}")), USER).expect("mkdir");
    }
    let slot = dp.active_slot_index().expect("slot");
    let registered = kernel_slot(&dp, slot)
        .values()
        .filter(|e| e.workload == jobs)
        .count();
    assert_eq!(registered, 5);
    // Counted once per cgroup, whichever slots refused it.
    let counters = dp.global_counters().expect("counters");
    assert_eq!(counters.registrations_refused, 45);
    assert!(counters.cgroups_registered >= 5);
    // Another workload's new cgroup is still registered.
    std::fs::create_dir(root.path().join("system.slice")).expect("mkdir");
    let api = root.path().join("system.slice/api-1.service");
    std::fs::create_dir(&api).expect("mkdir");
    let id = std::fs::metadata(&api).expect("stat").ino();
    assert_eq!(
        kernel_slot(&dp, slot).get(&id).map(|e| e.workload),
        policy.identity_of("api")
    );
}
