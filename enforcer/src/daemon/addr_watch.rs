//! Following this host's addresses: an rtnetlink socket subscribed to
//! address notifications (`RTMGRP_IPV4_IFADDR`, `RTMGRP_IPV6_IFADDR`). A
//! message is only a trigger: the daemon then lists the addresses again
//! (`HostAddrs::from_system`) and compares them with those in force, so
//! nothing in a message is trusted or parsed, and a lost message (the
//! socket's buffer overflowed: `ENOBUFS`) is a trigger too.

use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::time::Duration;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

/// How long notifications must be quiet before the addresses are read
/// again: adding an address sends several (the address, then its flags
/// once duplicate address detection ends), and a link coming up sends
/// one per address.
const SETTLE: Duration = Duration::from_millis(50);

/// The longest a burst delays the trigger: a stream of notifications that
/// never pauses still gets the addresses read this often.
const SETTLE_AT_MOST: Duration = Duration::from_millis(250);

/// A socket bound to the address notification groups of this network
/// namespace.
fn subscribe() -> std::io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: a zeroed sockaddr_nl is valid (pid 0: the kernel assigns one).
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    addr.nl_groups = (libc::RTMGRP_IPV4_IFADDR | libc::RTMGRP_IPV6_IFADDR) as u32;
    // SAFETY: `addr` is a sockaddr_nl of the size given.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            std::ptr::from_ref(&addr).cast(),
            size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd)
}

/// Reads every queued message. `Ok(true)` when something arrived (or was
/// lost), `Ok(false)` when the queue was empty.
fn drain(fd: &OwnedFd) -> std::io::Result<bool> {
    let mut buf = [0u8; 8192];
    let mut any = false;
    loop {
        // SAFETY: recv into a buffer of the length given.
        let n = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n >= 0 {
            any = true;
            continue;
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EAGAIN) => return Ok(any),
            Some(libc::EINTR) => continue,
            // The kernel dropped notifications: the addresses may have
            // changed, which a fresh listing tells.
            Some(libc::ENOBUFS) => any = true,
            _ => return Err(e),
        }
    }
}

/// Watches this host's addresses: a message after each settled burst of
/// address notifications. `None` when the socket cannot be opened; the
/// daemon then reads the addresses again periodically instead.
pub(super) fn watch_host_addrs() -> Option<mpsc::Receiver<()>> {
    // SAFETY: the AsyncFd owns the socket and returns its fd from
    // `as_raw_fd` until both are dropped together.
    let registered = subscribe().and_then(|fd| {
        unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
            .map_err(std::io::Error::from)
    });
    let fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!(error = %e, "cannot subscribe to address notifications; this host's addresses are read every second instead");
            return None;
        }
    };
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        loop {
            let Ok(mut guard) = fd.readable().await else {
                tracing::error!(
                    "address notifications failed; this host's addresses are read periodically only"
                );
                return;
            };
            match drain(fd.get_ref()) {
                Ok(true) => {}
                Ok(false) => {
                    guard.clear_ready();
                    continue;
                }
                Err(e) => {
                    tracing::error!(error = %e, "reading address notifications failed; this host's addresses are read periodically only");
                    return;
                }
            }
            guard.clear_ready();
            drop(guard);
            // Let the burst settle, then trigger once.
            let settled_by = tokio::time::Instant::now() + SETTLE_AT_MOST;
            while tokio::time::Instant::now() < settled_by {
                match tokio::time::timeout(SETTLE, fd.readable()).await {
                    Ok(Ok(mut guard)) => {
                        let _ = drain(fd.get_ref());
                        guard.clear_ready();
                    }
                    Ok(Err(_)) => return,
                    Err(_) => break,
                }
            }
            // A full channel already holds a trigger: that one reads the
            // addresses after this burst too.
            if let Err(mpsc::error::TrySendError::Closed(())) = tx.try_send(()) {
                return;
            }
        }
    });
    Some(rx)
}
