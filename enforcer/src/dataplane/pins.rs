//! The bpf filesystem directory the data plane pins into (the daemon's
//! `--bpffs`): every path under it is made here. A layout's directory
//! `<root>/v<version>/` holds a pin per map (named after it), the
//! manifest, and `links/<program>`. Also: what a pin holds, putting an
//! object of this process back at its path, and removing a layout's pins.

use std::{
    io,
    os::fd::{AsFd as _, BorrowedFd},
    path::{Path, PathBuf},
};

use aya::{
    maps::{Map, MapData},
    pin::PinError,
};
use enforcer_common::{layout::LAYOUT_VERSION, map_names};

use super::{
    bpf_sys::{self, ObjectKind},
    error::{DataplaneError, Result},
};

/// The name of the manifest pinned beside the maps (and of its map).
pub(crate) const MANIFEST: &str = "MANIFEST";

/// The pin directory of one map layout: `<root>/v<version>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PinDir {
    dir: PathBuf,
}

impl PinDir {
    fn of_layout(root: &Path, version: u32) -> PinDir {
        PinDir {
            dir: root.join(format!("v{version}")),
        }
    }

    /// This layout's directory under `root`, created with its `links`
    /// directory; `root` is created too and must be on a bpf filesystem.
    pub(crate) fn create(root: &Path) -> Result<PinDir> {
        create_dir(root)?;
        if !is_bpffs(root) {
            return Err(DataplaneError::NotOnBpffs {
                path: root.to_owned(),
            });
        }
        let pins = PinDir::of_layout(root, LAYOUT_VERSION);
        create_dir(&pins.dir)?;
        create_dir(&pins.links())?;
        Ok(pins)
    }

    /// `<root>/v<version>`.
    pub(crate) fn path(&self) -> &Path {
        &self.dir
    }

    /// The pin of the map named `name` (one of [`map_names::ALL`]).
    pub(crate) fn map_pin(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The pin of the manifest.
    pub(crate) fn manifest_pin(&self) -> PathBuf {
        self.dir.join(MANIFEST)
    }

    /// The pin of the link of the program named `program`.
    pub(crate) fn link_pin(&self, program: &str) -> PathBuf {
        self.links().join(program)
    }

    fn links(&self) -> PathBuf {
        self.dir.join("links")
    }

    /// The directories of earlier layouts present beside this one.
    pub(crate) fn older_layouts(&self) -> Vec<PinDir> {
        self.dir.parent().map_or_else(Vec::new, older_layouts)
    }

    /// Removes every map pin of the set and the manifest; names that are
    /// absent are skipped.
    pub(crate) fn remove_maps(&self) -> Result<()> {
        for path in map_names::ALL
            .iter()
            .map(|name| self.map_pin(name))
            .chain([self.manifest_pin()])
        {
            remove_if_present(&path)?;
        }
        Ok(())
    }

    /// Unpins the links (detaching them, once no process holds them) and
    /// the maps, then removes the directories. Map names are those of this
    /// layout: an earlier layout pinned a subset of them; anything else
    /// left makes the directory removal fail with its error.
    pub(crate) fn uninstall(&self) -> Result<()> {
        let links = self.links();
        if let Ok(entries) = std::fs::read_dir(&links) {
            for entry in entries.flatten() {
                // Unpinning a link that no process holds detaches it.
                let path = entry.path();
                std::fs::remove_file(&path)
                    .map_err(|source| DataplaneError::UnableToUnpin { path, source })?;
            }
        }
        self.remove_maps()?;
        for dir in [links, self.dir.clone()] {
            match std::fs::remove_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(DataplaneError::UnableToUnpin { path: dir, source }),
            }
        }
        Ok(())
    }
}

/// The directories of earlier layouts present under `root`.
pub(crate) fn older_layouts(root: &Path) -> Vec<PinDir> {
    (1..LAYOUT_VERSION)
        .map(|version| PinDir::of_layout(root, version))
        .filter(|pins| pins.dir.is_dir())
        .collect()
}

/// Removes everything pinned under `root`: this layout's directory and
/// those of earlier layouts. A no-op when nothing is pinned.
pub(crate) fn uninstall(root: &Path) -> Result<()> {
    for pins in older_layouts(root) {
        pins.uninstall()?;
    }
    PinDir::of_layout(root, LAYOUT_VERSION).uninstall()
}

fn create_dir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(|source| DataplaneError::UnableToCreatePinDir {
        path: path.to_owned(),
        source,
    })
}

fn is_bpffs(path: &Path) -> bool {
    rustix::fs::statfs(path).is_ok_and(|st| st.f_type == libc::BPF_FS_MAGIC)
}

fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(DataplaneError::UnableToUnpin {
            path: path.to_owned(),
            source,
        }),
    }
}

/// What a pin path holds, against the object that belongs there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PinState {
    /// The expected object.
    Ours,
    /// Nothing.
    Missing,
    /// Something else, described.
    Foreign(String),
}

/// Whether `path` holds the object of kind `kind` with kernel id `id`.
/// Three system calls when it does (open, kind, info) and the close.
pub(crate) fn state(path: &Path, kind: ObjectKind, id: u32) -> PinState {
    let fd = match bpf_sys::open_pin(path) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return PinState::Missing,
        // A directory, a symlink out of bpffs, a file of another
        // filesystem mounted there...
        Err(e) => return PinState::Foreign(format!("something that is not a bpf object ({e})")),
    };
    let found = bpf_sys::kind(fd.as_fd());
    if found != kind {
        return PinState::Foreign(format!("a bpf {}", describe(found)));
    }
    let found_id = match found {
        ObjectKind::Link => bpf_sys::link_info(fd.as_fd())
            .map(|info| info.id)
            .map_err(|e| e.to_string()),
        ObjectKind::Map => MapData::from_fd(fd)
            .and_then(|map| map.info())
            .map(|info| info.id())
            .map_err(|e| e.to_string()),
        ObjectKind::Program | ObjectKind::Other => Ok(0),
    };
    match found_id {
        Ok(found_id) if found_id == id => PinState::Ours,
        Ok(found_id) => PinState::Foreign(format!("another {} (id {found_id})", describe(found))),
        Err(e) => PinState::Foreign(format!("an unreadable {} ({e})", describe(found))),
    }
}

pub(crate) fn describe(kind: ObjectKind) -> &'static str {
    match kind {
        ObjectKind::Map => "map",
        ObjectKind::Program => "program",
        ObjectKind::Link => "link",
        ObjectKind::Other => "object",
    }
}

/// Pins the link `fd` at `path`, removing whatever is there first (a pin
/// of another link: unpinning a link nobody else holds detaches it) and
/// creating the directories above it if they were removed.
pub(crate) fn put_link(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    replace(path, |path| bpf_sys::pin(fd, path))
}

/// Pins `map` at `path`, as [`put_link`] does a link.
pub(crate) fn put_map(map: &Map, path: &Path) -> io::Result<()> {
    replace(path, |path| {
        map.pin(path).map_err(|e| match e {
            PinError::SyscallError(e) => e.io_error,
            other => io::Error::other(other),
        })
    })
}

fn replace(path: &Path, pin: impl FnOnce(&Path) -> io::Result<()>) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    pin(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_directory_is_the_one_the_tests_and_tools_name() {
        let pins = PinDir::of_layout(Path::new("/sys/fs/bpf/x"), LAYOUT_VERSION);
        assert_eq!(
            pins.path(),
            Path::new("/sys/fs/bpf/x").join(enforcer_common::layout::LAYOUT_DIR)
        );
        assert_eq!(
            pins.link_pin("enforcer_egress"),
            Path::new("/sys/fs/bpf/x")
                .join(enforcer_common::layout::LAYOUT_DIR)
                .join("links/enforcer_egress")
        );
        assert_eq!(pins.map_pin(map_names::FLOWS), pins.path().join("FLOWS"));
    }

    #[test]
    fn only_a_bpf_filesystem_is_one() {
        assert!(!is_bpffs(Path::new("/proc")));
        assert!(!is_bpffs(Path::new("/nonexistent/enforcer")));
    }
}
