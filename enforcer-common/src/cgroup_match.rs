//! Matching a cgroup to its workload at its creation, in the kernel.
//!
//! The workload selectors (`unit = "X"`, `unit` with `user`, `cgroup =
//! "PATTERN"`) are compiled into an automaton over cgroup path segments:
//! each cgroup is in a few automaton *states* (per policy slot), a child's
//! states follow from its parent's states and its own name, and reaching an
//! *accepting* state makes the child a workload's own cgroup. The daemon
//! computes the states of the cgroups that exist and writes them into
//! [`map_names::CGROUP_MATCH`](crate::map_names::CGROUP_MATCH); the tracer on
//! `cgroup_mkdir` extends them to every cgroup created later, whether the
//! daemon runs or not. Both sides take a step with the functions of this
//! module, so they cannot disagree on what a name matches.
//!
//! See `docs/dataplane.md` ("Cgroups from their creation").

use crate::identity::Identity;

/// No automaton state: the end of a cgroup's state list.
pub const STATE_NONE: u16 = 0;
/// Automaton states a cgroup can be in, per slot. A cgroup in more (a
/// policy whose patterns overlap unusually much) keeps the first ones and
/// is flagged ([`CgroupMatch::overflow`]); the daemon registers its
/// descendants instead.
pub const STATES_PER_CGROUP: usize = 8;
/// States one step may reach (the transitions its name takes, and the
/// `also` states they bring), in the order they are found; more make the
/// child overflow ([`CgroupMatch::overflow`]).
pub const REACHED_PER_STEP: usize = 32;
/// States per slot (state 0 is [`STATE_NONE`]): every id a `u16` can
/// name. A policy takes about one per workload (each unit and each pattern
/// ends in an accepting state of its own), so this bounds it near the
/// cgroup map's 65,536 workloads rather than below it. The state table
/// holds both slots, slot 1's after slot 0's: one map rather than one per
/// slot, so that the tracer's loops do not branch on the slot (every
/// branch doubles the paths the verifier checks).
pub const MAX_MATCH_STATES: u32 = 1 << 16;
/// Exact-name transitions per slot.
pub const MAX_MATCH_EXACT: u32 = 65_536;
/// Glob transitions per slot (the glob table holds both, as the states).
pub const MAX_MATCH_GLOBS: u32 = 8192;
/// Glob transitions out of one state.
pub const MAX_GLOBS_PER_STATE: u32 = 1024;
/// The longest path segment with a `*` that the kernel can match: a
/// position per bit of a word, and one bit for "matched".
pub const MAX_GLOB_LEN: usize = 63;
/// The longest cgroup name (`NAME_MAX`), in 8-byte words.
pub const NAME_WORDS: usize = 32;
/// Workload identities whose registered cgroups are counted (the quota):
/// a policy with more workloads is refused.
pub const MAX_COUNTED_WORKLOADS: u32 = 65_536;

/// [`MatchState::flags`]: the state has transitions by exact name in
/// [`map_names::MATCH_EXACT`](crate::map_names::MATCH_EXACT).
pub const STATE_HAS_EXACT: u8 = 1;
/// [`MatchState::flags`]: its transitions may be taken from a delegated
/// cgroup (inside a user manager's tree, or a `delegated = true` pattern).
pub const STATE_FROM_DELEGATED: u8 = 2;
/// [`MatchState::flags`]: its accepting workload takes a delegated cgroup
/// too (`delegated = true`, a user unit, or a system unit whose own
/// directory systemd handed to its user with `Delegate=`).
pub const STATE_ACCEPT_DELEGATED: u8 = 4;

/// The byte offsets of the kernel fields the tracer reads, found in the
/// kernel's BTF by the loader (Rust programs have no CO-RE relocations).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct KernelOffsets {
    /// `struct cgroup` -> `kn` (`struct kernfs_node *`).
    pub cgroup_kn: u32,
    /// `struct cgroup` -> `root` (`struct cgroup_root *`).
    pub cgroup_root: u32,
    /// `struct cgroup_root` -> `hierarchy_id` (0 for cgroup v2).
    pub root_hierarchy_id: u32,
    /// `struct kernfs_node` -> `id` (the cgroup id).
    pub kn_id: u32,
    /// `struct kernfs_node` -> `parent` (`__parent` since 6.15).
    pub kn_parent: u32,
    /// `struct kernfs_node` -> `name`.
    pub kn_name: u32,
}

/// The tracer's settings ([`map_names::REGISTRATION`](crate::map_names::REGISTRATION),
/// one entry), written by the loader before it attaches the tracer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Registration {
    /// Where the tracer finds the fields of a cgroup in this kernel (from its BTF).
    pub offsets: KernelOffsets,
    /// Non-zero once the loader filled this in; the tracer does nothing
    /// before.
    pub enabled: u32,
    /// The most cgroups the tracer registers for one workload in one slot
    /// (its own cgroups and their descendants).
    pub max_cgroups_per_workload: u32,
    /// The secret key of [`name_hash`]: cgroup names are chosen by whoever
    /// creates cgroups, who must not be able to make one collide with a
    /// name a policy selects.
    pub name_key: [u64; 2],
    /// The most [`map_names::CGROUP_MATCH`](crate::map_names::CGROUP_MATCH) entries
    /// of delegated cgroups, so that users with delegated trees cannot
    /// fill the table that system units need.
    pub max_delegated_matches: u32,
    /// Padding (zero).
    pub _pad: u32,
}

/// One automaton state of one slot ([`map_names::MATCH_STATES`](crate::map_names::MATCH_STATES),
/// indexed by state id).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MatchState {
    /// Its glob transitions: `MATCH_GLOBS[glob_first .. glob_first +
    /// glob_count]`.
    pub glob_first: u32,
    /// How many glob rules the state has, from `glob_first`.
    pub glob_count: u16,
    /// A state reached together with this one ([`STATE_NONE`] for none):
    /// after a segment followed by `**`, the `**` state, which matches zero
    /// segments as well as any number. Never chained.
    pub also: u16,
    /// `STATE_*` flags.
    pub flags: u8,
    /// The accepting workload's [`crate::workload::Mode`] (when `workload`
    /// is set).
    pub mode: u8,
    /// Padding (zero).
    pub _pad: [u8; 2],
    /// The workload whose own cgroup a cgroup reaching this state is; 0
    /// for none.
    pub workload: Identity,
    /// That workload's verdict class.
    pub class: Identity,
}

impl MatchState {
    /// Whether a cgroup in this state can lead its children anywhere.
    #[inline(always)]
    pub const fn has_transitions(&self) -> bool {
        self.glob_count != 0 || self.flags & STATE_HAS_EXACT != 0
    }
}

/// Key of an exact-name transition: from `state` of `slot`, by a name
/// whose [`name_hash`] is `name_hash`. The value is the next state (a
/// `u32`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExactKey {
    /// The state the name is matched in.
    pub state: u32,
    /// The policy slot (0 or 1).
    pub slot: u32,
    /// The keyed hash of the name ([`name_hash`]).
    pub name_hash: u64,
}

/// A transition by a path segment with `*` wildcards (each matching any run
/// of bytes, never `/`), as the bit-parallel matcher of [`glob_step`] takes
/// it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct GlobRule {
    /// The segment's bytes, little-endian words, zero past `len`.
    pub pattern: [u64; 8],
    /// Bit `j` set when byte `j` of the pattern is `*`.
    pub star: u64,
    /// Length of the pattern in bytes (at most [`MAX_GLOB_LEN`]).
    pub len: u32,
    /// The state a matching name leads to.
    pub next_state: u32,
}

/// What is known about one cgroup for matching its children
/// ([`map_names::CGROUP_MATCH`](crate::map_names::CGROUP_MATCH), keyed by cgroup id).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CgroupMatch {
    /// The automaton states it is in, per slot; [`STATE_NONE`] ends a list.
    pub states: [[u16; STATES_PER_CGROUP]; 2],
    /// Non-zero when this cgroup or one of its ancestors belongs to a user
    /// other than root (a delegated subtree).
    pub delegated: u8,
    /// Non-zero when a slot's states did not fit: its children are left
    /// to the daemon.
    pub overflow: u8,
    /// Padding (zero).
    pub _pad: [u8; 6],
}

impl GlobRule {
    /// The rule for one `*` segment, or `None` when it is longer than
    /// [`MAX_GLOB_LEN`].
    pub fn new(segment: &[u8], next_state: u32) -> Option<GlobRule> {
        if segment.len() > MAX_GLOB_LEN {
            return None;
        }
        let mut rule = GlobRule {
            len: segment.len() as u32,
            next_state,
            ..GlobRule::default()
        };
        let mut j = 0;
        while j < segment.len() {
            if segment[j] == b'*' {
                rule.star |= 1 << j;
            } else {
                rule.pattern[j / 8] |= u64::from(segment[j]) << ((j % 8) * 8);
            }
            j += 1;
        }
        Some(rule)
    }

    /// The positions set before the first byte: position 0, and past a
    /// leading `*` (which may match nothing).
    #[inline(always)]
    pub const fn start(&self) -> u64 {
        close_stars(1, self.star)
    }

    /// Whether positions `reached` after the last byte complete the pattern.
    #[inline(always)]
    pub const fn accepts(&self, reached: u64) -> bool {
        reached & (1u64 << self.len) != 0
    }

    /// The positions `j` whose pattern byte is the literal `c`.
    #[inline(always)]
    pub const fn literal_positions(&self, c: u8) -> u64 {
        const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
        let needle = (c as u64).wrapping_mul(0x0101_0101_0101_0101);
        let mut bits = 0u64;
        let mut w = 0;
        while w < 8 {
            let x = self.pattern[w] ^ needle;
            // 0x80 in exactly the bytes of `x` that are zero (no borrow
            // between bytes, unlike `(x - 0x01..) & !x`).
            let zero = !(((x & LOW7).wrapping_add(LOW7)) | x | LOW7);
            // Byte k's top bit to bit k: the multiplier puts each at 56 + k
            // and no two products overlap.
            let packed = (zero >> 7).wrapping_mul(0x0102_0408_1020_4080) >> 56;
            bits |= packed << (w * 8);
            w += 1;
        }
        // Zero bytes past the end, and the zero bytes standing for `*`,
        // are not literals.
        let within = if self.len >= 64 {
            u64::MAX
        } else {
            (1u64 << self.len) - 1
        };
        bits & within & !self.star
    }
}

/// Adds the positions right after a reached `*`: a star may match nothing.
/// Stars are never adjacent within a segment (`**` is a whole segment), so
/// one step is the whole closure.
#[inline(always)]
const fn close_stars(reached: u64, star: u64) -> u64 {
    reached | ((reached & star) << 1)
}

/// One name byte through a glob: from the positions `reached` before it,
/// the positions reached after it. 0 means the name cannot match any more.
#[inline(always)]
pub const fn glob_step(rule: &GlobRule, reached: u64, c: u8) -> u64 {
    let advanced = (reached & rule.literal_positions(c)) << 1;
    let stayed = reached & rule.star;
    close_stars(advanced | stayed, rule.star)
}

/// Whether `name` matches the glob (userspace and tests; the kernel runs
/// [`glob_step`] byte by byte in a loop helper).
pub fn glob_matches(rule: &GlobRule, name: &[u8]) -> bool {
    let mut reached = rule.start();
    for &c in name {
        reached = glob_step(rule, reached, c);
        if reached == 0 {
            return false;
        }
    }
    rule.accepts(reached)
}

/// A name as the kernel reads it into its scratch space: little-endian
/// words, zero past the end.
pub fn name_words(name: &[u8]) -> Option<[u64; NAME_WORDS]> {
    if name.len() > NAME_WORDS * 8 - 1 {
        return None;
    }
    let mut words = [0u64; NAME_WORDS];
    for (i, &b) in name.iter().enumerate() {
        words[i / 8] |= u64::from(b) << ((i % 8) * 8);
    }
    Some(words)
}

/// The keyed hash of a cgroup name (SipHash-1-3 over its `len` bytes in
/// `words`, little-endian, bytes past `len` ignored), the key of the
/// exact-name transitions. Keyed with a secret so that nobody who creates
/// cgroups can aim a name at another's hash.
#[inline(always)]
pub fn name_hash(key: [u64; 2], words: &[u64; NAME_WORDS], len: usize) -> u64 {
    let mut v0 = key[0] ^ 0x736f_6d65_7073_6575;
    let mut v1 = key[1] ^ 0x646f_7261_6e64_6f6d;
    let mut v2 = key[0] ^ 0x6c79_6765_6e65_7261;
    let mut v3 = key[1] ^ 0x7465_6462_7974_6573;
    let full = len / 8;
    let mut i = 0;
    while i < NAME_WORDS {
        if i >= full {
            break;
        }
        let m = words[i];
        v3 ^= m;
        sip_round(&mut v0, &mut v1, &mut v2, &mut v3);
        v0 ^= m;
        i += 1;
    }
    let rest = len % 8;
    let tail = if rest == 0 || full >= NAME_WORDS {
        0
    } else {
        words[full] & ((1u64 << (rest * 8)) - 1)
    };
    let m = tail | ((len as u64 & 0xff) << 56);
    v3 ^= m;
    sip_round(&mut v0, &mut v1, &mut v2, &mut v3);
    v0 ^= m;
    v2 ^= 0xff;
    sip_round(&mut v0, &mut v1, &mut v2, &mut v3);
    sip_round(&mut v0, &mut v1, &mut v2, &mut v3);
    sip_round(&mut v0, &mut v1, &mut v2, &mut v3);
    v0 ^ v1 ^ v2 ^ v3
}

#[inline(always)]
fn sip_round(v0: &mut u64, v1: &mut u64, v2: &mut u64, v3: &mut u64) {
    *v0 = v0.wrapping_add(*v1);
    *v1 = v1.rotate_left(13);
    *v1 ^= *v0;
    *v0 = v0.rotate_left(32);
    *v2 = v2.wrapping_add(*v3);
    *v3 = v3.rotate_left(16);
    *v3 ^= *v2;
    *v0 = v0.wrapping_add(*v3);
    *v3 = v3.rotate_left(21);
    *v3 ^= *v0;
    *v2 = v2.wrapping_add(*v1);
    *v1 = v1.rotate_left(17);
    *v1 ^= *v2;
    *v2 = v2.rotate_left(32);
}

#[cfg(feature = "user")]
mod user {
    use super::{CgroupMatch, ExactKey, GlobRule, MatchState, Registration};

    // SAFETY: `#[repr(C)]`, `Copy`, integers and arrays of integers with
    // explicit padding fields: any bit pattern is valid.
    unsafe impl aya::Pod for Registration {}
    unsafe impl aya::Pod for MatchState {}
    unsafe impl aya::Pod for ExactKey {}
    unsafe impl aya::Pod for GlobRule {}
    unsafe impl aya::Pod for CgroupMatch {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn glob(p: &str) -> GlobRule {
        GlobRule::new(p.as_bytes(), 7).unwrap()
    }

    /// The reference: `*` matches any run of bytes.
    fn naive(p: &[u8], s: &[u8]) -> bool {
        match p.split_first() {
            None => s.is_empty(),
            Some((b'*', rest)) => (0..=s.len()).any(|k| naive(rest, &s[k..])),
            Some((c, rest)) => s.first() == Some(c) && naive(rest, &s[1..]),
        }
    }

    #[test]
    fn globs_match_as_the_reference_does() {
        let patterns = [
            "api-*.service",
            "*.slice",
            "*",
            "a*b*c",
            "*x*",
            "exact.scope",
            "a*",
            "*a",
            "x*y*z*",
        ];
        let names = [
            "api-1.service",
            "api-.service",
            "api.service",
            "system.slice",
            ".slice",
            "slice",
            "abc",
            "aXbYc",
            "acb",
            "x",
            "",
            "exact.scope",
            "exact.scopes",
            "aaaa",
            "xyz",
            "xxyyzz",
            "zyx",
        ];
        for p in patterns {
            for n in names {
                assert_eq!(
                    glob_matches(&glob(p), n.as_bytes()),
                    naive(p.as_bytes(), n.as_bytes()),
                    "{p} against {n:?}"
                );
            }
        }
    }

    #[test]
    fn every_byte_value_and_the_longest_pattern_work() {
        let mut long = [0u8; MAX_GLOB_LEN];
        for (i, b) in long.iter_mut().enumerate() {
            *b = b'a' + (i % 26) as u8;
        }
        let rule = GlobRule::new(&long, 1).unwrap();
        assert!(glob_matches(&rule, &long));
        assert!(!glob_matches(&rule, &long[..62]));
        assert!(GlobRule::new(&[b'a'; 64], 1).is_none());
        // High bytes and zero bytes are literals like any other.
        let odd = [0xffu8, b'*', 0x80, 0x01];
        let rule = GlobRule::new(&odd, 1).unwrap();
        assert!(glob_matches(&rule, &[0xff, 0x80, 0x01]));
        assert!(glob_matches(&rule, &[0xff, 0, 0, 0x80, 0x01]));
        assert!(!glob_matches(&rule, &[0xfe, 0x80, 0x01]));
        // A zero byte in a name is not a star.
        assert!(!glob_matches(&glob("a*b"), b"a\0c"));
    }

    #[test]
    fn the_name_hash_depends_on_every_byte_the_length_and_the_key() {
        let key = [1, 2];
        let h = |name: &[u8], key| name_hash(key, &name_words(name).unwrap(), name.len());
        let base = h(b"postgresql.service", key);
        assert_ne!(base, h(b"postgresql.servicf", key));
        assert_ne!(base, h(b"postgresql.servic", key));
        assert_ne!(base, h(b"postgresql.service", [1, 3]));
        assert_eq!(base, h(b"postgresql.service", key));
        // Bytes past the length are ignored (the kernel's scratch buffer
        // may hold a longer earlier name).
        let mut dirty = name_words(b"postgresql.service").unwrap();
        dirty[2] |= 0xdead_0000_0000_0000;
        dirty[5] = 77;
        assert_eq!(base, name_hash(key, &dirty, 18));
        assert_ne!(h(b"", key), h(b"\0", key));
        let longest = [b'x'; NAME_WORDS * 8 - 1];
        assert_ne!(h(&longest, key), h(&longest[..254], key));
        assert!(name_words(&[b'x'; NAME_WORDS * 8]).is_none());
    }
}
