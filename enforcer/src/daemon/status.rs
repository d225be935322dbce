//! What `status` and the metrics endpoint show, without the engine's lock.
//! The engine's state is published after every change (a copy made from
//! memory while the change still holds the lock); a reader takes the last
//! copy and adds the counters, read through map handles of its own. A
//! scrape or a `status` therefore never waits for a policy load, and a
//! policy load never waits for thousands of counter lookups.

use std::sync::{Arc, RwLock};

use enforcer_common::verdict::Action;

use super::engine::with_cause;
use super::integrity::IntegrityBook;
use crate::api::StatusReport;
use crate::api::proto::VerdictCounters;
use crate::dataplane::CounterReader;

/// The last published status, the counters' handles, and the integrity
/// check's findings.
pub struct StatusBoard {
    published: RwLock<Arc<StatusReport>>,
    counters: CounterReader,
    integrity: Arc<IntegrityBook>,
}

impl StatusBoard {
    pub fn new(
        initial: StatusReport,
        counters: CounterReader,
        integrity: Arc<IntegrityBook>,
    ) -> StatusBoard {
        StatusBoard {
            published: RwLock::new(Arc::new(initial)),
            counters,
            integrity,
        }
    }

    /// Replace the published state (the engine's status, counters zero).
    pub fn publish(&self, report: StatusReport) {
        let report = Arc::new(report);
        match self.published.write() {
            Ok(mut slot) => *slot = report,
            Err(poisoned) => *poisoned.into_inner() = report,
        }
    }

    /// The last published state, as it was published.
    pub fn published(&self) -> Arc<StatusReport> {
        match self.published.read() {
            Ok(slot) => Arc::clone(&slot),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// The last published state with the counters as they are now (three
    /// map lookups per workload, so call it where blocking is fine) and
    /// the integrity check's findings: what it could not repair is also
    /// `not_enforced`.
    pub fn current(&self) -> StatusReport {
        let mut report = (*self.published()).clone();
        with_counters(&mut report, &self.counters);
        report.integrity = self.integrity.snapshot();
        report.not_enforced.extend(
            report
                .integrity
                .problems
                .iter()
                .map(|problem| format!("integrity: {problem}")),
        );
        report
    }
}

/// Fill in the per-workload counters, `lost_events` and the registration
/// counters of `report`: three lookups per workload, and one for the
/// global counters. A lookup that fails leaves its counter at 0, and is
/// logged and reported in `read_errors` (once per kind, with the number
/// of lookups that failed), so that a 0 read as a value is never a guess.
fn with_counters(report: &mut StatusReport, reader: &CounterReader) {
    let mut failed = 0usize;
    let mut last_error = None;
    for w in &mut report.workloads {
        let mut count = |action| {
            reader.counter(w.identity, action).unwrap_or_else(|e| {
                failed += 1;
                last_error = Some(e);
                0
            })
        };
        w.counters = VerdictCounters {
            allow: count(Action::Allow as u8),
            deny: count(Action::Deny as u8),
            audit: count(Action::Audit as u8),
        };
    }
    if let Some(e) = last_error {
        tracing::warn!(error = %e, failed, "cannot read the verdict counters");
        report.read_errors.push(format!(
            "verdict counters: {failed} lookups failed, shown as 0: {}",
            with_cause(&e)
        ));
    }
    match reader.global_counters() {
        Ok(global) => {
            report.lost_events = global.events_lost;
            let registration = &mut report.cgroup_registration;
            registration.registered = global.cgroups_registered;
            registration.refused = global.registrations_refused;
            registration.overflows = global.match_overflows;
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the global counters");
            report.read_errors.push(format!(
                "global counters (lost events, cgroups registered at creation): shown as 0: {}",
                with_cause(&e)
            ));
        }
    }
}
