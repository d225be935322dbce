//! enforcer: eBPF host microsegmentation.
//!
//! The path from a policy file to a kernel verdict, by module:
//! [`policy`] (the language: parse, validate) -> [`compile`] (entries for
//! the kernel maps) -> [`eval`] (the reference evaluator of those entries)
//! -> [`check`] (expiry warnings and expectations, judged by the
//! evaluator). Each depends only on those before it.

#![warn(clippy::unwrap_used)]

pub mod api;
pub mod cgroups;
pub mod check;
pub mod cli;
pub mod compile;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod diff;
pub mod duration;
pub mod eval;
pub mod policy;
pub mod rfc3339;
