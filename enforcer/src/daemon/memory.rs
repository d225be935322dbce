//! The daemon's use of the C allocator. A policy load allocates a lot for a
//! moment (the TOML document and the parsed model are several times the
//! size of the compiled policy that stays) and then little until the next
//! load. glibc keeps memory freed like that resident unless told otherwise;
//! see "Memory" in `docs/daemon.md` for the measurements.

/// Set glibc's allocator up for that pattern, before any thread starts:
///
/// - one arena: every thread allocates from the main heap, so what one
///   load leaves free is reused by the next whatever worker thread runs it,
///   instead of staying resident in a per-thread arena each (the daemon's
///   work is serialized by the engine's lock; there is no contention to
///   avoid);
/// - a fixed mmap threshold (128 KiB, glibc's default starting value):
///   large buffers (verdict tables, file texts, scratch vectors) get their
///   own mappings, returned to the system when freed. Setting it turns off
///   glibc's dynamic threshold, which after the first large free would
///   raise it (and the heap trim threshold with it) to tens of MiB and keep
///   such buffers on the heap.
pub fn tune_allocator() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes allocator parameters; called before the
    // runtime's threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// Hand the memory that parsing and compiling a policy freed back to the
/// system (free pages inside the heap, and its top). Called after every
/// change of the daemon's state (a load, accepted or rejected, among them)
/// once its status is published: the status is rebuilt at each change, and
/// what is allocated after a trim lands in the pages it returned.
pub fn release_freed_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}
