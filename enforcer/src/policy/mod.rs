//! The policy language: parse and validate a policy directory into a typed
//! model ([`PolicySet`]). Every problem is reported, each with its
//! `FILE:LINE:COL`. See `docs/policy.md`.

mod cgroup_selector;
mod diag;
pub mod files;
mod model;
mod parse;
mod suggest;
mod time;
mod types;
mod validate;

#[cfg(test)]
pub(crate) mod fixtures;

use std::path::{Path, PathBuf};

pub use cgroup_selector::{CgroupSelector, UnitUser};
pub use diag::{Diagnostic, Diagnostics, LineIndex, LoadError, Loc, Severity};
pub use model::{
    Endpoint, Expectation, LabelIndex, Labels, Located, Peer, Policy, PolicySet, Rule, RuleRef,
    Section, Selector, Workload,
};
pub use time::parse_rfc3339;
pub use types::{
    LabelKey, LabelValue, MAX_LEN, Mode, Name, Port, PortRange, PortSpec, Proto, RESERVED_NAMES,
    ServicePort, Verdict, parse_cidr,
};
pub use validate::resolve_endpoint;

/// The policy directory the commands and the daemon use when none is given.
pub const DEFAULT_DIR: &str = "/etc/enforcer/policies";

/// A loaded, valid policy set and the warnings found while loading it.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub set: PolicySet,
    pub warnings: Vec<Diagnostic>,
}

/// Reads every `*.toml` file of `dir` (in name order), merges and validates
/// them. Errors: [`LoadError::Io`] when the directory or a file cannot be
/// read, [`LoadError::Invalid`] with every problem found otherwise.
pub fn load_dir(dir: &Path) -> Result<Loaded, LoadError> {
    load_sources(&read_dir(dir)?)
}

/// The `*.toml` files of `dir` (name, text), in name order: what
/// [`load_dir`] loads. Only regular files (symlinks followed), each and all
/// bounded in size; see [`files`].
pub fn read_dir(dir: &Path) -> Result<Vec<(PathBuf, String)>, LoadError> {
    files::read_dir(dir)
}

/// Like [`load_dir`], over file contents already in memory (name, text),
/// taken in the given order.
pub fn load_sources(sources: &[(PathBuf, String)]) -> Result<Loaded, LoadError> {
    let mut set = PolicySet::default();
    let mut raw = Vec::new();
    let mut diags = Vec::new();
    for (path, text) in sources {
        parse::parse_file(path, text, &mut set, &mut raw, &mut diags);
    }
    validate::validate(&mut set, raw, &mut diags);
    let mut diags = Diagnostics(diags);
    diags.sort();
    if diags.has_errors() {
        return Err(LoadError::Invalid(diags));
    }
    Ok(Loaded {
        set,
        warnings: diags.0,
    })
}
