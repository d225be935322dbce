//! Times the control plane's steps on the benchmark's generated policy of
//! size N (`enforcer_bench::policy`): load and validate, compile (with the
//! verdict classes it found), and `Dataplane::apply` into an empty slot, a
//! slot it wrote before (one rule changed: only the differences are
//! written) and an adopted slot it knows nothing about (emptied, then
//! filled).
//!
//! ```text
//! cargo build --release -p enforcer --example apply_probe
//! sudo ./target/release/examples/apply_probe 10000      # NOAPPLY=1: no data plane
//! ```
//!
//! The maps are pinned under a fresh directory of /sys/fs/bpf (to adopt
//! them from a second `Dataplane`), removed at the end. Nothing is attached.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use enforcer::compile::CompiledPolicy;
use enforcer::dataplane::{Dataplane, DataplaneOptions, HostAddrs, SlotContent, plan};
use enforcer_bench::policy::{Shape, Variant, write};
use enforcer_bench::proc_status::own_kib;

fn compile(size: usize, variant: Variant) -> Result<(CompiledPolicy, Duration, Duration)> {
    let dir = tempfile::tempdir()?;
    write(dir.path(), Shape::size(size), variant)?;
    let t = Instant::now();
    let loaded = enforcer::policy::load_dir(dir.path()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let load = t.elapsed();
    let t = Instant::now();
    let (policy, _) = enforcer::check::compile_loaded(loaded, SystemTime::now())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((policy, load, t.elapsed()))
}

/// Unpins everything on drop, even when the probe fails half-way.
struct Pins(PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        if let Err(e) = Dataplane::uninstall(&self.0) {
            eprintln!("cannot uninstall {}: {e}", self.0.display());
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn timed_apply(
    dp: &mut Dataplane,
    what: &str,
    policy: &CompiledPolicy,
    slot_held: Option<&CompiledPolicy>,
) -> Result<()> {
    let host = HostAddrs::default();
    let new = SlotContent::of(policy, &[], &host);
    let writes = match slot_held {
        Some(old) => {
            let p = plan(&SlotContent::of(old, &[], &host).verdicts, &new.verdicts);
            format!(
                "{} verdict deletes, {} verdict writes",
                p.delete.len(),
                p.put.len()
            )
        }
        None => format!("{} verdict writes", new.verdicts.len()),
    };
    let t = Instant::now();
    dp.apply(policy, &[], &host)?;
    println!(
        "apply, {what}: {:?} ({writes}; rss {} KiB)",
        t.elapsed(),
        own_kib("VmRSS").unwrap_or(0)
    );
    Ok(())
}

fn main() -> Result<()> {
    let size: usize = match std::env::args().nth(1) {
        Some(n) => n.parse().context("size: a number")?,
        None => 10_000,
    };
    let (base, load, compile_time) = compile(size, Variant::Base)?;
    let (changed, _, _) = compile(size, Variant::OneRuleChanged)?;
    let classes: BTreeSet<u32> = base.workloads.iter().map(|w| w.class).collect();
    println!(
        "size {size}: load+validate {load:?}, compile {compile_time:?}; {} workloads in {} verdict classes, {} verdict entries, {} + {} prefixes; rss {} KiB, peak {} KiB",
        base.workloads.len(),
        classes.len(),
        base.verdicts.len(),
        base.prefixes_v4.len(),
        base.prefixes_v6.len(),
        own_kib("VmRSS").unwrap_or(0),
        own_kib("VmHWM").unwrap_or(0),
    );
    if std::env::var_os("NOAPPLY").is_some() {
        return Ok(());
    }
    let root =
        Path::new("/sys/fs/bpf").join(format!("enforcer-apply-probe-{}", std::process::id()));
    let pins = Pins(root.clone());
    let options = DataplaneOptions {
        pin_root: Some(root),
        ..DataplaneOptions::default()
    };
    {
        let mut dp = Dataplane::load(&options)?;
        timed_apply(&mut dp, "empty slot", &base, None)?;
        timed_apply(&mut dp, "the other empty slot", &base, None)?;
        timed_apply(
            &mut dp,
            "known slot, one rule changed",
            &changed,
            Some(&base),
        )?;
        timed_apply(&mut dp, "known slot, same policy", &base, Some(&base))?;
        timed_apply(
            &mut dp,
            "known slot, the rule changed back",
            &base,
            Some(&changed),
        )?;
    }
    // A new process adopts the pins: it does not know what the slots hold.
    let mut dp = Dataplane::load(&options)?;
    timed_apply(
        &mut dp,
        "adopted slot (emptied, then filled)",
        &changed,
        None,
    )?;
    drop(dp);
    drop(pins);
    Ok(())
}
