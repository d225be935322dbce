//! Keys of the longest-prefix-match tries from remote addresses to
//! identities.

/// Key of the longest-prefix-match trie from remote IPv4 prefixes to
/// identities. Same layout as the kernel's `struct bpf_lpm_trie_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AddrKey4 {
    /// Prefix length in bits (0 to 32).
    pub prefix_len: u32,
    /// Network byte order.
    pub addr: [u8; 4],
}

/// Key of the longest-prefix-match trie from remote IPv6 prefixes to
/// identities.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AddrKey6 {
    /// Prefix length in bits (0 to 128).
    pub prefix_len: u32,
    /// Network byte order.
    pub addr: [u8; 16],
}

#[cfg(feature = "user")]
mod user {
    use super::{AddrKey4, AddrKey6};

    // SAFETY: `#[repr(C)]`, `Copy`, an integer and a byte array: any bit
    // pattern is valid.
    unsafe impl aya::Pod for AddrKey4 {}
    unsafe impl aya::Pod for AddrKey6 {}
}
