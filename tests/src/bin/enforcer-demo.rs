//! `enforcer-demo`: a short live demonstration of real enforcement, run by
//! `cargo xtask demo`. It compiles `policies/example/`, builds a small world
//! of real cgroups (web, api, db), real test hosts in network namespaces
//! (office, vendor-support, world) and real servers, puts the policy in
//! force in the kernel, makes real connections and compares every outcome
//! with the policy's verdict. Exits 0 only if all of them agree.
//!
//! The logic lives in `tests/src/demo/`; see `docs/demo.md`.

#[path = "../demo/mod.rs"]
mod demo;

fn main() -> std::process::ExitCode {
    demo::main()
}
