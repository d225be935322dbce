//! The Debian package under test, built exactly as a release would be.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::cmd::{self, step};

/// The version of cargo-deb installed when the machine has none.
const CARGO_DEB_VERSION: &str = "3.8.0";

/// Builds the `.deb` as a release would (docs/daemon.md, "Packaging") and
/// returns its path.
pub(super) fn build() -> Result<PathBuf> {
    let has_cargo_deb = cmd::probe(cmd::cargo().args(["deb", "--version"]))
        .is_ok_and(|output| output.status.success());
    if !has_cargo_deb {
        step(format!(
            "cargo-deb is missing: installing cargo-deb {CARGO_DEB_VERSION}"
        ));
        cmd::run(cmd::cargo().args([
            "install",
            "--locked",
            "cargo-deb",
            "--version",
            CARGO_DEB_VERSION,
        ]))?;
    }
    if !has_deb_metadata("enforcer")? {
        bail!(
            "the `enforcer` crate has no [package.metadata.deb] yet: there is no Debian \
             package to test (it comes with the daemon and packaging/enforcer.service)"
        );
    }
    // The packaging recipe of docs/daemon.md: the release binary, the man
    // pages and completions it generates from its own command line (assets
    // of the package), then cargo-deb without a build of its own (which
    // would also try to build the eBPF crate for the host).
    cmd::run(cmd::cargo().args(["build", "--release", "-p", "enforcer"]))?;
    let release = cmd::target_dir().join("release");
    cmd::run(
        Command::new(release.join("enforcer"))
            .arg("generate-assets")
            .arg(release.join("assets")),
    )?;
    let mut deb = cmd::cargo();
    deb.args(["deb", "-p", "enforcer", "--no-build"]);
    let line = cmd::display(&deb);
    println!("+ {line}");
    let output = deb
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("could not start `{line}`"))?;
    if !output.status.success() {
        bail!("`{line}` failed ({})", output.status);
    }
    // cargo deb prints the path of the package it wrote as its last line.
    let stdout = String::from_utf8_lossy(&output.stdout);
    let path = stdout
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.ends_with(".deb"))
        .map(PathBuf::from)
        .with_context(|| format!("`{line}` did not print the path of a .deb: {stdout}"))?;
    if !path.is_file() {
        bail!("`{line}` reported {} but it does not exist", path.display());
    }
    let info = cmd::capture(Command::new("dpkg-deb").arg("--info").arg(&path))?;
    step(format!("package {}:", path.display()));
    for line in info.lines().filter(|l| {
        let l = l.trim_start();
        ["Package:", "Version:", "Depends:", "Architecture:"]
            .iter()
            .any(|f| l.starts_with(f))
    }) {
        println!("    {}", line.trim());
    }
    Ok(path)
}

/// Whether workspace member `package` has a `[package.metadata.deb]` table.
fn has_deb_metadata(package: &str) -> Result<bool> {
    let json = cmd::capture(cmd::cargo().args(["metadata", "--no-deps", "--format-version", "1"]))?;
    let metadata: serde_json::Value =
        serde_json::from_str(&json).context("cannot parse `cargo metadata`")?;
    let packages = metadata["packages"]
        .as_array()
        .context("`cargo metadata` has no packages")?;
    Ok(packages
        .iter()
        .filter(|p| p["name"] == package)
        .any(|p| p["metadata"]["deb"].is_object()))
}
