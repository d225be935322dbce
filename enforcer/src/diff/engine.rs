//! Comparing the effective reachability of two policies.
//!
//! Entities are matched by kind and name (identities differ between
//! compiles); a workload whose name changed but whose cgroup selector did
//! not is the same processes, so it is matched as a rename. Remote
//! addresses are matched by address: each region of the address space is
//! compared under its owner in OLD and its owner in NEW.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use enforcer_common::{
    identity::{IDENTITY_HOST, Identity},
    verdict::{Direction, RULE_BUILTIN, RULE_DEFAULT_DENY, RULE_UNMANAGED},
};

use super::model::{
    Change, DiffInput, EntityChange, ExpectationChange, ModeChange, PolicyDiff, UntilChange,
};
use super::ports::{PortMap, combine, format_ports};
use super::reach::{Effective, PROTOCOLS, Reach, Scratch, port_max, protocol_name};
use super::regions::{AddrRange, regions};
use crate::compile::{CompiledPolicy, EntityKind};
use crate::policy::CgroupSelector;

/// Computes the semantic difference between `old` and `new`.
pub fn diff(old: &DiffInput, new: &DiffInput) -> PolicyDiff {
    let ro = Reach::new(&old.compiled);
    let rn = Reach::new(&new.compiled);
    let mut out = PolicyDiff::default();

    let workloads = pair_workloads(&old.compiled, &new.compiled, &mut out);
    let remotes = external_slots(&old.compiled, &new.compiled, &mut out);

    let mut rows: Vec<Row> = Vec::new();
    let absent = PortMap::default();
    let (mut so, mut sn) = (Scratch::default(), Scratch::default());
    let (mut bo, mut bn) = (PortMap::default(), PortMap::default());
    for local in &workloads {
        for &protocol in &PROTOCOLS {
            for remote in &workloads {
                let o = match (local.old, remote.old) {
                    (Some(a), Some(b)) => ro.between_workloads_in(a, b, protocol, &mut so),
                    _ => &absent,
                };
                let n = match (local.new, remote.new) {
                    (Some(a), Some(b)) => rn.between_workloads_in(a, b, protocol, &mut sn),
                    _ => &absent,
                };
                rows.extend(take_rows(
                    &ro,
                    &rn,
                    o,
                    n,
                    protocol,
                    &local.name,
                    &remote.name,
                    None,
                ));
            }
            for remote in &remotes {
                for direction in [Direction::Egress as u8, Direction::Ingress as u8] {
                    let o = match (local.old, remote.old) {
                        (Some(w), Some(r)) => ro.one_side_in(w, direction, protocol, r, &mut bo),
                        _ => &absent,
                    };
                    let n = match (local.new, remote.new) {
                        (Some(w), Some(r)) => rn.one_side_in(w, direction, protocol, r, &mut bn),
                        _ => &absent,
                    };
                    let (from, to) = if direction == Direction::Egress as u8 {
                        (&local.name, &remote.name)
                    } else {
                        (&remote.name, &local.name)
                    };
                    rows.extend(take_rows(
                        &ro,
                        &rn,
                        o,
                        n,
                        protocol,
                        from,
                        to,
                        remote.moved.as_ref(),
                    ));
                }
            }
        }
    }

    // Rows come out grouped by entity pair; `was` separates the address
    // regions that share a NEW owner.
    let key = |r: &Row| {
        (
            r.change.from.clone(),
            r.change.to.clone(),
            protocol_rank(r.protocol),
            r.lo,
            r.change.was.clone(),
        )
    };
    rows.sort_by_cached_key(key);
    out.changes = rows.into_iter().map(|r| r.change).collect();

    compare_expectations(old, new, &mut out);
    compare_untils(old, new, &mut out);

    out.widened = out.changes.iter().any(Change::is_widening)
        || out
            .modes
            .iter()
            .any(|m| m.before == "enforce" && m.after != "enforce");
    out.narrowed = out.changes.iter().any(|c| !c.is_widening())
        || out
            .modes
            .iter()
            .any(|m| m.before != "enforce" && m.after == "enforce");
    out
}

/// An entity as matched across the two policies.
#[derive(Clone, Debug)]
struct Slot {
    old: Option<Identity>,
    new: Option<Identity>,
    /// NEW's name, or OLD's for a removed entity.
    name: String,
}

/// An external remote: `host`, or a region of addresses.
struct Remote {
    old: Option<Identity>,
    new: Option<Identity>,
    name: String,
    /// Set when the addresses changed owner: (addresses, OLD owner's name).
    moved: Option<(Vec<String>, String)>,
}

struct Row {
    protocol: u8,
    lo: u16,
    change: Change,
}

fn protocol_rank(protocol: u8) -> usize {
    PROTOCOLS
        .iter()
        .position(|p| *p == protocol)
        .unwrap_or(PROTOCOLS.len())
}

/// The change rows between two effective maps of one (from, to, protocol).
#[expect(clippy::too_many_arguments, reason = "one row's coordinates")]
fn take_rows(
    ro: &Reach<'_>,
    rn: &Reach<'_>,
    old: &PortMap<Effective>,
    new: &PortMap<Effective>,
    protocol: u8,
    from: &str,
    to: &str,
    moved: Option<&(Vec<String>, String)>,
) -> Vec<Row> {
    if old == new {
        return Vec::new();
    }
    let max = port_max(protocol);
    let changed = combine(old, new, max, |o, n| {
        let o = o.copied().unwrap_or(Effective::DEFAULT_DENY);
        let n = n.copied().unwrap_or(Effective::DEFAULT_DENY);
        if o.allow == n.allow {
            return None;
        }
        // The deciding rule(s), named only for the merged segments: equal
        // rules coalesce.
        let decider = if n.allow || n.rules[0] != RULE_DEFAULT_DENY {
            (true, n)
        } else {
            (false, o)
        };
        Some((o.allow, n.allow, decider))
    });
    changed
        .segments()
        .iter()
        .map(|&(lo, hi, (before, after, (in_new, e)))| Row {
            protocol,
            lo,
            change: Change {
                from: from.to_owned(),
                to: to.to_owned(),
                protocol: protocol_name(protocol).to_owned(),
                ports: format_ports(lo, hi, max),
                before: verdict_name(before).to_owned(),
                after: verdict_name(after).to_owned(),
                rule: label(if in_new { rn.policy() } else { ro.policy() }, e),
                addresses: moved.map(|(a, _)| a.clone()),
                was: moved.map(|(_, w)| w.clone()),
            },
        })
        .collect()
}

fn verdict_name(allow: bool) -> &'static str {
    if allow { "allow" } else { "deny" }
}

/// `db allow-in[1]`, `web allow-out[0] + api allow-in[0]`, `default deny`.
fn label(policy: &CompiledPolicy, e: Effective) -> String {
    let one = |rule: u32| match rule {
        RULE_DEFAULT_DENY => "default deny".to_owned(),
        RULE_BUILTIN => "built-in".to_owned(),
        RULE_UNMANAGED => "unmanaged".to_owned(),
        i => policy
            .rules
            .get(i as usize)
            .map_or_else(|| format!("rule #{i}"), ToString::to_string),
    };
    if e.rules[1] == RULE_DEFAULT_DENY {
        one(e.rules[0])
    } else {
        format!("{} + {}", one(e.rules[0]), one(e.rules[1]))
    }
}

fn selector_text(s: &CgroupSelector) -> String {
    match s {
        CgroupSelector::Unit(u) => format!("unit={u}"),
        CgroupSelector::UserUnit { unit, user } => format!("unit={unit} user={user}"),
        CgroupSelector::Glob(g) => format!("cgroup={g}"),
        CgroupSelector::DelegatedGlob(g) => format!("cgroup={g} delegated"),
    }
}

/// Matches workloads by name, then removed/added pairs with the same
/// selector as renames; records entity and mode changes.
fn pair_workloads(old: &CompiledPolicy, new: &CompiledPolicy, out: &mut PolicyDiff) -> Vec<Slot> {
    let old_by_name: BTreeMap<&str, _> =
        old.workloads.iter().map(|w| (w.name.as_str(), w)).collect();
    let new_by_name: BTreeMap<&str, _> =
        new.workloads.iter().map(|w| (w.name.as_str(), w)).collect();
    let mut slots = Vec::new();
    let mut removed: Vec<_> = old_by_name
        .iter()
        .filter(|(n, _)| !new_by_name.contains_key(*n))
        .map(|(_, w)| *w)
        .collect();
    for (name, nw) in &new_by_name {
        let ow = match old_by_name.get(name) {
            Some(ow) => Some(*ow),
            None => {
                // A rename keeps the selector: the same processes.
                let same = removed.iter().position(|ow| ow.selector == nw.selector);
                same.map(|i| removed.remove(i))
            }
        };
        if let Some(ow) = ow {
            if ow.name != nw.name {
                out.entities.push(EntityChange {
                    kind: "workload".into(),
                    name: nw.name.clone(),
                    change: "renamed".into(),
                    detail: Some(format!("was {}", ow.name)),
                });
            } else if ow.selector != nw.selector {
                out.entities.push(EntityChange {
                    kind: "workload".into(),
                    name: nw.name.clone(),
                    change: "selector".into(),
                    detail: Some(format!(
                        "{} -> {}",
                        selector_text(&ow.selector),
                        selector_text(&nw.selector)
                    )),
                });
            }
            if ow.mode != nw.mode {
                out.modes.push(ModeChange {
                    workload: nw.name.clone(),
                    before: ow.mode_name().into(),
                    after: nw.mode_name().into(),
                });
            }
        } else {
            out.entities.push(EntityChange {
                kind: "workload".into(),
                name: nw.name.clone(),
                change: "added".into(),
                detail: Some(selector_text(&nw.selector)),
            });
        }
        slots.push(Slot {
            old: ow.map(|w| w.identity),
            new: Some(nw.identity),
            name: nw.name.clone(),
        });
    }
    for ow in removed {
        out.entities.push(EntityChange {
            kind: "workload".into(),
            name: ow.name.clone(),
            change: "removed".into(),
            detail: Some(selector_text(&ow.selector)),
        });
        slots.push(Slot {
            old: Some(ow.identity),
            new: None,
            name: ow.name.clone(),
        });
    }
    slots.sort_by(|a, b| a.name.cmp(&b.name));
    slots
}

/// `host`, and the address regions with their owners in OLD and NEW;
/// records peer changes.
fn external_slots(old: &CompiledPolicy, new: &CompiledPolicy, out: &mut PolicyDiff) -> Vec<Remote> {
    let names = |p: &CompiledPolicy| -> HashMap<Identity, String> {
        p.entities
            .iter()
            .map(|e| (e.identity, e.name.clone()))
            .collect()
    };
    let (old_names, new_names) = (names(old), names(new));
    compare_peers(old, new, out);

    let mut slots = vec![Remote {
        old: Some(IDENTITY_HOST),
        new: Some(IDENTITY_HOST),
        name: "host".into(),
        moved: None,
    }];
    let regions = regions(
        &old.prefixes_v4,
        &old.prefixes_v6,
        &new.prefixes_v4,
        &new.prefixes_v6,
    );
    for ((o, n), ranges) in regions {
        let old_name = old_names.get(&o).cloned().unwrap_or_else(|| "world".into());
        let new_name = new_names.get(&n).cloned().unwrap_or_else(|| "world".into());
        let moved = (old_name != new_name).then(|| {
            let cidrs = ranges.iter().flat_map(AddrRange::cidrs).collect();
            (cidrs, old_name)
        });
        slots.push(Remote {
            old: Some(o),
            new: Some(n),
            name: new_name,
            moved,
        });
    }
    slots
}

/// Peer additions, removals, renames (same addresses) and CIDR changes.
fn compare_peers(old: &CompiledPolicy, new: &CompiledPolicy, out: &mut PolicyDiff) {
    let old_peers = peer_cidrs(old);
    let new_peers = peer_cidrs(new);
    let mut added: Vec<&String> = new_peers
        .keys()
        .filter(|n| !old_peers.contains_key(*n))
        .collect();
    let mut removed: Vec<&String> = old_peers
        .keys()
        .filter(|n| !new_peers.contains_key(*n))
        .collect();
    // Renames: a removed and an added peer with exactly the same addresses.
    let mut renames = Vec::new();
    added.retain(
        |a| match removed.iter().position(|r| old_peers[*r] == new_peers[*a]) {
            Some(i) => {
                renames.push(((*a).clone(), removed.remove(i).clone()));
                false
            }
            None => true,
        },
    );
    for name in added {
        out.entities.push(EntityChange {
            kind: "peer".into(),
            name: name.clone(),
            change: "added".into(),
            detail: Some(join(&new_peers[name])),
        });
    }
    for name in removed {
        out.entities.push(EntityChange {
            kind: "peer".into(),
            name: name.clone(),
            change: "removed".into(),
            detail: Some(join(&old_peers[name])),
        });
    }
    for (name, was) in renames {
        out.entities.push(EntityChange {
            kind: "peer".into(),
            name,
            change: "renamed".into(),
            detail: Some(format!("was {was}")),
        });
    }
    for (name, cidrs) in &new_peers {
        if let Some(before) = old_peers.get(name)
            && before != cidrs
        {
            let plus = cidrs.difference(before).map(|c| format!("+{c}"));
            let minus = before.difference(cidrs).map(|c| format!("-{c}"));
            out.entities.push(EntityChange {
                kind: "peer".into(),
                name: name.clone(),
                change: "cidrs".into(),
                detail: Some(plus.chain(minus).collect::<Vec<_>>().join(" ")),
            });
        }
    }
    out.entities
        .sort_by(|a, b| (&a.kind, &a.name, &a.change).cmp(&(&b.kind, &b.name, &b.change)));
}

fn join(set: &BTreeSet<String>) -> String {
    set.iter().cloned().collect::<Vec<_>>().join(" ")
}

/// Each peer's prefixes, spelled as CIDRs.
fn peer_cidrs(p: &CompiledPolicy) -> BTreeMap<String, BTreeSet<String>> {
    let names: HashMap<Identity, &str> = p
        .entities
        .iter()
        .filter(|e| e.kind == EntityKind::Peer)
        .map(|e| (e.identity, e.name.as_str()))
        .collect();
    let mut out: BTreeMap<String, BTreeSet<String>> = names
        .values()
        .map(|n| ((*n).to_owned(), BTreeSet::new()))
        .collect();
    let v4 = p.prefixes_v4.iter().map(|(k, id)| {
        (
            *id,
            format!("{}/{}", std::net::Ipv4Addr::from(k.addr), k.prefix_len),
        )
    });
    let v6 = p.prefixes_v6.iter().map(|(k, id)| {
        (
            *id,
            format!("{}/{}", std::net::Ipv6Addr::from(k.addr), k.prefix_len),
        )
    });
    for (id, cidr) in v4.chain(v6) {
        if let Some(name) = names.get(&id) {
            out.entry((*name).to_owned()).or_default().insert(cidr);
        }
    }
    out
}

fn compare_expectations(old: &DiffInput, new: &DiffInput, out: &mut PolicyDiff) {
    let index = |d: &DiffInput| -> BTreeMap<(String, String, String), BTreeSet<String>> {
        let mut m: BTreeMap<_, BTreeSet<String>> = BTreeMap::new();
        for e in &d.meta.expectations {
            m.entry((e.from.clone(), e.to.clone(), e.port.clone()))
                .or_default()
                .insert(e.verdict.clone());
        }
        m
    };
    let (o, n) = (index(old), index(new));
    let keys: BTreeSet<_> = o.keys().chain(n.keys()).cloned().collect();
    for key in keys {
        let before = o.get(&key).map(join);
        let after = n.get(&key).map(join);
        if before != after {
            let (from, to, port) = key;
            out.expectations.push(ExpectationChange {
                from,
                to,
                port,
                before,
                after,
            });
        }
    }
}

fn compare_untils(old: &DiffInput, new: &DiffInput, out: &mut PolicyDiff) {
    let old_rules: BTreeMap<&str, &Option<String>> = old
        .meta
        .rules
        .iter()
        .map(|r| (r.key.as_str(), &r.until))
        .collect();
    for r in &new.meta.rules {
        if let Some(before) = old_rules.get(r.key.as_str())
            && **before != r.until
        {
            out.untils.push(UntilChange {
                rule: r.rule.clone(),
                before: (*before).clone(),
                after: r.until.clone(),
            });
        }
    }
    out.untils.sort_by(|a, b| a.rule.cmp(&b.rule));
}
