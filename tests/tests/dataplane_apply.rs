//! Incremental policy writes: `Dataplane::apply` turns the inactive slot
//! into the new policy by writing only the differences from what it wrote
//! there before. Whatever the sequence of policies, cgroup changes and
//! adoptions of pinned maps, each slot must hold exactly what a fresh fill
//! would (read back from the kernel maps).

mod dataplane_support;

use std::net::{IpAddr, Ipv4Addr};

use dataplane_support::{
    random::{PolicyShape, random_policy},
    *,
};
use enforcer::{
    compile::CompiledPolicy,
    dataplane::{Dataplane, DataplaneOptions, HostAddrs, ResolvedCgroup, SlotContent},
};
use enforcer_common::{
    identity::IDENTITY_ANY,
    protocol::Protocol,
    verdict::{Action, Direction, VerdictKey, VerdictValue},
    workload::Mode,
};
use enforcer_tests::privileged;

const WORKLOADS: [(u32, &str); 3] = [(16, "api"), (17, "web"), (18, "db")];
/// Shares the verdict rows of api (16): a member of its class.
const MEMBER: (u32, &str) = (19, "batch");
const ALL_WORKLOADS: [u32; 4] = [16, 17, 18, MEMBER.0];
const PEERS: [(u32, &str); 3] = [(20, "office"), (21, "vendor"), (22, "lab")];

/// Larger policies than the differential test's, so that applies have
/// many differences to write: up to 20 prefixes of each family and 400
/// verdict draws (about 160 distinct entries on average, more than the 150
/// of this test's earlier generator, which drew from fewer kinds).
const SHAPE: PolicyShape<'static> = PolicyShape {
    workloads: &WORKLOADS,
    member: MEMBER,
    member_classes: &[16],
    peers: &PEERS,
    max_prefixes: 20,
    max_verdicts: 400,
};

/// The same policy with one entry changed, one removed and one added: what
/// a one-rule edit looks like to the data plane.
fn edited(p: &CompiledPolicy, rng: &mut Rng) -> CompiledPolicy {
    let mut q = p.clone();
    if !q.verdicts.is_empty() {
        let i = rng.below(q.verdicts.len() as u64) as usize;
        q.verdicts[i].1.rule += 10;
        let j = rng.below(q.verdicts.len() as u64) as usize;
        q.verdicts.remove(j);
    }
    let key = VerdictKey::new(
        17,
        Direction::Ingress as u8,
        Protocol::Tcp as u8,
        IDENTITY_ANY,
        65000,
        16,
    );
    if let Err(at) = q.verdicts.binary_search_by_key(&key, |e| e.0) {
        q.verdicts.insert(
            at,
            (
                key,
                VerdictValue {
                    rule: 3,
                    action: Action::Allow as u8,
                    _pad: [0; 3],
                },
            ),
        );
    }
    q
}

fn random_cgroups(rng: &mut Rng) -> Vec<ResolvedCgroup> {
    (0..rng.below(6))
        .map(|i| {
            let workload = ALL_WORKLOADS[rng.below(4) as usize];
            ResolvedCgroup {
                cgroup_id: 1000 + i * 7 + rng.below(3),
                workload,
                class: if workload == MEMBER.0 { 16 } else { workload },
                mode: if rng.chance(20) {
                    Mode::Audit as u8
                } else {
                    Mode::Enforce as u8
                },
            }
        })
        .collect()
}

fn random_host(rng: &mut Rng) -> HostAddrs {
    HostAddrs {
        addrs: (0..rng.below(3))
            .map(|_| IpAddr::V4(Ipv4Addr::new(198, 51, 100, rng.below(4) as u8)))
            .collect(),
    }
}

/// What was applied last, to compare a slot with.
#[derive(Clone)]
struct Applied {
    policy: CompiledPolicy,
    cgroups: Vec<ResolvedCgroup>,
    host: HostAddrs,
}

impl Applied {
    fn content(&self) -> SlotContent {
        SlotContent::of(&self.policy, &self.cgroups, &self.host)
    }
}

/// Applies and checks both slots: the active one holds exactly `next`,
/// the other one what was applied before (`previous`).
fn apply_and_check(dp: &mut Dataplane, next: &Applied, previous: Option<&Applied>, context: &str) {
    dp.apply(&next.policy, &next.cgroups, &next.host)
        .unwrap_or_else(|e| panic!("{context}: apply: {e}"));
    let active = dp.active_slot_index().expect("config");
    assert_eq!(
        dp.read_slot(active).expect("read active slot"),
        next.content(),
        "{context}: the active slot holds the new policy exactly"
    );
    assert!(dp.knows_slot(active), "{context}");
    if let Some(previous) = previous {
        assert_eq!(
            dp.read_slot(1 - active).expect("read inactive slot"),
            previous.content(),
            "{context}: the other slot still holds the previous policy"
        );
    }
}

#[test]
fn successive_applies_leave_exactly_each_policys_entries() {
    let _root = privileged!();
    let (seed, mut rng) = seeded_rng();
    let mut dp = Dataplane::load(&DataplaneOptions::default()).expect("load");
    assert!(!dp.knows_slot(0) && !dp.knows_slot(1));
    // A pool of policies so that sequences like A, B, A, C occur, plus
    // small edits of the last one.
    let pool: Vec<Applied> = (0..4)
        .map(|_| Applied {
            policy: random_policy(&mut rng, &SHAPE),
            cgroups: random_cgroups(&mut rng),
            host: random_host(&mut rng),
        })
        .collect();
    let mut previous: Option<Applied> = None;
    let mut sequence = vec![0usize, 1, 0, 2, 2, 3, 1];
    sequence.extend((0..24).map(|_| rng.below(6) as usize));
    for (round, pick) in sequence.into_iter().enumerate() {
        let context = format!("seed {seed} round {round} (pick {pick})");
        let next = match (pick, &previous) {
            (0..=3, _) | (_, None) => pool[pick.min(3)].clone(),
            (4, Some(last)) => Applied {
                policy: edited(&last.policy, &mut rng),
                ..last.clone()
            },
            (_, Some(last)) => Applied {
                cgroups: random_cgroups(&mut rng),
                host: random_host(&mut rng),
                ..last.clone()
            },
        };
        apply_and_check(&mut dp, &next, previous.as_ref(), &context);
        // The cgroup watcher edits the active slot in place; later applies
        // into this slot must account for it.
        let mut current = next;
        if rng.chance(50) {
            let added = ResolvedCgroup {
                cgroup_id: 5000 + round as u64,
                workload: MEMBER.0,
                class: 16,
                mode: Mode::Enforce as u8,
            };
            dp.add_cgroup(added).expect("add cgroup");
            current.cgroups.push(added);
            if let Some(gone) = current.cgroups.first().copied()
                && rng.chance(50)
            {
                dp.remove_cgroup(gone.cgroup_id).expect("remove cgroup");
                current.cgroups.retain(|c| c.cgroup_id != gone.cgroup_id);
            }
            let active = dp.active_slot_index().expect("config");
            assert_eq!(
                dp.read_slot(active).expect("read active slot"),
                current.content(),
                "{context}: after cgroup changes"
            );
        }
        previous = Some(current);
    }
}

#[test]
fn a_new_process_empties_the_slots_it_adopts_before_writing_them() {
    let _root = privileged!();
    let (_, mut rng) = seeded_rng();
    let pins = PinRoot::new();
    let options = DataplaneOptions {
        pin_root: Some(pins.path.clone()),
        ..DataplaneOptions::default()
    };
    let applied: Vec<Applied> = (0..4)
        .map(|_| Applied {
            policy: random_policy(&mut rng, &SHAPE),
            cgroups: random_cgroups(&mut rng),
            host: random_host(&mut rng),
        })
        .collect();
    {
        let mut dp = Dataplane::load(&options).expect("load");
        apply_and_check(&mut dp, &applied[0], None, "first process, A");
        apply_and_check(&mut dp, &applied[1], Some(&applied[0]), "first process, B");
    }
    // The pins hold A and B; the new process knows neither, so it must
    // empty each slot before writing it (A's entries must not survive).
    let mut dp = Dataplane::load(&options).expect("adopt");
    assert!(!dp.knows_slot(0) && !dp.knows_slot(1));
    let active = dp.active_slot_index().expect("config");
    assert_eq!(dp.read_slot(active).expect("read"), applied[1].content());
    apply_and_check(&mut dp, &applied[2], Some(&applied[1]), "adopted, C");
    apply_and_check(&mut dp, &applied[3], Some(&applied[2]), "adopted, D");
    // Both slots are known now: the next applies write differences only.
    assert!(dp.knows_slot(0) && dp.knows_slot(1));
    apply_and_check(&mut dp, &applied[0], Some(&applied[3]), "adopted, A again");
    drop(dp);
    Dataplane::uninstall(&pins.path).expect("uninstall");
}
