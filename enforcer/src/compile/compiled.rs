//! The output of the compiler: exactly the entries the kernel maps hold,
//! plus the names userspace needs to explain them. Deterministic: the same
//! policy gives the same (sorted) vectors whatever the file or rule order.

use std::time::SystemTime;

use enforcer_common::{
    address::{AddrKey4, AddrKey6},
    identity::{IDENTITY_HOST, IDENTITY_WORLD, Identity},
    verdict::{VerdictKey, VerdictValue},
};
use ipnet::{Ipv4Net, Ipv6Net};

/// A compiled policy set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledPolicy {
    /// Every entity with an identity, sorted by identity. Always contains
    /// `world` (IDENTITY_WORLD) and `host` (IDENTITY_HOST).
    pub entities: Vec<EntityInfo>,
    /// The workloads, sorted by identity.
    pub workloads: Vec<CompiledWorkload>,
    /// Remote IPv4 prefixes to peer identities, sorted by key.
    pub prefixes_v4: Vec<(AddrKey4, Identity)>,
    /// Remote IPv6 prefixes to peer identities, sorted by key.
    pub prefixes_v6: Vec<(AddrKey6, Identity)>,
    /// Verdict trie entries, sorted by key, keyed by workload class (see
    /// [`CompiledWorkload::class`]): only a class's representative has
    /// entries. See `docs/dataplane.md` for the lookup order and how
    /// wildcard levels are folded in.
    pub verdicts: Vec<(VerdictKey, VerdictValue)>,
    /// The rule table: `VerdictValue::rule` indexes it.
    pub rules: Vec<RuleRef>,
    /// The earliest future `until` among the rules: the policy must be
    /// compiled again at that instant.
    pub next_expiry: Option<SystemTime>,
    /// A content hash (FNV-1a 64 over the sorted entries and names), to
    /// show which policy is in force and to detect no-op reloads.
    pub content_hash: u64,
}

/// What kind of entity an identity names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EntityKind {
    Workload,
    Peer,
    World,
    Host,
}

/// One entity with its identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntityInfo {
    pub identity: Identity,
    pub kind: EntityKind,
    /// `world`, `host`, or the workload or peer name.
    pub name: String,
}

impl EntityInfo {
    pub fn new(identity: Identity, kind: EntityKind, name: impl Into<String>) -> Self {
        EntityInfo {
            identity,
            kind,
            name: name.into(),
        }
    }

    /// `world` and `host`, in identity order: the entities every compiled
    /// policy starts with.
    pub fn builtins() -> Vec<EntityInfo> {
        vec![
            EntityInfo::new(IDENTITY_WORLD, EntityKind::World, "world"),
            EntityInfo::new(IDENTITY_HOST, EntityKind::Host, "host"),
        ]
    }
}

/// The prefix map key of an IPv4 prefix: its network address (host bits
/// cleared, as the LPM trie and the evaluator's exact lookups expect).
pub fn prefix_key4(net: Ipv4Net) -> AddrKey4 {
    AddrKey4 {
        prefix_len: u32::from(net.prefix_len()),
        addr: net.network().octets(),
    }
}

/// The prefix map key of an IPv6 prefix (see [`prefix_key4`]).
pub fn prefix_key6(net: Ipv6Net) -> AddrKey6 {
    AddrKey6 {
        prefix_len: u32::from(net.prefix_len()),
        addr: net.network().octets(),
    }
}

/// How a workload finds its cgroups (see `cgroups::automaton` for how
/// they match).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CgroupSelector {
    /// `unit = "X"`: the system service manager's unit X, a cgroup whose
    /// path from the cgroup root is a chain of `.slice` directories ending
    /// in X.
    Unit(String),
    /// `unit = "X"` with `user = ...`: unit X of that user's service
    /// manager (`user.slice/user-UID.slice/user@UID.service/...`).
    UserUnit { unit: String, user: UnitUser },
    /// `cgroup = "PATTERN"`: glob over paths relative to the cgroup root,
    /// matching only cgroups that belong to root.
    Glob(String),
    /// `cgroup = "PATTERN"` with `delegated = true`: also cgroups in a
    /// subtree delegated to another user.
    DelegatedGlob(String),
}

/// The user of `user = ...`: a name, resolved on the host that enforces,
/// or a uid.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum UnitUser {
    Name(String),
    Uid(u32),
}

impl std::fmt::Display for CgroupSelector {
    /// As the policy writes it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CgroupSelector::Unit(unit) => write!(f, "unit = {unit:?}"),
            CgroupSelector::UserUnit {
                unit,
                user: UnitUser::Name(name),
            } => write!(f, "unit = {unit:?}, user = {name:?}"),
            CgroupSelector::UserUnit {
                unit,
                user: UnitUser::Uid(uid),
            } => write!(f, "unit = {unit:?}, user = {uid}"),
            CgroupSelector::Glob(pattern) => write!(f, "cgroup = {pattern:?}"),
            CgroupSelector::DelegatedGlob(pattern) => {
                write!(f, "cgroup = {pattern:?}, delegated = true")
            }
        }
    }
}

/// A workload, ready for the data plane to resolve into cgroup ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledWorkload {
    pub identity: Identity,
    /// The identity the workload's verdict entries are stored under: the
    /// lowest identity among the workloads with identical verdict rows
    /// (`identity` itself when its rows are its own). The data plane
    /// passes it to the kernel in the workload's cgroup entries.
    pub class: Identity,
    pub name: String,
    pub selector: CgroupSelector,
    /// A data plane `enforcer_common::workload::Mode` byte.
    pub mode: u8,
}

impl CompiledWorkload {
    /// `enforce`, `audit` or `off` (`unknown` for a number no policy gives).
    pub fn mode_name(&self) -> &'static str {
        crate::policy::Mode::from_number(self.mode).map_or("unknown", crate::policy::Mode::as_str)
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

/// The four rule lists of a policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Section {
    AllowIn,
    AllowOut,
    DenyIn,
    DenyOut,
}

impl Section {
    pub fn as_str(self) -> &'static str {
        match self {
            Section::AllowIn => "allow-in",
            Section::AllowOut => "allow-out",
            Section::DenyIn => "deny-in",
            Section::DenyOut => "deny-out",
        }
    }
}

impl std::fmt::Display for RuleRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}[{}]",
            self.policy,
            self.section.as_str(),
            self.index
        )
    }
}
