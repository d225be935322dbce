//! The kernel side: load the programs, attach them to a cgroup, pin them,
//! write compiled policies into the maps (two slots, flipped atomically),
//! and read events and counters back. See `docs/dataplane.md`.

mod adoption;
mod bpf_sys;
mod counters;
mod error;
mod events;
mod host;
mod integrity;
mod kernel_btf;
mod links;
mod pin;
mod port_bits;
mod programs;
mod registration;
mod shared_array;
mod slots;
mod test_run;
mod ticks;

use std::{
    collections::BTreeMap,
    fs::File,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, Map, MapData},
};
use enforcer_common::{
    cached_verdict::{CACHED_VERDICT_SLOTS, CachedVerdict},
    capacity::MAX_FAILSAFE_PORTS,
    config::{Config, SlotPolicy},
    flow::{FlowKey, FlowValue},
    identity::Identity,
    layout::LAYOUT_DIR,
    maps,
    ports::{BoundPort, BoundPortKey, PortKey},
    protocol::Protocol,
    workload::Mode,
};

use self::{
    adoption::{Adoption, KeptMap},
    error::{read_err, type_err, write_err},
    links::{KeptLink, LinkSet, Target},
    programs::PROGRAMS,
};
pub use self::{
    counters::{CounterReader, GlobalCounters},
    error::{DataplaneError, Result},
    events::{EventReader, decode_event},
    host::{HostAddrs, SocketMatching, check_cgroup_socket_matching, netns_cookie},
    integrity::{IntegrityMonitor, IntegrityReport},
    registration::RegistrationLimits,
    slots::{Plan, SlotContent, plan},
    test_run::{TestRunOutcome, ethernet_frame},
};
use crate::compile::CompiledPolicy;

/// The compiled eBPF object, built by `enforcer/build.rs`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/enforcer"));

/// `statfs` magic of a bpf filesystem.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// How to load the data plane.
#[derive(Clone, Debug, Default)]
pub struct DataplaneOptions {
    /// A directory on a bpffs (e.g. `/sys/fs/bpf/enforcer`). Maps and links
    /// are pinned under `<pin_root>/v<LAYOUT_VERSION>/`, so enforcement
    /// outlives the process and a new process adopts it. `None`: nothing
    /// is pinned and everything is detached when the [`Dataplane`] drops.
    pub pin_root: Option<PathBuf>,
    /// Whether [`Dataplane::attach`] may attach to the root of the cgroup v2
    /// hierarchy, where every process of the host is filtered. That is what
    /// the daemon does on a server (workloads are anywhere in the tree);
    /// tests and the demo leave it off and attach to cgroups they created.
    pub allow_root_cgroup: bool,
}

/// One cgroup the daemon resolved to a workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResolvedCgroup {
    /// The cgroup v2 id (inode number of its directory).
    pub cgroup_id: u64,
    pub workload: Identity,
    /// The workload's verdict class (`CompiledWorkload::class`): the
    /// identity the kernel looks its verdicts up under.
    pub class: Identity,
    /// `Mode::Enforce`, `Mode::Audit` or `Mode::Off`.
    pub mode: u8,
}

impl ResolvedCgroup {
    /// Its value in a slot's cgroup map.
    pub fn entry(&self) -> enforcer_common::workload::CgroupEntry {
        enforcer_common::workload::CgroupEntry {
            workload: self.workload,
            class: self.class,
            mode: self.mode,
            _pad: [0; 3],
        }
    }
}

/// What the cgroup tracer needs for the slot being staged: the automaton
/// tables and the automaton states of the cgroups that exist.
#[derive(Clone, Copy, Debug)]
pub struct SlotMatching<'a> {
    pub tables: &'a crate::cgroups::automaton::KernelTables,
    pub states: &'a BTreeMap<u64, crate::cgroups::CgroupStates>,
}

/// A slot being written: its content, and what `SLOT_POLICIES` records
/// once it is complete.
#[derive(Debug)]
struct Staged {
    slot: usize,
    content: Box<SlotContent>,
    stamp: SlotPolicy,
}

/// The `--unmanaged` setting: what happens to processes in no workload.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UnmanagedMode {
    #[default]
    Allow,
    Audit,
    Deny,
}

impl UnmanagedMode {
    const fn as_config(self) -> u8 {
        match self {
            UnmanagedMode::Allow => Mode::Off as u8,
            UnmanagedMode::Audit => Mode::Audit as u8,
            UnmanagedMode::Deny => Mode::Enforce as u8,
        }
    }
}

/// An inbound port that stays reachable whatever the policy says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FailsafePort {
    /// `Protocol::Tcp` or `Protocol::Udp`.
    pub protocol: u8,
    pub port: u16,
}

impl FailsafePort {
    /// Parses the daemon's `--failsafe` list: comma-separated `PORT/tcp` or
    /// `PORT/udp`, or `none` for the empty list.
    pub fn parse_list(text: &str) -> Result<Vec<FailsafePort>> {
        let text = text.trim();
        if text == "none" {
            return Ok(Vec::new());
        }
        let mut ports = text
            .split(',')
            .map(|item| item.trim().parse())
            .collect::<Result<Vec<FailsafePort>>>()?;
        ports.sort();
        ports.dedup();
        Ok(ports)
    }
}

impl std::str::FromStr for FailsafePort {
    type Err = DataplaneError;

    fn from_str(s: &str) -> Result<Self> {
        let invalid = || {
            DataplaneError::InvalidSetting(format!(
                "failsafe port {s:?}: expected PORT/tcp or PORT/udp"
            ))
        };
        let (port, proto) = s.split_once('/').ok_or_else(invalid)?;
        let protocol = match proto {
            "tcp" => enforcer_common::protocol::Protocol::Tcp as u8,
            "udp" => enforcer_common::protocol::Protocol::Udp as u8,
            _ => return Err(invalid()),
        };
        let port: u16 = port.parse().map_err(|_| invalid())?;
        if port == 0 {
            return Err(invalid());
        }
        Ok(FailsafePort { protocol, port })
    }
}

/// The loaded kernel programs and their maps.
pub struct Dataplane {
    ebpf: Ebpf,
    /// `<pin_root>/v<LAYOUT_VERSION>`, when pinning.
    pin_dir: Option<PathBuf>,
    allow_root_cgroup: bool,
    /// The links of this process, pinned or not: held (as well as pinned),
    /// so that removing a pin detaches nothing while this value lives, and
    /// shared with the [`IntegrityMonitor`], which repairs them.
    links: Arc<Mutex<LinkSet>>,
    /// A descriptor of every map (and of the manifest, when pinning), for
    /// the [`IntegrityMonitor`]: the events map leaves `ebpf` when taken.
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
            .field("pin_dir", &self.pin_dir)
            .field("links", &self.links)
            .field("cgroups", &self.cgroups.len())
            .field("known_slots", &self.written.each_ref().map(|w| w.is_some()))
            .field("registration", &self.name_key.is_some())
            .finish()
    }
}

fn is_bpffs(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs fills a zeroed struct; `c` is a valid C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return false;
    }
    st.f_type as i64 == BPF_FS_MAGIC
}

/// The `bpf(2)` command number (`enum bpf_cmd`), which libc does not name.
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;

/// An I/O error of a system call, as aya reports one.
fn syscall_error(call: &'static str, io_error: std::io::Error) -> aya::programs::ProgramError {
    aya::programs::ProgramError::SyscallError(aya::sys::SyscallError { call, io_error })
}

/// The names of every map, for pinning.
const ALL_MAPS: [&str; 30] = [
    maps::CONFIG,
    maps::CGROUPS[0],
    maps::CGROUPS[1],
    maps::ADDR4[0],
    maps::ADDR4[1],
    maps::ADDR6[0],
    maps::ADDR6[1],
    maps::VERDICTS[0],
    maps::VERDICTS[1],
    maps::FLOWS,
    maps::SOCKET_FLOWS,
    maps::BOUND_PORTS,
    maps::TCP_BOUND_PORT_BITS,
    maps::SOCKET_BINDS,
    maps::FAILSAFE,
    maps::EVENTS,
    maps::COUNTERS,
    maps::WORKLOAD_COUNTERS,
    maps::GLOBAL_COUNTERS,
    maps::CACHED_VERDICTS,
    maps::REGISTRATION,
    maps::CGROUP_MATCH,
    maps::MATCH_STATES,
    maps::MATCH_EXACT,
    maps::MATCH_GLOBS,
    maps::REGISTERED_CGROUPS[0],
    maps::REGISTERED_CGROUPS[1],
    maps::DELEGATED_MATCHES,
    maps::MATCH_SCRATCH,
    maps::SLOT_POLICIES,
];

impl Dataplane {
    /// Loads the programs (not attached yet). With a pin root, maps already
    /// pinned there are reused, so policy, flows and counters survive a
    /// restart; missing ones are created and pinned.
    pub fn load(options: &DataplaneOptions) -> Result<Dataplane> {
        let pin_dir = match &options.pin_root {
            Some(root) => {
                std::fs::create_dir_all(root).map_err(|source| {
                    DataplaneError::UnableToCreatePinDir {
                        path: root.clone(),
                        source,
                    }
                })?;
                if !is_bpffs(root) {
                    return Err(DataplaneError::NotOnBpffs { path: root.clone() });
                }
                let dir = root.join(LAYOUT_DIR);
                for d in [dir.clone(), dir.join("links")] {
                    std::fs::create_dir_all(&d).map_err(|source| {
                        DataplaneError::UnableToCreatePinDir {
                            path: d.clone(),
                            source,
                        }
                    })?;
                }
                Some(dir)
            }
            None => None,
        };
        let shapes = adoption::expected_shapes(OBJECT)?;
        let adoption = match &pin_dir {
            Some(dir) => adoption::vet(dir, &shapes)?,
            None => Adoption::Fresh,
        };
        if let Adoption::Replaced { reasons } = &adoption {
            for reason in reasons {
                tracing::warn!(
                    pins = %pin_dir.as_deref().unwrap_or(Path::new("")).display(),
                    "the pinned maps are not adopted: {reason}"
                );
            }
            tracing::warn!(
                "every pinned map was removed: fresh maps are created and filled completely by the next apply"
            );
        }
        let mut loader = EbpfLoader::new();
        if let Some(dir) = &pin_dir {
            for name in ALL_MAPS {
                loader.map_pin_path(name, dir.join(name));
            }
        }
        let mut ebpf = loader
            .load(OBJECT)
            .map_err(|e| DataplaneError::UnableToLoadObject(Box::new(e)))?;
        let mut maps = adoption::check_loaded(&ebpf, &shapes, pin_dir.as_deref())?;
        if let Some(dir) = &pin_dir {
            let adopted_manifest = matches!(adoption, Adoption::Adopted { manifest: true });
            maps.push(adoption::pin_manifest(dir, &maps, adopted_manifest)?);
        }
        programs::load_all(&mut ebpf)?;
        let links_dir = pin_dir.as_ref().map(|dir| dir.join("links"));
        let mut dp = Dataplane {
            ebpf,
            pin_dir,
            allow_root_cgroup: options.allow_root_cgroup,
            links: Arc::new(Mutex::new(LinkSet::new(links_dir))),
            maps: Arc::new(maps),
            replaced_maps: match adoption {
                Adoption::Replaced { reasons } => Some(reasons),
                _ => None,
            },
            cgroups: BTreeMap::new(),
            written: [None, None],
            match_states_written: [None, None],
            name_key: None,
            staged: None,
        };
        let cfg = dp.config()?;
        if cfg.generation == 0 && cfg.enabled == 0 {
            // Fresh maps: the zeroed CONFIG would mean `--unmanaged deny`;
            // the default is allow.
            dp.write_config(Config {
                unmanaged: Mode::Off as u8,
                ..cfg
            })?;
        }
        dp.cgroups = dp.read_active_cgroups()?;
        Ok(dp)
    }

    /// Where maps and links are pinned, if anywhere.
    pub fn pin_dir(&self) -> Option<&Path> {
        self.pin_dir.as_deref()
    }

    /// Attaches every program to `cgroup_dir` (a cgroup v2 directory; the
    /// root only with [`DataplaneOptions::allow_root_cgroup`]). With pinning, each link is pinned, replacing (and then
    /// detaching) a link pinned by an earlier process, so there is no gap
    /// without enforcement.
    pub fn attach(&mut self, cgroup_dir: &Path) -> Result<()> {
        if !self.allow_root_cgroup && !cgroup_dir.join("cgroup.type").exists() {
            // Every cgroup v2 directory but the root has cgroup.type.
            return Err(DataplaneError::RefusingRootCgroup {
                path: cgroup_dir.to_owned(),
            });
        }
        let cgroup =
            File::open(cgroup_dir).map_err(|source| DataplaneError::UnableToOpenCgroup {
                path: cgroup_dir.to_owned(),
                source,
            })?;
        let cgroup_id =
            std::os::unix::fs::MetadataExt::ino(&cgroup.metadata().map_err(|source| {
                DataplaneError::UnableToOpenCgroup {
                    path: cgroup_dir.to_owned(),
                    source,
                }
            })?);
        let cgroup = Arc::new(cgroup);
        for program in PROGRAMS {
            let target = Target::Cgroup {
                dir: Arc::clone(&cgroup),
                path: cgroup_dir.to_owned(),
                cgroup_id,
                attach_type: program.attach_type as u32,
            };
            let fd = programs::program_fd(&self.ebpf, program.name)?;
            let link = KeptLink::attach(program.name, program.hook, fd, target).map_err(|e| {
                DataplaneError::UnableToAttach {
                    program: program.name,
                    path: cgroup_dir.to_owned(),
                    source: Box::new(syscall_error("bpf_link_create", e)),
                }
            })?;
            self.link_set().keep(link)?;
        }
        Ok(())
    }

    fn link_set(&self) -> std::sync::MutexGuard<'_, LinkSet> {
        self.links.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A monitor of this value's links and pins, to run
    /// [`IntegrityMonitor::check`] on from another thread (the daemon:
    /// every half second, without its engine's lock).
    pub fn integrity_monitor(&self) -> IntegrityMonitor {
        IntegrityMonitor::new(Arc::clone(&self.links), Arc::clone(&self.maps))
    }

    /// Why the maps pinned by an earlier process were removed at load
    /// instead of adopted (a map of the wrong shape, a missing one, one
    /// the manifest does not name...), when they were.
    pub fn replaced_maps(&self) -> Option<&[String]> {
        self.replaced_maps.as_deref()
    }

    /// Registers cgroups in the kernel at their creation from now on, in
    /// every slot whose automaton [`Dataplane::stage`] writes: loads the
    /// cgroup tracer against this kernel's BTF, writes its settings (the
    /// name hash key of an adopted tracer is kept: its tables are hashed
    /// with it) and attaches it, pinned like the other programs.
    pub fn enable_registration(&mut self, limits: RegistrationLimits) -> Result<()> {
        registration::load_tracers(&mut self.ebpf)?;
        let key = registration::configure(&mut self.ebpf, limits)?;
        for (name, hook, _) in registration::TRACERS {
            let fd = programs::program_fd(&self.ebpf, name)?;
            let link = KeptLink::attach(name, hook, fd, Target::Tracepoint).map_err(|e| {
                DataplaneError::UnableToAttachTracer {
                    program: name,
                    source: Box::new(syscall_error("bpf_raw_tracepoint_open", e)),
                }
            })?;
            self.link_set().keep(link)?;
        }
        self.name_key = Some(key);
        Ok(())
    }

    /// The key of the tracer's name hash, once registration is enabled:
    /// what [`crate::cgroups::Automaton::kernel_tables`] hashes names with.
    pub fn name_key(&self) -> Option<[u64; 2]> {
        self.name_key
    }

    /// Drops this value's links: unpinned ones are detached, pinned ones
    /// stay attached through their pins (see [`Dataplane::uninstall`]).
    pub fn detach(&mut self) {
        self.link_set().clear();
    }

    /// The current settings and policy generation.
    pub fn config(&self) -> Result<Config> {
        let name = maps::CONFIG;
        let m: Array<&MapData, Config> = Array::try_from(
            self.ebpf
                .map(name)
                .ok_or(DataplaneError::MissingMap(name))?,
        )
        .map_err(type_err(name))?;
        m.get(&0, 0).map_err(read_err(name))
    }

    /// Writes `CONFIG`, always with this host's tick rate: a `CONFIG`
    /// adopted from an earlier daemon may lack it.
    fn write_config(&mut self, cfg: Config) -> Result<()> {
        let cfg = Config {
            jiffies_per_second: ticks::jiffies_per_second(),
            ..cfg
        };
        let name = maps::CONFIG;
        self.array_mut::<Config>(name)?
            .set(0, cfg, 0)
            .map_err(write_err(name))
    }

    /// Bumps the generation so that every flow is judged again at its next
    /// packet.
    fn bump_generation(&mut self, change: impl FnOnce(&mut Config)) -> Result<u32> {
        let mut cfg = self.config()?;
        cfg.generation = cfg.generation.wrapping_add(1).max(1);
        change(&mut cfg);
        self.write_config(cfg)?;
        Ok(cfg.generation)
    }

    /// Puts a policy in force: checks it fits, turns the inactive slot into
    /// the policy, then flips `CONFIG` in one update (new slot, new
    /// generation, enabled). Returns the new generation. On error the
    /// running policy is untouched.
    ///
    /// The inactive slot holds the policy of two applies ago: when this
    /// value wrote it, only the entries that differ are written (a small
    /// change costs little, whatever the policy's size); otherwise the slot
    /// is emptied and filled.
    pub fn apply(
        &mut self,
        policy: &CompiledPolicy,
        cgroups: &[ResolvedCgroup],
        host: &HostAddrs,
    ) -> Result<u32> {
        self.apply_content(SlotContent::of(policy, cgroups, host), stamp_of(policy))
    }

    /// [`Dataplane::apply`] of a slot's content as it is, recorded in
    /// `SLOT_POLICIES` as `stamp`: how a policy known only from the kernel
    /// (adopted from the pins and read back with [`Dataplane::read_slot`])
    /// is put in force again.
    pub fn apply_content(&mut self, content: SlotContent, stamp: SlotPolicy) -> Result<u32> {
        let cgroups: Vec<ResolvedCgroup> = content
            .cgroups
            .iter()
            .map(|&(cgroup_id, e)| ResolvedCgroup {
                cgroup_id,
                workload: e.workload,
                class: e.class,
                mode: e.mode,
            })
            .collect();
        self.stage_content(content, stamp, None)?;
        self.stage_cgroups(&cgroups, None)?;
        self.commit()
    }

    /// The first step of an apply in steps (what [`Dataplane::apply`] does
    /// at once): checks the policy fits, then writes its addresses,
    /// verdicts and (with `tables`, when registration is enabled) the
    /// cgroup tracer's automaton into the inactive slot. Nothing is in
    /// force until [`Dataplane::commit`]; on error the running policy is
    /// untouched. Returns the slot being written.
    pub fn stage(
        &mut self,
        policy: &CompiledPolicy,
        host: &HostAddrs,
        tables: Option<&crate::cgroups::automaton::KernelTables>,
    ) -> Result<usize> {
        self.stage_content(SlotContent::of(policy, &[], host), stamp_of(policy), tables)
    }

    /// [`Dataplane::stage`] of a slot's tries as they are (its cgroups
    /// follow in [`Dataplane::stage_cgroups`]).
    fn stage_content(
        &mut self,
        content: SlotContent,
        stamp: SlotPolicy,
        tables: Option<&crate::cgroups::automaton::KernelTables>,
    ) -> Result<usize> {
        slots::check_capacity(&content)?;
        if let Some(tables) = tables {
            registration::check_capacity(tables)?;
        }
        let cfg = self.config()?;
        let inactive = if cfg.enabled != 0 && cfg.active_slot == 0 {
            1
        } else {
            0
        };
        self.staged = None;
        // Unknown until the write succeeds: a failure leaves it unknown,
        // in this value and in the kernel's record.
        self.write_slot_policy(inactive, SlotPolicy::default())?;
        match self.written[inactive].take() {
            Some(old) => slots::update_slot(&mut self.ebpf, inactive, &old, &content)?,
            None => slots::replace_slot(&mut self.ebpf, inactive, &content)?,
        }
        // Empty tables for a slot without matching: the tracer registers
        // nothing there.
        let empty = crate::cgroups::automaton::KernelTables::default();
        let written = self.match_states_written[inactive].take();
        self.match_states_written[inactive] = Some(registration::write_tables(
            &mut self.ebpf,
            inactive,
            tables.unwrap_or(&empty),
            written,
        )?);
        self.staged = Some(Staged {
            slot: inactive,
            content: Box::new(content),
            stamp,
        });
        Ok(inactive)
    }

    /// Writes the cgroups of the staged slot: exactly `cgroups` in its
    /// cgroup map (whatever the tracer added meanwhile), their counts for
    /// the tracer's quota, and, with `states`, every cgroup's automaton
    /// states for the tracer. May run several times between
    /// [`Dataplane::stage`] and [`Dataplane::commit`]: a cgroup created
    /// while the states were written may have been matched with stale ones,
    /// and a pass over a newer tree corrects it.
    pub fn stage_cgroups(
        &mut self,
        cgroups: &[ResolvedCgroup],
        states: Option<&BTreeMap<u64, crate::cgroups::CgroupStates>>,
    ) -> Result<()> {
        let Some(staged) = self.staged.as_mut() else {
            return Err(DataplaneError::InvalidSetting(
                "stage_cgroups without a staged policy".into(),
            ));
        };
        let slot = staged.slot;
        error::ensure_capacity(&[(
            maps::CGROUPS[slot],
            cgroups.len(),
            enforcer_common::capacity::MAX_CGROUPS,
        )])?;
        let mut entries: Vec<(u64, enforcer_common::workload::CgroupEntry)> =
            cgroups.iter().map(|c| (c.cgroup_id, c.entry())).collect();
        entries.sort_unstable_by_key(|e| e.0);
        entries.dedup_by_key(|e| e.0);
        staged.content.cgroups = entries;
        registration::write_cgroups(&mut self.ebpf, slot, cgroups)?;
        registration::write_counts(&self.ebpf, slot, cgroups)?;
        if let Some(states) = states {
            registration::write_states(&mut self.ebpf, slot, states)?;
        }
        Ok(())
    }

    /// Puts the staged slot in force: records it in `SLOT_POLICIES`, then
    /// flips `CONFIG` in one update (new slot, new generation, enabled).
    /// Returns the new generation.
    pub fn commit(&mut self) -> Result<u32> {
        let Some(Staged {
            slot,
            content,
            stamp,
        }) = self.staged.take()
        else {
            return Err(DataplaneError::InvalidSetting(
                "commit without a staged policy".into(),
            ));
        };
        self.write_slot_policy(slot, stamp)?;
        let cgroups = content
            .cgroups
            .iter()
            .map(|&(cgroup_id, e)| {
                (
                    cgroup_id,
                    ResolvedCgroup {
                        cgroup_id,
                        workload: e.workload,
                        class: e.class,
                        mode: e.mode,
                    },
                )
            })
            .collect();
        self.written[slot] = Some(content);
        let generation = self.bump_generation(|c| {
            c.active_slot = slot as u32;
            c.enabled = 1;
        })?;
        self.cgroups = cgroups;
        tracing::debug!(generation, slot, "policy applied");
        Ok(generation)
    }

    /// Which policy slot `slot` holds, as recorded by the daemon that wrote
    /// it; `None` when unknown (never recorded, or a write that did not
    /// finish).
    pub fn slot_policy(&self, slot: usize) -> Result<Option<SlotPolicy>> {
        let name = maps::SLOT_POLICIES;
        let m: Array<&MapData, SlotPolicy> = Array::try_from(
            self.ebpf
                .map(name)
                .ok_or(DataplaneError::MissingMap(name))?,
        )
        .map_err(type_err(name))?;
        let stamp = m.get(&((slot & 1) as u32), 0).map_err(read_err(name))?;
        Ok((stamp.applied_unix_ms != 0).then_some(stamp))
    }

    /// The recorded policy of the slot in force; `None` when nothing is
    /// enforced or the record is unknown.
    pub fn policy_in_force(&self) -> Result<Option<SlotPolicy>> {
        let cfg = self.config()?;
        if cfg.enabled == 0 {
            return Ok(None);
        }
        self.slot_policy(cfg.active_slot as usize)
    }

    fn write_slot_policy(&mut self, slot: usize, stamp: SlotPolicy) -> Result<()> {
        let name = maps::SLOT_POLICIES;
        self.array_mut::<SlotPolicy>(name)?
            .set((slot & 1) as u32, stamp, 0)
            .map_err(write_err(name))
    }

    /// Stops enforcing (every program allows everything) without detaching.
    pub fn disable(&mut self) -> Result<u32> {
        self.bump_generation(|c| c.enabled = 0)
    }

    /// Enforces the last applied policy again after [`Dataplane::disable`].
    /// Does nothing before the first `apply` (there is no policy yet).
    pub fn enable(&mut self) -> Result<u32> {
        let cfg = self.config()?;
        if cfg.generation == 0 {
            return Ok(0);
        }
        self.bump_generation(|c| c.enabled = 1)
    }

    /// Sets the `--unmanaged` mode. Flows are judged again.
    pub fn set_unmanaged(&mut self, mode: UnmanagedMode) -> Result<u32> {
        self.bump_generation(|c| c.unmanaged = mode.as_config())
    }

    /// Replaces the failsafe ports. Flows are judged again.
    pub fn set_failsafe(&mut self, ports: &[FailsafePort]) -> Result<u32> {
        error::ensure_capacity(&[(maps::FAILSAFE, ports.len(), MAX_FAILSAFE_PORTS)])?;
        slots::clear_hash::<PortKey, u8>(&mut self.ebpf, maps::FAILSAFE)?;
        let name = maps::FAILSAFE;
        let mut m: HashMap<&mut MapData, PortKey, u8> = self.hash_map_mut(name)?;
        for p in ports {
            let key = PortKey {
                protocol: p.protocol,
                _pad: 0,
                port: p.port,
            };
            m.insert(key, 1, 0).map_err(write_err(name))?;
        }
        self.bump_generation(|_| {})
    }

    fn active_slot(&self) -> Result<usize> {
        Ok(self.config()?.active_slot as usize & 1)
    }

    fn read_active_cgroups(&self) -> Result<BTreeMap<u64, ResolvedCgroup>> {
        let slot = self.active_slot()?;
        let name = maps::CGROUPS[slot];
        let m: HashMap<&MapData, u64, enforcer_common::workload::CgroupEntry> =
            self.hash_map(name)?;
        let mut out = BTreeMap::new();
        for item in m.iter() {
            let (id, e) = item.map_err(read_err(name))?;
            out.insert(
                id,
                ResolvedCgroup {
                    cgroup_id: id,
                    workload: e.workload,
                    class: e.class,
                    mode: e.mode,
                },
            );
        }
        Ok(out)
    }

    /// Makes the policy in force hold exactly these cgroups (whatever the
    /// tracer added or removed meanwhile), their counts and, with
    /// `states`, their automaton states: the daemon's reconciliation after
    /// a change of the cgroup tree. Flows are judged again when a cgroup
    /// entry changed. Returns whether one did.
    pub fn sync_cgroups(
        &mut self,
        cgroups: &[ResolvedCgroup],
        states: Option<&BTreeMap<u64, crate::cgroups::CgroupStates>>,
    ) -> Result<bool> {
        let slot = self.active_slot()?;
        let changed = registration::write_cgroups(&mut self.ebpf, slot, cgroups)?;
        registration::write_counts(&self.ebpf, slot, cgroups)?;
        if let Some(states) = states {
            registration::write_states(&mut self.ebpf, slot, states)?;
        }
        let entries: Vec<(u64, enforcer_common::workload::CgroupEntry)> = {
            let mut e: Vec<_> = cgroups.iter().map(|c| (c.cgroup_id, c.entry())).collect();
            e.sort_unstable_by_key(|e| e.0);
            e.dedup_by_key(|e| e.0);
            e
        };
        if let Some(content) = self.written[slot].as_mut() {
            content.cgroups = entries;
        }
        self.cgroups = cgroups.iter().map(|c| (c.cgroup_id, *c)).collect();
        if changed {
            self.bump_generation(|_| {})?;
        }
        Ok(changed)
    }

    /// Adds (or updates) one cgroup in the policy in force, for the
    /// daemon's cgroup watcher. The inactive slot is rewritten completely by
    /// the next [`Dataplane::apply`], which receives the full list. Flows
    /// are judged again, since processes in the cgroup were `host` before.
    pub fn add_cgroup(&mut self, cgroup: ResolvedCgroup) -> Result<u32> {
        let slot = self.active_slot()?;
        let known = self.written[slot].take();
        slots::put_cgroup(&mut self.ebpf, slot, &cgroup)?;
        self.written[slot] = known.map(|mut content| {
            content.put_cgroup(&cgroup);
            content
        });
        self.cgroups.insert(cgroup.cgroup_id, cgroup);
        self.bump_generation(|_| {})
    }

    /// Removes one cgroup from the policy in force.
    pub fn remove_cgroup(&mut self, cgroup_id: u64) -> Result<u32> {
        let slot = self.active_slot()?;
        let known = self.written[slot].take();
        slots::delete_cgroup(&mut self.ebpf, slot, cgroup_id)?;
        self.written[slot] = known.map(|mut content| {
            content.remove_cgroup(cgroup_id);
            content
        });
        self.cgroups.remove(&cgroup_id);
        self.bump_generation(|_| {})
    }

    /// What policy slot `slot` (0 or 1) holds in the kernel, read back
    /// from the maps (tests and diagnostics; it reads every entry).
    pub fn read_slot(&self, slot: usize) -> Result<SlotContent> {
        slots::read_slot(&self.ebpf, slot & 1)
    }

    /// Which slot is in force (0 or 1).
    pub fn active_slot_index(&self) -> Result<usize> {
        self.active_slot()
    }

    /// Whether this value knows what `slot` holds, so that the next
    /// `apply` into it writes only the differences.
    pub fn knows_slot(&self, slot: usize) -> bool {
        self.written[slot & 1].is_some()
    }

    /// The cgroups of the policy in force.
    pub fn cgroups(&self) -> impl Iterator<Item = &ResolvedCgroup> {
        self.cgroups.values()
    }

    /// Takes the events ring buffer (once).
    pub fn take_events(&mut self) -> Result<EventReader> {
        let map = self
            .ebpf
            .take_map(maps::EVENTS)
            .ok_or(DataplaneError::EventsAlreadyTaken)?;
        EventReader::new(map)
    }

    /// Packets per (workload, action), summed over CPUs.
    pub fn counters(&self) -> Result<BTreeMap<(Identity, u8), u64>> {
        counters::read_counters(
            self.map(maps::COUNTERS)?,
            self.map(maps::WORKLOAD_COUNTERS)?,
        )
    }

    /// The global counters, summed over CPUs.
    pub fn global_counters(&self) -> Result<GlobalCounters> {
        counters::read_global_counters(self.map(maps::GLOBAL_COUNTERS)?)
    }

    /// Handles of the counter maps of their own, to read counters without
    /// this value (and without the lock a daemon holds on it).
    pub fn counter_reader(&self) -> Result<CounterReader> {
        CounterReader::duplicate(
            self.map(maps::COUNTERS)?,
            self.map(maps::WORKLOAD_COUNTERS)?,
            self.map(maps::GLOBAL_COUNTERS)?,
        )
    }

    /// A map of the object.
    fn map(&self, name: &'static str) -> Result<&Map> {
        self.ebpf.map(name).ok_or(DataplaneError::MissingMap(name))
    }

    /// A hash map of the object, read-only.
    fn hash_map<K: aya::Pod, V: aya::Pod>(
        &self,
        name: &'static str,
    ) -> Result<HashMap<&MapData, K, V>> {
        let map = self
            .ebpf
            .map(name)
            .ok_or(DataplaneError::MissingMap(name))?;
        HashMap::try_from(map).map_err(type_err(name))
    }

    /// A hash map of the object, writable.
    fn hash_map_mut<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<HashMap<&mut MapData, K, V>> {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(DataplaneError::MissingMap(name))?;
        HashMap::try_from(map).map_err(type_err(name))
    }

    fn array_mut<V: aya::Pod>(&mut self, name: &'static str) -> Result<Array<&mut MapData, V>> {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(DataplaneError::MissingMap(name))?;
        Array::try_from(map).map_err(type_err(name))
    }

    /// Every tracked connection.
    pub fn flows(&self) -> Result<Vec<(FlowKey, FlowValue)>> {
        let name = maps::FLOWS;
        let m: HashMap<&MapData, FlowKey, FlowValue> = self.hash_map(name)?;
        m.iter().collect::<Result<_, _>>().map_err(read_err(name))
    }

    /// The tracked connection with this key, if any.
    pub fn flow(&self, key: &FlowKey) -> Result<Option<FlowValue>> {
        let name = maps::FLOWS;
        let m: HashMap<&MapData, FlowKey, FlowValue> = self.hash_map(name)?;
        match m.get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(read_err(name)(e)),
        }
    }

    /// The flow the kernel keeps on a connected TCP socket of this process
    /// (`SOCKET_FLOWS`), if it has one: a connection that `connect()`
    /// opened to an allowed remote destination usually has none (the
    /// verdict cache recognises its packets).
    pub fn socket_flow(&self, socket: BorrowedFd<'_>) -> Result<Option<FlowValue>> {
        let name = maps::SOCKET_FLOWS;
        let Some(Map::SkStorage(map)) = self.ebpf.map(name) else {
            return Err(DataplaneError::MissingMap(name));
        };
        // Socket storage is keyed by a socket file descriptor of the caller;
        // aya has no typed wrapper for it, so this is the plain lookup.
        let key: i32 = socket.as_raw_fd();
        let mut value = std::mem::MaybeUninit::<FlowValue>::zeroed();
        let mut attr = [0u64; 4];
        attr[0] = u64::from(map.fd().as_fd().as_raw_fd() as u32);
        attr[1] = std::ptr::from_ref(&key) as u64;
        attr[2] = value.as_mut_ptr() as u64;
        // SAFETY: BPF_MAP_LOOKUP_ELEM reads the key and writes one value of
        // the map's value size (`FlowValue`: the map was created from the
        // kernel object built with this crate) into `value`.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_ELEM,
                attr.as_mut_ptr(),
                std::mem::size_of_val(&attr),
            )
        };
        if rc == 0 {
            // SAFETY: the kernel wrote a whole value; any bit pattern is a
            // valid `FlowValue` (plain integers).
            return Ok(Some(unsafe { value.assume_init() }));
        }
        let io_error = std::io::Error::last_os_error();
        if io_error.raw_os_error() == Some(libc::ENOENT) {
            return Ok(None);
        }
        Err(read_err(name)(aya::maps::MapError::SyscallError(
            aya::sys::SyscallError {
                call: "bpf_map_lookup_elem",
                io_error,
            },
        )))
    }

    /// Forgets every tracked connection (tests and benchmarks).
    pub fn clear_flows(&mut self) -> Result<()> {
        slots::clear_hash::<FlowKey, FlowValue>(&mut self.ebpf, maps::FLOWS)
    }

    /// Empties the verdict cache (tests): each connection it recognised is
    /// judged again at its next packet, and keeps its flow on its socket.
    pub fn clear_cached_verdicts(&mut self) -> Result<()> {
        let name = maps::CACHED_VERDICTS;
        let mut m = self.array_mut::<CachedVerdict>(name)?;
        for index in 0..CACHED_VERDICT_SLOTS {
            m.set(index, CachedVerdict::NEVER_WRITTEN, 0)
                .map_err(write_err(name))?;
        }
        Ok(())
    }

    /// The bound ports learned from `bind()`, in every network namespace.
    pub fn bound_ports(&self) -> Result<Vec<(BoundPortKey, BoundPort)>> {
        let name = maps::BOUND_PORTS;
        let m: HashMap<&MapData, BoundPortKey, BoundPort> = self.hash_map(name)?;
        m.iter().collect::<Result<_, _>>().map_err(read_err(name))
    }

    /// Records ports of the network namespace `netns` (the daemon's) that
    /// were bound before the programs saw their `bind()` (services started
    /// before the daemon), as `(protocol, port, cgroup id)`. An entry the
    /// kernel wrote is authoritative and kept. Seeded entries carry cookie 0
    /// (no socket has it), so no `sock_release` ever forgets them: a seeded
    /// entry whose port is not in `ports` any more is removed here instead.
    /// Then clears the `TCP_BOUND_PORT_BITS` of ports no namespace holds any
    /// more (the kernel only sets them). Returns how many entries were
    /// added.
    pub fn seed_bound_ports(&mut self, netns: u64, ports: &[(u8, u16, u64)]) -> Result<usize> {
        let name = maps::BOUND_PORTS;
        let mut m: HashMap<&mut MapData, BoundPortKey, BoundPort> = self.hash_map_mut(name)?;
        let key = |protocol: u8, port: u16| BoundPortKey {
            netns,
            protocol,
            _pad: 0,
            port,
            _pad2: 0,
        };
        let wanted: std::collections::BTreeSet<(u8, u16)> =
            ports.iter().map(|&(p, port, _)| (p, port)).collect();
        let existing: Vec<(BoundPortKey, BoundPort)> =
            m.iter().collect::<Result<_, _>>().map_err(read_err(name))?;
        for (k, v) in &existing {
            if k.netns == netns && v.cookie == 0 && !wanted.contains(&(k.protocol, k.port)) {
                slots::removed(m.remove(k), name)?;
            }
        }
        // `BPF_NOEXIST` from the kernel's uapi (not in the libc crate).
        const BPF_NOEXIST: u64 = 1;
        let mut added = 0;
        // The per-packet path tests TCP ports in a bitmap beside the table.
        let mut tcp_bits = Vec::new();
        for &(protocol, port, cgroup_id) in ports {
            // BPF_NOEXIST: a socket bound meanwhile (the kernel's entry)
            // wins over what the scan saw.
            match m.insert(
                key(protocol, port),
                BoundPort {
                    cgroup_id,
                    cookie: 0,
                },
                BPF_NOEXIST,
            ) {
                Ok(()) => added += 1,
                Err(aya::maps::MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => return Err(write_err(name)(e)),
            }
            if protocol == Protocol::Tcp as u8 {
                tcp_bits.push((port, true));
            }
        }
        // What every namespace holds now, read after the writes: a bit is
        // cleared only for a port none holds. A port bound between this read
        // and the clear loses its bit until the first SYN to its listener
        // marks it again (`enforcer-ebpf/src/skb/socket.rs`).
        let held: std::collections::BTreeSet<u16> = m
            .keys()
            .collect::<Result<Vec<_>, _>>()
            .map_err(read_err(name))?
            .into_iter()
            .filter(|k| k.protocol == Protocol::Tcp as u8)
            .map(|k| k.port)
            .collect();
        let bits = self.array_map_data(maps::TCP_BOUND_PORT_BITS)?;
        port_bits::mark(bits, &tcp_bits)?;
        port_bits::keep_only(bits, &held)?;
        Ok(added)
    }

    /// Whether the per-packet path takes this TCP port for one that a
    /// socket of this host bound (`TCP_BOUND_PORT_BITS`).
    pub fn tcp_port_marked_bound(&self, port: u16) -> Result<bool> {
        port_bits::is_marked(self.array_map_data(maps::TCP_BOUND_PORT_BITS)?, port)
    }

    /// An array map's handle, for what aya has no typed access to.
    fn array_map_data(&self, name: &'static str) -> Result<&MapData> {
        match self.ebpf.map(name) {
            Some(Map::Array(data)) => Ok(data),
            // The object defines it as an array: another type is not it.
            _ => Err(DataplaneError::MissingMap(name)),
        }
    }

    /// Removes everything pinned under `<pin_root>/v<LAYOUT_VERSION>`, and
    /// under the directories of earlier layouts: links (which detaches the
    /// programs from their cgroup once no process holds them) and maps. A
    /// no-op when nothing is pinned.
    pub fn uninstall(pin_root: &Path) -> Result<()> {
        for dir in older_layout_dirs(pin_root) {
            uninstall_dir(&dir)?;
        }
        uninstall_dir(&pin_root.join(LAYOUT_DIR))
    }

    /// Detaches and unpins what a binary of an earlier map layout left
    /// under this value's pin root (`<pin_root>/v1/` ...): its programs
    /// would otherwise keep enforcing its last policy beside this one's.
    /// Call it once this value's programs are attached with a policy in
    /// force, so that the host is never left without enforcement. Returns
    /// the directories removed.
    pub fn retire_older_layouts(&self) -> Result<Vec<PathBuf>> {
        let Some(root) = self.pin_dir.as_deref().and_then(Path::parent) else {
            return Ok(Vec::new());
        };
        let dirs = older_layout_dirs(root);
        for dir in &dirs {
            uninstall_dir(dir)?;
        }
        Ok(dirs)
    }
}

/// What `SLOT_POLICIES` records for a policy put in force now.
fn stamp_of(policy: &CompiledPolicy) -> SlotPolicy {
    SlotPolicy {
        content_hash: policy.content_hash,
        applied_unix_ms: unix_ms(std::time::SystemTime::now()),
    }
}

/// Milliseconds since the Unix epoch (0 before it, which no clock shows).
fn unix_ms(time: std::time::SystemTime) -> u64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The pin directories of earlier layouts present under `pin_root`.
fn older_layout_dirs(pin_root: &Path) -> Vec<PathBuf> {
    (1..enforcer_common::layout::LAYOUT_VERSION)
        .map(|v| pin_root.join(format!("v{v}")))
        .filter(|d| d.is_dir())
        .collect()
}

/// Unpins the links (detaching them) and the maps of one layout directory.
/// Map names are those of this layout: an earlier layout pinned a subset
/// of them, and names that are absent are skipped; anything else left makes
/// the directory removal fail with its error.
fn uninstall_dir(dir: &Path) -> Result<()> {
    let links = dir.join("links");
    if let Ok(entries) = std::fs::read_dir(&links) {
        for entry in entries.flatten() {
            // Unpinning a link that no process holds detaches it.
            let path = entry.path();
            std::fs::remove_file(&path)
                .map_err(|source| DataplaneError::UnableToUnpin { path, source })?;
        }
    }
    let remove = |path: &Path| -> Result<()> {
        match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(DataplaneError::UnableToUnpin {
                path: path.to_owned(),
                source,
            }),
        }
    };
    for name in ALL_MAPS.iter().chain(std::iter::once(&adoption::MANIFEST)) {
        remove(&dir.join(name))?;
    }
    for d in [links, dir.to_path_buf()] {
        match std::fs::remove_dir(&d) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(DataplaneError::UnableToUnpin { path: d, source }),
        }
    }
    Ok(())
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

    #[test]
    fn parses_failsafe_lists() {
        use enforcer_common::protocol::Protocol;
        assert_eq!(
            FailsafePort::parse_list("22/tcp, 53/udp,22/tcp").unwrap(),
            vec![
                FailsafePort {
                    protocol: Protocol::Tcp as u8,
                    port: 22
                },
                FailsafePort {
                    protocol: Protocol::Udp as u8,
                    port: 53
                },
            ]
        );
        assert_eq!(FailsafePort::parse_list("none").unwrap(), vec![]);
        for bad in ["22", "22/icmp", "0/tcp", "70000/tcp", "", "ssh/tcp"] {
            assert!(FailsafePort::parse_list(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unmanaged_modes_map_to_the_kernel_constants() {
        assert_eq!(UnmanagedMode::Allow.as_config(), Mode::Off as u8);
        assert_eq!(UnmanagedMode::Audit.as_config(), Mode::Audit as u8);
        assert_eq!(UnmanagedMode::Deny.as_config(), Mode::Enforce as u8);
        assert_eq!(UnmanagedMode::default(), UnmanagedMode::Allow);
    }
}
