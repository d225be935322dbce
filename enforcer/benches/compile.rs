//! Load + compile time of generated policies, up to 1,000 workloads,
//! 10,000 peers and 20,000 rules.
//!
//! `cargo bench -p enforcer --bench compile -- [--quick] [--json PATH]`

mod support;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use enforcer::compile::compile_loaded;
use enforcer::policy::load_dir;
use support::{Args, thread_cpu_ns};

struct Size {
    name: &'static str,
    workloads: usize,
    peers: usize,
    rules: usize,
    rounds: usize,
    quick_rounds: usize,
}

const SIZES: [Size; 3] = [
    Size {
        name: "compile_100_rules",
        workloads: 10,
        peers: 100,
        rules: 100,
        rounds: 50,
        quick_rounds: 5,
    },
    Size {
        name: "compile_1000_rules",
        workloads: 100,
        peers: 1_000,
        rules: 1_000,
        rounds: 20,
        quick_rounds: 3,
    },
    Size {
        name: "compile_20000_rules",
        workloads: 1_000,
        peers: 10_000,
        rules: 20_000,
        rounds: 7,
        quick_rounds: 2,
    },
];

/// Rules per policy; each policy selects one app (5 workloads).
const RULES_PER_POLICY: usize = 10;

/// Removes the generated directory, even when a round panics.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A peer's address: documentation ranges only (2001:db8::/32, and the
/// two IPv4 /24s for the first few hundred peers).
fn peer_cidr(i: usize) -> String {
    match i {
        0..=249 => format!("198.51.100.{}", i + 1),
        250..=499 => format!("203.0.113.{}", i - 249),
        _ => format!("2001:db8:{:x}::/48", i),
    }
}

fn generate(dir: &Path, size: &Size) -> std::io::Result<()> {
    let apps = size.workloads.div_ceil(5).max(1);
    let zones = size.peers.div_ceil(10).max(1);
    let mut text = String::new();
    for i in 0..size.workloads {
        let _ = writeln!(
            text,
            "[workload.w{i}]\nunit = \"w{i}.service\"\nlabels = {{ app = \"a{}\", team = \"t{}\" }}",
            i / 5,
            i % 20
        );
    }
    std::fs::write(dir.join("10-workloads.toml"), &text)?;
    text.clear();
    for i in 0..size.peers {
        let _ = writeln!(
            text,
            "[peer.p{i}]\ncidrs = [\"{}\"]\nlabels = {{ zone = \"z{}\" }}",
            peer_cidr(i),
            i % zones
        );
    }
    std::fs::write(dir.join("20-peers.toml"), &text)?;
    text.clear();
    let policies = size.rules.div_ceil(RULES_PER_POLICY);
    let mut r = 0usize;
    for p in 0..policies {
        let _ = writeln!(
            text,
            "[[policy]]\nname = \"pol{p}\"\nselect = {{ app = \"a{}\" }}",
            p % apps
        );
        let mut sections: [Vec<String>; 4] = Default::default();
        for _ in 0..RULES_PER_POLICY {
            if r == size.rules {
                break;
            }
            let remote = match r % 5 {
                0 => format!("\"peer:p{}\"", (r * 7) % size.peers),
                1 => format!("{{ zone = \"z{}\" }}", r % zones),
                2 => format!("{{ app = \"a{}\" }}", (r / 5) % apps),
                3 => "\"world\"".to_string(),
                _ => format!("\"host\", \"peer:p{}\"", (r * 13) % size.peers),
            };
            let ports = match r % 7 {
                0 => "\"8000-8100/tcp\"".to_string(),
                1 => "\"53/udp\", \"53/tcp\"".to_string(),
                2 => "\"icmp\"".to_string(),
                _ => format!("\"{}/tcp\"", 1000 + r % 5000),
            };
            let section = match r % 10 {
                9 => 2,
                8 => 3,
                n => n % 2,
            };
            let key = if section % 2 == 0 { "from" } else { "to" };
            sections[section].push(format!("  {{ {key} = [{remote}], ports = [{ports}] }},"));
            r += 1;
        }
        for (name, rules) in ["allow-in", "allow-out", "deny-in", "deny-out"]
            .iter()
            .zip(&sections)
        {
            if !rules.is_empty() {
                let _ = writeln!(text, "{name} = [\n{}\n]", rules.join("\n"));
            }
        }
    }
    std::fs::write(dir.join("30-policies.toml"), &text)
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
    if let Err(e) = std::fs::create_dir_all(&dir.0).and_then(|()| generate(&dir.0, size)) {
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
