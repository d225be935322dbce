//! The diff's inputs and its result, shaped for the JSON contract
//! (`{"widened","narrowed","changes":[{"from","to","protocol","ports",
//! "before","after","rule"}]}`, extra fields allowed).

use serde::Serialize;

use crate::compile::CompiledPolicy;

/// One side of a diff: the compiled policy plus what the compiled form does
/// not carry (expectations, rule expiry times).
#[derive(Clone, Debug)]
pub struct DiffInput {
    pub compiled: CompiledPolicy,
    pub meta: PolicyMeta,
}

impl DiffInput {
    /// A side with no expectations and no `until` information.
    pub fn from_compiled(compiled: CompiledPolicy) -> Self {
        DiffInput {
            compiled,
            meta: PolicyMeta::default(),
        }
    }
}

/// Source-level facts the diff reports besides verdicts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyMeta {
    pub expectations: Vec<ExpectationInfo>,
    /// Every rule, with its `until` if it has one.
    pub rules: Vec<RuleInfo>,
}

/// An `[[expect]]` table, with names as written.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ExpectationInfo {
    pub from: String,
    pub to: String,
    /// `PORT/PROTO` or `icmp`.
    pub port: String,
    /// `allow` or `deny`.
    pub verdict: String,
}

/// A rule, identified independently of its position so that reordering
/// rules never shows up as a change.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleInfo {
    /// Policy name, section and a canonical rendering of the rule's
    /// selectors and ports (everything but `until`).
    pub key: String,
    /// Where it is: `db allow-in[2]`.
    pub rule: String,
    /// The RFC 3339 `until`, if any.
    pub until: Option<String>,
}

/// The semantic difference between two policies.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PolicyDiff {
    /// Something is newly allowed (a change row to `allow`, or a workload
    /// leaving mode `enforce`).
    pub widened: bool,
    /// Something is newly denied (a change row to `deny`, or a workload
    /// entering mode `enforce`).
    pub narrowed: bool,
    pub changes: Vec<Change>,
    pub entities: Vec<EntityChange>,
    pub modes: Vec<ModeChange>,
    pub expectations: Vec<ExpectationChange>,
    pub untils: Vec<UntilChange>,
}

impl PolicyDiff {
    /// True when the two policies are equivalent in every reported respect.
    pub fn is_empty(&self) -> bool {
        let PolicyDiff {
            widened: _,
            narrowed: _,
            changes,
            entities,
            modes,
            expectations,
            untils,
        } = self;
        changes.is_empty()
            && entities.is_empty()
            && modes.is_empty()
            && expectations.is_empty()
            && untils.is_empty()
    }
}

/// A region of (from, to, protocol, ports) whose verdict changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Change {
    pub from: String,
    pub to: String,
    /// `tcp`, `udp` or `icmp`.
    pub protocol: String,
    /// `443`, `8000-8100` or `any`.
    pub ports: String,
    /// `allow` or `deny`.
    pub before: String,
    pub after: String,
    /// The rule that decides in NEW, or in OLD when NEW is default deny:
    /// `db allow-in[1]`, `web allow-out[0] + api allow-in[0]` (both ends of
    /// a workload pair), or `default deny`.
    pub rule: String,
    /// When the remote addresses concerned moved from one entity to
    /// another (a peer's CIDRs changed): those addresses...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addresses: Option<Vec<String>>,
    /// ...and the entity that owned them in OLD.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub was: Option<String>,
}

impl Change {
    pub fn is_widening(&self) -> bool {
        self.after == "allow"
    }
}

/// An entity added, removed, renamed or redefined.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EntityChange {
    /// `workload` or `peer`.
    pub kind: String,
    /// The entity's name (NEW's name for a rename).
    pub name: String,
    /// `added`, `removed`, `renamed`, `selector` (a workload's `unit` /
    /// `cgroup` changed) or `cidrs` (a peer's addresses changed).
    pub change: String,
    /// Human-readable detail: `was api-v1`, `unit=a.service -> unit=b.service`,
    /// `+203.0.113.0/25 -203.0.113.0/24`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// A workload's mode changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ModeChange {
    pub workload: String,
    /// `enforce`, `audit` or `off`.
    pub before: String,
    pub after: String,
}

/// An expectation added, removed, or whose verdict changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ExpectationChange {
    pub from: String,
    pub to: String,
    pub port: String,
    /// The expected verdict in OLD (absent when added).
    pub before: Option<String>,
    /// The expected verdict in NEW (absent when removed).
    pub after: Option<String>,
}

/// A rule present in both policies whose `until` changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UntilChange {
    /// Where the rule is in NEW.
    pub rule: String,
    pub before: Option<String>,
    pub after: Option<String>,
}
