//! The cgroup tracer: gives a new cgroup its workload in the kernel, at
//! its creation, whether the daemon runs or not.
//!
//! `tp_btf/cgroup_mkdir` fires after the kernel set the new cgroup up and
//! before it activates its directory, so before any process can be moved
//! into it. The child's automaton states follow from its parent's
//! (`CGROUP_MATCH`) and its name (see `enforcer_common::cgroup_match`); a
//! child that reaches an accepting state is that workload's own cgroup, and
//! a child of a registered cgroup is registered with its parent's workload
//! (the receiving side of a local connection looks a socket's cgroup up
//! exactly). Both policy slots are computed, each with its own automaton,
//! so a flip of `CONFIG` never meets a cgroup the new slot lacks.
//! `tp_btf/cgroup_rmdir` forgets a removed cgroup.
//!
//! Kernel structures are read with `bpf_probe_read_kernel` at the offsets
//! the loader found in the kernel's BTF (`Registration::offsets`).

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{
        bpf_get_current_uid_gid, bpf_probe_read_kernel,
        generated::{bpf_loop, bpf_probe_read_kernel_str},
    },
    programs::BtfTracePointContext,
};
use enforcer_common::{
    cgroup_match::{
        CgroupMatch, ExactKey, KernelOffsets, MAX_GLOBS_PER_STATE, MatchState, NAME_WORDS,
        REACHED_PER_STEP, Registration, STATE_ACCEPT_DELEGATED, STATE_FROM_DELEGATED,
        STATE_HAS_EXACT, STATE_NONE, STATES_PER_CGROUP, glob_step, name_hash,
    },
    counters::{
        GLOBAL_COUNTER_CGROUPS_REGISTERED, GLOBAL_COUNTER_MATCH_OVERFLOWS,
        GLOBAL_COUNTER_REGISTRATIONS_REFUSED,
    },
    identity::IDENTITY_NONE,
    workload::CgroupEntry,
};

use crate::maps::{self, MatchScratch, Walk};

/// The cgroup a tracepoint names, as far as the tracer needs it.
struct Node {
    id: u64,
    parent_id: u64,
    name: *const u8,
}

/// Reads a kernel pointer (or integer) at `base + offset`.
#[inline(always)]
fn read<T: Copy>(base: *const u8, offset: u32) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel copies from any kernel address, failing
    // cleanly on a bad one.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize).cast::<T>()) }.ok()
}

impl Node {
    /// The cgroup of a `cgroup_mkdir`/`cgroup_rmdir` tracepoint, if it is
    /// one of the cgroup v2 hierarchy (cgroup v1 hierarchies number their
    /// cgroups separately: their ids mean nothing here).
    #[inline(always)]
    fn of(ctx: &BtfTracePointContext, offsets: &KernelOffsets) -> Option<Node> {
        let cgroup: *const u8 = ctx.arg(0);
        let root: *const u8 = read(cgroup, offsets.cgroup_root)?;
        let hierarchy: i32 = read(root, offsets.root_hierarchy_id)?;
        if hierarchy != 0 {
            return None;
        }
        let kn: *const u8 = read(cgroup, offsets.cgroup_kn)?;
        let parent: *const u8 = read(kn, offsets.kn_parent)?;
        Some(Node {
            id: read(kn, offsets.kn_id)?,
            parent_id: if parent.is_null() {
                0
            } else {
                read(parent, offsets.kn_id)?
            },
            name: read(kn, offsets.kn_name)?,
        })
    }
}

/// The tracer's settings and the tracepoint's cgroup, once the loader
/// enabled the tracer and for cgroup v2 only.
#[inline(always)]
fn traced(ctx: &BtfTracePointContext) -> Option<(Registration, Node)> {
    let registration = maps::REGISTRATION.get(0).copied()?;
    if registration.enabled == 0 {
        return None;
    }
    let node = Node::of(ctx, &registration.offsets)?;
    Some((registration, node))
}

/// `cgroup_mkdir`.
#[inline(always)]
pub fn created(ctx: &BtfTracePointContext) {
    let Some((registration, node)) = traced(ctx) else {
        return;
    };
    let Some(scratch) = maps::MATCH_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: the scratch value is this CPU's for the whole program run
    // (tracing programs do not nest on a CPU); the loop callbacks below
    // find it again by lookup.
    let scratch = unsafe { &mut *scratch };
    // SAFETY: `name` is `NAME_WORDS * 8` bytes.
    let read = unsafe {
        bpf_probe_read_kernel_str(
            scratch.name.as_mut_ptr().cast(),
            (NAME_WORDS * 8) as u32,
            node.name.cast(),
        )
    };
    // The length with its terminating zero; names are never empty.
    if read < 2 {
        return;
    }
    let len = (read - 1) as u32;
    let hash = name_hash(registration.name_key, &scratch.name, len as usize);
    // SAFETY: plain integers.
    let parent = unsafe { maps::CGROUP_MATCH.get(node.parent_id) }.copied();
    // The creator owns the new directory: anyone but root makes it (and
    // everything below it) delegated.
    let creator = bpf_get_current_uid_gid() as u32;
    let parent_delegated = parent.is_some_and(|p| p.delegated != 0);
    let delegated = parent_delegated || creator != 0;
    let mut child = CgroupMatch {
        delegated: u8::from(delegated),
        ..CgroupMatch::default()
    };
    let mut any_state = false;
    // Counted once per cgroup, not per slot.
    let mut registered = false;
    let mut refused = false;
    let mut slot = 0;
    while slot < 2 {
        scratch.walk = Walk {
            states: [STATE_NONE; STATES_PER_CGROUP],
            count: 0,
            overflow: 0,
            delegated: u8::from(delegated),
            parent_delegated: u8::from(parent_delegated),
            slot: slot as u8,
            accept: CgroupEntry {
                workload: IDENTITY_NONE,
                class: IDENTITY_NONE,
                mode: 0,
                _pad: [0; 3],
            },
            parent_states: [STATE_NONE; STATES_PER_CGROUP],
            hash,
            len,
            glob_first: 0,
            glob_rule: 0,
            reached: [STATE_NONE; REACHED_PER_STEP],
            reached_count: 0,
            positions: 0,
        };
        if let Some(parent) = &parent {
            scratch.walk.parent_states = parent.states[slot];
            // The loops over states, their globs and the name's bytes run
            // in the loop helper with their state in the scratch value, so
            // the verifier checks each body once.
            // SAFETY: `each_state` and `each_reached` have the callback
            // signature bpf_loop expects; they take no context.
            unsafe {
                bpf_loop(
                    STATES_PER_CGROUP as u32,
                    each_state as *mut c_void,
                    core::ptr::null_mut(),
                    0,
                );
                bpf_loop(
                    REACHED_PER_STEP as u32,
                    each_reached as *mut c_void,
                    core::ptr::null_mut(),
                    0,
                );
            }
        }
        let walk = &scratch.walk;
        child.states[slot] = walk.states;
        if walk.overflow != 0 {
            child.overflow = 1;
        }
        any_state |= walk.count != 0;
        let entry = if walk.accept.workload != IDENTITY_NONE {
            walk.accept
        } else {
            match maps::cgroup_entry(slot as u32, node.parent_id) {
                Some(inherited) => inherited,
                None => walk.accept,
            }
        };
        if entry.workload != IDENTITY_NONE {
            match register(slot, node.id, &entry, &registration) {
                Registered::Yes => registered = true,
                Registered::Refused => refused = true,
                Registered::Already => {}
            }
        }
        slot += 1;
    }
    if registered {
        maps::bump_global(GLOBAL_COUNTER_CGROUPS_REGISTERED);
    } else if refused {
        maps::bump_global(GLOBAL_COUNTER_REGISTRATIONS_REFUSED);
    }
    if child.overflow != 0 {
        maps::bump_global(GLOBAL_COUNTER_MATCH_OVERFLOWS);
    }
    if any_state {
        remember(node.id, &child, &registration);
    }
}

/// Keeps a cgroup's states for its children; delegated cgroups only up to
/// their share of the table.
#[inline(always)]
fn remember(id: u64, child: &CgroupMatch, registration: &Registration) {
    if child.delegated != 0 {
        let Some(count) = maps::DELEGATED_MATCHES.get_ptr_mut(0) else {
            return;
        };
        // SAFETY: a counter word of a map value.
        if unsafe { *count } >= registration.max_delegated_matches {
            maps::bump_global(GLOBAL_COUNTER_MATCH_OVERFLOWS);
            return;
        }
        if maps::CGROUP_MATCH.insert(id, *child, 0).is_ok() {
            maps::atomic_add(count, 1);
        }
    } else if maps::CGROUP_MATCH.insert(id, *child, 0).is_err() {
        maps::bump_global(GLOBAL_COUNTER_MATCH_OVERFLOWS);
    }
}

/// What [`register`] did.
enum Registered {
    Yes,
    /// The workload is at its quota (or has no counter).
    Refused,
    /// The slot already had the cgroup (or its map is full).
    Already,
}

/// Puts a cgroup into a slot's cgroup map, within its workload's quota.
#[inline(always)]
fn register(slot: usize, id: u64, entry: &CgroupEntry, registration: &Registration) -> Registered {
    let Some(count) = maps::registered_count(slot, entry.workload) else {
        return Registered::Refused;
    };
    // SAFETY: a counter word of a map value.
    if unsafe { *count } >= registration.max_cgroups_per_workload {
        return Registered::Refused;
    }
    if maps::insert_cgroup(slot, id, entry) {
        maps::atomic_add(count, 1);
        Registered::Yes
    } else {
        Registered::Already
    }
}

/// `cgroup_rmdir`: the cgroup and its states are gone.
#[inline(always)]
pub fn removed(ctx: &BtfTracePointContext) {
    let Some((_, node)) = traced(ctx) else {
        return;
    };
    let mut slot = 0;
    while slot < 2 {
        if let Some(entry) = maps::remove_cgroup(slot, node.id)
            && let Some(count) = maps::registered_count(slot, entry.workload)
        {
            uncount(count);
        }
        slot += 1;
    }
    // SAFETY: plain integers.
    let delegated = unsafe { maps::CGROUP_MATCH.get(node.id) }.is_some_and(|m| m.delegated != 0);
    if maps::CGROUP_MATCH.remove(node.id).is_ok()
        && delegated
        && let Some(count) = maps::DELEGATED_MATCHES.get_ptr_mut(0)
    {
        uncount(count);
    }
}

/// Takes one off a counter, never below zero (the daemon resets the
/// counts it knows, which may race with the tracer's).
#[inline(always)]
fn uncount(count: *mut u32) {
    // SAFETY: a counter word of a map value.
    if unsafe { *count } > 0 {
        maps::atomic_add(count, u32::MAX);
    }
}

/// This CPU's scratch value, in a loop callback.
#[inline(always)]
fn scratch<'a>() -> Option<&'a mut MatchScratch> {
    let p = maps::MATCH_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's value, which `created` set up for the callbacks.
    Some(unsafe { &mut *p })
}

/// Follows every transition of the parent's state `index` that the
/// child's name takes; stops the loop at the end of the list.
#[inline(never)]
extern "C" fn each_state(index: u64, _ctx: *mut c_void) -> i64 {
    let Some(scratch) = scratch() else {
        return 1;
    };
    let walk = &mut scratch.walk;
    let i = index as usize;
    if i >= STATES_PER_CGROUP {
        return 1;
    }
    let id = walk.parent_states[i];
    if id == STATE_NONE {
        return 1;
    }
    let slot = u32::from(walk.slot);
    let Some(state) = maps::match_state(slot, id) else {
        return 0;
    };
    if walk.parent_delegated != 0 && state.flags & STATE_FROM_DELEGATED == 0 {
        return 0;
    }
    if state.flags & STATE_HAS_EXACT != 0 {
        let key = ExactKey {
            state: u32::from(id),
            slot,
            name_hash: walk.hash,
        };
        if let Some(next) = maps::match_exact(&key) {
            reach(walk, next);
        }
    }
    let globs = u32::from(state.glob_count).min(MAX_GLOBS_PER_STATE);
    if globs != 0 {
        walk.glob_first = state.glob_first;
        // SAFETY: as in `created`.
        unsafe { bpf_loop(globs, each_glob as *mut c_void, core::ptr::null_mut(), 0) };
    }
    0
}

/// Follows glob transition `index` of the state `each_state` is at.
#[inline(never)]
extern "C" fn each_glob(index: u64, _ctx: *mut c_void) -> i64 {
    let Some(scratch) = scratch() else {
        return 1;
    };
    let slot = u32::from(scratch.walk.slot);
    let index = scratch.walk.glob_first.wrapping_add(index as u32);
    let Some(rule) = maps::match_glob(slot, index) else {
        return 0;
    };
    scratch.walk.glob_rule = index;
    scratch.walk.positions = rule.start();
    let len = scratch.walk.len;
    // SAFETY: as in `created`.
    unsafe { bpf_loop(len, glob_byte as *mut c_void, core::ptr::null_mut(), 0) };
    if rule.accepts(scratch.walk.positions) {
        reach(&mut scratch.walk, rule.next_state);
    }
    0
}

/// One byte of the name through the glob in the scratch space; stops the
/// loop (returns 1) once nothing can match.
#[inline(never)]
extern "C" fn glob_byte(index: u64, _ctx: *mut c_void) -> i64 {
    let Some(scratch) = scratch() else {
        return 1;
    };
    let i = index as usize;
    if i >= NAME_WORDS * 8 {
        return 1;
    }
    let slot = u32::from(scratch.walk.slot);
    let Some(rule) = maps::match_glob(slot, scratch.walk.glob_rule) else {
        return 1;
    };
    let c = (scratch.name[i / 8] >> ((i % 8) * 8)) as u8;
    scratch.walk.positions = glob_step(rule, scratch.walk.positions, c);
    i64::from(scratch.walk.positions == 0)
}

/// Notes that the child's name leads to state `next`; it is looked at
/// once every transition was followed (`each_reached`), in one callback
/// the verifier checks once.
#[inline(always)]
fn reach(walk: &mut Walk, next: u32) {
    if next > u32::from(u16::MAX) {
        return;
    }
    let count = walk.reached_count as usize;
    if count < REACHED_PER_STEP {
        walk.reached[count] = next as u16;
        walk.reached_count += 1;
    } else {
        walk.overflow = 1;
    }
}

/// The child is in reached state `index`: it may accept, keep it for its
/// children, and reach the `**` state that comes with it.
#[inline(never)]
extern "C" fn each_reached(index: u64, _ctx: *mut c_void) -> i64 {
    let Some(scratch) = scratch() else {
        return 1;
    };
    let walk = &mut scratch.walk;
    let i = index as usize;
    if i >= REACHED_PER_STEP || i >= walk.reached_count as usize {
        return 1;
    }
    let id = walk.reached[i];
    let Some(state) = maps::match_state(u32::from(walk.slot), id) else {
        return 0;
    };
    arrive(walk, id, &state);
    // Never chained: the `also` state has none of its own.
    if state.also != STATE_NONE {
        reach(walk, u32::from(state.also));
    }
    0
}

/// The child is in state `id`: it may accept, and it may keep the state
/// for its own children.
#[inline(always)]
fn arrive(walk: &mut Walk, id: u16, state: &MatchState) {
    let delegated = walk.delegated != 0;
    if state.workload != IDENTITY_NONE
        && (!delegated || state.flags & STATE_ACCEPT_DELEGATED != 0)
        && (walk.accept.workload == IDENTITY_NONE || state.workload < walk.accept.workload)
    {
        walk.accept = CgroupEntry {
            workload: state.workload,
            class: state.class,
            mode: state.mode,
            _pad: [0; 3],
        };
    }
    if !state.has_transitions() || (delegated && state.flags & STATE_FROM_DELEGATED == 0) {
        return;
    }
    // Unrolled: no state is STATE_NONE, so the free places never match.
    if walk.states.contains(&id) {
        return;
    }
    let count = walk.count as usize;
    if count < STATES_PER_CGROUP {
        walk.states[count] = id;
        walk.count += 1;
    } else {
        walk.overflow = 1;
    }
}
