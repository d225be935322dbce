//! The kernel programs in the object, and how each one attaches.

use aya::{
    Ebpf,
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockAddr, ProgramError,
        links::{FdLink, LinkError},
    },
};

use super::error::{DataplaneError, Result};

/// How a program attaches to a cgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    SkbEgress,
    SkbIngress,
    SockAddr,
    Sock,
}

/// Every program of the object, by its function name in `enforcer-ebpf`.
pub(crate) const PROGRAMS: [(&str, Kind); 9] = [
    ("enforcer_egress", Kind::SkbEgress),
    ("enforcer_ingress", Kind::SkbIngress),
    ("enforcer_connect4", Kind::SockAddr),
    ("enforcer_connect6", Kind::SockAddr),
    ("enforcer_sendmsg4", Kind::SockAddr),
    ("enforcer_sendmsg6", Kind::SockAddr),
    ("enforcer_post_bind4", Kind::Sock),
    ("enforcer_post_bind6", Kind::Sock),
    ("enforcer_sock_release", Kind::Sock),
];

pub(crate) fn load_all(ebpf: &mut Ebpf) -> Result<()> {
    for (name, kind) in PROGRAMS {
        let program = ebpf
            .program_mut(name)
            .ok_or(DataplaneError::MissingProgram(name))?;
        let load_err = |source| DataplaneError::UnableToLoadProgram {
            program: name,
            source: Box::new(source),
        };
        match kind {
            Kind::SkbEgress | Kind::SkbIngress => {
                let p: &mut CgroupSkb = program.try_into().map_err(load_err)?;
                p.load().map_err(load_err)?;
            }
            Kind::SockAddr => {
                let p: &mut CgroupSockAddr = program.try_into().map_err(load_err)?;
                p.load().map_err(load_err)?;
            }
            Kind::Sock => {
                let p: &mut CgroupSock = program.try_into().map_err(load_err)?;
                p.load().map_err(load_err)?;
            }
        }
    }
    Ok(())
}

/// Attaches one program to the cgroup and hands back its link, detached
/// from the program so that it can be pinned or owned separately.
pub(crate) fn attach_one(
    ebpf: &mut Ebpf,
    name: &'static str,
    kind: Kind,
    cgroup: &std::fs::File,
    path: &std::path::Path,
) -> Result<FdLink> {
    let program = ebpf
        .program_mut(name)
        .ok_or(DataplaneError::MissingProgram(name))?;
    let err = |source: ProgramError| DataplaneError::UnableToAttach {
        program: name,
        path: path.to_owned(),
        source: Box::new(source),
    };
    let not_fd = |_: LinkError| DataplaneError::UnableToAttach {
        program: name,
        path: path.to_owned(),
        source: Box::new(ProgramError::UnexpectedProgramType),
    };
    // `Single` creates a bpf_link, which coexists with other programs on
    // the cgroup (AllowMultiple is rejected for links: see toolchain.md).
    let mode = CgroupAttachMode::Single;
    let link: FdLink = match kind {
        Kind::SkbEgress | Kind::SkbIngress => {
            let p: &mut CgroupSkb = program.try_into().map_err(err)?;
            let at = if kind == Kind::SkbEgress {
                CgroupSkbAttachType::Egress
            } else {
                CgroupSkbAttachType::Ingress
            };
            let id = p.attach(cgroup, at, mode).map_err(err)?;
            p.take_link(id).map_err(err)?.try_into().map_err(not_fd)?
        }
        Kind::SockAddr => {
            let p: &mut CgroupSockAddr = program.try_into().map_err(err)?;
            let id = p.attach(cgroup, mode).map_err(err)?;
            p.take_link(id).map_err(err)?.try_into().map_err(not_fd)?
        }
        Kind::Sock => {
            let p: &mut CgroupSock = program.try_into().map_err(err)?;
            let id = p.attach(cgroup, mode).map_err(err)?;
            p.take_link(id).map_err(err)?.try_into().map_err(not_fd)?
        }
    };
    Ok(link)
}
