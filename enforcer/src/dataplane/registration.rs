//! The userspace side of the cgroup tracer (`enforcer-ebpf/src/registration.rs`):
//! loading and attaching it, its settings, each slot's automaton tables and
//! each cgroup's automaton states. See `docs/dataplane.md`, "Cgroups from
//! their creation".

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU32, Ordering};

use aya::{
    Btf, Ebpf,
    maps::{Array, HashMap, MapData},
    programs::BtfTracePoint,
};
use enforcer_common::{
    cgroup_match::{
        CgroupMatch, ExactKey, GlobRule, MAX_COUNTED_WORKLOADS, MAX_MATCH_EXACT, MAX_MATCH_GLOBS,
        MAX_MATCH_STATES, MatchState, Registration, STATE_NONE, STATES_PER_CGROUP,
    },
    identity::Identity,
    map_names,
};

use super::{
    ResolvedCgroup,
    error::{DataplaneError, Result, ensure_capacity, read_err, write_err},
    handles,
    kernel_btf::KernelTypes,
    shared_array::SharedArray,
};
use crate::cgroups::{CgroupStates, automaton::KernelTables};

/// The tracer programs, by function name, with their section (what
/// reports call their links) and the tracepoint each one follows.
pub(crate) const TRACERS: [(&str, &str, &str); 2] = [
    (
        "enforcer_cgroup_mkdir",
        "tp_btf/cgroup_mkdir",
        "cgroup_mkdir",
    ),
    (
        "enforcer_cgroup_rmdir",
        "tp_btf/cgroup_rmdir",
        "cgroup_rmdir",
    ),
];

/// Limits of what the tracer registers, so that whoever can create cgroups
/// cannot fill the maps that other workloads need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegistrationLimits {
    /// Cgroups one workload may have in the kernel's cgroup map (its own
    /// and their descendants), per slot.
    pub max_cgroups_per_workload: u32,
    /// `CGROUP_MATCH` entries for delegated cgroups.
    pub max_delegated_matches: u32,
}

impl Default for RegistrationLimits {
    fn default() -> Self {
        RegistrationLimits {
            max_cgroups_per_workload: 8192,
            max_delegated_matches: 16_384,
        }
    }
}

/// Loads the tracer programs against the running kernel's BTF.
pub(crate) fn load_tracers(ebpf: &mut Ebpf) -> Result<()> {
    let btf = Btf::from_sys_fs().map_err(|e| DataplaneError::NoKernelBtf(e.to_string()))?;
    for (name, _, tracepoint) in TRACERS {
        let load_err = |source| DataplaneError::UnableToLoadProgram {
            program: name,
            source: Box::new(source),
        };
        let program: &mut BtfTracePoint = ebpf
            .program_mut(name)
            .ok_or(DataplaneError::MissingProgram(name))?
            .try_into()
            .map_err(load_err)?;
        program.load(tracepoint, &btf).map_err(load_err)?;
        // The verifier's work grows with the tracer's loops: worth seeing.
        let verified = program
            .info()
            .ok()
            .and_then(|info| info.verified_instruction_count());
        tracing::debug!(program = name, ?verified, "cgroup tracer loaded");
    }
    Ok(())
}

/// Writes the tracer's settings: the kernel offsets of this boot, the
/// limits, and the name hash key, kept from an earlier process (its
/// tables are hashed with it) or drawn fresh. Returns the key.
pub(crate) fn configure(ebpf: &mut Ebpf, limits: RegistrationLimits) -> Result<[u64; 2]> {
    let offsets = KernelTypes::from_sys_fs()
        .and_then(|types| types.cgroup_tracer_offsets())
        .map_err(|e| DataplaneError::NoKernelBtf(e.to_string()))?;
    let name = map_names::REGISTRATION;
    let mut m: Array<&mut MapData, Registration> = handles::typed_mut(ebpf, name)?;
    let current = m.get(&0, 0).map_err(read_err(name))?;
    let name_key = if current.enabled != 0 && current.name_key != [0, 0] {
        current.name_key
    } else {
        random_key()?
    };
    m.set(
        0,
        Registration {
            offsets,
            enabled: 1,
            max_cgroups_per_workload: limits.max_cgroups_per_workload,
            name_key,
            max_delegated_matches: limits.max_delegated_matches,
            _pad: 0,
        },
        0,
    )
    .map_err(write_err(name))?;
    Ok(name_key)
}

fn random_key() -> Result<[u64; 2]> {
    let mut bytes = [0u8; 16];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into `bytes`.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != bytes.len() as isize {
        return Err(DataplaneError::NoRandomness(std::io::Error::last_os_error()));
    }
    let word = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().unwrap_or([0; 8]));
    Ok([word(0), word(8)])
}

/// Checks that a slot's tables fit before anything is written.
pub(crate) fn check_capacity(tables: &KernelTables) -> Result<()> {
    ensure_capacity(&[
        (
            map_names::MATCH_STATES,
            tables.states.len(),
            MAX_MATCH_STATES,
        ),
        (map_names::MATCH_EXACT, tables.exact.len(), MAX_MATCH_EXACT),
        (map_names::MATCH_GLOBS, tables.globs.len(), MAX_MATCH_GLOBS),
    ])
}

/// Replaces a slot's automaton tables. The slot is not in force while this
/// runs; a cgroup created meanwhile may get states computed from a mix of
/// old and new tables, which the caller's next pass over the tree corrects
/// (see `Dataplane::stage_cgroups`).
/// `written` is how many states the slot may hold from earlier writes
/// (`None`: unknown); returns how many it holds now.
pub(crate) fn write_tables(
    ebpf: &mut Ebpf,
    slot: usize,
    tables: &KernelTables,
    written: Option<u32>,
) -> Result<u32> {
    check_capacity(tables)?;
    let slot_u32 = slot as u32;
    let states = tables.states.len() as u32;
    {
        let name = map_names::MATCH_STATES;
        let mut m: Array<&mut MapData, MatchState> = handles::typed_mut(ebpf, name)?;
        let base = slot_u32 * MAX_MATCH_STATES;
        // The new states, and the earlier ones past them emptied: a state
        // left from an earlier policy is unreachable, but the maps then
        // read back as written. Unknown content: every state.
        let end = states.max(written.unwrap_or(MAX_MATCH_STATES));
        for id in 0..end {
            let state = tables.states.get(id as usize).copied().unwrap_or_default();
            let current = m.get(&(base + id), 0).map_err(read_err(name))?;
            if current != state {
                m.set(base + id, state, 0).map_err(write_err(name))?;
            }
        }
    }
    {
        let name = map_names::MATCH_GLOBS;
        let mut m: Array<&mut MapData, GlobRule> = handles::typed_mut(ebpf, name)?;
        let base = slot_u32 * MAX_MATCH_GLOBS;
        for (index, rule) in tables.globs.iter().enumerate() {
            m.set(base + index as u32, *rule, 0)
                .map_err(write_err(name))?;
        }
    }
    let name = map_names::MATCH_EXACT;
    let mut m: HashMap<&mut MapData, ExactKey, u32> = handles::typed_mut(ebpf, name)?;
    let old: BTreeMap<ExactKey, u32> = m
        .iter()
        .filter(|item| item.as_ref().map_or(true, |(k, _)| k.slot == slot_u32))
        .collect::<Result<_, _>>()
        .map_err(read_err(name))?;
    let new: BTreeMap<ExactKey, u32> = tables
        .exact
        .iter()
        .map(|&(key, next)| {
            (
                ExactKey {
                    slot: slot_u32,
                    ..key
                },
                next,
            )
        })
        .collect();
    for key in old.keys().filter(|k| !new.contains_key(k)) {
        handles::removed(m.remove(key), name)?;
    }
    for (key, next) in &new {
        if old.get(key) != Some(next) {
            m.insert(key, *next, 0).map_err(write_err(name))?;
        }
    }
    Ok(states)
}

/// Makes a slot's cgroup map hold exactly `entries`, whatever the tracer
/// added meanwhile; returns whether anything changed.
pub(crate) fn write_cgroups(
    ebpf: &mut Ebpf,
    slot: usize,
    entries: &[ResolvedCgroup],
) -> Result<bool> {
    let name = map_names::CGROUPS[slot];
    let mut m: HashMap<&mut MapData, u64, enforcer_common::workload::CgroupEntry> =
        handles::typed_mut(ebpf, name)?;
    let actual: BTreeMap<u64, enforcer_common::workload::CgroupEntry> =
        m.iter().collect::<Result<_, _>>().map_err(read_err(name))?;
    let wanted: BTreeMap<u64, enforcer_common::workload::CgroupEntry> =
        entries.iter().map(|c| (c.cgroup_id, c.entry())).collect();
    let mut changed = false;
    for id in actual.keys().filter(|id| !wanted.contains_key(id)) {
        handles::removed(m.remove(id), name)?;
        changed = true;
    }
    for (id, entry) in &wanted {
        if actual.get(id) != Some(entry) {
            m.insert(*id, *entry, 0).map_err(write_err(name))?;
            changed = true;
        }
    }
    Ok(changed)
}

/// Sets each workload's count of registered cgroups in a slot (the
/// tracer's quota) to what `entries` hold.
pub(crate) fn write_counts(ebpf: &Ebpf, slot: usize, entries: &[ResolvedCgroup]) -> Result<()> {
    let name = map_names::REGISTERED_CGROUPS[slot];
    let counts: SharedArray<AtomicU32> = SharedArray::new(
        handles::mapped_array(ebpf, name)?,
        name,
        MAX_COUNTED_WORKLOADS as usize,
    )?;
    let mut wanted: BTreeMap<Identity, u32> = BTreeMap::new();
    for c in entries {
        *wanted.entry(c.workload).or_default() += 1;
    }
    for index in 0..counts.len() {
        let value = wanted.get(&(index as Identity)).copied().unwrap_or(0);
        if let Some(word) = counts.get(index)
            && word.load(Ordering::Relaxed) != value
        {
            word.store(value, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// Writes one slot's automaton states of every cgroup: `states` for this
/// slot, the other slot's states kept as the kernel has them. An entry
/// with no state in either slot is removed. Also recounts the delegated
/// entries.
pub(crate) fn write_states(
    ebpf: &mut Ebpf,
    slot: usize,
    states: &BTreeMap<u64, CgroupStates>,
) -> Result<()> {
    let name = map_names::CGROUP_MATCH;
    let mut delegated = 0u32;
    {
        let mut m: HashMap<&mut MapData, u64, CgroupMatch> = handles::typed_mut(ebpf, name)?;
        let actual: BTreeMap<u64, CgroupMatch> =
            m.iter().collect::<Result<_, _>>().map_err(read_err(name))?;
        let ids: BTreeSet<u64> = actual.keys().chain(states.keys()).copied().collect();
        for id in ids {
            let before = actual.get(&id).copied();
            let mut after = before.unwrap_or_default();
            match states.get(&id) {
                Some(s) => {
                    after.states[slot] = s.states.states;
                    after.delegated = u8::from(s.delegated);
                    after.overflow = u8::from(s.states.overflow);
                }
                None => after.states[slot] = [STATE_NONE; STATES_PER_CGROUP],
            }
            let empty = after.states.iter().all(|s| s[0] == STATE_NONE);
            if empty {
                if before.is_some() {
                    handles::removed(m.remove(&id), name)?;
                }
                continue;
            }
            if after.delegated != 0 {
                delegated += 1;
            }
            if before != Some(after) {
                m.insert(id, after, 0).map_err(write_err(name))?;
            }
        }
    }
    let name = map_names::DELEGATED_MATCHES;
    let mut count: Array<&mut MapData, u32> = handles::typed_mut(ebpf, name)?;
    count.set(0, delegated, 0).map_err(write_err(name))
}
