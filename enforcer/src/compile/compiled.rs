//! The output of the compiler: exactly the entries the kernel maps hold,
//! plus the names userspace needs to explain them. Deterministic: the same
//! policy gives the same (sorted) vectors whatever the file or rule order.

use std::time::SystemTime;

use enforcer_common::{
    address::{AddrKey4, AddrKey6},
    identity::{IDENTITY_HOST, IDENTITY_WORLD, Identity},
    verdict::{RULE_BUILTIN, RULE_DEFAULT_DENY, RULE_UNMANAGED, VerdictKey, VerdictValue},
};
use ipnet::{Ipv4Net, Ipv6Net};

use crate::policy::{CgroupSelector, Mode, RuleRef};

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

impl CompiledPolicy {
    /// The entity with this identity.
    pub fn entity(&self, identity: Identity) -> Option<&EntityInfo> {
        self.entities
            .binary_search_by_key(&identity, |e| e.identity)
            .ok()
            .map(|i| &self.entities[i])
    }

    /// The workload with this identity.
    pub fn workload(&self, identity: Identity) -> Option<&CompiledWorkload> {
        self.workloads
            .binary_search_by_key(&identity, |w| w.identity)
            .ok()
            .map(|i| &self.workloads[i])
    }

    /// The verdict class of a local identity: the workload's class, or the
    /// identity itself when it is no workload of this policy.
    pub fn class_of(&self, identity: Identity) -> Identity {
        self.workload(identity).map_or(identity, |w| w.class)
    }

    /// The identity of the workload or peer with this name.
    pub fn identity_of(&self, name: &str) -> Option<Identity> {
        self.entities
            .iter()
            .find(|e| e.name == name)
            .map(|e| e.identity)
    }

    /// How a verdict's rule index reads: `db allow-in[1]`, `default deny`.
    pub fn rule_name(&self, rule: u32) -> String {
        match rule {
            RULE_DEFAULT_DENY => "default deny".into(),
            RULE_BUILTIN => "built-in exception".into(),
            RULE_UNMANAGED => "unmanaged setting".into(),
            i => self
                .rules
                .get(i as usize)
                .map_or_else(|| format!("rule #{i}"), ToString::to_string),
        }
    }
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
        Mode::from_number(self.mode).map_or("unknown", Mode::as_str)
    }
}
