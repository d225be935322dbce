//! `cargo xtask test`: setup, formatting, lints, a build that shows the eBPF
//! object compiled from source, the unit tests, then the root-only
//! integration tests one at a time. Ends with one summary line over both
//! test stages; exits non-zero on any failure.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};

use crate::cmd::{self, banner, step};
use crate::{ebpf_object, setup};

/// Counts from cargo test's `test result:` lines.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tally {
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.ignored += other.ignored;
    }

    /// Parses one libtest summary line:
    /// `test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; ...`.
    pub(crate) fn parse(line: &str) -> Option<Tally> {
        let rest = line.trim().strip_prefix("test result: ")?;
        let (_, counts) = rest.split_once(". ")?;
        let mut tally = Tally::default();
        for part in counts.split(';') {
            let mut words = part.split_whitespace();
            let (Some(n), Some(what)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match what {
                "passed" => tally.passed = n,
                "failed" => tally.failed = n,
                "ignored" => tally.ignored = n,
                _ => {}
            }
        }
        Some(tally)
    }
}

pub(crate) fn run() -> Result<()> {
    setup::run()?;
    step(format!(
        "CI={} (root tests fail rather than skip when CI is set)",
        std::env::var("CI").unwrap_or_else(|_| "<unset>".to_owned())
    ));

    banner("format");
    cmd::run(cmd::cargo().args(["fmt", "--all", "--", "--check"]))?;

    banner("clippy");
    // The default members: enforcer-ebpf builds only for bpf, through
    // enforcer/build.rs.
    cmd::run(cmd::cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;

    banner("build (kernel programs from source)");
    cmd::run(cmd::cargo().args(["build", "-p", "enforcer"]))?;
    ebpf_object::report(false)?;

    let mut total = Tally::default();

    banner("unit tests");
    let unit = cargo_test(cmd::cargo().args([
        "test",
        "--workspace",
        "--exclude",
        "enforcer-tests",
        "--exclude",
        "enforcer-ebpf",
        "--no-fail-fast",
    ]));
    total.add(unit.tally);

    banner("root integration tests (one at a time)");
    let root = cargo_test(cmd::cargo().args([
        "test",
        "-p",
        "enforcer-tests",
        "--no-fail-fast",
        "--",
        "--test-threads=1",
    ]));
    total.add(root.tally);

    banner("summary");
    let mut failures = Vec::new();
    for (stage, outcome) in [("unit tests", &unit), ("root integration tests", &root)] {
        let Tally {
            passed,
            failed,
            ignored,
        } = outcome.tally;
        step(format!(
            "{stage}: {passed} passed, {failed} failed, {ignored} ignored"
        ));
        if let Err(e) = &outcome.status {
            failures.push(format!("{stage}: {e:#}"));
        }
    }
    let Tally {
        passed,
        failed,
        ignored,
    } = total;
    println!("tests: {passed} passed, {failed} failed, {ignored} skipped");
    if !failures.is_empty() {
        bail!("{}", failures.join("; "));
    }
    if failed > 0 {
        bail!("{failed} tests failed");
    }
    Ok(())
}

struct Outcome {
    tally: Tally,
    status: Result<()>,
}

/// Runs a `cargo test` command, echoing its output and adding up its
/// summary lines.
fn cargo_test(cmd: &mut Command) -> Outcome {
    let mut tally = Tally::default();
    let status = (|| {
        let line = cmd::display(cmd);
        println!("+ {line}");
        let mut child = cmd
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("could not start `{line}`"))?;
        let stdout = child.stdout.take().context("no stdout pipe")?;
        for text in BufReader::new(stdout).lines() {
            let text = text.context("reading cargo test output")?;
            println!("{text}");
            if let Some(t) = Tally::parse(&text) {
                tally.add(t);
            }
        }
        let status = child.wait().context("waiting for cargo test")?;
        if !status.success() {
            bail!("`{line}` failed ({status})");
        }
        Ok(())
    })();
    Outcome { tally, status }
}

#[cfg(test)]
mod tests {
    use super::Tally;

    #[test]
    fn parses_libtest_summary_lines() {
        assert_eq!(
            Tally::parse(
                "test result: ok. 12 passed; 0 failed; 3 ignored; 0 measured; 0 filtered out; finished in 0.01s"
            ),
            Some(Tally {
                passed: 12,
                failed: 0,
                ignored: 3
            })
        );
        assert_eq!(
            Tally::parse(
                "test result: FAILED. 1 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out"
            ),
            Some(Tally {
                passed: 1,
                failed: 2,
                ignored: 0
            })
        );
        assert_eq!(Tally::parse("running 3 tests"), None);
    }
}
