//! enforcer: eBPF host microsegmentation.
