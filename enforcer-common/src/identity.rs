//! Numeric identities of the entities a policy names.

/// A numeric identity for an entity. Identities are assigned by the compiler.
pub type Identity = u32;

/// No identity: not a valid entity.
pub const IDENTITY_NONE: Identity = 0;
/// Every address outside this host that no peer covers.
pub const IDENTITY_WORLD: Identity = 1;
/// Processes on this host that belong to no workload, and this host's own
/// addresses when no local socket can be found for them.
pub const IDENTITY_HOST: Identity = 2;
/// The first identity the compiler hands out to workloads and peers.
pub const IDENTITY_FIRST_ALLOCATED: Identity = 16;
/// Verdict-key wildcard: every address outside this host (the `world`
/// selector, which covers peers too).
pub const IDENTITY_ANY_EXTERNAL: Identity = 0xffff_fffe;
/// Verdict-key wildcard: any remote entity (the `any` selector).
pub const IDENTITY_ANY: Identity = 0xffff_ffff;
