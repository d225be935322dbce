//! Watching a cgroup subtree for cgroups being created and removed.
//!
//! inotify is not recursive, so every cgroup directory gets its own watch
//! (mkdir/rmdir on cgroupfs go through the VFS and raise `IN_CREATE` /
//! `IN_DELETE` like any directory). Events are only a trigger: after one, the
//! watcher waits a few milliseconds for the burst to settle, rescans the
//! whole subtree and reports the difference with its previous snapshot, so
//! a cgroup created below a brand-new one before its watch existed is still
//! seen. A periodic rescan covers anything inotify could miss (queue
//! overflow, watch limits).

use std::collections::HashSet;
use std::io;
use std::time::Duration;

use futures_util::StreamExt;
use inotify::{Inotify, WatchMask, Watches};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::tree::{CgroupChange, CgroupTree};

/// How the watcher paces itself.
#[derive(Clone, Copy, Debug)]
pub struct WatchOptions {
    /// Full rescan interval, whatever inotify says.
    pub rescan_interval: Duration,
    /// How long to let a burst of events settle before rescanning.
    pub settle: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            rescan_interval: Duration::from_secs(30),
            settle: Duration::from_millis(20),
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

/// A running watcher; dropping it stops the watch.
pub struct CgroupWatcher {
    updates: mpsc::Receiver<TreeUpdate>,
    task: JoinHandle<()>,
}

const MASK: WatchMask = WatchMask::CREATE
    .union(WatchMask::DELETE)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::ONLYDIR);

impl CgroupWatcher {
    /// Start watching the subtree of `initial` (the caller's current
    /// snapshot, which updates are relative to). Must run inside a tokio
    /// runtime.
    pub fn start(initial: CgroupTree, options: WatchOptions) -> io::Result<CgroupWatcher> {
        let inotify = Inotify::init()?;
        let mut watches = inotify.watches();
        let mut watched = HashSet::new();
        add_watches(&mut watches, &initial, &mut watched)?;
        let events = inotify.into_event_stream([0u8; 4096])?;
        let (tx, updates) = mpsc::channel(16);
        let task = tokio::spawn(run(initial, options, events, watches, watched, tx));
        Ok(CgroupWatcher { updates, task })
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

/// Add a watch for every cgroup of `tree` not watched yet. Only a failure on
/// the root is an error: a child may vanish between the scan and the watch.
fn add_watches(
    watches: &mut Watches,
    tree: &CgroupTree,
    watched: &mut HashSet<String>,
) -> io::Result<()> {
    watched.retain(|path| tree.id_of(path).is_some());
    for (path, _) in tree.iter() {
        if watched.contains(path) {
            continue;
        }
        match watches.add(tree.dir_of(path), MASK) {
            Ok(_) => {
                watched.insert(path.to_owned());
            }
            Err(e) if path.is_empty() => return Err(e),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                // ENOSPC (fs.inotify.max_user_watches): the periodic rescan
                // still sees this cgroup, only later.
                tracing::warn!(cgroup = path, error = %e, "cannot watch cgroup; relying on periodic rescans");
            }
        }
    }
    Ok(())
}

async fn run(
    mut current: CgroupTree,
    options: WatchOptions,
    mut events: inotify::EventStream<[u8; 4096]>,
    mut watches: Watches,
    mut watched: HashSet<String>,
    tx: mpsc::Sender<TreeUpdate>,
) {
    let mut rescan = tokio::time::interval(options.rescan_interval);
    rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    rescan.tick().await; // the first tick is immediate
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(_)) => settle(&mut events, options.settle).await,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "cgroup watch read failed");
                    tokio::time::sleep(options.settle).await;
                }
                None => {
                    tracing::error!("cgroup watch stream ended; only periodic rescans remain");
                    return periodic_only(current, options, tx).await;
                }
            },
            _ = rescan.tick() => {}
        }
        let newer = match CgroupTree::scan(current.root()) {
            Ok(tree) => tree,
            Err(e) => {
                tracing::error!(root = %current.root().display(), error = %e, "cannot rescan cgroups");
                continue;
            }
        };
        let changes = current.changes_to(&newer);
        if changes.is_empty() {
            continue;
        }
        if let Err(e) = add_watches(&mut watches, &newer, &mut watched) {
            tracing::error!(error = %e, "cannot watch the cgroup root any more");
        }
        if !publish(&mut current, newer, changes, &tx).await {
            return;
        }
    }
}

/// Makes `newer` the current tree and sends it with its `changes`; false
/// once the receiver is gone (the watch ends).
async fn publish(
    current: &mut CgroupTree,
    newer: CgroupTree,
    changes: Vec<CgroupChange>,
    tx: &mpsc::Sender<TreeUpdate>,
) -> bool {
    *current = newer.clone();
    tx.send(TreeUpdate {
        tree: newer,
        changes,
    })
    .await
    .is_ok()
}

/// Swallow the rest of a burst of events.
async fn settle(events: &mut inotify::EventStream<[u8; 4096]>, quiet: Duration) {
    let deadline = tokio::time::sleep(quiet);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => return,
            event = events.next() => if event.is_none() { return },
        }
    }
}

async fn periodic_only(
    mut current: CgroupTree,
    options: WatchOptions,
    tx: mpsc::Sender<TreeUpdate>,
) {
    let mut rescan = tokio::time::interval(options.rescan_interval.min(Duration::from_secs(1)));
    loop {
        rescan.tick().await;
        let Ok(newer) = CgroupTree::scan(current.root()) else {
            continue;
        };
        let changes = current.changes_to(&newer);
        if changes.is_empty() {
            continue;
        }
        if !publish(&mut current, newer, changes, &tx).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// inotify works on any directory tree, so the watcher logic is tested
    /// on a temporary one; the root integration tests use a real cgroup.
    #[tokio::test]
    async fn reports_nested_creations_and_removals_quickly() {
        let dir = std::env::temp_dir().join(format!("enforcer-watch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("a")).unwrap();
        let initial = CgroupTree::scan(&dir).unwrap();
        let mut watcher = CgroupWatcher::start(
            initial,
            WatchOptions {
                rescan_interval: Duration::from_secs(3600),
                settle: Duration::from_millis(10),
            },
        )
        .unwrap();

        let started = std::time::Instant::now();
        std::fs::create_dir_all(dir.join("a/b/c")).unwrap();
        let mut seen = Vec::new();
        while !seen
            .iter()
            .any(|c| matches!(c, CgroupChange::Created { path, .. } if path == "a/b/c"))
        {
            let update = tokio::time::timeout(Duration::from_secs(2), watcher.next())
                .await
                .unwrap()
                .unwrap();
            seen.extend(update.changes);
        }
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
        std::fs::create_dir(dir.join("a/b/c/d")).unwrap();
        let update = tokio::time::timeout(Duration::from_secs(2), watcher.next())
            .await
            .unwrap()
            .unwrap();
        assert!(
            matches!(&update.changes[..], [CgroupChange::Created { path, .. }] if path == "a/b/c/d")
        );

        std::fs::remove_dir(dir.join("a/b/c/d")).unwrap();
        let update = tokio::time::timeout(Duration::from_secs(2), watcher.next())
            .await
            .unwrap()
            .unwrap();
        assert!(
            matches!(&update.changes[..], [CgroupChange::Removed { path, .. }] if path == "a/b/c/d")
        );
        assert!(update.tree.id_of("a/b/c").is_some());
        drop(watcher);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn the_periodic_rescan_catches_what_inotify_does_not_report() {
        let dir =
            std::env::temp_dir().join(format!("enforcer-watch-rescan-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // A snapshot that is already stale: the watcher must report `x` at
        // its first periodic rescan although no event announces it.
        let initial = CgroupTree::scan(&dir).unwrap();
        std::fs::create_dir(dir.join("x")).unwrap();
        let mut watcher = CgroupWatcher::start(
            initial,
            WatchOptions {
                rescan_interval: Duration::from_millis(100),
                settle: Duration::from_millis(10),
            },
        )
        .unwrap();
        let update = tokio::time::timeout(Duration::from_secs(2), watcher.next())
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(&update.changes[..], [CgroupChange::Created { path, .. }] if path == "x"));
        drop(watcher);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
