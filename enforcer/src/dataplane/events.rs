//! Reading verdict events from the kernel's ring buffer.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

use aya::maps::{Map, MapData, RingBuf};
use enforcer_common::{event::VerdictEvent, map_names};

use super::error::{Result, type_err};

/// The consumer end of the `EVENTS` ring buffer. Poll its fd for
/// readability (e.g. with tokio's `AsyncFd`), then drain with
/// [`EventReader::next_event`].
pub struct EventReader {
    ring: RingBuf<MapData>,
}

impl std::fmt::Debug for EventReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventReader").finish_non_exhaustive()
    }
}

impl EventReader {
    pub(crate) fn new(map: Map) -> Result<EventReader> {
        let ring = RingBuf::try_from(map).map_err(type_err(map_names::EVENTS))?;
        Ok(EventReader { ring })
    }

    /// The next event if one is ready (never blocks). Records of the wrong
    /// size (which a matching kernel object never writes) are skipped.
    pub fn next_event(&mut self) -> Option<VerdictEvent> {
        loop {
            let item = self.ring.next()?;
            if let Some(event) = decode_event(&item) {
                return Some(event);
            }
        }
    }

    /// Every event ready now.
    pub fn drain(&mut self) -> Vec<VerdictEvent> {
        std::iter::from_fn(|| self.next_event()).collect()
    }
}

impl AsFd for EventReader {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.ring.as_fd()
    }
}

impl AsRawFd for EventReader {
    fn as_raw_fd(&self) -> RawFd {
        self.ring.as_fd().as_raw_fd()
    }
}

/// Decodes one ring-buffer record.
pub fn decode_event(bytes: &[u8]) -> Option<VerdictEvent> {
    if bytes.len() != size_of::<VerdictEvent>() {
        return None;
    }
    // SAFETY: the length matches and VerdictEvent is plain old data with
    // every bit pattern valid; read_unaligned copes with any alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<VerdictEvent>()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_only_records_of_the_right_size() {
        let e = VerdictEvent {
            time_ns: 1,
            cgroup_id: 2,
            local: 16,
            remote: 1,
            rule: 3,
            family: 4,
            protocol: 6,
            direction: 1,
            action: 2,
            local_port: 40000,
            remote_port: 443,
            generation: 7,
            local_addr: [9; 16],
            remote_addr: [8; 16],
        };
        // SAFETY: reading the bytes of a plain struct.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&e as *const VerdictEvent).cast::<u8>(),
                size_of::<VerdictEvent>(),
            )
        };
        assert_eq!(decode_event(bytes), Some(e));
        assert_eq!(decode_event(&bytes[1..]), None);
    }
}
