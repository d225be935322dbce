//! Cgroup selectors: validation and matching of `unit = "X"` and
//! `cgroup = "PATTERN"` against cgroup paths relative to the cgroup root.

use super::compiled::CgroupSelector;

const UNIT_SUFFIXES: [&str; 3] = [".service", ".scope", ".slice"];

impl CgroupSelector {
    /// Validates `unit = "X"`: one directory name ending in `.service`,
    /// `.scope` or `.slice`.
    pub fn unit(name: &str) -> Result<CgroupSelector, String> {
        if name.contains('/') || name.contains('*') {
            return Err(format!(
                "unit `{name}` must be a single unit name such as \"nginx.service\"; use `cgroup = \"PATTERN\"` for paths and globs"
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

    /// Whether the cgroup at `path` (relative to the cgroup root, without a
    /// leading `/`, e.g. `system.slice/nginx.service`) is itself one of this
    /// selector's cgroups. Its descendants belong to the workload too; see
    /// [`CgroupSelector::covers`].
    pub fn matches(&self, path: &str) -> bool {
        let path = path.trim_matches('/');
        match self {
            CgroupSelector::Unit(name) => path.rsplit('/').next() == Some(name.as_str()),
            CgroupSelector::Glob(pattern) => {
                let pat: Vec<&str> = pattern.split('/').collect();
                let segs: Vec<&str> = if path.is_empty() {
                    Vec::new()
                } else {
                    path.split('/').collect()
                };
                glob_segments(&pat, &segs)
            }
        }
    }

    /// The depth (number of path segments) of the deepest cgroup among
    /// `path` and its ancestors that this selector matches: a process in two
    /// matching workloads belongs to the one with the deepest match.
    pub fn covers(&self, path: &str) -> Option<usize> {
        let path = path.trim_matches('/');
        if path.is_empty() {
            return None;
        }
        let ends = path
            .match_indices('/')
            .map(|(i, _)| i)
            .chain(std::iter::once(path.len()));
        let mut deepest = None;
        for (depth, end) in ends.enumerate() {
            if self.matches(&path[..end]) {
                deepest = Some(depth + 1);
            }
        }
        deepest
    }
}

/// Matches path segments against pattern segments; `**` takes any number.
fn glob_segments(pat: &[&str], segs: &[&str]) -> bool {
    match pat.split_first() {
        None => segs.is_empty(),
        Some((&"**", rest)) => (0..=segs.len()).any(|skip| glob_segments(rest, &segs[skip..])),
        Some((p, rest)) => match segs.split_first() {
            Some((s, srest)) => {
                glob_segment(p.as_bytes(), s.as_bytes()) && glob_segments(rest, srest)
            }
            None => false,
        },
    }
}

/// Matches one segment; `*` takes any run of characters.
fn glob_segment(pat: &[u8], s: &[u8]) -> bool {
    // Iterative wildcard matching with backtracking to the last `*`.
    let (mut p, mut i) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        if p < pat.len() && pat[p] == b'*' {
            star = Some((p, i));
            p += 1;
        } else if p < pat.len() && pat[p] == s[i] {
            p += 1;
            i += 1;
        } else if let Some((sp, si)) = star {
            p = sp + 1;
            i = si + 1;
            star = Some((sp, si + 1));
        } else {
            return false;
        }
    }
    pat[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn glob(p: &str) -> CgroupSelector {
        CgroupSelector::glob(p).unwrap()
    }

    #[test]
    fn star_matches_one_segment() {
        let g = glob("system.slice/api-*.service");
        assert!(g.matches("system.slice/api-1.service"));
        assert!(g.matches("/system.slice/api-.service"));
        assert!(!g.matches("system.slice/web.service"));
        assert!(!g.matches("system.slice/x/api-1.service"));
        assert!(glob("*/db").matches("a/db"));
        assert!(!glob("*/db").matches("a/b/db"));
    }

    #[test]
    fn double_star_matches_any_depth() {
        let g = glob("**/worker.scope");
        assert!(g.matches("worker.scope"));
        assert!(g.matches("a/b/c/worker.scope"));
        assert!(!g.matches("a/worker.scope/x"));
        assert!(glob("a/**/z").matches("a/z"));
        assert!(glob("a/**/z").matches("a/b/c/z"));
        assert!(!glob("a/**/z").matches("b/z"));
    }

    #[test]
    fn unit_matches_the_directory_anywhere_and_covers_descendants() {
        let u = CgroupSelector::unit("nginx.service").unwrap();
        assert!(u.matches("system.slice/nginx.service"));
        assert!(u.matches("nginx.service"));
        assert!(!u.matches("system.slice/nginx.service/child"));
        assert_eq!(u.covers("system.slice/nginx.service/child"), Some(2));
        assert_eq!(u.covers("system.slice"), None);
    }

    #[test]
    fn invalid_selectors_are_rejected() {
        assert!(CgroupSelector::unit("nginx").is_err());
        assert!(CgroupSelector::unit(".service").is_err());
        assert!(CgroupSelector::unit("a/b.service").is_err());
        for bad in ["", "/", "a//b", "a/", "a/**b", "**", "a/../b"] {
            assert!(CgroupSelector::glob(bad).is_err(), "{bad} accepted");
        }
        assert_eq!(glob("/a/b"), glob("a/b"));
    }
}
