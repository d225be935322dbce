//! enforcer: eBPF host microsegmentation.
pub mod cgroups;
pub mod compile {
    pub mod compiled;
}
