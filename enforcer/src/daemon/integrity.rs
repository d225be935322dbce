//! Running the data plane's integrity check (`dataplane::IntegrityMonitor`)
//! every [`CHECK_INTERVAL`] and keeping what `status` and the metrics show
//! of it: repairs are logged as warnings, what cannot be repaired as an
//! error (once, and again when it changes) and as a problem in `status`
//! until a later pass repairs it.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use crate::api::{IntegrityRepair, IntegrityStatus};
use crate::dataplane::{IntegrityMonitor, IntegrityReport};
use crate::rfc3339::format_millis;

/// How often the links and pins are checked: a link detached or a pin
/// removed is repaired within this (plus the pass itself, a few hundred
/// system calls).
pub const CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// What the daemon knows of its data plane's integrity.
#[derive(Debug, Default)]
pub struct IntegrityBook {
    status: Mutex<IntegrityStatus>,
}

impl IntegrityBook {
    /// Records a repair made outside the periodic check (at start: pinned
    /// maps that were replaced rather than adopted).
    pub fn repaired(&self, what: String, at: SystemTime) {
        let mut status = self.lock();
        record_repair(&mut status, what, at);
    }

    /// Records one pass of the check, and logs what it found.
    pub fn record(&self, report: &IntegrityReport, at: SystemTime) {
        let mut status = self.lock();
        for what in &report.repaired {
            tracing::warn!(repaired = %what, "integrity: {what}");
            record_repair(&mut status, what.clone(), at);
        }
        if report.unrepaired != status.problems {
            for problem in &report.unrepaired {
                tracing::error!(problem = %problem, "integrity: NOT REPAIRED: {problem}");
            }
            if report.unrepaired.is_empty() {
                tracing::info!("integrity: everything is repaired");
            }
            status.problems = report.unrepaired.clone();
        }
        status.ok = status.problems.is_empty();
    }

    /// What `status` shows.
    pub fn snapshot(&self) -> IntegrityStatus {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, IntegrityStatus> {
        self.status.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn record_repair(status: &mut IntegrityStatus, what: String, at: SystemTime) {
    status.repairs += 1;
    status.last = Some(IntegrityRepair {
        time: format_millis(at),
        what,
    });
}

/// Checks and repairs every [`CHECK_INTERVAL`], on a blocking thread (the
/// monitor makes system calls; it shares nothing with the engine, whose
/// lock it never takes).
pub async fn watch(monitor: IntegrityMonitor, book: Arc<IntegrityBook>) {
    let monitor = Arc::new(monitor);
    let mut tick = tokio::time::interval(CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let pass = Arc::clone(&monitor);
        match tokio::task::spawn_blocking(move || pass.check()).await {
            Ok(report) => book.record(&report, SystemTime::now()),
            Err(e) => tracing::error!(error = %e, "the integrity check failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(repaired: &[&str], unrepaired: &[&str]) -> IntegrityReport {
        IntegrityReport {
            repaired: repaired.iter().map(ToString::to_string).collect(),
            unrepaired: unrepaired.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn counts_repairs_and_keeps_the_last() {
        let book = IntegrityBook::default();
        assert_eq!(book.snapshot(), IntegrityStatus::default());
        book.record(&report(&[], &[]), SystemTime::UNIX_EPOCH);
        assert_eq!(book.snapshot().repairs, 0);
        book.record(
            &report(
                &[
                    "link pin cgroup/connect4 restored (it was removed)",
                    "link cgroup_skb/egress re-attached",
                ],
                &[],
            ),
            SystemTime::UNIX_EPOCH,
        );
        let status = book.snapshot();
        assert!(status.ok);
        assert_eq!(status.repairs, 2);
        let last = status.last.expect("last");
        assert_eq!(last.what, "link cgroup_skb/egress re-attached");
        assert_eq!(last.time, "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn is_not_ok_while_something_is_not_repaired() {
        let book = IntegrityBook::default();
        book.record(
            &report(&[], &["link cgroup/connect4 is detached"]),
            SystemTime::now(),
        );
        let status = book.snapshot();
        assert!(!status.ok);
        assert_eq!(status.problems, ["link cgroup/connect4 is detached"]);
        assert_eq!(status.repairs, 0);
        book.record(
            &report(&["link cgroup/connect4 re-attached"], &[]),
            SystemTime::now(),
        );
        let status = book.snapshot();
        assert!(status.ok);
        assert!(status.problems.is_empty());
        assert_eq!(status.repairs, 1);
    }

    #[test]
    fn speaks_the_contract() {
        let book = IntegrityBook::default();
        book.repaired(
            "link cgroup_skb/egress re-attached".into(),
            SystemTime::UNIX_EPOCH,
        );
        let json = serde_json::to_value(book.snapshot()).expect("json");
        assert_eq!(
            json,
            serde_json::json!({"ok": true, "repairs": 1,
                "last": {"time": "1970-01-01T00:00:00.000Z", "what": "link cgroup_skb/egress re-attached"}})
        );
    }
}
