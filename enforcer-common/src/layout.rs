//! The version of the map layout, and the pin directory named after it.

/// Defines [`LAYOUT_VERSION`] and [`LAYOUT_DIR`] from one literal, so that
/// the directory cannot name another version than the constant.
macro_rules! layout_version {
    ($version:literal) => {
        /// Bumped whenever a map's key or value layout changes. Pins live
        /// under a directory named after it ([`LAYOUT_DIR`]), so a new binary
        /// never reuses an old map with a different layout.
        pub const LAYOUT_VERSION: u32 = $version;

        /// The name of the pin directory for this layout (`v` and
        /// [`LAYOUT_VERSION`]), under the bpffs directory given to the
        /// loader.
        pub const LAYOUT_DIR: &str = concat!("v", $version);
    };
}

layout_version!(6);

#[cfg(test)]
mod tests {
    use core::mem::size_of;

    use super::*;
    use crate::{
        address::{AddrKey4, AddrKey6},
        cached_verdict::CachedVerdict,
        cgroup_match,
        config::{Config, SlotPolicy},
        counters::CounterKey,
        event::VerdictEvent,
        flow::{FlowKey, FlowValue},
        ports::{BoundPort, BoundPortKey, PortKey},
        verdict::{VerdictKey, VerdictValue},
        workload::CgroupEntry,
    };

    #[test]
    fn the_directory_names_the_version() {
        let digits = LAYOUT_DIR.strip_prefix('v').expect("starts with v");
        assert_eq!(digits.parse::<u32>(), Ok(LAYOUT_VERSION));
    }

    /// A size that changes here is a layout change: bump the version.
    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<AddrKey4>(), 8);
        assert_eq!(size_of::<AddrKey6>(), 20);
        assert_eq!(size_of::<VerdictKey>(), 16);
        assert_eq!(size_of::<VerdictValue>(), 8);
        assert_eq!(size_of::<CgroupEntry>(), 12);
        assert_eq!(size_of::<Config>(), 12);
        assert_eq!(size_of::<PortKey>(), 4);
        assert_eq!(size_of::<BoundPortKey>(), 16);
        assert_eq!(size_of::<FlowKey>(), 40);
        assert_eq!(size_of::<FlowValue>(), 40);
        assert_eq!(size_of::<CachedVerdict>(), 56);
        assert_eq!(size_of::<VerdictEvent>(), 72);
        assert_eq!(size_of::<CounterKey>(), 8);
        assert_eq!(size_of::<BoundPort>(), 16);
        assert_eq!(size_of::<cgroup_match::Registration>(), 56);
        assert_eq!(size_of::<cgroup_match::MatchState>(), 20);
        assert_eq!(size_of::<cgroup_match::ExactKey>(), 16);
        assert_eq!(size_of::<cgroup_match::GlobRule>(), 80);
        assert_eq!(size_of::<cgroup_match::CgroupMatch>(), 40);
        assert_eq!(size_of::<SlotPolicy>(), 16);
    }
}
