//! `TCP_BOUND_PORT_BITS` from userspace: a bit per TCP port that the
//! programs set and clear with atomic instructions while the daemon seeds
//! ports bound before them. A map update would write whole words and could
//! undo a bit the kernel changed meanwhile in the same word, so the daemon
//! changes bits through a shared mapping of the map, atomically too.

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

use aya::maps::{MapData, MapError};
use enforcer_common::{TCP_BOUND_PORT_WORDS, maps, tcp_bound_port_bit};

use super::error::{Result, write_err};

const LEN: usize = TCP_BOUND_PORT_WORDS as usize * size_of::<u64>();

/// The map's words, mapped into this process for as long as it lives.
struct Mapping(NonNull<AtomicU64>);

impl Mapping {
    fn new(map: &MapData) -> Result<Mapping> {
        let fd = map.fd().as_fd().as_raw_fd();
        // SAFETY: a new shared mapping of a BPF_F_MMAPABLE array of exactly
        // LEN bytes (its value size is 8, a multiple of its alignment); the
        // kernel checks the length and the flags.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                LEN,
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
        mapped.map(Mapping).map_err(|io_error| {
            write_err(maps::TCP_BOUND_PORT_BITS)(MapError::SyscallError(aya::sys::SyscallError {
                call: "mmap",
                io_error,
            }))
        })
    }

    fn word(&self, index: u32) -> &AtomicU64 {
        assert!(index < TCP_BOUND_PORT_WORDS, "word {index} out of range");
        // SAFETY: in bounds (checked above) of a page-aligned mapping that
        // lives as long as `self`; the words are only ever changed
        // atomically (by the programs' BPF_ATOMIC instructions and here).
        unsafe { &*self.0.as_ptr().add(index as usize) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, of LEN bytes, unused after this.
        unsafe { libc::munmap(self.0.as_ptr().cast(), LEN) };
    }
}

/// Sets (`true`) or clears each port's bit.
pub fn mark(map: &MapData, ports: &[(u16, bool)]) -> Result<()> {
    if ports.is_empty() {
        return Ok(());
    }
    let mapping = Mapping::new(map)?;
    for &(port, bound) in ports {
        let (index, bit) = tcp_bound_port_bit(port);
        if bound {
            mapping.word(index).fetch_or(bit, Ordering::Relaxed);
        } else {
            mapping.word(index).fetch_and(!bit, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// Whether a port's bit is set.
pub fn is_marked(map: &MapData, port: u16) -> Result<bool> {
    let mapping = Mapping::new(map)?;
    let (index, bit) = tcp_bound_port_bit(port);
    Ok(mapping.word(index).load(Ordering::Relaxed) & bit != 0)
}
