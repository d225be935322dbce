use enforcer_common::{cgroup_match::MAX_GLOB_LEN, workload::Mode};

use super::*;

fn workload(identity: Identity, selector: CgroupSelector) -> CompiledWorkload {
    CompiledWorkload {
        identity,
        class: identity,
        name: format!("w{identity}"),
        selector,
        mode: if identity.is_multiple_of(2) {
            Mode::Enforce as u8
        } else {
            Mode::Audit as u8
        },
    }
}

fn users(user: &UnitUser) -> Option<u32> {
    match user {
        UnitUser::Uid(uid) => Some(*uid),
        UnitUser::Name(name) if name == "alice" => Some(1000),
        UnitUser::Name(_) => None,
    }
}

/// The workload owning `path` (its own cgroup, not an ancestor's), with
/// the directories on the way owned by `owners` (root where absent).
fn owner(a: &Automaton, path: &str, owners: &[(&str, u32)]) -> Option<Identity> {
    let mut states = a.initial();
    let mut delegated = false;
    let mut winner = None;
    let mut at = String::new();
    for segment in path.split('/') {
        if !at.is_empty() {
            at.push('/');
        }
        at.push_str(segment);
        let owned = owners.iter().any(|&(p, uid)| p == at && uid != 0);
        let child_delegated = delegated || owned;
        let step = a.step(&states, delegated, segment.as_bytes(), child_delegated);
        winner = step.winner().map(|w| w.workload);
        states = step.states;
        delegated = child_delegated;
    }
    winner
}

fn automaton(selectors: Vec<CgroupSelector>) -> Automaton {
    let workloads: Vec<_> = selectors
        .into_iter()
        .enumerate()
        .map(|(i, s)| workload(16 + i as Identity, s))
        .collect();
    Automaton::build(&workloads, users).unwrap()
}

#[test]
fn a_unit_is_the_system_managers_unit_at_the_end_of_a_slice_chain() {
    let a = automaton(vec![CgroupSelector::Unit("nginx.service".into())]);
    for path in [
        "system.slice/nginx.service",
        "system.slice/system-web.slice/nginx.service",
        "machine.slice/nginx.service",
        "nginx.service",
        "user.slice/user-1000.slice/nginx.service",
    ] {
        assert_eq!(owner(&a, path, &[]), Some(16), "{path}");
    }
    for path in [
        // Under a user manager, inside another unit, outside the slices.
        "user.slice/user-1000.slice/user@1000.service/app.slice/nginx.service",
        "user.slice/user-1000.slice/user@1000.service/nginx.service",
        "system.slice/docker.service/nginx.service",
        "system.slice/other.scope/x.slice/nginx.service",
        "enforcer-test/nginx.service",
        "system.slice/nginx.service/child",
    ] {
        assert_eq!(owner(&a, path, &[]), None, "{path}");
    }
    // A slice handed to a user is a delegated subtree: not the system
    // manager's. The unit's own directory may be (`Delegate=`).
    assert_eq!(
        owner(
            &a,
            "system.slice/bob.slice/nginx.service",
            &[("system.slice/bob.slice", 1001)]
        ),
        None
    );
    assert_eq!(
        owner(
            &a,
            "system.slice/nginx.service",
            &[("system.slice/nginx.service", 33)]
        ),
        Some(16)
    );
}

#[test]
fn a_user_unit_is_that_users_managers_unit_only() {
    let a = automaton(vec![
        CgroupSelector::UserUnit {
            unit: "sync.service".into(),
            user: UnitUser::Name("alice".into()),
        },
        CgroupSelector::UserUnit {
            unit: "sync.service".into(),
            user: UnitUser::Name("mallory".into()),
        },
    ]);
    let alice = [("user.slice/user-1000.slice/user@1000.service", 1000)];
    for path in [
        "user.slice/user-1000.slice/user@1000.service/app.slice/sync.service",
        "user.slice/user-1000.slice/user@1000.service/sync.service",
        "user.slice/user-1000.slice/user@1000.service/a.slice/b.slice/sync.service",
    ] {
        assert_eq!(owner(&a, path, &alice), Some(16), "{path}");
    }
    for path in [
        "user.slice/user-1001.slice/user@1001.service/app.slice/sync.service",
        "system.slice/sync.service",
        "user.slice/user-1000.slice/sync.service",
        "user.slice/user-1000.slice/user@1000.service/x.service/sync.service",
    ] {
        assert_eq!(owner(&a, path, &alice), None, "{path}");
    }
    assert_eq!(
        a.unknown_users(),
        [("w17".to_owned(), "mallory".to_owned())]
    );
}

#[test]
fn patterns_match_root_owned_cgroups_unless_delegated() {
    let a = automaton(vec![
        CgroupSelector::Glob("system.slice/api-*.service".into()),
        CgroupSelector::DelegatedGlob("system.slice/ci.service/job-*".into()),
        CgroupSelector::Glob("kubepods/**/*.scope".into()),
        CgroupSelector::Glob("batch/**".into()),
    ]);
    assert_eq!(owner(&a, "system.slice/api-1.service", &[]), Some(16));
    assert_eq!(owner(&a, "system.slice/api.service", &[]), None);
    let handed = [("system.slice/api-1.service", 1000)];
    assert_eq!(owner(&a, "system.slice/api-1.service", &handed), None);
    let ci = [("system.slice/ci.service", 999)];
    assert_eq!(owner(&a, "system.slice/ci.service/job-7", &ci), Some(17));
    assert_eq!(owner(&a, "kubepods/a.scope", &[]), Some(18));
    assert_eq!(owner(&a, "kubepods/p1/c/x.scope", &[]), Some(18));
    assert_eq!(owner(&a, "kubepods/p1/c/x.slice", &[]), None);
    assert_eq!(owner(&a, "batch", &[]), Some(19));
    assert_eq!(owner(&a, "batch/a/b", &[]), Some(19));
    let user_pod = [("kubepods/p1", 1000)];
    assert_eq!(owner(&a, "kubepods/p1/x.scope", &user_pod), None);
}

#[test]
fn the_lowest_identity_wins_and_both_are_reported() {
    let a = automaton(vec![
        CgroupSelector::Glob("**/db.service".into()),
        CgroupSelector::Unit("db.service".into()),
    ]);
    let system = a.step(&a.initial(), false, b"system.slice", false);
    let step = a.step(&system.states, false, b"db.service", false);
    assert_eq!(step.winner().map(|w| w.workload), Some(16));
    assert_eq!(step.accepts.len(), 2);
}

/// The reference: `*` within a segment, `**` for any number of segments.
fn path_glob(pattern: &[&str], path: &[&str]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((&"**", rest)) => (0..=path.len()).any(|k| path_glob(rest, &path[k..])),
        Some((p, rest)) => match path.split_first() {
            Some((s, tail)) => {
                let rule = GlobRule::new(p.as_bytes(), 0).unwrap();
                glob_matches(&rule, s.as_bytes()) && path_glob(rest, tail)
            }
            None => false,
        },
    }
}

#[test]
fn patterns_match_as_the_reference_does() {
    let patterns = [
        "a/*",
        "a/**/z",
        "**/z",
        "*/b*/**",
        "a/b",
        "**/x*y/**/z",
        "a/**",
        "*",
    ];
    let segments = ["a", "b", "bb", "z", "xy", "xay", "q"];
    // Every path of up to four segments over the alphabet.
    let mut paths: Vec<Vec<&str>> = vec![vec![]];
    for _ in 0..4 {
        let longer: Vec<Vec<&str>> = paths
            .iter()
            .filter(|p| p.len() == paths.last().map_or(0, Vec::len))
            .flat_map(|p| {
                segments.iter().map(move |s| {
                    let mut q = p.clone();
                    q.push(*s);
                    q
                })
            })
            .collect();
        paths.extend(longer);
    }
    for pattern in patterns {
        let a = automaton(vec![CgroupSelector::Glob(pattern.into())]);
        let split: Vec<&str> = pattern.split('/').collect();
        for path in paths.iter().filter(|p| !p.is_empty()) {
            let expected = path_glob(&split, path);
            let got = owner(&a, &path.join("/"), &[]) == Some(16);
            assert_eq!(got, expected, "{pattern} against {}", path.join("/"));
        }
    }
}

#[test]
fn the_kernel_tables_hold_every_transition() {
    let a = automaton(vec![
        CgroupSelector::Unit("nginx.service".into()),
        CgroupSelector::Glob("system.slice/api-*.service".into()),
        CgroupSelector::Glob("kubepods/**/*.scope".into()),
    ]);
    let tables = a.kernel_tables([1, 2]);
    assert_eq!(tables.states.len(), a.nodes.len());
    let globs: usize = a.nodes.iter().map(|n| n.globs.len()).sum();
    assert_eq!(tables.globs.len(), globs);
    let exact: usize = a.nodes.iter().map(|n| n.exact.len()).sum();
    assert_eq!(tables.exact.len(), exact);
    // Each state's globs are a contiguous run in its order.
    for (id, node) in a.nodes.iter().enumerate() {
        let state = tables.states[id];
        assert_eq!(usize::from(state.glob_count), node.globs.len());
        for (k, (_, next)) in node.globs.iter().enumerate() {
            let rule = tables.globs[state.glob_first as usize + k];
            assert_eq!(rule.next_state, u32::from(*next));
        }
    }
}

#[test]
fn selectors_past_the_kernels_capacity_are_refused() {
    let long = format!("system.slice/{}*", "x".repeat(MAX_GLOB_LEN));
    let err = Automaton::build(&[workload(16, CgroupSelector::Glob(long))], users).unwrap_err();
    assert!(matches!(err, AutomatonError::GlobTooLong { .. }), "{err}");
    let many: Vec<_> = (0..=MAX_GLOBS_PER_STATE)
        .map(|i| workload(16 + i, CgroupSelector::Glob(format!("s/a{i}-*"))))
        .collect();
    let err = Automaton::build(&many, users).unwrap_err();
    assert!(
        matches!(err, AutomatonError::TooManyGlobsAfterOnePath { .. }),
        "{err}"
    );
    // A state per unit: as many units as the states hold (with the
    // empty state, the root's and the system chain's), and one more
    // is refused.
    let units = |n: u32| -> Vec<_> {
        (0..n)
            .map(|i| workload(16 + i, CgroupSelector::Unit(format!("w{i}.service"))))
            .collect()
    };
    let fits = MAX_MATCH_STATES - 4;
    assert!(Automaton::build(&units(fits), users).is_ok());
    let err = Automaton::build(&units(fits + 1), users).unwrap_err();
    assert!(matches!(err, AutomatonError::TooManyStates { .. }), "{err}");
}
