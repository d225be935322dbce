//! What a policy directory goes through before it may be enforced, as
//! `enforcer check`, `enforcer apply` and the daemon run it: load and
//! validate ([`crate::policy`]), compile ([`crate::compile`]), warn about
//! expired rules, and judge every `[[expect]]` with the reference
//! evaluator ([`crate::eval`]) over the compiled entries.

use std::path::Path;
use std::time::SystemTime;

use crate::compile::{CompiledPolicy, compile};
use crate::eval::{endpoint_identity, endpoint_name, judge_flow};
use crate::policy::{Diagnostic, Diagnostics, LoadError, Loaded, PolicySet, RuleRef};

/// Loads `dir`, compiles it at `now`, and checks its expectations. Returns
/// the compiled policy and every warning; an invalid policy (including a
/// failing expectation) is [`LoadError::Invalid`] with all the errors.
pub fn compile_dir(
    dir: &Path,
    now: SystemTime,
) -> Result<(CompiledPolicy, Vec<Diagnostic>), LoadError> {
    let loaded = crate::policy::load_dir(dir)?;
    compile_loaded(loaded, now)
}

/// [`compile_dir`] for a policy set already loaded.
pub fn compile_loaded(
    loaded: Loaded,
    now: SystemTime,
) -> Result<(CompiledPolicy, Vec<Diagnostic>), LoadError> {
    let mut warnings = loaded.warnings;
    warnings.extend(expiry_warnings(&loaded.set, now));
    let compiled = compile(&loaded.set, now).map_err(|mut d| {
        d.0.extend(warnings.iter().cloned());
        d.sort();
        LoadError::Invalid(d)
    })?;
    let failures = expectations(&loaded.set, &compiled);
    if !failures.is_empty() {
        let mut d = Diagnostics(failures);
        d.0.extend(warnings);
        d.sort();
        return Err(LoadError::Invalid(d));
    }
    let mut w = Diagnostics(warnings);
    w.sort();
    Ok((compiled, w.0))
}

/// A warning for every rule whose `until` has passed at `now` (it is left
/// out of the compiled policy).
pub fn expiry_warnings(set: &PolicySet, now: SystemTime) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for policy in &set.policies {
        for rule in &policy.rules {
            if let Some(until) = rule.until.as_ref().filter(|u| now >= u.value) {
                let r = RuleRef::of(policy, rule);
                out.push(Diagnostic::warning(
                    &until.loc,
                    format!("rule {r} has expired (its `until` has passed): it no longer matches; remove it"),
                ));
            }
        }
    }
    out
}

/// Evaluates every `[[expect]]` against the compiled policy; returns an
/// error for each one that does not hold.
pub fn expectations(set: &PolicySet, compiled: &CompiledPolicy) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for e in &set.expectations {
        let from = endpoint_identity(compiled, &e.from.value);
        let to = endpoint_identity(compiled, &e.to.value);
        let flow = judge_flow(compiled, from, to, e.port);
        let Some(verdict) = flow.verdict() else {
            // Validation guarantees a workload at one end.
            continue;
        };
        if verdict != e.verdict {
            out.push(Diagnostic::error(
                &e.loc,
                format!(
                    "expectation failed: {} -> {} {} is {verdict} (decided by {}), expected {}",
                    endpoint_name(&e.from.value),
                    endpoint_name(&e.to.value),
                    e.port,
                    flow.deciding_rules(compiled),
                    e.verdict,
                ),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests;
