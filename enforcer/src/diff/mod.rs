//! `enforcer diff`: the semantic difference between two policies — who may
//! newly talk to whom, and who no longer may — for policy review in CI.
//!
//! The engine works on [`CompiledPolicy`](crate::compile::CompiledPolicy)
//! values, the same entries the kernel holds, so what it reports is what
//! would change in enforcement:
//! - [`reach`] computes each workload's effective verdicts per remote entity
//!   and protocol as port intervals, following the kernel's lookup chain;
//! - [`regions`] matches remote addresses across the two policies;
//! - `engine` compares and merges the result into [`PolicyDiff`] rows
//!   ([`diff`]);
//! - [`render`] prints it as text, JSON or Markdown;
//! - [`source`] reads `DIR` or `REV:DIR` inputs.

mod engine;
pub mod load;
mod model;
pub mod ports;
pub mod reach;
pub mod regions;
pub mod render;
pub mod source;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;

pub use engine::diff;
pub use model::{
    Change, DiffInput, EntityChange, ExpectationChange, ExpectationInfo, ModeChange, PolicyDiff,
    PolicyMeta, RuleInfo, UntilChange,
};
