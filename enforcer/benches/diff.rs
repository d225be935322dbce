//! Benchmark: `enforcer diff` over two generated policies of 20,000 rules
//! each, differing by about 1% of their rules and a few peers:
//! - `diff_20k_rules`: compiled-form policies built entry by entry (one
//!   verdict range per rule), and the same policy against itself;
//! - `diff_20k_rules_compiled`: TOML policies of 20,000 rules compiled by
//!   the real compiler (compilation not timed), then diffed.
//!
//! `cargo bench -p enforcer --bench diff -- [--quick] [--json PATH]`
//! writes `[{"name","median_ns","min_ns","max_ns","rounds"}]` to PATH.

mod support;

use std::time::Instant;

use enforcer::compile::CompiledPolicy;
use enforcer::diff::testkit::{PolicyBuilder, aligned_cover};
use enforcer::diff::{DiffInput, diff};
use enforcer_common::{
    identity::{IDENTITY_ANY, IDENTITY_ANY_EXTERNAL, IDENTITY_WORLD},
    protocol::Protocol,
    verdict::{Action, Direction, VerdictKey},
};
use support::{Args, thread_cpu_ns};

const RULES: usize = 20_000;
const WORKLOADS: usize = 100;
const PEERS: usize = 200;

/// xorshift64*: deterministic, dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A policy of `RULES` rules; `variant` perturbs about 1% of them.
fn generate(variant: u64) -> CompiledPolicy {
    let mut b = PolicyBuilder::new();
    let workloads: Vec<u32> = (0..WORKLOADS)
        .map(|i| b.workload(&format!("w{i:03}")))
        .collect();
    let mut peers = Vec::new();
    for i in 0..PEERS {
        // /24s in 10.0.0.0/8 and, for every tenth, a /28 inside another
        // peer's /24 (nested prefixes); the variant moves a few.
        let third = if variant == 1 && i % 50 == 0 {
            250
        } else {
            i % 250
        };
        let cidr = if i % 10 == 9 {
            format!("10.{}.{}.16/28", i / 250, (i - 1) % 250)
        } else {
            format!("10.{}.{third}.0/24", i / 250)
        };
        peers.push(b.peer(&format!("p{i:03}"), &[&cidr]));
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut seen = std::collections::HashSet::new();
    let mut per_policy = vec![0usize; WORKLOADS];
    for n in 0..RULES {
        let w = rng.below(WORKLOADS);
        let egress = rng.next() & 1 == 0;
        let protocol = if rng.below(4) == 0 {
            Protocol::Udp as u8
        } else {
            Protocol::Tcp as u8
        };
        let remote = match rng.below(10) {
            0 => IDENTITY_WORLD,
            1 => IDENTITY_ANY_EXTERNAL,
            2 => IDENTITY_ANY,
            3..=5 => workloads[rng.below(WORKLOADS)],
            _ => peers[rng.below(PEERS)],
        };
        let lo = rng.below(60_000) as u16;
        let hi = if rng.below(3) == 0 {
            lo
        } else {
            lo + rng.below(64) as u16
        };
        let mut allow = rng.below(8) != 0;
        // The variant flips one rule in a hundred.
        if variant == 1 && n % 100 == 7 {
            allow = !allow;
        }
        let section = match (allow, egress) {
            (true, false) => "allow-in",
            (true, true) => "allow-out",
            (false, false) => "deny-in",
            (false, true) => "deny-out",
        };
        let rule = b.rule(&format!("w{w:03}"), section, per_policy[w]);
        per_policy[w] += 1;
        let direction = if egress {
            Direction::Egress as u8
        } else {
            Direction::Ingress as u8
        };
        let action = if allow {
            Action::Allow as u8
        } else {
            Action::Deny as u8
        };
        for (port, bits) in aligned_cover(lo, hi) {
            // One entry per key, as the compiler guarantees.
            if seen.insert((workloads[w], direction, protocol, remote, port, bits)) {
                let key = VerdictKey::new(workloads[w], direction, protocol, remote, port, bits);
                b.entry_unchecked(key, action, rule);
            }
        }
    }
    b.build()
}

/// TOML text of a 20,000-rule policy set; `variant` 1 edits about 1% of
/// the rules and moves a few peer prefixes.
fn generate_toml(variant: u64) -> String {
    use std::fmt::Write as _;
    let mut t = String::new();
    for i in 0..WORKLOADS {
        let _ = writeln!(
            t,
            "[workload.w{i:03}]\nunit = \"w{i:03}.service\"\nlabels = {{ app = \"a{:02}\" }}",
            i / 5
        );
    }
    for i in 0..PEERS {
        let moved = variant == 1 && i % 50 == 0;
        let cidr = if moved {
            format!("10.200.{}.0/24", i / 50)
        } else if i % 10 == 9 {
            format!("10.{}.{}.16/28", i / 250, (i - 1) % 250)
        } else {
            format!("10.{}.{}.0/24", i / 250, i % 250)
        };
        let _ = writeln!(
            t,
            "[peer.p{i:03}]\ncidrs = [\"{cidr}\"]\nlabels = {{ zone = \"z{}\" }}",
            i % 20
        );
    }
    let mut rng = Rng(0x5851_f42d_4c95_7f2d);
    const PER_POLICY: usize = 20;
    for p in 0..RULES / PER_POLICY {
        let _ = writeln!(
            t,
            "[[policy]]\nname = \"pol{p:04}\"\nselect = {{ app = \"a{:02}\" }}",
            p % (WORKLOADS / 5)
        );
        let mut sections: [Vec<String>; 4] = Default::default();
        for r in 0..PER_POLICY {
            let n = p * PER_POLICY + r;
            let section = match rng.below(16) {
                0 => 2,
                1 => 3,
                x => x % 2,
            };
            let remote = match rng.below(10) {
                0 => "\"world\"".to_owned(),
                1 => format!("{{ zone = \"z{}\" }}", rng.below(20)),
                2..=4 => format!("\"workload:w{:03}\"", rng.below(WORKLOADS)),
                _ => format!("\"peer:p{:03}\"", rng.below(PEERS)),
            };
            let lo = 1 + rng.below(60_000);
            let mut hi = if rng.below(3) == 0 {
                lo
            } else {
                lo + rng.below(64)
            };
            if variant == 1 && n % 100 == 7 {
                hi += 16;
            }
            let proto = if rng.below(4) == 0 { "udp" } else { "tcp" };
            let ports = if lo == hi {
                format!("{lo}/{proto}")
            } else {
                format!("{lo}-{hi}/{proto}")
            };
            let key = if section % 2 == 0 { "from" } else { "to" };
            sections[section].push(format!(
                "  {{ {key} = [{remote}], ports = [\"{ports}\"] }},"
            ));
        }
        for (name, rules) in ["allow-in", "allow-out", "deny-in", "deny-out"]
            .iter()
            .zip(&sections)
        {
            if !rules.is_empty() {
                let _ = writeln!(t, "{name} = [\n{}\n]", rules.join("\n"));
            }
        }
    }
    t
}

fn compile_toml(text: &str) -> DiffInput {
    let sources = [(std::path::PathBuf::from("bench.toml"), text.to_owned())];
    let loaded = enforcer::policy::load_sources(&sources)
        .unwrap_or_else(|e| panic!("generated policy invalid: {e}"));
    let meta = enforcer::diff::load::meta(&loaded.set);
    let (compiled, _) = enforcer::check::compile_loaded(loaded, std::time::SystemTime::now())
        .unwrap_or_else(|e| panic!("generated policy does not compile: {e}"));
    DiffInput { compiled, meta }
}

struct Stats {
    name: String,
    median_ns: u128,
    /// CPU time of this thread: what the work costs when the machine is
    /// shared and wall time is inflated by waiting for a core.
    median_cpu_ns: u128,
    min_ns: u128,
    max_ns: u128,
    rounds: usize,
}

fn measure(name: &str, rounds: usize, mut f: impl FnMut()) -> Stats {
    f(); // warm-up
    let mut cpu = Vec::with_capacity(rounds);
    let mut times: Vec<u128> = (0..rounds)
        .map(|_| {
            let (start, cpu_start) = (Instant::now(), thread_cpu_ns());
            f();
            cpu.push(thread_cpu_ns().saturating_sub(cpu_start));
            start.elapsed().as_nanos()
        })
        .collect();
    times.sort_unstable();
    cpu.sort_unstable();
    Stats {
        name: name.to_owned(),
        median_ns: times[times.len() / 2],
        median_cpu_ns: cpu[cpu.len() / 2],
        min_ns: times[0],
        max_ns: times[times.len() - 1],
        rounds,
    }
}

fn main() {
    let Args { quick, json } = Args::from_env();
    let rounds = if quick { 5 } else { 20 };

    let old = DiffInput::from_compiled(generate(0));
    let new = DiffInput::from_compiled(generate(1));
    let d = diff(&old, &new);
    eprintln!(
        "policies: {} verdict entries / {} rules each; diff: {} rows, {} entity changes",
        old.compiled.verdicts.len(),
        old.compiled.rules.len(),
        d.changes.len(),
        d.entities.len()
    );
    assert!(
        !d.changes.is_empty() && d.widened && d.narrowed,
        "the variant must change verdicts"
    );

    let old_c = compile_toml(&generate_toml(0));
    let new_c = compile_toml(&generate_toml(1));
    let dc = diff(&old_c, &new_c);
    eprintln!(
        "compiled: {} / {} verdict entries, {} rules each; diff: {} rows, {} entity changes",
        old_c.compiled.verdicts.len(),
        new_c.compiled.verdicts.len(),
        old_c.compiled.rules.len(),
        dc.changes.len(),
        dc.entities.len()
    );
    assert!(!dc.changes.is_empty(), "the variant must change verdicts");

    let results = [
        measure("diff_20k_rules", rounds, || {
            std::hint::black_box(diff(&old, &new));
        }),
        measure("diff_20k_rules_identical", rounds, || {
            std::hint::black_box(diff(&old, &old));
        }),
        measure("diff_20k_rules_compiled", rounds, || {
            std::hint::black_box(diff(&old_c, &new_c));
        }),
        measure("reach_index_20k_compiled", rounds, || {
            std::hint::black_box(enforcer::diff::reach::Reach::new(&old_c.compiled));
        }),
    ];
    for s in &results {
        println!(
            "{:<28} median {:>9.3} ms  min {:>9.3} ms  max {:>9.3} ms  cpu {:>9.3} ms  ({} rounds)",
            s.name,
            s.median_ns as f64 / 1e6,
            s.min_ns as f64 / 1e6,
            s.max_ns as f64 / 1e6,
            s.median_cpu_ns as f64 / 1e6,
            s.rounds
        );
    }
    if let Some(path) = json {
        let doc: Vec<serde_json::Value> = results
            .iter()
            .map(|s| {
                serde_json::json!({"name": s.name, "median_ns": s.median_ns, "min_ns": s.min_ns,
                                   "max_ns": s.max_ns, "rounds": s.rounds,
                                   "median_cpu_ns": s.median_cpu_ns})
            })
            .collect();
        let text = serde_json::to_string_pretty(&doc).unwrap_or_default();
        if let Err(e) = std::fs::write(&path, text + "\n") {
            eprintln!("writing {}: {e}", path.display());
            std::process::exit(2);
        }
    }
}
