//! The control-plane micro-benchmarks that other crates expose as
//! `cargo bench -p enforcer --bench NAME -- [--quick] --json PATH`, each
//! writing `[{"name","median_ns","min_ns","max_ns","rounds"}]`.

use std::fs;
use std::path::Path;

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use super::stats;
use crate::cmd::{self, step};
use crate::workspace;

const PACKAGE: &str = "enforcer";
/// The benches that follow the `--json` contract above.
pub(super) const BENCHES: [&str; 4] = ["compile", "diff", "dataplane", "registration"];

/// One result as a bench writes it.
#[derive(Debug, Deserialize)]
struct BenchResult {
    name: String,
    median_ns: f64,
    min_ns: f64,
    max_ns: f64,
    rounds: u64,
}

/// One result in the report.
#[derive(Debug, Serialize)]
pub(super) struct MicroRow {
    pub bench: String,
    pub name: String,
    pub median_ns: f64,
    pub min_ns: f64,
    pub max_ns: f64,
    pub rounds: u64,
    /// Relative to `GROUP/baseline` of the same bench, for results named
    /// `GROUP/...` when such a baseline exists.
    pub ratio_to_baseline: Option<f64>,
}

/// Runs every bench of [`BENCHES`] that exists; a missing one is reported
/// and skipped, a failing one fails the run.
pub(super) fn run(quick: bool, out_dir: &Path) -> Result<Vec<MicroRow>> {
    let available = workspace::targets(PACKAGE, "bench")?;
    let mut rows = Vec::new();
    for bench in BENCHES {
        if !available.iter().any(|name| name == bench) {
            step(format!(
                "micro-benchmark `{bench}` does not exist in crate {PACKAGE} yet: skipped"
            ));
            continue;
        }
        let json = out_dir.join(format!("micro-{bench}.json"));
        let _ = fs::remove_file(&json);
        let mut cargo = cmd::cargo();
        cargo.args(["bench", "-p", PACKAGE, "--bench", bench, "--"]);
        if quick {
            cargo.arg("--quick");
        }
        cargo.arg("--json").arg(&json);
        cmd::run(&mut cargo)?;
        let text = fs::read_to_string(&json)
            .with_context(|| format!("bench `{bench}` wrote no {}", json.display()))?;
        let results: Vec<BenchResult> = serde_json::from_str(&text)
            .with_context(|| format!("cannot parse {}", json.display()))?;
        rows.extend(with_ratios(bench, results));
    }
    Ok(rows)
}

fn with_ratios(bench: &str, results: Vec<BenchResult>) -> Vec<MicroRow> {
    let baseline_of = |name: &str| {
        let (group, _) = name.rsplit_once('/')?;
        let baseline = format!("{group}/baseline");
        results
            .iter()
            .find(|r| r.name == baseline)
            .map(|r| r.median_ns)
    };
    let ratios: Vec<Option<f64>> = results
        .iter()
        .map(|r| stats::ratio(r.median_ns, baseline_of(&r.name)))
        .collect();
    results
        .into_iter()
        .zip(ratios)
        .map(|(r, ratio_to_baseline)| MicroRow {
            bench: bench.to_owned(),
            name: r.name,
            median_ns: r.median_ns,
            min_ns: r.min_ns,
            max_ns: r.max_ns,
            rounds: r.rounds,
            ratio_to_baseline,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_are_relative_to_the_groups_baseline() {
        let results: Vec<BenchResult> = serde_json::from_str(
            r#"[{"name":"lookup/baseline","median_ns":100,"min_ns":90,"max_ns":120,"rounds":5},
                {"name":"lookup/hash","median_ns":150.0,"min_ns":140,"max_ns":160,"rounds":5},
                {"name":"parse","median_ns":7,"min_ns":7,"max_ns":8,"rounds":5}]"#,
        )
        .unwrap();
        let rows = with_ratios("dataplane", results);
        assert_eq!(rows[0].ratio_to_baseline, Some(1.0));
        assert_eq!(rows[1].ratio_to_baseline, Some(1.5));
        assert_eq!(rows[2].ratio_to_baseline, None);
        assert!(rows.iter().all(|r| r.bench == "dataplane"));
    }
}
