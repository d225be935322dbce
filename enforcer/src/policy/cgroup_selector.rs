//! Cgroup selectors: how a workload names its cgroups (`unit = "X"`,
//! `cgroup = "PATTERN"`) and their validation. Matching them against
//! cgroups is the selector automaton's job (`cgroups::automaton`), shared
//! with the kernel's cgroup tracer.

use std::fmt;

/// How a workload finds its cgroups (see `cgroups::automaton` for how
/// they match).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CgroupSelector {
    /// `unit = "X"`: the system service manager's unit X, a cgroup whose
    /// path from the cgroup root is a chain of `.slice` directories ending
    /// in X.
    Unit(String),
    /// `unit = "X"` with `user = ...`: unit X of that user's service
    /// manager (`user.slice/user-UID.slice/user@UID.service/...`).
    UserUnit { unit: String, user: UnitUser },
    /// `cgroup = "PATTERN"`: glob over paths relative to the cgroup root,
    /// matching only cgroups that belong to root.
    Glob(String),
    /// `cgroup = "PATTERN"` with `delegated = true`: also cgroups in a
    /// subtree delegated to another user.
    DelegatedGlob(String),
}

/// The user of `user = ...`: a name, resolved on the host that enforces,
/// or a uid.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum UnitUser {
    Name(String),
    Uid(u32),
}

impl fmt::Display for UnitUser {
    /// The name or the uid, bare.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnitUser::Name(name) => write!(f, "{name}"),
            UnitUser::Uid(uid) => write!(f, "{uid}"),
        }
    }
}

impl fmt::Display for CgroupSelector {
    /// As the policy writes it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CgroupSelector::Unit(unit) => write!(f, "unit = {unit:?}"),
            CgroupSelector::UserUnit {
                unit,
                user: UnitUser::Name(name),
            } => write!(f, "unit = {unit:?}, user = {name:?}"),
            CgroupSelector::UserUnit {
                unit,
                user: UnitUser::Uid(uid),
            } => write!(f, "unit = {unit:?}, user = {uid}"),
            CgroupSelector::Glob(pattern) => write!(f, "cgroup = {pattern:?}"),
            CgroupSelector::DelegatedGlob(pattern) => {
                write!(f, "cgroup = {pattern:?}, delegated = true")
            }
        }
    }
}

const UNIT_SUFFIXES: [&str; 3] = [".service", ".scope", ".slice"];

/// The longest directory name, hence the longest unit a cgroup can be.
const NAME_MAX: usize = 255;

impl CgroupSelector {
    /// Validates `unit = "X"`: one directory name ending in `.service`,
    /// `.scope` or `.slice`.
    pub fn unit(name: &str) -> Result<CgroupSelector, String> {
        if name.contains('/') || name.contains('*') {
            return Err(format!(
                "unit `{name}` must be a single unit name such as \"nginx.service\"; use `cgroup = \"PATTERN\"` for paths and globs"
            ));
        }
        if name.len() > NAME_MAX {
            return Err(format!(
                "unit `{name}` is longer than {NAME_MAX} bytes, the longest cgroup name"
            ));
        }
        let stem_ok = UNIT_SUFFIXES
            .iter()
            .any(|s| name.strip_suffix(s).is_some_and(|stem| !stem.is_empty()));
        if !stem_ok {
            return Err(format!(
                "unit `{name}` must name a .service, .scope or .slice (e.g. \"{name}.service\")"
            ));
        }
        Ok(CgroupSelector::Unit(name.to_owned()))
    }

    /// Validates `cgroup = "PATTERN"`: `/`-separated segments, each a name
    /// with optional `*` wildcards (never crossing `/`), or `**` alone (any
    /// number of segments). A leading `/` is dropped: patterns are always
    /// relative to the cgroup root.
    pub fn glob(pattern: &str) -> Result<CgroupSelector, String> {
        let trimmed = pattern.strip_prefix('/').unwrap_or(pattern);
        if trimmed.is_empty() {
            return Err("cgroup pattern is empty: write a path relative to the cgroup root, e.g. \"system.slice/api-*.service\"".into());
        }
        for seg in trimmed.split('/') {
            if seg.is_empty() {
                return Err(format!(
                    "cgroup pattern `{pattern}` has an empty path segment (`//` or a trailing `/`)"
                ));
            }
            if seg == "." || seg == ".." {
                return Err(format!(
                    "cgroup pattern `{pattern}` may not contain `.` or `..` segments"
                ));
            }
            if seg.contains("**") && seg != "**" {
                return Err(format!(
                    "in cgroup pattern `{pattern}`, `**` must be a whole path segment (`a/**/b`); use `*` inside a segment"
                ));
            }
        }
        if trimmed.split('/').all(|s| s == "**") {
            return Err(format!(
                "cgroup pattern `{pattern}` matches every cgroup: name the cgroups of one workload"
            ));
        }
        Ok(CgroupSelector::Glob(trimmed.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn glob(p: &str) -> CgroupSelector {
        CgroupSelector::glob(p).unwrap()
    }

    #[test]
    fn invalid_selectors_are_rejected() {
        assert!(CgroupSelector::unit("nginx").is_err());
        assert!(CgroupSelector::unit(".service").is_err());
        assert!(CgroupSelector::unit("a/b.service").is_err());
        assert!(CgroupSelector::unit(&format!("{}.service", "x".repeat(250))).is_err());
        assert!(CgroupSelector::unit(&format!("{}.service", "x".repeat(240))).is_ok());
        for bad in ["", "/", "a//b", "a/", "a/**b", "**", "a/../b"] {
            assert!(CgroupSelector::glob(bad).is_err(), "{bad} accepted");
        }
        assert_eq!(glob("/a/b"), glob("a/b"));
    }
}
