//! The control-plane benchmark: the real release daemon (`enforcer run`)
//! as a child process in a [`Sandbox`], fed generated policies of size N
//! (N workloads, N peers, N rules: `enforcer_bench::policy`) for N in
//! [`SIZES`]. Every round starts a fresh daemon and measures:
//!
//! - its resident memory idle (no policy) and after the largest apply;
//! - for each size, from an empty policy in force: `enforcer apply DIR`
//!   as an operator runs it (the CLI validates, then asks the daemon, which
//!   compiles again and puts the policy in the maps), and the daemon's share
//!   alone (the apply request on its socket until the reply that the new
//!   generation is in force);
//! - at the largest size, a change of one rule, the same two ways.
//!
//! The data plane keeps two policy slots and writes a new policy into the
//! inactive one after clearing it, so an apply also pays for removing the
//! policy applied *two* applies before. Each measurement therefore starts
//! from a known state: "from empty" means that both slots hold (almost)
//! nothing; the one-rule change runs with both slots holding the largest
//! size, as when an operator edits a large policy again and again.
//!
//! Compile times come from the compile micro-benchmark, which compiles the
//! very same generated policies in-process.

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use enforcer_bench::policy::{self, Shape, Variant};
use serde::Serialize;

use super::Interrupt;
use super::daemon::{CONTROL_PREFIX, CgroupRoot, Daemon, Memory, Sandbox};
use super::micro::MicroRow;
use super::stats::Summary;
use crate::cmd::{self, step};

/// The policy sizes: N workloads, N peers and N rules each.
pub(super) const SIZES: [usize; 3] = [100, 1_000, 10_000];
/// How long the daemon is left alone before its memory is read.
const SETTLE: Duration = Duration::from_secs(1);
/// How long an apply may take before the run gives up on it.
const REPLY_TIMEOUT: Duration = Duration::from_secs(120);

/// One measurement over all rounds.
#[derive(Debug, Serialize)]
pub(super) struct ControlRow {
    pub name: String,
    pub description: String,
    /// `ms` or `MiB`.
    pub unit: String,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// Samples behind the median (rounds of the compile micro-benchmark for
    /// the compile rows).
    pub rounds: u64,
}

/// Samples per measurement, kept in the order measurements first appear.
#[derive(Default)]
struct Samples(Vec<(String, String, &'static str, Vec<f64>)>);

impl Samples {
    fn push(&mut self, name: String, description: String, unit: &'static str, value: f64) {
        match self.0.iter_mut().find(|(n, ..)| *n == name) {
            Some((.., values)) => values.push(value),
            None => self.0.push((name, description, unit, vec![value])),
        }
    }

    fn push_ms(&mut self, name: String, description: String, elapsed: Duration) {
        self.push(name, description, "ms", elapsed.as_secs_f64() * 1e3);
    }

    fn push_memory(&mut self, when: &str, what: &str, memory: Memory) {
        self.push(
            format!("rss_{when}"),
            format!("daemon VmRSS {what}"),
            "MiB",
            mib(memory.rss_kib),
        );
        self.push(
            format!("peak_rss_{when}"),
            format!("daemon VmHWM (peak RSS) {what}"),
            "MiB",
            mib(memory.peak_kib),
        );
    }

    fn rows(self) -> Vec<ControlRow> {
        self.0
            .into_iter()
            .filter_map(|(name, description, unit, values)| {
                let summary = Summary::of(&values)?;
                Some(ControlRow {
                    name,
                    description,
                    unit: unit.to_owned(),
                    median: summary.median,
                    min: summary.min,
                    max: summary.max,
                    rounds: values.len() as u64,
                })
            })
            .collect()
    }
}

/// The generated policy directories, written once per run.
struct Policies {
    /// The daemon's configured `policies` directory: empty, and never
    /// written during the run (the daemon reloads it on any change).
    watched: PathBuf,
    /// An empty policy and one of size 1: applied one after the other
    /// before each measured apply, they leave both slots (almost) empty.
    empty: PathBuf,
    tiny: PathBuf,
    /// (N, directory) for every size, smallest first.
    sizes: Vec<(usize, PathBuf)>,
    /// The largest size with one rule changed.
    changed: PathBuf,
}

impl Policies {
    /// Leaves the empty policy in force and a policy of size 1 in the
    /// other slot, whatever was in force before.
    fn reset(&self, socket: &Path) -> Result<()> {
        request_apply(socket, &self.tiny, false)?;
        // Replacing a policy with workloads by none needs saying so.
        request_apply(socket, &self.empty, true)?;
        Ok(())
    }

    fn write(root: &Path) -> Result<Self> {
        let dir = |name: &str| -> Result<PathBuf> {
            let path = root.join(name);
            std::fs::create_dir(&path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            Ok(path)
        };
        let write = |name: &str, n: usize, variant: Variant| -> Result<PathBuf> {
            let path = dir(name)?;
            policy::write(&path, Shape::size(n), variant)
                .with_context(|| format!("cannot write the generated policy {}", path.display()))?;
            Ok(path)
        };
        let largest = SIZES.iter().copied().max().unwrap_or_default();
        Ok(Self {
            watched: dir("policies")?,
            empty: dir("empty")?,
            tiny: write("size-1", 1, Variant::Base)?,
            sizes: SIZES
                .iter()
                .map(|&n| Ok((n, write(&format!("size-{n}"), n, Variant::Base)?)))
                .collect::<Result<_>>()?,
            changed: write(
                &format!("size-{largest}-changed"),
                largest,
                Variant::OneRuleChanged,
            )?,
        })
    }
}

/// Builds the release `enforcer` binary and returns its path.
pub(super) fn build() -> Result<PathBuf> {
    cmd::run(cmd::cargo().args(["build", "--release", "-p", "enforcer", "--bin", "enforcer"]))?;
    let bin = cmd::target_dir().join("release/enforcer");
    if !bin.is_file() {
        bail!("enforcer was built but {} does not exist", bin.display());
    }
    Ok(bin)
}

/// Measures `rounds` rounds (one daemon each) and returns the rows: the
/// compile rows taken from `micro`, then the daemon's.
pub(super) fn run(
    enforcer: &Path,
    rounds: u32,
    interrupt: &Interrupt,
    micro: &[MicroRow],
) -> Result<Vec<ControlRow>> {
    let started = Instant::now();
    let sandbox = Sandbox::create(enforcer, CONTROL_PREFIX, CgroupRoot::Fresh)?;
    let policies = Policies::write(&sandbox.dir)?;
    let mut samples = Samples::default();
    for round in 0..rounds {
        interrupt.check()?;
        step(format!("round {}/{rounds}", round + 1));
        let round_started = Instant::now();
        let result = measure_round(&sandbox, enforcer, &policies, interrupt, &mut samples);
        // A fresh start for the next round's daemon, whatever happened.
        let removed = sandbox.uninstall();
        println!(
            "    round done in {:.1} s",
            round_started.elapsed().as_secs_f64()
        );
        result?;
        removed?;
    }
    let mut rows = compile_rows(micro);
    rows.extend(samples.rows());
    rows.sort_by_key(|row| table_order(&row.name));
    step(format!(
        "control plane measured in {:.0} s",
        started.elapsed().as_secs_f64()
    ));
    Ok(rows)
}

fn measure_round(
    sandbox: &Sandbox,
    enforcer: &Path,
    policies: &Policies,
    interrupt: &Interrupt,
    samples: &mut Samples,
) -> Result<()> {
    let starting = Instant::now();
    let daemon = Daemon::start(sandbox, &policies.watched)?;
    println!(
        "    daemon {} ready in {:.0} ms",
        daemon.pid(),
        ms(starting.elapsed())
    );
    let socket = sandbox.socket();
    let result = (|| -> Result<()> {
        let Some((largest, base)) = policies.sizes.last() else {
            return Ok(());
        };
        std::thread::sleep(SETTLE);
        let idle = daemon.memory()?;
        samples.push_memory("idle", "idle (started, no policy)", idle);
        // The fresh daemon's first apply: memory after the largest policy
        // without the history of other applies, and one sample of its
        // apply from empty (both slots are).
        let (request, _) = timed_request(&socket, base)?;
        samples.push_ms(
            format!("apply_request/{largest}"),
            apply_request_description(*largest),
            request,
        );
        std::thread::sleep(SETTLE);
        let after = daemon.memory()?;
        samples.push_memory(
            &format!("after_{largest}"),
            &format!("after applying size {largest}"),
            after,
        );
        println!(
            "    RSS idle {:.1} MiB (peak {:.1}), after size {largest} {:.1} MiB (peak {:.1})",
            mib(idle.rss_kib),
            mib(idle.peak_kib),
            mib(after.rss_kib),
            mib(after.peak_kib)
        );
        for (n, dir) in &policies.sizes {
            interrupt.check()?;
            policies.reset(&socket)?;
            let cli = cli_apply(enforcer, &socket, dir)?;
            samples.push_ms(
                format!("apply/{n}"),
                format!("`enforcer apply` of size {n}, empty policy before"),
                cli,
            );
            // The largest size's request was measured first thing.
            let request = if n == largest {
                request
            } else {
                interrupt.check()?;
                policies.reset(&socket)?;
                let (request, _) = timed_request(&socket, dir)?;
                samples.push_ms(
                    format!("apply_request/{n}"),
                    apply_request_description(*n),
                    request,
                );
                request
            };
            println!(
                "    size {n:>6}: enforcer apply {:>8.1} ms, request {:>8.1} ms",
                ms(cli),
                ms(request)
            );
        }
        interrupt.check()?;
        // Size `largest` is in force (the loop's last apply); one more apply
        // and both slots hold it. Then change one rule back, and again.
        request_apply(&socket, &policies.changed, false)?;
        let cli = cli_apply(enforcer, &socket, base)?;
        samples.push_ms(
            format!("change_one_rule/{largest}"),
            format!("`enforcer apply` of size {largest} with one rule changed"),
            cli,
        );
        interrupt.check()?;
        let (changed, _) = timed_request(&socket, &policies.changed)?;
        samples.push_ms(
            format!("change_one_rule_request/{largest}"),
            format!("apply request of size {largest} with one rule changed"),
            changed,
        );
        println!(
            "    one rule of {largest} changed: enforcer apply {:>8.1} ms, request {:>8.1} ms",
            ms(cli),
            ms(changed),
        );
        Ok(())
    })();
    match result {
        Ok(()) => daemon.stop(),
        // A Ctrl-C also stops the `enforcer apply` in flight: say why.
        Err(_) if interrupt.check().is_err() => bail!("interrupted"),
        Err(e) => Err(e.context(format!("daemon log:\n{}", daemon.log_tail()))),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn apply_request_description(n: usize) -> String {
    format!("apply request of size {n} until in force, empty policy before")
}

/// `enforcer apply DIR`, timed from start to exit; fails unless it applied
/// a new generation.
fn cli_apply(enforcer: &Path, socket: &Path, dir: &Path) -> Result<Duration> {
    let mut command = Command::new(enforcer);
    command.arg("apply").arg(dir).arg("--socket").arg(socket);
    let started = Instant::now();
    let output = cmd::probe(&mut command)?;
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() || !stdout.lines().any(|l| l.starts_with("applied: ")) {
        bail!(
            "`{}` did not apply a new generation ({}): {}{}",
            cmd::display(&command),
            output.status,
            stdout.trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(elapsed)
}

/// The apply request on the daemon's socket, timed from connecting to the
/// reply; fails unless it applied a new generation.
fn timed_request(socket: &Path, dir: &Path) -> Result<(Duration, u64)> {
    let started = Instant::now();
    let (generation, unchanged) = request_apply(socket, dir, false)?;
    let elapsed = started.elapsed();
    if unchanged {
        bail!(
            "the daemon found {} identical to the policy in force: nothing was measured",
            dir.display()
        );
    }
    Ok((elapsed, generation))
}

/// Asks the daemon to apply the policy files of `dir` (one JSON line each
/// way, as `enforcer apply` does; `docs/daemon.md`) and returns
/// (generation, unchanged). `allow_empty` as `enforcer apply --allow-empty`.
fn request_apply(socket: &Path, dir: &Path, allow_empty: bool) -> Result<(u64, bool)> {
    let mut stream = UnixStream::connect(socket)
        .with_context(|| format!("cannot connect to the daemon on {}", socket.display()))?;
    stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
    // As `enforcer apply` does: the client reads the files and sends their
    // text (the daemon never opens a path a client names).
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            files.push(serde_json::json!({ "name": name, "text": text }));
        }
    }
    let mut line = serde_json::to_string(&serde_json::json!({
        "request": "apply",
        "source": dir,
        "files": files,
        "allow_empty": allow_empty,
    }))?;
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    let mut reply = String::new();
    BufReader::new(&stream)
        .read_line(&mut reply)
        .with_context(|| format!("no answer to the apply of {}", dir.display()))?;
    parse_reply(&reply).with_context(|| format!("applying {}", dir.display()))
}

/// (generation, unchanged) from the daemon's answer to an apply.
fn parse_reply(line: &str) -> Result<(u64, bool)> {
    let reply: serde_json::Value = serde_json::from_str(line.trim())
        .with_context(|| format!("unreadable answer from the daemon: {line:?}"))?;
    match reply["response"].as_str() {
        Some("applied") => Ok((
            reply["generation"]
                .as_u64()
                .with_context(|| format!("no generation in {line:?}"))?,
            reply["unchanged"].as_bool().unwrap_or(false),
        )),
        Some("rejected") => bail!("the daemon rejected the policy: {}", reply["errors"]),
        Some("error") => bail!("the daemon failed: {}", reply["message"]),
        _ => bail!("unexpected answer from the daemon: {line:?}"),
    }
}

/// Where a row goes in the table: compile, then apply by size (the CLI,
/// then the request), the one-rule change, then memory.
fn table_order(name: &str) -> (u8, usize, u8) {
    let (kind, size) = match name.rsplit_once(['/', '_']) {
        Some((kind, size)) if size.bytes().all(|b| b.is_ascii_digit()) => {
            (kind, size.parse().unwrap_or(usize::MAX))
        }
        _ => (name, 0),
    };
    match kind {
        "compile" => (0, size, 0),
        "apply" => (1, size, 0),
        "apply_request" => (1, size, 1),
        "change_one_rule" => (2, size, 0),
        "change_one_rule_request" => (2, size, 1),
        "rss_idle" | "rss_after" => (3, size, 0),
        "peak_rss_idle" | "peak_rss_after" => (3, size, 1),
        _ => (4, size, 0),
    }
}

/// The compile micro-benchmark's results for [`SIZES`] (`compile_N`), as
/// control-plane rows.
fn compile_rows(micro: &[MicroRow]) -> Vec<ControlRow> {
    SIZES
        .iter()
        .filter_map(|n| {
            let row = micro
                .iter()
                .find(|r| r.bench == "compile" && r.name == format!("compile_{n}"))?;
            Some(ControlRow {
                name: format!("compile/{n}"),
                description: format!("load + compile of size {n}, in-process (micro-benchmark)"),
                unit: "ms".to_owned(),
                median: row.median_ns / 1e6,
                min: row.min_ns / 1e6,
                max: row.max_ns / 1e6,
                rounds: row.rounds,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_give_the_generation_or_the_reason() {
        assert_eq!(
            parse_reply(
                r#"{"response":"applied","generation":7,"content_hash":"00ff","unchanged":false,"warnings":[]}"#
            )
            .unwrap(),
            (7, false)
        );
        assert_eq!(
            parse_reply(
                r#"{"response":"applied","generation":7,"content_hash":"00ff","unchanged":true}"#
            )
            .unwrap(),
            (7, true)
        );
        let rejected = parse_reply(r#"{"response":"rejected","errors":["a.toml:1:1: bad"]}"#)
            .unwrap_err()
            .to_string();
        assert!(rejected.contains("a.toml:1:1: bad"), "{rejected}");
        let error = parse_reply(r#"{"response":"error","message":"busy"}"#)
            .unwrap_err()
            .to_string();
        assert!(error.contains("busy"), "{error}");
        assert!(parse_reply("").is_err());
        assert!(parse_reply(r#"{"response":"applied"}"#).is_err());
        assert!(parse_reply(r#"{"response":"status"}"#).is_err());
    }

    #[test]
    fn samples_become_rows_in_first_seen_order() {
        let mut samples = Samples::default();
        samples.push_ms("apply/100".into(), "a".into(), Duration::from_millis(3));
        samples.push_memory(
            "idle",
            "idle",
            Memory {
                rss_kib: 2048,
                peak_kib: 4096,
            },
        );
        samples.push_ms("apply/100".into(), "a".into(), Duration::from_millis(1));
        samples.push_ms("apply/100".into(), "a".into(), Duration::from_millis(2));
        let rows = samples.rows();
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["apply/100", "rss_idle", "peak_rss_idle"]);
        let apply = &rows[0];
        assert_eq!(
            (apply.median, apply.min, apply.max, apply.rounds),
            (2.0, 1.0, 3.0, 3)
        );
        assert_eq!(apply.unit, "ms");
        assert_eq!((rows[1].median, rows[1].unit.as_str()), (2.0, "MiB"));
        assert_eq!(rows[2].median, 4.0);
    }

    #[test]
    fn rows_are_ordered_by_kind_then_size() {
        let mut names = vec![
            "rss_idle",
            "peak_rss_idle",
            "apply_request/10000",
            "rss_after_10000",
            "peak_rss_after_10000",
            "change_one_rule/10000",
            "change_one_rule_request/10000",
            "apply/100",
            "apply_request/100",
            "apply/1000",
            "apply_request/1000",
            "apply/10000",
            "compile/100",
            "compile/1000",
            "compile/10000",
        ];
        names.sort_by_key(|n| table_order(n));
        assert_eq!(
            names,
            [
                "compile/100",
                "compile/1000",
                "compile/10000",
                "apply/100",
                "apply_request/100",
                "apply/1000",
                "apply_request/1000",
                "apply/10000",
                "apply_request/10000",
                "change_one_rule/10000",
                "change_one_rule_request/10000",
                "rss_idle",
                "peak_rss_idle",
                "rss_after_10000",
                "peak_rss_after_10000",
            ]
        );
    }

    #[test]
    fn compile_rows_come_from_the_compile_bench_at_the_control_sizes() {
        let micro = |bench: &str, name: &str, median_ns: f64| MicroRow {
            bench: bench.to_owned(),
            name: name.to_owned(),
            median_ns,
            min_ns: median_ns / 2.0,
            max_ns: median_ns * 2.0,
            rounds: 3,
            ratio_to_baseline: None,
        };
        let rows = compile_rows(&[
            micro("compile", "compile_10000", 320e6),
            micro("compile", "compile_100", 1.7e6),
            micro("compile", "compile_20000_rules", 460e6),
            micro("diff", "compile_1000", 1.0),
        ]);
        let got: Vec<(&str, f64, f64, f64)> = rows
            .iter()
            .map(|r| (r.name.as_str(), r.median, r.min, r.max))
            .collect();
        assert_eq!(
            got,
            [
                ("compile/100", 1.7, 0.85, 3.4),
                ("compile/10000", 320.0, 160.0, 640.0)
            ]
        );
    }
}
