//! Memory-mappable (`BPF_F_MMAPABLE`) array maps from userspace: words that
//! the programs change with atomic instructions, which the daemon reads
//! and changes through a shared mapping, atomically too. A map update
//! would write whole values and could undo what a program changed
//! meanwhile in the same word. Hand-written because aya 0.14 has no API to
//! map an array map.

use std::{
    marker::PhantomData,
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::NonNull,
};

use aya::maps::{MapData, MapError};

use super::error::{Result, write_err};

/// A word type of a mapped array: an atomic integer of the values' width.
pub(super) trait Word {}
impl Word for std::sync::atomic::AtomicU32 {}
impl Word for std::sync::atomic::AtomicU64 {}

/// An array map's values, mapped into this process for as long as it
/// lives.
pub(super) struct SharedArray<W: Word> {
    words: NonNull<W>,
    len: usize,
    _word: PhantomData<W>,
}

impl<W: Word> SharedArray<W> {
    /// Maps the `len` values of `map` (named `name`, for errors), an array
    /// created with `BPF_F_MMAPABLE` whose value is one `W`.
    pub(super) fn new(map: &MapData, name: &'static str, len: usize) -> Result<SharedArray<W>> {
        let fd = map.fd().as_fd().as_raw_fd();
        let bytes = len * size_of::<W>();
        // SAFETY: a new shared mapping of a BPF_F_MMAPABLE array of `len`
        // values of `W`'s size; the kernel checks the length and the flags.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        let mapped = if addr == libc::MAP_FAILED {
            Err(std::io::Error::last_os_error())
        } else {
            NonNull::new(addr.cast()).ok_or_else(|| std::io::Error::other("mapped at address 0"))
        };
        let words = mapped.map_err(|io_error| {
            write_err(name)(MapError::SyscallError(aya::sys::SyscallError {
                call: "mmap",
                io_error,
            }))
        })?;
        Ok(SharedArray {
            words,
            len,
            _word: PhantomData,
        })
    }

    /// Value `index`; `None` past the end.
    pub(super) fn get(&self, index: usize) -> Option<&W> {
        // SAFETY: in bounds of a page-aligned mapping that lives as long as
        // `self`; the values are only ever changed atomically (by the
        // programs' BPF_ATOMIC instructions and through `W` here).
        (index < self.len).then(|| unsafe { &*self.words.as_ptr().add(index) })
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }
}

impl<W: Word> Drop for SharedArray<W> {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unused after this.
        unsafe { libc::munmap(self.words.as_ptr().cast(), self.len * size_of::<W>()) };
    }
}
