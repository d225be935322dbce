//! Thin, bounded socket operations over libc (std cannot bind a client
//! socket before connecting, nor open ICMP sockets).

use std::{
    io, mem,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::Instant,
};

/// A socket address in the kernel's layout.
pub(crate) struct RawAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl RawAddr {
    pub(crate) fn new(addr: SocketAddr) -> Self {
        // SAFETY: all-zero is a valid sockaddr_storage.
        let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
        let len = match addr {
            SocketAddr::V4(v4) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: v4.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from(*v4.ip()).to_be(),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is larger than and aligned for
                // sockaddr_in.
                unsafe { std::ptr::write((&raw mut storage).cast(), sin) };
                size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(v6) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: v6.port().to_be(),
                    sin6_flowinfo: v6.flowinfo().to_be(),
                    sin6_addr: libc::in6_addr {
                        s6_addr: v6.ip().octets(),
                    },
                    sin6_scope_id: v6.scope_id(),
                };
                // SAFETY: as above, for sockaddr_in6.
                unsafe { std::ptr::write((&raw mut storage).cast(), sin6) };
                size_of::<libc::sockaddr_in6>()
            }
        };
        Self {
            storage,
            len: len as libc::socklen_t,
        }
    }

    fn empty() -> Self {
        Self {
            // SAFETY: all-zero is a valid sockaddr_storage.
            storage: unsafe { mem::zeroed() },
            len: size_of::<libc::sockaddr_storage>() as libc::socklen_t,
        }
    }

    fn as_ptr(&self) -> *const libc::sockaddr {
        (&raw const self.storage).cast()
    }

    /// Converts back; `None` for families other than IPv4/IPv6.
    pub(crate) fn to_socket_addr(&self) -> Option<SocketAddr> {
        match libc::c_int::from(self.storage.ss_family) {
            libc::AF_INET => {
                // SAFETY: the family says the storage holds a sockaddr_in.
                let sin: libc::sockaddr_in =
                    unsafe { std::ptr::read((&raw const self.storage).cast()) };
                Some(SocketAddr::V4(SocketAddrV4::new(
                    Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                    u16::from_be(sin.sin_port),
                )))
            }
            libc::AF_INET6 => {
                // SAFETY: the family says the storage holds a sockaddr_in6.
                let sin6: libc::sockaddr_in6 =
                    unsafe { std::ptr::read((&raw const self.storage).cast()) };
                Some(SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                    u16::from_be(sin6.sin6_port),
                    u32::from_be(sin6.sin6_flowinfo),
                    sin6.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn cvt_size(rc: libc::ssize_t) -> io::Result<usize> {
    usize::try_from(rc).map_err(|_| io::Error::last_os_error())
}

/// The address family constant for an address.
pub(crate) fn family(ip: IpAddr) -> libc::c_int {
    if ip.is_ipv6() {
        libc::AF_INET6
    } else {
        libc::AF_INET
    }
}

/// A non-blocking, close-on-exec socket.
pub(crate) fn socket(
    domain: libc::c_int,
    ty: libc::c_int,
    protocol: libc::c_int,
) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = cvt(unsafe {
        libc::socket(
            domain,
            ty | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            protocol,
        )
    })?;
    // SAFETY: fd was just returned by socket(2) and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(crate) fn set_reuseaddr(fd: &OwnedFd) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: setsockopt with a pointer to a live c_int and its size.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&raw const one).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

pub(crate) fn bind(fd: &OwnedFd, addr: SocketAddr) -> io::Result<()> {
    let raw = RawAddr::new(addr);
    // SAFETY: the address pointer and length describe `raw`.
    cvt(unsafe { libc::bind(fd.as_raw_fd(), raw.as_ptr(), raw.len) }).map(drop)
}

pub(crate) fn local_addr(fd: &OwnedFd) -> Option<SocketAddr> {
    let mut raw = RawAddr::empty();
    // SAFETY: getsockname writes at most `raw.len` bytes into `raw`.
    let rc =
        unsafe { libc::getsockname(fd.as_raw_fd(), (&raw mut raw.storage).cast(), &mut raw.len) };
    if rc == 0 { raw.to_socket_addr() } else { None }
}

/// Waits until the socket is readable/writable or the deadline passes.
/// `Ok(false)` on timeout.
pub(crate) fn wait(fd: &OwnedFd, events: libc::c_short, deadline: Instant) -> io::Result<bool> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events,
            revents: 0,
        };
        let ms = libc::c_int::try_from(left.as_millis().max(1)).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd.
        match cvt(unsafe { libc::poll(&mut pfd, 1, ms) }) {
            Ok(0) => continue,
            Ok(_) => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// The pending error of a socket (`SO_ERROR`).
fn take_error(fd: &OwnedFd) -> io::Result<()> {
    let mut err: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes one c_int.
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&raw mut err).cast(),
            &mut len,
        )
    })?;
    if err == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(err))
    }
}

/// Connects with a deadline. `Ok(false)` on timeout.
pub(crate) fn connect(fd: &OwnedFd, addr: SocketAddr, deadline: Instant) -> io::Result<bool> {
    let raw = RawAddr::new(addr);
    // SAFETY: the address pointer and length describe `raw`.
    match cvt(unsafe { libc::connect(fd.as_raw_fd(), raw.as_ptr(), raw.len) }) {
        Ok(_) => return Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    if !wait(fd, libc::POLLOUT, deadline)? {
        return Ok(false);
    }
    take_error(fd).map(|()| true)
}

/// Sends all of `data` before the deadline. `Ok(false)` on timeout.
pub(crate) fn send_all(fd: &OwnedFd, mut data: &[u8], deadline: Instant) -> io::Result<bool> {
    while !data.is_empty() {
        // SAFETY: sends from a live slice; MSG_NOSIGNAL avoids SIGPIPE.
        let rc = unsafe {
            libc::send(
                fd.as_raw_fd(),
                data.as_ptr().cast(),
                data.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        match cvt_size(rc) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if !wait(fd, libc::POLLOUT, deadline)? {
                    return Ok(false);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Sends one datagram to `addr` (or to the connected peer if `None`).
pub(crate) fn send_to(fd: &OwnedFd, data: &[u8], addr: Option<SocketAddr>) -> io::Result<()> {
    let raw = addr.map(RawAddr::new);
    let (ptr, len) = raw
        .as_ref()
        .map_or((std::ptr::null(), 0), |r| (r.as_ptr(), r.len));
    // SAFETY: sends from a live slice to a live address (or none).
    let rc = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            data.as_ptr().cast(),
            data.len(),
            libc::MSG_NOSIGNAL,
            ptr,
            len,
        )
    };
    cvt_size(rc).map(drop)
}

/// Receives once before the deadline: `Ok(None)` on timeout, `Ok(Some((0,
/// _)))` at end of stream.
pub(crate) fn recv_from(
    fd: &OwnedFd,
    buf: &mut [u8],
    deadline: Instant,
) -> io::Result<Option<(usize, Option<SocketAddr>)>> {
    loop {
        let mut raw = RawAddr::empty();
        // SAFETY: receives into a live buffer and address storage.
        let rc = unsafe {
            libc::recvfrom(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&raw mut raw.storage).cast(),
                &mut raw.len,
            )
        };
        match cvt_size(rc) {
            Ok(n) => return Ok(Some((n, raw.to_socket_addr()))),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if !wait(fd, libc::POLLIN, deadline)? {
                    return Ok(None);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}
