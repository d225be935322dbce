//! Time in the enforcer's kernel programs per operation (connection,
//! transaction), from the kernel's own run-time statistics of BPF programs
//! (`kernel.bpf_stats_enabled`): what `BPF_PROG_TEST_RUN` cannot show, the
//! cost on real traffic with the caches as the rest of the stack leaves
//! them.
//!
//! The statistics are on only for this pass, after the interleaved rounds,
//! because they add two clock reads to every program run (included in the
//! figures) and would slow the measured arm in the comparison.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::process::Command;

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

use crate::cmd;

const STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// The enforcer's programs are named after their hook (`enforcer_egress`,
/// truncated by the kernel to 15 bytes).
const PROGRAM_PREFIX: &str = "enforcer_";

/// Keeps the kernel's BPF run-time statistics on; restores the previous
/// setting when dropped.
pub(super) struct StatsEnabled {
    previous: String,
}

impl StatsEnabled {
    pub(super) fn new() -> Result<Self> {
        let previous = fs::read_to_string(STATS_SYSCTL)
            .with_context(|| format!("cannot read {STATS_SYSCTL}"))?;
        fs::write(STATS_SYSCTL, "1").with_context(|| format!("cannot write {STATS_SYSCTL}"))?;
        Ok(Self {
            previous: previous.trim().to_owned(),
        })
    }
}

impl Drop for StatsEnabled {
    fn drop(&mut self) {
        if let Err(e) = fs::write(STATS_SYSCTL, &self.previous) {
            eprintln!(
                "warning: cannot restore {STATS_SYSCTL} to {}: {e}",
                self.previous
            );
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
struct LoadedProgram {
    id: u32,
    #[serde(default)]
    name: String,
    #[serde(default)]
    run_time_ns: u64,
    #[serde(default)]
    run_cnt: u64,
}

/// Every loaded program's id, name and counters (`bpftool prog show`).
fn loaded_programs() -> Result<Vec<LoadedProgram>> {
    let json = cmd::capture(Command::new("bpftool").args(["prog", "show", "--json"]))?;
    parse_programs(&json)
}

fn parse_programs(json: &str) -> Result<Vec<LoadedProgram>> {
    serde_json::from_str(json).context("unexpected `bpftool prog show --json` output")
}

/// The ids of the enforcer programs loaded now.
pub(super) fn enforcer_program_ids() -> Result<BTreeSet<u32>> {
    Ok(loaded_programs()?
        .into_iter()
        .filter(|p| p.name.starts_with(PROGRAM_PREFIX))
        .map(|p| p.id)
        .collect())
}

/// Run time and runs, summed by program name, of the programs in `ids`.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Counters(BTreeMap<String, (u64, u64)>);

pub(super) fn counters(ids: &BTreeSet<u32>) -> Result<Counters> {
    Ok(sum_by_name(&loaded_programs()?, ids))
}

fn sum_by_name(programs: &[LoadedProgram], ids: &BTreeSet<u32>) -> Counters {
    let mut sums = BTreeMap::new();
    for p in programs.iter().filter(|p| ids.contains(&p.id)) {
        let entry: &mut (u64, u64) = sums.entry(p.name.clone()).or_default();
        entry.0 += p.run_time_ns;
        entry.1 += p.run_cnt;
    }
    Counters(sums)
}

/// One program's share of an operation.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(super) struct ProgramTime {
    pub program: String,
    pub runs_per_op: f64,
    pub ns_per_run: f64,
    pub ns_per_op: f64,
}

/// The enforcer's kernel time per operation of one workload under one arm.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(super) struct KernelTimeRow {
    pub arm: String,
    pub workload: String,
    /// What one operation is: `connection` or `transaction`.
    pub per: String,
    pub operations: u64,
    pub ns_per_op: f64,
    /// The programs that ran, largest share first.
    pub programs: Vec<ProgramTime>,
}

/// The row for `operations` operations between two snapshots.
pub(super) fn row(
    arm: &str,
    workload: &str,
    per: &str,
    operations: u64,
    before: &Counters,
    after: &Counters,
) -> Result<KernelTimeRow> {
    if operations == 0 {
        bail!("{arm}: {workload} completed no operation");
    }
    let ops = operations as f64;
    let mut programs: Vec<ProgramTime> = after
        .0
        .iter()
        .filter_map(|(name, &(time, runs))| {
            let (time0, runs0) = before.0.get(name).copied().unwrap_or_default();
            let (time, runs) = (time.saturating_sub(time0), runs.saturating_sub(runs0));
            (runs > 0).then(|| ProgramTime {
                program: name.clone(),
                runs_per_op: runs as f64 / ops,
                ns_per_run: time as f64 / runs as f64,
                ns_per_op: time as f64 / ops,
            })
        })
        .collect();
    programs.sort_by(|a, b| b.ns_per_op.total_cmp(&a.ns_per_op));
    Ok(KernelTimeRow {
        arm: arm.to_owned(),
        workload: workload.to_owned(),
        per: per.to_owned(),
        operations,
        ns_per_op: programs.iter().map(|p| p.ns_per_op).sum(),
        programs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BPFTOOL: &str = r#"[
        {"id": 7, "type": "cgroup_skb", "name": "enforcer_egress", "run_time_ns": 1000, "run_cnt": 10},
        {"id": 8, "type": "cgroup_skb", "name": "enforcer_egress", "run_time_ns": 500, "run_cnt": 5},
        {"id": 9, "type": "cgroup_sock_addr", "name": "enforcer_connec", "run_time_ns": 300, "run_cnt": 1},
        {"id": 3, "type": "lsm", "name": "other"},
        {"id": 4, "type": "kprobe"}
    ]"#;

    #[test]
    fn sums_the_chosen_programs_by_name() {
        let programs = parse_programs(BPFTOOL).expect("parse");
        let ids = BTreeSet::from([7, 9]);
        let c = sum_by_name(&programs, &ids);
        assert_eq!(
            c.0,
            BTreeMap::from([
                ("enforcer_egress".to_owned(), (1000, 10)),
                ("enforcer_connec".to_owned(), (300, 1)),
            ])
        );
    }

    #[test]
    fn a_row_divides_the_differences_by_the_operations() {
        let before = Counters(BTreeMap::from([
            ("enforcer_egress".to_owned(), (1000, 10)),
            ("enforcer_connec".to_owned(), (300, 1)),
        ]));
        let after = Counters(BTreeMap::from([
            ("enforcer_egress".to_owned(), (7000, 40)),
            ("enforcer_connec".to_owned(), (300, 1)),
            ("enforcer_ingres".to_owned(), (2000, 20)),
        ]));
        let r = row("enforcer-10", "tcp_crr", "connection", 10, &before, &after).expect("row");
        assert_eq!(r.ns_per_op, 800.0);
        let names: Vec<&str> = r.programs.iter().map(|p| p.program.as_str()).collect();
        assert_eq!(
            names,
            ["enforcer_egress", "enforcer_ingres"],
            "no run: left out"
        );
        assert_eq!(r.programs[0].runs_per_op, 3.0);
        assert_eq!(r.programs[0].ns_per_run, 200.0);
        assert_eq!(r.programs[0].ns_per_op, 600.0);
    }

    #[test]
    fn no_operation_is_an_error() {
        let c = Counters::default();
        assert!(row("a", "tcp_rr", "transaction", 0, &c, &c).is_err());
    }
}
