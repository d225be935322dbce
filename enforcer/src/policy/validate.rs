//! Checks that need the whole policy set: unique names, unique cgroup
//! selectors and CIDRs, selectors that match nothing, expectations naming
//! real entities, workloads that no policy selects.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

use super::cgroup_selector::CgroupSelector;
use super::diag::{Diagnostic, Loc};
use super::model::{Endpoint, Expectation, LabelIndex, Located, PolicySet, Selector};
use super::parse::RawExpectation;
use super::suggest::closest;
use super::types::{LabelKey, LabelValue, Name};

pub(crate) fn validate(set: &mut PolicySet, raw: Vec<RawExpectation>, diags: &mut Vec<Diagnostic>) {
    unique_names(set, diags);
    unique_selectors(set, diags);
    unique_cidrs(set, diags);
    selectors_match(set, diags);
    unselected_workloads(set, diags);
    set.expectations = raw
        .into_iter()
        .filter_map(|e| resolve_expectation(set, e, diags))
        .collect();
}

/// Names are unique per kind across files, and a workload and a peer never
/// share a name (expectations and `explain` name entities bare). Later
/// duplicates are reported and dropped.
fn unique_names(set: &mut PolicySet, diags: &mut Vec<Diagnostic>) {
    let mut entities: HashMap<Name, (&'static str, Loc)> = HashMap::new();
    set.workloads.retain(|w| match entities.get(&w.name) {
        Some((kind, loc)) => {
            diags.push(Diagnostic::error(
                &w.loc,
                format!(
                    "duplicate name: {kind} `{}` is already declared at {loc}",
                    w.name
                ),
            ));
            false
        }
        None => {
            entities.insert(w.name.clone(), ("workload", w.loc.clone()));
            true
        }
    });
    set.peers.retain(|p| match entities.get(&p.name) {
        Some((kind, loc)) => {
            diags.push(Diagnostic::error(
                &p.loc,
                format!(
                    "duplicate name: {kind} `{}` is already declared at {loc}",
                    p.name
                ),
            ));
            false
        }
        None => {
            entities.insert(p.name.clone(), ("peer", p.loc.clone()));
            true
        }
    });
    let mut policies: HashMap<Name, Loc> = HashMap::new();
    set.policies.retain(|p| match policies.get(&p.name) {
        Some(loc) => {
            diags.push(Diagnostic::error(
                &p.loc,
                format!("duplicate policy name `{}`: already used at {loc}", p.name),
            ));
            false
        }
        None => {
            policies.insert(p.name.clone(), p.loc.clone());
            true
        }
    });
}

fn unique_selectors(set: &PolicySet, diags: &mut Vec<Diagnostic>) {
    let mut seen = HashMap::new();
    for w in &set.workloads {
        // One pattern is one set of cgroups, delegated or not.
        let key = match &w.selector {
            CgroupSelector::DelegatedGlob(g) => CgroupSelector::Glob(g.clone()),
            other => other.clone(),
        };
        let empty = match &key {
            CgroupSelector::Unit(u) | CgroupSelector::UserUnit { unit: u, .. } => u.is_empty(),
            CgroupSelector::Glob(g) | CgroupSelector::DelegatedGlob(g) => g.is_empty(),
        };
        if empty {
            continue; // already reported as invalid
        }
        if let Some((name, loc)) = seen.get(&key) {
            diags.push(Diagnostic::error(
                &w.loc,
                format!("workload `{}` has the same cgroup selector as workload `{name}` ({loc}): a cgroup belongs to one workload", w.name),
            ));
        } else {
            seen.insert(key, (w.name.clone(), w.loc.clone()));
        }
    }
}

fn unique_cidrs(set: &PolicySet, diags: &mut Vec<Diagnostic>) {
    let mut seen = HashMap::new();
    for p in &set.peers {
        for (net, loc) in &p.cidrs {
            if let Some((name, first)) = seen.get(net) {
                diags.push(Diagnostic::error(
                    loc,
                    format!("CIDR {net} is already listed by peer `{name}` ({first}): an address range belongs to one peer"),
                ));
            } else {
                seen.insert(*net, (p.name.clone(), loc.clone()));
            }
        }
    }
}

/// Every selector must match an entity, unless its rule (or policy, for
/// `select`) says `optional = true`: a typo must never silently open or
/// close access.
fn selectors_match(set: &PolicySet, diags: &mut Vec<Diagnostic>) {
    let workload_set: HashSet<&Name> = set.workloads.iter().map(|w| &w.name).collect();
    let peer_set: HashSet<&Name> = set.peers.iter().map(|p| &p.name).collect();
    let workload_names: Vec<&str> = set.workloads.iter().map(|w| w.name.as_str()).collect();
    let peer_names: Vec<&str> = set.peers.iter().map(|p| p.name.as_str()).collect();
    let workload_index = LabelIndex::new(set.workloads.iter().map(|w| &w.labels));
    let peer_index = LabelIndex::new(set.peers.iter().map(|p| &p.labels));
    let labels_match_any = |t: &BTreeMap<_, _>, peers: bool| {
        !workload_index.matches(t).is_empty() || (peers && !peer_index.matches(t).is_empty())
    };
    let check = |sel: &Located<Selector>, peers: bool, diags: &mut Vec<Diagnostic>| {
        let problem = match &sel.value {
            Selector::Labels(t) if !labels_match_any(t, peers) => Some(format!(
                "selector {} matches no {}: fix the labels, or mark the rule `optional = true`",
                describe_labels(t),
                if peers {
                    "workload or peer"
                } else {
                    "workload"
                }
            )),
            Selector::Workload(n) if !workload_set.contains(n) => {
                Some(unknown("workload", n, &workload_names))
            }
            Selector::Peer(n) if !peer_set.contains(n) => Some(unknown("peer", n, &peer_names)),
            _ => None,
        };
        if let Some(message) = problem {
            diags.push(Diagnostic::error(&sel.loc, message));
        }
    };
    for policy in &set.policies {
        if !policy.optional {
            for sel in &policy.select {
                check(sel, false, diags);
            }
        }
        for rule in &policy.rules {
            if !rule.optional {
                for sel in &rule.remotes {
                    check(sel, true, diags);
                }
            }
        }
    }
}

fn unknown(kind: &str, name: &Name, names: &[&str]) -> String {
    match closest(name.as_str(), names) {
        Some(c) => format!("no {kind} is named `{name}`: did you mean `{c}`?"),
        None => format!("no {kind} is named `{name}`: declare `[{kind}.{name}]` or fix the name"),
    }
}

fn describe_labels(t: &BTreeMap<LabelKey, Vec<LabelValue>>) -> String {
    let parts: Vec<String> = t
        .iter()
        .map(|(k, vs)| match vs.as_slice() {
            [v] => format!("{k} = \"{v}\""),
            _ => {
                let vs: Vec<String> = vs.iter().map(|v| format!("\"{v}\"")).collect();
                format!("{k} = [{}]", vs.join(", "))
            }
        })
        .collect();
    format!("{{ {} }}", parts.join(", "))
}

fn unselected_workloads(set: &PolicySet, diags: &mut Vec<Diagnostic>) {
    let index = LabelIndex::new(set.workloads.iter().map(|w| &w.labels));
    let mut selected = vec![false; set.workloads.len()];
    for s in set.policies.iter().flat_map(|p| &p.select) {
        match &s.value {
            Selector::Labels(t) => {
                for i in index.matches(t) {
                    selected[i] = true;
                }
            }
            Selector::Workload(n) => {
                if let Some(i) = set.workloads.iter().position(|w| &w.name == n) {
                    selected[i] = true;
                }
            }
            _ => {}
        }
    }
    for (w, selected) in set.workloads.iter().zip(selected) {
        if !selected {
            diags.push(Diagnostic::warning(
                &w.loc,
                format!("no policy selects workload `{}`: it may not send or receive anything (default deny)", w.name),
            ));
        }
    }
}

/// Resolves an entity name or IP address of an expectation or `explain`.
pub fn resolve_endpoint(set: &PolicySet, s: &str) -> Result<Endpoint, String> {
    match s {
        "world" => return Ok(Endpoint::World),
        "host" => return Ok(Endpoint::Host),
        "any" => return Err(
            "`any` is not one entity: name a workload, a peer, `world`, `host` or an IP address"
                .into(),
        ),
        _ => {}
    }
    if let Ok(addr) = s.parse::<IpAddr>() {
        return Ok(Endpoint::Addr(addr));
    }
    let (kind, name) = match s.split_once(':') {
        Some(("workload", n)) => (Some("workload"), n),
        Some(("peer", n)) => (Some("peer"), n),
        _ => (None, s),
    };
    let workload = set.workloads.iter().find(|w| w.name.as_str() == name);
    if let Some(w) = workload.filter(|_| kind != Some("peer")) {
        return Ok(Endpoint::Workload(w.name.clone()));
    }
    let peer = set.peers.iter().find(|p| p.name.as_str() == name);
    if let Some(p) = peer.filter(|_| kind != Some("workload")) {
        return Ok(Endpoint::Peer(p.name.clone()));
    }
    let mut names: Vec<&str> = vec!["world", "host"];
    names.extend(set.workloads.iter().map(|w| w.name.as_str()));
    names.extend(set.peers.iter().map(|p| p.name.as_str()));
    let hint = match closest(name, &names) {
        Some(c) => format!("did you mean `{c}`?"),
        None => "name a workload, a peer, `world`, `host` or an IP address".to_string(),
    };
    Err(format!("unknown entity `{s}`: {hint}"))
}

fn resolve_expectation(
    set: &PolicySet,
    raw: RawExpectation,
    diags: &mut Vec<Diagnostic>,
) -> Option<Expectation> {
    let mut resolve = |end: &Option<Located<String>>| -> Option<Located<Endpoint>> {
        let end = end.as_ref()?;
        match resolve_endpoint(set, &end.value) {
            Ok(e) => Some(Located {
                value: e,
                loc: end.loc.clone(),
            }),
            Err(message) => {
                diags.push(Diagnostic::error(&end.loc, message));
                None
            }
        }
    };
    let from = resolve(&raw.from);
    let to = resolve(&raw.to);
    let (from, to) = (from?, to?);
    if !matches!(from.value, Endpoint::Workload(_)) && !matches!(to.value, Endpoint::Workload(_)) {
        diags.push(Diagnostic::error(
            &raw.loc,
            format!(
                "expectation from `{}` to `{}` has no workload at either end: the policy only governs workloads' traffic",
                raw.from.as_ref().map_or("", |l| l.value.as_str()),
                raw.to.as_ref().map_or("", |l| l.value.as_str())
            ),
        ));
        return None;
    }
    Some(Expectation {
        loc: raw.loc,
        from,
        to,
        port: raw.port?,
        verdict: raw.verdict?,
    })
}
