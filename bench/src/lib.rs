//! Shared by the benchmarks: the generated policies that the compile
//! micro-benchmark (`enforcer/benches/compile.rs`) and the control-plane
//! section of `cargo xtask bench` both load. No dependencies, like the load
//! generator binary of this crate.

pub mod policy;
