//! enforcer: eBPF host microsegmentation.
pub mod api;
pub mod cgroups;
pub mod config;
pub mod compile {
    pub mod compiled;
}
