//! Pins on the bpf filesystem: what one holds, and putting an object of
//! this process back at its path.

use std::{
    io,
    os::fd::{AsFd as _, BorrowedFd},
    path::Path,
};

use super::bpf_sys::{self, ObjectKind};

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
        ObjectKind::Link => bpf_sys::link_info(fd.as_fd()).map(|info| info.id),
        ObjectKind::Map => bpf_sys::map_info(fd.as_fd()).map(|(id, _)| id),
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

/// Pins `fd` at `path`, removing whatever is there first (a pin of another
/// object: unpinning a link nobody else holds detaches it) and creating
/// the directories above it if they were removed.
pub(crate) fn put(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    bpf_sys::pin(fd, path)
}
