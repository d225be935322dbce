//! The daemon's state and every change to it. Changes run under one lock,
//! so they are serialized; reading and compiling a policy ([`Candidate`])
//! needs no engine and happens before the lock is taken, and status
//! counters are read outside it (see `daemon/status.rs`).
//!
//! One [`Engine`], its jobs in their own modules:
//!
//! - `lifecycle`: putting a policy in force (install, accept, reject,
//!   `until` expiry) and saving it;
//! - `probation`: `apply --confirm`, `confirm` and the rollback;
//! - `startup`: the first policy, adopted or restored when the configured
//!   one is invalid;
//! - `cgroup_sync`: following cgroups as they come and go;
//! - `bound_ports`: the ports bound before the programs saw the `bind()`;
//! - `host_addrs`: this host's addresses in the policy in force;
//! - `report`: `status` and systemd's `STATUS=` line;
//! - `candidate`: a policy read and compiled, not yet in force;
//! - `error`: [`EngineError`].

mod bound_ports;
mod candidate;
mod cgroup_sync;
mod error;
mod host_addrs;
mod lifecycle;
mod probation;
mod report;
mod startup;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Instant, SystemTime};

use enforcer_common::{config::SlotPolicy, identity::Identity};

pub use candidate::Candidate;
use candidate::Sources;
pub(super) use error::with_cause;
pub use error::{EngineError, LastGoodUnavailable};
use probation::Pending;

use super::flows::FlowHistory;
use super::state::StateDir;
use crate::api::proto::Rejection;
use crate::cgroups::{CgroupTree, Discovery, Matcher, Resolution, V1Conflict};
use crate::compile::CompiledPolicy;
use crate::config::Settings;
use crate::dataplane::{CounterReader, Dataplane, HostAddrs, SlotContent};

/// What made the daemon load a policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    Startup,
    Sighup,
    FileChange,
    Apply,
    Expiry,
    Rollback,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Startup => "startup",
            Trigger::Sighup => "sighup",
            Trigger::FileChange => "file change",
            Trigger::Apply => "apply",
            Trigger::Expiry => "expiry",
            Trigger::Rollback => "rollback",
        }
    }
}

/// Where a compiled policy in force came from, when not from its source
/// directory's files as they are now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The last good policy of the state directory, which the pinned maps
    /// showed in force at start (same content hash): adopted as it was.
    Adopted,
    /// The last good policy of the state directory, put in force at start
    /// (no policy was in the kernel, as after a reboot) because the
    /// configured one was invalid.
    Restored,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Adopted => "adopted",
            Origin::Restored => "restored",
        }
    }
}

/// A policy in force.
#[derive(Clone)]
struct Installed {
    /// What it was compiled from, when one of its rules has an `until`: an
    /// expiry compiles the same policy set again (even if the files changed
    /// since). The text rather than the parsed model, which takes about
    /// ten times the memory; without an `until` nothing is kept.
    sources: Option<Sources>,
    compiled: Arc<CompiledPolicy>,
    source: PathBuf,
    generation: u32,
    applied_at: SystemTime,
    /// `None`: read from `source`.
    origin: Option<Origin>,
}

/// A policy the kernel enforces that this daemon has no compiled form of:
/// adopted from the pins of an earlier daemon while the configured policy
/// is invalid and the state directory does not hold the same policy.
struct KernelPolicy {
    /// The slot in force as read at start, this host's addresses left out
    /// (whenever it is written again, the current ones go in); `None` when
    /// it could not be read (then it can be neither written again nor
    /// rolled back to).
    base: Option<SlotContent>,
    /// What the kernel recorded about it (`SLOT_POLICIES`), if anything.
    stamp: Option<SlotPolicy>,
}

/// The result of a successful load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub generation: u32,
    pub content_hash: u64,
    /// Identical policy and cgroups: nothing was written.
    pub unchanged: bool,
    pub warnings: Vec<String>,
    pub rollback_at: Option<SystemTime>,
}

/// Whether a policy set with no workload may replace one that has some.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EmptyPolicy {
    /// Refused while workloads are enforced: an empty or mistyped directory
    /// must not open every workload by accident.
    Refuse,
    /// `apply --allow-empty`: the operator said so.
    Allow,
}

/// The daemon's state.
pub struct Engine {
    settings: Settings,
    root: PathBuf,
    dataplane: Dataplane,
    tree: CgroupTree,
    /// What the cgroup walks could not see (the watcher records it).
    discovery: Discovery,
    matcher: Option<Matcher>,
    resolution: Resolution,
    current: Option<Installed>,
    pending: Option<Pending>,
    last_rejection: Option<Rejection>,
    reloads_ok: u64,
    reloads_failed: u64,
    v1_conflicts: Vec<V1Conflict>,
    /// Cgroups past their workload's quota, not in the kernel's map, by
    /// workload.
    refused: BTreeMap<Identity, usize>,
    /// Why cgroups are not registered in the kernel at their creation, if
    /// they are not.
    registration_error: Option<String>,
    started_at: SystemTime,
    /// The policy the kernel enforces when no compiled one is in force.
    kernel_policy: Option<Arc<KernelPolicy>>,
    /// This host's addresses as the slot in force holds them.
    host: HostAddrs,
    /// Where policies accepted into force are saved; `None` when the
    /// directory cannot be used.
    state: Option<StateDir>,
    /// Why `state` is `None`.
    state_error: Option<Arc<super::state::StateError>>,
    /// The files of the policy last installed, until saved.
    unsaved: Option<Sources>,
    /// The policy the events reader names things with.
    event_policy: Arc<RwLock<Option<Arc<CompiledPolicy>>>>,
    flows: Arc<Mutex<FlowHistory>>,
}

/// The instant at which the wall clock will read `time` (now when past).
fn instant_of(time: SystemTime) -> Instant {
    let now = Instant::now();
    match time.duration_since(SystemTime::now()) {
        Ok(ahead) => now + ahead,
        Err(_) => now,
    }
}

impl Engine {
    /// The state around a loaded (not yet attached) data plane.
    pub fn new(
        settings: Settings,
        root: PathBuf,
        dataplane: Dataplane,
        tree: CgroupTree,
        discovery: Discovery,
        v1_conflicts: Vec<V1Conflict>,
        flows: Arc<Mutex<FlowHistory>>,
    ) -> Engine {
        Engine {
            kernel_policy: None,
            host: HostAddrs::default(),
            state: None,
            state_error: None,
            unsaved: None,
            settings,
            root,
            dataplane,
            tree,
            discovery,
            matcher: None,
            resolution: Resolution::default(),
            current: None,
            pending: None,
            last_rejection: None,
            reloads_ok: 0,
            reloads_failed: 0,
            v1_conflicts,
            refused: BTreeMap::new(),
            registration_error: None,
            started_at: SystemTime::now(),
            event_policy: Arc::new(RwLock::new(None)),
            flows,
        }
    }

    /// Records that the cgroup tracer could not be set up (see
    /// `Dataplane::enable_registration`), for `status`.
    pub fn set_registration_error(&mut self, error: Option<String>) {
        self.registration_error = error;
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn dataplane_mut(&mut self) -> &mut Dataplane {
        &mut self.dataplane
    }

    /// The policy the events reader should name entities with.
    pub fn event_policy(&self) -> Arc<RwLock<Option<Arc<CompiledPolicy>>>> {
        Arc::clone(&self.event_policy)
    }

    pub fn flows(&self) -> Arc<Mutex<FlowHistory>> {
        Arc::clone(&self.flows)
    }

    /// Is a policy in force?
    pub fn has_policy(&self) -> bool {
        self.current.is_some()
    }

    /// Handles of the counter maps for [`super::status`], which reads
    /// them without the engine.
    pub fn counter_reader(&self) -> crate::dataplane::Result<CounterReader> {
        self.dataplane.counter_reader()
    }

    /// The next instant something must happen by itself (a rollback or an
    /// expiry).
    pub fn next_deadline(&self) -> Option<Instant> {
        let rollback = self.pending.as_ref().map(|p| p.deadline);
        let expiry = self
            .current
            .as_ref()
            .and_then(|c| c.compiled.next_expiry)
            .map(instant_of);
        match (rollback, expiry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Do what is due.
    pub fn on_deadline(&mut self) {
        let now = Instant::now();
        if self.pending.as_ref().is_some_and(|p| p.deadline <= now) {
            self.rollback();
        }
        let expired = self
            .current
            .as_ref()
            .and_then(|c| c.compiled.next_expiry)
            .is_some_and(|t| t <= SystemTime::now());
        if expired {
            self.expire();
        }
    }
}
