//! `cargo xtask demo`: builds everything (kernel programs included) and runs
//! the demo binary, `enforcer-demo` from the `enforcer-demo` crate (`demo/`),
//! which enforces the example policies on real workloads. The demo's logic
//! lives there; this module only prepares the machine and hands over.

use std::ffi::OsString;

use anyhow::{Context as _, Result, bail};

use crate::cmd::{self, banner};
use crate::{ebpf_object, setup, workspace};

const DEMO_PACKAGE: &str = "enforcer-demo";
/// The toolkit whose `probe` binary the demo runs (found next to its own).
const PROBE_PACKAGE: &str = "enforcer-tests";
const DEMO_BIN: &str = "enforcer-demo";

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Arguments passed through to `enforcer-demo`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub demo_args: Vec<OsString>,
}

pub(crate) fn run(args: Args) -> Result<()> {
    setup::run()?;
    if !workspace::has_target(DEMO_PACKAGE, "bin", DEMO_BIN)? {
        bail!(
            "the demo binary `{DEMO_BIN}` (crate {DEMO_PACKAGE}) does not exist in this checkout yet"
        );
    }

    banner("build");
    cmd::run(cmd::cargo().args([
        "build",
        "--release",
        "-p",
        "enforcer",
        "-p",
        PROBE_PACKAGE,
        "-p",
        DEMO_PACKAGE,
    ]))?;
    ebpf_object::report(true)?;

    banner("demo");
    // Ctrl-C reaches the whole process group: the demo cleans up and exits
    // by itself, so xtask only notes the signal and waits for it.
    let interrupted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, std::sync::Arc::clone(&interrupted))
            .context("cannot install a signal handler")?;
    }
    cmd::run(
        cmd::cargo()
            .args([
                "run",
                "--quiet",
                "--release",
                "-p",
                DEMO_PACKAGE,
                "--bin",
                DEMO_BIN,
                "--",
            ])
            .args(&args.demo_args),
    )
}
