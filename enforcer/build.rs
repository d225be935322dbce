//! Compiles `enforcer-ebpf` for the bpf target (nightly + bpf-linker, set up
//! by `cargo xtask setup`) and leaves the object in `OUT_DIR/enforcer`,
//! which `dataplane` embeds with `include_bytes_aligned!`.

use std::path::Path;

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?;
    let ebpf_dir = Path::new(&manifest_dir)
        .parent()
        .context("enforcer/ has no parent directory")?
        .join("enforcer-ebpf");
    let ebpf_dir = ebpf_dir
        .to_str()
        .context("the enforcer-ebpf path is not valid UTF-8")?;
    // The shared types are compiled into the kernel object too.
    println!("cargo:rerun-if-changed={manifest_dir}/../enforcer-common/src");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "enforcer-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context(
        "building the eBPF programs failed; run `cargo xtask setup` to install \
         bpf-linker and the nightly rust-src component",
    )
}
