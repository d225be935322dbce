//! The kernel's tick rate, which the kernel programs need to keep the event
//! rate limit in jiffies (see `Config::jiffies_per_second`).

/// Jiffies per second (`CONFIG_HZ`), or 0 when it cannot be read. The
/// resolution of `CLOCK_MONOTONIC_COARSE` is one tick (`TICK_NSEC`), so HZ
/// is its inverse, rounded (`TICK_NSEC` is itself rounded for an HZ that
/// does not divide 10^9, such as 300).
pub(super) fn jiffies_per_second() -> u16 {
    let mut res = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `res` is a valid, writable timespec.
    if unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut res) } != 0 {
        return 0;
    }
    hz_of_tick(i128::from(res.tv_sec) * 1_000_000_000 + i128::from(res.tv_nsec))
}

/// HZ from the length of one tick in ns; 0 for a length that no tick rate
/// the kernel programs can use (1..=65,535 jiffies per second) gives.
fn hz_of_tick(tick_ns: i128) -> u16 {
    if tick_ns <= 0 {
        return 0;
    }
    let hz = (1_000_000_000 + tick_ns / 2) / tick_ns;
    u16::try_from(hz).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usual_tick_rates_round_trip() {
        // TICK_NSEC = (10^9 + HZ/2) / HZ.
        for hz in [100u16, 250, 300, 1000, 1024] {
            let tick = (1_000_000_000 + i128::from(hz) / 2) / i128::from(hz);
            assert_eq!(hz_of_tick(tick), hz, "HZ={hz}");
        }
    }

    #[test]
    fn unusable_ticks_are_unknown() {
        assert_eq!(hz_of_tick(0), 0);
        assert_eq!(hz_of_tick(-5), 0);
        // A 1 ns "tick" (a high-resolution clock) is 10^9 per second.
        assert_eq!(hz_of_tick(1), 0);
    }

    #[test]
    fn this_host_has_a_tick_rate() {
        let hz = jiffies_per_second();
        assert!((24..=10_000).contains(&hz), "HZ={hz}");
    }
}
