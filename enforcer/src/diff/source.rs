//! The two inputs of `enforcer diff`: a directory, or `REV:DIR` read from
//! the git repository of the current directory (so CI can compare
//! `origin/main:policies` with the working tree's `policies`).
//!
//! A `REV:DIR` input is copied into a temporary directory through the `git`
//! command (`rev-parse`, `cat-file`, `ls-tree`, `cat-file --batch`), so the policy
//! loader reads it like any directory; diagnostics are mapped back to
//! `REV:DIR/FILE` names.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tempfile::TempDir;

/// Where a policy comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Dir(PathBuf),
    Git { rev: String, dir: String },
}

impl Source {
    /// An existing directory is a directory even if its name has a colon;
    /// otherwise `REV:DIR` is split at the first colon.
    pub fn parse(arg: &str) -> Source {
        let path = Path::new(arg);
        if path.is_dir() {
            return Source::Dir(path.to_owned());
        }
        match arg.split_once(':') {
            Some((rev, dir)) if !rev.is_empty() => Source::Git {
                rev: rev.to_owned(),
                dir: dir.to_owned(),
            },
            _ => Source::Dir(path.to_owned()),
        }
    }

    /// How the input is named in messages: `DIR` or `REV:DIR`.
    pub fn display(&self) -> String {
        match self {
            Source::Dir(p) => p.display().to_string(),
            Source::Git { rev, dir } => format!("{rev}:{dir}"),
        }
    }
}

/// Errors reading an input.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{0}: not a directory")]
    NotADirectory(String),
    #[error("{spec}: not a directory in git revision {rev} ({stderr})")]
    NotATree {
        spec: String,
        rev: String,
        stderr: String,
    },
    #[error("running git {args}: {source}")]
    GitSpawn {
        args: String,
        #[source]
        source: std::io::Error,
    },
    #[error("git {args} failed: {stderr}")]
    GitFailed { args: String, stderr: String },
    #[error("git cat-file gave unexpected output for {object}")]
    GitProtocol { object: String },
    #[error(
        "{file}: a symbolic link to {target:?}, which is outside what git revision {rev} holds; point it at a file inside the repository with a relative path"
    )]
    LinkOutsideRevision {
        file: String,
        rev: String,
        target: String,
    },
    #[error("{file}: more than {MAX_LINK_HOPS} symbolic links in a row")]
    LinkLoop { file: String },
    #[error(
        "{file}: {what} in git revision {rev}, not a file: policy files must be regular files (or symbolic links to them), as in a working tree"
    )]
    NotAFile {
        file: String,
        rev: String,
        what: &'static str,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("creating a temporary directory: {0}")]
    TempDir(#[source] std::io::Error),
}

/// An input ready to load: a directory on disk (temporary for `REV:DIR`,
/// removed on drop).
#[derive(Debug)]
pub struct Materialized {
    path: PathBuf,
    spec: String,
    temp: Option<TempDir>,
}

impl Materialized {
    /// The directory to load.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A file name for messages: inside a `REV:DIR` copy, `REV:DIR/FILE`.
    pub fn display_file(&self, file: &Path) -> String {
        match (&self.temp, file.strip_prefix(&self.path)) {
            (Some(_), Ok(rel)) => {
                let base = self.spec.trim_end_matches('/');
                if base.ends_with(':') {
                    format!("{base}{}", rel.display())
                } else {
                    format!("{base}/{}", rel.display())
                }
            }
            _ => file.display().to_string(),
        }
    }
}

/// Makes `source` available as a directory; `REV:DIR` is read from the git
/// repository of the current directory.
pub fn materialize(source: &Source) -> Result<Materialized, SourceError> {
    materialize_in(source, Path::new("."))
}

/// Like [`materialize`], reading `REV:DIR` from the repository at `repo`.
pub fn materialize_in(source: &Source, repo: &Path) -> Result<Materialized, SourceError> {
    match source {
        Source::Dir(path) => {
            if !path.is_dir() {
                return Err(SourceError::NotADirectory(path.display().to_string()));
            }
            Ok(Materialized {
                path: path.clone(),
                spec: source.display(),
                temp: None,
            })
        }
        Source::Git { rev, dir } => from_git(repo, rev, dir, source.display()),
    }
}

fn git(repo: &Path, args: &[&str]) -> Result<Vec<u8>, SourceError> {
    let output = Command::new("git")
        .current_dir(repo)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| SourceError::GitSpawn {
            args: args.join(" "),
            source,
        })?;
    if !output.status.success() {
        return Err(SourceError::GitFailed {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(output.stdout)
}

fn from_git(repo: &Path, rev: &str, dir: &str, spec: String) -> Result<Materialized, SourceError> {
    // git resolves `REV:path` itself (root-relative, `./` for the current
    // directory); the object must then be a directory (a tree).
    let not_a_tree = |stderr: String| SourceError::NotATree {
        spec: spec.clone(),
        rev: rev.to_owned(),
        stderr,
    };
    let tree = git(
        repo,
        &[
            "rev-parse",
            "--verify",
            "--quiet",
            "--end-of-options",
            &format!("{rev}:{dir}"),
        ],
    )
    .map_err(|e| match e {
        SourceError::GitFailed { stderr, .. } if stderr.is_empty() => {
            not_a_tree("no such revision or path".to_owned())
        }
        SourceError::GitFailed { stderr, .. } => not_a_tree(stderr),
        other => other,
    })?;
    let tree = String::from_utf8_lossy(&tree).trim().to_owned();
    let kind = git(repo, &["cat-file", "-t", &tree])?;
    if kind.trim_ascii() != b"tree" {
        return Err(not_a_tree(format!(
            "it is a {}",
            String::from_utf8_lossy(kind.trim_ascii())
        )));
    }

    // The `*.toml` files directly in the directory, as `load_dir` reads them.
    // `--full-tree`: from a subdirectory, ls-tree would otherwise filter
    // the tree's entries by that directory's path.
    let listing = git(repo, &["ls-tree", "-z", "--full-tree", &tree])?;
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    for entry in listing.split(|b| *b == 0).filter(|e| !e.is_empty()) {
        let entry = String::from_utf8_lossy(entry);
        let Some((meta, path)) = entry.split_once('\t') else {
            continue;
        };
        let mut meta = meta.split(' ');
        let (mode, kind, object) = (meta.next(), meta.next(), meta.next());
        if !path.ends_with(".toml") {
            continue;
        }
        let not_a_file = |what| SourceError::NotAFile {
            file: format!("{spec}/{path}"),
            rev: rev.to_owned(),
            what,
        };
        match kind {
            Some("blob") => {}
            Some("tree") => return Err(not_a_file("a directory")),
            _ => return Err(not_a_file("a submodule")),
        }
        let Some(object) = object else { continue };
        let object = if mode == Some(LINK_MODE) {
            // Followed as `load_dir` follows a link in a working tree.
            let link = LinkInRevision {
                repo,
                rev,
                file: format!("{spec}/{path}"),
            };
            match link.resolve(&dir_in_repo(repo, dir)?, path, object)? {
                Some(object) => object,
                None => return Err(not_a_file("a symbolic link that leads to no file")),
            }
        } else {
            object.to_owned()
        };
        files.push((object, PathBuf::from(path)));
    }

    let temp = tempfile::Builder::new()
        .prefix("enforcer-diff-")
        .tempdir()
        .map_err(SourceError::TempDir)?;
    let root = temp.path().join("policies");
    std::fs::create_dir_all(&root).map_err(|source| SourceError::Write {
        path: root.clone(),
        source,
    })?;
    let contents = cat_blobs(repo, files.iter().map(|(o, _)| o.as_str()))?;
    for ((_, rel), data) in files.iter().zip(contents) {
        let path = root.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|source| SourceError::Write {
                path: parent.to_owned(),
                source,
            })?;
        }
        std::fs::write(&path, data).map_err(|source| SourceError::Write { path, source })?;
    }
    Ok(Materialized {
        path: root,
        spec,
        temp: Some(temp),
    })
}

/// The git tree mode of a symbolic link.
const LINK_MODE: &str = "120000";
/// Links followed in a row before giving up, as a loop guard.
const MAX_LINK_HOPS: usize = 8;

/// `dir` (as given after `REV:`) relative to the repository's root: git
/// reads `./` and `../` from the current directory, anything else from the
/// root.
fn dir_in_repo(repo: &Path, dir: &str) -> Result<String, SourceError> {
    if dir == "." || dir.starts_with("./") || dir == ".." || dir.starts_with("../") {
        let prefix = git(repo, &["rev-parse", "--show-prefix"])?;
        let prefix = String::from_utf8_lossy(&prefix).trim().to_owned();
        Ok(format!("{prefix}{dir}"))
    } else {
        Ok(dir.to_owned())
    }
}

/// `path` with `.` and `..` resolved; `None` if it climbs above the root.
fn normalize(path: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            part => parts.push(part),
        }
    }
    Some(parts.join("/"))
}

/// A `*.toml` symbolic link found in a `REV:DIR` input.
struct LinkInRevision<'a> {
    repo: &'a Path,
    rev: &'a str,
    /// How errors name it: `REV:DIR/NAME`.
    file: String,
}

impl LinkInRevision<'_> {
    /// The blob the link named `name` in `dir` (root-relative) leads to,
    /// following links in a row; `None` when it leads to no file (dangling,
    /// or a directory), which is an error for `load_dir` too.
    fn resolve(&self, dir: &str, name: &str, link: &str) -> Result<Option<String>, SourceError> {
        let mut at = format!("{dir}/{name}");
        let mut link = link.to_owned();
        for _ in 0..MAX_LINK_HOPS {
            let target = git(self.repo, &["cat-file", "blob", &link])?;
            let target = String::from_utf8_lossy(&target).into_owned();
            let parent = at.rsplit_once('/').map_or("", |(parent, _)| parent);
            let outside = || SourceError::LinkOutsideRevision {
                file: self.file.clone(),
                rev: self.rev.to_owned(),
                target: target.clone(),
            };
            if target.starts_with('/') {
                return Err(outside());
            }
            at = normalize(&format!("{parent}/{target}")).ok_or_else(outside)?;
            // Root-relative whatever the current directory, and no globbing.
            let pathspec = format!(":(top,literal){at}");
            let listing = git(
                self.repo,
                &["ls-tree", "-z", "--full-tree", self.rev, "--", &pathspec],
            )?;
            let entry = String::from_utf8_lossy(&listing);
            let Some((meta, _)) = entry.trim_end_matches('\0').split_once('\t') else {
                return Ok(None);
            };
            let mut meta = meta.split(' ');
            match (meta.next(), meta.next(), meta.next()) {
                (Some(LINK_MODE), _, Some(next)) => link = next.to_owned(),
                (_, Some("blob"), Some(object)) => return Ok(Some(object.to_owned())),
                _ => return Ok(None),
            }
        }
        Err(SourceError::LinkLoop {
            file: self.file.clone(),
        })
    }
}

/// The contents of `objects`, in order, from one `git cat-file --batch`.
fn cat_blobs<'a>(
    repo: &Path,
    objects: impl Iterator<Item = &'a str>,
) -> Result<Vec<Vec<u8>>, SourceError> {
    let objects: Vec<&str> = objects.collect();
    if objects.is_empty() {
        return Ok(Vec::new());
    }
    let args = "cat-file --batch".to_owned();
    let mut child = Command::new("git")
        .current_dir(repo)
        .args(["cat-file", "--batch"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| SourceError::GitSpawn {
            args: args.clone(),
            source,
        })?;
    let request: String = objects.iter().map(|o| format!("{o}\n")).collect();
    let mut stdin = child.stdin.take();
    // Written from a thread: git answers while we are still asking, and a
    // full pipe in both directions would deadlock.
    let writer = std::thread::spawn(move || {
        if let Some(stdin) = stdin.as_mut() {
            let _ = stdin.write_all(request.as_bytes());
        }
    });
    let mut out = Vec::with_capacity(objects.len());
    let result = (|| {
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| SourceError::GitProtocol {
                object: objects[0].to_owned(),
            })?;
        let mut reader = BufReader::new(stdout);
        for object in &objects {
            let protocol = || SourceError::GitProtocol {
                object: (*object).to_owned(),
            };
            let mut header = String::new();
            reader.read_line(&mut header).map_err(|_| protocol())?;
            // "<oid> blob <size>\n"
            let size: usize = header
                .split_whitespace()
                .nth(2)
                .and_then(|s| s.parse().ok())
                .ok_or_else(protocol)?;
            let mut data = vec![0u8; size + 1];
            reader.read_exact(&mut data).map_err(|_| protocol())?;
            data.pop();
            out.push(data);
        }
        Ok(())
    })();
    let _ = writer.join();
    let status = child.wait().map_err(|source| SourceError::GitSpawn {
        args: args.clone(),
        source,
    })?;
    result?;
    if !status.success() {
        let mut stderr = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut stderr);
        }
        return Err(SourceError::GitFailed { args, stderr });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_targets_are_normalized_within_the_repository() {
        assert_eq!(
            normalize("hosts/./a/../b/x.toml").as_deref(),
            Some("hosts/b/x.toml")
        );
        assert_eq!(normalize("/a//b/").as_deref(), Some("a/b"));
        assert_eq!(normalize("a/../../x.toml"), None);
    }

    #[test]
    fn parse_prefers_existing_directories() {
        let d = tempfile::tempdir().expect("tempdir");
        let odd = d.path().join("a:b");
        std::fs::create_dir(&odd).expect("mkdir");
        let arg = odd.to_str().expect("utf-8 path");
        assert_eq!(Source::parse(arg), Source::Dir(odd.clone()));
        assert_eq!(
            Source::parse("origin/main:policies"),
            Source::Git {
                rev: "origin/main".into(),
                dir: "policies".into()
            }
        );
        assert_eq!(
            Source::parse("/no/such/dir"),
            Source::Dir("/no/such/dir".into())
        );
    }

    #[test]
    fn missing_directory_is_an_error() {
        let err = materialize(&Source::Dir("/no/such/dir".into())).unwrap_err();
        assert!(err.to_string().contains("/no/such/dir"), "{err}");
    }
}
