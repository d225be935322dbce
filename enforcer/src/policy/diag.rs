//! Diagnostics: every problem found in a policy directory, with the place
//! it was found, so `enforcer check` can report all of them at once.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A position in a policy file (1-based line and column, columns counted in
/// characters).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Loc {
    pub file: Arc<Path>,
    pub line: usize,
    pub col: usize,
}

impl Loc {
    /// A location that names a whole file (used for IO errors).
    pub fn file(path: &Path) -> Loc {
        Loc {
            file: Arc::from(path),
            line: 1,
            col: 1,
        }
    }
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.col)
    }
}

/// How bad a diagnostic is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Severity {
    /// The policy is invalid and will not be compiled.
    Error,
    /// Worth knowing, but the policy is valid.
    Warning,
}

/// One problem, at one place.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    pub severity: Severity,
    pub message: String,
}

impl Diagnostic {
    pub fn error(loc: &Loc, message: impl Into<String>) -> Diagnostic {
        Diagnostic::new(loc, Severity::Error, message.into())
    }

    pub fn warning(loc: &Loc, message: impl Into<String>) -> Diagnostic {
        Diagnostic::new(loc, Severity::Warning, message.into())
    }

    fn new(loc: &Loc, severity: Severity, message: String) -> Diagnostic {
        Diagnostic {
            file: loc.file.to_path_buf(),
            line: loc.line,
            col: loc.col,
            severity,
            message,
        }
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    /// `FILE:LINE:COL: message`, or `FILE:LINE:COL: warning: message`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.col)?;
        if self.severity == Severity::Warning {
            f.write_str("warning: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Why a policy directory could not be loaded or compiled.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The directory (or a file in it) could not be read, or was refused
    /// before parsing (its `source` is then a [`super::files::FileProblem`]:
    /// not a regular file, too large): a usage or IO problem, not a policy
    /// problem.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The policy is invalid. Holds every error found, and the warnings.
    #[error("{}", Diagnostics::summary(.0))]
    Invalid(Diagnostics),
}

/// A sorted list of diagnostics (errors and warnings).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| d.is_error())
    }

    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| !d.is_error())
    }

    pub fn has_errors(&self) -> bool {
        self.0.iter().any(Diagnostic::is_error)
    }

    /// Sorts by file, line, column, then message, and drops exact
    /// duplicates, so output is stable.
    pub fn sort(&mut self) {
        self.0.sort_by(|a, b| {
            (&a.file, a.line, a.col, &a.message, a.severity)
                .cmp(&(&b.file, b.line, b.col, &b.message, b.severity))
        });
        self.0.dedup();
    }

    fn summary(&self) -> String {
        let errors = self.errors().count();
        let mut text = format!("invalid policy: {errors} error(s)");
        for d in self.errors() {
            text.push('\n');
            text.push_str(&d.to_string());
        }
        text
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.0 {
            writeln!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// Maps byte offsets of a text (a policy or configuration file) to 1-based
/// line and column, columns counted in characters: the one place that
/// turns a parser's byte span into the `LINE:COL` of a message.
pub struct LineIndex<'a> {
    text: &'a str,
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    pub fn new(text: &'a str) -> Self {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        LineIndex { text, starts }
    }

    /// The line and column of a byte offset (past the end: the end).
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.starts.partition_point(|&s| s <= offset).max(1);
        let start = self.starts[line - 1];
        // Count characters, not bytes; `get` guards a non-boundary offset.
        let col = self
            .text
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count())
            + 1;
        (line, col)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_index_counts_lines_and_characters() {
        let idx = LineIndex::new("ab\nçd\n\nx");
        assert_eq!(idx.line_col(0), (1, 1));
        assert_eq!(idx.line_col(2), (1, 3));
        assert_eq!(idx.line_col(3), (2, 1));
        assert_eq!(idx.line_col(5), (2, 2));
        assert_eq!(idx.line_col(8), (4, 1));
        assert_eq!(idx.line_col(100).0, 4);
    }

    #[test]
    fn display_formats_errors_and_warnings() {
        let loc = Loc {
            file: Arc::from(Path::new("p/a.toml")),
            line: 3,
            col: 7,
        };
        assert_eq!(
            Diagnostic::error(&loc, "bad").to_string(),
            "p/a.toml:3:7: bad"
        );
        assert_eq!(
            Diagnostic::warning(&loc, "hm").to_string(),
            "p/a.toml:3:7: warning: hm"
        );
    }
}
