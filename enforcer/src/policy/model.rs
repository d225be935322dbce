//! The typed model of a policy set: what the parser produces and the
//! compiler consumes. Every item keeps the place it was written, for
//! diagnostics and `explain`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::time::SystemTime;

use enforcer_common::verdict::Direction;
use ipnet::IpNet;

use super::cgroup_selector::CgroupSelector;
use super::diag::Loc;
use super::types::{LabelKey, LabelValue, Mode, Name, PortSpec, ServicePort, Verdict};

/// An entity's labels.
pub type Labels = BTreeMap<LabelKey, LabelValue>;

/// Every file of a policy directory, merged.
#[derive(Clone, Debug, Default)]
pub struct PolicySet {
    pub workloads: Vec<Workload>,
    pub peers: Vec<Peer>,
    pub policies: Vec<Policy>,
    pub expectations: Vec<Expectation>,
}

/// `[workload.NAME]`.
#[derive(Clone, Debug)]
pub struct Workload {
    pub name: Name,
    pub loc: Loc,
    pub selector: CgroupSelector,
    pub labels: Labels,
    pub mode: Mode,
}

/// `[peer.NAME]`.
#[derive(Clone, Debug)]
pub struct Peer {
    pub name: Name,
    pub loc: Loc,
    /// Normalised prefixes (host addresses become /32 or /128).
    pub cidrs: Vec<(IpNet, Loc)>,
    pub labels: Labels,
}

/// `[[policy]]`.
#[derive(Clone, Debug)]
pub struct Policy {
    pub name: Name,
    pub loc: Loc,
    /// The governed workloads: a workload is selected when any of these
    /// matches it.
    pub select: Vec<Located<Selector>>,
    /// Every rule of the four sections.
    pub rules: Vec<Rule>,
    /// `optional = true`: a `select` matching no workload is not an error.
    pub optional: bool,
}

/// A value with the place it was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Located<T> {
    pub value: T,
    pub loc: Loc,
}

/// One rule of a policy section.
#[derive(Clone, Debug)]
pub struct Rule {
    pub section: Section,
    /// 0-based position in the policy's list for this section.
    pub index: usize,
    pub loc: Loc,
    /// `from` (inbound sections) or `to` (outbound sections).
    pub remotes: Vec<Located<Selector>>,
    /// `None`: `ports` omitted, every protocol and port.
    pub ports: Option<Vec<PortSpec>>,
    pub until: Option<Located<SystemTime>>,
    /// `optional = true`: a selector matching nothing is not an error.
    pub optional: bool,
}

impl Rule {
    /// The port items this rule covers.
    pub fn port_specs(&self) -> Vec<PortSpec> {
        match &self.ports {
            Some(p) => p.clone(),
            None => PortSpec::everything().to_vec(),
        }
    }

    /// Whether the rule still matches at `now` (`until` is exclusive: the
    /// rule stops matching at that instant).
    pub fn active_at(&self, now: SystemTime) -> bool {
        self.until.as_ref().is_none_or(|u| now < u.value)
    }
}

/// The four rule lists of a policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Section {
    AllowIn,
    AllowOut,
    DenyIn,
    DenyOut,
}

impl Section {
    /// Every section, in the order they sort.
    pub const ALL: [Section; 4] = [
        Section::AllowIn,
        Section::AllowOut,
        Section::DenyIn,
        Section::DenyOut,
    ];

    /// The section's key in a policy: `allow-in`, `deny-out`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            Section::AllowIn => "allow-in",
            Section::AllowOut => "allow-out",
            Section::DenyIn => "deny-in",
            Section::DenyOut => "deny-out",
        }
    }

    /// The direction of the connections this section judges, as seen from
    /// the selected workload ([`Direction`] as its byte).
    pub fn direction(self) -> u8 {
        match self {
            Section::AllowIn | Section::DenyIn => Direction::Ingress as u8,
            Section::AllowOut | Section::DenyOut => Direction::Egress as u8,
        }
    }

    pub fn is_deny(self) -> bool {
        matches!(self, Section::DenyIn | Section::DenyOut)
    }
}

/// Where a rule comes from, for `explain`, flows and diffs:
/// `db allow-in[1]` is policy `db`, section `allow-in`, index 1 (0-based in
/// the policy's list for that section).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleRef {
    pub policy: String,
    pub section: Section,
    pub index: usize,
}

impl RuleRef {
    /// The reference of `rule`, one of `policy`'s rules.
    pub fn of(policy: &Policy, rule: &Rule) -> RuleRef {
        RuleRef {
            policy: policy.name.to_string(),
            section: rule.section,
            index: rule.index,
        }
    }
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}[{}]",
            self.policy,
            self.section.as_str(),
            self.index
        )
    }
}

/// A selector: picks entities.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Selector {
    /// A label table: every key must match one of its values. Matches
    /// workloads and peers.
    Labels(BTreeMap<LabelKey, Vec<LabelValue>>),
    /// `"world"`: every address outside this host, peers included.
    World,
    /// `"host"`: processes of this host in no workload.
    Host,
    /// `"any"`: everything.
    Any,
    /// `"workload:NAME"`.
    Workload(Name),
    /// `"peer:NAME"`.
    Peer(Name),
}

impl Selector {
    /// Whether a label table selector matches these labels.
    pub fn matches_labels(table: &BTreeMap<LabelKey, Vec<LabelValue>>, labels: &Labels) -> bool {
        table
            .iter()
            .all(|(k, vs)| labels.get(k).is_some_and(|v| vs.contains(v)))
    }
}

/// One end of an expectation (or of `enforcer explain`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Workload(Name),
    Peer(Name),
    /// The addresses no peer covers.
    World,
    Host,
    /// An address: the peer whose prefix covers it, or `world`.
    Addr(IpAddr),
}

/// `[[expect]]`.
#[derive(Clone, Debug)]
pub struct Expectation {
    pub loc: Loc,
    pub from: Located<Endpoint>,
    pub to: Located<Endpoint>,
    pub port: ServicePort,
    pub verdict: Verdict,
}

/// Entities' labels indexed by (key, value), so a label selector finds its
/// matches without scanning every entity.
pub struct LabelIndex<'a> {
    by_label: std::collections::HashMap<(&'a str, &'a str), Vec<usize>>,
    labels: Vec<&'a Labels>,
}

impl<'a> LabelIndex<'a> {
    /// Indexes the entities in the given order; matches are reported as
    /// positions in it.
    pub fn new(entities: impl IntoIterator<Item = &'a Labels>) -> Self {
        let mut by_label: std::collections::HashMap<(&str, &str), Vec<usize>> =
            std::collections::HashMap::new();
        let labels: Vec<&Labels> = entities.into_iter().collect();
        for (i, l) in labels.iter().enumerate() {
            for (k, v) in *l {
                by_label
                    .entry((k.as_str(), v.as_str()))
                    .or_default()
                    .push(i);
            }
        }
        LabelIndex { by_label, labels }
    }

    /// Positions of the entities a label table matches, ascending.
    pub fn matches(&self, table: &BTreeMap<LabelKey, Vec<LabelValue>>) -> Vec<usize> {
        let Some((k0, vs0)) = table.iter().next() else {
            return Vec::new();
        };
        let mut out: Vec<usize> = vs0
            .iter()
            .filter_map(|v| self.by_label.get(&(k0.as_str(), v.as_str())))
            .flatten()
            .copied()
            .collect();
        out.sort_unstable();
        out.dedup();
        if table.len() > 1 {
            out.retain(|&i| Selector::matches_labels(table, self.labels[i]));
        }
        out
    }
}
