//! Cgroup discovery and watching on the real cgroup v2 hierarchy (root).

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use enforcer::cgroups::{
    self, CgroupChange, CgroupTree, CgroupWatcher, Discovery, TreeUpdate, WatchOptions,
};
use enforcer_tests::{CgroupGuard, privileged};

/// Runs `test` on a single-threaded tokio runtime, as the daemon does.
fn on_runtime(test: impl Future<Output = ()>) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(test);
}

/// A watcher of `root` that rescans once an hour only, so that what it
/// reports within a test came from inotify, and lets bursts settle 20 ms.
fn watch(root: &Path) -> (CgroupWatcher, CgroupTree) {
    let options = WatchOptions {
        rescan_interval: Duration::from_secs(3600),
        settle: Duration::from_millis(20),
        ..WatchOptions::default()
    };
    CgroupWatcher::start(root, options, Discovery::default()).unwrap()
}

/// The watcher's next update, within a second.
async fn next_update(watcher: &mut CgroupWatcher) -> TreeUpdate {
    tokio::time::timeout(Duration::from_secs(1), watcher.next())
        .await
        .expect("no cgroup update within 1 s")
        .expect("watcher stopped")
}

#[test]
fn the_cgroup2_mount_is_found_and_narrowing_stays_inside_it() {
    let _root = privileged!();
    let mount = cgroups::cgroup2_mount().unwrap();
    assert_eq!(mount, enforcer_tests::cgroup2_mount().unwrap());
    let test = CgroupGuard::new().expect("cgroup");
    let relative = test.path().strip_prefix(&mount).unwrap().to_owned();
    assert_eq!(cgroups::cgroup_root(Some(&relative)).unwrap(), test.path());
    assert_eq!(
        cgroups::cgroup_root(Some(test.path())).unwrap(),
        test.path()
    );
    assert!(cgroups::cgroup_root(Some(Path::new("/tmp"))).is_err());
    // `privileged!` refuses hosts where socket matching is disabled, so no
    // net_cls/net_prio hierarchy may be reported here.
    assert_eq!(cgroups::v1_conflicts(), []);
}

#[test]
fn new_and_removed_cgroups_are_reported_within_a_second() {
    let _root = privileged!();
    let test = CgroupGuard::new().expect("cgroup");
    on_runtime(async {
        let (mut watcher, initial) = watch(test.path());
        assert_eq!(initial, CgroupTree::scan(test.path()).unwrap());
        assert_eq!(initial.owner_of(""), Some(0));

        let started = Instant::now();
        let child = test.child("svc.service").expect("child cgroup");
        let grandchild = child.child("worker").expect("grandchild cgroup");
        let mut created = Vec::new();
        while !created
            .iter()
            .any(|(p, _): &(String, u64)| p == "svc.service/worker")
        {
            let update = next_update(&mut watcher).await;
            for change in update.changes {
                if let CgroupChange::Created { path, id } = change {
                    created.push((path, id));
                }
            }
        }
        assert!(started.elapsed() < Duration::from_secs(1));
        let ino = std::fs::metadata(grandchild.path()).unwrap().ino();
        assert_eq!(ino, grandchild.id());
        assert!(
            created.contains(&("svc.service/worker".to_owned(), ino)),
            "{created:?}"
        );

        grandchild.remove().expect("remove grandchild");
        let update = next_update(&mut watcher).await;
        assert_eq!(
            update.changes,
            [CgroupChange::Removed {
                path: "svc.service/worker".into(),
                id: ino
            }]
        );
    });
}

/// systemd makes a delegated cgroup as root, then hands it over with
/// `chown`: the new owner is a change, reported through `IN_ATTRIB`
/// without waiting for the periodic rescan.
#[test]
fn a_cgroup_handed_to_another_user_is_reported_at_once() {
    let _root = privileged!();
    let test = CgroupGuard::new().expect("cgroup");
    let child = test.child("user@1000.service").expect("child cgroup");
    on_runtime(async {
        let (mut watcher, initial) = watch(test.path());
        assert_eq!(initial.owner_of("user@1000.service"), Some(0));
        std::os::unix::fs::chown(child.path(), Some(65534), Some(65534)).expect("chown");
        let update = next_update(&mut watcher).await;
        assert_eq!(
            update.changes,
            [CgroupChange::OwnerChanged {
                path: "user@1000.service".into(),
                id: child.id(),
                owner_uid: 65534,
            }]
        );
        assert_eq!(update.tree.owner_of("user@1000.service"), Some(65534));
    });
}
