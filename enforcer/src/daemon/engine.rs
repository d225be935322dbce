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

use enforcer_common::{Identity, SlotPolicy};

use super::flows::FlowHistory;
use super::state::{Kept, SavedPolicy, StateDir};
use crate::api::proto::{
    CgroupDiscovery, PolicyStatus, Rejection, SkippedCgroup, SkippedCgroups, StatusReport,
    VerdictCounters, WorkloadStatus,
};
use crate::cgroups::resolve::{KernelEntries, kernel_entries};
use crate::cgroups::{
    CgroupTree, Discovery, DiscoveryStatus, Matcher, Resolution, SkipReason, TreeUpdate,
    V1Conflict, uid_of_user,
};
use crate::compile::compiled::{CgroupSelector, CompiledPolicy};
use crate::config::Settings;
use crate::dataplane::{CounterReader, Dataplane, HostAddrs, ResolvedCgroup, SlotContent};
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

/// What is in force: what a rollback returns to.
#[derive(Clone)]
enum InForce {
    Compiled(Installed),
    Kernel(Arc<KernelPolicy>),
    /// Nothing at all is enforced.
    Nothing,
}

/// A rollback that failed, retried until it succeeds.
struct RollbackFailure {
    attempts: u32,
    time: SystemTime,
    error: String,
    next_attempt: SystemTime,
}

/// An `apply --confirm` waiting for `confirm`.
struct Pending {
    /// When to roll back (or, after a failed rollback, to try again).
    deadline: Instant,
    rollback_at: SystemTime,
    /// What to go back to: what was in force before the first
    /// `apply --confirm` of this probation.
    previous: InForce,
    failure: Option<RollbackFailure>,
}

/// The longest wait between two attempts of a failing rollback.
const ROLLBACK_RETRY_MAX: Duration = Duration::from_secs(30);

/// The wait before the next attempt after `attempts` failed ones: 1 s,
/// doubling, at most [`ROLLBACK_RETRY_MAX`].
fn rollback_retry_after(attempts: u32) -> Duration {
    Duration::from_secs(1u64 << attempts.saturating_sub(1).min(5)).min(ROLLBACK_RETRY_MAX)
}

/// The daemon cannot start: the configured policy is invalid and nothing
/// else can be put in force. Starting would report ready with nothing
/// enforced.
#[derive(Debug, thiserror::Error)]
#[error(
    "the policy in {} is invalid ({first_error}) and no last good policy can be put in force instead ({why}); \
     refusing to start with nothing enforced: fix the policy (`enforcer check {}`) and start again",
    policies.display(),
    policies.display()
)]
pub struct NothingToEnforce {
    pub policies: PathBuf,
    pub first_error: String,
    pub why: String,
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
    state_error: Option<String>,
    /// The files of the policy last installed, until saved.
    unsaved: Option<Sources>,
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

/// `status`'s view of discovery.
fn discovery_report(status: DiscoveryStatus) -> CgroupDiscovery {
    let mut skipped = SkippedCgroups::default();
    for (reason, n) in status.skipped {
        let field = match reason {
            SkipReason::Unreadable => &mut skipped.unreadable,
            SkipReason::Vanished => &mut skipped.vanished,
            SkipReason::DepthLimit => &mut skipped.depth_limit,
            SkipReason::SizeLimit => &mut skipped.size_limit,
            SkipReason::NotUtf8 => &mut skipped.not_utf8,
            SkipReason::Error => &mut skipped.error,
        };
        *field = n;
    }
    CgroupDiscovery {
        scanned_at: status.scanned_at.map(rfc3339),
        cgroups: status.cgroups as u64,
        skipped,
        skipped_paths: status
            .named
            .into_iter()
            .map(|s| SkippedCgroup {
                path: s.path,
                reason: s.reason.as_str().into(),
            })
            .collect(),
        unwatched: status.unwatched as u64,
        rescans_failed: status.rescans_failed,
        last_error: status.last_error,
    }
}

/// This host's addresses, or why they cannot be listed (with the cause:
/// the data plane's error names only what failed).
fn list_host_addrs() -> Result<HostAddrs, String> {
    HostAddrs::from_system().map_err(|e| match std::error::Error::source(&e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    })
}

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

    /// One line for systemd's STATUS= (shown by `systemctl status`): what
    /// is enforced, and the last rejection while it stands.
    pub fn summary(&self) -> String {
        let mut line = match &self.current {
            Some(c) => {
                let origin = match c.origin {
                    None => String::new(),
                    Some(origin) => format!(
                        " of the last good policy of {} ({} from {})",
                        c.source.display(),
                        origin.as_str(),
                        self.last_good_file()
                    ),
                };
                format!(
                    "enforcing generation {} ({:016x}){origin}: {} workloads, {} cgroups",
                    c.generation,
                    c.compiled.content_hash,
                    c.compiled.workloads.len(),
                    self.resolution.cgroups.len()
                )
            }
            None => match &self.kernel_policy {
                // The kernel keeps the pinned policy of an earlier daemon.
                Some(kernel) => format!(
                    "enforcing the adopted policy of an earlier daemon ({}); no new policy loaded",
                    self.describe_kernel_policy(kernel)
                ),
                None => "no policy in force".into(),
            },
        };
        if let Some(failure) = self.pending.as_ref().and_then(|p| p.failure.as_ref()) {
            line.push_str(&format!(
                "; ROLLBACK FAILING ({} attempts): {}",
                failure.attempts, failure.error
            ));
        }
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

    /// Put a compiled policy in force (or find it already is: same policy,
    /// cgroups and host addresses).
    fn install(
        &mut self,
        sources: Option<Sources>,
        compiled: impl Into<Arc<CompiledPolicy>>,
        source: PathBuf,
    ) -> Result<(u32, bool), Vec<String>> {
        let compiled: Arc<CompiledPolicy> = compiled.into();
        // Saved by `accept` once the policy is in force.
        let files = sources.clone();
        let sources = sources.filter(|_| compiled.next_expiry.is_some());
        let matcher = Matcher::new(&compiled.workloads, uid_of_user)
            .map_err(|e| vec![format!("the data plane refused the policy: {e}")])?;
        let resolution = matcher.resolve(&self.tree);
        // The host's addresses can change between loads (DHCP, new links);
        // they are also followed as they change (`refresh_host_addrs`).
        let host = list_host_addrs().map_err(|e| vec![e])?;
        if let Some(current) = &mut self.current
            && current.compiled.content_hash == compiled.content_hash
            && *current.compiled == *compiled
            && resolution == self.resolution
            && host == self.host
        {
            current.source = source;
            current.sources = sources;
            current.origin = None;
            self.unsaved = files;
            return Ok((current.generation, true));
        }
        let (generation, resolution) = self
            .swap_in(&compiled, &matcher, resolution, &host)
            .map_err(|e| vec![format!("the data plane refused the policy: {e}")])?;
        self.seed_bound_ports();
        for a in &resolution.ambiguities {
            tracing::warn!(cgroup = %a.path, workloads = ?a.workloads, "several workloads match one cgroup; the first wins");
        }
        if let Ok(mut slot) = self.event_policy.write() {
            *slot = Some(Arc::clone(&compiled));
        }
        self.matcher = Some(matcher);
        self.resolution = resolution;
        self.host = host;
        self.kernel_policy = None;
        self.unsaved = files;
        self.current = Some(Installed {
            sources,
            compiled,
            source,
            generation,
            applied_at: SystemTime::now(),
            origin: None,
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
        self.reloads_ok += 1;
        self.last_rejection = None;
        for w in warnings {
            tracing::warn!("{w}");
        }
        let hash = self.current.as_ref().map_or_else(
            || {
                self.kernel_policy
                    .as_ref()
                    .and_then(|k| k.stamp)
                    .map_or(0, |s| s.content_hash)
            },
            |c| c.compiled.content_hash,
        );
        tracing::info!(
            trigger = trigger.as_str(),
            generation,
            content_hash = format!("{hash:016x}"),
            unchanged,
            cgroups = self.resolution.cgroups.len(),
            "policy in force"
        );
        self.save_in_force();
    }

    /// How many workloads the policy in force enforces, when a policy set
    /// with none would drop them: the policy this daemon put in force, or
    /// (none compiled) one adopted from the pins whose cgroup map is not
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
                let enforcing = self.dataplane.config().is_ok_and(|c| c.enabled != 0);
                (enforcing && cgroups > 0).then(|| {
                    let generation = self
                        .dataplane
                        .config()
                        .map_or_else(|_| "unknown".into(), |c| c.generation.to_string());
                    format!(
                        "the policy adopted from an earlier daemon (generation {generation}) \
                         enforces workloads on {cgroups} cgroup(s)"
                    )
                })
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

    /// Puts a policy in force at start, before the programs are attached:
    /// the configured one when it is valid (an empty or missing directory
    /// is: nothing is enforced). When it is invalid (rejected and logged):
    ///
    /// - the kernel enforces a policy (pins of an earlier daemon) whose
    ///   content hash is the state directory's last good one: that one,
    ///   compiled from the saved text, adopted (status says so);
    /// - the kernel enforces another policy, or the saved one is unusable:
    ///   the kernel's is left as it is and read back, so that a rollback
    ///   can return to it;
    /// - the kernel enforces nothing (no pins: after a reboot): the last
    ///   good policy, restored; without one, [`NothingToEnforce`].
    pub fn start(&mut self) -> Result<(), NothingToEnforce> {
        match StateDir::open(&self.settings.state_dir) {
            Ok(state) => self.state = Some(state),
            Err(e) => {
                tracing::error!("the state directory cannot be used; no policy is saved: {e}");
                self.state_error = Some(e.to_string());
            }
        }
        let dir = self.settings.policies.clone();
        let loaded = if dir.exists() {
            self.load(Trigger::Startup, &dir)
        } else {
            // The contract: a missing policy directory is valid, nothing is
            // enforced (as with an empty one, which does not replace
            // workloads adopted from the pins either).
            tracing::info!(policies = %dir.display(), "the policy directory does not exist: nothing is enforced");
            let empty = Candidate::compile(Sources::from(Vec::new()), SystemTime::now());
            self.put_in_force(Trigger::Startup, &dir, empty, EmptyPolicy::Refuse)
        };
        let errors = match loaded {
            Ok(_) => return Ok(()),
            Err(errors) => errors,
        };
        tracing::error!(
            count = errors.len(),
            "the policy at startup is invalid; fix it and send SIGHUP"
        );
        let enforcing = self.dataplane.config().is_ok_and(|c| c.enabled != 0);
        let last_good = self.last_good();
        if enforcing {
            let in_kernel = self.dataplane.policy_in_force().unwrap_or_else(|e| {
                tracing::error!("cannot read which policy the kernel enforces: {e}");
                None
            });
            match last_good {
                Ok((saved, compiled))
                    if in_kernel.is_some_and(|k| k.content_hash == saved.content_hash) =>
                {
                    match self.put_last_good(&saved, compiled, Origin::Adopted) {
                        Ok(()) => return Ok(()),
                        Err(e) => tracing::error!("cannot adopt the last good policy: {e}"),
                    }
                }
                Ok((saved, _)) => tracing::warn!(
                    saved = format!("{:016x}", saved.content_hash),
                    in_kernel = in_kernel.map(|k| format!("{:016x}", k.content_hash)),
                    "the kernel enforces another policy than the last good one saved; it stays as it is"
                ),
                Err(why) => tracing::warn!("no last good policy to adopt: {why}"),
            }
            self.adopt_kernel_policy(in_kernel);
            return Ok(());
        }
        let refused = |why: String| NothingToEnforce {
            policies: dir.clone(),
            first_error: errors.first().cloned().unwrap_or_default(),
            why,
        };
        let (saved, compiled) = last_good.map_err(refused)?;
        self.put_last_good(&saved, compiled, Origin::Restored)
            .map_err(refused)
    }

    /// The state directory's last good policy, checked and compiled as of
    /// now; why there is none otherwise (errors are logged).
    fn last_good(&self) -> Result<(SavedPolicy, CompiledPolicy), String> {
        let Some(state) = &self.state else {
            return Err(format!(
                "the state directory cannot be used: {}",
                self.state_error.as_deref().unwrap_or("unknown error")
            ));
        };
        let path = state.path(Kept::LastGood);
        let result = state.load(Kept::LastGood).and_then(|saved| match saved {
            Some(saved) => saved
                .compile(&path, SystemTime::now())
                .map(|(compiled, _)| Some((saved, compiled))),
            None => Ok(None),
        });
        match result {
            Ok(Some(found)) => Ok(found),
            Ok(None) => Err(format!("{} does not exist", path.display())),
            Err(e) => {
                tracing::error!("the saved policy is ignored: {e}");
                Err(format!("{e}; ignored"))
            }
        }
    }

    /// Puts the saved last good policy in force at start, the rejection of
    /// the configured one standing.
    fn put_last_good(
        &mut self,
        saved: &SavedPolicy,
        compiled: CompiledPolicy,
        origin: Origin,
    ) -> Result<(), String> {
        let (generation, _) = self
            .install(None, compiled, saved.source.clone())
            .map_err(|errors| errors.join("; "))?;
        let Some(current) = &mut self.current else {
            return Err("no policy in force after installing it".into());
        };
        // Kept in memory as any policy is (its text only with an `until`);
        // the state file already holds it.
        if current.compiled.next_expiry.is_some() {
            current.sources = Some(saved.files.clone().into());
        }
        current.origin = Some(origin);
        if origin == Origin::Adopted {
            current.applied_at = saved.applied_at;
        }
        tracing::warn!(
            generation,
            content_hash = format!("{:016x}", saved.content_hash),
            source = %saved.source.display(),
            applied_at = %rfc3339(saved.applied_at),
            "the configured policy is invalid: the last good policy is in force ({})",
            origin.as_str()
        );
        Ok(())
    }

    /// Leaves the kernel's policy as it is and reads it back, so that a
    /// rollback can return to it and this host's addresses stay current
    /// in it.
    fn adopt_kernel_policy(&mut self, stamp: Option<SlotPolicy>) {
        let slot = self.dataplane.active_slot_index();
        let base = match slot.and_then(|slot| self.dataplane.read_slot(slot)) {
            Ok(content) => {
                self.host = content.host_addrs();
                Some(content.without_host_routes())
            }
            Err(e) => {
                tracing::error!(
                    "cannot read the policy in force back from the kernel; it stays in force, but no rollback can return to it: {e}"
                );
                None
            }
        };
        self.kernel_policy = Some(Arc::new(KernelPolicy { base, stamp }));
    }

    /// This host's addresses may have changed (a netlink notification, or
    /// the periodic check): when they did, put them in force, as the
    /// `host` entries of the address tries of the policy in force, through
    /// the atomic swap (a new generation: flows and cached verdicts are
    /// judged again). Returns whether anything was written.
    pub fn refresh_host_addrs(&mut self) -> bool {
        let host = match list_host_addrs() {
            Ok(host) => host,
            Err(e) => {
                tracing::error!("{e}");
                return false;
            }
        };
        if host == self.host {
            return false;
        }
        let written =
            if let (Some(current), Some(matcher)) = (self.current.clone(), self.matcher.clone()) {
                let resolution = matcher.resolve(&self.tree);
                Some(
                    self.swap_in(&current.compiled, &matcher, resolution, &host)
                        .map(|(generation, resolution)| {
                            self.resolution = resolution;
                            generation
                        }),
                )
            } else if let Some(kernel) = &self.kernel_policy
                && let Some(base) = &kernel.base
            {
                Some(self.dataplane.apply_content(
                    base.clone().with_host_routes(&host),
                    kernel.stamp.unwrap_or_default(),
                ))
            } else {
                // Nothing in force: the next install reads them.
                None
            };
        let added: Vec<String> = host
            .addrs
            .iter()
            .filter(|a| !self.host.addrs.contains(a))
            .map(ToString::to_string)
            .collect();
        let removed: Vec<String> = self
            .host
            .addrs
            .iter()
            .filter(|a| !host.addrs.contains(a))
            .map(ToString::to_string)
            .collect();
        match written {
            Some(Ok(generation)) => {
                if let Some(current) = &mut self.current {
                    current.generation = generation;
                }
                tracing::info!(
                    generation,
                    ?added,
                    ?removed,
                    "this host's addresses changed: put in force"
                );
            }
            Some(Err(e)) => {
                tracing::error!(
                    ?added,
                    ?removed,
                    "cannot put this host's new addresses in force; retried at the next change or check: {e}"
                );
                return false;
            }
            None => tracing::info!(?added, ?removed, "this host's addresses changed"),
        }
        self.host = host;
        written.is_some()
    }

    /// The kernel policy's generation and, when recorded, its hash and time.
    fn describe_kernel_policy(&self, kernel: &KernelPolicy) -> String {
        let generation = self
            .dataplane
            .config()
            .map_or_else(|_| "unknown".into(), |c| c.generation.to_string());
        match kernel.stamp {
            Some(stamp) => format!(
                "generation {generation}, content hash {:016x}, applied at {}",
                stamp.content_hash,
                rfc3339(std::time::UNIX_EPOCH + Duration::from_millis(stamp.applied_unix_ms))
            ),
            None => format!("generation {generation}"),
        }
    }

    /// Where the last good policy is saved, for messages.
    fn last_good_file(&self) -> String {
        self.state.as_ref().map_or_else(
            || "the state directory".into(),
            |s| s.path(Kept::LastGood).display().to_string(),
        )
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
        // The probation starts with the load, so that the policy it puts in
        // force is saved as on probation, not as the last good one. A
        // probation already pending keeps its rollback target: what was in
        // force before the first `apply --confirm`.
        let earlier = self.pending.take();
        if let Some(window) = confirm {
            let previous = match &earlier {
                Some(p) => p.previous.clone(),
                None => self.in_force(),
            };
            if let InForce::Kernel(kernel) = &previous
                && kernel.base.is_none()
            {
                self.pending = earlier;
                return Err(self.reject(
                    Trigger::Apply,
                    source,
                    vec![
                        "`apply --confirm` could not roll back: the policy in force was adopted from the kernel but could not be read back at start; apply without --confirm".into(),
                    ],
                ));
            }
            let rollback_at = SystemTime::now() + window;
            self.pending = Some(Pending {
                deadline: Instant::now() + window,
                rollback_at,
                previous,
                failure: None,
            });
        }
        match self.put_in_force(Trigger::Apply, source, candidate, empty) {
            Ok(mut outcome) => {
                outcome.rollback_at = self.pending.as_ref().map(|p| p.rollback_at);
                if let Some(rollback_at) = outcome.rollback_at {
                    tracing::warn!(rollback_at = %rfc3339(rollback_at), "policy applied on probation: run `enforcer confirm` to keep it");
                }
                Ok(outcome)
            }
            Err(errors) => {
                self.pending = earlier;
                Err(errors)
            }
        }
    }

    /// `confirm`: keep the policy on probation.
    pub fn confirm(&mut self) -> Result<u32, String> {
        match (self.pending.take(), &self.current) {
            (Some(_), Some(current)) => {
                let generation = current.generation;
                tracing::info!(generation, "policy confirmed");
                if let Some(state) = &self.state {
                    match state.confirm_probation() {
                        Ok(true) => {}
                        Ok(false) => tracing::error!(
                            "the confirmed policy was not saved when it was applied; {} still holds the one before it",
                            state.path(Kept::LastGood).display()
                        ),
                        Err(e) => {
                            tracing::error!(
                                "cannot save the confirmed policy as the last good one: {e}"
                            )
                        }
                    }
                }
                Ok(generation)
            }
            (Some(_), None) => Err("no policy in force".into()),
            (None, _) => Err("nothing to confirm: no `apply --confirm` is pending".into()),
        }
    }

    /// What is in force now.
    fn in_force(&self) -> InForce {
        match (&self.current, &self.kernel_policy) {
            (Some(current), _) => InForce::Compiled(current.clone()),
            (None, Some(kernel)) => InForce::Kernel(Arc::clone(kernel)),
            (None, None) => InForce::Nothing,
        }
    }

    /// The confirmation window ran out (or a failed rollback is due again):
    /// go back to what was in force before the `apply --confirm`. A failure
    /// leaves the unconfirmed policy in force and is retried after
    /// [`rollback_retry_after`], until it succeeds or a new policy (or a
    /// `confirm`) makes it moot.
    fn rollback(&mut self) {
        let Some(mut pending) = self.pending.take() else {
            return;
        };
        match self.restore(&pending.previous) {
            Ok(generation) => {
                let attempts = pending.failure.map_or(1, |f| f.attempts + 1);
                tracing::warn!(generation, attempts, "unconfirmed policy rolled back");
            }
            Err(error) => {
                let attempts = pending.failure.as_ref().map_or(1, |f| f.attempts + 1);
                let retry_in = rollback_retry_after(attempts);
                let now = SystemTime::now();
                tracing::error!(
                    attempts,
                    retry_in = ?retry_in,
                    "cannot roll back the unconfirmed policy, which stays in force; retrying: {error}"
                );
                pending.deadline = Instant::now() + retry_in;
                pending.failure = Some(RollbackFailure {
                    attempts,
                    time: now,
                    error,
                    next_attempt: now + retry_in,
                });
                self.pending = Some(pending);
            }
        }
    }

    /// Puts `target` in force again; the new generation.
    fn restore(&mut self, target: &InForce) -> Result<u32, String> {
        match target {
            InForce::Compiled(previous) => {
                let (generation, unchanged) = self
                    .install(
                        previous.sources.clone(),
                        Arc::clone(&previous.compiled),
                        previous.source.clone(),
                    )
                    .map_err(|errors| errors.join("; "))?;
                if let Some(current) = &mut self.current {
                    current.origin = previous.origin;
                }
                self.accept(Trigger::Rollback, generation, unchanged, &[]);
                Ok(generation)
            }
            InForce::Kernel(kernel) => {
                let Some(base) = &kernel.base else {
                    return Err("the adopted policy could not be read back at start".into());
                };
                let host = list_host_addrs()?;
                let generation = self
                    .dataplane
                    .apply_content(
                        base.clone().with_host_routes(&host),
                        kernel.stamp.unwrap_or_default(),
                    )
                    .map_err(|e| format!("the data plane refused the adopted policy: {e}"))?;
                self.drop_compiled();
                self.host = host;
                self.kernel_policy = Some(Arc::clone(kernel));
                self.accept(Trigger::Rollback, generation, false, &[]);
                Ok(generation)
            }
            InForce::Nothing => {
                let generation = self
                    .dataplane
                    .disable()
                    .map_err(|e| format!("cannot disable enforcement: {e}"))?;
                tracing::warn!("nothing is enforced, as before the unconfirmed policy");
                self.drop_compiled();
                self.accept(Trigger::Rollback, generation, false, &[]);
                Ok(generation)
            }
        }
    }

    /// Forgets the compiled policy in force (another kind of policy, or
    /// none, is now).
    fn drop_compiled(&mut self) {
        self.current = None;
        self.matcher = None;
        self.resolution = Resolution::default();
        self.unsaved = None;
        if let Ok(mut slot) = self.event_policy.write() {
            *slot = None;
        }
    }

    /// Saves the policy just accepted into force: as the last good one, or,
    /// during a probation, as the one on probation. Without its files in
    /// memory (a rollback to a policy without `until`), the last good file
    /// already holds it.
    fn save_in_force(&mut self) {
        let Some(state) = &self.state else { return };
        let on_probation = self.pending.is_some();
        let result = match (self.unsaved.take(), &self.current) {
            (Some(files), Some(current)) => {
                let saved = SavedPolicy {
                    content_hash: current.compiled.content_hash,
                    applied_at: current.applied_at,
                    next_expiry: current.compiled.next_expiry,
                    source: current.source.clone(),
                    files: files.to_vec(),
                };
                if on_probation {
                    state.save(Kept::Probation, &saved)
                } else {
                    state
                        .save(Kept::LastGood, &saved)
                        .and_then(|()| state.remove(Kept::Probation))
                }
            }
            _ if !on_probation => state.remove(Kept::Probation),
            _ => Ok(()),
        };
        if let Err(e) = result {
            tracing::error!(
                "cannot save the policy in force; a restart or reboot with an invalid policy cannot put it back: {e}"
            );
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
        // The scan sees this namespace's sockets; the kernel keeps every
        // namespace's apart.
        let netns = match crate::dataplane::netns_cookie() {
            Ok(cookie) => cookie,
            Err(e) => {
                tracing::error!(error = %e, "cannot record the ports already bound");
                return;
            }
        };
        let known: std::collections::BTreeMap<(u8, u16), enforcer_common::BoundPort> =
            match self.dataplane.bound_ports() {
                Ok(entries) => entries
                    .into_iter()
                    .filter(|(k, _)| k.netns == netns)
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
        match self.dataplane.seed_bound_ports(netns, &ports) {
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
            None => not_enforced.push(match &self.kernel_policy {
                Some(kernel) => {
                    let kernel = self.describe_kernel_policy(kernel);
                    match &self.last_rejection {
                        Some(rejection) => format!(
                            "the policy from {} was rejected ({}); the policy pinned by an earlier daemon \
                             ({kernel}) is still in force (adopted), but this daemon cannot \
                             show it; fix the policy and reload",
                            rejection.source, rejection.trigger
                        ),
                        None => format!(
                            "no policy loaded: the policy pinned by an earlier daemon ({kernel}) \
                             is still in force (adopted), but this daemon cannot show it; \
                             fix the policy and reload"
                        ),
                    }
                }
                None => "no policy in force: nothing is enforced".into(),
            }),
            Some(current) => {
                if let Some(origin) = current.origin {
                    not_enforced.push(format!(
                        "the policy from {} was rejected at start; the last good policy \
                         (content hash {:016x}, applied at {}) is in force instead, {} from {}; \
                         fix the policy and reload",
                        current.source.display(),
                        current.compiled.content_hash,
                        rfc3339(current.applied_at),
                        origin.as_str(),
                        self.last_good_file()
                    ));
                }
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
        if let Some(failure) = self.pending.as_ref().and_then(|p| p.failure.as_ref()) {
            not_enforced.push(format!(
                "rollback failed: the unconfirmed policy is still in force, not the one before it; \
                 attempt {} at {} failed: {}; next attempt at {}",
                failure.attempts,
                rfc3339(failure.time),
                failure.error,
                rfc3339(failure.next_attempt)
            ));
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
                origin: c.origin.map(|o| o.as_str().into()),
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
            cgroup_discovery: discovery_report(self.discovery.status()),
            // The counters are the status board's, read outside the engine.
            cgroup_registration: crate::api::proto::CgroupRegistration {
                at_creation: self.registration_error.is_none(),
                ..Default::default()
            },
            // The status board's, filled in outside the engine.
            integrity: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_rollback_is_retried_sooner_first_then_every_half_minute() {
        let waits: Vec<u64> = (1..=8)
            .map(|attempts| rollback_retry_after(attempts).as_secs())
            .collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(rollback_retry_after(u32::MAX), ROLLBACK_RETRY_MAX);
    }

    /// The reasons discovery counts and the keys `status --json` and the
    /// metrics show are the same names.
    #[test]
    fn every_skip_reason_reaches_status_under_its_own_name() {
        for (i, reason) in SkipReason::ALL.into_iter().enumerate() {
            let count = 10 + i as u64;
            let report = discovery_report(DiscoveryStatus {
                skipped: vec![(reason, count)],
                ..DiscoveryStatus::default()
            });
            let shown: Vec<_> = report
                .skipped
                .by_reason()
                .into_iter()
                .filter(|&(_, n)| n > 0)
                .collect();
            assert_eq!(shown, [(reason.as_str(), count)]);
        }
    }
}
