//! Helpers shared by the compile and diff benchmarks.

/// CPU time consumed by the calling thread, in nanoseconds (0 if the clock
/// cannot be read): on a loaded machine wall time also counts waiting for
/// a core.
pub fn thread_cpu_ns() -> u128 {
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
