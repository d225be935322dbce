//! Finding the cgroup v2 hierarchy, and the cgroup v1 mounts that break it.
//!
//! Both come from `/proc/self/mountinfo` (see proc(5)): field 5 is the mount
//! point (octal-escaped), and after the ` - ` separator come the filesystem
//! type, the source and the super-block options, which for a cgroup v1
//! hierarchy list its controllers.

use std::path::PathBuf;

/// One mount line, reduced to what this module needs.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Mount {
    mount_point: PathBuf,
    fs_type: String,
    super_options: Vec<String>,
}

/// The cgroup v1 controllers whose use makes the kernel disable cgroup v2
/// socket matching ("cgroup: disabling cgroup2 socket matching due to
/// net_prio or net_cls activation"): from then on `cgroup_skb` programs see
/// every socket in the root cgroup and stop matching workloads.
pub const SOCKET_MATCHING_BREAKERS: [&str; 2] = ["net_cls", "net_prio"];

/// A mounted cgroup v1 hierarchy carrying `net_cls` or `net_prio`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct V1Conflict {
    pub mount_point: PathBuf,
    pub controllers: Vec<String>,
}

impl std::fmt::Display for V1Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cgroup v1 hierarchy {} carries {}: the kernel disables cgroup v2 socket matching once it \
             is used, and cgroup programs then cannot tell workloads apart; unmount it (or boot \
             with cgroup_no_v1=net_cls,net_prio)",
            self.mount_point.display(),
            self.controllers.join(",")
        )
    }
}

/// Undo the octal escapes (`\040` for a space, ...) of a mountinfo path.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value = u32::from(bytes[i + 1] - b'0') * 64
                + u32::from(bytes[i + 2] - b'0') * 8
                + u32::from(bytes[i + 3] - b'0');
            if let Ok(byte) = u8::try_from(value) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_line(line: &str) -> Option<Mount> {
    let (before, after) = line.split_once(" - ")?;
    let mount_point = before.split_whitespace().nth(4)?;
    let mut after = after.split_whitespace();
    let fs_type = after.next()?.to_owned();
    let _source = after.next()?;
    let super_options = after
        .next()
        .unwrap_or("")
        .split(',')
        .map(str::to_owned)
        .collect();
    Some(Mount {
        mount_point: PathBuf::from(unescape(mount_point)),
        fs_type,
        super_options,
    })
}

/// The mount point of the cgroup v2 hierarchy in a mountinfo text, if any.
/// When it is mounted more than once, the first mount wins (they are the
/// same hierarchy).
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo
        .lines()
        .filter_map(parse_line)
        .find(|m| m.fs_type == "cgroup2")
        .map(|m| m.mount_point)
}

/// Every mounted cgroup v1 hierarchy that carries `net_cls` or `net_prio`.
pub fn v1_conflicts(mountinfo: &str) -> Vec<V1Conflict> {
    mountinfo
        .lines()
        .filter_map(parse_line)
        .filter(|m| m.fs_type == "cgroup")
        .filter_map(|m| {
            let controllers: Vec<String> = m
                .super_options
                .iter()
                .filter(|o| SOCKET_MATCHING_BREAKERS.contains(&o.as_str()))
                .cloned()
                .collect();
            (!controllers.is_empty()).then_some(V1Conflict {
                mount_point: m.mount_point,
                controllers,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn finds_the_unified_mount_of_a_hybrid_host() {
        assert_eq!(
            cgroup2_mount(HYBRID),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert!(v1_conflicts(HYBRID).is_empty());
    }

    #[test]
    fn finds_the_usual_mount_and_none_when_absent() {
        let unified = "29 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n";
        assert_eq!(
            cgroup2_mount(unified),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(
            cgroup2_mount("31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n"),
            None
        );
        assert_eq!(cgroup2_mount(""), None);
    }

    #[test]
    fn reports_net_cls_and_net_prio_hierarchies() {
        let text = format!(
            "{HYBRID}50 31 0:40 / /sys/fs/cgroup/net_cls,net_prio rw,relatime - cgroup cgroup rw,net_cls,net_prio\n\
             51 31 0:41 / /mnt/my\\040prio rw - cgroup cgroup rw,net_prio\n"
        );
        let conflicts = v1_conflicts(&text);
        assert_eq!(conflicts.len(), 2);
        assert_eq!(conflicts[0].controllers, ["net_cls", "net_prio"]);
        assert_eq!(conflicts[1].mount_point, PathBuf::from("/mnt/my prio"));
        assert!(conflicts[0].to_string().contains("socket matching"));
    }

    #[test]
    fn tolerates_malformed_lines() {
        assert_eq!(cgroup2_mount("garbage\n1 2 3\n - \n"), None);
        assert_eq!(unescape("a\\0b\\"), "a\\0b\\");
    }
}
