//! The global settings the daemon writes, and what each policy slot holds.

/// Global settings, in a single-entry array map. Written by the daemon.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Config {
    /// Which set of policy maps (0 or 1) is in force. Flipping it is the
    /// atomic policy swap.
    pub active_slot: u32,
    /// Policy generation; flows stamped with another one are re-evaluated.
    pub generation: u32,
    /// The [`crate::workload::Mode`] of processes that belong to no
    /// workload: `Off` (`--unmanaged allow`), `Audit` or `Enforce` (deny).
    pub unmanaged: u8,
    /// Non-zero once the daemon has filled the maps; until then every
    /// program allows everything.
    pub enabled: u8,
    /// The kernel's tick rate (`HZ`, jiffies per second): the event rate
    /// limit in jiffies, which the denied fast path checks against
    /// [`crate::flow::FlowValue::quiet_until`] with an inlined jiffies read
    /// instead of a clock helper call. 0 (unknown, or a `CONFIG` written by
    /// an earlier daemon, where this was padding) disables that shortcut.
    pub jiffies_per_second: u16,
}

/// Which policy a policy slot holds, one per slot in
/// [`crate::map_names::SLOT_POLICIES`] (index = slot). Written by the daemon with
/// each policy it writes into a slot, never read by the programs: it tells a
/// restarted daemon what the kernel enforces, which the pins keep across a
/// restart (not a reboot).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SlotPolicy {
    /// The compiled policy's content hash.
    pub content_hash: u64,
    /// When the policy was written, in milliseconds since the Unix epoch;
    /// 0: unknown (never written, or a write that did not finish), and then
    /// `content_hash` means nothing.
    pub applied_unix_ms: u64,
}

/// How many entries [`crate::map_names::SLOT_POLICIES`] has: one per policy slot.
pub const POLICY_SLOTS: u32 = 2;

#[cfg(feature = "user")]
mod user {
    use super::{Config, SlotPolicy};

    // SAFETY: `#[repr(C)]`, `Copy`, integers only, no implicit padding: any
    // bit pattern is valid.
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for SlotPolicy {}
}
