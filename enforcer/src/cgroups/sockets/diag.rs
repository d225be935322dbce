//! The `sock_diag` netlink dump: listening TCP and unconnected UDP sockets
//! with the cgroup of each. The socket is `netlink-sys`'s and the framing
//! (headers, multipart replies, `NLMSG_DONE`, `NLMSG_ERROR`, attributes)
//! `netlink-packet-core`'s; what is left here is the inet_diag request and
//! the three fields of a reply this module reads.

use std::convert::Infallible;
use std::io;

use enforcer_common::protocol::Protocol;
use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkDeserializable, NetlinkHeader, NetlinkMessage,
    NetlinkPayload, NetlinkSerializable, NlasIterator,
};
use netlink_sys::{Socket, protocols::NETLINK_SOCK_DIAG};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `struct inet_diag_msg`.
const INET_DIAG_MSG_LEN: usize = 72;
/// `struct inet_diag_req_v2`.
const INET_DIAG_REQ_LEN: usize = 56;
const INET_DIAG_CGROUP_ID: u16 = 21;
const TCP_LISTEN: u8 = 10;
const TCP_CLOSE: u8 = 7;
/// `struct nlmsghdr`.
const NLMSG_HDRLEN: usize = 16;

/// One parsed `inet_diag_msg`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiagSocket {
    pub state: u8,
    pub port: u16,
    pub remote_port: u16,
    pub cgroup_id: Option<u64>,
}

/// `struct inet_diag_req_v2` for every socket of one family, protocol and
/// set of states (`inet_diag_sockid` all zero: any socket).
struct InetDiagRequest {
    family: u8,
    protocol: u8,
    states: u32,
}

impl NetlinkSerializable for InetDiagRequest {
    fn message_type(&self) -> u16 {
        SOCK_DIAG_BY_FAMILY
    }

    fn buffer_len(&self) -> usize {
        INET_DIAG_REQ_LEN
    }

    fn serialize(&self, buffer: &mut [u8]) {
        buffer.fill(0);
        buffer[0] = self.family;
        buffer[1] = self.protocol;
        // idiag_ext and pad stay zero: no extensions asked for.
        buffer[4..8].copy_from_slice(&self.states.to_ne_bytes());
    }
}

/// A reply of the dump: an `inet_diag_msg`, or anything else, which is
/// ignored.
enum DiagReply {
    Socket(DiagSocket),
    Other,
}

impl NetlinkDeserializable for DiagReply {
    type Error = Infallible;

    fn deserialize(header: &NetlinkHeader, payload: &[u8]) -> Result<Self, Infallible> {
        if header.message_type != SOCK_DIAG_BY_FAMILY || payload.len() < INET_DIAG_MSG_LEN {
            return Ok(DiagReply::Other);
        }
        // inet_diag_msg: family, state, timer, retrans, then inet_diag_sockid
        // (sport, dport in network order, ...); the attributes follow.
        let cgroup_id = NlasIterator::new(&payload[INET_DIAG_MSG_LEN..])
            // A malformed attribute ends the list: what came before stands.
            .map_while(Result::ok)
            .filter(|nla| nla.kind() == INET_DIAG_CGROUP_ID)
            .find_map(|nla| {
                let id: [u8; 8] = nla.value().get(..8)?.try_into().ok()?;
                Some(u64::from_ne_bytes(id))
            });
        Ok(DiagReply::Socket(DiagSocket {
            state: payload[1],
            port: u16::from_be_bytes([payload[4], payload[5]]),
            remote_port: u16::from_be_bytes([payload[6], payload[7]]),
            cgroup_id,
        }))
    }
}

/// The request for one dump: `family` (AF_INET/AF_INET6), `protocol`
/// and the states wanted.
pub fn request(family: u8, protocol: u8, states: u32, seq: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = seq;
    let mut message = NetlinkMessage::new(
        header,
        NetlinkPayload::InnerMessage(InetDiagRequest {
            family,
            protocol,
            states,
        }),
    );
    message.finalize();
    let mut bytes = vec![0; message.buffer_len()];
    message.serialize(&mut bytes);
    bytes
}

/// What one `recv()` holds: the sockets, and whether the dump is done.
/// A kernel error (`NLMSG_ERROR`) is returned as such.
pub fn parse(buf: &[u8]) -> io::Result<(Vec<DiagSocket>, bool)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + NLMSG_HDRLEN <= buf.len() {
        let message = NetlinkMessage::<DiagReply>::deserialize(&buf[at..])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        match message.payload {
            NetlinkPayload::Done(_) => return Ok((out, true)),
            NetlinkPayload::Error(error) => return Err(error.to_io()),
            NetlinkPayload::InnerMessage(DiagReply::Socket(socket)) => out.push(socket),
            _ => {}
        }
        // `deserialize` checked the length against the buffer.
        at += (message.header.length as usize).next_multiple_of(4);
    }
    Ok((out, false))
}

fn dump(family: u8, protocol: u8, states: u32) -> io::Result<Vec<DiagSocket>> {
    let socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.send(&request(family, protocol, states, 1), 0)?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = match socket.recv(&mut &mut buf[..], 0) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(out);
        }
        // A datagram longer than the buffer is cut to it (the rest is lost),
        // and `parse` finds the last message truncated.
        let (sockets, done) = parse(&buf[..n.min(buf.len())])?;
        out.extend(sockets);
        if done {
            return Ok(out);
        }
    }
}

/// Listening TCP and unconnected bound UDP sockets of this network
/// namespace as `(protocol, port, cgroup id)`. An error when a dump
/// fails or the kernel does not give cgroup ids (before 5.7).
pub fn bound_ports() -> io::Result<Vec<(u8, u16, u64)>> {
    let mut out = Vec::new();
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        for (protocol, state) in [
            (Protocol::Tcp as u8, TCP_LISTEN),
            (Protocol::Udp as u8, TCP_CLOSE),
        ] {
            for s in dump(family, protocol, 1 << state)? {
                if s.state != state || s.port == 0 || s.remote_port != 0 {
                    continue;
                }
                let id = s.cgroup_id.ok_or_else(|| {
                    io::Error::new(io::ErrorKind::Unsupported, "no INET_DIAG_CGROUP_ID")
                })?;
                out.push((protocol, s.port, id));
            }
        }
    }
    Ok(out)
}
