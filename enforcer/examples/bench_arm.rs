//! The enforcer arm of `cargo xtask bench`: puts the data plane in force on
//! the benchmark client's cgroup with a compiled policy of `--rules N`
//! rules, of which only those for the benchmark's own services allow real
//! traffic (the others allow decoy peers and ports), then holds it until its
//! stdin closes (the `--arm NAME=COMMAND` protocol of
//! `xtask/src/bench/arms.rs`).
//!
//! Reads `ENFORCER_BENCH_CLIENT_CGROUP` and `ENFORCER_BENCH_ALLOW`
//! (`tcp:ADDR:PORT,...`). Prints `ready` on stdout once enforcing; reports
//! the compile and apply times and its own RSS on stderr. Needs root.
//!
//! `cargo xtask bench` builds and runs it as the arms `enforcer-N` (one per
//! `--sizes` entry); by hand: `cargo build --release -p enforcer --example
//! bench_arm`, then `cargo xtask bench --arm 'NAME=target/release/examples/bench_arm --rules N'`.

use std::{
    io::{Read as _, Write as _},
    net::Ipv4Addr,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Instant, SystemTime},
};

use anyhow::{Context as _, Result, bail};
use enforcer::{
    cgroups::cgroup2_mount,
    check::compile_dir,
    dataplane::{Dataplane, DataplaneOptions, HostAddrs, ResolvedCgroup},
};
use enforcer_bench::{arm_policy::client_policy, proc_status::own_kib};

struct Args {
    rules: usize,
}

fn parse_args() -> Result<Args> {
    let mut rules = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--rules" => {
                let value = args.next().context("--rules needs a value")?;
                rules = Some(value.parse().with_context(|| format!("--rules {value}"))?);
            }
            other => bail!("unknown argument {other:?} (usage: bench_arm --rules N)"),
        }
    }
    Ok(Args {
        rules: rules.context("--rules N is required")?,
    })
}

/// `tcp:ADDR:PORT,...` as given by the harness.
fn parse_allow(text: &str) -> Result<Vec<(Ipv4Addr, u16)>> {
    text.split(',')
        .filter(|s| !s.is_empty())
        .map(|item| {
            let rest = item
                .strip_prefix("tcp:")
                .with_context(|| format!("{item:?}: only tcp services are supported"))?;
            let (addr, port) = rest
                .rsplit_once(':')
                .with_context(|| format!("{item:?}: expected tcp:ADDR:PORT"))?;
            Ok((
                addr.parse().with_context(|| format!("{item:?}: address"))?,
                port.parse().with_context(|| format!("{item:?}: port"))?,
            ))
        })
        .collect()
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let cgroup = PathBuf::from(
        std::env::var_os("ENFORCER_BENCH_CLIENT_CGROUP")
            .context("ENFORCER_BENCH_CLIENT_CGROUP is not set")?,
    );
    let allowed = parse_allow(
        &std::env::var("ENFORCER_BENCH_ALLOW").context("ENFORCER_BENCH_ALLOW is not set")?,
    )?;
    let mount = cgroup2_mount()?;
    let rel = cgroup
        .strip_prefix(&mount)
        .with_context(|| format!("{} is not under {}", cgroup.display(), mount.display()))?;
    let cgroup_id = std::fs::metadata(&cgroup)
        .with_context(|| format!("cgroup {}", cgroup.display()))?
        .ino();

    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("bench.toml"),
        client_policy(&rel.to_string_lossy(), &allowed, args.rules)?,
    )?;

    let started = Instant::now();
    let (policy, _warnings) = compile_dir(dir.path(), SystemTime::now())
        .map_err(|e| anyhow::anyhow!("compiling the generated policy: {e}"))?;
    let compiled = started.elapsed();
    let workload = policy
        .workloads
        .iter()
        .find(|w| w.name == "client")
        .context("the compiled policy has no workload `client`")?;
    let cgroups = [ResolvedCgroup {
        cgroup_id,
        workload: workload.identity,
        class: workload.class,
        mode: workload.mode,
    }];

    let mut dp = Dataplane::load(&DataplaneOptions::default())?;
    attach_and_apply(&mut dp, &cgroup, &policy, &cgroups)?;
    let total = started.elapsed();
    let rss = own_kib("VmRSS").unwrap_or(0);
    // What stays resident once the allocator returns the compiler's freed
    // memory (a long-running daemon holding this policy).
    // SAFETY: no pointers; only releases free heap memory.
    unsafe { libc::malloc_trim(0) };
    eprintln!(
        "bench_arm: {} rules ({} verdict entries): compile {:.1} ms, compile+load+attach+apply {:.1} ms, RSS {} KiB (peak {} KiB, {} KiB after malloc_trim)",
        args.rules,
        policy.verdicts.len(),
        compiled.as_secs_f64() * 1e3,
        total.as_secs_f64() * 1e3,
        rss,
        own_kib("VmHWM").unwrap_or(0),
        own_kib("VmRSS").unwrap_or(0),
    );
    let mut stdout = std::io::stdout();
    writeln!(stdout, "ready")?;
    stdout.flush()?;

    // Hold the filtering until the harness closes our stdin.
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    dp.detach();
    Ok(())
}

fn attach_and_apply(
    dp: &mut Dataplane,
    cgroup: &Path,
    policy: &enforcer::compile::CompiledPolicy,
    cgroups: &[ResolvedCgroup],
) -> Result<()> {
    // Apply before attaching, so the first packet is already judged under
    // the policy.
    dp.apply(policy, cgroups, &HostAddrs::default())?;
    dp.attach(cgroup)?;
    Ok(())
}
