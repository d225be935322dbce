//! Sockets already bound on this host, with the cgroup that owns each: the
//! receiving ends that the kernel's `post_bind` hooks never saw because
//! their services started before the programs were attached.
//!
//! The kernel tells both at once through `sock_diag` netlink
//! (`NETLINK_SOCK_DIAG`, an inet_diag dump of listening TCP and unconnected
//! UDP sockets of this network namespace, each with `INET_DIAG_CGROUP_ID`,
//! the cgroup its creator was in: what the programs see). That needs no
//! capability, unlike reading other users' `/proc/PID/fd` (the packaged
//! daemon has no `CAP_SYS_PTRACE`). When netlink cannot answer (kernel
//! without `udp_diag`, say), the fallback is `/proc/net/{tcp,tcp6,udp,udp6}`,
//! the `socket:[INODE]` links under `/proc/PID/fd` and the `0::` line of
//! `/proc/PID/cgroup`, which sees only the processes this daemon may
//! inspect.

pub mod diag;
pub mod procfs;

#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::path::Path;

use procfs::{owners, receiving_sockets};

/// What one scan found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scan {
    /// Every (protocol, port) bound by a receiving socket.
    pub bound: BTreeSet<(u8, u16)>,
    /// `(protocol, port, cgroup id)` for the ports whose owner was found.
    pub owners: Vec<(u8, u16, u64)>,
}

/// Scan this network namespace: `sock_diag` first, `/proc` when it fails.
/// With `/proc`, owners are looked up only for ports `known` says are
/// unknown (the walk of every `/proc/PID/fd` is the costly part).
pub fn scan(cgroup_mount: &Path, known: impl Fn(u8, u16) -> bool) -> Scan {
    match diag::bound_ports() {
        Ok(found) => {
            let bound = found.iter().map(|&(p, port, _)| (p, port)).collect();
            let mut seen = BTreeSet::new();
            let owners = found
                .into_iter()
                .filter(|&(p, port, _)| seen.insert((p, port)))
                .collect();
            Scan { bound, owners }
        }
        Err(e) => {
            tracing::debug!(error = %e, "sock_diag unavailable; scanning /proc");
            let sockets = receiving_sockets();
            let unknown: Vec<(u8, u16, u64)> = sockets
                .iter()
                .copied()
                .filter(|&(p, port, _)| !known(p, port))
                .collect();
            Scan {
                bound: sockets.iter().map(|&(p, port, _)| (p, port)).collect(),
                owners: owners(&unknown, cgroup_mount),
            }
        }
    }
}
