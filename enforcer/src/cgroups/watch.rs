//! Watching a cgroup subtree for cgroups being created and removed.
//!
//! inotify is not recursive, so every cgroup directory gets its own watch
//! (mkdir/rmdir on cgroupfs go through the VFS and raise `IN_CREATE` /
//! `IN_DELETE` like any directory; `chown` and `chmod` raise `IN_ATTRIB`).
//! Watches are added during the walk, through the directory the walk has
//! open (`/proc/self/fd/N`), before it is listed: paths past `PATH_MAX`
//! are watched like any other, and nothing created after the listing is
//! missed. Events are only a trigger: after one, the watcher waits a few
//! milliseconds for the burst to settle, rescans the whole subtree and
//! reports the difference with its previous snapshot, so a cgroup created
//! below a brand-new one before its watch existed is still seen. A periodic
//! rescan covers anything inotify could miss (queue overflow, watch limits,
//! directories it cannot watch). A rescan that fails keeps the previous
//! snapshot and never stops the next ones.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;
use inotify::{Inotify, WatchMask, Watches};
use thiserror::Error;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::discovery::Discovery;
use super::tree::{CgroupChange, CgroupTree};
use super::walk::{self, ScanError, ScanLimits, Visit};

/// How the watcher paces itself.
#[derive(Clone, Copy, Debug)]
pub struct WatchOptions {
    /// Full rescan interval, whatever inotify says.
    pub rescan_interval: Duration,
    /// How long to let a burst of events settle before rescanning. A burst
    /// that never quiets is cut after [`SETTLE_CUT`] times this, so that a
    /// stream of events (a user creating and removing cgroups in a loop)
    /// cannot hold rescans back.
    pub settle: Duration,
    /// Bounds of each walk.
    pub limits: ScanLimits,
}

/// A burst of events is rescanned after at most this many settle periods.
pub const SETTLE_CUT: u32 = 10;

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            rescan_interval: Duration::from_secs(30),
            settle: Duration::from_millis(20),
            limits: ScanLimits::default(),
        }
    }
}

/// A change seen by the watcher: the new snapshot and what differs from the
/// previous one (never empty).
#[derive(Clone, Debug)]
pub struct TreeUpdate {
    pub tree: CgroupTree,
    pub changes: Vec<CgroupChange>,
}

/// Why the watcher cannot start.
#[derive(Debug, Error)]
pub enum WatchError {
    #[error("cannot set up inotify")]
    Inotify(#[source] io::Error),
    #[error(transparent)]
    Scan(#[from] ScanError),
}

/// A running watcher; dropping it stops the watch.
pub struct CgroupWatcher {
    updates: mpsc::Receiver<TreeUpdate>,
    task: JoinHandle<()>,
}

const MASK: WatchMask = WatchMask::CREATE
    .union(WatchMask::DELETE)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::ATTRIB)
    .union(WatchMask::ONLYDIR);

impl CgroupWatcher {
    /// Walk the subtree of `root`, watching every directory as the walk
    /// opens it, and keep watching. Returns the watcher and the first
    /// snapshot, which updates are relative to. Every scan is recorded in
    /// `discovery`. Only an unusable root (or no inotify) is an error. Must
    /// run inside a tokio runtime.
    pub fn start(
        root: &Path,
        options: WatchOptions,
        discovery: Discovery,
    ) -> Result<(CgroupWatcher, CgroupTree), WatchError> {
        let inotify = Inotify::init().map_err(WatchError::Inotify)?;
        let mut scanner = Scanner {
            root: root.to_path_buf(),
            limits: options.limits,
            watches: inotify.watches(),
            watched: HashSet::new(),
            discovery,
        };
        let initial = scanner.scan()?;
        let events = inotify
            .into_event_stream([0u8; 4096])
            .map_err(WatchError::Inotify)?;
        let (tx, updates) = mpsc::channel(16);
        let task = tokio::spawn(run(initial.clone(), options, events, scanner, tx));
        Ok((CgroupWatcher { updates, task }, initial))
    }

    /// The next change; `None` once the watcher stopped.
    pub async fn next(&mut self) -> Option<TreeUpdate> {
        self.updates.recv().await
    }
}

impl Drop for CgroupWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Walks the tree, adding the watches it lacks.
struct Scanner {
    root: PathBuf,
    limits: ScanLimits,
    watches: Watches,
    /// Ids (inodes) of the watched directories.
    watched: HashSet<u64>,
    discovery: Discovery,
}

impl Scanner {
    fn scan(&mut self) -> Result<CgroupTree, ScanError> {
        let Scanner {
            root,
            limits,
            watches,
            watched,
            discovery,
        } = self;
        let mut unwatched = 0;
        let scan = walk::scan(root, *limits, |visit| {
            if !watch(watches, watched, &visit) {
                unwatched += 1;
            }
        })?;
        // The kernel drops the watch of a removed directory by itself.
        let present: HashSet<u64> = scan.tree.iter().map(|(_, id)| id).collect();
        watched.retain(|id| present.contains(id));
        discovery.record_scan(scan.tree.len(), &scan.report, unwatched);
        Ok(scan.tree)
    }

    /// [`Scanner::scan`] off the async worker when the runtime has others
    /// (a walk of a large tree takes a while).
    fn scan_blocking(&mut self) -> Result<CgroupTree, ScanError> {
        use tokio::runtime::{Handle, RuntimeFlavor};
        match Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(|| self.scan()),
            _ => self.scan(),
        }
    }
}

/// Watch the directory being visited unless it is already; false when it
/// cannot be (the periodic rescan still sees what changes below it).
fn watch(watches: &mut Watches, watched: &mut HashSet<u64>, visit: &Visit<'_>) -> bool {
    use std::os::fd::AsRawFd;
    if watched.contains(&visit.node.id) {
        return true;
    }
    // Through the open descriptor: any depth, any path length, and the
    // very directory the walk lists next.
    let through = format!("/proc/self/fd/{}", visit.fd.as_raw_fd());
    match watches.add(&through, MASK) {
        Ok(_) => {
            watched.insert(visit.node.id);
            true
        }
        // Discovery logs how many, rate-limited (ENOSPC:
        // fs.inotify.max_user_watches).
        Err(_) => false,
    }
}

async fn run(
    mut current: CgroupTree,
    options: WatchOptions,
    mut events: inotify::EventStream<[u8; 4096]>,
    mut scanner: Scanner,
    tx: mpsc::Sender<TreeUpdate>,
) {
    let mut rescan = tokio::time::interval(options.rescan_interval);
    rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    rescan.tick().await; // the first tick is immediate
    let mut events_ended = false;
    loop {
        if events_ended {
            rescan.tick().await;
        } else {
            tokio::select! {
                event = events.next() => match event {
                    Some(Ok(_)) => settle(&mut events, options.settle).await,
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "cgroup watch read failed");
                        tokio::time::sleep(options.settle).await;
                    }
                    None => {
                        tracing::error!("cgroup watch stream ended; only periodic rescans remain");
                        events_ended = true;
                        rescan = tokio::time::interval(options.rescan_interval.min(Duration::from_secs(1)));
                        rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    }
                },
                _ = rescan.tick() => {}
            }
        }
        let newer = match scanner.scan_blocking() {
            Ok(tree) => tree,
            Err(e) => {
                // Logged by discovery, rate-limited; the next event or
                // tick tries again.
                scanner.discovery.record_failure(&e);
                continue;
            }
        };
        let changes = current.changes_to(&newer);
        if changes.is_empty() {
            continue;
        }
        current = newer.clone();
        let update = TreeUpdate {
            tree: newer,
            changes,
        };
        if tx.send(update).await.is_err() {
            return; // the receiver is gone: the watch ends
        }
    }
}

/// Swallow the rest of a burst of events: until `quiet` passes without
/// one, or [`SETTLE_CUT`] times `quiet` since the burst began.
async fn settle(events: &mut inotify::EventStream<[u8; 4096]>, quiet: Duration) {
    let cut = tokio::time::sleep(quiet * SETTLE_CUT);
    tokio::pin!(cut);
    loop {
        tokio::select! {
            _ = &mut cut => return,
            _ = tokio::time::sleep(quiet) => return,
            event = events.next() => if event.is_none() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::cgroups::SkipReason;
    use crate::cgroups::test_trees::{TempTree, without_dac_capabilities};

    /// inotify works on any directory tree, so the watcher logic is tested
    /// on a temporary one; the root integration tests use a real cgroup.
    fn options(rescan_interval: Duration) -> WatchOptions {
        WatchOptions {
            rescan_interval,
            settle: Duration::from_millis(10),
            ..WatchOptions::default()
        }
    }

    /// Updates until one satisfies `done`, within `within`.
    async fn until(
        watcher: &mut CgroupWatcher,
        within: Duration,
        mut done: impl FnMut(&TreeUpdate) -> bool,
    ) -> TreeUpdate {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let update = tokio::time::timeout(left, watcher.next())
                .await
                .expect("no such update in time")
                .expect("watcher stopped");
            if done(&update) {
                return update;
            }
        }
    }

    fn created(update: &TreeUpdate, wanted: &str) -> bool {
        update
            .changes
            .iter()
            .any(|c| matches!(c, CgroupChange::Created { path, .. } if path == wanted))
    }

    #[tokio::test]
    async fn reports_nested_creations_and_removals_quickly() {
        let t = TempTree::new();
        t.mkdir("a");
        let (mut watcher, initial) = CgroupWatcher::start(
            t.path(),
            options(Duration::from_secs(3600)),
            Discovery::default(),
        )
        .unwrap();
        assert_eq!(initial.len(), 2);

        let started = Instant::now();
        t.mkdir("a/b/c");
        let mut seen = Vec::new();
        until(&mut watcher, Duration::from_secs(2), |u| {
            seen.extend(u.changes.clone());
            created(u, "a/b/c")
        })
        .await;
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "took {:?}",
            started.elapsed()
        );
        assert!(
            seen.iter()
                .any(|c| matches!(c, CgroupChange::Created { path, .. } if path == "a/b"))
        );

        // The new directories are watched too.
        t.mkdir("a/b/c/d");
        let update = until(&mut watcher, Duration::from_secs(2), |_| true).await;
        assert!(
            matches!(&update.changes[..], [CgroupChange::Created { path, .. }] if path == "a/b/c/d")
        );

        std::fs::remove_dir(t.join("a/b/c/d")).unwrap();
        let update = until(&mut watcher, Duration::from_secs(2), |_| true).await;
        assert!(
            matches!(&update.changes[..], [CgroupChange::Removed { path, .. }] if path == "a/b/c/d")
        );
        assert!(update.tree.id_of("a/b/c").is_some());
    }

    /// Watches go through the walk's descriptors: a directory past
    /// PATH_MAX is watched like any other.
    #[tokio::test]
    async fn a_cgroup_created_past_path_max_is_reported_by_its_watch() {
        let t = TempTree::new();
        let (deepest, fd) = t.chain("", &"p".repeat(250), 20);
        assert!(deepest.len() > libc::PATH_MAX as usize);
        let (mut watcher, initial) = CgroupWatcher::start(
            t.path(),
            options(Duration::from_secs(3600)),
            Discovery::default(),
        )
        .unwrap();
        assert!(initial.id_of(&deepest).is_some());
        rustix::fs::mkdirat(&fd, "new", rustix::fs::Mode::from_raw_mode(0o755)).unwrap();
        let wanted = format!("{deepest}/new");
        let update = until(&mut watcher, Duration::from_secs(2), |u| {
            created(u, &wanted)
        })
        .await;
        assert_eq!(update.tree.len(), 22);
    }

    /// A directory that cannot be read cannot be watched either; once its
    /// mode lets the daemon in, the `chmod` (IN_ATTRIB) reveals what is
    /// below it at once, and discovery stops counting it.
    #[test]
    fn an_unreadable_directory_is_walked_once_its_mode_allows() {
        let t = TempTree::new();
        t.mkdir("locked/inside");
        t.mkdir("open");
        t.chmod("locked", 0o000);
        without_dac_capabilities(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let discovery = Discovery::default();
                let (mut watcher, initial) = CgroupWatcher::start(
                    t.path(),
                    options(Duration::from_secs(3600)),
                    discovery.clone(),
                )
                .expect("a bad child never stops the watcher");
                assert!(initial.id_of("locked").is_some());
                assert_eq!(initial.id_of("locked/inside"), None);
                let status = discovery.status();
                assert!(
                    status.skipped.contains(&(SkipReason::Unreadable, 1)),
                    "{status:?}"
                );
                assert_eq!(status.unwatched, 0, "only opened directories count");

                t.chmod("locked", 0o755);
                until(&mut watcher, Duration::from_secs(2), |u| {
                    created(u, "locked/inside")
                })
                .await;
                let status = discovery.status();
                assert!(status.skipped.iter().all(|&(_, n)| n == 0), "{status:?}");
            });
        });
    }

    /// A root that cannot be walked fails rescans, which are counted, and
    /// the periodic ones go on: once the root is back, it is reported
    /// although no watch saw it come (the new directory has none yet).
    #[tokio::test]
    async fn a_failing_rescan_never_stops_the_next_ones() {
        let t = TempTree::new();
        t.mkdir("root/a");
        let root = t.join("root");
        let discovery = Discovery::default();
        let (mut watcher, _) = CgroupWatcher::start(
            &root,
            options(Duration::from_millis(100)),
            discovery.clone(),
        )
        .unwrap();
        std::fs::rename(&root, t.join("away")).unwrap();
        let deadline = Instant::now() + Duration::from_secs(2);
        while discovery.status().rescans_failed < 2 {
            assert!(Instant::now() < deadline, "{:?}", discovery.status());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(discovery.status().last_error.is_some());

        t.mkdir("root/b");
        let update = until(&mut watcher, Duration::from_secs(2), |u| created(u, "b")).await;
        assert_eq!(update.tree.id_of("a"), None);
        assert_eq!(discovery.status().last_error, None);

        // The new root is watched from that rescan on.
        let watched = Instant::now();
        t.mkdir("root/c");
        until(&mut watcher, Duration::from_secs(2), |u| created(u, "c")).await;
        assert!(watched.elapsed() < Duration::from_secs(2));
    }

    /// Creates and removes a directory every few milliseconds until
    /// stopped (or dropped, when a test fails).
    struct Churner {
        stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
        rounds: std::sync::Arc<std::sync::atomic::AtomicUsize>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl Churner {
        fn start(dir: PathBuf) -> Churner {
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let rounds = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let (flag, count) = (std::sync::Arc::clone(&stop), std::sync::Arc::clone(&rounds));
            let thread = std::thread::spawn(move || {
                while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = std::fs::create_dir(&dir);
                    let _ = std::fs::remove_dir(&dir);
                    count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(2));
                }
            });
            Churner {
                stop,
                rounds,
                thread: Some(thread),
            }
        }

        fn rounds(&self) -> usize {
            self.rounds.load(std::sync::atomic::Ordering::Relaxed)
        }
    }

    impl Drop for Churner {
        fn drop(&mut self) {
            self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }

    /// A user creating and removing cgroups in a loop never lets events
    /// quiet down: the burst is cut, and a rescan still comes.
    #[tokio::test]
    async fn a_stream_of_events_cannot_hold_rescans_back() {
        let t = TempTree::new();
        t.mkdir("churn");
        let (mut watcher, _) = CgroupWatcher::start(
            t.path(),
            options(Duration::from_secs(3600)),
            Discovery::default(),
        )
        .unwrap();
        let churner = Churner::start(t.join("churn/x"));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = Instant::now();
        let rounds_before = churner.rounds();
        t.mkdir("target");
        until(&mut watcher, Duration::from_secs(2), |u| {
            created(u, "target")
        })
        .await;
        assert!(
            started.elapsed() < Duration::from_millis(1000),
            "took {:?}",
            started.elapsed()
        );
        assert!(churner.rounds() > rounds_before, "events kept coming");
    }
}
