//! Putting a policy in force: one path for every trigger (start, SIGHUP,
//! file changes, `apply`, `until` expiry, rollback), which either swaps
//! the compiled policy in atomically or leaves the running one in force
//! and records why; and saving what is accepted into the state directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use super::host_addrs::list_host_addrs;
use super::{Candidate, EmptyPolicy, Engine, EngineError, Installed, Outcome, Sources, Trigger};
use crate::api::proto::Rejection;
use crate::cgroups::{CgroupTree, Matcher, Resolution, uid_of_user};
use crate::compile::CompiledPolicy;
use crate::daemon::state::{Kept, SavedPolicy};
use crate::dataplane::{HostAddrs, ResolvedCgroup};
use crate::rfc3339::format_millis as rfc3339;

/// Passes over the cgroup tree while a policy is staged, at most: a pass
/// finds the cgroups created since the one before, which the tracer may
/// have matched with states not yet written.
const STAGING_PASSES: usize = 4;

/// The refusal of a policy set with no workload while `enforced` (what is
/// enforced now) would be dropped; `how` to do it anyway depends on the
/// trigger (an `apply` names no directory the operator did not type).
pub(super) fn empty_policy_refusal(trigger: Trigger, dir: &Path, enforced: String) -> EngineError {
    let how = match trigger {
        Trigger::Apply => "run `enforcer apply --allow-empty` to do that".to_owned(),
        _ => format!(
            "to enforce nothing, run `enforcer apply --allow-empty {}`",
            dir.display()
        ),
    };
    EngineError::EmptyPolicyRefused {
        dir: dir.to_path_buf(),
        enforced,
        how,
    }
}

impl Engine {
    /// Put a compiled policy in force (or find it already is: same policy,
    /// cgroups and host addresses). The generation, and whether nothing
    /// was written.
    pub(super) fn install(
        &mut self,
        sources: Option<Sources>,
        compiled: impl Into<Arc<CompiledPolicy>>,
        source: PathBuf,
    ) -> Result<(u32, bool), EngineError> {
        let compiled: Arc<CompiledPolicy> = compiled.into();
        // Saved by `accept` once the policy is in force.
        let files = sources.clone();
        let sources = sources.filter(|_| compiled.next_expiry.is_some());
        let matcher = Matcher::new(&compiled.workloads, uid_of_user)
            .map_err(EngineError::UnableToMatchCgroups)?;
        let resolution = matcher.resolve(&self.tree);
        // The host's addresses can change between loads (DHCP, new links);
        // they are also followed as they change (`refresh_host_addrs`).
        let host = list_host_addrs()?;
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
            .map_err(EngineError::UnableToWritePolicy)?;
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
    pub(super) fn swap_in(
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
            let (cgroups, refused) =
                ResolvedCgroup::of_resolution(&resolution, &self.tree, compiled, quota);
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

    /// Records a rejection (logged, counted, shown by `status`) and hands
    /// the error back.
    pub(super) fn reject(
        &mut self,
        trigger: Trigger,
        source: &Path,
        error: EngineError,
    ) -> EngineError {
        self.reloads_failed += 1;
        let errors = error.messages();
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
            errors,
        });
        error
    }

    /// Records a policy put in force (logged, counted, saved).
    pub(super) fn accept(
        &mut self,
        trigger: Trigger,
        generation: u32,
        unchanged: bool,
        warnings: &[String],
    ) {
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
        candidate: Result<Candidate, EngineError>,
        empty: EmptyPolicy,
    ) -> Result<Outcome, EngineError> {
        let result = candidate.and_then(|c| {
            if c.compiled.workloads.is_empty()
                && empty == EmptyPolicy::Refuse
                && let Some(enforced) = self.enforced_workloads()
            {
                return Err(empty_policy_refusal(trigger, source, enforced));
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
            Err(error) => Err(self.reject(trigger, source, error)),
        }
    }

    /// Read, compile and put in force the directory `dir` (start, SIGHUP,
    /// file changes: always the configured directory, which only the
    /// operator can write).
    pub fn load(&mut self, trigger: Trigger, dir: &Path) -> Result<Outcome, EngineError> {
        let candidate = Candidate::from_dir(dir, SystemTime::now());
        self.put_in_force(trigger, dir, candidate, EmptyPolicy::Refuse)
    }

    /// A rule's `until` passed: compile the same policy set again, so the
    /// expired rule stops matching even if the files changed since.
    pub(super) fn expire(&mut self) {
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
            Err(error) => {
                let _ = self.reject(Trigger::Expiry, &source, error);
            }
        }
    }

    /// Forgets the compiled policy in force (another kind of policy, or
    /// none, is now).
    pub(super) fn drop_compiled(&mut self) {
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
}
