//! Facts about this host the data plane needs: its own addresses, and
//! whether cgroup v2 socket matching works at all.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd as _,
    path::PathBuf,
};

use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};

use super::error::{DataplaneError, Result};

/// This host's own addresses. Traffic to them is traffic between local
/// sockets, judged against the workload at the other end.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostAddrs {
    pub addrs: Vec<IpAddr>,
}

impl HostAddrs {
    /// The addresses every host has: loopback and the unspecified address
    /// (a `connect()` to 0.0.0.0 or :: reaches this host).
    pub fn always() -> impl Iterator<Item = (IpAddr, u8)> {
        [
            (IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8),
            (IpAddr::V4(Ipv4Addr::UNSPECIFIED), 32),
            (IpAddr::V6(Ipv6Addr::LOCALHOST), 128),
            (IpAddr::V6(Ipv6Addr::UNSPECIFIED), 128),
        ]
        .into_iter()
    }

    /// Every address configured on an interface of this network namespace.
    pub fn from_system() -> Result<HostAddrs> {
        let interfaces = nix::ifaddrs::getifaddrs()
            .map_err(|errno| DataplaneError::UnableToListAddresses(errno.into()))?;
        let mut addrs: Vec<IpAddr> = interfaces
            .filter_map(|interface| {
                let address = interface.address?;
                address
                    .as_sockaddr_in()
                    .map(|v4| IpAddr::V4(v4.ip()))
                    .or_else(|| address.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
            })
            .collect();
        addrs.sort();
        addrs.dedup();
        Ok(HostAddrs { addrs })
    }
}

/// The cookie of this process's network namespace (`SO_NETNS_COOKIE`,
/// Linux 5.14), as the programs see it with `bpf_get_netns_cookie`: the
/// namespace the daemon seeds bound ports for.
pub fn netns_cookie() -> Result<u64> {
    let socket = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|errno| DataplaneError::UnableToReadNetns(errno.into()))?;
    let mut cookie = 0u64;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // nix has no socket option for the cookie.
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            std::ptr::from_mut(&mut cookie).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(DataplaneError::UnableToReadNetns(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(cookie)
}

/// Whether `cgroup_skb` programs can see which cgroup a socket belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SocketMatching {
    /// Nothing disables it.
    Works,
    /// A cgroup v1 `net_cls` or `net_prio` hierarchy is mounted. On kernels
    /// that share socket cgroup data between v1 and v2, activating one logs
    /// "disabling cgroup2 socket matching" and `cgroup_skb` programs stop
    /// matching sockets: enforcement silently stops.
    AtRisk { controllers: Vec<String> },
}

/// Looks for the hybrid cgroup v1 trap. The daemon must warn loudly (and
/// refuse to claim enforcement) when this is not [`SocketMatching::Works`].
pub fn check_cgroup_socket_matching() -> Result<SocketMatching> {
    let path = PathBuf::from("/proc/self/mountinfo");
    let text = std::fs::read_to_string(&path)
        .map_err(|source| DataplaneError::UnableToReadProc { path, source })?;
    Ok(socket_matching_from_mountinfo(&text))
}

fn socket_matching_from_mountinfo(mountinfo: &str) -> SocketMatching {
    let mut controllers = Vec::new();
    for line in mountinfo.lines() {
        // "... - FSTYPE SOURCE SUPER_OPTIONS"
        let Some((_, tail)) = line.split_once(" - ") else {
            continue;
        };
        let mut fields = tail.split_whitespace();
        if fields.next() != Some("cgroup") {
            continue;
        }
        let options = fields.nth(1).unwrap_or("");
        for opt in options.split(',') {
            if (opt == "net_cls" || opt == "net_prio") && !controllers.iter().any(|c| c == opt) {
                controllers.push(opt.to_owned());
            }
        }
    }
    if controllers.is_empty() {
        SocketMatching::Works
    } else {
        SocketMatching::AtRisk { controllers }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_net_cls_and_net_prio_v1_mounts() {
        let text = "32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n\
                    41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n\
                    42 31 0:39 / /sys/fs/cgroup/net_cls,net_prio rw - cgroup cgroup rw,net_cls,net_prio\n";
        assert_eq!(
            socket_matching_from_mountinfo(text),
            SocketMatching::AtRisk {
                controllers: vec!["net_cls".into(), "net_prio".into()]
            }
        );
    }

    #[test]
    fn pure_v2_and_other_v1_controllers_are_fine() {
        let text = "32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n\
                    41 31 0:38 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(socket_matching_from_mountinfo(text), SocketMatching::Works);
    }

    #[test]
    fn this_network_namespace_has_a_cookie() {
        let cookie = netns_cookie().unwrap();
        assert_ne!(cookie, 0);
        assert_eq!(netns_cookie().unwrap(), cookie);
    }

    #[test]
    fn lists_this_hosts_addresses() {
        let addrs = HostAddrs::from_system().unwrap();
        assert!(addrs.addrs.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)));
    }
}
