//! Helpers of the data plane tests: a bpffs pin root (removed on drop, also
//! when a test fails), the connections a forked child makes (the toolkit's
//! `fork` places it in a test cgroup), packets and random inputs.

#![allow(dead_code, reason = "each test file uses a different subset")]

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use enforcer::compile::{CompiledPolicy, EntityInfo, EntityKind};
use enforcer::dataplane::ResolvedCgroup;
use enforcer::policy::{RuleRef, Section};
use enforcer_common::{
    identity::Identity,
    protocol::Protocol,
    verdict::{Action, Direction, VerdictKey, VerdictValue},
    workload::Mode,
};

pub(crate) mod random;

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// The cgroup id of this process.
pub(crate) fn own_cgroup_id() -> u64 {
    let text = std::fs::read_to_string("/proc/self/cgroup").expect("read /proc/self/cgroup");
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a cgroup v2 line in /proc/self/cgroup");
    let path = enforcer_tests::cgroup2_mount()
        .expect("cgroup v2 mount")
        .join(rel.trim_start_matches('/'));
    std::fs::metadata(path).expect("stat own cgroup").ino()
}

/// A directory on a bpffs for pins; removed on drop.
pub(crate) struct PinRoot {
    pub path: PathBuf,
}

impl PinRoot {
    pub(crate) fn new() -> PinRoot {
        let bpffs = Path::new("/sys/fs/bpf");
        let mounted = std::fs::read_to_string("/proc/self/mountinfo")
            .expect("read mountinfo")
            .lines()
            .any(|l| l.contains(" /sys/fs/bpf ") && l.contains(" - bpf "));
        if !mounted {
            let status = std::process::Command::new("mount")
                .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
                .status()
                .expect("run mount");
            assert!(status.success(), "mount -t bpf failed");
        }
        let path = bpffs.join(unique("enforcer-dp-test"));
        PinRoot { path }
    }
}

impl Drop for PinRoot {
    fn drop(&mut self) {
        let _ = enforcer::dataplane::Dataplane::uninstall(&self.path);
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Programs attached to a cgroup (directly, not inherited), per bpftool.
pub(crate) fn attached_programs(cgroup: &Path) -> usize {
    let v = enforcer_tests::bpftool_json(&["cgroup".as_ref(), "show".as_ref(), cgroup.as_os_str()]);
    v.as_array().map_or(0, Vec::len)
}

/// Exit codes of the connection helpers.
pub(crate) const OK: i32 = 0;
pub(crate) const EPERM: i32 = libc::EPERM;
pub(crate) const TIMEOUT: i32 = 100;
pub(crate) const REFUSED: i32 = libc::ECONNREFUSED;

fn code(e: &std::io::Error) -> i32 {
    match e.kind() {
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => TIMEOUT,
        _ => e.raw_os_error().unwrap_or(199),
    }
}

/// TCP connect, send one byte, read one byte back.
pub(crate) fn tcp_exchange(to: SocketAddr, timeout: Duration) -> i32 {
    let mut s = match TcpStream::connect_timeout(&to, timeout) {
        Ok(s) => s,
        Err(e) => return code(&e),
    };
    let _ = s.set_read_timeout(Some(timeout));
    if let Err(e) = s.write_all(b"x") {
        return code(&e);
    }
    let mut b = [0u8; 1];
    match s.read_exact(&mut b) {
        Ok(()) => OK,
        Err(e) => code(&e),
    }
}

/// UDP send one datagram, wait for one back.
pub(crate) fn udp_exchange(to: SocketAddr, timeout: Duration) -> i32 {
    let bind: SocketAddr = if to.is_ipv4() {
        "0.0.0.0:0".parse().expect("addr")
    } else {
        "[::]:0".parse().expect("addr")
    };
    let s = match UdpSocket::bind(bind) {
        Ok(s) => s,
        Err(e) => return code(&e),
    };
    let _ = s.set_read_timeout(Some(timeout));
    if let Err(e) = s.send_to(b"x", to) {
        return code(&e);
    }
    let mut b = [0u8; 16];
    match s.recv_from(&mut b) {
        Ok(_) => OK,
        Err(e) => code(&e),
    }
}

/// A TCP echo server (one byte back per connection) on a thread of this
/// process, i.e. outside any test cgroup.
pub(crate) fn tcp_echo_server(addr: SocketAddr) -> SocketAddr {
    let l = TcpListener::bind(addr).expect("bind echo server");
    let local = l.local_addr().expect("local addr");
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let mut b = [0u8; 1];
            if s.read_exact(&mut b).is_ok() {
                let _ = s.write_all(&b);
            }
        }
    });
    local
}

/// A UDP echo server on a thread of this process.
pub(crate) fn udp_echo_server(addr: SocketAddr) -> SocketAddr {
    let s = UdpSocket::bind(addr).expect("bind udp echo");
    let local = s.local_addr().expect("local addr");
    std::thread::spawn(move || {
        let mut b = [0u8; 64];
        while let Ok((n, from)) = s.recv_from(&mut b) {
            let _ = s.send_to(&b[..n], from);
        }
    });
    local
}

/// A policy skeleton with `world`, `host` and the given workloads/peers
/// (entities only: tests add verdicts and prefixes).
pub(crate) fn empty_policy(workloads: &[(u32, &str)], peers: &[(u32, &str)]) -> CompiledPolicy {
    let mut entities = EntityInfo::builtins();
    for (id, name) in workloads {
        entities.push(EntityInfo::new(*id, EntityKind::Workload, *name));
    }
    for (id, name) in peers {
        entities.push(EntityInfo::new(*id, EntityKind::Peer, *name));
    }
    entities.sort_by_key(|e| e.identity);
    CompiledPolicy {
        entities,
        workloads: Vec::new(),
        prefixes_v4: Vec::new(),
        prefixes_v6: Vec::new(),
        verdicts: Vec::new(),
        rules: vec![RuleRef {
            policy: "test".into(),
            section: Section::AllowOut,
            index: 0,
        }],
        next_expiry: None,
        content_hash: 0,
    }
}

/// One verdict of a hand-written test policy: workload, direction,
/// protocol, remote identity, port, how many leading bits of the port
/// match (16: that port only), action. Its rule is the policy's rule 0.
pub(crate) type Verdict = (Identity, Direction, Protocol, Identity, u16, u8, Action);

/// Adds these verdicts to `p`, keeping its verdicts sorted as the compiler
/// emits them.
pub(crate) fn add_verdicts(p: &mut CompiledPolicy, verdicts: &[Verdict]) {
    for &(workload, direction, protocol, remote, port, bits, action) in verdicts {
        p.verdicts.push((
            VerdictKey::new(
                workload,
                direction as u8,
                protocol as u8,
                remote,
                port,
                bits,
            ),
            VerdictValue {
                rule: 0,
                action: action as u8,
                _pad: [0; 3],
            },
        ));
    }
    p.verdicts.sort_by_key(|(k, _)| *k);
}

/// The cgroup `cgroup_id` as a member of `workload`, its own verdict class,
/// enforcing.
pub(crate) fn enforced(cgroup_id: u64, workload: Identity) -> ResolvedCgroup {
    ResolvedCgroup {
        cgroup_id,
        workload,
        class: workload,
        mode: Mode::Enforce as u8,
    }
}

/// A small deterministic PRNG (xorshift64*), so failures replay from the
/// printed seed.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub(crate) fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// The seed of a randomized test (`ENFORCER_TEST_SEED` or the clock),
/// printed so that a failure replays, and a generator seeded with it.
pub(crate) fn seeded_rng() -> (u64, Rng) {
    let seed = std::env::var("ENFORCER_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    println!("seed {seed} (replay with ENFORCER_TEST_SEED={seed})");
    (seed, Rng::new(seed))
}

/// What kind of first packet to build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    TcpSyn,
    Udp,
    EchoRequest,
}

/// An IP packet (no Ethernet header) from `src:sport` to `dst:dport`. For
/// echo requests `sport` is the identifier.
pub(crate) fn ip_packet(
    kind: Kind,
    src: std::net::IpAddr,
    dst: std::net::IpAddr,
    sport: u16,
    dport: u16,
) -> Vec<u8> {
    use std::net::IpAddr;
    let v6 = src.is_ipv6();
    let (proto, l4): (u8, Vec<u8>) = match kind {
        Kind::TcpSyn => {
            let mut t = vec![0u8; 20];
            t[0..2].copy_from_slice(&sport.to_be_bytes());
            t[2..4].copy_from_slice(&dport.to_be_bytes());
            t[12] = 5 << 4;
            t[13] = 0x02;
            (6, t)
        }
        Kind::Udp => {
            let mut u = vec![0u8; 12];
            u[0..2].copy_from_slice(&sport.to_be_bytes());
            u[2..4].copy_from_slice(&dport.to_be_bytes());
            u[4..6].copy_from_slice(&12u16.to_be_bytes());
            (17, u)
        }
        Kind::EchoRequest => {
            let mut m = vec![0u8; 16];
            m[0] = if v6 { 128 } else { 8 };
            m[4..6].copy_from_slice(&sport.to_be_bytes());
            (if v6 { 58 } else { 1 }, m)
        }
    };
    let mut p = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            p.extend_from_slice(&[0x45, 0]);
            p.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
            p.extend_from_slice(&[0, 0, 0x40, 0, 64, proto, 0, 0]);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            p.extend_from_slice(&[0x60, 0, 0, 0]);
            p.extend_from_slice(&(l4.len() as u16).to_be_bytes());
            p.extend_from_slice(&[proto, 64]);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
        }
        _ => panic!("mixed address families"),
    }
    p.extend_from_slice(&l4);
    p
}

/// A port that is free right now on `ip`.
pub(crate) fn free_port(ip: std::net::IpAddr, udp: bool) -> u16 {
    if udp {
        UdpSocket::bind((ip, 0))
            .and_then(|s| s.local_addr())
            .expect("free udp port")
            .port()
    } else {
        TcpListener::bind((ip, 0))
            .and_then(|s| s.local_addr())
            .expect("free tcp port")
            .port()
    }
}

/// A TCP echo server loop (for a forked child): binds, then serves forever.
pub(crate) fn tcp_echo_forever(addr: SocketAddr) -> i32 {
    let Ok(l) = TcpListener::bind(addr) else {
        return 201;
    };
    for mut s in l.incoming().flatten() {
        let mut b = [0u8; 1];
        while s.read_exact(&mut b).is_ok() {
            if s.write_all(&b).is_err() {
                break;
            }
        }
    }
    0
}

/// Waits until something accepts TCP connections on `addr` (from this
/// process, which no test cgroup filters).
pub(crate) fn wait_listening(addr: SocketAddr) {
    for _ in 0..100 {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("nothing listens on {addr}");
}

/// bpf links attached to the cgroup with this id, per `bpftool link show`.
pub(crate) fn links_to_cgroup(cgroup_id: u64) -> usize {
    let v = enforcer_tests::bpftool_json(&["link", "show"]);
    v.as_array().map_or(0, |links| {
        links
            .iter()
            .filter(|l| l.get("cgroup_id").and_then(serde_json::Value::as_u64) == Some(cgroup_id))
            .count()
    })
}
