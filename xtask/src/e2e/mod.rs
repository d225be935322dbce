//! `cargo xtask e2e`: the product as operators deploy it. Builds the Debian
//! package, boots a minimal Debian with systemd under `systemd-nspawn` (from
//! a root cached outside the repository, keyed by its package list), installs
//! the package there next to Debian's nginx and PostgreSQL, and checks with
//! real clients that the documented install enforces the policy, survives
//! service restarts and daemon stops, and purges cleanly. The container is
//! always torn down, also when a step fails or the run is interrupted.

mod clients;
mod container;
mod deb;
mod image;
mod install_doc;
mod scenario;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context as _, Result, bail};

use crate::cmd::{self, banner, step};

/// Host tools the test drives (Debian package names, with why).
const HOST_PACKAGES: &[(&str, &str)] = &[
    ("debootstrap", "building the cached Debian root"),
    ("systemd-container", "systemd-nspawn, to boot it"),
    (
        "bpftool",
        "counting the programs attached to the container's cgroups",
    ),
    ("util-linux", "nsenter, mount"),
];

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Test this package instead of building one with `cargo deb`.
    #[arg(long)]
    pub deb: Option<PathBuf>,
    /// Rebuild the cached Debian root even when one for this package list
    /// exists.
    #[arg(long)]
    pub rebuild_root: bool,
}

pub(crate) fn run(args: Args) -> Result<()> {
    let started = Instant::now();
    if !cmd::is_root() {
        bail!("`cargo xtask e2e` boots a container and installs packages: run it as root");
    }
    // Ctrl-C or a CI timeout's SIGTERM only raises a flag: the next command
    // in the container fails, and the guard tears the container down.
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&INTERRUPTED))
            .context("cannot install the signal handler")?;
    }
    banner("e2e: host tools");
    host_packages()?;
    container::reap_stale_runs()?;

    banner("e2e: Debian package");
    let deb = match args.deb {
        Some(deb) => deb,
        None => deb::build()?,
    };
    let deb_done = started.elapsed();

    banner("e2e: Debian root");
    let spec = image::Spec::from_host()?;
    if args.rebuild_root && spec.image_dir().exists() {
        std::fs::remove_dir_all(spec.image_dir())
            .with_context(|| format!("cannot remove {}", spec.image_dir().display()))?;
    }
    let image = image::ensure(&spec)?;
    image::prune_others(&spec.image_dir())?;
    let image_done = started.elapsed();

    banner("e2e: boot");
    let container = container::Container::boot(&image)?;
    let boot_done = started.elapsed();
    let mut report = match scenario::prepare(&container) {
        Ok(()) => scenario::run(&container, &deb, &cmd::workspace_root()),
        Err(e) => {
            let mut report = scenario::Report::default();
            report.abort("prepare the services and client slices", &e);
            report
        }
    };

    banner("e2e: teardown");
    drop(container);
    if let Err(e) = container::reap_stale_runs() {
        report.abort("teardown", &e);
    }

    banner("e2e: result");
    step(format!(
        "timings: package {:.0?}, root {:.0?}, boot {:.0?}, scenario + teardown {:.0?}, total {:.0?}",
        deb_done,
        image_done - deb_done,
        boot_done - image_done,
        started.elapsed() - boot_done,
        started.elapsed()
    ));
    report.print();
    if report.failed() > 0 {
        bail!("{} end-to-end check(s) failed", report.failed());
    }
    Ok(())
}

static INTERRUPTED: std::sync::LazyLock<Arc<AtomicBool>> =
    std::sync::LazyLock::new(|| Arc::new(AtomicBool::new(false)));

/// Whether SIGINT or SIGTERM arrived.
pub(crate) fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

fn host_packages() -> Result<()> {
    let mut missing = Vec::new();
    for (name, why) in HOST_PACKAGES {
        let output = cmd::probe(Command::new("dpkg-query").args(["-W", "-f=${Status}", name]))?;
        if !String::from_utf8_lossy(&output.stdout).ends_with("install ok installed") {
            step(format!("{name} is missing ({why})"));
            missing.push(*name);
        }
    }
    if missing.is_empty() {
        step("debootstrap, systemd-nspawn, bpftool and nsenter are present");
        return Ok(());
    }
    cmd::run(Command::new("apt-get").arg("update"))?;
    cmd::run(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}
