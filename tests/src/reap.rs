//! Removes what earlier, killed test runs left behind.
//!
//! Guards clean up on drop and on panic, but not when the test process is
//! SIGKILLed (a CI timeout, a Ctrl-C of `cargo test`). Every name this crate
//! gives carries the creating pid, so a later run can recognise leftovers
//! whose creator is dead and remove them, leaving those of live processes
//! (other test runs on this machine) alone.

use std::fs;

use serde::Deserialize;

use crate::{
    cgroup::{CGROUP_PREFIX, cgroup2_mount, teardown},
    error::{Error, Result},
    netns::{LINK_PREFIX, NETNS_PREFIX, delete_link, delete_netns},
    reachable::REACHABLE_PREFIX,
    util::{ip, pid_alive},
};

/// Removes test cgroups, namespaces, veth links and program copies (see
/// [`crate::ReachableCopy`]) created by processes
/// that no longer exist. Returns a description of each removed item; if
/// some could not be removed, it goes on with the others and then fails
/// with all the reasons.
pub fn reap_stale() -> Result<Vec<String>> {
    let mut reaped = Vec::new();
    let mut failed = Vec::new();

    let mount = cgroup2_mount()?;
    if let Ok(entries) = fs::read_dir(mount) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(pid) = owner_pid(&name, CGROUP_PREFIX, '-')
                && !pid_alive(pid)
            {
                let what = format!("cgroup {}", entry.path().display());
                note(
                    teardown(&entry.path(), None),
                    what,
                    &mut reaped,
                    &mut failed,
                );
            }
        }
    }

    #[derive(Deserialize)]
    struct Link {
        ifname: String,
    }
    let links: Vec<Link> = serde_json::from_str(&ip(&["-j", "link", "show"])?).unwrap_or_default();
    for link in links {
        // veth names carry "@peer" only in the non-JSON output.
        let name = link.ifname;
        let dead = owner_pid(&name, LINK_PREFIX, 'o')
            .or_else(|| owner_pid(&name, LINK_PREFIX, 'i'))
            .is_some_and(|pid| !pid_alive(pid));
        if dead {
            // Before the namespaces: deleting a link is synchronous, while a
            // deleted namespace frees its devices later.
            note(
                delete_link(&name),
                format!("link {name}"),
                &mut reaped,
                &mut failed,
            );
        }
    }

    if let Ok(entries) = fs::read_dir("/run/netns") {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(pid) = owner_pid(&name, NETNS_PREFIX, '-')
                && !pid_alive(pid)
            {
                note(
                    delete_netns(&name),
                    format!("netns {name}"),
                    &mut reaped,
                    &mut failed,
                );
            }
        }
    }
    let temp = std::env::temp_dir();
    if let Ok(entries) = fs::read_dir(&temp) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(pid) = owner_pid(&name, REACHABLE_PREFIX, '-')
                && !pid_alive(pid)
            {
                let path = entry.path();
                note(
                    fs::remove_dir_all(&path).map_err(|e| Error::io("rm -r", &path, e)),
                    format!("program copy {}", path.display()),
                    &mut reaped,
                    &mut failed,
                );
            }
        }
    }

    if failed.is_empty() {
        Ok(reaped)
    } else {
        Err(Error::Cleanup(format!(
            "removed {}; could not remove {}",
            reaped.join(", "),
            failed.join("; ")
        )))
    }
}

fn note(result: Result<()>, what: String, reaped: &mut Vec<String>, failed: &mut Vec<String>) {
    match result {
        Ok(()) => reaped.push(what),
        Err(err) => failed.push(format!("{what}: {err}")),
    }
}

/// The pid in `<prefix><pid><sep><serial>`, if `name` has that shape.
fn owner_pid(name: &str, prefix: &str, sep: char) -> Option<u32> {
    let rest = name.strip_prefix(prefix)?;
    let (pid, serial) = rest.split_once(sep)?;
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (all_digits(pid) && all_digits(serial)).then(|| pid.parse().ok())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_only_our_names() {
        assert_eq!(
            owner_pid("enforcer-test-123-4", CGROUP_PREFIX, '-'),
            Some(123)
        );
        assert_eq!(owner_pid("enforcer-test-123", CGROUP_PREFIX, '-'), None);
        assert_eq!(owner_pid("enforcer-test-x-1", CGROUP_PREFIX, '-'), None);
        assert_eq!(owner_pid("enft-77-0", NETNS_PREFIX, '-'), Some(77));
        assert_eq!(
            owner_pid("enforcer-test-bin-9-0", REACHABLE_PREFIX, '-'),
            Some(9)
        );
        assert_eq!(owner_pid("enf77o12", LINK_PREFIX, 'o'), Some(77));
        assert_eq!(owner_pid("enf77i12", LINK_PREFIX, 'i'), Some(77));
        assert_eq!(owner_pid("enp0s3", LINK_PREFIX, 'o'), None);
        assert_eq!(owner_pid("eth0", LINK_PREFIX, 'o'), None);
    }
}
