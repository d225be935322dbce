//! Loading one side of a diff from a policy directory: the compiled policy
//! (as `enforcer check` builds it, expectations checked) plus the source
//! facts the compiled form does not keep (expectations, `until`s).

use std::path::Path;
use std::time::SystemTime;

use super::model::{DiffInput, ExpectationInfo, PolicyMeta, RuleInfo};
use crate::check::compile_loaded;
use crate::eval::endpoint_name;
use crate::policy::{Diagnostic, LoadError, PolicySet, RuleRef, load_dir};

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
            let at = RuleRef::of(policy, rule);
            rules.push(RuleInfo {
                key: format!(
                    "{} {} {remotes:?} {ports}",
                    policy.name,
                    rule.section.as_str()
                ),
                rule: at.to_string(),
                until: rule.until.as_ref().map(|u| crate::rfc3339::format(u.value)),
            });
        }
    }
    PolicyMeta {
        expectations,
        rules,
    }
}
