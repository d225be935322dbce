//! Shared by the benchmarks: the generated policies that the compile
//! micro-benchmark (`enforcer/benches/compile.rs`) and the control-plane
//! section of `cargo xtask bench` both load, the policy of the enforcer
//! arms, and the memory figures of `/proc/PID/status`. No dependencies,
//! like the load generator binary of this crate.

pub mod arm_policy;
pub mod policy;
pub mod proc_status;
