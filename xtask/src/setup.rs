//! `cargo xtask setup`: everything a fresh Debian machine needs to build the
//! kernel programs and run the root tests and benchmarks. Idempotent: each
//! step checks first and acts only when something is missing.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::cmd::{self, banner, step};

/// Debian packages, with why each is needed (shown when one is missing).
const DEBIAN_PACKAGES: &[(&str, &str)] = &[
    (
        "iproute2",
        "`ip netns`/`ip link` for test and benchmark namespaces",
    ),
    ("bpftool", "inspecting loaded programs and maps"),
    ("iperf3", "the bulk-throughput benchmark"),
    ("iptables", "the iptables benchmark arm"),
    ("nftables", "the nftables benchmark arm"),
    ("procps", "`sysctl` in namespaces"),
    ("iputils-ping", "ICMP probes in tests"),
    ("util-linux", "`taskset` and `mount`"),
    ("gcc", "linking Rust binaries and bpf-linker"),
    ("libc6-dev", "linking Rust binaries and bpf-linker"),
    ("zlib1g-dev", "linking bpf-linker against LLVM"),
];

const BPF_LINKER_VERSION: &str = "0.13.0";
const BPFFS: &str = "/sys/fs/bpf";

pub(crate) fn run() -> Result<()> {
    banner("setup");
    let root = cmd::is_root();
    if !root {
        step("not running as root: only checking; anything missing must be installed by root");
    }
    debian_packages(root)?;
    stable_components()?;
    nightly_toolchain()?;
    bpf_linker()?;
    bpffs(root)?;
    cgroup2()?;
    step("setup complete");
    Ok(())
}

fn debian_packages(root: bool) -> Result<()> {
    if !cmd::on_path("dpkg-query") {
        let names: Vec<&str> = DEBIAN_PACKAGES.iter().map(|(name, _)| *name).collect();
        bail!(
            "dpkg-query not found: this is not a Debian machine; install the equivalents of {} by hand",
            names.join(", ")
        );
    }
    let mut missing = Vec::new();
    for (name, why) in DEBIAN_PACKAGES {
        let output = cmd::probe(Command::new("dpkg-query").args(["-W", "-f=${Status}", name]))?;
        let status = String::from_utf8_lossy(&output.stdout);
        if output.status.success() && status.ends_with("install ok installed") {
            continue;
        }
        step(format!("Debian package {name} is missing ({why})"));
        missing.push(*name);
    }
    if missing.is_empty() {
        step(format!(
            "Debian packages present: {}",
            DEBIAN_PACKAGES
                .iter()
                .map(|(name, _)| *name)
                .collect::<Vec<_>>()
                .join(" ")
        ));
        return Ok(());
    }
    if !root {
        bail!(
            "missing Debian packages: {} (run `cargo xtask setup` as root to install them)",
            missing.join(" ")
        );
    }
    // One `apt-get update`, only now that something must be installed: a
    // fresh machine's package lists may be empty or stale.
    cmd::run(Command::new("apt-get").arg("update"))
        .context("apt-get update failed: the Debian package lists could not be refreshed")?;
    cmd::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing),
    )
    .with_context(|| format!("apt-get could not install {}", missing.join(" ")))?;
    Ok(())
}

/// rustfmt and clippy for the toolchain that builds the workspace
/// (`cargo xtask test` runs both).
fn stable_components() -> Result<()> {
    if !cmd::on_path("rustup") {
        bail!("rustup not found on PATH: the build needs rustup's toolchains");
    }
    let installed =
        cmd::capture(Command::new("rustup").args(["component", "list", "--installed"]))?;
    for component in ["rustfmt", "clippy"] {
        if installed
            .lines()
            .any(|line| line.starts_with(&format!("{component}-")))
        {
            step(format!("{component} present"));
        } else {
            cmd::run(Command::new("rustup").args(["component", "add", component]))
                .with_context(|| format!("could not add the {component} component"))?;
        }
    }
    Ok(())
}

fn nightly_toolchain() -> Result<()> {
    let toolchains = cmd::capture(Command::new("rustup").args(["toolchain", "list"]))?;
    if toolchains.lines().any(|line| line.starts_with("nightly-")) {
        step("rust nightly toolchain present");
    } else {
        cmd::run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))
        .context("could not install the nightly toolchain (needed to build the eBPF programs)")?;
    }
    let components = cmd::capture(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))?;
    if components.lines().any(|line| line.starts_with("rust-src")) {
        step("rust-src component of nightly present");
    } else {
        cmd::run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
            .context("could not add rust-src to nightly (needed for -Z build-std=core on bpfel-unknown-none)")?;
    }
    Ok(())
}

/// The nightly toolchain's own shared libLLVM, which bpf-linker must link so
/// that it reads the bitcode that this rustc emits.
struct NightlyLlvm {
    lib_dir: PathBuf,
    /// e.g. `libLLVM.so.22.1-rust-1.97.0-nightly`.
    so_name: String,
    /// e.g. `22`.
    major: String,
}

impl NightlyLlvm {
    fn find() -> Result<Self> {
        let sysroot = cmd::capture(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
        let lib_dir = Path::new(sysroot.trim()).join("lib");
        let mut names: Vec<String> = fs::read_dir(&lib_dir)
            .with_context(|| format!("cannot read {}", lib_dir.display()))?
            .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
            .filter(|name| name.starts_with("libLLVM.so.") && name.contains("-rust-"))
            .collect();
        names.sort();
        let Some(so_name) = names.pop() else {
            bail!(
                "no libLLVM.so.*-rust-* in {}: the nightly toolchain does not ship its LLVM as a shared library",
                lib_dir.display()
            );
        };
        let major = so_name
            .trim_start_matches("libLLVM.so.")
            .split(['.', '-'])
            .next()
            .filter(|major| !major.is_empty() && major.chars().all(|c| c.is_ascii_digit()))
            .with_context(|| format!("cannot read the LLVM major version from {so_name}"))?
            .to_owned();
        Ok(Self {
            lib_dir,
            so_name,
            major,
        })
    }
}

fn cache_dir() -> Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    // Outside target/, so that `cargo clean` keeps the LLVM links.
    Ok(PathBuf::from(home).join(".cache/enforcer"))
}

/// The installed bpf-linker's version line, if it runs.
fn installed_bpf_linker() -> Option<String> {
    let output = Command::new("bpf-linker").arg("--version").output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

fn bpf_linker() -> Result<()> {
    let llvm = NightlyLlvm::find()?;
    let cache = cache_dir()?;
    let marker = cache.join("bpf-linker.llvm");
    let marked = fs::read_to_string(&marker)
        .ok()
        .map(|s| s.trim().to_owned());
    let installed = installed_bpf_linker();
    let version_ok = installed
        .as_deref()
        .is_some_and(|v| v.split_whitespace().any(|word| word == BPF_LINKER_VERSION));
    if version_ok && marked.as_deref() == Some(llvm.so_name.as_str()) {
        step(format!(
            "bpf-linker {BPF_LINKER_VERSION} (LLVM {}) already installed",
            llvm.major
        ));
        return Ok(());
    }
    step(match (&installed, &marked) {
        (None, _) => "bpf-linker is missing or does not run: building it".to_owned(),
        (Some(v), _) if !version_ok => {
            format!("found `{v}`, want {BPF_LINKER_VERSION}: rebuilding")
        }
        (Some(_), Some(m)) => format!(
            "bpf-linker was built against {m}, nightly now ships {}: rebuilding",
            llvm.so_name
        ),
        (Some(_), None) => format!(
            "no record of the LLVM bpf-linker was built against ({}): rebuilding",
            marker.display()
        ),
    });

    // A prefix whose lib/ links to the nightly's libLLVM, as llvm-sys
    // expects an LLVM install: see shared/design/toolchain.md.
    let prefix = cache.join("llvm");
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib)
        .with_context(|| format!("cannot create {}", prefix_lib.display()))?;
    let target = llvm.lib_dir.join(&llvm.so_name);
    for link in [
        prefix_lib.join("libLLVM.so"),
        prefix_lib.join(&llvm.so_name),
    ] {
        replace_symlink(&target, &link)?;
    }
    cmd::run(
        Command::new("cargo")
            .env("LLVM_PREFIX", &prefix)
            .args([
                "+nightly",
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--force",
            ])
            .args(["--no-default-features", "--features"])
            .arg(format!("llvm-{}", llvm.major)),
    )
    .context("building bpf-linker failed (it needs gcc, zlib1g-dev and the nightly toolchain)")?;
    fs::write(&marker, format!("{}\n", llvm.so_name))
        .with_context(|| format!("cannot write {}", marker.display()))?;
    match installed_bpf_linker() {
        Some(v) => step(format!("installed {v} (LLVM {})", llvm.major)),
        None => bail!("bpf-linker was built but does not run; is ~/.cargo/bin on PATH?"),
    }
    Ok(())
}

fn replace_symlink(target: &Path, link: &Path) -> Result<()> {
    if fs::symlink_metadata(link).is_ok() {
        fs::remove_file(link).with_context(|| format!("cannot replace {}", link.display()))?;
    }
    std::os::unix::fs::symlink(target, link)
        .with_context(|| format!("cannot link {} -> {}", link.display(), target.display()))
}

/// Mount points with the given filesystem type, from /proc/self/mounts.
pub(crate) fn mounts_of_type(fstype: &str) -> Result<Vec<PathBuf>> {
    let mounts =
        fs::read_to_string("/proc/self/mounts").context("cannot read /proc/self/mounts")?;
    Ok(mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_source, target, kind) = (fields.next()?, fields.next()?, fields.next()?);
            (kind == fstype).then(|| PathBuf::from(target))
        })
        .collect())
}

fn bpffs(root: bool) -> Result<()> {
    if mounts_of_type("bpf")?.iter().any(|m| m == Path::new(BPFFS)) {
        step(format!("bpffs mounted at {BPFFS}"));
        return Ok(());
    }
    if !root {
        bail!("bpffs is not mounted at {BPFFS} (run `cargo xtask setup` as root to mount it)");
    }
    cmd::run(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]))
        .with_context(|| format!("cannot mount bpffs at {BPFFS}: pinned programs and maps need it"))
}

/// The cgroup v2 mount point (`/sys/fs/cgroup` or, on hybrid hosts,
/// `/sys/fs/cgroup/unified`).
pub(crate) fn cgroup2_mount() -> Result<PathBuf> {
    let mut mounts = mounts_of_type("cgroup2")?;
    mounts.sort_by_key(|m| m.as_os_str().len());
    mounts
        .into_iter()
        .next()
        .context("cgroup v2 is not mounted: enforcement attaches to cgroup v2 directories")
}

fn cgroup2() -> Result<()> {
    let mount = cgroup2_mount()?;
    step(format!("cgroup v2 mounted at {}", mount.display()));
    // On hybrid hosts a v1 net_cls/net_prio hierarchy makes the kernel stop
    // matching cgroup2 sockets, and cgroup_skb programs then see nothing.
    let v1 = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    if v1.lines().any(|line| {
        line.contains(" cgroup ") && (line.contains("net_cls") || line.contains("net_prio"))
    }) {
        step(
            "WARNING: a cgroup v1 net_cls/net_prio hierarchy is mounted; cgroup_skb programs will not match sockets",
        );
    }
    Ok(())
}
