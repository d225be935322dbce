//! Putting a policy in force: the inactive slot written (at once, or in
//! steps with [`Dataplane::stage`] and [`Dataplane::commit`]), then
//! `CONFIG` flipped in one update; and the cgroups of the policy in force
//! kept in step with the cgroup tree.

use std::collections::BTreeMap;

use aya::maps::{Array, HashMap, MapData};
use enforcer_common::{
    capacity::MAX_CGROUPS, config::SlotPolicy, identity::Identity, map_names, workload::CgroupEntry,
};

use super::{
    Dataplane, HostAddrs, SlotContent,
    error::{DataplaneError, Result, ensure_capacity, read_err, write_err},
    handles, registration, slots,
};
use crate::{
    cgroups::{
        CgroupStates, CgroupTree, Resolution,
        automaton::KernelTables,
        resolve::{KernelEntries, kernel_entries},
    },
    compile::CompiledPolicy,
};

/// One cgroup the daemon resolved to a workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResolvedCgroup {
    /// The cgroup v2 id (inode number of its directory).
    pub cgroup_id: u64,
    pub workload: Identity,
    /// The workload's verdict class (`CompiledWorkload::class`): the
    /// identity the kernel looks its verdicts up under.
    pub class: Identity,
    /// `Mode::Enforce as u8`, `Mode::Audit as u8` or `Mode::Off as u8`.
    pub mode: u8,
}

impl ResolvedCgroup {
    /// The kernel's cgroup map for a resolution: matched cgroups and all
    /// their descendants (see [`kernel_entries`]), at most `quota` per
    /// workload, with each workload's verdict class in `compiled`; and how
    /// many cgroups each workload had past its quota.
    pub fn of_resolution(
        resolution: &Resolution,
        tree: &CgroupTree,
        compiled: &CompiledPolicy,
        quota: usize,
    ) -> (Vec<ResolvedCgroup>, BTreeMap<Identity, usize>) {
        let KernelEntries { entries, refused } = kernel_entries(resolution, tree, quota);
        let resolved = entries
            .into_iter()
            .map(|(cgroup_id, workload, mode)| ResolvedCgroup {
                cgroup_id,
                workload,
                class: compiled.class_of(workload),
                mode,
            })
            .collect();
        (resolved, refused)
    }

    /// Its value in a slot's cgroup map.
    pub fn entry(&self) -> CgroupEntry {
        CgroupEntry {
            workload: self.workload,
            class: self.class,
            mode: self.mode,
            _pad: [0; 3],
        }
    }

    /// The cgroup that a slot's cgroup map holds as `entry`.
    fn of_entry(cgroup_id: u64, entry: &CgroupEntry) -> ResolvedCgroup {
        ResolvedCgroup {
            cgroup_id,
            workload: entry.workload,
            class: entry.class,
            mode: entry.mode,
        }
    }
}

/// What the cgroup tracer needs for the slot being staged: the automaton
/// tables and the automaton states of the cgroups that exist.
#[derive(Clone, Copy, Debug)]
pub struct SlotMatching<'a> {
    pub tables: &'a KernelTables,
    pub states: &'a BTreeMap<u64, CgroupStates>,
}

/// A slot being written: its content, and what `SLOT_POLICIES` records
/// once it is complete.
#[derive(Debug)]
pub(super) struct Staged {
    slot: usize,
    content: Box<SlotContent>,
    stamp: SlotPolicy,
}

/// The entries of a slot's cgroup map for `cgroups`, sorted by cgroup id
/// (the first of a duplicate id kept).
fn cgroup_entries(cgroups: &[ResolvedCgroup]) -> Vec<(u64, CgroupEntry)> {
    let mut entries: Vec<(u64, CgroupEntry)> =
        cgroups.iter().map(|c| (c.cgroup_id, c.entry())).collect();
    entries.sort_unstable_by_key(|e| e.0);
    entries.dedup_by_key(|e| e.0);
    entries
}

impl Dataplane {
    /// Puts a policy in force: checks it fits, turns the inactive slot into
    /// the policy, then flips `CONFIG` in one update (new slot, new
    /// generation, enabled). Returns the new generation. On error the
    /// running policy is untouched.
    ///
    /// The inactive slot holds the policy of two applies ago: when this
    /// value wrote it, only the entries that differ are written (a small
    /// change costs little, whatever the policy's size); otherwise the slot
    /// is emptied and filled.
    pub fn apply(
        &mut self,
        policy: &CompiledPolicy,
        cgroups: &[ResolvedCgroup],
        host: &HostAddrs,
    ) -> Result<u32> {
        self.apply_content(SlotContent::of(policy, cgroups, host), stamp_of(policy))
    }

    /// [`Dataplane::apply`] of a slot's content as it is, recorded in
    /// `SLOT_POLICIES` as `stamp`: how a policy known only from the kernel
    /// (adopted from the pins and read back with [`Dataplane::read_slot`])
    /// is put in force again.
    pub fn apply_content(&mut self, content: SlotContent, stamp: SlotPolicy) -> Result<u32> {
        let cgroups: Vec<ResolvedCgroup> = content
            .cgroups
            .iter()
            .map(|(cgroup_id, e)| ResolvedCgroup::of_entry(*cgroup_id, e))
            .collect();
        self.stage_content(content, stamp, None)?;
        self.stage_cgroups(&cgroups, None)?;
        self.commit()
    }

    /// The first step of an apply in steps (what [`Dataplane::apply`] does
    /// at once): checks the policy fits, then writes its addresses,
    /// verdicts and (with `tables`, when registration is enabled) the
    /// cgroup tracer's automaton into the inactive slot. Nothing is in
    /// force until [`Dataplane::commit`]; on error the running policy is
    /// untouched. Returns the slot being written.
    pub fn stage(
        &mut self,
        policy: &CompiledPolicy,
        host: &HostAddrs,
        tables: Option<&KernelTables>,
    ) -> Result<usize> {
        self.stage_content(SlotContent::of(policy, &[], host), stamp_of(policy), tables)
    }

    /// [`Dataplane::stage`] of a slot's tries as they are (its cgroups
    /// follow in [`Dataplane::stage_cgroups`]).
    fn stage_content(
        &mut self,
        content: SlotContent,
        stamp: SlotPolicy,
        tables: Option<&KernelTables>,
    ) -> Result<usize> {
        slots::check_capacity(&content)?;
        if let Some(tables) = tables {
            registration::check_capacity(tables)?;
        }
        let cfg = self.config()?;
        let inactive = if cfg.enabled != 0 && cfg.active_slot == 0 {
            1
        } else {
            0
        };
        self.staged = None;
        // Unknown until the write succeeds: a failure leaves it unknown,
        // in this value and in the kernel's record.
        self.write_slot_policy(inactive, SlotPolicy::default())?;
        match self.written[inactive].take() {
            Some(old) => slots::update_slot(&mut self.ebpf, inactive, &old, &content)?,
            None => slots::replace_slot(&mut self.ebpf, inactive, &content)?,
        }
        // Empty tables for a slot without matching: the tracer registers
        // nothing there.
        let empty = KernelTables::default();
        let written = self.match_states_written[inactive].take();
        self.match_states_written[inactive] = Some(registration::write_tables(
            &mut self.ebpf,
            inactive,
            tables.unwrap_or(&empty),
            written,
        )?);
        self.staged = Some(Staged {
            slot: inactive,
            content: Box::new(content),
            stamp,
        });
        Ok(inactive)
    }

    /// Writes the cgroups of the staged slot: exactly `cgroups` in its
    /// cgroup map (whatever the tracer added meanwhile), their counts for
    /// the tracer's quota, and, with `states`, every cgroup's automaton
    /// states for the tracer. May run several times between
    /// [`Dataplane::stage`] and [`Dataplane::commit`]: a cgroup created
    /// while the states were written may have been matched with stale ones,
    /// and a pass over a newer tree corrects it.
    pub fn stage_cgroups(
        &mut self,
        cgroups: &[ResolvedCgroup],
        states: Option<&BTreeMap<u64, CgroupStates>>,
    ) -> Result<()> {
        let Some(staged) = self.staged.as_mut() else {
            return Err(DataplaneError::InvalidSetting(
                "stage_cgroups without a staged policy".into(),
            ));
        };
        let slot = staged.slot;
        ensure_capacity(&[(map_names::CGROUPS[slot], cgroups.len(), MAX_CGROUPS)])?;
        staged.content.cgroups = cgroup_entries(cgroups);
        registration::write_cgroups(&mut self.ebpf, slot, cgroups)?;
        registration::write_counts(&self.ebpf, slot, cgroups)?;
        if let Some(states) = states {
            registration::write_states(&mut self.ebpf, slot, states)?;
        }
        Ok(())
    }

    /// Puts the staged slot in force: records it in `SLOT_POLICIES`, then
    /// flips `CONFIG` in one update (new slot, new generation, enabled).
    /// Returns the new generation.
    pub fn commit(&mut self) -> Result<u32> {
        let Some(Staged {
            slot,
            content,
            stamp,
        }) = self.staged.take()
        else {
            return Err(DataplaneError::InvalidSetting(
                "commit without a staged policy".into(),
            ));
        };
        self.write_slot_policy(slot, stamp)?;
        let cgroups = content
            .cgroups
            .iter()
            .map(|(cgroup_id, e)| (*cgroup_id, ResolvedCgroup::of_entry(*cgroup_id, e)))
            .collect();
        self.written[slot] = Some(content);
        let generation = self.bump_generation(|c| {
            c.active_slot = slot as u32;
            c.enabled = 1;
        })?;
        self.cgroups = cgroups;
        tracing::debug!(generation, slot, "policy applied");
        Ok(generation)
    }

    /// Which policy slot `slot` holds, as recorded by the daemon that wrote
    /// it; `None` when unknown (never recorded, or a write that did not
    /// finish).
    pub fn slot_policy(&self, slot: usize) -> Result<Option<SlotPolicy>> {
        let name = map_names::SLOT_POLICIES;
        let m: Array<&MapData, SlotPolicy> = handles::typed(&self.ebpf, name)?;
        let stamp = m.get(&((slot & 1) as u32), 0).map_err(read_err(name))?;
        Ok((stamp.applied_unix_ms != 0).then_some(stamp))
    }

    /// The recorded policy of the slot in force; `None` when nothing is
    /// enforced or the record is unknown.
    pub fn policy_in_force(&self) -> Result<Option<SlotPolicy>> {
        let cfg = self.config()?;
        if cfg.enabled == 0 {
            return Ok(None);
        }
        self.slot_policy(cfg.active_slot as usize)
    }

    fn write_slot_policy(&mut self, slot: usize, stamp: SlotPolicy) -> Result<()> {
        let name = map_names::SLOT_POLICIES;
        handles::typed_mut::<Array<_, SlotPolicy>>(&mut self.ebpf, name)?
            .set((slot & 1) as u32, stamp, 0)
            .map_err(write_err(name))
    }

    /// What the active slot's cgroup map holds.
    pub(super) fn read_active_cgroups(&self) -> Result<BTreeMap<u64, ResolvedCgroup>> {
        let name = map_names::CGROUPS[self.active_slot()?];
        let m: HashMap<&MapData, u64, CgroupEntry> = handles::typed(&self.ebpf, name)?;
        let mut out = BTreeMap::new();
        for item in &m {
            let (id, e) = item.map_err(read_err(name))?;
            out.insert(id, ResolvedCgroup::of_entry(id, &e));
        }
        Ok(out)
    }

    /// Makes the policy in force hold exactly these cgroups (whatever the
    /// tracer added or removed meanwhile), their counts and, with
    /// `states`, their automaton states: the daemon's reconciliation after
    /// a change of the cgroup tree. Flows are judged again when a cgroup
    /// entry changed. Returns whether one did.
    pub fn sync_cgroups(
        &mut self,
        cgroups: &[ResolvedCgroup],
        states: Option<&BTreeMap<u64, CgroupStates>>,
    ) -> Result<bool> {
        let slot = self.active_slot()?;
        let changed = registration::write_cgroups(&mut self.ebpf, slot, cgroups)?;
        registration::write_counts(&self.ebpf, slot, cgroups)?;
        if let Some(states) = states {
            registration::write_states(&mut self.ebpf, slot, states)?;
        }
        if let Some(content) = self.written[slot].as_mut() {
            content.cgroups = cgroup_entries(cgroups);
        }
        self.cgroups = cgroups.iter().map(|c| (c.cgroup_id, *c)).collect();
        if changed {
            self.bump_generation(|_| {})?;
        }
        Ok(changed)
    }

    /// Adds (or updates) one cgroup in the policy in force, for the
    /// daemon's cgroup watcher. The inactive slot is rewritten completely by
    /// the next [`Dataplane::apply`], which receives the full list. Flows
    /// are judged again, since processes in the cgroup were `host` before.
    pub fn add_cgroup(&mut self, cgroup: ResolvedCgroup) -> Result<u32> {
        let slot = self.active_slot()?;
        let known = self.written[slot].take();
        slots::put_cgroup(&mut self.ebpf, slot, &cgroup)?;
        self.written[slot] = known.map(|mut content| {
            content.put_cgroup(&cgroup);
            content
        });
        self.cgroups.insert(cgroup.cgroup_id, cgroup);
        self.bump_generation(|_| {})
    }

    /// Removes one cgroup from the policy in force.
    pub fn remove_cgroup(&mut self, cgroup_id: u64) -> Result<u32> {
        let slot = self.active_slot()?;
        let known = self.written[slot].take();
        slots::delete_cgroup(&mut self.ebpf, slot, cgroup_id)?;
        self.written[slot] = known.map(|mut content| {
            content.remove_cgroup(cgroup_id);
            content
        });
        self.cgroups.remove(&cgroup_id);
        self.bump_generation(|_| {})
    }

    /// What policy slot `slot` (0 or 1) holds in the kernel, read back
    /// from the maps (tests and diagnostics; it reads every entry).
    pub fn read_slot(&self, slot: usize) -> Result<SlotContent> {
        slots::read_slot(&self.ebpf, slot & 1)
    }

    /// Which slot is in force (0 or 1).
    pub fn active_slot_index(&self) -> Result<usize> {
        self.active_slot()
    }

    /// Whether this value knows what `slot` holds, so that the next
    /// `apply` into it writes only the differences.
    pub fn knows_slot(&self, slot: usize) -> bool {
        self.written[slot & 1].is_some()
    }

    /// The cgroups of the policy in force.
    pub fn cgroups(&self) -> impl Iterator<Item = &ResolvedCgroup> {
        self.cgroups.values()
    }
}

/// What `SLOT_POLICIES` records for a policy put in force now.
fn stamp_of(policy: &CompiledPolicy) -> SlotPolicy {
    SlotPolicy {
        content_hash: policy.content_hash,
        applied_unix_ms: unix_ms(std::time::SystemTime::now()),
    }
}

/// Milliseconds since the Unix epoch (0 before it, which no clock shows).
fn unix_ms(time: std::time::SystemTime) -> u64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
