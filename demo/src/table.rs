//! The results table.

use enforcer_tests::ProbeOutcome;

use super::cases::{Event, Expectation, Observation, Outcome};

/// One printed row.
pub(crate) struct Row {
    pub expected: Expectation,
    pub observed: Observation,
}

fn outcome_text(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Connected => "connected",
        Outcome::Refused => "refused (EPERM)",
        Outcome::Dropped => "dropped",
    }
}

fn event_text(event: Option<&Event>) -> String {
    match event {
        None => "-".into(),
        Some(e) => format!("{}: {}", e.verdict.as_str(), e.rule),
    }
}

fn observed_text(o: &Observation) -> String {
    let ms = o.report.elapsed_ms;
    match &o.report.outcome {
        ProbeOutcome::Ok => format!("connected, {ms} ms"),
        ProbeOutcome::Eperm => format!("refused at once (EPERM), {ms} ms"),
        ProbeOutcome::Timeout => format!("dropped (no answer in {ms} ms)"),
        ProbeOutcome::Refused => "reset by the server".into(),
        ProbeOutcome::Error(detail) => format!("error: {detail}"),
    }
}

const HEADER: [&str; 8] = [
    "#",
    "from",
    "to",
    "port",
    "policy (enforcer explain)",
    "observed",
    "kernel event",
    "",
];

/// The table, printed a row at a time as the connections are made.
pub(crate) struct Table {
    widths: [usize; 8],
}

fn policy_text(e: &Expectation) -> String {
    let mut text = format!("{:<5} {}", e.verdict, e.rule);
    if let Some(note) = &e.note {
        text.push_str(&format!(" ({note})"));
    }
    text
}

impl Table {
    /// Sizes the columns from what the policy says about every row, and
    /// prints the header.
    pub(crate) fn start(expected: &[Expectation]) -> Table {
        let mut widths = HEADER.map(str::len);
        // The longest observation: "refused at once (EPERM), 10 ms".
        widths[5] = widths[5].max(32);
        widths[7] = "MISMATCH".len();
        for (i, e) in expected.iter().enumerate() {
            let cells = [
                (i + 1).to_string(),
                e.from.label.clone(),
                e.to.label.clone(),
                e.port.to_string(),
                policy_text(e),
                String::new(),
                event_text(e.event.as_ref()),
            ];
            for (w, c) in widths.iter_mut().zip(&cells) {
                *w = (*w).max(c.chars().count());
            }
        }
        let table = Table { widths };
        table.line(&HEADER.map(String::from));
        table.line(&widths.map(|w| "-".repeat(w)));
        table
    }

    fn line(&self, cols: &[String]) {
        let mut s = String::new();
        for (i, (c, w)) in cols.iter().zip(self.widths).enumerate() {
            if i == 0 {
                s.push_str(&format!("{c:>w$}"));
            } else {
                s.push_str(&format!("  {c:<w$}"));
            }
        }
        println!("{}", s.trim_end());
    }

    /// Prints row `i` (0-based); returns whether it matched.
    pub(crate) fn row(&self, i: usize, row: &Row) -> bool {
        let e = &row.expected;
        let ok = row.observed.matches(e);
        self.line(&[
            (i + 1).to_string(),
            e.from.label.clone(),
            e.to.label.clone(),
            e.port.to_string(),
            policy_text(e),
            observed_text(&row.observed),
            event_text(row.observed.event.as_ref()),
            if ok { "ok" } else { "MISMATCH" }.into(),
        ]);
        ok
    }
}

/// Explains every row that did not match the policy.
pub(crate) fn mismatches(rows: &[Row]) {
    for (i, row) in rows.iter().enumerate() {
        if row.observed.matches(&row.expected) {
            continue;
        }
        let e = &row.expected;
        println!();
        println!(
            "#{}: the policy says {} -> expected {} with kernel event {}; observed {} with kernel event {}",
            i + 1,
            e.verdict,
            outcome_text(e.outcome),
            event_text(e.event.as_ref()),
            observed_text(&row.observed),
            event_text(row.observed.event.as_ref()),
        );
        println!("    probe: {}", row.observed.report.line);
    }
}
