//! How complete cgroup discovery is: what the last walk could not see,
//! which cgroups have no inotify watch, and whether rescans fail. The
//! watcher records every scan here; `status` and the metrics read it. What
//! changes is logged, at most one line per [`LOG_INTERVAL`] for each kind
//! of problem, so that a persistent problem (or a user toggling one) does
//! not log a line at every rescan.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use super::walk::{ScanError, ScanReport, SkipReason, Skipped};

/// Least time between two log lines about the same kind of problem.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Longest path shown in a log line or in `status`: a delegated subtree
/// may be nested far past `PATH_MAX`.
const SHOWN_PATH_MAX: usize = 240;

/// The shared record; clones share it.
#[derive(Clone, Debug, Default)]
pub struct Discovery {
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    last: Option<LastScan>,
    rescans_failed: u64,
    last_error: Option<String>,
    skips_log: LogGate<Vec<(SkipReason, u64)>>,
    unwatched_log: LogGate<usize>,
    failure_log: LogGate<Option<String>>,
}

#[derive(Debug)]
struct LastScan {
    at: SystemTime,
    cgroups: usize,
    report: ScanReport,
    unwatched: usize,
}

/// What `status` shows of discovery.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiscoveryStatus {
    /// When the last successful scan ran (`None` before the first).
    pub scanned_at: Option<SystemTime>,
    /// Cgroups in the last snapshot, the root included.
    pub cgroups: usize,
    /// Directories the last scan skipped, for each reason (every reason,
    /// in [`SkipReason::ALL`] order).
    pub skipped: Vec<(SkipReason, u64)>,
    /// Some of them (paths shortened for display).
    pub named: Vec<Skipped>,
    /// Cgroups of the last snapshot without an inotify watch.
    pub unwatched: usize,
    /// Rescans that failed since the start (the root unusable).
    pub rescans_failed: u64,
    /// Why the last rescan failed, while it does.
    pub last_error: Option<String>,
}

impl Discovery {
    /// A scan went through: `cgroups` in the snapshot, `unwatched` of them
    /// without an inotify watch.
    pub fn record_scan(&self, cgroups: usize, report: &ScanReport, unwatched: usize) {
        let now = Instant::now();
        let mut state = self.lock();
        if state.last_error.take().is_some() {
            state.failure_log.force(None);
            tracing::info!(failed = state.rescans_failed, "cgroup rescans work again");
        }
        // Cgroups vanishing during a walk are normal churn, not a problem.
        let problems: Vec<(SkipReason, u64)> = SkipReason::ALL
            .into_iter()
            .filter(|&r| r != SkipReason::Vanished)
            .map(|r| (r, report.count(r)))
            .filter(|&(_, n)| n > 0)
            .collect();
        if state.skips_log.should_log(now, &problems) {
            // Debug-formatted below: control characters in names come out
            // escaped.
            let named: Vec<String> = report
                .named()
                .iter()
                .filter(|s| s.reason != SkipReason::Vanished)
                .take(4)
                .map(|s| format!("{} ({})", shorten(&s.path), s.reason))
                .collect();
            if problems.is_empty() {
                tracing::info!("cgroup discovery sees the whole tree again");
            } else {
                tracing::warn!(
                    skipped = ?problems.iter().map(|(r, n)| format!("{r}={n}")).collect::<Vec<_>>(),
                    examples = ?named,
                    "cgroup discovery cannot walk parts of the tree; cgroups there are not matched (see `enforcer status`)"
                );
            }
        }
        if report.count(SkipReason::Vanished) > 0 {
            tracing::debug!(
                vanished = report.count(SkipReason::Vanished),
                "cgroups removed during the walk"
            );
        }
        if state.unwatched_log.should_log(now, &unwatched) {
            if unwatched == 0 {
                tracing::info!("every cgroup is watched again");
            } else {
                tracing::warn!(
                    unwatched,
                    "cgroups without an inotify watch (fs.inotify.max_user_watches?); changes below them are seen by the periodic rescan only"
                );
            }
        }
        state.last = Some(LastScan {
            at: SystemTime::now(),
            cgroups,
            report: report.clone(),
            unwatched,
        });
    }

    /// A rescan failed: the root could not be walked. The previous
    /// snapshot stays in force.
    pub fn record_failure(&self, error: &ScanError) {
        let now = Instant::now();
        let mut state = self.lock();
        state.rescans_failed += 1;
        let message = format!("{error}: {}", error.source);
        if state.failure_log.should_log(now, &Some(message.clone())) {
            tracing::error!(
                failed = state.rescans_failed,
                "cannot rescan cgroups, keeping the last snapshot: {message}"
            );
        }
        state.last_error = Some(message);
    }

    /// The current record.
    pub fn status(&self) -> DiscoveryStatus {
        let state = self.lock();
        let mut status = DiscoveryStatus {
            rescans_failed: state.rescans_failed,
            last_error: state.last_error.clone(),
            skipped: SkipReason::ALL.into_iter().map(|r| (r, 0)).collect(),
            ..DiscoveryStatus::default()
        };
        if let Some(last) = &state.last {
            status.scanned_at = Some(last.at);
            status.cgroups = last.cgroups;
            status.unwatched = last.unwatched;
            status.skipped = SkipReason::ALL
                .into_iter()
                .map(|r| (r, last.report.count(r)))
                .collect();
            status.named = last
                .report
                .named()
                .iter()
                .map(|s| Skipped {
                    path: shorten(&s.path),
                    ..s.clone()
                })
                .collect();
        }
        status
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is plain counters: a panic elsewhere leaves it usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Decides when a changed value is worth a log line: when it differs from
/// the last one logged and [`LOG_INTERVAL`] has passed since that line. A
/// value that changes back and forth faster is logged as it stands then.
#[derive(Debug)]
struct LogGate<T> {
    logged: T,
    at: Option<Instant>,
}

impl<T: Default> Default for LogGate<T> {
    fn default() -> Self {
        LogGate {
            logged: T::default(),
            at: None,
        }
    }
}

impl<T: Clone + PartialEq> LogGate<T> {
    /// Whether `current` is to be logged now (it is then taken as logged).
    fn should_log(&mut self, now: Instant, current: &T) -> bool {
        let too_soon = self
            .at
            .is_some_and(|at| now.saturating_duration_since(at) < LOG_INTERVAL);
        if *current == self.logged || too_soon {
            return false;
        }
        self.at = Some(now);
        self.logged = current.clone();
        true
    }

    /// Take `value` as logged without a line (another line said it).
    fn force(&mut self, value: T) {
        self.logged = value;
    }
}

/// `path`, or its beginning and end around an ellipsis when it is longer
/// than [`SHOWN_PATH_MAX`] bytes.
pub fn shorten(path: &str) -> String {
    if path.len() <= SHOWN_PATH_MAX {
        return path.to_owned();
    }
    let half = SHOWN_PATH_MAX / 2;
    let mut head = half;
    while !path.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = path.len() - half;
    while !path.is_char_boundary(tail) {
        tail += 1;
    }
    format!("{}…{} ({} bytes)", &path[..head], &path[tail..], path.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gate_logs_changes_at_most_once_per_interval() {
        let start = Instant::now();
        let mut gate = LogGate::<u64>::default();
        assert!(!gate.should_log(start, &0), "nothing to say");
        assert!(gate.should_log(start, &3));
        assert!(!gate.should_log(start, &3), "unchanged");
        // Changing again within the interval: not logged yet...
        assert!(!gate.should_log(start + Duration::from_secs(1), &5));
        assert!(!gate.should_log(start + Duration::from_secs(2), &6));
        // ...but once it has passed, as it stands then.
        assert!(gate.should_log(start + LOG_INTERVAL, &6));
        assert_eq!(gate.logged, 6);
        // Still the logged value: nothing to say.
        assert!(!gate.should_log(start + LOG_INTERVAL * 3, &6));
        assert!(gate.should_log(start + LOG_INTERVAL * 3, &0));
    }

    #[test]
    fn long_paths_are_shortened_on_character_boundaries() {
        assert_eq!(shorten("a/b"), "a/b");
        let long = format!("{}/{}", "é".repeat(200), "z".repeat(300));
        let short = shorten(&long);
        assert!(short.len() < SHOWN_PATH_MAX + 40, "{}", short.len());
        assert!(short.starts_with("éé"));
        assert!(short.contains("zzz…") || short.contains("…zzz"));
        assert!(short.ends_with(&format!("({} bytes)", long.len())));
    }

    #[test]
    fn the_status_counts_every_reason_and_keeps_failures_until_a_scan_works() {
        let discovery = Discovery::default();
        let before = discovery.status();
        assert_eq!(before.scanned_at, None);
        assert_eq!(before.skipped.len(), SkipReason::ALL.len());

        let error = ScanError {
            root: "/nonexistent".into(),
            action: "open",
            source: std::io::Error::from_raw_os_error(2),
        };
        discovery.record_failure(&error);
        discovery.record_failure(&error);
        let failing = discovery.status();
        assert_eq!(failing.rescans_failed, 2);
        assert!(
            failing
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("/nonexistent")),
            "{failing:?}"
        );

        discovery.record_scan(7, &ScanReport::default(), 1);
        let working = discovery.status();
        assert_eq!(working.last_error, None);
        assert_eq!(working.rescans_failed, 2, "a counter since the start");
        assert_eq!((working.cgroups, working.unwatched), (7, 1));
        assert!(working.scanned_at.is_some());
        assert!(working.skipped.iter().all(|&(_, n)| n == 0));
    }
}
