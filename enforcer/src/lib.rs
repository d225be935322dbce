//! enforcer: eBPF host microsegmentation.

pub mod cli;
pub mod compile;
pub mod diff;
