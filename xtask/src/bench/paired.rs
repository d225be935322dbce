//! The paired pass: the largest enforcer arm against no filtering, in
//! back-to-back pairs of short measurements, reported as the median of the
//! per-pair ratios.
//!
//! The interleaved rounds put minutes between an arm's measurement and the
//! baseline's; on a shared host whose speed drifts by tens of percent
//! within a run, their ratio moves as much. A pair is a few seconds long,
//! so both halves see nearly the same host. Each pair alternates which half
//! comes first, so that a steady drift does not favour either side.
//!
//! The arm is applied once for the whole pass, and the halves differ only
//! in where the client runs: in its cgroup, which the arm filters, or in a
//! sibling cgroup that nothing filters (checked: only from there does the
//! denied port answer). Applying and removing the arm around every other
//! half put its start-up (a compile, maps created and filled, memory
//! handed back) right next to its own measurements, and its removal next
//! to the following baseline.

use std::path::Path;

use anyhow::{Context as _, Result, bail};
use serde::Serialize;

use super::arms::{Arm, ArmEnv};
use super::stats::Summary;
use super::topology::{ClientCgroup, Topology};
use super::workloads::{ALLOWED, Workload};
use super::{Interrupt, check_filtering, workloads};

/// One workload of one arm over all pairs.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PairedRow {
    pub arm: String,
    pub workload: String,
    pub unit: String,
    /// (no filtering, the arm), one pair per entry, in order.
    pub pairs: Vec<(f64, f64)>,
    /// `arm / no filtering` of each pair.
    pub ratios: Vec<f64>,
    pub median_ratio: f64,
    pub min_ratio: f64,
    pub max_ratio: f64,
}

impl PairedRow {
    /// `None` when no pair has a positive baseline half.
    pub fn new(arm: &str, workload: Workload, pairs: Vec<(f64, f64)>) -> Option<Self> {
        let ratios: Vec<f64> = pairs
            .iter()
            .filter(|(base, _)| *base > 0.0)
            .map(|(base, value)| value / base)
            .collect();
        let summary = Summary::of(&ratios)?;
        Some(Self {
            arm: arm.to_owned(),
            workload: workload.name().to_owned(),
            unit: workload.unit().to_owned(),
            pairs,
            ratios,
            median_ratio: summary.median,
            min_ratio: summary.min,
            max_ratio: summary.max,
        })
    }
}

/// The arm the pass measures: the last enforcer arm of the run (the
/// standard run lists them by size, largest last).
pub fn chosen(arms: &[Box<dyn Arm>]) -> Option<usize> {
    arms.iter().rposition(|a| a.name().starts_with("enforcer"))
}

/// `pairs` pairs of `seconds`-second measurements of each workload with
/// discrete operations, for `arm` (an enforcer arm, which filters the
/// client's cgroup only).
pub fn measure(
    topology: &Topology,
    loadgen: &Path,
    arm: &mut dyn Arm,
    pairs: u32,
    seconds: u32,
    measured: &impl Fn(Workload) -> bool,
    interrupt: &Interrupt,
) -> Result<Vec<PairedRow>> {
    let env = ArmEnv {
        topology,
        allowed: &ALLOWED,
    };
    let name = arm.name();
    let result = arm.apply(&env).and_then(|()| {
        check_filtering(topology, loadgen, &*arm)?;
        check_unfiltered_half(topology, loadgen, &name)?;
        let mut rows = Vec::new();
        for workload in [Workload::Rr, Workload::Crr] {
            if !measured(workload) {
                continue;
            }
            let results = measure_pairs(
                topology, loadgen, &name, workload, pairs, seconds, interrupt,
            )?;
            rows.extend(PairedRow::new(&name, workload, results));
        }
        Ok(rows)
    });
    // Removed whatever happened, before any error goes up.
    let removed = arm
        .remove(&env)
        .with_context(|| format!("removing arm {name}"));
    let rows = result?;
    removed?;
    Ok(rows)
}

/// The client's sibling cgroup really is unfiltered: the denied port
/// answers there (the arm's cgroup is checked like in the rounds).
fn check_unfiltered_half(topology: &Topology, loadgen: &Path, name: &str) -> Result<()> {
    if !workloads::reaches_denied_port(topology, ClientCgroup::Unfiltered, loadgen)? {
        bail!(
            "arm {name} filters more than the client's cgroup: the paired pass needs an arm that filters only that cgroup"
        );
    }
    Ok(())
}

/// (no filtering, the arm) for each pair, alternating which comes first.
fn measure_pairs(
    topology: &Topology,
    loadgen: &Path,
    name: &str,
    workload: Workload,
    pairs: u32,
    seconds: u32,
    interrupt: &Interrupt,
) -> Result<Vec<(f64, f64)>> {
    let half = |cgroup| {
        workloads::measure(topology, cgroup, loadgen, workload, seconds).with_context(|| {
            let what = match cgroup {
                ClientCgroup::Filtered => name,
                ClientCgroup::Unfiltered => "no filtering",
            };
            format!("{what}: {}", workload.name())
        })
    };
    let mut results = Vec::new();
    for pair in 0..pairs {
        interrupt.check()?;
        let (base, filtered) = if pair % 2 == 0 {
            let base = half(ClientCgroup::Unfiltered)?;
            (base, half(ClientCgroup::Filtered)?)
        } else {
            let filtered = half(ClientCgroup::Filtered)?;
            (half(ClientCgroup::Unfiltered)?, filtered)
        };
        println!(
            "    {:<11} pair {}/{pairs}: {base:.0} without, {filtered:.0} with {name} ({:.2}x)",
            workload.name(),
            pair + 1,
            filtered / base
        );
        results.push((base, filtered));
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ratio_is_the_median_of_each_pairs_own_ratio() {
        // The host slows down by half between the second and third pair:
        // the ratio of medians would mix the two speeds, each pair does not.
        let pairs = vec![
            (100.0, 96.0),
            (100.0, 95.0),
            (50.0, 48.0),
            (50.0, 47.0),
            (50.0, 49.0),
        ];
        let row = PairedRow::new("enforcer-10000", Workload::Crr, pairs).unwrap();
        assert_eq!(row.ratios, vec![0.96, 0.95, 0.96, 0.94, 0.98]);
        assert_eq!(row.median_ratio, 0.96);
        assert_eq!((row.min_ratio, row.max_ratio), (0.94, 0.98));
        assert_eq!(row.workload, "tcp_crr");
    }

    #[test]
    fn pairs_without_a_baseline_are_left_out() {
        let row = PairedRow::new("e", Workload::Rr, vec![(0.0, 5.0), (10.0, 9.0)]).unwrap();
        assert_eq!(row.ratios, vec![0.9]);
        assert_eq!(PairedRow::new("e", Workload::Rr, vec![(0.0, 5.0)]), None);
    }
}
