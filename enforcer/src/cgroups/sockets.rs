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

use std::collections::{BTreeMap, BTreeSet, HashMap};
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

/// The `sock_diag` netlink dump.
pub mod diag {
    use std::io;

    use enforcer_common::protocol::Protocol;

    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const NLM_F_REQUEST: u16 = 0x1;
    const NLM_F_DUMP: u16 = 0x300;
    const NLMSG_ERROR: u16 = 0x2;
    const NLMSG_DONE: u16 = 0x3;
    const NLMSG_HDRLEN: usize = 16;
    /// `struct inet_diag_msg`.
    const INET_DIAG_MSG_LEN: usize = 72;
    /// `struct inet_diag_req_v2`.
    const INET_DIAG_REQ_LEN: usize = 56;
    const INET_DIAG_CGROUP_ID: u16 = 21;
    const TCP_LISTEN: u8 = 10;
    const TCP_CLOSE: u8 = 7;

    /// One parsed `inet_diag_msg`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct DiagSocket {
        pub state: u8,
        pub port: u16,
        pub remote_port: u16,
        pub cgroup_id: Option<u64>,
    }

    fn align4(n: usize) -> usize {
        (n + 3) & !3
    }

    /// The request for one dump: `family` (AF_INET/AF_INET6), `protocol`
    /// and the states wanted.
    pub fn request(family: u8, protocol: u8, states: u32, seq: u32) -> Vec<u8> {
        let len = NLMSG_HDRLEN + INET_DIAG_REQ_LEN;
        let mut m = Vec::with_capacity(len);
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        m.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&[family, protocol, 0, 0]);
        m.extend_from_slice(&states.to_ne_bytes());
        m.resize(len, 0); // inet_diag_sockid: all zero (any socket)
        m
    }

    /// What one `recv()` holds: the sockets, and whether the dump is done.
    /// A kernel error (`NLMSG_ERROR`) is returned as such.
    pub fn parse(buf: &[u8]) -> io::Result<(Vec<DiagSocket>, bool)> {
        let mut out = Vec::new();
        let mut at = 0;
        while at + NLMSG_HDRLEN <= buf.len() {
            let u32_at =
                |i: usize| u32::from_ne_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
            let len = u32_at(at) as usize;
            let kind = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
            if len < NLMSG_HDRLEN || at + len > buf.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "truncated netlink message",
                ));
            }
            let body = &buf[at + NLMSG_HDRLEN..at + len];
            match kind {
                NLMSG_DONE => return Ok((out, true)),
                NLMSG_ERROR => {
                    let code = body
                        .get(..4)
                        .map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                    return Err(io::Error::from_raw_os_error(-code));
                }
                SOCK_DIAG_BY_FAMILY if body.len() >= INET_DIAG_MSG_LEN => {
                    let state = body[1];
                    // inet_diag_sockid: sport, dport in network order.
                    let port = u16::from_be_bytes([body[4], body[5]]);
                    let remote_port = u16::from_be_bytes([body[6], body[7]]);
                    let mut cgroup_id = None;
                    let mut a = INET_DIAG_MSG_LEN;
                    while a + 4 <= body.len() {
                        let alen = u16::from_ne_bytes([body[a], body[a + 1]]) as usize;
                        let atype = u16::from_ne_bytes([body[a + 2], body[a + 3]]) & 0x3fff;
                        if alen < 4 || a + alen > body.len() {
                            break;
                        }
                        if atype == INET_DIAG_CGROUP_ID && alen >= 12 {
                            let v = &body[a + 4..a + 12];
                            cgroup_id = Some(u64::from_ne_bytes([
                                v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7],
                            ]));
                        }
                        a += align4(alen);
                    }
                    out.push(DiagSocket {
                        state,
                        port,
                        remote_port,
                        cgroup_id,
                    });
                }
                _ => {}
            }
            at += align4(len);
        }
        Ok((out, false))
    }

    /// An owned netlink socket.
    struct Netlink(libc::c_int);

    impl Drop for Netlink {
        fn drop(&mut self) {
            // SAFETY: our own fd, closed once.
            unsafe { libc::close(self.0) };
        }
    }

    fn dump(family: u8, protocol: u8, states: u32) -> io::Result<Vec<DiagSocket>> {
        // SAFETY: plain syscalls on an fd this function owns.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                libc::NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let sock = Netlink(fd);
        let req = request(family, protocol, states, 1);
        // SAFETY: `req` is valid for its length.
        if unsafe { libc::send(sock.0, req.as_ptr().cast(), req.len(), 0) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut out = Vec::new();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            // SAFETY: `buf` is valid for its length.
            let n = unsafe { libc::recv(sock.0, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                return Ok(out);
            }
            let (sockets, done) = parse(&buf[..n as usize])?;
            out.extend(sockets);
            if done {
                return Ok(out);
            }
        }
    }

    /// Listening TCP and unconnected bound UDP sockets of this network
    /// namespace as `(protocol, port, cgroup id)`. An error when a dump
    /// fails or the kernel does not give cgroup ids (before 5.7).
    pub fn bound_ports() -> io::Result<Vec<(u8, u16, u64)>> {
        let mut out = Vec::new();
        for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
            for (protocol, state) in [
                (Protocol::Tcp as u8, TCP_LISTEN),
                (Protocol::Udp as u8, TCP_CLOSE),
            ] {
                for s in dump(family, protocol, 1 << state)? {
                    if s.state != state || s.port == 0 || s.remote_port != 0 {
                        continue;
                    }
                    let id = s.cgroup_id.ok_or_else(|| {
                        io::Error::new(io::ErrorKind::Unsupported, "no INET_DIAG_CGROUP_ID")
                    })?;
                    out.push((protocol, s.port, id));
                }
            }
        }
        Ok(out)
    }
}

/// The cgroup id of a process (the inode of its cgroup v2 directory).
fn cgroup_of(pid_dir: &Path, cgroup_mount: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(pid_dir.join("cgroup")).ok()?;
    let path = parse_proc_cgroup(&text)?;
    let dir = cgroup_mount.join(path.trim_start_matches('/'));
    std::fs::metadata(dir).ok().map(|m| m.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1538 00000000:0000 0A 00000000:00000000 00:00000000 00000000   105        0 41234 1 0000000000000000 100 0 0 10 0
   1: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 41001 1 0000000000000000 100 0 0 10 0
   2: 0100007F:0050 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 51000 1 0000000000000000 20 4 30 10 -1
   3: garbage
";

    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 41002 1 0000000000000000 100 0 0 10 0
";

    const UDP: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  100: 00000000:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 60001 2 0000000000000000 0
  101: 0100007F:A1B2 0100007F:0035 01 00000000:00000000 00:00000000 00000000     0        0 60002 2 0000000000000000 0
";

    #[test]
    fn tcp_tables_give_listening_sockets_only() {
        assert_eq!(
            parse_proc_net(TCP, Protocol::Tcp as u8),
            vec![
                ProcSocket {
                    port: 5432,
                    inode: 41234
                },
                ProcSocket {
                    port: 80,
                    inode: 41001
                },
            ]
        );
        assert_eq!(
            parse_proc_net(TCP6, Protocol::Tcp as u8),
            vec![ProcSocket {
                port: 80,
                inode: 41002
            }]
        );
    }

    #[test]
    fn udp_tables_give_unconnected_bound_sockets_only() {
        assert_eq!(
            parse_proc_net(UDP, Protocol::Udp as u8),
            vec![ProcSocket {
                port: 53,
                inode: 60001
            }]
        );
    }

    #[test]
    fn proc_cgroup_gives_the_v2_path() {
        let hybrid = "12:net_cls,net_prio:/\n1:name=systemd:/system.slice/nginx.service\n0::/system.slice/nginx.service\n";
        assert_eq!(
            parse_proc_cgroup(hybrid),
            Some("/system.slice/nginx.service")
        );
        assert_eq!(parse_proc_cgroup("0::/\n"), Some("/"));
        assert_eq!(parse_proc_cgroup("1:cpu:/x\n"), None);
    }

    #[test]
    fn fd_links_give_socket_inodes() {
        assert_eq!(socket_inode("socket:[41234]"), Some(41234));
        assert_eq!(socket_inode("pipe:[41234]"), None);
        assert_eq!(socket_inode("/dev/null"), None);
        assert_eq!(socket_inode("socket:[x]"), None);
    }

    #[test]
    fn diag_messages_parse_with_their_cgroup_id() {
        // One inet_diag_msg (LISTEN, port 5432) with INET_DIAG_CGROUP_ID,
        // then NLMSG_DONE.
        let mut body = vec![0u8; 72];
        body[0] = libc::AF_INET as u8;
        body[1] = 10;
        body[4..6].copy_from_slice(&5432u16.to_be_bytes());
        body.extend_from_slice(&12u16.to_ne_bytes());
        body.extend_from_slice(&21u16.to_ne_bytes());
        body.extend_from_slice(&4242u64.to_ne_bytes());
        let mut buf = Vec::new();
        buf.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        buf.extend_from_slice(&20u16.to_ne_bytes());
        buf.extend_from_slice(&[0; 10]);
        buf.extend_from_slice(&body);
        buf.extend_from_slice(&20u32.to_ne_bytes());
        buf.extend_from_slice(&3u16.to_ne_bytes());
        buf.extend_from_slice(&[0; 14]);
        let (sockets, done) = diag::parse(&buf).unwrap();
        assert!(done);
        assert_eq!(
            sockets,
            [diag::DiagSocket {
                state: 10,
                port: 5432,
                remote_port: 0,
                cgroup_id: Some(4242)
            }]
        );
        // A truncated message is an error, not a panic.
        assert!(diag::parse(&buf[..40]).is_err());
        assert_eq!(diag::request(2, 6, 1 << 10, 1).len(), 72);
    }

    #[test]
    fn sock_diag_finds_this_process_listening_and_udp_sockets() {
        let Ok(mount) = super::super::cgroup2_mount() else {
            return; // no cgroup v2 here: nothing to map to
        };
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let udp = std::net::UdpSocket::bind("[::1]:0").unwrap();
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let path = parse_proc_cgroup(&own).unwrap();
        let id = std::fs::metadata(mount.join(path.trim_start_matches('/')))
            .unwrap()
            .ino();
        let found = diag::bound_ports().unwrap();
        assert!(found.contains(&(Protocol::Tcp as u8, tcp.local_addr().unwrap().port(), id)));
        assert!(found.contains(&(Protocol::Udp as u8, udp.local_addr().unwrap().port(), id)));
        let scan = scan(&mount, |_, _| false);
        assert!(
            scan.bound
                .contains(&(Protocol::Tcp as u8, tcp.local_addr().unwrap().port()))
        );
    }

    #[test]
    fn this_process_listening_socket_is_found_in_its_cgroup() {
        let Ok(mount) = super::super::cgroup2_mount() else {
            return; // no cgroup v2 here: nothing to map to
        };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let path = parse_proc_cgroup(&own).unwrap();
        let id = std::fs::metadata(mount.join(path.trim_start_matches('/')))
            .unwrap()
            .ino();
        assert!(
            bound_ports(&mount).contains(&(Protocol::Tcp as u8, port, id)),
            "port {port} in cgroup {id} not found"
        );
    }
}
