//! The first policy: the configured one when it is valid, otherwise what
//! the kernel and the state directory allow (see `docs/daemon.md`, "Life
//! cycle").

use std::sync::Arc;
use std::time::SystemTime;

use enforcer_common::config::SlotPolicy;

use super::{
    Candidate, EmptyPolicy, Engine, EngineError, KernelPolicy, LastGoodUnavailable, Origin, Trigger,
};
use crate::compile::CompiledPolicy;
use crate::daemon::state::{Kept, SavedPolicy, StateDir};
use crate::rfc3339::format_millis as rfc3339;

impl Engine {
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
    ///   good policy, restored; without one,
    ///   [`EngineError::NothingToEnforce`].
    pub fn start(&mut self) -> Result<(), EngineError> {
        match StateDir::open(&self.settings.state_dir) {
            Ok(state) => self.state = Some(state),
            Err(e) => {
                tracing::error!("the state directory cannot be used; no policy is saved: {e}");
                self.state_error = Some(Arc::new(e));
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
            let empty = Candidate::empty(SystemTime::now());
            self.put_in_force(Trigger::Startup, &dir, empty, EmptyPolicy::Refuse)
        };
        let Err(error) = loaded else {
            return Ok(());
        };
        let errors = error.messages();
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
                        Err(e) => {
                            tracing::error!("cannot adopt the last good policy: {}", e.joined());
                        }
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
        let refused = |why: LastGoodUnavailable| EngineError::NothingToEnforce {
            policies: dir.clone(),
            first_error: errors.first().cloned().unwrap_or_default(),
            why,
        };
        let (saved, compiled) = last_good.map_err(refused)?;
        self.put_last_good(&saved, compiled, Origin::Restored)
            .map_err(|e| refused(LastGoodUnavailable::NotPutInForce(Box::new(e))))
    }

    /// The state directory's last good policy, checked and compiled as of
    /// now; why there is none otherwise (errors are logged).
    fn last_good(&self) -> Result<(SavedPolicy, CompiledPolicy), LastGoodUnavailable> {
        let Some(state) = &self.state else {
            return Err(LastGoodUnavailable::StateDirUnusable(
                self.state_error.clone(),
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
            Ok(None) => Err(LastGoodUnavailable::NotSaved(path)),
            Err(e) => {
                tracing::error!("the saved policy is ignored: {e}");
                Err(LastGoodUnavailable::Refused(e))
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
    ) -> Result<(), EngineError> {
        let (generation, _) = self.install(None, compiled, saved.source.clone())?;
        let Some(current) = &mut self.current else {
            return Err(EngineError::NothingInForce);
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
}
