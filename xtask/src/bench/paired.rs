//! The paired pass: the largest enforcer arm on the client's cgroup, and
//! the root-attached arm, each against no filtering, in back-to-back pairs
//! of short measurements, reported as the median of the per-pair ratios.
//!
//! The interleaved rounds put minutes between an arm's measurement and the
//! baseline's; on a shared host whose speed drifts by tens of percent
//! within a run, their ratio moves as much. A pair is a few seconds long,
//! so both halves see nearly the same host. Each pair alternates which half
//! comes first, so that a steady drift does not favour either side.
//!
//! The arm is applied once for the whole pass. For an arm on the client's
//! cgroup, the halves differ only in where the client runs: in its cgroup,
//! which the arm filters, or in a sibling cgroup that nothing filters
//! (checked: only from there does the denied port answer). An arm that
//! covers the whole host (the daemon at the cgroup root) is suspended for
//! the unfiltered half instead: its programs detached, its maps and policy
//! kept, then attached again (checked at every switch: the denied port
//! answers the client exactly while the arm is suspended). Applying and
//! removing the arm around every other half put its start-up (a compile,
//! maps created and filled, memory handed back) right next to its own
//! measurements, and its removal next to the following baseline.

use std::path::Path;

use anyhow::{Context as _, Result, bail};
use serde::Serialize;

use super::arms::{Arm, ArmEnv, UnfilteredHalf};
use super::stats::Summary;
use super::topology::{ClientCgroup, Topology};
use super::workloads::{ALLOWED, Workload};
use super::{Interrupt, check_filtering, workloads};

/// One workload of one arm over all pairs.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(super) struct PairedRow {
    pub arm: String,
    /// What the unfiltered half is ([`UnfilteredHalf::describe`]).
    pub unfiltered: String,
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
    pub(super) fn new(
        arm: &str,
        unfiltered: UnfilteredHalf,
        workload: Workload,
        pairs: Vec<(f64, f64)>,
    ) -> Option<Self> {
        let ratios: Vec<f64> = pairs
            .iter()
            .filter(|(base, _)| *base > 0.0)
            .map(|(base, value)| value / base)
            .collect();
        let summary = Summary::of(&ratios)?;
        Some(Self {
            arm: arm.to_owned(),
            unfiltered: unfiltered.describe().to_owned(),
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

/// The arms the pass measures: the last enforcer arm on the client's
/// cgroup (the standard run lists them by size, largest last), and every
/// arm that covers the whole host.
pub(super) fn chosen(arms: &[Box<dyn Arm>]) -> Vec<usize> {
    let mut chosen: Vec<usize> = arms
        .iter()
        .rposition(|a| {
            a.name().starts_with("enforcer") && a.unfiltered_half() == UnfilteredHalf::SiblingCgroup
        })
        .into_iter()
        .collect();
    chosen.extend(
        (0..arms.len()).filter(|&i| arms[i].unfiltered_half() == UnfilteredHalf::Suspended),
    );
    chosen
}

/// `pairs` pairs of `seconds`-second measurements of each workload with
/// discrete operations, for `arm` (an enforcer arm, which filters the
/// client's cgroup only, or one that can be suspended).
pub(super) fn measure(
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
    let mode = arm.unfiltered_half();
    let applied = arm.apply(&env);
    let result = applied.and_then(|()| {
        check_filtering(topology, loadgen, &*arm)?;
        if mode == UnfilteredHalf::SiblingCgroup {
            check_unfiltered_half(topology, loadgen, &name)?;
        }
        let mut halves = Halves {
            topology,
            loadgen,
            arm: &mut *arm,
            mode,
            suspended: false,
        };
        let mut rows = Vec::new();
        for workload in [Workload::Rr, Workload::Crr] {
            if !measured(workload) {
                continue;
            }
            let results = measure_pairs(&mut halves, workload, pairs, seconds, interrupt)?;
            rows.extend(PairedRow::new(&name, mode, workload, results));
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
            "arm {name} filters more than the client's cgroup: the paired pass needs an arm that filters only that cgroup, or one that can be suspended"
        );
    }
    Ok(())
}

/// Which half of a pair is measured.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Half {
    Unfiltered,
    Filtered,
}

/// Puts the arm and the client in the state of each half.
struct Halves<'a> {
    topology: &'a Topology,
    loadgen: &'a Path,
    arm: &'a mut dyn Arm,
    mode: UnfilteredHalf,
    /// The arm is suspended now.
    suspended: bool,
}

impl Halves<'_> {
    /// Makes `half` the state, checked, and returns where its client runs.
    fn prepare(&mut self, half: Half) -> Result<ClientCgroup> {
        match (self.mode, half) {
            (UnfilteredHalf::SiblingCgroup, Half::Unfiltered) => Ok(ClientCgroup::Unfiltered),
            (UnfilteredHalf::SiblingCgroup, Half::Filtered) => Ok(ClientCgroup::Filtered),
            (UnfilteredHalf::Suspended, Half::Unfiltered) => {
                if !self.suspended {
                    self.arm.suspend()?;
                    self.suspended = true;
                    if !workloads::reaches_denied_port(
                        self.topology,
                        ClientCgroup::Filtered,
                        self.loadgen,
                    )? {
                        bail!("arm {} still filters while suspended", self.arm.name());
                    }
                }
                Ok(ClientCgroup::Filtered)
            }
            (UnfilteredHalf::Suspended, Half::Filtered) => {
                if self.suspended {
                    self.arm.resume()?;
                    self.suspended = false;
                    check_filtering(self.topology, self.loadgen, &*self.arm)?;
                }
                Ok(ClientCgroup::Filtered)
            }
        }
    }

    fn measure(&mut self, half: Half, workload: Workload, seconds: u32) -> Result<f64> {
        let cgroup = self.prepare(half)?;
        workloads::measure(self.topology, cgroup, self.loadgen, workload, seconds).with_context(
            || {
                let what = match half {
                    Half::Filtered => self.arm.name(),
                    Half::Unfiltered => "no filtering".to_owned(),
                };
                format!("{what}: {}", workload.name())
            },
        )
    }
}

/// (no filtering, the arm) for each pair, alternating which comes first.
fn measure_pairs(
    halves: &mut Halves<'_>,
    workload: Workload,
    pairs: u32,
    seconds: u32,
    interrupt: &Interrupt,
) -> Result<Vec<(f64, f64)>> {
    let name = halves.arm.name();
    let mut results = Vec::new();
    for pair in 0..pairs {
        interrupt.check()?;
        let (base, filtered) = if pair % 2 == 0 {
            let base = halves.measure(Half::Unfiltered, workload, seconds)?;
            (base, halves.measure(Half::Filtered, workload, seconds)?)
        } else {
            let filtered = halves.measure(Half::Filtered, workload, seconds)?;
            (
                halves.measure(Half::Unfiltered, workload, seconds)?,
                filtered,
            )
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
        let row = PairedRow::new(
            "enforcer-10000",
            UnfilteredHalf::SiblingCgroup,
            Workload::Crr,
            pairs,
        )
        .unwrap();
        assert_eq!(row.ratios, vec![0.96, 0.95, 0.96, 0.94, 0.98]);
        assert_eq!(row.median_ratio, 0.96);
        assert_eq!((row.min_ratio, row.max_ratio), (0.94, 0.98));
        assert_eq!(row.workload, "tcp_crr");
    }

    #[test]
    fn the_largest_cgroup_arm_and_the_root_arm_are_paired() {
        let arms = super::super::arms::standard(&[10, 1000]);
        let names: Vec<String> = chosen(&arms).iter().map(|&i| arms[i].name()).collect();
        assert_eq!(names, ["enforcer-1000", "enforcer-root-1000"]);
        let none: Vec<Box<dyn Arm>> = vec![Box::new(super::super::arms::Baseline)];
        assert!(chosen(&none).is_empty());
    }

    #[test]
    fn pairs_without_a_baseline_are_left_out() {
        let sibling = UnfilteredHalf::SiblingCgroup;
        let row =
            PairedRow::new("e", sibling, Workload::Rr, vec![(0.0, 5.0), (10.0, 9.0)]).unwrap();
        assert_eq!(row.ratios, vec![0.9]);
        assert_eq!(
            PairedRow::new("e", sibling, Workload::Rr, vec![(0.0, 5.0)]),
            None
        );
    }
}
