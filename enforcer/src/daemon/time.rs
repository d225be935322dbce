//! The conversion of kernel timestamps (`bpf_ktime_get_ns`, CLOCK_MONOTONIC)
//! to wall-clock time (formatted by [`crate::rfc3339`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The current CLOCK_MONOTONIC in nanoseconds (what `bpf_ktime_get_ns`
/// returns).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to fill; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// The wall-clock time of a kernel timestamp.
pub fn from_monotonic(ktime_ns: u64) -> SystemTime {
    let age = monotonic_ns().saturating_sub(ktime_ns);
    SystemTime::now()
        .checked_sub(Duration::from_nanos(age))
        .unwrap_or(UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_timestamps_map_to_now() {
        let converted = from_monotonic(monotonic_ns());
        let drift = SystemTime::now()
            .duration_since(converted)
            .unwrap_or(Duration::ZERO);
        assert!(drift < Duration::from_secs(1));
    }
}
