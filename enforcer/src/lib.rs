//! enforcer: eBPF host microsegmentation.
pub mod compile {
    pub mod compiled;
}
pub mod dataplane;
