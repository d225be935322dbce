//! How the data plane is loaded and the operator's settings it enforces:
//! the pin root, the unmanaged mode and the failsafe ports.

use std::path::PathBuf;

use enforcer_common::{protocol::Protocol, workload::Mode};

use super::error::{DataplaneError, Result};

/// How to load the data plane.
#[derive(Clone, Debug, Default)]
pub struct DataplaneOptions {
    /// A directory on a bpffs (e.g. `/sys/fs/bpf/enforcer`). Maps and links
    /// are pinned under `<pin_root>/v<LAYOUT_VERSION>/`, so enforcement
    /// outlives the process and a new process adopts it. `None`: nothing
    /// is pinned and everything is detached when the
    /// [`Dataplane`](super::Dataplane) drops.
    pub pin_root: Option<PathBuf>,
    /// Whether [`Dataplane::attach`](super::Dataplane::attach) may attach to
    /// the root of the cgroup v2 hierarchy, where every process of the host
    /// is filtered. That is what the daemon does on a server (workloads are
    /// anywhere in the tree); tests and the demo leave it off and attach to
    /// cgroups they created.
    pub allow_root_cgroup: bool,
}

/// The `--unmanaged` setting: what happens to processes in no workload.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UnmanagedMode {
    #[default]
    Allow,
    Audit,
    Deny,
}

impl UnmanagedMode {
    /// Its value in `Config::unmanaged`.
    pub(crate) const fn as_config(self) -> u8 {
        match self {
            UnmanagedMode::Allow => Mode::Off as u8,
            UnmanagedMode::Audit => Mode::Audit as u8,
            UnmanagedMode::Deny => Mode::Enforce as u8,
        }
    }
}

/// An inbound port that stays reachable whatever the policy says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FailsafePort {
    /// `Protocol::Tcp as u8` or `Protocol::Udp as u8`.
    pub protocol: u8,
    pub port: u16,
}

impl FailsafePort {
    /// Parses the daemon's `--failsafe` list: comma-separated `PORT/tcp` or
    /// `PORT/udp`, or `none` for the empty list.
    pub fn parse_list(text: &str) -> Result<Vec<FailsafePort>> {
        let text = text.trim();
        if text == "none" {
            return Ok(Vec::new());
        }
        let mut ports = text
            .split(',')
            .map(|item| item.trim().parse())
            .collect::<Result<Vec<FailsafePort>>>()?;
        ports.sort();
        ports.dedup();
        Ok(ports)
    }
}

impl std::str::FromStr for FailsafePort {
    type Err = DataplaneError;

    fn from_str(s: &str) -> Result<Self> {
        let invalid = || {
            DataplaneError::InvalidSetting(format!(
                "failsafe port {s:?}: expected PORT/tcp or PORT/udp"
            ))
        };
        let (port, proto) = s.split_once('/').ok_or_else(invalid)?;
        let protocol = match proto {
            "tcp" => Protocol::Tcp as u8,
            "udp" => Protocol::Udp as u8,
            _ => return Err(invalid()),
        };
        let port: u16 = port.parse().map_err(|_| invalid())?;
        if port == 0 {
            return Err(invalid());
        }
        Ok(FailsafePort { protocol, port })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_failsafe_lists() {
        assert_eq!(
            FailsafePort::parse_list("22/tcp, 53/udp,22/tcp").unwrap(),
            vec![
                FailsafePort {
                    protocol: Protocol::Tcp as u8,
                    port: 22
                },
                FailsafePort {
                    protocol: Protocol::Udp as u8,
                    port: 53
                },
            ]
        );
        assert_eq!(FailsafePort::parse_list("none").unwrap(), vec![]);
        for bad in ["22", "22/icmp", "0/tcp", "70000/tcp", "", "ssh/tcp"] {
            assert!(FailsafePort::parse_list(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unmanaged_modes_map_to_the_kernel_constants() {
        assert_eq!(UnmanagedMode::Allow.as_config(), Mode::Off as u8);
        assert_eq!(UnmanagedMode::Audit.as_config(), Mode::Audit as u8);
        assert_eq!(UnmanagedMode::Deny.as_config(), Mode::Enforce as u8);
        assert_eq!(UnmanagedMode::default(), UnmanagedMode::Allow);
    }
}
