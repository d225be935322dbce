//! Load + compile time of generated policies: the control-plane sizes of
//! `cargo xtask bench` (size N = N workloads, N peers, N rules, for N =
//! 100, 1,000 and 10,000) and a larger one of 1,000 workloads, 10,000 peers
//! and 20,000 rules. The policies come from `enforcer_bench::policy`, the
//! generator that the daemon benchmark applies too.
//!
//! `cargo bench -p enforcer --bench compile -- [--quick] [--json PATH]`

mod support;

use std::path::PathBuf;
use std::time::{Instant, SystemTime};

use enforcer::check::compile_loaded;
use enforcer::policy::load_dir;
use enforcer_bench::policy::{self, Shape, Variant};
use support::{Args, thread_cpu_ns};

struct Size {
    name: &'static str,
    shape: Shape,
    rounds: usize,
    quick_rounds: usize,
}

const SIZES: [Size; 4] = [
    Size {
        name: "compile_100",
        shape: Shape::size(100),
        rounds: 50,
        quick_rounds: 5,
    },
    Size {
        name: "compile_1000",
        shape: Shape::size(1_000),
        rounds: 20,
        quick_rounds: 3,
    },
    Size {
        name: "compile_10000",
        shape: Shape::size(10_000),
        rounds: 7,
        quick_rounds: 3,
    },
    Size {
        name: "compile_20000_rules",
        shape: Shape {
            workloads: 1_000,
            peers: 10_000,
            rules: 20_000,
        },
        rounds: 7,
        quick_rounds: 2,
    },
];

/// Removes the generated directory, even when a round panics.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Result {
    name: &'static str,
    median_ns: u128,
    min_ns: u128,
    max_ns: u128,
    rounds: usize,
    verdicts: usize,
    /// Median CPU time of this thread: on a loaded machine the wall time
    /// also counts waiting for a core.
    median_cpu_ns: u128,
}

fn run(size: &Size, quick: bool) -> Result {
    let dir = TempDir(std::env::temp_dir().join(format!(
        "enforcer-bench-{}-{}",
        std::process::id(),
        size.name
    )));
    if let Err(e) = std::fs::create_dir_all(&dir.0)
        .and_then(|()| policy::write(&dir.0, size.shape, Variant::Base))
    {
        panic!(
            "cannot write the generated policy to {}: {e}",
            dir.0.display()
        );
    }
    let rounds = if quick {
        size.quick_rounds
    } else {
        size.rounds
    };
    let mut times = Vec::with_capacity(rounds);
    let mut cpu = Vec::with_capacity(rounds);
    let mut verdicts = 0;
    for _ in 0..rounds {
        let cpu_start = thread_cpu_ns();
        let start = Instant::now();
        let loaded = match load_dir(&dir.0) {
            Ok(l) => l,
            Err(e) => panic!("generated policy does not load: {e}"),
        };
        let compiled = match compile_loaded(loaded, SystemTime::now()) {
            Ok((c, _)) => c,
            Err(e) => panic!("generated policy does not compile: {e}"),
        };
        times.push(start.elapsed().as_nanos());
        cpu.push(thread_cpu_ns().saturating_sub(cpu_start));
        verdicts = compiled.verdicts.len();
    }
    times.sort_unstable();
    cpu.sort_unstable();
    Result {
        name: size.name,
        median_ns: times[times.len() / 2],
        min_ns: times[0],
        max_ns: times[times.len() - 1],
        rounds,
        verdicts,
        median_cpu_ns: cpu[cpu.len() / 2],
    }
}

fn main() {
    let Args { quick, json } = Args::from_env();
    let results: Vec<Result> = SIZES.iter().map(|s| run(s, quick)).collect();
    println!(
        "{:<22} {:>12} {:>12} {:>12} {:>12} {:>7} {:>10}",
        "benchmark", "median ms", "min ms", "max ms", "cpu ms", "rounds", "verdicts"
    );
    let ms = |ns: u128| ns as f64 / 1e6;
    for r in &results {
        println!(
            "{:<22} {:>12.2} {:>12.2} {:>12.2} {:>12.2} {:>7} {:>10}",
            r.name,
            ms(r.median_ns),
            ms(r.min_ns),
            ms(r.max_ns),
            ms(r.median_cpu_ns),
            r.rounds,
            r.verdicts
        );
    }
    if let Some(path) = json {
        let value: Vec<serde_json::Value> = results
            .iter()
            .map(|r| {
                serde_json::json!({
                    "name": r.name,
                    "median_ns": r.median_ns as u64,
                    "min_ns": r.min_ns as u64,
                    "max_ns": r.max_ns as u64,
                    "rounds": r.rounds,
                })
            })
            .collect();
        let text = serde_json::Value::Array(value).to_string();
        if let Err(e) = std::fs::write(&path, text) {
            eprintln!("cannot write {}: {e}", path.display());
            std::process::exit(2);
        }
    }
}
