//! The ports bound on this host, as the programs learn them from `bind()`
//! (`BOUND_PORTS`, and a bit per TCP port in `TCP_BOUND_PORT_BITS`), and
//! the daemon's seeding of those bound before the programs were attached.

use std::collections::BTreeSet;

use aya::maps::{HashMap, MapData, MapError};
use enforcer_common::{
    map_names,
    ports::{BoundPort, BoundPortKey},
    protocol::Protocol,
};

use super::{
    Dataplane,
    error::{Result, read_err, write_err},
    handles, port_bits,
};

/// `BPF_NOEXIST` from the kernel's uapi (not in the libc crate).
const BPF_NOEXIST: u64 = 1;

impl Dataplane {
    /// The bound ports learned from `bind()`, in every network namespace.
    pub fn bound_ports(&self) -> Result<Vec<(BoundPortKey, BoundPort)>> {
        let name = map_names::BOUND_PORTS;
        let m: HashMap<&MapData, BoundPortKey, BoundPort> = handles::typed(&self.ebpf, name)?;
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
        let name = map_names::BOUND_PORTS;
        let mut m: HashMap<&mut MapData, BoundPortKey, BoundPort> =
            handles::typed_mut(&mut self.ebpf, name)?;
        let key = |protocol: u8, port: u16| BoundPortKey {
            netns,
            protocol,
            _pad: 0,
            port,
            _pad2: 0,
        };
        let wanted: BTreeSet<(u8, u16)> = ports.iter().map(|&(p, port, _)| (p, port)).collect();
        let existing: Vec<(BoundPortKey, BoundPort)> =
            m.iter().collect::<Result<_, _>>().map_err(read_err(name))?;
        for (k, v) in &existing {
            if k.netns == netns && v.cookie == 0 && !wanted.contains(&(k.protocol, k.port)) {
                handles::removed(m.remove(k), name)?;
            }
        }
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
                Err(MapError::SyscallError(e))
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
        // marks it again (`skb.rs`).
        let held: BTreeSet<u16> = m
            .keys()
            .collect::<Result<Vec<_>, _>>()
            .map_err(read_err(name))?
            .into_iter()
            .filter(|k| k.protocol == Protocol::Tcp as u8)
            .map(|k| k.port)
            .collect();
        let bits = handles::mapped_array(&self.ebpf, map_names::TCP_BOUND_PORT_BITS)?;
        port_bits::mark(bits, &tcp_bits)?;
        port_bits::keep_only(bits, &held)?;
        Ok(added)
    }

    /// Whether the per-packet path takes this TCP port for one that a
    /// socket of this host bound (`TCP_BOUND_PORT_BITS`).
    pub fn tcp_port_marked_bound(&self, port: u16) -> Result<bool> {
        port_bits::is_marked(
            handles::mapped_array(&self.ebpf, map_names::TCP_BOUND_PORT_BITS)?,
            port,
        )
    }
}
