//! `apply --confirm` puts a policy on probation; `confirm` keeps it; when
//! the window runs out the engine rolls back to what was in force before,
//! retrying a rollback that fails until it succeeds.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::host_addrs::list_host_addrs;
use super::{
    Candidate, EmptyPolicy, Engine, EngineError, Installed, KernelPolicy, Outcome, Trigger,
};
use crate::daemon::state::Kept;
use crate::rfc3339::format_millis as rfc3339;

/// What is in force: what a rollback returns to.
#[derive(Clone)]
pub(super) enum InForce {
    Compiled(Installed),
    Kernel(Arc<KernelPolicy>),
    /// Nothing at all is enforced.
    Nothing,
}

/// A rollback that failed, retried until it succeeds.
pub(super) struct RollbackFailure {
    pub(super) attempts: u32,
    pub(super) time: SystemTime,
    pub(super) error: EngineError,
    pub(super) next_attempt: SystemTime,
}

/// An `apply --confirm` waiting for `confirm`.
pub(super) struct Pending {
    /// When to roll back (or, after a failed rollback, to try again).
    pub(super) deadline: Instant,
    pub(super) rollback_at: SystemTime,
    /// What to go back to: what was in force before the first
    /// `apply --confirm` of this probation.
    previous: InForce,
    pub(super) failure: Option<RollbackFailure>,
}

/// The longest wait between two attempts of a failing rollback.
pub(super) const ROLLBACK_RETRY_MAX: Duration = Duration::from_secs(30);

/// The wait before the next attempt after `attempts` failed ones: 1 s,
/// doubling, at most [`ROLLBACK_RETRY_MAX`].
pub(super) fn rollback_retry_after(attempts: u32) -> Duration {
    Duration::from_secs(1u64 << attempts.saturating_sub(1).min(5)).min(ROLLBACK_RETRY_MAX)
}

impl Engine {
    /// `apply [--confirm D] [--allow-empty]` of a candidate compiled from
    /// what the client sent.
    pub fn apply(
        &mut self,
        source: &Path,
        candidate: Result<Candidate, EngineError>,
        confirm: Option<Duration>,
        empty: EmptyPolicy,
    ) -> Result<Outcome, EngineError> {
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
                return Err(self.reject(Trigger::Apply, source, EngineError::NoRollbackTarget));
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
            Err(error) => {
                self.pending = earlier;
                Err(error)
            }
        }
    }

    /// `confirm`: keep the policy on probation.
    pub fn confirm(&mut self) -> Result<u32, EngineError> {
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
                            );
                        }
                    }
                }
                Ok(generation)
            }
            (Some(_), None) => Err(EngineError::NothingInForce),
            (None, _) => Err(EngineError::NothingToConfirm),
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
    pub(super) fn rollback(&mut self) {
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
                    "cannot roll back the unconfirmed policy, which stays in force; retrying: {}",
                    error.joined()
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
    fn restore(&mut self, target: &InForce) -> Result<u32, EngineError> {
        match target {
            InForce::Compiled(previous) => {
                let (generation, unchanged) = self.install(
                    previous.sources.clone(),
                    Arc::clone(&previous.compiled),
                    previous.source.clone(),
                )?;
                if let Some(current) = &mut self.current {
                    current.origin = previous.origin;
                }
                self.accept(Trigger::Rollback, generation, unchanged, &[]);
                Ok(generation)
            }
            InForce::Kernel(kernel) => {
                let Some(base) = &kernel.base else {
                    return Err(EngineError::AdoptedPolicyUnread);
                };
                let host = list_host_addrs()?;
                let generation = self
                    .dataplane
                    .apply_content(
                        base.clone().with_host_routes(&host),
                        kernel.stamp.unwrap_or_default(),
                    )
                    .map_err(EngineError::UnableToRestoreAdopted)?;
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
                    .map_err(EngineError::UnableToDisable)?;
                tracing::warn!("nothing is enforced, as before the unconfirmed policy");
                self.drop_compiled();
                self.accept(Trigger::Rollback, generation, false, &[]);
                Ok(generation)
            }
        }
    }
}
