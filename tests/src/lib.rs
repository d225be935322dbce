//! Root-only integration-test infrastructure for the enforcer: real
//! cgroups, real test hosts in network namespaces, real traffic from real
//! processes — always cleaned up, even when a test panics.
//!
//! - [`privileged!`] / [`require_root`]: skip without root (fail under
//!   `CI`), and serialise root tests machine-wide.
//! - [`CgroupGuard`]: a test cgroup on the cgroup v2 hierarchy, with its id.
//! - [`TestHost`]: a network namespace + veth pair with documentation-range
//!   addresses, checked against what the machine already uses.
//! - [`Spawner`] / [`ChildGuard`]: processes placed in a cgroup (and a
//!   namespace) before they exec; [`fork`]: forked copies of the test
//!   process in a cgroup, running a closure.
//! - [`Probe`], [`Server`], [`TcpHold`], [`tcp_connect`], [`udp_send`],
//!   [`ping`]: the `probe` binary's clients and servers, with results as
//!   [`ProbeOutcome`].
//! - [`DaemonSpec`] / [`DaemonProcess`]: a real `enforcer run` with its
//!   own cgroup root, pins and socket, started until READY=1.
//! - [`ReachableCopy`]: a program copied where another user may run it,
//!   wherever the checkout is.
//!
//! See `tests/README.md` for a walk-through.

#![warn(missing_docs)]

pub mod cgroup;
pub mod daemon;
pub mod error;
pub mod fork;
pub mod netns;
pub mod privileged;
pub mod probe;
pub mod process;
pub mod reachable;
pub mod reap;
pub mod subnet;
mod util;

pub use cgroup::{CgroupGuard, cgroup_of_pid, cgroup2_mount};
pub use daemon::{DaemonProcess, DaemonSpec};
pub use error::{Error, Result};
pub use netns::{TestHost, TestHostBuilder};
pub use privileged::{Privileged, require_root};
pub use probe::{
    DEFAULT_TIMEOUT, Probe, ProbeOutcome, ProbeReport, Proto, Server, TcpHold, ping, probe_path,
    tcp_connect, udp_send,
};
pub use process::{ChildGuard, ChildOutput, Spawner};
pub use reachable::ReachableCopy;
pub use reap::reap_stale;
pub use subnet::Subnet;
pub use util::bpftool_json;
