//! The few `bpf(2)` commands on links and pins that aya 0.14 keeps
//! private and that the data plane needs on descriptors of its own:
//! creating a link as a plain file descriptor (aya's link types do not
//! give theirs out, and the process keeps each link besides its pin),
//! pinning a link, opening a pin of any kind of object (aya opens only
//! maps and links it already knows the kind of), reading the kernel's
//! information about a link (aya's `LinkInfo` has no cgroup and attach
//! type), and detaching a link. Maps go through aya's typed API
//! (`handles`, `adoption`). The structures are the kernel's, from
//! `aya_obj`.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

use aya_obj::generated::{bpf_attr, bpf_cmd, bpf_link_info, bpf_link_type};

/// `bpf(cmd, attr)`: its non-negative result, or the errno.
fn sys_bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, zero-initialised `bpf_attr` whose pointers
    // (paths, info buffers) outlive the call; the kernel reads and writes
    // at most `size_of::<bpf_attr>()` bytes of it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            std::ptr::from_mut(attr),
            size_of::<bpf_attr>(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// A command that returns a new file descriptor.
fn fd_bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<OwnedFd> {
    let fd = sys_bpf(cmd, attr)?;
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("bpf() returned no descriptor"))?;
    // SAFETY: the command returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn zeroed_attr() -> bpf_attr {
    // SAFETY: `bpf_attr` is a union of plain integers, for which all-zero
    // is the value the kernel expects in every unused field.
    unsafe { std::mem::zeroed() }
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path with a NUL byte"))
}

/// `BPF_OBJ_PIN`: pins `fd` (a link) at `path` on a bpffs.
/// Fails with `EEXIST` when something is there.
pub(crate) fn pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let path = c_path(path)?;
    let mut attr = zeroed_attr();
    attr.__bindgen_anon_4.bpf_fd = fd.as_raw_fd() as u32;
    attr.__bindgen_anon_4.pathname = path.as_ptr() as u64;
    sys_bpf(bpf_cmd::BPF_OBJ_PIN, &mut attr).map(drop)
}

/// `BPF_OBJ_GET`: a new descriptor of the object pinned at `path`.
pub(crate) fn open_pin(path: &Path) -> io::Result<OwnedFd> {
    let path = c_path(path)?;
    let mut attr = zeroed_attr();
    attr.__bindgen_anon_4.pathname = path.as_ptr() as u64;
    fd_bpf(bpf_cmd::BPF_OBJ_GET, &mut attr)
}

/// What kind of bpf object a descriptor refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ObjectKind {
    Map,
    Program,
    Link,
    Other,
}

/// The kind of the object behind `fd`, from its anonymous inode's name
/// (`/proc/self/fd/N` -> `anon_inode:bpf-map`, `bpf-prog`, and `bpf_link`
/// for a new link but `bpf-link` for one opened from its pin): the
/// kernel's `BPF_OBJ_GET_INFO_BY_FD` fills whichever structure the object
/// has, so the kind must be known before its answer is read.
pub(crate) fn kind(fd: BorrowedFd<'_>) -> ObjectKind {
    let Ok(target) = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())) else {
        return ObjectKind::Other;
    };
    match target.as_os_str().as_bytes() {
        b"anon_inode:bpf-map" | b"anon_inode:bpf_map" => ObjectKind::Map,
        b"anon_inode:bpf-prog" | b"anon_inode:bpf_prog" => ObjectKind::Program,
        b"anon_inode:bpf-link" | b"anon_inode:bpf_link" => ObjectKind::Link,
        _ => ObjectKind::Other,
    }
}

/// `BPF_OBJ_GET_INFO_BY_FD` into `T`, the structure of the object's kind.
fn info<T: Copy>(fd: BorrowedFd<'_>) -> io::Result<T> {
    // SAFETY: the info structures are plain integers; all-zero is valid
    // and is what the kernel expects in the fields it does not fill.
    // `out` outlives the call and is `info_len` bytes long.
    let mut out: T = unsafe { std::mem::zeroed() };
    let mut attr = zeroed_attr();
    attr.info.bpf_fd = fd.as_raw_fd() as u32;
    attr.info.info_len = size_of::<T>() as u32;
    attr.info.info = std::ptr::from_mut(&mut out) as u64;
    sys_bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(out)
}

/// What the kernel says of a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LinkInfo {
    pub(crate) id: u32,
    pub(crate) prog_id: u32,
    /// For a cgroup link: the cgroup it is attached to, 0 once detached
    /// (`BPF_LINK_DETACH`, `bpftool link detach`), and its attach type.
    pub(crate) cgroup: Option<(u64, u32)>,
}

/// The kernel's information about the link behind `fd` (which must be a
/// link: see [`kind`]).
pub(crate) fn link_info(fd: BorrowedFd<'_>) -> io::Result<LinkInfo> {
    let info: bpf_link_info = info(fd)?;
    let cgroup = (info.type_ == bpf_link_type::BPF_LINK_TYPE_CGROUP as u32).then(|| {
        // SAFETY: the kernel filled the cgroup member for a cgroup link.
        let cgroup = unsafe { info.__bindgen_anon_1.cgroup };
        (cgroup.cgroup_id, cgroup.attach_type)
    });
    Ok(LinkInfo {
        id: info.id,
        prog_id: info.prog_id,
        cgroup,
    })
}

/// `BPF_LINK_CREATE` for a cgroup program: a link of `program` on `cgroup`
/// (a directory descriptor) with `attach_type`. Such a link coexists with
/// other programs on the cgroup.
pub(crate) fn link_cgroup(
    program: BorrowedFd<'_>,
    cgroup: BorrowedFd<'_>,
    attach_type: u32,
) -> io::Result<OwnedFd> {
    let mut attr = zeroed_attr();
    attr.link_create.__bindgen_anon_1.prog_fd = program.as_raw_fd() as u32;
    attr.link_create.__bindgen_anon_2.target_fd = cgroup.as_raw_fd() as u32;
    attr.link_create.attach_type = attach_type;
    fd_bpf(bpf_cmd::BPF_LINK_CREATE, &mut attr)
}

/// `BPF_RAW_TRACEPOINT_OPEN` for a BTF tracepoint program (its tracepoint
/// was fixed when it was loaded): a link that runs it.
pub(crate) fn link_tracepoint(program: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let mut attr = zeroed_attr();
    attr.raw_tracepoint.prog_fd = program.as_raw_fd() as u32;
    fd_bpf(bpf_cmd::BPF_RAW_TRACEPOINT_OPEN, &mut attr)
}

/// `BPF_LINK_DETACH`: detaches a link whoever else holds it (its pins and
/// descriptors stay, detached).
pub(crate) fn detach_link(fd: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = zeroed_attr();
    attr.link_detach.link_fd = fd.as_raw_fd() as u32;
    sys_bpf(bpf_cmd::BPF_LINK_DETACH, &mut attr).map(drop)
}
