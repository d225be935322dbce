//! The `cgroup = "PATTERN"` matcher: a glob over `/`-separated cgroup paths
//! relative to the cgroup root, where `*` matches within one path segment
//! (any run of characters but `/`) and a segment that is exactly `**`
//! matches any number of segments, none included.

use thiserror::Error;

/// Why a pattern cannot be used.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum GlobError {
    #[error("empty cgroup pattern")]
    Empty,
    #[error("cgroup pattern {0:?} has an empty path segment")]
    EmptySegment(String),
    #[error("cgroup pattern {0:?}: `**` must be a whole path segment")]
    PartialDoubleStar(String),
    #[error("cgroup pattern {0:?}: `.` and `..` segments are not allowed")]
    DotSegment(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    /// `**`: zero or more whole segments.
    AnyDepth,
    /// A segment pattern with `*` wildcards, stored split at the `*`s.
    Parts(Vec<String>),
}

/// A compiled cgroup path pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupGlob {
    source: String,
    segments: Vec<Segment>,
}

impl CgroupGlob {
    /// Parse a pattern. A leading `/` is ignored (paths are relative to the
    /// cgroup root either way); `//`, `.`, `..` and `**` inside a segment are
    /// errors, since they would match nothing or not what was meant.
    pub fn new(pattern: &str) -> Result<Self, GlobError> {
        let trimmed = pattern.strip_prefix('/').unwrap_or(pattern);
        let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
        if trimmed.is_empty() {
            return Err(GlobError::Empty);
        }
        let mut segments = Vec::new();
        for seg in trimmed.split('/') {
            let parsed = match seg {
                "" => return Err(GlobError::EmptySegment(pattern.to_owned())),
                "." | ".." => return Err(GlobError::DotSegment(pattern.to_owned())),
                "**" => Segment::AnyDepth,
                s if s.contains("**") => {
                    return Err(GlobError::PartialDoubleStar(pattern.to_owned()));
                }
                s => Segment::Parts(s.split('*').map(str::to_owned).collect()),
            };
            // `**/**` is the same as `**`; keeping one keeps matching linear.
            if parsed == Segment::AnyDepth && segments.last() == Some(&Segment::AnyDepth) {
                continue;
            }
            segments.push(parsed);
        }
        Ok(CgroupGlob {
            source: pattern.to_owned(),
            segments,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Does the relative cgroup path (segments separated by `/`, no leading
    /// slash) match? The root itself (`""`) matches only `**`.
    pub fn matches(&self, path: &str) -> bool {
        let parts: Vec<&str> = if path.is_empty() {
            Vec::new()
        } else {
            path.split('/').collect()
        };
        match_segments(&self.segments, &parts)
    }
}

fn match_segments(pattern: &[Segment], path: &[&str]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((Segment::AnyDepth, rest)) => {
            (0..=path.len()).any(|skip| match_segments(rest, &path[skip..]))
        }
        Some((Segment::Parts(parts), rest)) => match path.split_first() {
            Some((first, tail)) => match_segment(parts, first) && match_segments(rest, tail),
            None => false,
        },
    }
}

/// Match one segment against `parts`, the pattern split at its `*`s: the
/// first part is a prefix, the last a suffix, the middle ones appear in
/// order (leftmost match is always right for this shape of pattern).
fn match_segment(parts: &[String], segment: &str) -> bool {
    match parts {
        [] => segment.is_empty(),
        [only] => segment == only,
        [first, middle @ .., last] => {
            let Some(mut rest) = segment.strip_prefix(first.as_str()) else {
                return false;
            };
            for part in middle {
                match rest.find(part.as_str()) {
                    Some(at) => rest = &rest[at + part.len()..],
                    None => return false,
                }
            }
            rest.len() >= last.len() && rest.ends_with(last.as_str())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, path: &str) -> bool {
        CgroupGlob::new(pattern).unwrap().matches(path)
    }

    #[test]
    fn literal_paths() {
        assert!(m(
            "system.slice/nginx.service",
            "system.slice/nginx.service"
        ));
        assert!(m(
            "/system.slice/nginx.service/",
            "system.slice/nginx.service"
        ));
        assert!(!m("system.slice/nginx.service", "system.slice"));
        assert!(!m("system.slice", "system.slice/nginx.service"));
    }

    #[test]
    fn star_stays_within_one_segment() {
        assert!(m(
            "system.slice/api-*.service",
            "system.slice/api-1.service"
        ));
        assert!(m("system.slice/api-*.service", "system.slice/api-.service"));
        assert!(!m("system.slice/api-*.service", "system.slice/api-1.scope"));
        assert!(!m("system.slice/*", "system.slice/a/b"));
        assert!(m("*/*", "a/b"));
        assert!(m("a*b*c", "abc"));
        assert!(m("a*b*c", "a-b-b-c"));
        assert!(!m("a*b*c", "a-c"));
        assert!(!m("ab*ba", "aba"));
    }

    #[test]
    fn double_star_spans_any_depth() {
        assert!(m("**/nginx.service", "nginx.service"));
        assert!(m("**/nginx.service", "system.slice/nginx.service"));
        assert!(m("**/nginx.service", "a/b/c/nginx.service"));
        assert!(!m("**/nginx.service", "a/nginx.service/x"));
        assert!(m("kubepods/**/*.scope", "kubepods/x.scope"));
        assert!(m("kubepods/**/*.scope", "kubepods/a/b/x.scope"));
        assert!(m("a/**", "a"));
        assert!(m("a/**", "a/b/c"));
        assert!(m("**/**", ""));
        assert!(!m("a", ""));
    }

    #[test]
    fn rejects_patterns_that_would_mislead() {
        assert_eq!(CgroupGlob::new(""), Err(GlobError::Empty));
        assert_eq!(CgroupGlob::new("/"), Err(GlobError::Empty));
        assert!(matches!(
            CgroupGlob::new("a//b"),
            Err(GlobError::EmptySegment(_))
        ));
        assert!(matches!(
            CgroupGlob::new("a/x**"),
            Err(GlobError::PartialDoubleStar(_))
        ));
        assert!(matches!(
            CgroupGlob::new("a/../b"),
            Err(GlobError::DotSegment(_))
        ));
    }
}
