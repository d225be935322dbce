//! Programs that another user runs.
//!
//! A test that runs a program as another user (an unprivileged client of
//! the daemon, `nobody`) cannot exec it where Cargo built it: the checkout
//! may sit below a directory only root may traverse (root's home on Debian
//! is 0700), and the exec then fails with `EACCES`. [`ReachableCopy`] puts
//! the program in a fresh directory that root owns and every user may
//! traverse, and removes it on drop.

use std::{
    fs::{self, DirBuilder, Permissions},
    io,
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use crate::{
    error::{Error, Result},
    util::next_serial,
};

/// Prefix of the directories under the temporary directory; the creating
/// pid follows, so [`crate::reap_stale`] can remove those of killed runs.
pub(crate) const REACHABLE_PREFIX: &str = "enforcer-test-bin-";

/// Read and execute for everyone, write for the owner (root) only.
const OPEN_TO_ALL: u32 = 0o755;

/// A copy of a program, in `<tmp>/enforcer-test-bin-<pid>-<n>/` (mode 0755,
/// owned by the test runner), that any user can execute. Removed on drop.
#[derive(Debug)]
pub struct ReachableCopy {
    dir: PathBuf,
    program: PathBuf,
}

impl ReachableCopy {
    /// Copies `program` (a hard link when it is on the same file system
    /// and already executable by everyone: a debug build of the enforcer
    /// is over 100 MB).
    pub fn of(program: &Path) -> Result<ReachableCopy> {
        let name = program.file_name().ok_or_else(|| {
            Error::io(
                "copy",
                program,
                io::Error::new(io::ErrorKind::InvalidInput, "not a file name"),
            )
        })?;
        let dir = std::env::temp_dir().join(format!(
            "{REACHABLE_PREFIX}{}-{}",
            std::process::id(),
            next_serial()
        ));
        // `create`, not `create_all`: a directory someone else made first
        // under the shared temporary directory is an error, never reused.
        DirBuilder::new()
            .mode(OPEN_TO_ALL)
            .create(&dir)
            .map_err(|e| Error::io("mkdir", &dir, e))?;
        let copy = ReachableCopy {
            program: dir.join(name),
            dir,
        };
        // The umask may have narrowed the mode.
        fs::set_permissions(&copy.dir, Permissions::from_mode(OPEN_TO_ALL))
            .map_err(|e| Error::io("chmod", &copy.dir, e))?;
        traversable_by_all(&copy.dir)?;
        let executable_by_all = fs::metadata(program)
            .map_err(|e| Error::io("stat", program, e))?
            .mode()
            & 0o005
            == 0o005;
        if !executable_by_all || fs::hard_link(program, &copy.program).is_err() {
            fs::copy(program, &copy.program).map_err(|e| Error::io("copy", program, e))?;
            fs::set_permissions(&copy.program, Permissions::from_mode(OPEN_TO_ALL))
                .map_err(|e| Error::io("chmod", &copy.program, e))?;
        }
        Ok(copy)
    }

    /// Where the copy is.
    pub fn path(&self) -> &Path {
        &self.program
    }
}

impl Drop for ReachableCopy {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Fails unless every directory above `dir` lets other users pass (the
/// temporary directory itself may be a private one: `TMPDIR`).
fn traversable_by_all(dir: &Path) -> Result<()> {
    for ancestor in dir.ancestors().skip(1) {
        let mode = fs::metadata(ancestor)
            .map_err(|e| Error::io("stat", ancestor, e))?
            .mode();
        if mode & 0o001 == 0 {
            return Err(Error::io(
                "traverse",
                ancestor,
                io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "other users cannot pass this directory: point TMPDIR at one they can (/tmp)",
                ),
            ));
        }
    }
    Ok(())
}
