//! The compiler: a validated [`PolicySet`] to the [`CompiledPolicy`] the
//! data plane writes into the kernel maps. See `docs/dataplane.md`
//! ("Verdict lookup") for the layout this produces.

mod classes;
mod compiled;
mod hash;
mod ports;

use std::collections::HashMap;
use std::path::Path;
use std::time::SystemTime;

use enforcer_common::{
    capacity::{MAX_CGROUPS, MAX_PREFIXES_V4, MAX_PREFIXES_V6, MAX_VERDICTS},
    identity::{
        IDENTITY_ANY, IDENTITY_ANY_EXTERNAL, IDENTITY_FIRST_ALLOCATED, IDENTITY_HOST,
        IDENTITY_WORLD, Identity,
    },
    verdict::{Action, VerdictKey, VerdictValue},
};
use ipnet::IpNet;

pub use compiled::{
    CompiledPolicy, CompiledWorkload, EntityInfo, EntityKind, prefix_key4, prefix_key6,
};

use crate::policy::{
    Diagnostic, Diagnostics, LabelIndex, LabelKey, LabelValue, Loc, PolicySet, RuleRef, Selector,
};
use ports::Contribution;

/// Which remote identities a rule's selectors cover.
#[derive(Default)]
struct Remotes {
    exact: Vec<Identity>,
    external: bool,
    any: bool,
}

/// Entities indexed for selector matching. Positions in the label index
/// are identities minus IDENTITY_FIRST_ALLOCATED: workloads, then peers.
struct Index<'a> {
    workload_ids: HashMap<&'a str, Identity>,
    peer_ids: HashMap<&'a str, Identity>,
    labels: LabelIndex<'a>,
    peers_from: Identity,
}

impl Index<'_> {
    /// Identities (workloads, and peers when `peers`) matching a label table.
    fn label_matches(
        &self,
        table: &std::collections::BTreeMap<LabelKey, Vec<LabelValue>>,
        peers: bool,
    ) -> impl Iterator<Item = Identity> + '_ {
        self.labels
            .matches(table)
            .into_iter()
            .map(|pos| IDENTITY_FIRST_ALLOCATED + pos as Identity)
            .filter(move |&id| peers || id < self.peers_from)
    }

    fn remotes(&self, selectors: &[crate::policy::Located<Selector>]) -> Remotes {
        let mut r = Remotes::default();
        for s in selectors {
            match &s.value {
                Selector::Labels(t) => r.exact.extend(self.label_matches(t, true)),
                Selector::World => r.external = true,
                Selector::Host => r.exact.push(IDENTITY_HOST),
                Selector::Any => r.any = true,
                Selector::Workload(n) => r.exact.extend(self.workload_ids.get(n.as_str()).copied()),
                Selector::Peer(n) => r.exact.extend(self.peer_ids.get(n.as_str()).copied()),
            }
        }
        r.exact.sort_unstable();
        r.exact.dedup();
        r
    }

    fn locals(&self, selectors: &[crate::policy::Located<Selector>]) -> Vec<Identity> {
        let mut ids = Vec::new();
        for s in selectors {
            match &s.value {
                Selector::Labels(t) => ids.extend(self.label_matches(t, false)),
                Selector::Workload(n) => ids.extend(self.workload_ids.get(n.as_str()).copied()),
                _ => {}
            }
        }
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

/// The kernel maps' capacities that a compiled policy must fit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub workloads: u32,
    pub prefixes_v4: u32,
    pub prefixes_v6: u32,
    pub verdicts: u32,
}

impl Default for Limits {
    /// The capacities of the maps declared in `enforcer-common`.
    fn default() -> Self {
        Limits {
            workloads: MAX_CGROUPS,
            prefixes_v4: MAX_PREFIXES_V4,
            prefixes_v6: MAX_PREFIXES_V6,
            verdicts: MAX_VERDICTS,
        }
    }
}

/// Compiles a validated policy set as it stands at `now`: rules whose
/// `until` has passed are left out. Errors only when the result would not
/// fit the kernel maps.
pub fn compile(set: &PolicySet, now: SystemTime) -> Result<CompiledPolicy, Diagnostics> {
    compile_with_limits(set, now, &Limits::default())
}

/// [`compile`] against explicit map capacities.
pub fn compile_with_limits(
    set: &PolicySet,
    now: SystemTime,
    limits: &Limits,
) -> Result<CompiledPolicy, Diagnostics> {
    // Identities: workloads by name, then peers by name.
    let mut workloads: Vec<&crate::policy::Workload> = set.workloads.iter().collect();
    workloads.sort_by(|a, b| a.name.cmp(&b.name));
    let mut peers: Vec<&crate::policy::Peer> = set.peers.iter().collect();
    peers.sort_by(|a, b| a.name.cmp(&b.name));

    let mut entities = EntityInfo::builtins();
    let mut index = Index {
        workload_ids: HashMap::new(),
        peer_ids: HashMap::new(),
        labels: LabelIndex::new(
            workloads
                .iter()
                .map(|w| &w.labels)
                .chain(peers.iter().map(|p| &p.labels)),
        ),
        peers_from: IDENTITY_FIRST_ALLOCATED + workloads.len() as Identity,
    };
    let mut compiled_workloads = Vec::with_capacity(workloads.len());
    let mut next = IDENTITY_FIRST_ALLOCATED;
    for w in &workloads {
        let id = next;
        next += 1;
        entities.push(EntityInfo::new(
            id,
            EntityKind::Workload,
            w.name.to_string(),
        ));
        compiled_workloads.push(CompiledWorkload {
            identity: id,
            // Set by `classes::assign` once the rows are known.
            class: id,
            name: w.name.to_string(),
            selector: w.selector.clone(),
            mode: w.mode.number(),
        });
        index.workload_ids.insert(w.name.as_str(), id);
    }
    let mut prefixes_v4 = Vec::new();
    let mut prefixes_v6 = Vec::new();
    for p in &peers {
        let id = next;
        next += 1;
        entities.push(EntityInfo::new(id, EntityKind::Peer, p.name.to_string()));
        index.peer_ids.insert(p.name.as_str(), id);
        for (net, _) in &p.cidrs {
            match net {
                IpNet::V4(n) => prefixes_v4.push((prefix_key4(*n), id)),
                IpNet::V6(n) => prefixes_v6.push((prefix_key6(*n), id)),
            }
        }
    }
    prefixes_v4.sort_unstable();
    prefixes_v6.sort_unstable();

    // The rule table: active rules sorted by RuleRef, so a rule's index
    // order is its RuleRef order and "smallest index" is "smallest RuleRef".
    let mut active: Vec<(RuleRef, &crate::policy::Policy, &crate::policy::Rule)> = Vec::new();
    let mut next_expiry: Option<SystemTime> = None;
    for policy in &set.policies {
        for rule in &policy.rules {
            if !rule.active_at(now) {
                continue;
            }
            if let Some(u) = &rule.until {
                next_expiry = Some(next_expiry.map_or(u.value, |e| e.min(u.value)));
            }
            active.push((RuleRef::of(policy, rule), policy, rule));
        }
    }
    active.sort_by(|a, b| a.0.cmp(&b.0));

    type Level = (Identity, u8, u8, Identity);
    // Contributions per (workload, direction, protocol, remote level), in
    // one vector sorted by level: a group's wildcard levels (ANY_EXTERNAL,
    // ANY) sort last within its (workload, direction, protocol).
    let mut contributions: Vec<(Level, Contribution)> = Vec::new();
    let mut locals_cache: HashMap<&str, Vec<Identity>> = HashMap::new();
    for (rule_index, (_, policy, rule)) in active.iter().enumerate() {
        let locals = locals_cache
            .entry(policy.name.as_str())
            .or_insert_with(|| index.locals(&policy.select));
        if locals.is_empty() {
            continue;
        }
        let remotes = index.remotes(&rule.remotes);
        let mut targets = remotes.exact;
        if remotes.external {
            targets.push(IDENTITY_ANY_EXTERNAL);
        }
        if remotes.any {
            targets.push(IDENTITY_ANY);
        }
        let direction = rule.section.direction();
        let deny = rule.section.is_deny();
        for spec in rule.port_specs() {
            let (protocol, low, high) = spec.interval();
            let c = Contribution {
                low,
                high,
                deny,
                rule: rule_index as u32,
            };
            for &w in locals.iter() {
                for &r in &targets {
                    contributions.push(((w, direction, protocol, r), c));
                }
            }
        }
    }
    contributions.sort_unstable_by_key(|(level, _)| *level);

    // Fold the less specific levels into the more specific ones, then sweep.
    let is_external = |r: Identity| r == IDENTITY_WORLD || r >= index.peers_from;
    let mut verdicts: Vec<(VerdictKey, VerdictValue)> = Vec::new();
    let mut scratch: Vec<Contribution> = Vec::new();
    let mut own: Vec<Contribution> = Vec::new();
    let mut sweep = ports::Sweep::default();
    let mut decided_buf = Vec::new();
    let mut blocks: Vec<(u16, u8)> = Vec::new();
    let mut spans: Vec<(u16, u16)> = Vec::new();
    for group in contributions.chunk_by(|a, b| (a.0.0, a.0.1, a.0.2) == (b.0.0, b.0.1, b.0.2)) {
        let (w, d, p, _) = group[0].0;
        let level_of = |r: Identity| -> Vec<Contribution> {
            let start = group.partition_point(|(l, _)| l.3 < r);
            let end = group.partition_point(|(l, _)| l.3 <= r);
            group[start..end].iter().map(|(_, c)| *c).collect()
        };
        let any = level_of(IDENTITY_ANY);
        let external = level_of(IDENTITY_ANY_EXTERNAL);
        for level in group.chunk_by(|a, b| a.0.3 == b.0.3) {
            let r = level[0].0.3;
            own.clear();
            own.extend(level.iter().map(|(_, c)| *c));
            scratch.clear();
            scratch.extend_from_slice(&own);
            if r != IDENTITY_ANY {
                if r != IDENTITY_ANY_EXTERNAL && is_external(r) {
                    scratch.extend_from_slice(&external);
                }
                scratch.extend_from_slice(&any);
            }
            let folded = scratch.len() > own.len();
            ports::decide_into(&scratch, &mut sweep, &mut decided_buf);
            for decided in &decided_buf {
                // Only the ports this level's own rules cover get entries
                // here; the rest is found at the less specific levels.
                blocks.clear();
                if folded {
                    own_blocks(&own, decided.low, decided.high, &mut spans, &mut blocks);
                } else {
                    ports::aligned_blocks_into(decided.low, decided.high, &mut blocks);
                }
                for &(start, bits) in &blocks {
                    verdicts.push((
                        VerdictKey::new(w, d, p, r, start, bits),
                        VerdictValue {
                            rule: decided.rule,
                            action: if decided.deny {
                                Action::Deny as u8
                            } else {
                                Action::Allow as u8
                            },
                            _pad: [0; 3],
                        },
                    ));
                }
            }
        }
    }
    classes::assign(&mut compiled_workloads, &mut verdicts);

    let mut errors = Vec::new();
    let at = first_loc(set).unwrap_or_else(|| Loc::file(Path::new("<policy>")));
    let mut capacity = |what: &str, n: usize, max: u32| {
        if n > max as usize {
            errors.push(Diagnostic::error(
                &at,
                format!("the policy needs {n} {what}, more than the kernel map holds ({max}): simplify the policy"),
            ));
        }
    };
    capacity("workloads", compiled_workloads.len(), limits.workloads);
    capacity("IPv4 prefixes", prefixes_v4.len(), limits.prefixes_v4);
    capacity("IPv6 prefixes", prefixes_v6.len(), limits.prefixes_v6);
    capacity("verdict entries", verdicts.len(), limits.verdicts);
    if !errors.is_empty() {
        return Err(Diagnostics(errors));
    }

    let mut compiled = CompiledPolicy {
        entities,
        workloads: compiled_workloads,
        prefixes_v4,
        prefixes_v6,
        verdicts,
        rules: active.into_iter().map(|(r, _, _)| r).collect(),
        next_expiry,
        content_hash: 0,
    };
    // The daemon keeps the compiled policy while it is in force: no spare
    // capacity, which for vectors grown by doubling is up to as much again
    // (the rule table also reuses the larger allocation of `active`, and the
    // verdict table the room of the class members' rows).
    compiled.entities.shrink_to_fit();
    compiled.prefixes_v4.shrink_to_fit();
    compiled.prefixes_v6.shrink_to_fit();
    compiled.verdicts.shrink_to_fit();
    compiled.rules.shrink_to_fit();
    compiled.content_hash = hash::content_hash(&compiled);
    Ok(compiled)
}

/// Appends to `out` the aligned blocks of `[low, high]` restricted to the
/// ports that the level's own contributions cover (`spans` is scratch).
fn own_blocks(
    own: &[Contribution],
    low: u16,
    high: u16,
    spans: &mut Vec<(u16, u16)>,
    out: &mut Vec<(u16, u8)>,
) {
    // Intersect [low, high] with the union of the own intervals.
    spans.clear();
    spans.extend(
        own.iter()
            .filter(|c| c.low <= high && c.high >= low)
            .map(|c| (c.low.max(low), c.high.min(high))),
    );
    spans.sort_unstable();
    let mut merged: Option<(u16, u16)> = None;
    for &(l, h) in spans.iter() {
        match &mut merged {
            Some(last) if u32::from(l) <= u32::from(last.1) + 1 => last.1 = last.1.max(h),
            _ => {
                if let Some((ml, mh)) = merged {
                    ports::aligned_blocks_into(ml, mh, out);
                }
                merged = Some((l, h));
            }
        }
    }
    if let Some((ml, mh)) = merged {
        ports::aligned_blocks_into(ml, mh, out);
    }
}

fn first_loc(set: &PolicySet) -> Option<Loc> {
    set.policies
        .first()
        .map(|p| p.loc.clone())
        .or_else(|| set.workloads.first().map(|w| w.loc.clone()))
        .or_else(|| set.peers.first().map(|p| p.loc.clone()))
}

#[cfg(test)]
mod tests;
