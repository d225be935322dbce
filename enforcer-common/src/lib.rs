//! The binary contract between the enforcer's userspace and its kernel
//! programs: every eBPF map key and value, as `#[repr(C)]` types with
//! explicit padding, so both sides (and the reference evaluator) share one
//! definition and a layout mismatch is a compile error. One module per
//! concept; each holds its types, their constants, and (behind the `user`
//! feature) their `aya::Pod` impls.
//!
//! The data model is documented in `docs/dataplane.md`. In short:
//!
//! - every entity (workload, peer, `world`, `host`) has a numeric
//!   [`identity::Identity`];
//! - the local side of a packet is the workload owning the socket's cgroup
//!   ([`workload::CgroupEntry`]), whose verdict class keys the verdict
//!   lookup;
//! - the remote side is found by longest-prefix match over addresses
//!   ([`address::AddrKey4`], [`address::AddrKey6`]) or, for traffic between
//!   two sockets on this host, from the other socket's own flow or bound
//!   port;
//! - a new connection's verdict comes from [`verdict::VerdictKey`] lookups,
//!   at most three (exact remote, every external address, any remote), first
//!   hit wins; the compiler folds wildcard rules into the more specific
//!   levels so that "first hit" equals "deny wins over every allow";
//! - the verdict of a connection is kept in [`flow::FlowKey`] ->
//!   [`flow::FlowValue`], stamped with the policy generation, so a policy
//!   change re-evaluates it at its next packet.
//!
//! Closed sets of values ([`verdict::Action`], [`verdict::Direction`],
//! [`workload::Mode`], [`protocol::Protocol`], [`packet::PacketClass`]) are
//! `#[repr(u8)]` enums. A map key or value holds the raw byte (`Mode::Off
//! as u8`): whatever a map holds must be a valid value of its field's type,
//! and a corrupt byte must not be undefined behaviour. `from_raw` decodes a
//! byte; the kernel programs decode a mode with the total
//! [`workload::Mode::from_raw_or_enforce`].
#![no_std]
#![warn(clippy::unwrap_used, missing_docs)]

pub mod address;
pub mod cached_verdict;
pub mod capacity;
pub mod cgroup_match;
pub mod config;
pub mod counters;
pub mod event;
pub mod flow;
pub mod identity;
pub mod layout;
pub mod map_names;
pub mod packet;
pub mod ports;
pub mod protocol;
pub mod verdict;
pub mod workload;
