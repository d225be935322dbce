//! Why the engine refused or could not do something.
//!
//! Errors of the form "what failed: why" keep the cause as their
//! `#[source]`; what the operator reads (a rejection in `status`, an API
//! answer, a rollback failure) is [`EngineError::messages`], which adds
//! the cause to the message as the daemon always showed it.

use std::error::Error;
use std::path::PathBuf;
use std::sync::Arc;

use crate::cgroups::AutomatonError;
use crate::daemon::state::StateError;
use crate::dataplane::DataplaneError;
use crate::policy::LoadError;

/// What went wrong with a policy change, a confirmation or the start.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The policy files cannot be read or do not compile: each error of
    /// [`LoadError`] is one message (`FILE:LINE:COL: message`).
    #[error("the policy was not accepted")]
    InvalidPolicy(#[source] LoadError),
    /// Files received over the API with names or sizes that are refused.
    #[error("the files received are refused: {}", problems.join("; "))]
    ReceivedFilesRefused { problems: Vec<String> },
    /// A policy set with no workload while workloads are enforced.
    #[error(
        "{}: the policy set has no workload, while {enforced}: putting it in force \
         would stop enforcing all of them; {how}",
        dir.display()
    )]
    EmptyPolicyRefused {
        dir: PathBuf,
        /// What is enforced now.
        enforced: String,
        /// How to put it in force anyway.
        how: String,
    },
    /// The selectors do not fit the kernel's cgroup matching tables.
    #[error("the data plane refused the policy")]
    UnableToMatchCgroups(#[source] AutomatonError),
    /// Writing the policy into the maps failed.
    #[error("the data plane refused the policy")]
    UnableToWritePolicy(#[source] DataplaneError),
    /// This host's addresses cannot be listed (the data plane's error names
    /// the call; its cause says why).
    #[error(transparent)]
    UnableToListHostAddrs(DataplaneError),
    /// A rollback to the policy adopted from the kernel failed to write it.
    #[error("the data plane refused the adopted policy")]
    UnableToRestoreAdopted(#[source] DataplaneError),
    /// A rollback to "nothing enforced" failed.
    #[error("cannot disable enforcement")]
    UnableToDisable(#[source] DataplaneError),
    /// The rollback target, adopted from the kernel, was never read back.
    #[error("the adopted policy could not be read back at start")]
    AdoptedPolicyUnread,
    /// `apply --confirm` with nothing a rollback could return to.
    #[error(
        "`apply --confirm` could not roll back: the policy in force was adopted from the \
         kernel but could not be read back at start; apply without --confirm"
    )]
    NoRollbackTarget,
    /// `confirm` while no compiled policy is in force.
    #[error("no policy in force")]
    NothingInForce,
    /// `confirm` with no `apply --confirm` pending.
    #[error("nothing to confirm: no `apply --confirm` is pending")]
    NothingToConfirm,
    /// The compile task ended without an answer (it panicked).
    #[error("compiling the policy failed")]
    CompileTaskFailed(#[source] tokio::task::JoinError),
    /// The configured policy is invalid and nothing else can be put in
    /// force at start. Starting would report ready with nothing enforced.
    #[error(
        "the policy in {} is invalid ({first_error}) and no last good policy can be put in force \
         instead ({why}); refusing to start with nothing enforced: fix the policy (`enforcer \
         check {}`) and start again",
        policies.display(),
        policies.display()
    )]
    NothingToEnforce {
        policies: PathBuf,
        first_error: String,
        why: LastGoodUnavailable,
    },
}

impl EngineError {
    /// What the operator reads: one message per policy error, otherwise
    /// one message with its cause.
    pub fn messages(&self) -> Vec<String> {
        match self {
            EngineError::InvalidPolicy(LoadError::Invalid(diags)) => {
                diags.errors().map(ToString::to_string).collect()
            }
            EngineError::InvalidPolicy(io @ LoadError::Io { .. }) => vec![io.to_string()],
            EngineError::ReceivedFilesRefused { problems } => problems.clone(),
            other => vec![with_cause(other)],
        }
    }

    /// [`EngineError::messages`] on one line.
    pub fn joined(&self) -> String {
        self.messages().join("; ")
    }
}

/// Why the state directory's last good policy cannot be put in force.
#[derive(Debug, thiserror::Error)]
pub enum LastGoodUnavailable {
    /// The state directory could not be opened at start (why, when known).
    #[error(
        "the state directory cannot be used: {}",
        .0.as_ref().map_or_else(|| "unknown error".to_owned(), ToString::to_string)
    )]
    StateDirUnusable(Option<Arc<StateError>>),
    /// Nothing was ever saved there.
    #[error("{} does not exist", .0.display())]
    NotSaved(PathBuf),
    /// The saved file is refused (damaged, edited, loosely owned, invalid).
    #[error("{0}; ignored")]
    Refused(StateError),
    /// It could not be put in force.
    #[error("{}", .0.joined())]
    NotPutInForce(Box<EngineError>),
}

/// `error: its cause`, one level deep: data plane errors name what failed,
/// their source why.
pub(in crate::daemon) fn with_cause(error: &dyn Error) -> String {
    match error.source() {
        Some(cause) => format!("{error}: {cause}"),
        None => error.to_string(),
    }
}
