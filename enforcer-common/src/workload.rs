//! Workloads: the cgroup map's entries and the modes a workload runs in.

use crate::identity::Identity;

/// How a workload's connections are checked. Also the `--unmanaged`
/// setting for processes in no workload ([`crate::config::Config::unmanaged`]),
/// where `audit` means allow and report, `enforce` means deny, and
/// [`Mode::Off`] is `--unmanaged allow`. Map fields hold the raw byte
/// (`Mode::Enforce as u8`).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mode {
    /// Connections no rule allows are denied.
    Enforce = 0,
    /// Connections no rule allows pass and are reported as audited.
    Audit = 1,
    /// Not checked: every connection passes, nothing is reported.
    Off = 2,
}

impl Mode {
    /// The mode a map byte names, `None` for any other byte.
    #[inline(always)]
    pub const fn from_raw(raw: u8) -> Option<Mode> {
        match raw {
            0 => Some(Mode::Enforce),
            1 => Some(Mode::Audit),
            2 => Some(Mode::Off),
            _ => None,
        }
    }

    /// The mode a map byte names, any other byte as [`Mode::Enforce`]: a
    /// byte no daemon writes fails closed. The kernel programs' decoding.
    #[inline(always)]
    pub const fn from_raw_or_enforce(raw: u8) -> Mode {
        match raw {
            1 => Mode::Audit,
            2 => Mode::Off,
            _ => Mode::Enforce,
        }
    }
}

/// Value of the cgroup map (key: the cgroup v2 id, i.e. the inode number of
/// its directory).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CgroupEntry {
    /// The workload identity of the cgroup.
    pub workload: Identity,
    /// The workload's verdict class: the identity its verdict keys are
    /// stored under (workloads with identical verdict rows share one set).
    /// Only the verdict lookup uses it; flows, events and counters name
    /// the workload.
    pub class: Identity,
    /// A [`Mode`].
    pub mode: u8,
    /// Padding (zero).
    pub _pad: [u8; 3],
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: `#[repr(C)]`, `Copy`, integers with an explicit padding
    // field: any bit pattern is valid.
    unsafe impl aya::Pod for super::CgroupEntry {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mode_round_trips_and_unknown_bytes_enforce() {
        for m in [Mode::Enforce, Mode::Audit, Mode::Off] {
            assert_eq!(Mode::from_raw(m as u8), Some(m));
            assert_eq!(Mode::from_raw_or_enforce(m as u8), m);
        }
        for raw in 3..=u8::MAX {
            assert_eq!(Mode::from_raw(raw), None);
            assert_eq!(Mode::from_raw_or_enforce(raw), Mode::Enforce);
        }
    }
}
