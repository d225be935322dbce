//! What the engine shows: the answer to `status` (from memory, and the
//! data plane's configuration; the counters are read without the engine,
//! see `daemon/status.rs`) and systemd's `STATUS=` line.

use std::time::{Duration, UNIX_EPOCH};

use enforcer_common::config::SlotPolicy;

use super::{Engine, KernelPolicy, with_cause};
use crate::api::proto::{
    CgroupDiscovery, CgroupRegistration, PolicyStatus, Rejection, SkippedCgroup, SkippedCgroups,
    StatusReport, VerdictCounters, WorkloadStatus,
};
use crate::cgroups::{DiscoveryStatus, SkipReason};
use crate::daemon::state::Kept;
use crate::rfc3339::format_millis as rfc3339;

/// `status`'s view of discovery.
pub(super) fn discovery_report(status: DiscoveryStatus) -> CgroupDiscovery {
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

/// A policy adopted from the kernel: its generation (`None`: unreadable)
/// and, when recorded, its hash and time.
pub(super) fn describe_kernel_policy(generation: Option<u32>, stamp: Option<SlotPolicy>) -> String {
    let generation = generation.map_or_else(|| "unknown".into(), |g| g.to_string());
    match stamp {
        Some(stamp) => format!(
            "generation {generation}, content hash {:016x}, applied at {}",
            stamp.content_hash,
            rfc3339(UNIX_EPOCH + Duration::from_millis(stamp.applied_unix_ms))
        ),
        None => format!("generation {generation}"),
    }
}

/// The `not_enforced` line of a kernel policy adopted without a compiled
/// form (`described` by [`describe_kernel_policy`]).
pub(super) fn adopted_kernel_policy_problem(
    described: &str,
    rejection: Option<&Rejection>,
) -> String {
    match rejection {
        Some(rejection) => format!(
            "the policy from {} was rejected ({}); the policy pinned by an earlier daemon \
             ({described}) is still in force (adopted), but this daemon cannot \
             show it; fix the policy and reload",
            rejection.source, rejection.trigger
        ),
        None => format!(
            "no policy loaded: the policy pinned by an earlier daemon ({described}) \
             is still in force (adopted), but this daemon cannot show it; \
             fix the policy and reload"
        ),
    }
}

/// The end of the `STATUS=` line while a rejection stands: its first error
/// and how many more.
pub(super) fn rejection_suffix(rejection: &Rejection) -> String {
    let first = rejection.errors.first().map_or("", String::as_str);
    let more = rejection.errors.len().saturating_sub(1);
    let mut suffix = format!("; REJECTED ({}): {first}", rejection.trigger);
    if more > 0 {
        suffix.push_str(&format!(" (+{more} more)"));
    }
    suffix
}

impl Engine {
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
                    self.kernel_policy_described(kernel, &mut Vec::new())
                ),
                None => "no policy in force".into(),
            },
        };
        if let Some(failure) = self.pending.as_ref().and_then(|p| p.failure.as_ref()) {
            line.push_str(&format!(
                "; ROLLBACK FAILING ({} attempts): {}",
                failure.attempts,
                failure.error.joined()
            ));
        }
        if let Some(rejection) = &self.last_rejection {
            line.push_str(&rejection_suffix(rejection));
        }
        line
    }

    /// The kernel policy described, its generation read from the data
    /// plane; a failed read goes to `read_errors`.
    fn kernel_policy_described(
        &self,
        kernel: &KernelPolicy,
        read_errors: &mut Vec<String>,
    ) -> String {
        let generation = match self.dataplane.config() {
            Ok(config) => Some(config.generation),
            Err(e) => {
                read_errors.push(format!(
                    "the generation in force is unknown: {}",
                    with_cause(&e)
                ));
                None
            }
        };
        describe_kernel_policy(generation, kernel.stamp)
    }

    /// Where the last good policy is saved, for messages.
    pub(super) fn last_good_file(&self) -> String {
        self.state.as_ref().map_or_else(
            || "the state directory".into(),
            |s| s.path(Kept::LastGood).display().to_string(),
        )
    }

    /// The answer to `status`, from memory only: its counters (per
    /// workload, `lost_events`) are zero here and filled in by
    /// [`crate::daemon::status`] from the maps, outside the engine's lock.
    /// A data plane read that fails is reported in `read_errors` (and
    /// logged), never shown as a value.
    pub fn status(&self) -> StatusReport {
        let mut read_errors = Vec::new();
        let mut not_enforced: Vec<String> =
            self.v1_conflicts.iter().map(ToString::to_string).collect();
        not_enforced.extend(self.registration_error.clone());
        let mut workloads = Vec::new();
        match &self.current {
            None => not_enforced.push(match &self.kernel_policy {
                Some(kernel) => adopted_kernel_policy_problem(
                    &self.kernel_policy_described(kernel, &mut read_errors),
                    self.last_rejection.as_ref(),
                ),
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
                let mut by_workload = self.resolution.by_workload();
                for w in &current.compiled.workloads {
                    let selector = w.selector.to_string();
                    let cgroups: Vec<String> = by_workload
                        .remove(&w.identity)
                        .unwrap_or_default()
                        .into_iter()
                        .map(|c| c.path.clone())
                        .collect();
                    if cgroups.is_empty() {
                        not_enforced.push(format!(
                            "workload {}: no cgroup under {} matches {selector}",
                            w.name,
                            self.root.display(),
                        ));
                    }
                    workloads.push(WorkloadStatus {
                        name: w.name.clone(),
                        identity: w.identity,
                        mode: w.mode_name().into(),
                        selector,
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
                failure.error.joined(),
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
        for e in &read_errors {
            tracing::warn!("status: {e}");
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
            unmanaged: self.settings.unmanaged.to_string(),
            failsafe: self.settings.failsafe.to_string(),
            workloads,
            lost_events: 0,
            reloads_ok: self.reloads_ok,
            reloads_failed: self.reloads_failed,
            not_enforced,
            cgroup_discovery: discovery_report(self.discovery.status()),
            // The counters are the status board's, read outside the engine.
            cgroup_registration: CgroupRegistration {
                at_creation: self.registration_error.is_none(),
                ..Default::default()
            },
            // The status board's, filled in outside the engine.
            integrity: Default::default(),
            read_errors,
        }
    }
}
