//! Helpers shared by the benchmarks.

#![allow(dead_code, reason = "each benchmark uses a different subset")]

use std::path::Path;

/// CPU time consumed by the calling thread, in nanoseconds (0 if the clock
/// cannot be read): on a loaded machine wall time also counts waiting for
/// a core.
pub(crate) fn thread_cpu_ns() -> u128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0;
    }
    ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128
}

/// The benchmark's own arguments: `[--quick] [--json PATH]`.
pub(crate) struct Args {
    /// Fewer rounds, for a smoke run.
    pub quick: bool,
    /// Where to write the results as JSON.
    pub json: Option<std::path::PathBuf>,
}

impl Args {
    pub(crate) fn from_env() -> Args {
        let args: Vec<String> = std::env::args().skip(1).collect();
        Args {
            quick: args.iter().any(|a| a == "--quick"),
            json: args
                .iter()
                .position(|a| a == "--json")
                .and_then(|i| args.get(i + 1))
                .map(Into::into),
        }
    }
}

/// One measured case: its name and one sample (ns) per round.
pub(crate) struct Row {
    pub name: String,
    pub samples: Vec<f64>,
}

impl Row {
    pub(crate) fn new(name: String) -> Row {
        Row {
            name,
            samples: Vec::new(),
        }
    }
}

/// Prints each row's median, minimum and maximum, its name padded to
/// `name_width`, and with a path writes them there as JSON
/// (`[{"name","median_ns","min_ns","max_ns","rounds"}]`). Every row has
/// at least one sample.
pub(crate) fn report(rows: Vec<Row>, name_width: usize, json: Option<&Path>) -> anyhow::Result<()> {
    let mut out = Vec::new();
    for mut row in rows {
        row.samples.sort_by(f64::total_cmp);
        let (min, max) = (row.samples[0], row.samples[row.samples.len() - 1]);
        let med = row.samples[row.samples.len() / 2];
        println!(
            "{:<name_width$} median {:>8.0} ns  min {:>8.0}  max {:>8.0}  ({} rounds)",
            row.name,
            med,
            min,
            max,
            row.samples.len()
        );
        out.push(serde_json::json!({
            "name": row.name, "median_ns": med, "min_ns": min, "max_ns": max, "rounds": row.samples.len(),
        }));
    }
    if let Some(path) = json {
        std::fs::write(path, serde_json::to_string_pretty(&out)?)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
