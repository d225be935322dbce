//! enforcer: eBPF host microsegmentation.

pub mod compile;
pub mod diff;
