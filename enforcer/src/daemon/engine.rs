//! The daemon's state and every change to it: loading and swapping
//! policies (with rejection, confirmation and rollback, and `until`
//! expiry), following cgroups as they come and go, and reporting status.
//! Changes run under one lock, so they are serialized; reading and
//! compiling a policy ([`Candidate`]) needs no engine and happens before
//! the lock is taken, and status counters are read outside it (see
//! `status.rs`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use enforcer_common::Identity;

use super::flows::FlowHistory;
use super::memory::release_freed_heap;
use crate::api::proto::{PolicyStatus, Rejection, StatusReport, VerdictCounters, WorkloadStatus};
use crate::cgroups::resolve::{KernelEntries, kernel_entries};
use crate::cgroups::{CgroupTree, Matcher, Resolution, TreeUpdate, V1Conflict, uid_of_user};
use crate::compile::compiled::{CgroupSelector, CompiledPolicy};
use crate::config::Settings;
use crate::dataplane::{CounterReader, Dataplane, HostAddrs, ResolvedCgroup};
use crate::policy::LoadError;
use crate::rfc3339::format_millis as rfc3339;

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

/// The files of a policy directory (name, text) as they were read.
type Sources = Arc<[(PathBuf, String)]>;

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
}

/// An `apply --confirm` waiting for `confirm`.
struct Pending {
    deadline: Instant,
    rollback_at: SystemTime,
    /// What to go back to; `None`: no policy was in force before.
    previous: Option<Installed>,
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

/// A policy read and compiled, not yet in force. Made without the engine
/// (so without its lock): [`Candidate::from_dir`], [`Candidate::from_files`].
pub struct Candidate {
    sources: Sources,
    compiled: CompiledPolicy,
    warnings: Vec<String>,
}

impl Candidate {
    /// Read (see [`crate::policy::files`]) and compile the directory `dir`
    /// at `now`.
    pub fn from_dir(dir: &Path, now: SystemTime) -> Result<Candidate, Vec<String>> {
        let sources = crate::policy::read_dir(dir).map_err(load_errors)?;
        Candidate::compile(sources.into(), now)
    }

    /// Compile files received over the API (name, text) at `now`, named
    /// `source/NAME` in diagnostics. The names and sizes are checked first
    /// ([`crate::policy::files::check_received`]).
    pub fn from_files(
        source: &Path,
        files: Vec<(String, String)>,
        now: SystemTime,
    ) -> Result<Candidate, Vec<String>> {
        crate::policy::files::check_received(files.iter().map(|(n, t)| (n.as_str(), t.as_str())))?;
        let mut sources: Vec<(PathBuf, String)> = files
            .into_iter()
            .map(|(name, text)| (source.join(name), text))
            .collect();
        // The order a directory is read in, whatever order they came in.
        sources.sort_by(|a, b| a.0.cmp(&b.0));
        Candidate::compile(sources.into(), now)
    }

    /// Parse and compile the files of a policy set at `now`.
    fn compile(sources: Sources, now: SystemTime) -> Result<Candidate, Vec<String>> {
        let loaded = crate::policy::load_sources(&sources).map_err(load_errors)?;
        let (compiled, warnings) =
            crate::compile::compile_loaded(loaded, now).map_err(load_errors)?;
        Ok(Candidate {
            sources,
            compiled,
            warnings: warnings.iter().map(ToString::to_string).collect(),
        })
    }
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
    /// The generation found enforcing in the adopted pins at start, if any:
    /// the kernel keeps enforcing it while no policy could be loaded.
    adopted_generation: Option<u32>,
    /// The policy the events reader names things with.
    event_policy: Arc<RwLock<Option<Arc<CompiledPolicy>>>>,
    flows: Arc<Mutex<FlowHistory>>,
}

fn selector_text(selector: &CgroupSelector) -> String {
    selector.to_string()
}

fn load_errors(e: LoadError) -> Vec<String> {
    match e {
        LoadError::Invalid(diags) => diags.errors().map(ToString::to_string).collect(),
        io @ LoadError::Io { .. } => vec![io.to_string()],
    }
}

/// The kernel's cgroup map for a resolution: matched cgroups and all their
/// descendants (see [`kernel_entries`]), at most `quota` per workload, with
/// each workload's verdict class in `compiled`; and how many cgroups each
/// workload had past its quota.
fn to_resolved(
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

/// Passes over the cgroup tree while a policy is staged, at most: a pass
/// finds the cgroups created since the one before, which the tracer may
/// have matched with states not yet written.
const STAGING_PASSES: usize = 4;

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
        v1_conflicts: Vec<V1Conflict>,
        flows: Arc<Mutex<FlowHistory>>,
    ) -> Engine {
        let adopted_generation = dataplane
            .config()
            .ok()
            .filter(|c| c.enabled != 0)
            .map(|c| c.generation);
        Engine {
            adopted_generation,
            settings,
            root,
            dataplane,
            tree,
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

    /// One line for systemd's STATUS= (shown by `systemctl status`): what
    /// is enforced, and the last rejection while it stands.
    pub fn summary(&self) -> String {
        let mut line = match &self.current {
            Some(c) => format!(
                "enforcing generation {} ({:016x}): {} workloads, {} cgroups",
                c.generation,
                c.compiled.content_hash,
                c.compiled.workloads.len(),
                self.resolution.cgroups.len()
            ),
            None => match self.adopted_generation {
                // The kernel keeps the pinned policy of an earlier daemon.
                Some(generation) => format!(
                    "enforcing the adopted policy of an earlier daemon (generation {generation}); no new policy loaded"
                ),
                None => "no policy in force".into(),
            },
        };
        if let Some(rejection) = &self.last_rejection {
            let first = rejection.errors.first().map_or("", String::as_str);
            let more = rejection.errors.len().saturating_sub(1);
            line.push_str(&format!("; REJECTED ({}): {first}", rejection.trigger));
            if more > 0 {
                line.push_str(&format!(" (+{more} more)"));
            }
        }
        line
    }

    /// Put a compiled policy in force (or find it already is).
    fn install(
        &mut self,
        sources: Option<Sources>,
        compiled: CompiledPolicy,
        source: PathBuf,
    ) -> Result<(u32, bool), Vec<String>> {
        let sources = sources.filter(|_| compiled.next_expiry.is_some());
        let matcher = Matcher::new(&compiled.workloads, uid_of_user)
            .map_err(|e| vec![format!("the data plane refused the policy: {e}")])?;
        let resolution = matcher.resolve(&self.tree);
        if let Some(current) = &mut self.current
            && current.compiled.content_hash == compiled.content_hash
            && *current.compiled == compiled
            && resolution == self.resolution
        {
            current.source = source;
            current.sources = sources;
            return Ok((current.generation, true));
        }
        // The host's addresses can change between loads (DHCP, new links).
        let host = HostAddrs::from_system()
            .map_err(|e| vec![format!("cannot list this host's addresses: {e}")])?;
        let (generation, resolution) = self
            .swap_in(&compiled, &matcher, resolution, &host)
            .map_err(|e| vec![format!("the data plane refused the policy: {e}")])?;
        self.seed_bound_ports();
        for a in &resolution.ambiguities {
            tracing::warn!(cgroup = %a.path, workloads = ?a.workloads, "several workloads match one cgroup; the first wins");
        }
        let compiled = Arc::new(compiled);
        if let Ok(mut slot) = self.event_policy.write() {
            *slot = Some(Arc::clone(&compiled));
        }
        self.matcher = Some(matcher);
        self.resolution = resolution;
        self.current = Some(Installed {
            sources,
            compiled,
            source,
            generation,
            applied_at: SystemTime::now(),
        });
        Ok((generation, false))
    }

    /// Writes a policy into the inactive slot with its cgroups, passing
    /// over the tree again until no cgroup appeared meanwhile (the tracer
    /// matched those with the slot's states as they were), then flips.
    fn swap_in(
        &mut self,
        compiled: &CompiledPolicy,
        matcher: &Matcher,
        mut resolution: Resolution,
        host: &HostAddrs,
    ) -> Result<(u32, Resolution), crate::dataplane::DataplaneError> {
        let tables = self
            .dataplane
            .name_key()
            .map(|key| matcher.automaton().kernel_tables(key));
        self.dataplane.stage(compiled, host, tables.as_ref())?;
        let quota = self.settings.max_cgroups_per_workload as usize;
        for pass in 1..=STAGING_PASSES {
            let (cgroups, refused) = to_resolved(&resolution, &self.tree, compiled, quota);
            let states = tables.as_ref().map(|_| &resolution.states);
            self.dataplane.stage_cgroups(&cgroups, states)?;
            self.refused = refused;
            if tables.is_none() || pass == STAGING_PASSES {
                break;
            }
            let newer = match CgroupTree::scan(&self.root) {
                Ok(tree) => tree,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot rescan cgroups while staging a policy");
                    break;
                }
            };
            let appeared = newer
                .iter()
                .any(|(path, id)| self.tree.id_of(path) != Some(id));
            self.tree = newer;
            resolution = matcher.resolve(&self.tree);
            if !appeared {
                break;
            }
        }
        Ok((self.dataplane.commit()?, resolution))
    }

    fn reject(&mut self, trigger: Trigger, source: &Path, errors: Vec<String>) -> Vec<String> {
        release_freed_heap();
        self.reloads_failed += 1;
        for e in &errors {
            tracing::error!(trigger = trigger.as_str(), source = %source.display(), "policy rejected: {e}");
        }
        tracing::error!(
            trigger = trigger.as_str(),
            "policy rejected; the running policy stays in force"
        );
        self.last_rejection = Some(Rejection {
            time: rfc3339(SystemTime::now()),
            trigger: trigger.as_str().into(),
            source: source.display().to_string(),
            errors: errors.clone(),
        });
        errors
    }

    fn accept(&mut self, trigger: Trigger, generation: u32, unchanged: bool, warnings: &[String]) {
        release_freed_heap();
        self.reloads_ok += 1;
        self.last_rejection = None;
        for w in warnings {
            tracing::warn!("{w}");
        }
        let hash = self.current.as_ref().map_or(0, |c| c.compiled.content_hash);
        tracing::info!(
            trigger = trigger.as_str(),
            generation,
            content_hash = format!("{hash:016x}"),
            unchanged,
            cgroups = self.resolution.cgroups.len(),
            "policy in force"
        );
    }

    /// How many workloads the policy in force enforces, when a policy set
    /// with none would drop them: the policy this daemon put in force, or
    /// (none loaded yet) one adopted from the pins whose cgroup map is not
    /// empty. `None`: nothing would be opened.
    fn enforced_workloads(&self) -> Option<String> {
        match &self.current {
            Some(c) if !c.compiled.workloads.is_empty() => Some(format!(
                "the policy in force (generation {}) enforces {} workload(s)",
                c.generation,
                c.compiled.workloads.len()
            )),
            Some(_) => None,
            None => {
                let cgroups = self.dataplane.cgroups().count();
                match self.adopted_generation {
                    Some(generation) if cgroups > 0 => Some(format!(
                        "the policy adopted from an earlier daemon (generation {generation}) \
                         enforces workloads on {cgroups} cgroup(s)"
                    )),
                    _ => None,
                }
            }
        }
    }

    /// Put a candidate in force, or keep the running policy (and record
    /// why). `source` names it in `status` and errors.
    pub fn put_in_force(
        &mut self,
        trigger: Trigger,
        source: &Path,
        candidate: Result<Candidate, Vec<String>>,
        empty: EmptyPolicy,
    ) -> Result<Outcome, Vec<String>> {
        let result = candidate.and_then(|c| {
            if c.compiled.workloads.is_empty()
                && empty == EmptyPolicy::Refuse
                && let Some(enforced) = self.enforced_workloads()
            {
                let how = match trigger {
                    Trigger::Apply => "run `enforcer apply --allow-empty` to do that".to_owned(),
                    _ => format!(
                        "to enforce nothing, run `enforcer apply --allow-empty {}`",
                        source.display()
                    ),
                };
                return Err(vec![format!(
                    "{}: the policy set has no workload, while {enforced}: putting it in force \
                     would stop enforcing all of them; {how}",
                    source.display()
                )]);
            }
            let Candidate {
                sources,
                compiled,
                warnings,
            } = c;
            let hash = compiled.content_hash;
            self.install(Some(sources), compiled, source.to_path_buf())
                .map(|(generation, unchanged)| (generation, unchanged, hash, warnings))
        });
        match result {
            Ok((generation, unchanged, content_hash, warnings)) => {
                self.accept(trigger, generation, unchanged, &warnings);
                Ok(Outcome {
                    generation,
                    content_hash,
                    unchanged,
                    warnings,
                    rollback_at: self.pending.as_ref().map(|p| p.rollback_at),
                })
            }
            Err(errors) => Err(self.reject(trigger, source, errors)),
        }
    }

    /// Read, compile and put in force the directory `dir` (start, SIGHUP,
    /// file changes: always the configured directory, which only the
    /// operator can write).
    pub fn load(&mut self, trigger: Trigger, dir: &Path) -> Result<Outcome, Vec<String>> {
        let candidate = Candidate::from_dir(dir, SystemTime::now());
        self.put_in_force(trigger, dir, candidate, EmptyPolicy::Refuse)
    }

    /// `apply [--confirm D] [--allow-empty]` of a candidate compiled from
    /// what the client sent.
    pub fn apply(
        &mut self,
        source: &Path,
        candidate: Result<Candidate, Vec<String>>,
        confirm: Option<Duration>,
        empty: EmptyPolicy,
    ) -> Result<Outcome, Vec<String>> {
        let before = self.current.clone();
        let mut outcome = self.put_in_force(Trigger::Apply, source, candidate, empty)?;
        match confirm {
            Some(window) => {
                // A confirmation already pending keeps its rollback target:
                // the last policy somebody confirmed.
                let previous = match self.pending.take() {
                    Some(p) => p.previous,
                    None => before,
                };
                let rollback_at = SystemTime::now() + window;
                self.pending = Some(Pending {
                    deadline: Instant::now() + window,
                    rollback_at,
                    previous,
                });
                tracing::warn!(rollback_at = %rfc3339(rollback_at), "policy applied on probation: run `enforcer confirm` to keep it");
                outcome.rollback_at = Some(rollback_at);
            }
            None => {
                self.pending = None;
                outcome.rollback_at = None;
            }
        }
        Ok(outcome)
    }

    /// `confirm`: keep the policy on probation.
    pub fn confirm(&mut self) -> Result<u32, String> {
        match (self.pending.take(), &self.current) {
            (Some(_), Some(current)) => {
                tracing::info!(generation = current.generation, "policy confirmed");
                Ok(current.generation)
            }
            (Some(_), None) => Err("no policy in force".into()),
            (None, _) => Err("nothing to confirm: no `apply --confirm` is pending".into()),
        }
    }

    /// The confirmation window ran out: go back.
    fn rollback(&mut self) {
        let Some(pending) = self.pending.take() else {
            return;
        };
        match pending.previous {
            Some(previous) => {
                let Installed {
                    sources,
                    compiled,
                    source,
                    ..
                } = previous;
                let compiled = Arc::unwrap_or_clone(compiled);
                match self.install(sources, compiled, source.clone()) {
                    Ok((generation, unchanged)) => {
                        tracing::warn!(generation, "unconfirmed policy rolled back");
                        self.accept(Trigger::Rollback, generation, unchanged, &[]);
                    }
                    Err(errors) => {
                        let _ = self.reject(Trigger::Rollback, &source, errors);
                    }
                }
            }
            None => match self.dataplane.disable() {
                Ok(_) => {
                    tracing::warn!(
                        "unconfirmed policy rolled back: nothing is enforced, as before it"
                    );
                    self.current = None;
                    self.matcher = None;
                    self.resolution = Resolution::default();
                }
                Err(e) => tracing::error!(error = %e, "cannot roll back the unconfirmed policy"),
            },
        }
    }

    /// A rule's `until` passed: compile the same policy set again, so the
    /// expired rule stops matching even if the files changed since.
    fn expire(&mut self) {
        let Some(current) = &self.current else { return };
        let source = current.source.clone();
        // Kept whenever a rule has an `until`, which is what expires.
        let Some(sources) = current.sources.clone() else {
            tracing::error!("a rule expired but the policy's text was not kept");
            return;
        };
        let result = Candidate::compile(sources, SystemTime::now()).and_then(
            |Candidate {
                 sources,
                 compiled,
                 warnings,
             }| {
                self.install(Some(sources), compiled, source.clone())
                    .map(|r| (r, warnings))
            },
        );
        match result {
            Ok(((generation, unchanged), warnings)) => {
                self.accept(Trigger::Expiry, generation, unchanged, &warnings);
            }
            Err(errors) => {
                let _ = self.reject(Trigger::Expiry, &source, errors);
            }
        }
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

    /// Record in `BOUND_PORTS` the ports bound before the programs could
    /// see the `bind()` (services started before the daemon), so that local
    /// connections to them are judged against the receiving workload. Runs
    /// at start, on each full apply, on each cgroup change and every 30 s
    /// (services can start and stop without a cgroup change); failures are
    /// logged, since the kernel's own entries keep working.
    pub fn seed_bound_ports(&mut self) {
        let mount = match crate::cgroups::cgroup2_mount() {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list bound ports: no cgroup v2 mount");
                return;
            }
        };
        let known: std::collections::BTreeMap<(u8, u16), enforcer_common::BoundPort> =
            match self.dataplane.bound_ports() {
                Ok(entries) => entries
                    .into_iter()
                    .map(|(k, v)| ((k.protocol, k.port), v))
                    .collect(),
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the bound ports");
                    return;
                }
            };
        let scan = crate::cgroups::sockets::scan(&mount, |protocol, port| {
            known.contains_key(&(protocol, port))
        });
        let mut ports = scan.owners;
        // Seeded entries whose port is still bound stay (the `/proc`
        // fallback does not look their owners up again).
        ports.extend(
            known
                .iter()
                .filter(|(key, v)| v.cookie == 0 && scan.bound.contains(key))
                .map(|(&(protocol, port), v)| (protocol, port, v.cgroup_id)),
        );
        match self.dataplane.seed_bound_ports(&ports) {
            Ok(0) => {}
            Ok(added) => {
                tracing::info!(added, "ports bound before the daemon started recorded")
            }
            Err(e) => tracing::error!(error = %e, "cannot record the ports already bound"),
        }
    }

    /// Cgroups came or went: update the policy in force in place. The
    /// tracer registered the new ones at their creation already; this
    /// corrects what it could not know (a directory handed to another user
    /// after its creation, a cgroup past a quota or past the kernel's
    /// state capacity) and writes the states of cgroups it did not follow.
    pub fn on_tree(&mut self, update: TreeUpdate) {
        self.tree = update.tree;
        self.seed_bound_ports();
        let (Some(matcher), Some(current)) = (&self.matcher, &self.current) else {
            return;
        };
        let newer = matcher.resolve(&self.tree);
        let quota = self.settings.max_cgroups_per_workload as usize;
        let (wanted, refused) = to_resolved(&newer, &self.tree, &current.compiled, quota);
        let states = self.dataplane.name_key().map(|_| &newer.states);
        match self.dataplane.sync_cgroups(&wanted, states) {
            Ok(true) => tracing::info!(
                cgroups = wanted.len(),
                "cgroups of the policy in force updated"
            ),
            Ok(false) => {}
            Err(e) => tracing::error!(error = %e, "cannot update the cgroups of the policy"),
        }
        self.refused = refused;
        self.resolution = newer;
    }

    /// Handles of the counter maps for [`super::status`], which reads
    /// them without the engine.
    pub fn counter_reader(&self) -> crate::dataplane::Result<CounterReader> {
        self.dataplane.counter_reader()
    }

    /// The answer to `status`, from memory only: its counters (per
    /// workload, `lost_events`) are zero here and filled in by
    /// [`super::status`] from the maps, outside the engine's lock.
    pub fn status(&self) -> StatusReport {
        let mut not_enforced: Vec<String> =
            self.v1_conflicts.iter().map(ToString::to_string).collect();
        not_enforced.extend(self.registration_error.clone());
        let mut workloads = Vec::new();
        match &self.current {
            None => not_enforced.push(match self.adopted_generation {
                Some(generation) => match &self.last_rejection {
                    Some(rejection) => format!(
                        "the policy from {} was rejected ({}); the policy pinned by an earlier daemon \
                         (generation {generation}) is still in force (adopted), but this daemon cannot \
                         show it; fix the policy and reload",
                        rejection.source, rejection.trigger
                    ),
                    None => format!(
                        "no policy loaded: the policy pinned by an earlier daemon (generation \
                         {generation}) is still in force (adopted), but this daemon cannot show it; \
                         fix the policy and reload"
                    ),
                },
                None => "no policy in force: nothing is enforced".into(),
            }),
            Some(current) => {
                for w in &current.compiled.workloads {
                    let cgroups: Vec<String> = self
                        .resolution
                        .of_workload(w.identity)
                        .map(|c| c.path.clone())
                        .collect();
                    if cgroups.is_empty() {
                        not_enforced.push(format!(
                            "workload {}: no cgroup under {} matches {}",
                            w.name,
                            self.root.display(),
                            selector_text(&w.selector)
                        ));
                    }
                    workloads.push(WorkloadStatus {
                        name: w.name.clone(),
                        identity: w.identity,
                        mode: w.mode_name().into(),
                        selector: selector_text(&w.selector),
                        cgroups,
                        counters: VerdictCounters::default(),
                    });
                }
            }
        }
        if let Some(current) = &self.current {
            for (&workload, &count) in &self.refused {
                not_enforced.push(format!(
                    "workload {}: {count} cgroups past its quota of {} are not registered (max_cgroups_per_workload)",
                    current
                        .compiled
                        .workload(workload)
                        .map_or("?", |w| w.name.as_str()),
                    self.settings.max_cgroups_per_workload
                ));
            }
        }
        if let Some(matcher) = &self.matcher {
            for (workload, user) in matcher.automaton().unknown_users() {
                not_enforced.push(format!(
                    "workload {workload}: user {user} does not exist on this host; its unit matches nothing"
                ));
            }
        }
        for a in &self.resolution.ambiguities {
            not_enforced.push(format!(
                "cgroup {} is matched by several workloads ({}); only {} applies",
                a.path,
                a.workloads.join(", "),
                a.workloads[0]
            ));
        }
        StatusReport {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").into(),
            started_at: rfc3339(self.started_at),
            policy: self.current.as_ref().map(|c| PolicyStatus {
                generation: u64::from(c.generation),
                content_hash: format!("{:016x}", c.compiled.content_hash),
                applied_at: rfc3339(c.applied_at),
                source: c.source.display().to_string(),
                next_expiry: c.compiled.next_expiry.map(rfc3339),
                rollback_at: self.pending.as_ref().map(|p| rfc3339(p.rollback_at)),
            }),
            last_rejection: self.last_rejection.clone(),
            cgroup_root: self.root.display().to_string(),
            unmanaged: self.settings.unmanaged.as_str().into(),
            failsafe: self.settings.failsafe.to_string(),
            workloads,
            lost_events: 0,
            reloads_ok: self.reloads_ok,
            reloads_failed: self.reloads_failed,
            not_enforced,
            // The status board's, filled in outside the engine.
            integrity: Default::default(),
        }
    }
}
