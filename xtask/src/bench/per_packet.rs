//! The per-packet cost of the data plane against a base revision
//! (`--per-packet-against REV`): the `dataplane` micro-benchmark
//! (`BPF_PROG_TEST_RUN`) of REV, built in a temporary git worktree, and of
//! the current tree, run alternately in one session, so that both see the
//! same host. Each case's figure is the median, over the runs of one side,
//! of that run's own median; the difference is current minus base.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

use super::Interrupt;
use super::stats::Summary;
use crate::cmd::{self, step};

/// The last commit before the data plane registered cgroups at
/// their creation and judged network namespaces apart.
pub(super) const DEFAULT_BASE: &str = "53a74ca^";
/// The micro-benchmark compared, and its package.
const BENCH: &str = "dataplane";
const PACKAGE: &str = "enforcer";

/// One case over all runs of both sides.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(super) struct PerPacketRow {
    pub name: String,
    /// Median over the base's runs of each run's median, in ns.
    pub base_ns: f64,
    pub current_ns: f64,
    /// `current_ns - base_ns`.
    pub difference_ns: f64,
    /// Each run's median, in run order.
    pub base_runs: Vec<f64>,
    pub current_runs: Vec<f64>,
}

/// The comparison, as `report.json` keeps it (`per_packet`).
#[derive(Debug, Serialize)]
pub(super) struct PerPacket {
    /// As given, and the commit it names.
    pub base_rev: String,
    pub base_commit: String,
    /// `HEAD`, with `+changes` when the working tree differs from it.
    pub current: String,
    /// Runs of each side.
    pub runs: u32,
    /// Whether each run was the bench's `--quick` mode.
    pub quick: bool,
    pub rows: Vec<PerPacketRow>,
}

#[derive(Debug, Deserialize)]
struct BenchResult {
    name: String,
    median_ns: f64,
}

/// Builds both benches, then runs them `runs` times each, alternating which
/// goes first.
pub(super) fn run(
    base_rev: &str,
    runs: u32,
    quick: bool,
    out_dir: &Path,
    interrupt: &Interrupt,
) -> Result<PerPacket> {
    let root = cmd::workspace_root();
    let base_commit = cmd::capture(
        Command::new("git")
            .current_dir(&root)
            .args(["rev-parse", "--verify", "--end-of-options"])
            .arg(format!("{base_rev}^{{commit}}")),
    )
    .with_context(|| format!("--per-packet-against {base_rev}: not a commit of this repository"))?
    .trim()
    .to_owned();
    let current = current_description(&root)?;
    let place = out_dir.join("per-packet-base");
    let worktree = Worktree::add(&root, &place.join("src"), &base_commit)?;
    step(format!(
        "building the {BENCH} micro-benchmark of {base_rev} ({}) in {}",
        short(&base_commit),
        worktree.dir.display()
    ));
    // Its own target directory, kept between runs so that the base is
    // built once (its sources are checked out at the same path each time).
    let base_exe = bench_executable(
        Command::new("cargo")
            .current_dir(&worktree.dir)
            .env("CARGO_TARGET_DIR", place.join("target")),
    )?;
    step(format!("building the {BENCH} micro-benchmark of {current}"));
    let current_exe = bench_executable(&mut cmd::cargo())?;
    let mut base_runs: Vec<Vec<BenchResult>> = Vec::new();
    let mut current_runs: Vec<Vec<BenchResult>> = Vec::new();
    for run in 0..runs {
        let order = if run % 2 == 0 {
            [(true, &base_exe), (false, &current_exe)]
        } else {
            [(false, &current_exe), (true, &base_exe)]
        };
        for (is_base, exe) in order {
            interrupt.check()?;
            let side = if is_base { "base" } else { "current" };
            step(format!("run {}/{runs}: {side}", run + 1));
            let json = out_dir.join(format!("per-packet-{side}-{run}.json"));
            let results = run_bench(exe, quick, &json)?;
            if is_base {
                base_runs.push(results);
            } else {
                current_runs.push(results);
            }
        }
    }
    drop(worktree);
    Ok(PerPacket {
        base_rev: base_rev.to_owned(),
        base_commit,
        current,
        runs,
        quick,
        rows: rows(&base_runs, &current_runs),
    })
}

fn short(commit: &str) -> &str {
    &commit[..commit.len().min(10)]
}

/// `HEAD`'s short commit, with `+changes` when the working tree (tracked
/// files) differs from it.
fn current_description(root: &Path) -> Result<String> {
    let head = cmd::capture(Command::new("git").current_dir(root).args([
        "rev-parse",
        "--short=10",
        "HEAD",
    ]))?;
    let changed = !cmd::capture(Command::new("git").current_dir(root).args([
        "status",
        "--porcelain",
        "--untracked-files=no",
    ]))?
    .trim()
    .is_empty();
    Ok(format!(
        "{}{}",
        head.trim(),
        if changed { "+changes" } else { "" }
    ))
}

/// A detached git worktree of one commit; removed when dropped.
struct Worktree {
    root: PathBuf,
    dir: PathBuf,
}

impl Worktree {
    fn add(root: &Path, dir: &Path, commit: &str) -> Result<Self> {
        if dir.exists() {
            // Left by a run that was killed.
            remove_worktree(root, dir)?;
        }
        if let Some(parent) = dir.parent() {
            fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        cmd::capture(
            Command::new("git")
                .current_dir(root)
                .args(["worktree", "add", "--detach"])
                .arg(dir)
                .arg(commit),
        )?;
        Ok(Self {
            root: root.to_path_buf(),
            dir: dir.to_path_buf(),
        })
    }
}

impl Drop for Worktree {
    fn drop(&mut self) {
        if let Err(e) = remove_worktree(&self.root, &self.dir) {
            eprintln!("warning: {e:#}");
        }
    }
}

fn remove_worktree(root: &Path, dir: &Path) -> Result<()> {
    let removed = cmd::capture(
        Command::new("git")
            .current_dir(root)
            .args(["worktree", "remove", "--force"])
            .arg(dir),
    );
    if removed.is_err() && dir.exists() {
        // Not (or no longer) a registered worktree: a plain directory.
        fs::remove_dir_all(dir).with_context(|| format!("cannot remove {}", dir.display()))?;
    }
    cmd::capture(
        Command::new("git")
            .current_dir(root)
            .args(["worktree", "prune"]),
    )?;
    Ok(())
}

/// Builds the bench with `cargo` (run where it should be, with the
/// environment it needs) and returns its executable. Cargo's progress goes
/// to the terminal; its JSON messages are read for the path.
fn bench_executable(cargo: &mut Command) -> Result<PathBuf> {
    cargo
        .args(["bench", "-p", PACKAGE, "--bench", BENCH, "--no-run"])
        .args(["--message-format", "json-render-diagnostics"]);
    let line = cmd::display(cargo);
    println!("+ {line}");
    let mut child = cargo
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start `{line}`"))?;
    let stdout = child.stdout.take().context("no stdout pipe")?;
    let mut executable = None;
    for message in BufReader::new(stdout).lines() {
        let message = message?;
        if let Some(path) = artifact_executable(&message) {
            executable = Some(path);
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    executable.with_context(|| format!("`{line}` named no executable of bench {BENCH}"))
}

/// The executable of the bench in one line of cargo's JSON messages.
fn artifact_executable(message: &str) -> Option<PathBuf> {
    #[derive(Deserialize)]
    struct Target {
        name: String,
        kind: Vec<String>,
    }
    #[derive(Deserialize)]
    struct Artifact {
        reason: String,
        target: Target,
        executable: Option<PathBuf>,
    }
    let artifact: Artifact = serde_json::from_str(message).ok()?;
    (artifact.reason == "compiler-artifact"
        && artifact.target.name == BENCH
        && artifact.target.kind.iter().any(|k| k == "bench"))
    .then_some(artifact.executable)
    .flatten()
}

/// One run of a bench executable, as `cargo bench` would run it.
fn run_bench(exe: &Path, quick: bool, json: &Path) -> Result<Vec<BenchResult>> {
    let _ = fs::remove_file(json);
    let mut bench = Command::new(exe);
    bench.arg("--bench");
    if quick {
        bench.arg("--quick");
    }
    bench.arg("--json").arg(json);
    cmd::capture(&mut bench)?;
    let text =
        fs::read_to_string(json).with_context(|| format!("{} wrote no results", exe.display()))?;
    serde_json::from_str(&text).with_context(|| format!("cannot parse {}", json.display()))
}

/// The cases both sides measured, in the current side's order.
fn rows(base: &[Vec<BenchResult>], current: &[Vec<BenchResult>]) -> Vec<PerPacketRow> {
    let by_name = |runs: &[Vec<BenchResult>]| {
        let mut cases: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for run in runs {
            for result in run {
                cases
                    .entry(result.name.clone())
                    .or_default()
                    .push(result.median_ns);
            }
        }
        cases
    };
    let base_cases = by_name(base);
    let current_cases = by_name(current);
    let order: Vec<&String> = current
        .first()
        .map(|run| run.iter().map(|r| &r.name).collect())
        .unwrap_or_default();
    order
        .into_iter()
        .filter_map(|name| {
            let base_runs = base_cases.get(name)?;
            let current_runs = current_cases.get(name)?;
            let base_ns = Summary::of(base_runs)?.median;
            let current_ns = Summary::of(current_runs)?.median;
            Some(PerPacketRow {
                name: name.clone(),
                base_ns,
                current_ns,
                difference_ns: current_ns - base_ns,
                base_runs: base_runs.clone(),
                current_runs: current_runs.clone(),
            })
        })
        .collect()
}

/// The result kinds of the dataplane bench (`.../baseline`, `fastpath`,
/// `newflow`) with the median, smallest and largest difference over their
/// cases: the summary line of each kind.
pub(super) fn by_kind(rows: &[PerPacketRow]) -> Vec<(String, usize, Summary)> {
    let mut kinds: Vec<(String, Vec<f64>)> = Vec::new();
    for row in rows {
        let kind = row.name.rsplit('/').next().unwrap_or(&row.name).to_owned();
        match kinds.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, values)) => values.push(row.difference_ns),
            None => kinds.push((kind, vec![row.difference_ns])),
        }
    }
    kinds
        .into_iter()
        .filter_map(|(kind, values)| Some((kind, values.len(), Summary::of(&values)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(name: &str, median_ns: f64) -> BenchResult {
        BenchResult {
            name: name.to_owned(),
            median_ns,
        }
    }

    #[test]
    fn each_side_is_the_median_of_its_runs_medians() {
        let base = vec![
            vec![result("v4/a/fastpath", 80.0), result("v4/a/newflow", 300.0)],
            vec![result("v4/a/fastpath", 90.0), result("v4/a/newflow", 310.0)],
            vec![result("v4/a/fastpath", 82.0), result("v4/a/newflow", 305.0)],
        ];
        let current = vec![
            vec![result("v4/a/fastpath", 85.0), result("v4/a/newflow", 330.0)],
            vec![result("v4/a/fastpath", 84.0), result("v4/a/newflow", 320.0)],
            vec![
                result("v4/a/fastpath", 99.0),
                result("v4/a/newflow", 325.0),
                result("only/here", 1.0),
            ],
        ];
        let rows = rows(&base, &current);
        assert_eq!(rows.len(), 2, "a case of one side only is left out");
        assert_eq!(rows[0].name, "v4/a/fastpath");
        assert_eq!((rows[0].base_ns, rows[0].current_ns), (82.0, 85.0));
        assert_eq!(rows[0].difference_ns, 3.0);
        assert_eq!(rows[1].difference_ns, 20.0);
        assert_eq!(rows[0].base_runs, vec![80.0, 90.0, 82.0]);
        let kinds = by_kind(&rows);
        assert_eq!(kinds.len(), 2);
        assert_eq!(kinds[0].0, "fastpath");
        assert_eq!(kinds[1].2.median, 20.0);
    }

    #[test]
    fn the_bench_executable_is_found_in_cargos_messages() {
        let line = r#"{"reason":"compiler-artifact","package_id":"x","target":{"kind":["bench"],"crate_types":["bin"],"name":"dataplane","src_path":"/w/enforcer/benches/dataplane.rs"},"executable":"/w/target/release/deps/dataplane-abc"}"#;
        assert_eq!(
            artifact_executable(line),
            Some(PathBuf::from("/w/target/release/deps/dataplane-abc"))
        );
        let other = line.replace(r#""name":"dataplane""#, r#""name":"compile""#);
        assert_eq!(artifact_executable(&other), None);
        assert_eq!(
            artifact_executable(r#"{"reason":"build-finished","success":true}"#),
            None
        );
    }
}
