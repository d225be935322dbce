//! The state directory (`--state-dir`, default `/var/lib/enforcer`): the
//! last good policy, kept so that it can be put in force again after a
//! restart or a reboot with an invalid policy directory. Pins under
//! `--bpffs` survive a restart but not a reboot; this directory survives
//! both. See `docs/daemon.md` ("State directory").
//!
//! Two files, each one policy's source text with its content hash, when it
//! was applied and from which source:
//!
//! - `last-good.json`: the last policy accepted into force outside an
//!   `apply --confirm` probation (or confirmed);
//! - `probation.json`: the policy of a pending `apply --confirm`;
//!   `confirm` renames it to `last-good.json`, a rollback removes it.
//!
//! Every write is atomic (temporary file, fsync, rename, fsync of the
//! directory) and bounded ([`MAX_STATE_BYTES`]). The files are input: one
//! that is truncated, garbled, too large, writable by others, or whose text
//! does not compile to the hash it records is an error naming the file,
//! and is never put in force.

use std::io::{Read as _, Write as _};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::compile::CompiledPolicy;
use crate::policy::LoadError;

/// The largest state file written or read: a policy of 10,000 rules is
/// about 1.4 MB of text.
pub const MAX_STATE_BYTES: u64 = 16 << 20;

/// The format tag of a state file; another value is not this format.
const FORMAT: &str = "enforcer-saved-policy-v1";

/// Which policy a state file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kept {
    /// The last policy accepted into force outside a probation.
    LastGood,
    /// The policy of a pending `apply --confirm`.
    Probation,
}

impl Kept {
    fn file_name(self) -> &'static str {
        match self {
            Kept::LastGood => "last-good.json",
            Kept::Probation => "probation.json",
        }
    }
}

/// Why the state directory or one of its files cannot be used.
#[derive(Debug, Error)]
pub enum StateError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {size} bytes, more than the {limit} bytes a state file may hold", path.display())]
    TooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    #[error("{}: not a saved policy ({reason}): truncated or damaged", path.display())]
    Garbled { path: PathBuf, reason: String },
    #[error("{}: {reason}: only the daemon's user may write the state directory and its files", path.display())]
    Untrusted { path: PathBuf, reason: String },
    #[error("{}: the saved policy does not compile: {}", path.display(), errors.join("; "))]
    Invalid { path: PathBuf, errors: Vec<String> },
    #[error(
        "{}: the saved policy compiles to content hash {actual:016x}, not {recorded:016x} as the file says: damaged or edited",
        path.display()
    )]
    HashMismatch {
        path: PathBuf,
        recorded: u64,
        actual: u64,
    },
}

/// A policy as saved: enough to put it in force again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavedPolicy {
    pub content_hash: u64,
    /// When it was put in force.
    pub applied_at: SystemTime,
    /// The compiled policy's next `until` expiry, when it was applied: with
    /// it the text compiles again to exactly that policy (see
    /// [`SavedPolicy::compile`]).
    pub next_expiry: Option<SystemTime>,
    /// The directory it was read from.
    pub source: PathBuf,
    /// Its files (name, text), in load order.
    pub files: Vec<(PathBuf, String)>,
}

/// The file format (JSON).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    format: String,
    /// 16 hex digits.
    content_hash: String,
    /// RFC 3339, to the nanosecond.
    applied_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    next_expiry: Option<String>,
    source: PathBuf,
    files: Vec<RecordFile>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordFile {
    path: PathBuf,
    text: String,
}

impl SavedPolicy {
    /// The policy compiled at `now`, after checking that the text compiles
    /// to the recorded hash as it did when it was applied (at one
    /// nanosecond before the recorded next expiry, the same rules are in
    /// force as then; without an expiry, at any later time). `path` names
    /// the file in errors.
    pub fn compile(
        &self,
        path: &Path,
        now: SystemTime,
    ) -> Result<(CompiledPolicy, Vec<String>), StateError> {
        let as_then = self
            .next_expiry
            .map_or(now, |e| e.checked_sub(Duration::from_nanos(1)).unwrap_or(e));
        let (compiled, warnings) = self.compile_at(path, as_then)?;
        if compiled.content_hash != self.content_hash {
            return Err(StateError::HashMismatch {
                path: path.to_owned(),
                recorded: self.content_hash,
                actual: compiled.content_hash,
            });
        }
        match self.next_expiry {
            // A rule expired while the policy was stored: compile it as of now.
            Some(expiry) if expiry <= now => self.compile_at(path, now),
            _ => Ok((compiled, warnings)),
        }
    }

    fn compile_at(
        &self,
        path: &Path,
        at: SystemTime,
    ) -> Result<(CompiledPolicy, Vec<String>), StateError> {
        let invalid = |e: LoadError| StateError::Invalid {
            path: path.to_owned(),
            errors: match e {
                LoadError::Invalid(diags) => diags.errors().map(ToString::to_string).collect(),
                io @ LoadError::Io { .. } => vec![io.to_string()],
            },
        };
        let loaded = crate::policy::load_sources(&self.files).map_err(invalid)?;
        let (compiled, warnings) = crate::check::compile_loaded(loaded, at).map_err(invalid)?;
        Ok((compiled, warnings.iter().map(ToString::to_string).collect()))
    }

    fn to_json(&self) -> Vec<u8> {
        let record = Record {
            format: FORMAT.into(),
            content_hash: format!("{:016x}", self.content_hash),
            applied_at: crate::rfc3339::format(self.applied_at),
            next_expiry: self.next_expiry.map(crate::rfc3339::format),
            source: self.source.clone(),
            files: self
                .files
                .iter()
                .map(|(path, text)| RecordFile {
                    path: path.clone(),
                    text: text.clone(),
                })
                .collect(),
        };
        // Serializing plain strings and paths into memory cannot fail.
        serde_json::to_vec(&record).unwrap_or_default()
    }

    fn from_json(path: &Path, bytes: &[u8]) -> Result<SavedPolicy, StateError> {
        let garbled = |reason: String| StateError::Garbled {
            path: path.to_owned(),
            reason,
        };
        let record: Record = serde_json::from_slice(bytes).map_err(|e| garbled(e.to_string()))?;
        if record.format != FORMAT {
            return Err(garbled(format!(
                "format {:?}, expected {FORMAT:?}",
                record.format
            )));
        }
        let content_hash = (record.content_hash.len() == 16)
            .then(|| u64::from_str_radix(&record.content_hash, 16).ok())
            .flatten()
            .ok_or_else(|| {
                garbled(format!(
                    "content hash {:?} is not 16 hex digits",
                    record.content_hash
                ))
            })?;
        let time = |what: &str, text: &str| {
            crate::policy::parse_rfc3339(text).map_err(|e| garbled(format!("{what}: {e}")))
        };
        Ok(SavedPolicy {
            content_hash,
            applied_at: time("applied_at", &record.applied_at)?,
            next_expiry: record
                .next_expiry
                .as_deref()
                .map(|t| time("next_expiry", t))
                .transpose()?,
            source: record.source,
            files: record.files.into_iter().map(|f| (f.path, f.text)).collect(),
        })
    }
}

/// The state directory.
#[derive(Clone, Debug)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// Opens `dir`, creating it (mode 0700) when missing. A directory that
    /// another user owns or that others may write is refused: whoever can
    /// write it chooses what a reboot puts in force.
    pub fn open(dir: &Path) -> Result<StateDir, StateError> {
        let io = |source| StateError::Io {
            path: dir.to_owned(),
            source,
        };
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(io)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
        }
        check_trusted(dir, &std::fs::metadata(dir).map_err(io)?)?;
        Ok(StateDir {
            dir: dir.to_owned(),
        })
    }

    /// The file that holds `which`.
    pub fn path(&self, which: Kept) -> PathBuf {
        self.dir.join(which.file_name())
    }

    /// Replaces the file of `which` atomically: a crash leaves either the
    /// old file or the new one, whole.
    pub fn save(&self, which: Kept, policy: &SavedPolicy) -> Result<(), StateError> {
        let path = self.path(which);
        let bytes = policy.to_json();
        let size = bytes.len() as u64;
        if size > MAX_STATE_BYTES {
            return Err(StateError::TooLarge {
                path,
                size,
                limit: MAX_STATE_BYTES,
            });
        }
        let io = |source| StateError::Io {
            path: path.clone(),
            source,
        };
        // Created 0600 in the same directory, so the rename is atomic.
        let mut file = tempfile::NamedTempFile::new_in(&self.dir).map_err(io)?;
        file.write_all(&bytes).map_err(io)?;
        file.as_file().sync_all().map_err(io)?;
        file.persist(&path).map_err(|e| io(e.error))?;
        self.sync_dir()
    }

    /// Reads the file of `which`; `None` when there is none.
    pub fn load(&self, which: Kept) -> Result<Option<SavedPolicy>, StateError> {
        let path = self.path(which);
        let io = |source| StateError::Io {
            path: path.clone(),
            source,
        };
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(e)),
        };
        let meta = file.metadata().map_err(io)?;
        check_trusted(&path, &meta)?;
        if meta.len() > MAX_STATE_BYTES {
            return Err(StateError::TooLarge {
                path,
                size: meta.len(),
                limit: MAX_STATE_BYTES,
            });
        }
        let mut bytes = Vec::new();
        file.take(MAX_STATE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        if bytes.len() as u64 > MAX_STATE_BYTES {
            return Err(StateError::TooLarge {
                path,
                size: bytes.len() as u64,
                limit: MAX_STATE_BYTES,
            });
        }
        SavedPolicy::from_json(&path, &bytes).map(Some)
    }

    /// The policy on probation becomes the last good one (a rename: atomic,
    /// and the text need not be in memory). `false` when there was none.
    pub fn confirm_probation(&self) -> Result<bool, StateError> {
        let from = self.path(Kept::Probation);
        match std::fs::rename(&from, self.path(Kept::LastGood)) {
            Ok(()) => self.sync_dir().map(|()| true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(StateError::Io { path: from, source }),
        }
    }

    /// Removes the file of `which`, if any.
    pub fn remove(&self, which: Kept) -> Result<(), StateError> {
        let path = self.path(which);
        match std::fs::remove_file(&path) {
            Ok(()) => self.sync_dir(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StateError::Io { path, source }),
        }
    }

    /// Makes a rename or removal in the directory durable.
    fn sync_dir(&self) -> Result<(), StateError> {
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| StateError::Io {
                path: self.dir.clone(),
                source,
            })
    }
}

/// Refuses a state file or directory that another user owns or that group
/// or others may write.
fn check_trusted(path: &Path, meta: &std::fs::Metadata) -> Result<(), StateError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    let reason = if meta.uid() != euid {
        Some(format!("owned by uid {}, not {euid}", meta.uid()))
    } else if meta.mode() & 0o022 != 0 {
        Some(format!(
            "mode {:o} lets group or others write it",
            meta.mode() & 0o7777
        ))
    } else {
        None
    };
    match reason {
        Some(reason) => Err(StateError::Untrusted {
            path: path.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::fixtures::WEB_TO_HOST;

    fn saved(text: &str, now: SystemTime) -> SavedPolicy {
        let files = vec![(PathBuf::from("/etc/enforcer/policies/a.toml"), text.into())];
        let loaded = crate::policy::load_sources(&files).unwrap();
        let (compiled, _) = crate::check::compile_loaded(loaded, now).unwrap();
        SavedPolicy {
            content_hash: compiled.content_hash,
            applied_at: now,
            next_expiry: compiled.next_expiry,
            source: "/etc/enforcer/policies".into(),
            files,
        }
    }

    fn state() -> (tempfile::TempDir, StateDir) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(&tmp.path().join("state")).unwrap();
        (tmp, dir)
    }

    #[test]
    fn a_saved_policy_reads_back_and_compiles_to_its_hash() {
        let (_tmp, dir) = state();
        let now = SystemTime::now();
        let policy = saved(WEB_TO_HOST, now);
        assert_eq!(dir.load(Kept::LastGood).unwrap(), None);
        dir.save(Kept::LastGood, &policy).unwrap();
        let back = dir.load(Kept::LastGood).unwrap().unwrap();
        assert_eq!(back, policy);
        let (compiled, _) = back.compile(&dir.path(Kept::LastGood), now).unwrap();
        assert_eq!(compiled.content_hash, policy.content_hash);
        let mode = std::fs::metadata(dir.path(Kept::LastGood)).unwrap().mode();
        assert_eq!(mode & 0o077, 0, "{mode:o}");
    }

    #[test]
    fn an_expiry_is_checked_as_then_and_compiled_as_now() {
        let now = SystemTime::now();
        let until = now + Duration::from_secs(60);
        let text = WEB_TO_HOST.replace(
            r#"ports = ["8080/tcp"] }"#,
            &format!(
                r#"ports = ["8080/tcp"] }}, {{ to = ["host"], ports = ["9090/tcp"], until = "{}" }}"#,
                crate::rfc3339::format(until)
            ),
        );
        let policy = saved(&text, now);
        assert_eq!(policy.next_expiry, Some(until));
        let path = Path::new("last-good.json");
        let (before, _) = policy.compile(path, now).unwrap();
        assert_eq!(before.content_hash, policy.content_hash);
        // Read back after the rule expired: checked against the hash it
        // had, put in force without the rule.
        let (after, _) = policy.compile(path, until).unwrap();
        assert_ne!(after.content_hash, policy.content_hash);
        assert_eq!(after.next_expiry, None);
    }

    #[test]
    fn truncated_garbled_and_edited_files_are_errors_naming_the_file() {
        let (_tmp, dir) = state();
        let now = SystemTime::now();
        let policy = saved(WEB_TO_HOST, now);
        dir.save(Kept::LastGood, &policy).unwrap();
        let path = dir.path(Kept::LastGood);
        let whole = std::fs::read(&path).unwrap();
        let shown = |e: StateError| {
            let text = e.to_string();
            assert!(text.starts_with(&path.display().to_string()), "{text}");
            text
        };

        std::fs::write(&path, &whole[..whole.len() / 2]).unwrap();
        let e = dir.load(Kept::LastGood).unwrap_err();
        assert!(matches!(e, StateError::Garbled { .. }), "{e}");
        assert!(shown(e).contains("truncated or damaged"));

        std::fs::write(&path, b"\x00\x01garbage").unwrap();
        assert!(matches!(
            dir.load(Kept::LastGood),
            Err(StateError::Garbled { .. })
        ));

        // The text edited (the port changed): it no longer compiles to
        // the hash the file records.
        let edited = String::from_utf8(whole.clone())
            .unwrap()
            .replace("8080/tcp", "8081/tcp");
        std::fs::write(&path, edited).unwrap();
        let back = dir.load(Kept::LastGood).unwrap().unwrap();
        let e = back.compile(&path, now).unwrap_err();
        assert!(matches!(e, StateError::HashMismatch { .. }), "{e}");
        shown(e);

        // Text that does not compile at all.
        let broken = String::from_utf8(whole)
            .unwrap()
            .replace("cgroup = \\\"web*\\\"", "cgroup = 7");
        std::fs::write(&path, broken).unwrap();
        let back = dir.load(Kept::LastGood).unwrap().unwrap();
        assert!(matches!(
            back.compile(&path, now),
            Err(StateError::Invalid { .. })
        ));
    }

    #[test]
    fn files_others_may_write_and_oversized_files_are_refused() {
        let (_tmp, dir) = state();
        let policy = saved(WEB_TO_HOST, SystemTime::now());
        dir.save(Kept::LastGood, &policy).unwrap();
        let path = dir.path(Kept::LastGood);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = dir.load(Kept::LastGood).unwrap_err();
        assert!(matches!(e, StateError::Untrusted { .. }), "{e}");

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(MAX_STATE_BYTES + 1).unwrap();
        assert!(matches!(
            dir.load(Kept::LastGood),
            Err(StateError::TooLarge { .. })
        ));

        let huge = SavedPolicy {
            files: vec![("big.toml".into(), "#".repeat(MAX_STATE_BYTES as usize + 1))],
            ..policy
        };
        assert!(matches!(
            dir.save(Kept::Probation, &huge),
            Err(StateError::TooLarge { .. })
        ));
        assert!(!dir.path(Kept::Probation).exists());
    }

    #[test]
    fn a_confirmed_probation_becomes_the_last_good_policy() {
        let (_tmp, dir) = state();
        let now = SystemTime::now();
        let first = saved(WEB_TO_HOST, now);
        let second = saved(&WEB_TO_HOST.replace("8080", "9090"), now);
        dir.save(Kept::LastGood, &first).unwrap();
        assert!(!dir.confirm_probation().unwrap(), "nothing on probation");
        dir.save(Kept::Probation, &second).unwrap();
        assert!(dir.confirm_probation().unwrap());
        assert_eq!(dir.load(Kept::LastGood).unwrap(), Some(second));
        assert_eq!(dir.load(Kept::Probation).unwrap(), None);
        dir.remove(Kept::Probation).unwrap();
    }

    #[test]
    fn a_directory_others_may_write_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let loose = tmp.path().join("loose");
        std::fs::create_dir(&loose).unwrap();
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(
            StateDir::open(&loose),
            Err(StateError::Untrusted { .. })
        ));
        let made = tmp.path().join("a/b");
        StateDir::open(&made).unwrap();
        assert_eq!(std::fs::metadata(&made).unwrap().mode() & 0o777, 0o700);
    }
}
