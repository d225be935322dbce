//! `cargo xtask bench`: the micro-benchmarks (and, on request, the
//! per-packet cost against a base revision), the real daemon's apply times
//! and memory, then the end-to-end network benchmarks, with every arm
//! measured in every round (interleaved, rotating the order), reported as
//! median, min, max and ratio to the baseline of the same run in
//! `target/bench/report.{json,md}`.

mod arms;
mod control;
mod daemon;
mod kernel_time;
mod micro;
mod paired;
mod per_packet;
mod report;
mod root_arm;
mod stats;
mod topology;
mod workloads;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail};

use self::arms::{Arm, ArmEnv, ProcessArm};
use self::report::{E2eRow, Environment, Report};
use self::topology::{ClientCgroup, Topology};
use self::workloads::{ALLOWED, Servers, Workload};
use crate::cmd::{self, banner, step};
use crate::setup;

#[derive(clap::Args)]
pub(crate) struct Args {
    /// A short run: 3 rounds of 2 s per end-to-end measurement.
    #[arg(long)]
    quick: bool,
    /// Rounds per arm (default 3 with --quick, else 5).
    #[arg(long)]
    rounds: Option<u32>,
    /// Seconds per end-to-end measurement (default 2 with --quick, else 5: the
    /// full run of 10 arms x 3 workloads x 5 rounds stays under 20 minutes).
    #[arg(long)]
    seconds: Option<u32>,
    /// Allow-list sizes for the iptables and nftables arms.
    #[arg(long, value_delimiter = ',', default_value = "10,1000,10000")]
    sizes: Vec<usize>,
    /// Measure only these arms (by name, e.g. `baseline,nftables-10000`).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Measure only these workloads (`tcp_rr`, `tcp_crr`, `tcp_stream`).
    #[arg(long, value_delimiter = ',')]
    workloads: Vec<String>,
    /// An extra arm implemented by another program: `NAME=COMMAND` (see
    /// docs/benchmarks.md). Repeatable.
    #[arg(long = "arm", value_name = "NAME=COMMAND")]
    extra_arms: Vec<String>,
    /// Skip the control-plane micro-benchmarks.
    #[arg(long)]
    skip_micro: bool,
    /// Skip the control-plane benchmark of the real daemon (apply times,
    /// memory).
    #[arg(long)]
    skip_control: bool,
    /// Skip the end-to-end network benchmarks.
    #[arg(long)]
    skip_e2e: bool,
    /// Skip the pass that measures the time spent in the enforcer's kernel
    /// programs per connection and per transaction (BPF run-time
    /// statistics), after the end-to-end rounds.
    #[arg(long)]
    skip_kernel_time: bool,
    /// Pairs of back-to-back measurements (a client that nothing filters,
    /// then one that the largest enforcer arm filters, or the other way
    /// round) per workload in the paired pass after the rounds, of 2 s each
    /// (1 s with --quick): default 12, none with --quick (which stays under
    /// 5 minutes); 0 skips the pass.
    #[arg(long)]
    pairs: Option<u32>,
    /// Also compare the per-packet cost (the `dataplane` micro-benchmark)
    /// with that of revision REV, built in a temporary git worktree, in
    /// alternating runs (default REV: the data plane before cgroups were
    /// registered at their creation).
    #[arg(long, value_name = "REV", num_args = 0..=1, default_missing_value = per_packet::DEFAULT_BASE)]
    per_packet_against: Option<String>,
    /// Runs of each side of --per-packet-against.
    #[arg(long, default_value_t = 4)]
    per_packet_runs: u32,
}

/// Set by SIGINT/SIGTERM: the run stops after the current measurement, and
/// the guards remove the arms, servers, namespaces and cgroup.
#[derive(Clone)]
struct Interrupt(Arc<AtomicBool>);

impl Interrupt {
    fn install() -> Result<Self> {
        let flag = Arc::new(AtomicBool::new(false));
        for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register(signal, Arc::clone(&flag))
                .context("cannot install a signal handler")?;
        }
        Ok(Self(flag))
    }

    fn check(&self) -> Result<()> {
        if self.0.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        Ok(())
    }
}

pub(crate) fn run(args: Args) -> Result<()> {
    let rounds = args.rounds.unwrap_or(if args.quick { 3 } else { 5 });
    let seconds = args.seconds.unwrap_or(if args.quick { 2 } else { 5 });
    let pairs = args.pairs.unwrap_or(if args.quick { 0 } else { 12 });
    let pair_seconds = if args.quick { 1 } else { 2 };
    if rounds == 0 || seconds == 0 {
        bail!("--rounds and --seconds must be at least 1");
    }
    if !args.skip_e2e && !cmd::is_root() {
        bail!(
            "the end-to-end benchmarks need root (network namespaces, cgroups, firewall rules); use --skip-e2e"
        );
    }
    if !args.skip_control && !cmd::is_root() {
        bail!(
            "the control-plane benchmark needs root (it runs the daemon: eBPF, cgroups, bpffs); use --skip-control"
        );
    }
    let interrupt = Interrupt::install()?;
    let started = Instant::now();
    setup::run()?;
    if cmd::is_root() {
        daemon::remove_stale_sandboxes(&cmd::target_dir().join("release/enforcer"))?;
    }
    let mut environment = environment()?;
    let out_dir = cmd::target_dir().join("bench");
    fs::create_dir_all(&out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;

    let micro = if args.skip_micro {
        Vec::new()
    } else {
        banner("micro-benchmarks");
        micro::run(args.quick, &out_dir)?
    };
    interrupt.check()?;

    let per_packet = match &args.per_packet_against {
        Some(rev) => {
            banner("per-packet cost against an earlier revision");
            if args.per_packet_runs == 0 {
                bail!("--per-packet-runs must be at least 1");
            }
            Some(per_packet::run(
                rev,
                args.per_packet_runs,
                args.quick,
                &out_dir,
                &interrupt,
            )?)
        }
        None => None,
    };
    interrupt.check()?;

    let control_plane = if args.skip_control {
        Vec::new()
    } else {
        banner("control plane (the real daemon)");
        let enforcer = control::build()?;
        control::run(&enforcer, rounds, &interrupt, &micro)?
    };
    interrupt.check()?;

    let mut kernel_time = Vec::new();
    let mut paired_rows = Vec::new();
    let e2e = if args.skip_e2e {
        Vec::new()
    } else {
        banner("end-to-end benchmarks");
        let mut arms = arms::standard(&args.sizes);
        for spec in &args.extra_arms {
            arms.push(Box::new(ProcessArm::parse(spec)?));
        }
        if !args.only.is_empty() {
            for name in &args.only {
                if !arms.iter().any(|arm| arm.name() == *name) {
                    bail!("--only {name}: no such arm");
                }
            }
            arms.retain(|arm| args.only.contains(&arm.name()));
        }
        for name in &args.workloads {
            if !Workload::ALL.iter().any(|w| w.name() == name) {
                bail!("--workloads {name}: no such workload (tcp_rr, tcp_crr, tcp_stream)");
            }
        }
        let measured =
            |w: Workload| args.workloads.is_empty() || args.workloads.iter().any(|n| n == w.name());
        let loadgen = workloads::build_loadgen()?;
        arms::build_enforcer_arm(&arms)?;
        let topology = Topology::create()?;
        environment.client_cpu = topology.client_cpu;
        environment.server_cpu = topology.server_cpu;
        let _servers = Servers::start(&topology, &loadgen)?;
        let samples = run_rounds(
            &topology, &loadgen, &mut arms, rounds, seconds, &measured, &interrupt,
        )?;
        for index in paired::chosen(&arms).into_iter().filter(|_| pairs > 0) {
            step(format!(
                "paired pass: {} against no filtering ({}), {pairs} pairs of {pair_seconds} s",
                arms[index].name(),
                arms[index].unfiltered_half().describe()
            ));
            paired_rows.extend(paired::measure(
                &topology,
                &loadgen,
                arms[index].as_mut(),
                pairs,
                pair_seconds,
                &measured,
                &interrupt,
            )?);
        }
        if !args.skip_kernel_time {
            step("kernel time per operation of the enforcer arms (BPF run-time statistics)");
            kernel_time = measure_kernel_time(
                &topology, &loadgen, &mut arms, seconds, &measured, &interrupt,
            )?;
        }
        rows(&arms, &samples)
    };

    environment.load_after = load_average();
    let report = Report {
        schema: 1,
        unix_time: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        quick: args.quick,
        rounds,
        seconds_per_measurement: seconds,
        environment,
        micro,
        per_packet,
        control_plane,
        e2e,
        paired: paired_rows,
        kernel_time,
    };
    let json_path = out_dir.join("report.json");
    let md_path = out_dir.join("report.md");
    let markdown = report::markdown(&report);
    fs::write(&json_path, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("cannot write {}", json_path.display()))?;
    fs::write(&md_path, &markdown)
        .with_context(|| format!("cannot write {}", md_path.display()))?;
    banner("report");
    println!("{markdown}");
    step(format!(
        "wrote {} and {} in {:.0} s",
        json_path.display(),
        md_path.display(),
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Samples per (workload, arm index), one per round.
type Samples = BTreeMap<(usize, usize), Vec<f64>>;

fn run_rounds(
    topology: &Topology,
    loadgen: &Path,
    arms: &mut [Box<dyn Arm>],
    rounds: u32,
    seconds: u32,
    measured: &impl Fn(Workload) -> bool,
    interrupt: &Interrupt,
) -> Result<Samples> {
    let env = ArmEnv {
        topology,
        allowed: &ALLOWED,
    };
    let mut samples = Samples::new();
    for round in 0..rounds as usize {
        // Rotating the order spreads slow drift (other load, thermal) over
        // all arms instead of always hitting the last one.
        for k in 0..arms.len() {
            interrupt.check()?;
            let index = (k + round) % arms.len();
            let arm = &mut arms[index];
            let name = arm.name();
            step(format!("round {}/{rounds}: {name}", round + 1));
            let applied = Instant::now();
            let result = arm.apply(&env).and_then(|()| {
                step(format!(
                    "  applied in {:.2} s",
                    applied.elapsed().as_secs_f64()
                ));
                check_filtering(topology, loadgen, arm.as_ref())?;
                for (w, workload) in Workload::ALL.iter().enumerate() {
                    if !measured(*workload) {
                        continue;
                    }
                    interrupt.check()?;
                    let value = workloads::measure(
                        topology,
                        ClientCgroup::Filtered,
                        loadgen,
                        *workload,
                        seconds,
                    )
                    .with_context(|| format!("{name}: {}", workload.name()))?;
                    println!(
                        "    {:<11} {value:>14.2} {}",
                        workload.name(),
                        workload.unit()
                    );
                    samples.entry((w, index)).or_default().push(value);
                }
                Ok(())
            });
            // Removed whatever happened, before any error goes up.
            let removed = arm
                .remove(&env)
                .with_context(|| format!("removing arm {name}"));
            result?;
            removed?;
        }
    }
    Ok(samples)
}

/// One more measurement of each enforcer arm (by name: `enforcer-*`,
/// `--arm` ones included) and workload with discrete operations, with the
/// kernel's BPF statistics on: the time the arm's programs took per
/// connection or transaction.
fn measure_kernel_time(
    topology: &Topology,
    loadgen: &Path,
    arms: &mut [Box<dyn Arm>],
    seconds: u32,
    measured: &impl Fn(Workload) -> bool,
    interrupt: &Interrupt,
) -> Result<Vec<kernel_time::KernelTimeRow>> {
    let env = ArmEnv {
        topology,
        allowed: &ALLOWED,
    };
    let mut rows = Vec::new();
    for arm in arms.iter_mut().filter(|a| a.name().starts_with("enforcer")) {
        interrupt.check()?;
        let name = arm.name();
        // The arm's own programs: an enforcer already running on this
        // machine has programs of the same names.
        let before = kernel_time::enforcer_program_ids()?;
        let result = arm.apply(&env).and_then(|()| {
            let ids: BTreeSet<u32> = kernel_time::enforcer_program_ids()?
                .difference(&before)
                .copied()
                .collect();
            if ids.is_empty() {
                bail!("{name}: no enforcer program was loaded");
            }
            let _stats = kernel_time::StatsEnabled::new()?;
            let mut arm_rows = Vec::new();
            for workload in Workload::ALL.into_iter().filter(|w| measured(*w)) {
                interrupt.check()?;
                let start = kernel_time::counters(&ids)?;
                let Some(ops) = workloads::operations(topology, loadgen, workload, seconds)
                    .with_context(|| format!("{name}: {}", workload.name()))?
                else {
                    continue;
                };
                let end = kernel_time::counters(&ids)?;
                let per = if workload == Workload::Crr {
                    "connection"
                } else {
                    "transaction"
                };
                let row = kernel_time::row(&name, workload.name(), per, ops, &start, &end)?;
                println!(
                    "    {:<11} {:>8.0} ns per {per} in the programs",
                    workload.name(),
                    row.ns_per_op
                );
                arm_rows.push(row);
            }
            Ok(arm_rows)
        });
        let removed = arm
            .remove(&env)
            .with_context(|| format!("removing arm {name}"));
        rows.extend(result?);
        removed?;
    }
    Ok(rows)
}

/// Proves the arm is in force: the client reaches a server port that no
/// arm allows only when the arm does not filter.
fn check_filtering(topology: &Topology, loadgen: &Path, arm: &dyn Arm) -> Result<()> {
    let reached = workloads::reaches_denied_port(topology, ClientCgroup::Filtered, loadgen)?;
    match (arm.filters(), reached) {
        (true, true) => bail!("arm {} let through traffic it should refuse", arm.name()),
        (false, false) => bail!("arm {} blocked traffic it should let through", arm.name()),
        _ => Ok(()),
    }
}

fn rows(arms: &[Box<dyn Arm>], samples: &Samples) -> Vec<E2eRow> {
    let baseline = arms.iter().position(|arm| arm.name() == "baseline");
    let mut rows = Vec::new();
    for (w, workload) in Workload::ALL.iter().enumerate() {
        let base_median = baseline
            .and_then(|b| samples.get(&(w, b)))
            .and_then(|s| stats::Summary::of(s))
            .map(|s| s.median);
        for (index, arm) in arms.iter().enumerate() {
            let Some(values) = samples.get(&(w, index)) else {
                continue;
            };
            let Some(summary) = stats::Summary::of(values) else {
                continue;
            };
            rows.push(E2eRow {
                workload: workload.name().to_owned(),
                description: workload.describe().to_owned(),
                unit: workload.unit().to_owned(),
                arm: arm.name(),
                samples: values.clone(),
                median: summary.median,
                min: summary.min,
                max: summary.max,
                ratio_to_baseline: stats::ratio(summary.median, base_median),
            });
        }
    }
    rows
}

fn load_average() -> Option<f64> {
    fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn first_line(program: &str, arg: &str) -> String {
    cmd::probe(std::process::Command::new(program).arg(arg))
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_owned)
        })
        .unwrap_or_else(|| format!("{program}: unknown version"))
}

fn environment() -> Result<Environment> {
    Ok(Environment {
        kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
            .context("cannot read the kernel release")?
            .trim()
            .to_owned(),
        cpus: std::thread::available_parallelism().map_or(1, usize::from),
        client_cpu: None,
        server_cpu: None,
        iptables: first_line("iptables", "--version"),
        nftables: first_line("nft", "--version"),
        iperf3: first_line("iperf3", "--version"),
        load_before: load_average(),
        load_after: None,
    })
}
