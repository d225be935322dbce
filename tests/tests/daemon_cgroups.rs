//! Cgroup discovery and watching on the real cgroup v2 hierarchy (root).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use enforcer::cgroups::{self, CgroupChange, CgroupTree, CgroupWatcher, WatchOptions};

/// Root-only tests skip without root, but fail under CI (see PREAMBLE).
fn require_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "root tests must run as root under CI"
    );
    eprintln!("skipping: needs root");
    false
}

/// A test cgroup removed (children first) when dropped.
struct TestCgroup(PathBuf);

impl TestCgroup {
    fn new(name: &str) -> TestCgroup {
        let mount = cgroups::cgroup2_mount().expect("cgroup v2 mount");
        let dir = mount.join(format!("{name}-{}", std::process::id()));
        let guard = TestCgroup(dir);
        remove_tree(&guard.0);
        std::fs::create_dir(&guard.0).expect("create test cgroup");
        guard
    }
}

fn remove_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_tree(&entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        remove_tree(&self.0);
    }
}

#[test]
fn the_cgroup2_mount_is_found_and_narrowing_stays_inside_it() {
    if !require_root() {
        return;
    }
    let mount = cgroups::cgroup2_mount().unwrap();
    assert!(
        mount.join("cgroup.controllers").exists(),
        "{} is not a cgroup2 mount",
        mount.display()
    );
    let test = TestCgroup::new("enforcer-daemon-root");
    let name = test.0.file_name().unwrap().to_owned();
    assert_eq!(
        cgroups::cgroup_root(Some(Path::new(&name))).unwrap(),
        test.0
    );
    assert_eq!(cgroups::cgroup_root(Some(&test.0)).unwrap(), test.0);
    assert!(cgroups::cgroup_root(Some(Path::new("/tmp"))).is_err());
    for conflict in cgroups::v1_conflicts() {
        eprintln!("note: {conflict}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_and_removed_cgroups_are_reported_within_a_second() {
    if !require_root() {
        return;
    }
    let test = TestCgroup::new("enforcer-daemon-watch");
    let initial = CgroupTree::scan(&test.0).unwrap();
    let mut watcher = CgroupWatcher::start(
        initial,
        WatchOptions {
            rescan_interval: Duration::from_secs(3600),
            settle: Duration::from_millis(20),
        },
    )
    .unwrap();

    let started = Instant::now();
    std::fs::create_dir_all(test.0.join("svc.service/child")).unwrap();
    let mut created = Vec::new();
    while created.len() < 2 {
        let update = tokio::time::timeout(Duration::from_secs(1), watcher.next())
            .await
            .expect("no cgroup update within 1 s")
            .expect("watcher stopped");
        for change in update.changes {
            if let CgroupChange::Created { path, id } = change {
                created.push((path, id));
            }
        }
    }
    assert!(started.elapsed() < Duration::from_secs(1));
    use std::os::unix::fs::MetadataExt;
    let child_ino = std::fs::metadata(test.0.join("svc.service/child"))
        .unwrap()
        .ino();
    assert!(
        created.contains(&("svc.service/child".to_owned(), child_ino)),
        "{created:?}"
    );

    std::fs::remove_dir(test.0.join("svc.service/child")).unwrap();
    let update = tokio::time::timeout(Duration::from_secs(1), watcher.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        update.changes,
        [CgroupChange::Removed {
            path: "svc.service/child".into(),
            id: child_ino
        }]
    );
}
