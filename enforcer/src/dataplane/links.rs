//! The links that attach the programs, held by this process: each one's
//! own descriptor (so that removing its pin detaches nothing while the
//! process runs), its pin, and what it takes to attach it again.

use std::{
    fs::File,
    io,
    os::fd::{AsFd as _, OwnedFd},
    path::PathBuf,
    sync::Arc,
};

use super::{
    bpf_sys::{self, LinkInfo},
    error::{DataplaneError, Result},
    pins::{self, PinDir},
};

/// Where a link attaches.
#[derive(Clone, Debug)]
pub(crate) enum Target {
    /// A cgroup v2 directory (kept open), with the cgroup's id and the
    /// program's attach type.
    Cgroup {
        dir: Arc<File>,
        path: PathBuf,
        cgroup_id: u64,
        attach_type: u32,
    },
    /// The BTF tracepoint the program was loaded for.
    Tracepoint,
}

/// How a kept link is doing, from the kernel's information about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Health {
    Attached,
    /// Detached from its cgroup (`BPF_LINK_DETACH`).
    Detached,
    /// Running another program (`BPF_LINK_UPDATE`).
    Replaced,
}

/// One link of this process.
#[derive(Debug)]
pub(crate) struct KeptLink {
    /// The program's function name: the name of the link's pin.
    pub(crate) name: &'static str,
    /// The program's section (`cgroup_skb/egress`): what reports call it.
    pub(crate) hook: &'static str,
    /// A descriptor of the program, to attach it again.
    program: OwnedFd,
    prog_id: u32,
    target: Target,
    link: OwnedFd,
    id: u32,
}

impl KeptLink {
    /// Attaches `program` to `target`.
    pub(crate) fn attach(
        name: &'static str,
        hook: &'static str,
        program: OwnedFd,
        target: Target,
    ) -> io::Result<KeptLink> {
        let (link, info) = new_link(&program, &target)?;
        Ok(KeptLink {
            name,
            hook,
            program,
            prog_id: info.prog_id,
            target,
            link,
            id: info.id,
        })
    }

    /// The kernel's id of the link.
    pub(crate) fn id(&self) -> u32 {
        self.id
    }

    pub(crate) fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.link.as_fd()
    }

    /// One system call: whether the link still runs its program where it
    /// must. A cgroup link detached by `BPF_LINK_DETACH` lives on, with no
    /// cgroup.
    pub(crate) fn health(&self) -> io::Result<Health> {
        let info = bpf_sys::link_info(self.link.as_fd())?;
        if info.prog_id != self.prog_id {
            return Ok(Health::Replaced);
        }
        Ok(match &self.target {
            Target::Cgroup {
                cgroup_id,
                attach_type,
                ..
            } if info.cgroup != Some((*cgroup_id, *attach_type)) => Health::Detached,
            _ => Health::Attached,
        })
    }

    /// Attaches the program again with a new link, which replaces this
    /// one's descriptor; the old link is detached (whoever else holds it).
    pub(crate) fn reattach(&mut self) -> io::Result<()> {
        if let Target::Cgroup {
            path, cgroup_id, ..
        } = &self.target
        {
            // The kernel detaches the links of a cgroup that is removed;
            // its open directory would still take a new one.
            let current = std::fs::metadata(path).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
            if current.ok() != Some(*cgroup_id) {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    "the cgroup was removed",
                ));
            }
        }
        let (link, info) = new_link(&self.program, &self.target)?;
        let old = std::mem::replace(&mut self.link, link);
        self.id = info.id;
        // Detached already, or running a program that is not ours: either
        // way it must not run on. A tracepoint link cannot be detached
        // (EOPNOTSUPP): closing the last descriptor ends it.
        let _ = bpf_sys::detach_link(old.as_fd());
        Ok(())
    }

    /// Where the program is attached, for messages.
    pub(crate) fn target_description(&self) -> String {
        match &self.target {
            Target::Cgroup { path, .. } => path.display().to_string(),
            Target::Tracepoint => "its tracepoint".to_owned(),
        }
    }
}

fn new_link(program: &OwnedFd, target: &Target) -> io::Result<(OwnedFd, LinkInfo)> {
    let link = match target {
        Target::Cgroup {
            dir, attach_type, ..
        } => bpf_sys::link_cgroup(program.as_fd(), dir.as_fd(), *attach_type)?,
        Target::Tracepoint => bpf_sys::link_tracepoint(program.as_fd())?,
    };
    let info = bpf_sys::link_info(link.as_fd())?;
    Ok((link, info))
}

/// Every link of this process, and where their pins go.
#[derive(Debug, Default)]
pub(crate) struct LinkSet {
    /// Where the links are pinned, when pinning.
    pins: Option<PinDir>,
    links: Vec<KeptLink>,
}

impl LinkSet {
    pub(crate) fn new(pins: Option<PinDir>) -> LinkSet {
        LinkSet {
            pins,
            links: Vec::new(),
        }
    }

    /// Keeps a new link: pinned (replacing, and then detaching, the link an
    /// earlier process or an earlier attach pinned for the same program,
    /// so there is no gap), and held.
    pub(crate) fn keep(&mut self, link: KeptLink) -> Result<()> {
        if let Some(path) = self.pins.as_ref().map(|dir| dir.link_pin(link.name)) {
            // Take the old link out of its pin but keep it attached until
            // the new one is pinned.
            let old = match bpf_sys::open_pin(&path) {
                Ok(fd) => Some(fd),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(source) => return Err(DataplaneError::UnableToAdoptLink { path, source }),
            };
            pins::put_link(link.fd(), &path).map_err(|source| DataplaneError::UnableToPinLink {
                program: link.name,
                path: path.clone(),
                source,
            })?;
            drop(old);
        }
        self.links.retain(|kept| kept.name != link.name);
        self.links.push(link);
        Ok(())
    }

    /// Drops this process's links: unpinned ones are detached, pinned ones
    /// stay attached through their pins.
    pub(crate) fn clear(&mut self) {
        self.links.clear();
    }

    pub(crate) fn links_mut(&mut self) -> &mut [KeptLink] {
        &mut self.links
    }

    pub(crate) fn pins(&self) -> Option<&PinDir> {
        self.pins.as_ref()
    }
}
