use std::os::unix::fs::MetadataExt;

use super::*;
use crate::cgroups::test_trees::{TempTree, without_dac_capabilities};

fn paths(tree: &CgroupTree) -> Vec<&str> {
    tree.iter().map(|(p, _)| p).collect()
}

fn no_visit(_: Visit<'_>) {}

#[test]
fn records_every_directory_with_its_inode_and_owner() {
    let t = TempTree::new();
    t.mkdir("a/b");
    t.mkdir("c");
    std::fs::write(t.join("a/cgroup.procs"), "").unwrap();
    let is_root = rustix::process::geteuid().is_root();
    if is_root {
        // Root can hand a directory over, as systemd does for `Delegate=`.
        rustix::fs::chown(t.join("c"), Some(rustix::fs::Uid::from_raw(65534)), None).unwrap();
    }
    let mut visited = Vec::new();
    let scan = scan(t.path(), ScanLimits::default(), |v| {
        visited.push(v.path.to_owned());
    })
    .unwrap();
    assert_eq!(paths(&scan.tree), ["", "a", "a/b", "c"]);
    assert_eq!(visited, ["", "a", "a/b", "c"], "byte order, depth first");
    assert_eq!(scan.report, ScanReport::default());
    for rel in ["a/b", "c"] {
        let meta = std::fs::metadata(t.join(rel)).unwrap();
        let node = scan.tree.node(rel).unwrap();
        assert_eq!((node.id, node.owner_uid), (meta.ino(), meta.uid()), "{rel}");
    }
    if is_root {
        assert_eq!(scan.tree.owner_of("c"), Some(65534));
        assert_eq!(scan.tree.owner_of("a"), Some(0));
    }
}

/// Mode 000 denies even root once CAP_DAC_OVERRIDE and
/// CAP_DAC_READ_SEARCH are gone, as in the packaged daemon.
#[test]
fn an_unreadable_directory_is_recorded_and_not_walked_into() {
    let t = TempTree::new();
    t.mkdir("locked/inside");
    t.mkdir("open/child");
    t.chmod("locked", 0o000);
    let scan = without_dac_capabilities(|| scan(t.path(), ScanLimits::default(), no_visit))
        .expect("a bad child never fails the walk");
    assert_eq!(paths(&scan.tree), ["", "locked", "open", "open/child"]);
    let meta = std::fs::metadata(t.join("locked")).unwrap();
    assert_eq!(
        scan.tree.id_of("locked"),
        Some(meta.ino()),
        "known from its parent"
    );
    assert_eq!(scan.tree.owner_of("locked"), Some(meta.uid()));
    assert_eq!(scan.report.count(SkipReason::Unreadable), 1);
    assert_eq!(scan.report.total(), 1);
    assert_eq!(
        scan.report.named(),
        [Skipped {
            path: "locked".into(),
            reason: SkipReason::Unreadable,
            errno: Some(libc::EACCES),
        }]
    );
}

#[test]
fn an_unreadable_root_is_an_error() {
    let t = TempTree::new();
    t.mkdir("root/child");
    t.chmod("root", 0o000);
    let error = without_dac_capabilities(|| {
        scan(&t.join("root"), ScanLimits::default(), no_visit).unwrap_err()
    });
    assert_eq!(error.action, "open");
    assert_eq!(error.source.raw_os_error(), Some(libc::EACCES));
    let missing = scan(&t.join("missing"), ScanLimits::default(), no_visit).unwrap_err();
    assert!(
        missing.to_string().contains("cannot open the cgroup root"),
        "{missing}"
    );
}

#[test]
fn a_directory_removed_during_the_walk_is_skipped_as_vanished() {
    let t = TempTree::new();
    t.mkdir("a/x");
    t.mkdir("a/y/below");
    t.mkdir("b");
    // `a` is listed (x and y) before x is visited; y goes then.
    let y = t.join("a/y");
    let scan = scan(t.path(), ScanLimits::default(), |v| {
        if v.path == "a/x" {
            std::fs::remove_dir_all(&y).unwrap();
        }
    })
    .unwrap();
    assert_eq!(paths(&scan.tree), ["", "a", "a/x", "b"]);
    assert_eq!(scan.report.count(SkipReason::Vanished), 1);
    assert_eq!(scan.report.named()[0].path, "a/y");
}

#[test]
fn a_tree_deeper_than_path_max_is_walked_whole() {
    let t = TempTree::new();
    let name = "d".repeat(200);
    let (deepest, fd) = t.chain("", &name, 30);
    assert!(deepest.len() > libc::PATH_MAX as usize);
    let id = rustix::fs::fstat(&fd).unwrap().st_ino;
    drop(fd);
    let scan = scan(t.path(), ScanLimits::default(), no_visit).unwrap();
    assert_eq!(scan.tree.len(), 31);
    assert_eq!(scan.tree.id_of(&deepest), Some(id));
    assert_eq!(scan.report, ScanReport::default());
}

#[test]
fn the_depth_bound_records_where_it_stopped() {
    let t = TempTree::new();
    t.chain("", "a", 5);
    t.mkdir("leaf/x/y");
    let limits = ScanLimits {
        max_depth: 3,
        ..ScanLimits::default()
    };
    let scan = scan(t.path(), limits, no_visit).unwrap();
    assert_eq!(
        paths(&scan.tree),
        ["", "a", "a/a", "a/a/a", "leaf", "leaf/x", "leaf/x/y"]
    );
    // `leaf/x/y` is at the bound too, but has nothing below it.
    assert_eq!(
        scan.report.named(),
        [Skipped {
            path: "a/a/a".into(),
            reason: SkipReason::DepthLimit,
            errno: None,
        }]
    );
}

#[test]
fn the_cgroup_count_bound_stops_the_walk_at_the_same_place_every_time() {
    let t = TempTree::new();
    for name in ["a/1", "a/2", "a/3", "b/1", "b/2", "c"] {
        t.mkdir(name);
    }
    let limits = ScanLimits {
        max_cgroups: 5,
        ..ScanLimits::default()
    };
    for _ in 0..3 {
        let scan = scan(t.path(), limits, no_visit).unwrap();
        assert_eq!(paths(&scan.tree), ["", "a", "a/1", "a/2", "a/3", "b"]);
        assert_eq!(scan.report.count(SkipReason::SizeLimit), 1);
        assert_eq!(scan.report.total(), 1);
    }
    // A directory with more children than the budget left.
    let limits = ScanLimits {
        max_cgroups: 2,
        ..ScanLimits::default()
    };
    let scan = scan(t.path(), limits, no_visit).unwrap();
    assert_eq!(scan.tree.len(), 3);
    assert_eq!(scan.report.count(SkipReason::SizeLimit), 1);
}

#[test]
fn the_path_bytes_bound_stops_a_tree_of_long_paths() {
    let t = TempTree::new();
    let name = "n".repeat(100);
    t.chain("", &name, 10);
    t.mkdir("z");
    // Paths of 100, 201, 302, 403... bytes: three fit in 1000, not four.
    let limits = ScanLimits {
        max_path_bytes: 1000,
        ..ScanLimits::default()
    };
    let scan = scan(t.path(), limits, no_visit).unwrap();
    assert_eq!(scan.tree.len(), 4, "{:?}", paths(&scan.tree));
    assert_eq!(scan.report.count(SkipReason::SizeLimit), 1);
    assert_eq!(scan.tree.id_of("z"), None, "the walk stopped");
}

/// A directory others may write to (or owned by another user) is a
/// delegated subtree: walked after everything else, so filling the
/// bounds there hides nothing outside it.
#[test]
fn delegated_subtrees_are_walked_last() {
    let t = TempTree::new();
    for name in [
        "a-delegated/1",
        "a-delegated/2",
        "a-delegated/3",
        "a-delegated/4",
    ] {
        t.mkdir(name);
    }
    t.mkdir("b/x");
    t.mkdir("c");
    t.chmod("a-delegated", 0o777);
    let limits = ScanLimits {
        max_cgroups: 5,
        ..ScanLimits::default()
    };
    let mut visited = Vec::new();
    let scan = scan(t.path(), limits, |v| visited.push(v.path.to_owned())).unwrap();
    assert_eq!(
        paths(&scan.tree),
        ["", "a-delegated", "a-delegated/1", "b", "b/x", "c"]
    );
    assert_eq!(
        visited,
        ["", "a-delegated", "b", "b/x", "c", "a-delegated/1"],
        "each directory once, the delegated one's subtree last"
    );
    assert_eq!(
        scan.report.named(),
        [Skipped {
            path: "a-delegated".into(),
            reason: SkipReason::SizeLimit,
            errno: None,
        }]
    );
    // Within the bounds, the delegated subtree is walked whole.
    let whole = super::scan(t.path(), ScanLimits::default(), no_visit).unwrap();
    assert_eq!(whole.tree.len(), 9);
    assert_eq!(whole.report.total(), 0);
}

#[test]
fn a_name_that_is_not_utf8_is_skipped_with_its_subtree() {
    use std::os::unix::ffi::OsStrExt;
    let t = TempTree::new();
    let bad = t.path().join(std::ffi::OsStr::from_bytes(b"web\xff"));
    std::fs::create_dir_all(bad.join("inside")).unwrap();
    t.mkdir("web1");
    let scan = scan(t.path(), ScanLimits::default(), no_visit).unwrap();
    assert_eq!(paths(&scan.tree), ["", "web1"]);
    assert_eq!(scan.report.count(SkipReason::NotUtf8), 1);
    assert_eq!(scan.report.named()[0].path, "web\u{fffd}");
}

#[test]
fn symlinks_and_files_are_not_cgroups() {
    let t = TempTree::new();
    t.mkdir("real");
    std::os::unix::fs::symlink(t.join("real"), t.join("link")).unwrap();
    std::fs::write(t.join("file"), "").unwrap();
    let scan = scan(t.path(), ScanLimits::default(), no_visit).unwrap();
    assert_eq!(paths(&scan.tree), ["", "real"]);
    assert_eq!(scan.report.total(), 0);
}
