//! The benchmark report: `report.json` (every sample) and `report.md` (the
//! tables).

use std::fmt::Write as _;

use serde::Serialize;

use super::control::ControlRow;
use super::kernel_time::KernelTimeRow;
use super::micro::MicroRow;
use super::paired::PairedRow;
use super::per_packet::{self, PerPacket};

#[derive(Debug, Serialize)]
pub(super) struct Report {
    /// Bumped when a field changes meaning.
    pub schema: u32,
    pub unix_time: u64,
    pub quick: bool,
    pub rounds: u32,
    pub seconds_per_measurement: u32,
    pub environment: Environment,
    pub micro: Vec<MicroRow>,
    /// The `dataplane` micro-benchmark against a base revision
    /// (`per_packet.rs`); only with `--per-packet-against`.
    pub per_packet: Option<PerPacket>,
    /// The real daemon: apply times and memory (`control.rs`); empty when
    /// skipped.
    pub control_plane: Vec<ControlRow>,
    pub e2e: Vec<E2eRow>,
    /// The largest enforcer arm on the client's cgroup and the root arm,
    /// each against no filtering in back-to-back pairs (`paired.rs`); empty
    /// when skipped.
    pub paired: Vec<PairedRow>,
    /// Time in the enforcer arms' kernel programs per operation
    /// (`kernel_time.rs`); empty when skipped.
    pub kernel_time: Vec<KernelTimeRow>,
}

#[derive(Debug, Serialize)]
pub(super) struct Environment {
    pub kernel: String,
    pub cpus: usize,
    pub client_cpu: Option<usize>,
    pub server_cpu: Option<usize>,
    pub iptables: String,
    pub nftables: String,
    pub iperf3: String,
    /// 1-minute load average when the run started and ended: other work on
    /// the machine makes every arm noisier.
    pub load_before: Option<f64>,
    pub load_after: Option<f64>,
}

/// One (workload, arm) over all rounds.
#[derive(Debug, Serialize)]
pub(super) struct E2eRow {
    pub workload: String,
    pub description: String,
    pub unit: String,
    pub arm: String,
    /// One sample per round, in round order.
    pub samples: Vec<f64>,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// `median / baseline median` for the same workload in this run.
    pub ratio_to_baseline: Option<f64>,
}

fn ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "-".to_owned(), |r| format!("{r:.2}x"))
}

/// Three significant digits or more, without scientific notation.
fn num(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn load(l: Option<f64>) -> String {
    l.map_or_else(|| "?".to_owned(), |l| format!("{l:.2}"))
}

/// A duration in nanoseconds, in the largest unit that keeps it >= 1.
fn duration(ns: f64) -> String {
    let (value, unit) = if ns >= 1e9 {
        (ns / 1e9, "s")
    } else if ns >= 1e6 {
        (ns / 1e6, "ms")
    } else if ns >= 1e3 {
        (ns / 1e3, "µs")
    } else {
        (ns, "ns")
    };
    format!("{} {unit}", num(value))
}

pub(super) fn markdown(report: &Report) -> String {
    let mut md = String::from("# Benchmark report\n\n");
    let env = &report.environment;
    let _ = writeln!(
        md,
        "{} run. Kernel {}, {} CPUs. Load average (1 min): {} at the start, {} at the end.\n",
        if report.quick { "Quick" } else { "Full" },
        env.kernel,
        env.cpus,
        load(env.load_before),
        load(env.load_after)
    );
    if !report.e2e.is_empty() {
        md.push_str("## End to end (client and server namespaces over veth)\n\n");
        let _ = writeln!(
            md,
            "{} rounds, interleaved, {} s per measurement; {}.",
            report.rounds,
            report.seconds_per_measurement,
            match (env.client_cpu, env.server_cpu) {
                (Some(c), Some(s)) => format!("client pinned to CPU {c}, server to CPU {s}"),
                _ => "client and server not pinned".to_owned(),
            }
        );
        let _ = writeln!(md, "{}; {}; {}.\n", env.iptables, env.nftables, env.iperf3);
        let mut workloads: Vec<&E2eRow> = Vec::new();
        for row in &report.e2e {
            if !workloads.iter().any(|w| w.workload == row.workload) {
                workloads.push(row);
            }
        }
        for first in workloads {
            let E2eRow {
                workload,
                description,
                unit,
                ..
            } = first;
            let _ = writeln!(
                md,
                "### {workload}: {description} ({unit}, higher is better)\n"
            );
            md.push_str("| arm | median | min | max | vs baseline |\n|---|---:|---:|---:|---:|\n");
            for row in report.e2e.iter().filter(|r| r.workload == *workload) {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} |",
                    row.arm,
                    num(row.median),
                    num(row.min),
                    num(row.max),
                    ratio(row.ratio_to_baseline)
                );
            }
            md.push('\n');
        }
    }
    if !report.paired.is_empty() {
        md.push_str("## Paired: enforcer arms against no filtering\n\n");
        md.push_str(
            "After the rounds, with the arm applied once: back-to-back pairs of short \
             measurements, one without filtering and one with the arm (alternating which comes \
             first); the ratio of each pair, and their median. Both halves of a pair see nearly \
             the same host, which the rounds, minutes apart, do not. Without filtering means a \
             client in a sibling cgroup that the arm leaves alone, or, for the arm at the cgroup \
             root, the arm's programs detached for the half (its daemon stopped).\n\n",
        );
        md.push_str("| arm | without filtering | workload | pairs | median ratio | min | max |\n|---|---|---|---:|---:|---:|---:|\n");
        for row in &report.paired {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} |",
                row.arm,
                row.unfiltered,
                row.workload,
                row.pairs.len(),
                ratio(Some(row.median_ratio)),
                ratio(Some(row.min_ratio)),
                ratio(Some(row.max_ratio))
            );
        }
        md.push('\n');
    }
    if !report.kernel_time.is_empty() {
        md.push_str(
            "## Time in the enforcer's kernel programs per operation (lower is better)\n\n",
        );
        md.push_str(
            "From the kernel's BPF run-time statistics, in one more measurement per arm after the rounds; \
             each program run also counts the statistics' own two clock reads. \
             Programs that ran for fewer than 1 in 100 operations are left out.\n\n",
        );
        md.push_str("| arm | workload | per | total | programs: time per operation (runs x time per run) |\n|---|---|---|---:|---|\n");
        for row in &report.kernel_time {
            // Programs that ran for fewer than one operation in a hundred
            // (a connect of the load generator's setup) stay in the JSON.
            let programs: Vec<String> = row
                .programs
                .iter()
                .filter(|p| p.runs_per_op >= 0.01)
                .map(|p| {
                    format!(
                        "{} {} ({} x {})",
                        p.program,
                        duration(p.ns_per_op),
                        num(p.runs_per_op),
                        duration(p.ns_per_run)
                    )
                })
                .collect();
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} |",
                row.arm,
                row.workload,
                row.per,
                duration(row.ns_per_op),
                programs.join(", ")
            );
        }
        md.push('\n');
    }
    if !report.control_plane.is_empty() {
        md.push_str("## Control plane: the release daemon (lower is better)\n\n");
        md.push_str(
            "Size N = N workloads, N peers and N rules. No baseline: the figures stand on their own.\n\n",
        );
        md.push_str("| measurement | what | median | min | max | samples |\n|---|---|---:|---:|---:|---:|\n");
        for row in &report.control_plane {
            let _ = writeln!(
                md,
                "| {} | {} | {} {unit} | {} {unit} | {} {unit} | {} |",
                row.name,
                row.description,
                num(row.median),
                num(row.min),
                num(row.max),
                row.rounds,
                unit = row.unit
            );
        }
        md.push('\n');
    }
    cgroup_creation(&mut md, &report.micro);
    if let Some(per_packet) = &report.per_packet {
        per_packet_section(&mut md, per_packet);
    }
    if !report.micro.is_empty() {
        md.push_str("## Control-plane micro-benchmarks (time per operation, lower is better)\n\n");
        md.push_str("| bench | name | median | min | max | rounds | vs baseline |\n|---|---|---:|---:|---:|---:|---:|\n");
        for row in &report.micro {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} |",
                row.bench,
                row.name,
                duration(row.median_ns),
                duration(row.min_ns),
                duration(row.max_ns),
                row.rounds,
                ratio(row.ratio_to_baseline)
            );
        }
        md.push('\n');
    }
    md
}

/// The registration micro-benchmark's pairs of results (`.../baseline`,
/// `.../tracer`) as one table: the cost of a cgroup's creation and removal
/// with the tracer, and what it adds.
fn cgroup_creation(md: &mut String, micro: &[MicroRow]) {
    let pairs: Vec<(&MicroRow, &MicroRow)> = micro
        .iter()
        .filter(|r| r.bench == "registration")
        .filter_map(|tracer| {
            let group = tracer.name.strip_suffix("/tracer")?;
            let baseline = micro.iter().find(|r| {
                r.bench == tracer.bench && r.name.strip_suffix("/baseline") == Some(group)
            })?;
            Some((baseline, tracer))
        })
        .collect();
    if pairs.is_empty() {
        return;
    }
    md.push_str("## Cgroup creation with in-kernel registration (lower is better)\n\n");
    md.push_str(
        "CPU time of the whole `mkdir` or `rmdir` system call per cgroup, with the cgroup \
         tracer loaded and enabled over a policy of N workloads, and without it (interleaved \
         rounds); the classes are described in docs/benchmarks.md.\n\n",
    );
    md.push_str("| call, workloads, class | without tracer | with tracer | added | ratio |\n|---|---:|---:|---:|---:|\n");
    for (baseline, tracer) in pairs {
        let group = tracer.name.strip_suffix("/tracer").unwrap_or(&tracer.name);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {}{} | {} |",
            group,
            duration(baseline.median_ns),
            duration(tracer.median_ns),
            if tracer.median_ns < baseline.median_ns {
                "-"
            } else {
                ""
            },
            duration((tracer.median_ns - baseline.median_ns).abs()),
            ratio(tracer.ratio_to_baseline)
        );
    }
    md.push('\n');
}

/// The per-packet comparison: a summary line per kind of result, then
/// every case.
fn per_packet_section(md: &mut String, p: &PerPacket) {
    let _ = writeln!(
        md,
        "## Per-packet cost against {} (lower is better)\n",
        p.base_rev
    );
    let _ = writeln!(
        md,
        "The `dataplane` micro-benchmark (`BPF_PROG_TEST_RUN`) of {} ({}) and of {}, {} runs each{}, \
         alternating; each figure is the median over the runs of each run's median; the \
         difference is current minus base.\n",
        p.base_rev,
        &p.base_commit[..p.base_commit.len().min(10)],
        p.current,
        p.runs,
        if p.quick { " (its --quick mode)" } else { "" }
    );
    md.push_str(
        "| result | cases | median difference | smallest | largest |\n|---|---:|---:|---:|---:|\n",
    );
    for (kind, cases, summary) in per_packet::by_kind(&p.rows) {
        let _ = writeln!(
            md,
            "| {kind} | {cases} | {:+.1} ns | {:+.1} ns | {:+.1} ns |",
            summary.median, summary.min, summary.max
        );
    }
    md.push_str("\n| case | base | current | difference |\n|---|---:|---:|---:|\n");
    for row in &p.rows {
        let _ = writeln!(
            md,
            "| {} | {:.0} ns | {:.0} ns | {:+.1} ns |",
            row.name, row.base_ns, row.current_ns, row.difference_ns
        );
    }
    md.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_has_one_table_per_workload_with_ratios() {
        let row = |arm: &str, median: f64, ratio: Option<f64>| E2eRow {
            workload: "tcp_rr".to_owned(),
            description: "request/response".to_owned(),
            unit: "transactions/s".to_owned(),
            arm: arm.to_owned(),
            samples: vec![median],
            median,
            min: median,
            max: median,
            ratio_to_baseline: ratio,
        };
        let report = Report {
            schema: 1,
            unix_time: 0,
            quick: true,
            rounds: 1,
            seconds_per_measurement: 2,
            environment: Environment {
                kernel: "6.18".to_owned(),
                cpus: 2,
                client_cpu: Some(0),
                server_cpu: Some(1),
                iptables: "iptables v1.8.9 (nf_tables)".to_owned(),
                nftables: "nftables v1.0.6".to_owned(),
                iperf3: "iperf 3.12".to_owned(),
                load_before: Some(0.5),
                load_after: None,
            },
            micro: Vec::new(),
            per_packet: None,
            control_plane: Vec::new(),
            paired: Vec::new(),
            kernel_time: Vec::new(),
            e2e: vec![
                row("baseline", 40000.0, Some(1.0)),
                row("iptables-10000", 11000.0, Some(0.276)),
            ],
        };
        let md = markdown(&report);
        assert_eq!(
            md.matches("### tcp_rr: request/response (transactions/s")
                .count(),
            1
        );
        assert!(md.contains("| baseline | 40000 | 40000 | 40000 | 1.00x |"));
        assert!(md.contains("| iptables-10000 | 11000 | 11000 | 11000 | 0.28x |"));
        assert!(!md.contains("micro-benchmarks"));
        assert!(!md.contains("Control plane"));
        assert!(md.contains("Load average (1 min): 0.50 at the start, ? at the end."));
        assert!(md.contains("1 rounds, interleaved, 2 s per measurement; client pinned to CPU 0"));
    }

    /// A report of nothing, on a machine without pinning or versions.
    fn bare_report() -> Report {
        Report {
            schema: 1,
            unix_time: 0,
            quick: false,
            rounds: 3,
            seconds_per_measurement: 5,
            environment: Environment {
                kernel: "6.18".to_owned(),
                cpus: 2,
                client_cpu: None,
                server_cpu: None,
                iptables: String::new(),
                nftables: String::new(),
                iperf3: String::new(),
                load_before: None,
                load_after: None,
            },
            micro: Vec::new(),
            per_packet: None,
            control_plane: Vec::new(),
            e2e: Vec::new(),
            paired: Vec::new(),
            kernel_time: Vec::new(),
        }
    }

    #[test]
    fn control_plane_rows_form_one_table_with_their_units() {
        let row = |name: &str, unit: &str, median: f64, min: f64, max: f64| ControlRow {
            name: name.to_owned(),
            description: format!("what {name} is"),
            unit: unit.to_owned(),
            median,
            min,
            max,
            rounds: 3,
        };
        let report = Report {
            control_plane: vec![
                row("apply/10000", "ms", 812.4, 790.0, 1250.0),
                row("rss_idle", "MiB", 11.84, 11.8, 12.0),
            ],
            ..bare_report()
        };
        let md = markdown(&report);
        assert_eq!(md.matches("## Control plane").count(), 1);
        assert!(md.contains("No baseline"));
        assert!(
            md.contains("| apply/10000 | what apply/10000 is | 812 ms | 790 ms | 1250 ms | 3 |")
        );
        assert!(
            md.contains("| rss_idle | what rss_idle is | 11.8 MiB | 11.8 MiB | 12.0 MiB | 3 |")
        );
        assert!(!md.contains("End to end"));
        let json = serde_json::to_value(&report).unwrap();
        let first = &json["control_plane"][0];
        for key in ["name", "unit", "median", "min", "max", "rounds"] {
            assert!(!first[key].is_null(), "no {key} in {first}");
        }
    }

    #[test]
    fn durations_use_the_largest_fitting_unit() {
        assert_eq!(duration(65.0), "65.0 ns");
        assert_eq!(duration(6_489_795.0), "6.49 ms");
        assert_eq!(duration(78_322_784.0), "78.3 ms");
        assert_eq!(duration(1_867_555_720.0), "1.87 s");
        assert_eq!(duration(1_500.0), "1.50 µs");
    }

    #[test]
    fn markdown_lists_kernel_time_per_program() {
        let report = Report {
            kernel_time: vec![KernelTimeRow {
                arm: "enforcer-10".to_owned(),
                workload: "tcp_crr".to_owned(),
                per: "connection".to_owned(),
                operations: 1000,
                ns_per_op: 1500.0,
                programs: vec![crate::bench::kernel_time::ProgramTime {
                    program: "enforcer_egress".to_owned(),
                    runs_per_op: 6.0,
                    ns_per_run: 250.0,
                    ns_per_op: 1500.0,
                }],
            }],
            ..bare_report()
        };
        let md = markdown(&report);
        assert!(
            md.contains("| enforcer-10 | tcp_crr | connection | 1.50 µs | enforcer_egress 1.50 µs (6.00 x 250 ns) |"),
            "{md}"
        );
    }

    #[test]
    fn markdown_lists_the_paired_ratios() {
        let row = PairedRow::new(
            "enforcer-root-10000",
            crate::bench::arms::UnfilteredHalf::Suspended,
            crate::bench::workloads::Workload::Crr,
            vec![(100.0, 96.0), (50.0, 49.0), (80.0, 76.0)],
        )
        .unwrap();
        let report = Report {
            paired: vec![row],
            ..bare_report()
        };
        let md = markdown(&report);
        assert!(
            md.contains("| enforcer-root-10000 | the arm's programs detached | tcp_crr | 3 | 0.96x | 0.95x | 0.98x |"),
            "{md}"
        );
    }

    fn micro(bench: &str, name: &str, median_ns: f64, ratio: Option<f64>) -> MicroRow {
        MicroRow {
            bench: bench.to_owned(),
            name: name.to_owned(),
            median_ns,
            min_ns: median_ns,
            max_ns: median_ns,
            rounds: 5,
            ratio_to_baseline: ratio,
        }
    }

    #[test]
    fn cgroup_creation_pairs_each_tracer_figure_with_its_baseline() {
        let report = Report {
            micro: vec![
                micro(
                    "registration",
                    "cgroup_mkdir/workloads=10/unit/baseline",
                    25_000.0,
                    Some(1.0),
                ),
                micro(
                    "registration",
                    "cgroup_mkdir/workloads=10/unit/tracer",
                    28_000.0,
                    Some(1.12),
                ),
                micro(
                    "registration",
                    "cgroup_rmdir/workloads=10/unit/baseline",
                    20_000.0,
                    Some(1.0),
                ),
                micro(
                    "registration",
                    "cgroup_rmdir/workloads=10/unit/tracer",
                    19_500.0,
                    Some(0.975),
                ),
                micro("dataplane", "v4/x/baseline", 28.0, Some(1.0)),
            ],
            ..bare_report()
        };
        let md = markdown(&report);
        assert!(
            md.contains("| cgroup_mkdir/workloads=10/unit | 25.0 µs | 28.0 µs | 3.00 µs | 1.12x |"),
            "{md}"
        );
        assert!(
            md.contains("| cgroup_rmdir/workloads=10/unit | 20.0 µs | 19.5 µs | -500 ns | 0.97x |"),
            "{md}"
        );
        assert_eq!(md.matches("## Cgroup creation").count(), 1);
        assert!(!markdown(&bare_report()).contains("Cgroup creation"));
    }

    #[test]
    fn per_packet_lists_every_case_and_a_line_per_kind() {
        let row = |name: &str, base: f64, current: f64| per_packet::PerPacketRow {
            name: name.to_owned(),
            base_ns: base,
            current_ns: current,
            difference_ns: current - base,
            base_runs: vec![base],
            current_runs: vec![current],
        };
        let report = Report {
            per_packet: Some(PerPacket {
                base_rev: "53a74ca^".to_owned(),
                base_commit: "3f80000123456789".to_owned(),
                current: "d1322bf+changes".to_owned(),
                runs: 4,
                quick: false,
                rows: vec![
                    row("v4/allow/rules=10/prefixes=10/fastpath", 84.0, 86.0),
                    row("v6/allow/rules=10/prefixes=10/fastpath", 83.0, 82.0),
                    row("v4/allow/rules=10/prefixes=10/newflow", 330.0, 345.0),
                ],
            }),
            ..bare_report()
        };
        let md = markdown(&report);
        assert!(md.contains("## Per-packet cost against 53a74ca^"), "{md}");
        assert!(
            md.contains("of 53a74ca^ (3f80000123) and of d1322bf+changes, 4 runs each,"),
            "{md}"
        );
        assert!(
            md.contains("| fastpath | 2 | +0.5 ns | -1.0 ns | +2.0 ns |"),
            "{md}"
        );
        assert!(
            md.contains("| newflow | 1 | +15.0 ns | +15.0 ns | +15.0 ns |"),
            "{md}"
        );
        assert!(
            md.contains("| v4/allow/rules=10/prefixes=10/newflow | 330 ns | 345 ns | +15.0 ns |"),
            "{md}"
        );
    }
}
