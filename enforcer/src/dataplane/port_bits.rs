//! `TCP_BOUND_PORT_BITS` from userspace: a bit per TCP port that the
//! programs set and clear with atomic instructions while the daemon seeds
//! ports bound before them. A map update would write whole words and could
//! undo a bit the kernel changed meanwhile in the same word, so the daemon
//! changes bits through a shared mapping of the map, atomically too.

use std::sync::atomic::{AtomicU64, Ordering};

use aya::maps::MapData;
use enforcer_common::{
    map_names,
    ports::{TCP_BOUND_PORT_WORDS, tcp_bound_port_bit},
};

use super::{error::Result, shared_array::SharedArray};

fn mapping(map: &MapData) -> Result<SharedArray<AtomicU64>> {
    SharedArray::new(
        map,
        map_names::TCP_BOUND_PORT_BITS,
        TCP_BOUND_PORT_WORDS as usize,
    )
}

fn word(mapping: &SharedArray<AtomicU64>, index: u32) -> &AtomicU64 {
    // `tcp_bound_port_bit` gives a word index below TCP_BOUND_PORT_WORDS.
    mapping
        .get(index as usize)
        .expect("a port's word is inside the map")
}

/// Sets (`true`) or clears each port's bit.
pub(super) fn mark(map: &MapData, ports: &[(u16, bool)]) -> Result<()> {
    if ports.is_empty() {
        return Ok(());
    }
    let mapping = mapping(map)?;
    for &(port, bound) in ports {
        let (index, bit) = tcp_bound_port_bit(port);
        if bound {
            word(&mapping, index).fetch_or(bit, Ordering::Relaxed);
        } else {
            word(&mapping, index).fetch_and(!bit, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// Whether a port's bit is set.
pub(super) fn is_marked(map: &MapData, port: u16) -> Result<bool> {
    let mapping = mapping(map)?;
    let (index, bit) = tcp_bound_port_bit(port);
    Ok(word(&mapping, index).load(Ordering::Relaxed) & bit != 0)
}

/// Clears the bit of every port not in `held`. Bits are changed one atomic
/// operation at a time: a bit the kernel sets meanwhile in the same word
/// is kept.
pub(super) fn keep_only(map: &MapData, held: &std::collections::BTreeSet<u16>) -> Result<()> {
    let mapping = mapping(map)?;
    for index in 0..TCP_BOUND_PORT_WORDS {
        let word = word(&mapping, index);
        let set = word.load(Ordering::Relaxed);
        if set == 0 {
            continue;
        }
        let mut stale = 0u64;
        for bit in 0..64u32 {
            let port = (index * 64 + bit) as u16;
            if set & (1 << bit) != 0 && !held.contains(&port) {
                stale |= 1 << bit;
            }
        }
        if stale != 0 {
            word.fetch_and(!stale, Ordering::Relaxed);
        }
    }
    Ok(())
}
