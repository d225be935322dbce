//! The kernel side: load the programs, attach them to a cgroup, pin them,
//! write compiled policies into the maps (two slots, flipped atomically),
//! and read events and counters back. See `docs/dataplane.md`.
//!
//! The [`Dataplane`]'s methods are spread by job: `lifecycle` (load,
//! attach, uninstall), `generation` (`CONFIG`), `apply` (policies and
//! cgroups put in force), `bound_ports`, `readers` (flows, counters,
//! events) and `test_run`.

mod adoption;
mod apply;
mod bound_ports;
mod bpf_sys;
mod counters;
mod error;
mod events;
mod generation;
mod handles;
mod host;
mod integrity;
mod kernel_btf;
mod lifecycle;
mod links;
mod pins;
mod port_bits;
mod programs;
mod readers;
mod registration;
mod settings;
mod shared_array;
mod slots;
mod test_run;
mod ticks;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use aya::Ebpf;

use self::{adoption::KeptMap, apply::Staged, links::LinkSet, pins::PinDir};
pub use self::{
    apply::{ResolvedCgroup, SlotMatching},
    counters::{CounterReader, GlobalCounters},
    error::{DataplaneError, Result},
    events::{EventReader, decode_event},
    host::{HostAddrs, SocketMatching, check_cgroup_socket_matching, netns_cookie},
    integrity::{IntegrityMonitor, IntegrityReport},
    registration::RegistrationLimits,
    settings::{DataplaneOptions, FailsafePort, UnmanagedMode},
    slots::{Plan, SlotContent, plan},
    test_run::{TestRunOutcome, ethernet_frame},
};

/// The compiled eBPF object, built by `enforcer/build.rs`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/enforcer"));

/// The loaded kernel programs and their maps.
pub struct Dataplane {
    ebpf: Ebpf,
    /// `<pin_root>/v<LAYOUT_VERSION>`, when pinning.
    pins: Option<PinDir>,
    allow_root_cgroup: bool,
    /// The links of this process, pinned or not: held (as well as pinned),
    /// so that removing a pin detaches nothing while this value lives, and
    /// shared with the [`IntegrityMonitor`], which repairs them.
    links: Arc<Mutex<LinkSet>>,
    /// A handle of every map (and of the manifest, when pinning), for the
    /// [`IntegrityMonitor`]: the events map leaves `ebpf` when taken.
    maps: Arc<Vec<KeptMap>>,
    /// Why the maps pinned by an earlier process were not adopted, when
    /// they were not.
    replaced_maps: Option<Vec<String>>,
    /// What the active slot's cgroup map holds, to rewrite it on `apply`.
    cgroups: BTreeMap<u64, ResolvedCgroup>,
    /// What each slot holds, as written by this value; `None` when unknown
    /// (maps adopted from pins, or a write that failed half-way), and then
    /// the next `apply` into that slot empties it first. The cgroup maps
    /// are always compared with what they really hold: the cgroup tracer
    /// writes them too.
    written: [Option<Box<SlotContent>>; 2],
    /// Per slot, how many automaton states the cgroup tracer's table may
    /// hold from earlier writes (`None`: unknown, as after an adoption):
    /// only those and the new ones are compared and written.
    match_states_written: [Option<u32>; 2],
    /// The key of the tracer's name hash, once [`Dataplane::enable_registration`]
    /// set it up.
    name_key: Option<[u64; 2]>,
    /// The slot an apply is writing, between [`Dataplane::stage`] and
    /// [`Dataplane::commit`].
    staged: Option<Staged>,
}

impl std::fmt::Debug for Dataplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataplane")
            .field("pin_dir", &self.pin_dir())
            .field("links", &self.links)
            .field("cgroups", &self.cgroups.len())
            .field("known_slots", &self.written.each_ref().map(Option::is_some))
            .field("registration", &self.name_key.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_can_move_between_threads() {
        fn send<T: Send>() {}
        send::<Dataplane>();
        send::<EventReader>();
    }
}
