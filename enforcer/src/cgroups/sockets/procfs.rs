//! Bound sockets and their owners through `/proc`: the fallback when
//! `sock_diag` cannot answer. It sees only the processes this daemon may
//! inspect.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use enforcer_common::protocol::Protocol;

/// `TCP_LISTEN` in `/proc/net/tcp*`.
const TCP_LISTEN: &str = "0A";
/// `TCP_CLOSE`: what an unconnected (bound) UDP socket shows.
const UDP_UNCONNECTED: &str = "07";

/// A bound port and the inode of its socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcSocket {
    pub port: u16,
    pub inode: u64,
}

/// The receiving sockets of one `/proc/net/{tcp,tcp6,udp,udp6}` table:
/// listening TCP sockets, or UDP sockets bound to a port and connected to
/// nobody. Malformed lines are skipped (the format is the kernel's, but a
/// parser must not trust it blindly).
pub fn parse_proc_net(text: &str, protocol: u8) -> Vec<ProcSocket> {
    let state = if protocol == Protocol::Tcp as u8 {
        TCP_LISTEN
    } else {
        UDP_UNCONNECTED
    };
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, remote, st, inode) = (
                fields.get(1)?,
                fields.get(2)?,
                fields.get(3)?,
                fields.get(9)?,
            );
            if *st != state {
                return None;
            }
            let port = u16::from_str_radix(local.rsplit_once(':')?.1, 16).ok()?;
            let remote_port = u16::from_str_radix(remote.rsplit_once(':')?.1, 16).ok()?;
            let inode: u64 = inode.parse().ok()?;
            // Port 0: not bound; a remote port: a connected UDP client.
            (port != 0 && remote_port == 0 && inode != 0).then_some(ProcSocket { port, inode })
        })
        .collect()
}

/// The cgroup v2 path of a process, from `/proc/PID/cgroup` (`0::/path`).
pub fn parse_proc_cgroup(text: &str) -> Option<&str> {
    text.lines().find_map(|l| l.strip_prefix("0::"))
}

/// The socket inode of an fd link target (`socket:[12345]`).
pub fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Every receiving socket of this network namespace as `(protocol, port,
/// socket inode)`. A missing table (IPv6 disabled) has nothing bound.
pub fn receiving_sockets() -> Vec<(u8, u16, u64)> {
    let mut out = Vec::new();
    for (file, protocol) in [
        ("/proc/net/tcp", Protocol::Tcp as u8),
        ("/proc/net/tcp6", Protocol::Tcp as u8),
        ("/proc/net/udp", Protocol::Udp as u8),
        ("/proc/net/udp6", Protocol::Udp as u8),
    ] {
        if let Ok(text) = std::fs::read_to_string(file) {
            out.extend(
                parse_proc_net(&text, protocol)
                    .into_iter()
                    .map(|s| (protocol, s.port, s.inode)),
            );
        }
    }
    out
}

/// The owners of `sockets` (from [`receiving_sockets`]) as `(protocol,
/// port, cgroup id)`, one entry per (protocol, port): the first owner found
/// wins (sockets sharing a port, like nginx's workers, share a cgroup in
/// practice). Sockets whose owner cannot be found (it exited, or this
/// daemon cannot read it) are left out. This walks every `/proc/PID/fd`,
/// so callers pass only the ports they do not know yet.
pub fn owners(sockets: &[(u8, u16, u64)], cgroup_mount: &Path) -> Vec<(u8, u16, u64)> {
    let wanted: HashMap<u64, (u8, u16)> = sockets
        .iter()
        .map(|&(protocol, port, inode)| (inode, (protocol, port)))
        .collect();
    let mut found: BTreeMap<(u8, u16), u64> = BTreeMap::new();
    if wanted.is_empty() {
        return Vec::new();
    }
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    for proc in procs.flatten() {
        let pid_dir = proc.path();
        if !proc
            .file_name()
            .to_str()
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(pid_dir.join("fd")) else {
            continue;
        };
        let mut cgroup_id = None;
        for fd in fds.flatten() {
            let Some(inode) = std::fs::read_link(fd.path())
                .ok()
                .and_then(|l| l.to_str().and_then(socket_inode))
            else {
                continue;
            };
            let Some(&key) = wanted.get(&inode) else {
                continue;
            };
            if found.contains_key(&key) {
                continue;
            }
            if cgroup_id.is_none() {
                cgroup_id = cgroup_of(&pid_dir, cgroup_mount);
            }
            match cgroup_id {
                Some(id) => {
                    found.insert(key, id);
                }
                None => break,
            }
        }
    }
    found
        .into_iter()
        .map(|((protocol, port), id)| (protocol, port, id))
        .collect()
}

/// Every receiving socket of this network namespace with its owner's
/// cgroup, through `/proc` only: [`owners`] of all [`receiving_sockets`].
pub fn bound_ports(cgroup_mount: &Path) -> Vec<(u8, u16, u64)> {
    owners(&receiving_sockets(), cgroup_mount)
}

/// The cgroup id of a process (the inode of its cgroup v2 directory).
fn cgroup_of(pid_dir: &Path, cgroup_mount: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(pid_dir.join("cgroup")).ok()?;
    let path = parse_proc_cgroup(&text)?;
    let dir = cgroup_mount.join(path.trim_start_matches('/'));
    std::fs::metadata(dir).ok().map(|m| m.ino())
}
