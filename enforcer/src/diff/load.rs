//! Loading one side of a diff from a policy directory: the compiled policy
//! (as `enforcer check` builds it, expectations checked) plus the source
//! facts the compiled form does not keep (expectations, `until`s).

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use super::model::{DiffInput, ExpectationInfo, PolicyMeta, RuleInfo};
use crate::compile::{RuleRef, compile_loaded};
use crate::eval::endpoint_name;
use crate::policy::{Diagnostic, LoadError, PolicySet, load_dir};

/// Loads, validates and compiles `dir` at `now`; returns the diff input and
/// the warnings. An invalid policy (a failing expectation included) is an
/// error with every diagnostic.
pub fn load_input(dir: &Path, now: SystemTime) -> Result<(DiffInput, Vec<Diagnostic>), LoadError> {
    let loaded = load_dir(dir)?;
    let meta = meta(&loaded.set);
    let (compiled, warnings) = compile_loaded(loaded, now)?;
    Ok((DiffInput { compiled, meta }, warnings))
}

/// The expectations and every rule's `until`, keyed independently of file
/// and rule order.
pub fn meta(set: &PolicySet) -> PolicyMeta {
    let expectations = set
        .expectations
        .iter()
        .map(|e| ExpectationInfo {
            from: endpoint_name(&e.from.value),
            to: endpoint_name(&e.to.value),
            port: e.port.to_string(),
            verdict: e.verdict.to_string(),
        })
        .collect();
    let mut rules = Vec::new();
    for policy in &set.policies {
        for rule in &policy.rules {
            let mut remotes: Vec<_> = rule.remotes.iter().map(|r| &r.value).collect();
            remotes.sort();
            remotes.dedup();
            let ports = match &rule.ports {
                Some(p) => {
                    let mut p: Vec<String> = p.iter().map(ToString::to_string).collect();
                    p.sort();
                    p.dedup();
                    p.join(",")
                }
                None => "all".to_owned(),
            };
            let at = RuleRef {
                policy: policy.name.to_string(),
                section: rule.section,
                index: rule.index,
            };
            rules.push(RuleInfo {
                key: format!(
                    "{} {} {remotes:?} {ports}",
                    policy.name,
                    rule.section.as_str()
                ),
                rule: at.to_string(),
                until: rule.until.as_ref().map(|u| rfc3339(u.value)),
            });
        }
    }
    PolicyMeta {
        expectations,
        rules,
    }
}

/// `2026-12-31T18:00:00Z` (UTC, whole seconds; sub-second digits kept
/// when present).
pub fn rfc3339(t: SystemTime) -> String {
    let (secs, nanos, sign) = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos(), 1),
        Err(e) => {
            let d = e.duration();
            // Before 1970: count back, borrowing a second for the fraction.
            let (s, n) = (d.as_secs() as i64, d.subsec_nanos());
            if n == 0 {
                (s, 0, -1)
            } else {
                (s + 1, 1_000_000_000 - n, -1)
            }
        }
    };
    let secs = secs * sign;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let frac = if nanos == 0 {
        String::new()
    } else {
        format!(".{nanos:09}").trim_end_matches('0').to_owned()
    };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}{frac}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian
/// calendar (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_utc_times() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_798_740_000);
        assert_eq!(rfc3339(t), "2026-12-31T18:00:00Z");
        let t = UNIX_EPOCH + Duration::new(951_782_400, 500_000_000);
        assert_eq!(rfc3339(t), "2000-02-29T00:00:00.5Z");
        let t = UNIX_EPOCH - Duration::from_secs(1);
        assert_eq!(rfc3339(t), "1969-12-31T23:59:59Z");
    }
}
