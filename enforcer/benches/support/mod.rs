//! Helpers shared by the compile and diff benchmarks.

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
