//! Reading the packet: the parser's byte source over a `cgroup_skb`
//! context, with direct loads from the linear part of the packet where
//! the verifier allows them.

use aya_ebpf::programs::SkBuffContext;
use enforcer_common::packet::{Bytes, PacketBytes};

/// The packet of a `cgroup_skb` program, as the parser reads it.
pub(super) struct Skb<'a>(pub(super) &'a SkBuffContext);

impl Skb<'_> {
    /// The `N` bytes at the constant offset `OFF` when they are in the
    /// linear part of the packet. A constant offset keeps the bounds check
    /// in the form the verifier accepts (packet pointer against data_end).
    #[inline(always)]
    fn direct<const OFF: usize, const N: usize>(&self) -> Option<Bytes<N>> {
        let skb = self.0.skb.skb;
        // SAFETY: reading two fields of the program's own context.
        let (data, end) = unsafe { ((*skb).data as usize, (*skb).data_end as usize) };
        // `data + 1 > end` would compile to `data >= end`, from which the
        // verifier learns no range: check at least 2 bytes (a shorter
        // packet takes the helper path, with the same result).
        let span = if OFF + N < 2 { 2 } else { OFF + N };
        if data + span > end {
            return None;
        }
        // Whole words, largest first: an IPv6 header is five 8-byte loads
        // instead of forty byte loads, shifts and ors.
        let base = data + OFF;
        let mut bytes = Bytes([0u8; N]);
        let out = &mut bytes.0;
        let mut i = 0;
        while i + 8 <= N {
            // SAFETY (this and the loads below): inside [data, data_end).
            out[i..i + 8].copy_from_slice(&unsafe { load_u64(base + i) }.to_ne_bytes());
            i += 8;
        }
        if i + 4 <= N {
            out[i..i + 4].copy_from_slice(&unsafe { load_u32(base + i) }.to_ne_bytes());
            i += 4;
        }
        if i + 2 <= N {
            out[i..i + 2].copy_from_slice(&unsafe { load_u16(base + i) }.to_ne_bytes());
            i += 2;
        }
        if i < N {
            // SAFETY: as above; a byte has no alignment.
            out[i] = unsafe { *(base as *const u8).add(i) };
        }
        Some(bytes)
    }
}

// Unaligned word loads from the packet. In Rust (`read_unaligned`) LLVM's
// BPF backend splits them into byte loads, since BPF does not promise
// misaligned access; the verifier allows it for packet pointers wherever the
// kernel has efficient unaligned access (x86-64, arm64, ...: it only
// enforces packet alignment with `BPF_F_STRICT_ALIGNMENT` or on
// architectures without it). Inline assembly emits the single load.

/// # Safety
/// The 8 bytes at `addr` are inside the packet (checked against data_end).
#[inline(always)]
unsafe fn load_u64(addr: usize) -> u64 {
    let v: u64;
    // SAFETY: per the caller; a plain load, no stack, no side effect.
    unsafe {
        core::arch::asm!(
            "{v} = *(u64 *)({a} + 0)",
            a = in(reg) addr,
            v = lateout(reg) v,
            options(pure, readonly, nostack, preserves_flags),
        );
    }
    v
}

/// # Safety
/// As [`load_u64`], for 4 bytes.
#[inline(always)]
unsafe fn load_u32(addr: usize) -> u32 {
    let v: u64;
    // SAFETY: as in `load_u64`.
    unsafe {
        core::arch::asm!(
            "{v} = *(u32 *)({a} + 0)",
            a = in(reg) addr,
            v = lateout(reg) v,
            options(pure, readonly, nostack, preserves_flags),
        );
    }
    v as u32
}

/// # Safety
/// As [`load_u64`], for 2 bytes.
#[inline(always)]
unsafe fn load_u16(addr: usize) -> u16 {
    let v: u64;
    // SAFETY: as in `load_u64`.
    unsafe {
        core::arch::asm!(
            "{v} = *(u16 *)({a} + 0)",
            a = in(reg) addr,
            v = lateout(reg) v,
            options(pure, readonly, nostack, preserves_flags),
        );
    }
    v as u16
}

impl PacketBytes for Skb<'_> {
    /// The usual header offsets (the IP header, and the transport header
    /// after an option-less IPv4 or extension-less IPv6 header) are read
    /// directly from the linear part of the packet: no helper call, and only
    /// the bytes the parser uses are loaded. Anything else, or data outside
    /// the linear part, goes through `bpf_skb_load_bytes`.
    #[inline(always)]
    fn read<const N: usize>(&self, offset: usize) -> Option<Bytes<N>> {
        let direct = match offset {
            0 => self.direct::<0, N>(),
            12 => self.direct::<12, N>(),
            16 => self.direct::<16, N>(),
            20 => self.direct::<20, N>(),
            40 => self.direct::<40, N>(),
            _ => None,
        };
        match direct {
            Some(bytes) => Some(bytes),
            None => self.0.load::<[u8; N]>(offset).ok().map(Bytes),
        }
    }
}
