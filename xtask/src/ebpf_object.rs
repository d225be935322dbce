//! Shows, in the log, the eBPF object that `enforcer/build.rs` compiled from
//! `enforcer-ebpf/` in this run: its path, size and ELF sections (programs
//! are sections such as `cgroup_skb/egress`, maps are in `.maps`).

use std::fs;
use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use object::{Object as _, ObjectSection as _};
use serde::Deserialize;

use crate::cmd::{self, step};
use crate::workspace;

/// The file name aya-build gives the object: the eBPF crate's binary name.
const OBJECT_NAME: &str = "enforcer";

#[derive(Deserialize)]
struct Message {
    reason: String,
    #[serde(default)]
    package_id: String,
    #[serde(default)]
    out_dir: Option<PathBuf>,
}

/// The `OUT_DIR` of the `enforcer` crate's build script, from cargo's own
/// JSON messages (the build is already fresh when this runs).
fn enforcer_out_dir(release: bool) -> Result<PathBuf> {
    let id = workspace::package_id("enforcer")?;
    let mut build = cmd::cargo();
    build.args(["build", "-p", "enforcer", "--message-format=json"]);
    if release {
        build.arg("--release");
    }
    let messages = cmd::capture(&mut build)?;
    for line in messages.lines() {
        let Ok(message) = serde_json::from_str::<Message>(line) else {
            continue;
        };
        if message.reason == "build-script-executed" && message.package_id == id {
            return message
                .out_dir
                .context("cargo reported no out_dir for enforcer's build script");
        }
    }
    bail!("cargo reported no build-script run for the enforcer crate")
}

/// Prints the object's path, size and non-debug sections.
pub(crate) fn report(release: bool) -> Result<()> {
    let path = enforcer_out_dir(release)?.join(OBJECT_NAME);
    let data = fs::read(&path)
        .with_context(|| format!("cannot read the eBPF object {}", path.display()))?;
    let file = object::File::parse(&*data)
        .with_context(|| format!("{} is not an ELF object", path.display()))?;
    if file.architecture() != object::Architecture::Bpf {
        bail!(
            "{} is not a BPF object ({:?})",
            path.display(),
            file.architecture()
        );
    }
    step(format!(
        "eBPF object built from enforcer-ebpf/: {} ({} bytes)",
        path.display(),
        data.len()
    ));
    let mut count = 0;
    for section in file.sections() {
        let name = section.name().unwrap_or("<unnamed>");
        if name.is_empty() || name.starts_with(".debug") || name.starts_with(".rel") {
            continue;
        }
        println!("    section {name:<32} {:>8} bytes", section.size());
        count += 1;
    }
    if count == 0 {
        bail!("the eBPF object {} has no sections", path.display());
    }
    Ok(())
}
