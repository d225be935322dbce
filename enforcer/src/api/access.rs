//! Who may talk to the daemon: root, the daemon's own user, and members of
//! the configured socket group. The socket file's mode (0660, group = that
//! group) is the first gate; the peer's credentials (`SO_PEERCRED`) are
//! checked again on every connection, so a wrong mode or a socket reached
//! through a file descriptor passed around does not widen access.

use std::ffi::CString;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum AccessError {
    #[error("unknown socket group {0:?}")]
    UnknownGroup(String),
    #[error("cannot look up socket group {name:?}")]
    Lookup {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

/// The credentials of a connected peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
}

/// The access rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    /// The daemon's effective uid (root in production; the test runner's
    /// uid in tests).
    pub owner_uid: u32,
    /// The group admitted besides root and the owner.
    pub group: Option<u32>,
}

impl Access {
    /// Root and the current effective user, plus `group` when given.
    pub fn new(group: Option<u32>) -> Access {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let owner_uid = unsafe { libc::geteuid() };
        Access { owner_uid, group }
    }

    /// Is this peer admitted? `supplementary` gives the peer's other groups
    /// (from `/proc/PID/status`), looked up only when needed.
    pub fn admits(&self, peer: Peer, supplementary: impl FnOnce() -> Vec<u32>) -> bool {
        if peer.uid == 0 || peer.uid == self.owner_uid {
            return true;
        }
        match self.group {
            Some(g) => peer.gid == g || supplementary().contains(&g),
            None => false,
        }
    }
}

/// The supplementary groups of a process (`Groups:` in `/proc/PID/status`);
/// empty when the process is gone or the line is unreadable, which denies.
pub fn supplementary_groups(pid: i32) -> Vec<u32> {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return Vec::new();
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|groups| {
            groups
                .split_whitespace()
                .filter_map(|g| g.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// A group name (or a numeric gid) to its gid.
pub fn resolve_group(name: &str) -> Result<u32, AccessError> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    let c_name = CString::new(name).map_err(|_| AccessError::UnknownGroup(name.to_owned()))?;
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    loop {
        // SAFETY: all-zero is a valid `struct group` (integers and null
        // pointers).
        let mut group: libc::group = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::group = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call; getgrnam_r writes
        // the strings into `buffer`, whose length is passed.
        let rc = unsafe {
            libc::getgrnam_r(
                c_name.as_ptr(),
                &mut group,
                buffer.as_mut_ptr(),
                buffer.len(),
                &mut result,
            )
        };
        if rc == libc::ERANGE && buffer.len() < 1 << 20 {
            buffer.resize(buffer.len() * 4, 0);
            continue;
        }
        if rc != 0 {
            return Err(AccessError::Lookup {
                name: name.to_owned(),
                source: std::io::Error::from_raw_os_error(rc),
            });
        }
        if result.is_null() {
            return Err(AccessError::UnknownGroup(name.to_owned()));
        }
        return Ok(group.gr_gid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_the_owner_are_always_admitted() {
        let access = Access {
            owner_uid: 1000,
            group: None,
        };
        assert!(access.admits(
            Peer {
                uid: 0,
                gid: 0,
                pid: None
            },
            Vec::new
        ));
        assert!(access.admits(
            Peer {
                uid: 1000,
                gid: 5,
                pid: None
            },
            Vec::new
        ));
        assert!(!access.admits(
            Peer {
                uid: 1001,
                gid: 5,
                pid: None
            },
            Vec::new
        ));
    }

    #[test]
    fn the_group_is_admitted_as_primary_or_supplementary() {
        let access = Access {
            owner_uid: 0,
            group: Some(42),
        };
        assert!(access.admits(
            Peer {
                uid: 7,
                gid: 42,
                pid: None
            },
            Vec::new
        ));
        assert!(access.admits(
            Peer {
                uid: 7,
                gid: 1,
                pid: None
            },
            || vec![3, 42]
        ));
        assert!(!access.admits(
            Peer {
                uid: 7,
                gid: 1,
                pid: None
            },
            || vec![3]
        ));
    }

    #[test]
    fn groups_resolve_by_name_or_number() {
        assert_eq!(resolve_group("root").unwrap(), 0);
        assert_eq!(resolve_group("1234").unwrap(), 1234);
        assert!(matches!(
            resolve_group("no-such-group-enforcer"),
            Err(AccessError::UnknownGroup(_))
        ));
        assert!(supplementary_groups(-1).is_empty());
    }
}
