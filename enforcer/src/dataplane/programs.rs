//! The kernel programs in the object, and how each one attaches.

use std::os::fd::{AsFd as _, OwnedFd};

use aya::{
    Ebpf,
    programs::{CgroupSkb, CgroupSock, CgroupSockAddr, ProgramError},
};
use aya_obj::generated::bpf_attach_type;

use super::error::{DataplaneError, Result};

/// How a program is loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Skb,
    SockAddr,
    Sock,
}

/// A cgroup program of the object.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CgroupProgram {
    /// Its function name in `enforcer-ebpf`, also the name of its link pin.
    pub(crate) name: &'static str,
    pub(crate) kind: Kind,
    /// Its section, as operators and `bpftool` know it: what logs and
    /// `status` call its link.
    pub(crate) hook: &'static str,
    pub(crate) attach_type: bpf_attach_type,
}

const fn program(
    name: &'static str,
    kind: Kind,
    hook: &'static str,
    attach_type: bpf_attach_type,
) -> CgroupProgram {
    CgroupProgram {
        name,
        kind,
        hook,
        attach_type,
    }
}

/// Every cgroup program of the object.
pub(crate) const PROGRAMS: [CgroupProgram; 9] = {
    use bpf_attach_type::*;
    [
        program(
            "enforcer_egress",
            Kind::Skb,
            "cgroup_skb/egress",
            BPF_CGROUP_INET_EGRESS,
        ),
        program(
            "enforcer_ingress",
            Kind::Skb,
            "cgroup_skb/ingress",
            BPF_CGROUP_INET_INGRESS,
        ),
        program(
            "enforcer_connect4",
            Kind::SockAddr,
            "cgroup/connect4",
            BPF_CGROUP_INET4_CONNECT,
        ),
        program(
            "enforcer_connect6",
            Kind::SockAddr,
            "cgroup/connect6",
            BPF_CGROUP_INET6_CONNECT,
        ),
        program(
            "enforcer_sendmsg4",
            Kind::SockAddr,
            "cgroup/sendmsg4",
            BPF_CGROUP_UDP4_SENDMSG,
        ),
        program(
            "enforcer_sendmsg6",
            Kind::SockAddr,
            "cgroup/sendmsg6",
            BPF_CGROUP_UDP6_SENDMSG,
        ),
        program(
            "enforcer_post_bind4",
            Kind::Sock,
            "cgroup/post_bind4",
            BPF_CGROUP_INET4_POST_BIND,
        ),
        program(
            "enforcer_post_bind6",
            Kind::Sock,
            "cgroup/post_bind6",
            BPF_CGROUP_INET6_POST_BIND,
        ),
        program(
            "enforcer_sock_release",
            Kind::Sock,
            "cgroup/sock_release",
            BPF_CGROUP_INET_SOCK_RELEASE,
        ),
    ]
};

pub(crate) fn load_all(ebpf: &mut Ebpf) -> Result<()> {
    for CgroupProgram { name, kind, .. } in PROGRAMS {
        let program = ebpf
            .program_mut(name)
            .ok_or(DataplaneError::MissingProgram(name))?;
        let load_err = |source| DataplaneError::UnableToLoadProgram {
            program: name,
            source: Box::new(source),
        };
        match kind {
            Kind::Skb => {
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

/// A descriptor of a loaded program of its own, to attach it again later
/// without the [`Ebpf`] it belongs to.
pub(crate) fn program_fd(ebpf: &Ebpf, name: &'static str) -> Result<OwnedFd> {
    let fd = ebpf
        .program(name)
        .ok_or(DataplaneError::MissingProgram(name))?
        .fd()
        .map_err(|source| DataplaneError::UnableToLoadProgram {
            program: name,
            source: Box::new(source),
        })?;
    fd.as_fd()
        .try_clone_to_owned()
        .map_err(|source| DataplaneError::UnableToLoadProgram {
            program: name,
            source: Box::new(ProgramError::IOError(source)),
        })
}
