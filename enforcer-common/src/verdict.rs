//! Verdicts: what the data plane decides for a connection, and the verdict
//! trie it looks them up in.

use crate::identity::Identity;

/// Direction of a connection as seen from the local workload. Map fields
/// hold the raw byte (`Direction::Egress as u8`); 0 there means unknown.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// Opened by (or sent from) the local workload.
    Egress = 1,
    /// Opened by (or sent to the local workload from) the remote end.
    Ingress = 2,
}

impl Direction {
    /// The direction a map byte names, `None` for any other byte.
    #[inline(always)]
    pub const fn from_raw(raw: u8) -> Option<Direction> {
        match raw {
            1 => Some(Direction::Egress),
            2 => Some(Direction::Ingress),
            _ => None,
        }
    }

    /// The direction the other end sees.
    #[inline(always)]
    pub const fn opposite(self) -> Direction {
        match self {
            Direction::Egress => Direction::Ingress,
            Direction::Ingress => Direction::Egress,
        }
    }
}

/// What was decided for a connection. Map fields hold the raw byte
/// (`Action::Allow as u8`); every value also indexes the per-workload
/// counters ([`crate::counters::COUNTER_ACTIONS`] slots, 0 unused).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// Allowed.
    Allow = 1,
    /// Denied.
    Deny = 2,
    /// Would have been denied, allowed because the workload is in audit
    /// mode.
    Audit = 3,
}

impl Action {
    /// The action a map byte names, `None` for any other byte.
    #[inline(always)]
    pub const fn from_raw(raw: u8) -> Option<Action> {
        match raw {
            1 => Some(Action::Allow),
            2 => Some(Action::Deny),
            3 => Some(Action::Audit),
            _ => None,
        }
    }
}

/// The rule index meaning "no rule decided: default deny".
pub const RULE_DEFAULT_DENY: u32 = u32::MAX;
/// The rule index meaning "allowed by a built-in exception" (loopback to
/// itself, neighbour discovery, DHCP replies, failsafe ports).
pub const RULE_BUILTIN: u32 = u32::MAX - 1;
/// The rule index meaning "decided by the `--unmanaged` setting".
pub const RULE_UNMANAGED: u32 = u32::MAX - 2;
/// The rule index meaning "not checked: the workload is in mode `off`".
pub const RULE_MODE_OFF: u32 = u32::MAX - 3;

/// Number of bits of [`VerdictKey::data`] before the port: workload (32),
/// direction (8), protocol (8), remote identity (32).
pub const VERDICT_FIXED_PREFIX_BITS: u32 = 80;
/// Full length of a verdict key: the fixed part plus the 16-bit port.
pub const VERDICT_KEY_BITS: u32 = VERDICT_FIXED_PREFIX_BITS + 16;

/// Key of the verdict trie: a longest-prefix match whose fixed part (80
/// bits: workload class, direction, protocol, remote identity, all
/// big-endian; see [`crate::workload::CgroupEntry::class`]) is
/// always matched in full, and whose last 16 bits are the service port, so
/// that a port range compiles to at most 30 prefix-aligned blocks instead of
/// one entry per port. `prefix_len` is 80 + the number of port bits fixed.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VerdictKey {
    /// Bits of `data` that are fixed: 80 plus the fixed bits of the port.
    pub prefix_len: u32,
    /// Workload (4 bytes), direction, protocol, remote identity (4 bytes), port (2 bytes), big-endian.
    pub data: [u8; 12],
}

impl VerdictKey {
    /// A key matching exactly one port (or, with `port_bits < 16`, the
    /// aligned block of ports that shares the first `port_bits` bits).
    /// `direction` and `protocol` are the raw bytes of a [`Direction`] and
    /// a [`crate::protocol::Protocol`].
    pub const fn new(
        workload: Identity,
        direction: u8,
        protocol: u8,
        remote: Identity,
        port: u16,
        port_bits: u8,
    ) -> Self {
        let w = workload.to_be_bytes();
        let r = remote.to_be_bytes();
        let p = port.to_be_bytes();
        VerdictKey {
            prefix_len: VERDICT_FIXED_PREFIX_BITS + port_bits as u32,
            data: [
                w[0], w[1], w[2], w[3], direction, protocol, r[0], r[1], r[2], r[3], p[0], p[1],
            ],
        }
    }

    /// The workload (or verdict class) the entry is for.
    pub const fn workload(&self) -> Identity {
        u32::from_be_bytes([self.data[0], self.data[1], self.data[2], self.data[3]])
    }
    /// The [`Direction`] byte.
    pub const fn direction(&self) -> u8 {
        self.data[4]
    }
    /// The [`crate::protocol::Protocol`] byte.
    pub const fn protocol(&self) -> u8 {
        self.data[5]
    }
    /// The remote identity.
    pub const fn remote(&self) -> Identity {
        u32::from_be_bytes([self.data[6], self.data[7], self.data[8], self.data[9]])
    }
    /// The first port of the block.
    pub const fn port(&self) -> u16 {
        u16::from_be_bytes([self.data[10], self.data[11]])
    }
    /// How many leading bits of the port are fixed (0..=16).
    pub const fn port_bits(&self) -> u32 {
        self.prefix_len.saturating_sub(VERDICT_FIXED_PREFIX_BITS)
    }
}

/// The decision stored for a block of ports.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VerdictValue {
    /// Index into the compiled policy's rule table, or [`RULE_DEFAULT_DENY`].
    pub rule: u32,
    /// [`Action::Allow`] or [`Action::Deny`].
    pub action: u8,
    /// Padding (zero).
    pub _pad: [u8; 3],
}

#[cfg(feature = "user")]
mod user {
    use super::{VerdictKey, VerdictValue};

    // SAFETY: `#[repr(C)]`, `Copy`, integers and byte arrays with explicit
    // padding fields: any bit pattern is valid.
    unsafe impl aya::Pod for VerdictKey {}
    unsafe impl aya::Pod for VerdictValue {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Protocol;

    #[test]
    fn verdict_key_round_trips_its_fields() {
        let key = VerdictKey::new(
            17,
            Direction::Ingress as u8,
            Protocol::Tcp as u8,
            0xdead_beef,
            5432,
            16,
        );
        assert_eq!(key.workload(), 17);
        assert_eq!(key.direction(), Direction::Ingress as u8);
        assert_eq!(key.protocol(), Protocol::Tcp as u8);
        assert_eq!(key.remote(), 0xdead_beef);
        assert_eq!(key.port(), 5432);
        assert_eq!(key.port_bits(), 16);
        assert_eq!(key.prefix_len, VERDICT_KEY_BITS);
    }

    #[test]
    fn raw_bytes_round_trip_and_others_are_none() {
        for d in [Direction::Egress, Direction::Ingress] {
            assert_eq!(Direction::from_raw(d as u8), Some(d));
            assert_eq!(d.opposite().opposite(), d);
            assert_ne!(d.opposite(), d);
        }
        for a in [Action::Allow, Action::Deny, Action::Audit] {
            assert_eq!(Action::from_raw(a as u8), Some(a));
        }
        assert_eq!(Direction::from_raw(0), None);
        assert_eq!(Action::from_raw(0), None);
        assert_eq!(Action::from_raw(4), None);
    }
}
