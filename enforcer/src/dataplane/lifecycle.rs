//! Loading the object (adopting or replacing pinned maps), attaching the
//! programs, the cgroup tracer, and taking everything down again.

use std::{
    collections::BTreeMap,
    fs::File,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use aya::EbpfLoader;
use enforcer_common::{config::Config, map_names, workload::Mode};

use super::{
    Dataplane, DataplaneOptions, IntegrityMonitor, OBJECT, RegistrationLimits,
    adoption::{self, Adoption},
    error::{DataplaneError, Result},
    links::{KeptLink, LinkSet, Target},
    pins::{self, PinDir},
    programs::{self, PROGRAMS},
    registration,
};

/// An I/O error of a system call, as aya reports one.
fn syscall_error(call: &'static str, io_error: std::io::Error) -> aya::programs::ProgramError {
    aya::programs::ProgramError::SyscallError(aya::sys::SyscallError { call, io_error })
}

impl Dataplane {
    /// Loads the programs (not attached yet). With a pin root, maps already
    /// pinned there are reused, so policy, flows and counters survive a
    /// restart; missing ones are created and pinned.
    pub fn load(options: &DataplaneOptions) -> Result<Dataplane> {
        let pins = options
            .pin_root
            .as_deref()
            .map(PinDir::create)
            .transpose()?;
        let shapes = adoption::expected_shapes(OBJECT)?;
        let adoption = match &pins {
            Some(pins) => adoption::vet(pins, &shapes)?,
            None => Adoption::Fresh,
        };
        if let Adoption::Replaced { reasons } = &adoption {
            let dir = pins.as_ref().map_or(Path::new(""), PinDir::path);
            for reason in reasons {
                tracing::warn!(
                    pins = %dir.display(),
                    "the pinned maps are not adopted: {reason}"
                );
            }
            tracing::warn!(
                "every pinned map was removed: fresh maps are created and filled completely by the next apply"
            );
        }
        let mut loader = EbpfLoader::new();
        if let Some(pins) = &pins {
            for name in map_names::ALL {
                loader.map_pin_path(name, pins.map_pin(name));
            }
        }
        let mut ebpf = loader
            .load(OBJECT)
            .map_err(|e| DataplaneError::UnableToLoadObject(Box::new(e)))?;
        let mut maps = adoption::check_loaded(&ebpf, &shapes, pins.as_ref())?;
        if let Some(pins) = &pins {
            let adopted_manifest = matches!(adoption, Adoption::Adopted { manifest: true });
            maps.push(adoption::pin_manifest(pins, &maps, adopted_manifest)?);
        }
        programs::load_all(&mut ebpf)?;
        let mut dp = Dataplane {
            ebpf,
            links: Arc::new(Mutex::new(LinkSet::new(pins.clone()))),
            pins,
            allow_root_cgroup: options.allow_root_cgroup,
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

    /// Where maps and links are pinned (`<pin_root>/v<LAYOUT_VERSION>`), if
    /// anywhere.
    pub fn pin_dir(&self) -> Option<&Path> {
        self.pins.as_ref().map(PinDir::path)
    }

    /// Attaches every program to `cgroup_dir` (a cgroup v2 directory; the
    /// root only with [`DataplaneOptions::allow_root_cgroup`]). With
    /// pinning, each link is pinned, replacing (and then detaching) a link
    /// pinned by an earlier process, so there is no gap without
    /// enforcement.
    pub fn attach(&mut self, cgroup_dir: &Path) -> Result<()> {
        if !self.allow_root_cgroup && !cgroup_dir.join("cgroup.type").exists() {
            // Every cgroup v2 directory but the root has cgroup.type.
            return Err(DataplaneError::RefusingRootCgroup {
                path: cgroup_dir.to_owned(),
            });
        }
        let unable_to_open = |source| DataplaneError::UnableToOpenCgroup {
            path: cgroup_dir.to_owned(),
            source,
        };
        let cgroup = File::open(cgroup_dir).map_err(unable_to_open)?;
        let cgroup_id =
            std::os::unix::fs::MetadataExt::ino(&cgroup.metadata().map_err(unable_to_open)?);
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

    fn link_set(&self) -> MutexGuard<'_, LinkSet> {
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

    /// Removes everything pinned under `<pin_root>/v<LAYOUT_VERSION>`, and
    /// under the directories of earlier layouts: links (which detaches the
    /// programs from their cgroup once no process holds them) and maps. A
    /// no-op when nothing is pinned.
    pub fn uninstall(pin_root: &Path) -> Result<()> {
        pins::uninstall(pin_root)
    }

    /// Detaches and unpins what a binary of an earlier map layout left
    /// under this value's pin root (`<pin_root>/v1/` ...): its programs
    /// would otherwise keep enforcing its last policy beside this one's.
    /// Call it once this value's programs are attached with a policy in
    /// force, so that the host is never left without enforcement. Returns
    /// the directories removed.
    pub fn retire_older_layouts(&self) -> Result<Vec<PathBuf>> {
        let Some(pins) = &self.pins else {
            return Ok(Vec::new());
        };
        let older = pins.older_layouts();
        for dir in &older {
            dir.uninstall()?;
        }
        Ok(older.iter().map(|dir| dir.path().to_owned()).collect())
    }
}
