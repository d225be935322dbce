//! The results table.

use enforcer::compile::CompiledPolicy;
use enforcer_common::ACTION_AUDIT;
use enforcer_tests::ProbeOutcome;

use super::cases::{Event, Expectation, Observation, Outcome};

/// One printed row.
pub struct Row {
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

fn event_text(policy: &CompiledPolicy, event: Option<Event>) -> String {
    match event {
        None => "-".into(),
        Some(e) => {
            let action = if e.action == ACTION_AUDIT {
                "audit"
            } else {
                "deny"
            };
            format!("{action}: {}", policy.rule_name(e.rule))
        }
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

/// Prints the table; returns how many rows matched.
pub fn print(policy: &CompiledPolicy, rows: &[Row]) -> usize {
    let header = [
        "#",
        "from",
        "to",
        "port",
        "policy (enforcer explain)",
        "observed",
        "kernel event",
        "",
    ];
    let mut cells: Vec<[String; 8]> = Vec::new();
    let mut matched = 0;
    for (i, row) in rows.iter().enumerate() {
        let e = &row.expected;
        let mut policy_text = format!("{:<5} {}", e.verdict, e.rule);
        if let Some(note) = &e.note {
            policy_text.push_str(&format!(" ({note})"));
        }
        let ok = row.observed.matches(e);
        matched += usize::from(ok);
        cells.push([
            (i + 1).to_string(),
            e.from.label.clone(),
            e.to.label.clone(),
            e.port.to_string(),
            policy_text,
            observed_text(&row.observed),
            event_text(policy, row.observed.event),
            if ok { "ok" } else { "MISMATCH" }.into(),
        ]);
    }
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cols: &[String]| {
        let mut s = String::new();
        for (i, (c, w)) in cols.iter().zip(widths).enumerate() {
            if i == 0 {
                s.push_str(&format!("{c:>w$}"));
            } else {
                s.push_str(&format!("  {c:<w$}"));
            }
        }
        println!("{}", s.trim_end());
    };
    line(&header.map(String::from));
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    line(&rule);
    for row in &cells {
        line(row);
    }
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
            event_text(policy, e.event),
            observed_text(&row.observed),
            event_text(policy, row.observed.event),
        );
        println!("    probe: {}", row.observed.report.line);
    }
    matched
}
