//! Building [`CompiledPolicy`] values by hand, for tests and benchmarks of
//! the diff engine that must not depend on the TOML front end.
//!
//! The builder writes verdict entries the way the compiler's contract
//! describes them (`docs/dataplane.md`): port ranges as their minimal cover
//! of aligned blocks, wildcard levels as `IDENTITY_ANY_EXTERNAL` /
//! `IDENTITY_ANY` keys. It does not fold levels: tests that need folding
//! write the folded entries themselves.
//!
//! It panics on bad input, as test code may: it exists only in the crate's
//! own tests and with the `testkit` feature, which only the crate's
//! integration tests and benchmarks turn on.

use std::collections::HashMap;
use std::ops::RangeInclusive;

use enforcer_common::{
    address::{AddrKey4, AddrKey6},
    identity::{IDENTITY_FIRST_ALLOCATED, Identity},
    protocol::Protocol,
    verdict::{Action, Direction, VerdictKey, VerdictValue},
    workload::Mode,
};

use ipnet::IpNet;

use crate::compile::{
    CompiledPolicy, CompiledWorkload, EntityInfo, EntityKind, prefix_key4, prefix_key6,
};
use crate::policy::{CgroupSelector, RuleRef, Section, parse_cidr};

fn verdict_value(action: u8, rule: u32) -> VerdictValue {
    VerdictValue {
        rule,
        action,
        _pad: [0; 3],
    }
}

/// Assembles a [`CompiledPolicy`] entry by entry.
#[derive(Clone, Debug)]
pub struct PolicyBuilder {
    next_identity: Identity,
    entities: Vec<EntityInfo>,
    workloads: Vec<CompiledWorkload>,
    prefixes_v4: Vec<(AddrKey4, Identity)>,
    prefixes_v6: Vec<(AddrKey6, Identity)>,
    verdicts: Vec<(VerdictKey, VerdictValue)>,
    rules: Vec<RuleRef>,
    rule_index: HashMap<RuleRef, u32>,
}

impl Default for PolicyBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl PolicyBuilder {
    /// An empty policy: only `world` and `host`.
    pub fn new() -> Self {
        PolicyBuilder {
            next_identity: IDENTITY_FIRST_ALLOCATED,
            entities: EntityInfo::builtins(),
            workloads: Vec::new(),
            prefixes_v4: Vec::new(),
            prefixes_v6: Vec::new(),
            verdicts: Vec::new(),
            rules: Vec::new(),
            rule_index: HashMap::new(),
        }
    }

    /// Starts handing out identities at `first` (to show that the diff
    /// matches entities by name, not identity).
    pub fn identities_from(mut self, first: Identity) -> Self {
        self.next_identity = first;
        self
    }

    fn entity(&mut self, name: &str, kind: EntityKind) -> Identity {
        let identity = self.next_identity;
        self.next_identity += 1;
        self.entities.push(EntityInfo::new(identity, kind, name));
        identity
    }

    /// A workload in mode `enforce`, selected by `unit = "<name>.service"`.
    pub fn workload(&mut self, name: &str) -> Identity {
        self.workload_with(
            name,
            CgroupSelector::Unit(format!("{name}.service")),
            Mode::Enforce as u8,
        )
    }

    pub fn workload_with(&mut self, name: &str, selector: CgroupSelector, mode: u8) -> Identity {
        let identity = self.entity(name, EntityKind::Workload);
        self.workloads.push(CompiledWorkload {
            identity,
            class: identity,
            name: name.to_owned(),
            selector,
            mode,
        });
        identity
    }

    /// A peer with CIDRs such as `203.0.113.0/24` or `2001:db8::/32` (a
    /// bare address is a host prefix). Panics on malformed test input.
    pub fn peer(&mut self, name: &str, cidrs: &[&str]) -> Identity {
        let identity = self.entity(name, EntityKind::Peer);
        for cidr in cidrs {
            self.prefix(cidr, identity);
        }
        identity
    }

    fn prefix(&mut self, cidr: &str, identity: Identity) {
        match parse_cidr(cidr).unwrap_or_else(|e| panic!("bad prefix {cidr}: {e}")) {
            IpNet::V4(n) => self.prefixes_v4.push((prefix_key4(n), identity)),
            IpNet::V6(n) => self.prefixes_v6.push((prefix_key6(n), identity)),
        }
    }

    /// The index of rule `policy section[index]` in the rule table, added
    /// if new. `section` is spelled as in the language (`allow-in`, ...).
    pub fn rule(&mut self, policy: &str, section: &str, index: usize) -> u32 {
        let section = match section {
            "allow-in" => Section::AllowIn,
            "allow-out" => Section::AllowOut,
            "deny-in" => Section::DenyIn,
            "deny-out" => Section::DenyOut,
            other => panic!("unknown section {other}"),
        };
        let rule = RuleRef {
            policy: policy.to_owned(),
            section,
            index,
        };
        if let Some(i) = self.rule_index.get(&rule) {
            return *i;
        }
        let i = self.rules.len() as u32;
        self.rule_index.insert(rule.clone(), i);
        self.rules.push(rule);
        i
    }

    /// Rule `policy section[index]` and its verdict entries: `action` for
    /// `protocol` ports `ports` of `workload` in `direction` with `remote`.
    /// Returns the rule's index, as [`Self::rule`] does.
    pub fn grant(
        &mut self,
        (policy, section, index): (&str, &str, usize),
        (workload, direction, remote): (Identity, Direction, Identity),
        (protocol, ports, action): (Protocol, RangeInclusive<u16>, Action),
    ) -> u32 {
        let rule = self.rule(policy, section, index);
        self.ports(
            workload,
            direction as u8,
            protocol as u8,
            remote,
            *ports.start(),
            *ports.end(),
            action as u8,
            rule,
        );
        rule
    }

    /// Verdict entries for ports `lo..=hi` as their minimal aligned cover.
    #[expect(clippy::too_many_arguments, reason = "one verdict key's fields")]
    pub fn ports(
        &mut self,
        workload: Identity,
        direction: u8,
        protocol: u8,
        remote: Identity,
        lo: u16,
        hi: u16,
        action: u8,
        rule: u32,
    ) {
        for (port, bits) in aligned_cover(lo, hi) {
            let key = VerdictKey::new(workload, direction, protocol, remote, port, bits);
            self.entry(key, action, rule);
        }
    }

    /// One verdict entry, as is, replacing an entry of the same key.
    pub fn entry(&mut self, key: VerdictKey, action: u8, rule: u32) {
        let value = verdict_value(action, rule);
        match self.verdicts.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.verdicts.push((key, value)),
        }
    }

    /// Like [`Self::entry`] without checking for an existing key: for
    /// generating large policies whose keys are known to be unique.
    pub fn entry_unchecked(&mut self, key: VerdictKey, action: u8, rule: u32) {
        self.verdicts.push((key, verdict_value(action, rule)));
    }

    /// Makes `workload` a member of `class` (see `CompiledWorkload::class`):
    /// its own entries, if any, are left out of the built policy.
    pub fn set_class(&mut self, workload: Identity, class: Identity) {
        if let Some(w) = self.workloads.iter_mut().find(|w| w.identity == workload) {
            w.class = class;
        }
    }

    pub fn set_mode(&mut self, workload: Identity, mode: u8) {
        if let Some(w) = self.workloads.iter_mut().find(|w| w.identity == workload) {
            w.mode = mode;
        }
    }

    pub fn build(mut self) -> CompiledPolicy {
        self.entities.sort_by_key(|e| e.identity);
        self.workloads.sort_by_key(|w| w.identity);
        self.prefixes_v4.sort();
        self.prefixes_v6.sort();
        self.verdicts.sort();
        let members: Vec<Identity> = self
            .workloads
            .iter()
            .filter(|w| w.class != w.identity)
            .map(|w| w.identity)
            .collect();
        self.verdicts
            .retain(|(k, _)| !members.contains(&k.workload()));
        CompiledPolicy {
            entities: self.entities,
            workloads: self.workloads,
            prefixes_v4: self.prefixes_v4,
            prefixes_v6: self.prefixes_v6,
            verdicts: self.verdicts,
            rules: self.rules,
            next_expiry: None,
            content_hash: 0,
        }
    }
}

/// The minimal cover of `lo..=hi` by prefix-aligned blocks, as
/// `(first port, fixed bits)`.
pub fn aligned_cover(lo: u16, hi: u16) -> Vec<(u16, u8)> {
    let (mut lo, hi) = (u32::from(lo), u32::from(hi));
    let mut out = Vec::new();
    while lo <= hi {
        let mut size_log = lo.trailing_zeros().min(16);
        while lo + (1 << size_log) - 1 > hi {
            size_log -= 1;
        }
        out.push((lo as u16, (16 - size_log) as u8));
        lo += 1 << size_log;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cover_is_minimal_and_exact() {
        assert_eq!(aligned_cover(0, 65535), vec![(0, 0)]);
        assert_eq!(aligned_cover(443, 443), vec![(443, 16)]);
        assert_eq!(aligned_cover(1024, 2047), vec![(1024, 6)]);
        let cover = aligned_cover(1, 65534);
        assert_eq!(cover.len(), 30);
        let total: u32 = cover.iter().map(|(_, b)| 1u32 << (16 - b)).sum();
        assert_eq!(total, 65534);
    }
}
