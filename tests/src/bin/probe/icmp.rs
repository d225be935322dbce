//! ICMP / ICMPv6 echo: an unprivileged ping socket if
//! `net.ipv4.ping_group_range` allows it, else a raw socket (root).

use std::{
    io,
    net::{IpAddr, SocketAddr},
    os::fd::OwnedFd,
    time::Instant,
};

use crate::{
    net::{bind, family, recv_from, send_to, socket},
    report::Outcome,
};

const ECHO_REQUEST_V4: u8 = 8;
const ECHO_REPLY_V4: u8 = 0;
const ECHO_REQUEST_V6: u8 = 128;
const ECHO_REPLY_V6: u8 = 129;
const PAYLOAD: &[u8] = b"enforcer-probe-ping";

/// Which kind of socket carries the echo.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `SOCK_DGRAM`: the kernel owns the identifier and the checksum and
    /// hands back the ICMP message without the IP header.
    Ping,
    /// `SOCK_RAW`: all ICMP reaches us; IPv4 includes the IP header.
    Raw,
}

/// Sends one echo request to `dst` and waits for its reply.
pub(crate) fn ping(dst: IpAddr, bind_addr: Option<IpAddr>, deadline: Instant) -> Outcome {
    let proto = if dst.is_ipv6() {
        libc::IPPROTO_ICMPV6
    } else {
        libc::IPPROTO_ICMP
    };
    let (fd, kind) = match socket(family(dst), libc::SOCK_DGRAM, proto) {
        Ok(fd) => (fd, Kind::Ping),
        // EACCES: our group is outside net.ipv4.ping_group_range; a raw
        // socket needs CAP_NET_RAW instead. (EPERM would be a policy hook
        // and must be reported as such.)
        Err(e) if e.raw_os_error() == Some(libc::EACCES) => {
            match socket(family(dst), libc::SOCK_RAW, proto) {
                Ok(fd) => (fd, Kind::Raw),
                Err(e) => return Outcome::from_io("socket(SOCK_RAW)", &e),
            }
        }
        Err(e) => return Outcome::from_io("socket(ping)", &e),
    };
    if let Some(src) = bind_addr
        && let Err(e) = bind(&fd, SocketAddr::new(src, 0))
    {
        return Outcome::from_io("bind", &e);
    }
    // SAFETY: getpid cannot fail.
    let ident = (unsafe { libc::getpid() } & 0xffff) as u16;
    let seq: u16 = 1;
    let request = echo_request(dst.is_ipv6(), ident, seq);
    if let Err(e) = send_to(&fd, &request, Some(SocketAddr::new(dst, 0))) {
        return Outcome::from_io("sendto", &e);
    }
    match wait_reply(&fd, kind, dst, ident, seq, deadline) {
        Ok(true) => Outcome::ok(),
        Ok(false) => Outcome::timeout("the echo request"),
        Err(e) => Outcome::from_io("recvfrom", &e),
    }
}

fn echo_request(v6: bool, ident: u16, seq: u16) -> Vec<u8> {
    let mut msg = vec![if v6 { ECHO_REQUEST_V6 } else { ECHO_REQUEST_V4 }, 0, 0, 0];
    msg.extend_from_slice(&ident.to_be_bytes());
    msg.extend_from_slice(&seq.to_be_bytes());
    msg.extend_from_slice(PAYLOAD);
    if !v6 {
        // ICMPv6 checksums cover a pseudo-header; the kernel fills them in
        // for both socket kinds. IPv4 raw sockets need ours.
        let sum = checksum(&msg);
        msg[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    msg
}

/// The Internet checksum (RFC 1071).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn wait_reply(
    fd: &OwnedFd,
    kind: Kind,
    dst: IpAddr,
    ident: u16,
    seq: u16,
    deadline: Instant,
) -> io::Result<bool> {
    let mut buf = [0u8; 2048];
    loop {
        let Some((n, from)) = recv_from(fd, &mut buf, deadline)? else {
            return Ok(false);
        };
        if from.map(|a| a.ip()) != Some(dst) {
            continue;
        }
        let mut msg = &buf[..n];
        if kind == Kind::Raw && !dst.is_ipv6() {
            // IPv4 raw sockets deliver the IP header too.
            let ihl = usize::from(msg.first().copied().unwrap_or(0) & 0x0f) * 4;
            msg = msg.get(ihl..).unwrap_or_default();
        }
        let reply = if dst.is_ipv6() {
            ECHO_REPLY_V6
        } else {
            ECHO_REPLY_V4
        };
        if msg.len() < 8 || msg[0] != reply {
            continue;
        }
        let got_ident = u16::from_be_bytes([msg[4], msg[5]]);
        let got_seq = u16::from_be_bytes([msg[6], msg[7]]);
        // Ping sockets rewrite the identifier and deliver only our replies.
        if got_seq == seq && (kind == Kind::Ping || got_ident == ident) {
            return Ok(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_a_request_verifies_to_zero() {
        let msg = echo_request(false, 0x1234, 1);
        assert_eq!(checksum(&msg), 0);
        // RFC 1071 example words.
        assert_eq!(
            checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            !0xddf2
        );
    }
}
