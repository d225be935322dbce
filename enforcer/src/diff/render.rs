//! Printing a [`PolicyDiff`]: aligned text for terminals and logs, the
//! contract's JSON, and Markdown for a pull-request comment.

use std::fmt::Write as _;

use super::model::{Change, PolicyDiff};

/// Output format of `enforcer diff`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
    Markdown,
}

/// Renders `diff` in `format`; `colour` adds ANSI colours to text output.
pub fn render(diff: &PolicyDiff, format: Format, colour: bool) -> String {
    match format {
        Format::Text => text(diff, colour),
        Format::Json => json(diff),
        Format::Markdown => markdown(diff),
    }
}

/// The JSON document, one line, newline-terminated.
pub fn json(diff: &PolicyDiff) -> String {
    // Serialising plain strings, bools and vectors cannot fail.
    let mut s = serde_json::to_string(diff).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
    s.push('\n');
    s
}

/// One line saying what changed, e.g. `3 verdict changes: 2 newly allowed,
/// 1 newly denied; 1 mode change`.
pub fn summary(diff: &PolicyDiff) -> String {
    if diff.is_empty() {
        return "no changes".to_owned();
    }
    let allowed = diff.changes.iter().filter(|c| c.is_widening()).count();
    let denied = diff.changes.len() - allowed;
    let mut parts = Vec::new();
    if !diff.changes.is_empty() {
        parts.push(format!(
            "{} ({allowed} newly allowed, {denied} newly denied)",
            plural(diff.changes.len(), "verdict change")
        ));
    }
    for (n, what) in [
        (diff.entities.len(), "entity change"),
        (diff.modes.len(), "mode change"),
        (diff.expectations.len(), "expectation change"),
        (diff.untils.len(), "until change"),
    ] {
        if n > 0 {
            parts.push(plural(n, what));
        }
    }
    let verdict = match (diff.widened, diff.narrowed) {
        (true, true) => "widens and narrows access",
        (true, false) => "widens access",
        (false, true) => "narrows access",
        (false, false) => "same access",
    };
    format!("{verdict}: {}", parts.join("; "))
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

fn sign(c: &Change) -> &'static str {
    if c.is_widening() { "+" } else { "-" }
}

/// Remote addresses that changed owner, as a trailing note.
fn note(c: &Change) -> String {
    match (&c.addresses, &c.was) {
        (Some(addrs), Some(was)) => format!("{} (was {was})", abbreviate(addrs)),
        _ => String::new(),
    }
}

/// At most three CIDRs, then a count, so a carved-out hole does not flood
/// the output.
fn abbreviate(addrs: &[String]) -> String {
    if addrs.len() <= 3 {
        addrs.join(" ")
    } else {
        format!("{} and {} more", addrs[..3].join(" "), addrs.len() - 3)
    }
}

fn text(diff: &PolicyDiff, colour: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", summary(diff));
    if !diff.changes.is_empty() {
        let header = [
            "", "FROM", "TO", "PROTO", "PORTS", "BEFORE", "AFTER", "RULE", "",
        ];
        let rows: Vec<[String; 9]> = diff
            .changes
            .iter()
            .map(|c| {
                [
                    sign(c).to_owned(),
                    c.from.clone(),
                    c.to.clone(),
                    c.protocol.clone(),
                    c.ports.clone(),
                    c.before.clone(),
                    c.after.clone(),
                    c.rule.clone(),
                    note(c),
                ]
            })
            .collect();
        let mut widths = header.map(str::len);
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.len());
            }
        }
        let line = |cells: &[&str]| -> String {
            let mut s = String::new();
            for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
                if i + 1 == cells.len() {
                    s.push_str(cell);
                } else {
                    let _ = write!(s, "{cell:<w$} ");
                }
            }
            s.trim_end().to_owned()
        };
        let _ = writeln!(out);
        let _ = writeln!(out, "{}", line(&header));
        for (row, c) in rows.iter().zip(&diff.changes) {
            let cells: Vec<&str> = row.iter().map(String::as_str).collect();
            let l = line(&cells);
            if colour {
                let code = if c.is_widening() { "32" } else { "31" };
                let _ = writeln!(out, "\x1b[{code}m{l}\x1b[0m");
            } else {
                let _ = writeln!(out, "{l}");
            }
        }
    }
    for line in detail_lines(diff) {
        let _ = writeln!(out, "{line}");
    }
    out
}

/// The non-verdict changes, one line each, grouped under headings.
fn detail_lines(diff: &PolicyDiff) -> Vec<String> {
    let mut lines = Vec::new();
    let mut section = |title: &str, items: Vec<String>| {
        if !items.is_empty() {
            lines.push(String::new());
            lines.push(format!("{title}:"));
            lines.extend(items.into_iter().map(|i| format!("  {i}")));
        }
    };
    section(
        "Entities",
        diff.entities
            .iter()
            .map(|e| match &e.detail {
                Some(d) => format!("{} {} {}: {d}", e.kind, e.name, e.change),
                None => format!("{} {} {}", e.kind, e.name, e.change),
            })
            .collect(),
    );
    section(
        "Modes",
        diff.modes
            .iter()
            .map(|m| format!("workload {}: {} -> {}", m.workload, m.before, m.after))
            .collect(),
    );
    section(
        "Expectations",
        diff.expectations
            .iter()
            .map(|e| {
                format!(
                    "{} -> {} {}: {} -> {}",
                    e.from,
                    e.to,
                    e.port,
                    e.before.as_deref().unwrap_or("(none)"),
                    e.after.as_deref().unwrap_or("(none)")
                )
            })
            .collect(),
    );
    section(
        "Until",
        diff.untils
            .iter()
            .map(|u| {
                format!(
                    "{}: {} -> {}",
                    u.rule,
                    u.before.as_deref().unwrap_or("(none)"),
                    u.after.as_deref().unwrap_or("(none)")
                )
            })
            .collect(),
    );
    lines
}

/// Escapes a table cell: pipes would end the cell, newlines the row.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn markdown(diff: &PolicyDiff) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "**Policy diff:** {}", summary(diff));
    if !diff.changes.is_empty() {
        let _ = writeln!(out);
        let notes = diff.changes.iter().any(|c| c.addresses.is_some());
        let (extra_head, extra_rule) = if notes {
            (" addresses |", "---|")
        } else {
            ("", "")
        };
        let _ = writeln!(
            out,
            "| | from | to | protocol | ports | before | after | rule |{extra_head}"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|---|{extra_rule}");
        for c in &diff.changes {
            let extra = if notes {
                format!(" {} |", cell(&note(c)))
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | `{}` |{extra}",
                if c.is_widening() { "➕" } else { "➖" },
                cell(&c.from),
                cell(&c.to),
                c.protocol,
                c.ports,
                c.before,
                c.after,
                cell(&c.rule)
            );
        }
    }
    for line in detail_lines(diff) {
        if line.is_empty() {
            let _ = writeln!(out);
        } else if let Some(item) = line.strip_prefix("  ") {
            let _ = writeln!(out, "- {}", item.replace('|', "\\|"));
        } else {
            let _ = writeln!(out, "**{}**", line.trim_end_matches(':'));
            let _ = writeln!(out);
        }
    }
    out
}
