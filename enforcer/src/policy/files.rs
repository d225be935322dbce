//! Reading the files of a policy directory safely. Only regular files are
//! read (a symlink is followed, and what it points to must be a regular
//! file): a FIFO, a device, a socket or a directory named `*.toml` is an
//! error that names it, never skipped and never a hang. Every file and the
//! whole set are bounded in size. The same rules hold for every reader:
//! `check`, `explain`, `diff`, the daemon's own policy directory, and
//! `apply` (whose CLI reads the files and sends their text; the daemon
//! checks what it receives with [`check_received`]).

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::LoadError;

/// The largest policy file read (4 MiB). The benchmark's 10,000-rule
/// policy is a 1.4 MB file.
pub const MAX_FILE_BYTES: u64 = 4 << 20;
/// The most bytes of policy files read from one directory (16 MiB).
pub const MAX_SET_BYTES: u64 = 16 << 20;
/// The most policy files in one set.
pub const MAX_FILES: usize = 4096;
/// The longest file name accepted (the usual `NAME_MAX`).
const MAX_NAME_BYTES: usize = 255;

/// Why a policy file (or set) is refused before it is parsed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FileProblem {
    #[error(
        "it is {0}, not a regular file (policy files must be regular files, or symlinks to regular files)"
    )]
    NotRegular(&'static str),
    #[error("it is larger than {limit} bytes, the limit for one policy file")]
    TooLarge { limit: u64 },
    #[error("its policy files hold more than {limit} bytes in all, the limit for a policy set")]
    SetTooLarge { limit: u64 },
    #[error("it holds more than {limit} policy files, the limit for a policy set")]
    TooManyFiles { limit: usize },
    #[error("it is not UTF-8 text")]
    NotUtf8,
}

impl FileProblem {
    fn at(self, path: &Path) -> LoadError {
        LoadError::Io {
            path: path.to_path_buf(),
            source: io::Error::new(io::ErrorKind::InvalidInput, self),
        }
    }
}

/// Is this directory entry a policy file by its name (`*.toml`)?
pub fn is_policy_file_name(name: &OsStr) -> bool {
    Path::new(name).extension().is_some_and(|e| e == "toml")
}

/// What a non-regular file is, for the error.
fn kind_of(meta: &Metadata) -> Option<&'static str> {
    let t = meta.file_type();
    if t.is_file() {
        None
    } else if t.is_dir() {
        Some("a directory")
    } else if t.is_fifo() {
        Some("a FIFO")
    } else if t.is_char_device() {
        Some("a character device")
    } else if t.is_block_device() {
        Some("a block device")
    } else if t.is_socket() {
        Some("a socket")
    } else {
        Some("not a regular file")
    }
}

fn check_regular(meta: &Metadata, path: &Path) -> Result<(), LoadError> {
    match kind_of(meta) {
        None => Ok(()),
        Some(kind) => Err(FileProblem::NotRegular(kind).at(path)),
    }
}

/// Reads one policy file: a regular file (symlinks followed) of at most
/// [`MAX_FILE_BYTES`], as UTF-8.
pub fn read_file(path: &Path) -> Result<String, LoadError> {
    let io = |source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    };
    // Refuse by type before opening: opening a device can have effects of
    // its own, and opening a FIFO without O_NONBLOCK waits for a writer.
    let meta = std::fs::metadata(path).map_err(io)?;
    check_regular(&meta, path)?;
    let mut file: File = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(io)?;
    // The entry may have been replaced since: the open file decides.
    let meta = file.metadata().map_err(io)?;
    check_regular(&meta, path)?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(FileProblem::TooLarge {
            limit: MAX_FILE_BYTES,
        }
        .at(path));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // Bounded even if the file grows, or is a pseudo-file whose size says 0.
    (&mut file)
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(FileProblem::TooLarge {
            limit: MAX_FILE_BYTES,
        }
        .at(path));
    }
    String::from_utf8(bytes).map_err(|_| FileProblem::NotUtf8.at(path))
}

/// The `*.toml` files of `dir` (path, text), in name order, read with
/// [`read_file`] and bounded by [`MAX_SET_BYTES`] and [`MAX_FILES`].
pub fn read_dir(dir: &Path) -> Result<Vec<(PathBuf, String)>, LoadError> {
    let io = |path: &Path, source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut files: Vec<PathBuf> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
        let entry = entry.map_err(|e| io(dir, e))?;
        if is_policy_file_name(&entry.file_name()) {
            if files.len() == MAX_FILES {
                return Err(FileProblem::TooManyFiles { limit: MAX_FILES }.at(dir));
            }
            files.push(entry.path());
        }
    }
    files.sort();
    let mut total = 0u64;
    let mut sources = Vec::with_capacity(files.len());
    for path in files {
        let text = read_file(&path)?;
        total += text.len() as u64;
        if total > MAX_SET_BYTES {
            return Err(FileProblem::SetTooLarge {
                limit: MAX_SET_BYTES,
            }
            .at(dir));
        }
        sources.push((path, text));
    }
    Ok(sources)
}

/// Checks a policy set received over the API (file name, text): every name
/// a plain `*.toml` file name (no directory part, no control characters),
/// no name twice, and the same limits as [`read_dir`]. Each error is a
/// sentence naming the file.
pub fn check_received<'a>(
    files: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<(), Vec<String>> {
    let mut errors = Vec::new();
    let mut seen = BTreeSet::new();
    let (mut count, mut total) = (0usize, 0u64);
    for (name, text) in files {
        count += 1;
        if let Err(problem) = check_file_name(name) {
            errors.push(format!("policy file name {name:?}: {problem}"));
        } else if !seen.insert(name) {
            errors.push(format!("policy file {name:?} was sent twice"));
        }
        if text.len() as u64 > MAX_FILE_BYTES {
            errors.push(format!(
                "policy file {name:?}: {}",
                FileProblem::TooLarge {
                    limit: MAX_FILE_BYTES
                }
            ));
        }
        total += text.len() as u64;
    }
    if count > MAX_FILES {
        errors.push(format!(
            "the policy set: {}",
            FileProblem::TooManyFiles { limit: MAX_FILES }
        ));
    }
    if total > MAX_SET_BYTES {
        errors.push(format!(
            "the policy set: {}",
            FileProblem::SetTooLarge {
                limit: MAX_SET_BYTES
            }
        ));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// A file name as a client may send it: what [`read_dir`] would have read.
fn check_file_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err("a file name is 1 to 255 bytes long");
    }
    if name.contains('/') || name == "." || name == ".." {
        return Err("a plain file name is expected, without a directory");
    }
    if name.chars().any(char::is_control) {
        return Err("control characters are not allowed");
    }
    if !is_policy_file_name(OsStr::new(name)) {
        return Err("policy file names end in `.toml`");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(e: &LoadError) -> Option<FileProblem> {
        match e {
            LoadError::Io { source, .. } => source
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<FileProblem>())
                .cloned(),
            LoadError::Invalid(_) => None,
        }
    }

    fn mkfifo(path: &Path) {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid C string; mkfifo has no other preconditions.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }

    #[test]
    fn only_regular_files_are_read_and_never_block() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.toml"), "# ok\n").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        assert_eq!(read_dir(dir.path()).unwrap().len(), 1);

        // A FIFO: an error naming it, at once (nobody ever writes to it).
        mkfifo(&dir.path().join("b.toml"));
        let err = read_dir(dir.path()).unwrap_err();
        assert_eq!(problem(&err), Some(FileProblem::NotRegular("a FIFO")));
        assert!(err.to_string().contains("b.toml"), "{err}");
        std::fs::remove_file(dir.path().join("b.toml")).unwrap();

        // A symlink to an endless device: refused by what it points to.
        std::os::unix::fs::symlink("/dev/zero", dir.path().join("c.toml")).unwrap();
        let err = read_dir(dir.path()).unwrap_err();
        assert_eq!(
            problem(&err),
            Some(FileProblem::NotRegular("a character device"))
        );
        assert!(err.to_string().contains("c.toml"), "{err}");
        std::fs::remove_file(dir.path().join("c.toml")).unwrap();

        // A directory named like a policy file is not skipped either.
        std::fs::create_dir(dir.path().join("d.toml")).unwrap();
        let err = read_dir(dir.path()).unwrap_err();
        assert_eq!(problem(&err), Some(FileProblem::NotRegular("a directory")));
        std::fs::remove_dir(dir.path().join("d.toml")).unwrap();

        // A symlink to a regular file is read; a dangling one is an error.
        std::os::unix::fs::symlink(dir.path().join("a.toml"), dir.path().join("e.toml")).unwrap();
        assert_eq!(read_dir(dir.path()).unwrap().len(), 2);
        std::os::unix::fs::symlink("/nonexistent/x", dir.path().join("f.toml")).unwrap();
        let err = read_dir(dir.path()).unwrap_err();
        assert!(err.to_string().contains("f.toml"), "{err}");
    }

    #[test]
    fn sizes_are_bounded_per_file_and_per_set() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.toml");
        File::create(&big)
            .unwrap()
            .set_len(MAX_FILE_BYTES + 1)
            .unwrap();
        assert_eq!(
            problem(&read_dir(dir.path()).unwrap_err()),
            Some(FileProblem::TooLarge {
                limit: MAX_FILE_BYTES
            })
        );
        std::fs::remove_file(&big).unwrap();
        // Five files at the per-file limit exceed the set's.
        for i in 0..5 {
            let f = File::create(dir.path().join(format!("{i}.toml"))).unwrap();
            f.set_len(MAX_FILE_BYTES).unwrap();
        }
        assert_eq!(
            problem(&read_dir(dir.path()).unwrap_err()),
            Some(FileProblem::SetTooLarge {
                limit: MAX_SET_BYTES
            })
        );
        std::fs::write(dir.path().join("0.toml"), [0xff, 0xfe]).unwrap();
        assert_eq!(
            problem(&read_file(&dir.path().join("0.toml")).unwrap_err()),
            Some(FileProblem::NotUtf8)
        );
    }

    #[test]
    fn received_names_must_be_plain_policy_file_names() {
        assert!(check_received([("a.toml", "x"), ("b.toml", "")]).is_ok());
        for bad in [
            "",
            "a.txt",
            "../a.toml",
            "sub/a.toml",
            "/etc/a.toml",
            ".toml",
            "a\n.toml",
        ] {
            let errors = check_received([(bad, "")]).unwrap_err();
            assert_eq!(errors.len(), 1, "{bad:?}: {errors:?}");
        }
        let errors = check_received([("a.toml", ""), ("a.toml", "")]).unwrap_err();
        assert!(errors[0].contains("twice"), "{errors:?}");
        let large = "x".repeat(MAX_FILE_BYTES as usize + 1);
        let errors = check_received([("a.toml", large.as_str())]).unwrap_err();
        assert!(errors[0].contains("limit"), "{errors:?}");
    }
}
