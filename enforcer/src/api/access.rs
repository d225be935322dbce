//! Who may talk to the daemon, and what they may ask. Two roles: the read
//! group may ask `status` and `flows`; root, the daemon's own user and the
//! admin group may also `apply` and `confirm`.
//!
//! Two gates. The socket file (mode 0600 plus a POSIX ACL entry for each
//! configured group, set by the daemon as the file's owner, so no
//! `CAP_CHOWN` is needed) keeps everyone else from connecting at all. The
//! peer's credentials (`SO_PEERCRED`, and `SO_PEERGROUPS` for its groups,
//! both taken by the kernel at `connect()`) are checked again on every
//! connection and decide the role, so a widened mode, a filesystem without
//! ACLs or a socket passed to another process does not widen access.

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use rustix::fs::XattrFlags;
use rustix::io::Errno;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum AccessError {
    #[error("unknown group {0:?}")]
    UnknownGroup(String),
    #[error("cannot look up group {name:?}")]
    Lookup {
        name: String,
        #[source]
        source: io::Error,
    },
}

/// What a client may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// `status`, `flows`: what only reads.
    Read,
    /// Also `apply` and `confirm`.
    Admin,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Read => "read",
            Role::Admin => "admin",
        })
    }
}

/// The credentials of a connected peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
}

/// A configured group: its gid, and the name it was given by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub gid: u32,
    pub name: String,
}

impl Group {
    /// A group name (or a numeric gid) as configured.
    pub fn resolve(name: &str) -> Result<Group, AccessError> {
        Ok(Group {
            gid: resolve_group(name)?,
            name: name.to_owned(),
        })
    }
}

/// The access rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Access {
    /// The daemon's effective uid (root in production; the test runner's
    /// uid in tests). Like root, it is always admitted as admin.
    pub owner_uid: u32,
    /// Members get [`Role::Read`].
    pub read_group: Option<Group>,
    /// Members get [`Role::Admin`].
    pub admin_group: Option<Group>,
}

impl Access {
    /// Root and the current effective user as admins, plus the groups.
    pub fn new(read_group: Option<Group>, admin_group: Option<Group>) -> Access {
        let owner_uid = rustix::process::geteuid().as_raw();
        Access {
            owner_uid,
            read_group,
            admin_group,
        }
    }

    /// Root and the daemon's own user: admins that no group grants and no
    /// connection cap refuses (see `limits`).
    pub fn is_privileged(&self, uid: u32) -> bool {
        uid == 0 || uid == self.owner_uid
    }

    /// The role of a peer, `None` when it is refused. `groups` gives the
    /// peer's supplementary groups, looked up only when needed.
    pub fn role_of(&self, peer: Peer, groups: impl FnOnce() -> Vec<u32>) -> Option<Role> {
        if self.is_privileged(peer.uid) {
            return Some(Role::Admin);
        }
        if self.read_group.is_none() && self.admin_group.is_none() {
            return None;
        }
        let groups = groups();
        let member = |g: &Option<Group>| {
            g.as_ref()
                .is_some_and(|g| peer.gid == g.gid || groups.contains(&g.gid))
        };
        if member(&self.admin_group) {
            Some(Role::Admin)
        } else if member(&self.read_group) {
            Some(Role::Read)
        } else {
            None
        }
    }

    /// The gids the socket file must admit.
    pub fn socket_gids(&self) -> Vec<u32> {
        let mut gids: Vec<u32> = [&self.read_group, &self.admin_group]
            .into_iter()
            .flatten()
            .map(|g| g.gid)
            .collect();
        gids.sort_unstable();
        gids.dedup();
        gids
    }

    /// The one line a refused peer gets.
    pub fn refusal(&self, peer: Peer) -> String {
        let groups: Vec<String> = [("read", &self.read_group), ("admin", &self.admin_group)]
            .into_iter()
            .filter_map(|(role, g)| g.as_ref().map(|g| format!("the {role} group {:?}", g.name)))
            .collect();
        if groups.is_empty() {
            format!(
                "permission denied: uid {} is not root, and no group may use this socket",
                peer.uid
            )
        } else {
            format!(
                "permission denied: uid {} is not root and not in {}",
                peer.uid,
                groups.join(" or ")
            )
        }
    }

    /// The line a peer gets for a request its role does not allow.
    pub fn not_allowed(&self, request: &str, role: Role) -> String {
        let admins = match &self.admin_group {
            Some(g) => format!("root or the admin group {:?}", g.name),
            None => "root".to_owned(),
        };
        format!(
            "permission denied: `{request}` needs {admins}; this client may only read (role {role}: status, flows)"
        )
    }
}

/// The supplementary groups of the peer of a unix socket, as the kernel
/// recorded them at `connect()` (`SO_PEERGROUPS`, Linux 4.13). Unlike
/// `/proc/PID/status` this cannot name another process that reused the
/// peer's pid.
pub fn peer_groups(socket: BorrowedFd<'_>) -> io::Result<Vec<u32>> {
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = (groups.len() * size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: `groups` is valid for `len` bytes; the kernel writes at
        // most that and sets `len` to what it wrote (or needs).
        let rc = unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let wanted = len as usize / size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(wanted);
            return Ok(groups);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ERANGE) && wanted > groups.len() {
            groups.resize(wanted, 0);
            continue;
        }
        return Err(err);
    }
}

/// How the socket file admits the configured groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SocketGate {
    /// Mode 0600: no group is configured, only root and the owner.
    OwnerOnly,
    /// Mode 0660 whose group class is a POSIX ACL: one entry per group.
    Acl,
    /// Mode 0666: the filesystem has no POSIX ACLs, so every local user may
    /// connect and the peer check alone decides.
    Open,
}

/// Sets the socket file's permissions for `gids` (see [`SocketGate`]). As
/// the file's owner the daemon may set its ACL without `CAP_CHOWN` and
/// without being in the groups.
pub fn gate_socket(path: &Path, gids: &[u32]) -> io::Result<SocketGate> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    if gids.is_empty() {
        return Ok(SocketGate::OwnerOnly);
    }
    let acl = access_acl(gids);
    match rustix::fs::setxattr(path, "system.posix_acl_access", &acl, XattrFlags::empty()) {
        Ok(()) => Ok(SocketGate::Acl),
        Err(Errno::OPNOTSUPP) => {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
            Ok(SocketGate::Open)
        }
        Err(errno) => Err(errno.into()),
    }
}

/// The kernel's `system.posix_acl_access` value (`posix_acl_xattr_header`
/// version 2, then `{tag: u16, perm: u16, id: u32}` entries, little-endian,
/// sorted by tag and id): owner rw, owning group none, each gid rw, mask
/// rw, others none.
fn access_acl(gids: &[u32]) -> Vec<u8> {
    const USER_OBJ: u16 = 0x01;
    const GROUP_OBJ: u16 = 0x04;
    const GROUP: u16 = 0x08;
    const MASK: u16 = 0x10;
    const OTHER: u16 = 0x20;
    const RW: u16 = 6;
    const NO_ID: u32 = u32::MAX;
    let mut sorted = gids.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut entries = vec![(USER_OBJ, RW, NO_ID), (GROUP_OBJ, 0, NO_ID)];
    entries.extend(sorted.iter().map(|&gid| (GROUP, RW, gid)));
    entries.extend([(MASK, RW, NO_ID), (OTHER, 0, NO_ID)]);
    let mut out = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in entries {
        out.extend(tag.to_le_bytes());
        out.extend(perm.to_le_bytes());
        out.extend(id.to_le_bytes());
    }
    out
}

/// A group name (or a numeric gid) to its gid.
pub fn resolve_group(name: &str) -> Result<u32, AccessError> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(name) {
        Ok(Some(group)) => Ok(group.gid.as_raw()),
        // A name with a NUL byte names no group either.
        Ok(None) => Err(AccessError::UnknownGroup(name.to_owned())),
        Err(errno) => Err(AccessError::Lookup {
            name: name.to_owned(),
            source: errno.into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32, gid: u32) -> Peer {
        Peer {
            uid,
            gid,
            pid: None,
        }
    }

    fn group(gid: u32) -> Option<Group> {
        Some(Group {
            gid,
            name: format!("g{gid}"),
        })
    }

    #[test]
    fn root_and_the_owner_are_always_admins() {
        let access = Access {
            owner_uid: 1000,
            read_group: None,
            admin_group: None,
        };
        assert_eq!(access.role_of(peer(0, 0), Vec::new), Some(Role::Admin));
        assert_eq!(access.role_of(peer(1000, 5), Vec::new), Some(Role::Admin));
        assert_eq!(access.role_of(peer(1001, 5), Vec::new), None);
        assert!(access.refusal(peer(1001, 5)).contains("uid 1001"));
    }

    #[test]
    fn groups_give_roles_as_primary_or_supplementary_group() {
        let access = Access {
            owner_uid: 0,
            read_group: group(42),
            admin_group: group(43),
        };
        assert_eq!(access.role_of(peer(7, 42), Vec::new), Some(Role::Read));
        assert_eq!(access.role_of(peer(7, 1), || vec![3, 42]), Some(Role::Read));
        assert_eq!(access.role_of(peer(7, 43), Vec::new), Some(Role::Admin));
        // In both: the larger role.
        assert_eq!(access.role_of(peer(7, 42), || vec![43]), Some(Role::Admin));
        assert_eq!(access.role_of(peer(7, 1), || vec![3]), None);
        let refusal = access.refusal(peer(7, 1));
        assert!(
            refusal.contains("\"g42\"") && refusal.contains("\"g43\""),
            "{refusal}"
        );
        assert!(access.not_allowed("apply", Role::Read).contains("\"g43\""));
        assert_eq!(access.socket_gids(), [42, 43]);
    }

    #[test]
    fn groups_resolve_by_name_or_number() {
        assert_eq!(resolve_group("root").unwrap(), 0);
        assert_eq!(resolve_group("1234").unwrap(), 1234);
        assert!(matches!(
            resolve_group("no-such-group-enforcer"),
            Err(AccessError::UnknownGroup(_))
        ));
    }

    #[test]
    fn the_acl_is_the_kernel_layout() {
        let acl = access_acl(&[4343, 4242, 4343]);
        // Header, then 6 entries of 8 bytes: two groups, sorted, once.
        assert_eq!(acl.len(), 4 + 6 * 8);
        assert_eq!(&acl[..4], &[2, 0, 0, 0]);
        assert_eq!(&acl[20..28], &[0x08, 0, 6, 0, 0x92, 0x10, 0, 0]); // gid 4242
        assert_eq!(&acl[28..36], &[0x08, 0, 6, 0, 0xf7, 0x10, 0, 0]); // gid 4343
    }

    #[test]
    fn the_socket_file_admits_the_groups_through_its_acl() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert_eq!(gate_socket(&path, &[]).unwrap(), SocketGate::OwnerOnly);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        match gate_socket(&path, &[4242]).unwrap() {
            SocketGate::Acl => {
                let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o660, "the mask shows as the group bits");
            }
            SocketGate::Open => {
                let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o666);
            }
            SocketGate::OwnerOnly => panic!("a group was given"),
        }
    }

    #[test]
    fn peer_groups_are_those_of_the_connecting_process() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        use std::os::fd::AsFd;
        let mut ours = vec![0 as libc::gid_t; 256];
        // SAFETY: the buffer holds 256 gids.
        let n = unsafe { libc::getgroups(256, ours.as_mut_ptr()) };
        assert!(n >= 0);
        ours.truncate(n as usize);
        let mut theirs = peer_groups(a.as_fd()).unwrap();
        ours.sort_unstable();
        theirs.sort_unstable();
        assert_eq!(theirs, ours);
    }
}
