//! Per-packet cost of the data plane, measured with BPF_PROG_TEST_RUN (the
//! kernel's own timing), for policies of 10 / 1,000 / 10,000 verdict
//! entries and 10 / 10,000 / 100,000 peer prefixes, IPv4 and IPv6, allowed
//! and denied. Three results per case: `baseline` (the program with
//! enforcement disabled: one CONFIG read), `fastpath` (a packet of a known
//! connection: one flow lookup) and `newflow` (a TCP SYN, always judged in
//! full: cgroup, address and verdict lookups, flow update). Needs root.
//!
//! `cargo bench -p enforcer --bench dataplane -- [--quick] [--json PATH]`

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::unix::fs::MetadataExt as _,
};

mod support;

use enforcer::{
    compile::{CompiledPolicy, EntityInfo, EntityKind},
    dataplane::{Dataplane, DataplaneOptions, HostAddrs, ResolvedCgroup},
    policy::{RuleRef, Section},
};
use enforcer_common::{
    address::{AddrKey4, AddrKey6},
    identity::{IDENTITY_HOST, IDENTITY_WORLD},
    packet::{TCP_ACK, TCP_SYN},
    protocol::Protocol,
    verdict::{Action, Direction, VerdictKey, VerdictValue},
    workload::Mode,
};
use support::{Args, Row, report};

const WORKLOAD: u32 = 16;
const PEER0: u32 = 17;
const PEERS: u32 = 64;
/// The allowed service port; every other port is denied by default.
const ALLOWED_PORT: u16 = 443;

fn own_cgroup_id() -> anyhow::Result<u64> {
    let text = std::fs::read_to_string("/proc/self/cgroup")?;
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or_else(|| anyhow::anyhow!("no cgroup v2 line in /proc/self/cgroup"))?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    let root = mountinfo
        .lines()
        .find_map(|l| {
            let (head, tail) = l.split_once(" - ")?;
            (tail.split_whitespace().next() == Some("cgroup2"))
                .then(|| head.split_whitespace().nth(4).map(str::to_owned))
                .flatten()
        })
        .ok_or_else(|| anyhow::anyhow!("no cgroup2 mount"))?;
    let path = std::path::Path::new(&root).join(rel.trim_start_matches('/'));
    Ok(std::fs::metadata(path)?.ino())
}

/// A policy with `rules` verdict entries (spread over peers and ports; the
/// measured one allows 443/tcp to peer 0) and `prefixes` prefixes of each
/// family.
fn policy(rules: usize, prefixes: usize) -> CompiledPolicy {
    let mut entities = vec![
        EntityInfo {
            identity: IDENTITY_WORLD,
            kind: EntityKind::World,
            name: "world".into(),
        },
        EntityInfo {
            identity: IDENTITY_HOST,
            kind: EntityKind::Host,
            name: "host".into(),
        },
        EntityInfo {
            identity: WORKLOAD,
            kind: EntityKind::Workload,
            name: "bench".into(),
        },
    ];
    for i in 0..PEERS {
        entities.push(EntityInfo {
            identity: PEER0 + i,
            kind: EntityKind::Peer,
            name: format!("peer{i}"),
        });
    }
    let allow = VerdictValue {
        rule: 0,
        action: Action::Allow as u8,
        _pad: [0; 3],
    };
    let mut verdicts = vec![(
        VerdictKey::new(
            WORKLOAD,
            Direction::Egress as u8,
            Protocol::Tcp as u8,
            PEER0,
            ALLOWED_PORT,
            16,
        ),
        allow,
    )];
    for i in 1..rules {
        let peer = PEER0 + (i as u32 % PEERS);
        let port = 1024 + (i / PEERS as usize) as u16;
        verdicts.push((
            VerdictKey::new(
                WORKLOAD,
                Direction::Egress as u8,
                Protocol::Tcp as u8,
                peer,
                port,
                16,
            ),
            allow,
        ));
    }
    verdicts.sort_by_key(|(k, _)| *k);
    verdicts.dedup_by_key(|(k, _)| *k);
    // Peer 0 owns 198.51.100.0/24 and 2001:db8::/48; the rest are /32s in
    // 10.0.0.0/8 and distinct /64s from 2001:db8:1::/64 up (map entries only,
    // never routed).
    let mut v4 = vec![(
        AddrKey4 {
            prefix_len: 24,
            addr: [198, 51, 100, 0],
        },
        PEER0,
    )];
    let mut v6 = vec![(
        AddrKey6 {
            prefix_len: 48,
            addr: Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0).octets(),
        },
        PEER0,
    )];
    for i in 1..prefixes as u32 {
        let peer = PEER0 + (i % PEERS);
        v4.push((
            AddrKey4 {
                prefix_len: 32,
                addr: (0x0a00_0000 | i).to_be_bytes(),
            },
            peer,
        ));
        v6.push((
            AddrKey6 {
                prefix_len: 64,
                addr: Ipv6Addr::new(0x2001, 0xdb8, 1 + (i >> 16) as u16, i as u16, 0, 0, 0, 0)
                    .octets(),
            },
            peer,
        ));
    }
    v4.sort();
    v6.sort();
    CompiledPolicy {
        entities,
        workloads: Vec::new(),
        prefixes_v4: v4,
        prefixes_v6: v6,
        verdicts,
        rules: vec![RuleRef {
            policy: "bench".into(),
            section: Section::AllowOut,
            index: 0,
        }],
        next_expiry: None,
        content_hash: 0,
    }
}

fn tcp_packet(v6: bool, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let (src, dst): (IpAddr, IpAddr) = if v6 {
        (
            Ipv6Addr::new(0x2001, 0xdb8, 9, 0, 0, 0, 0, 1).into(),
            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7).into(),
        )
    } else {
        (
            Ipv4Addr::new(203, 0, 113, 1).into(),
            Ipv4Addr::new(198, 51, 100, 7).into(),
        )
    };
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = flags;
    let mut p = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            p.extend_from_slice(&[0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0]);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            p.extend_from_slice(&[0x60, 0, 0, 0, 0, 20, 6, 64]);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
        }
        _ => unreachable!("same family by construction"),
    }
    p.extend_from_slice(&tcp);
    p
}

fn main() -> anyhow::Result<()> {
    let Args { quick, json } = Args::from_env();
    // SAFETY: no arguments.
    if unsafe { libc::geteuid() } != 0 {
        if std::env::var_os("CI").is_some() {
            anyhow::bail!("the data plane benchmark needs root");
        }
        eprintln!("skipped: the data plane benchmark needs root");
        return Ok(());
    }
    let (rule_sizes, prefix_sizes, rounds, repeat): (&[usize], &[usize], usize, u32) = if quick {
        (&[10, 1_000], &[10, 10_000], 5, 20_000)
    } else {
        (&[10, 1_000, 10_000], &[10, 10_000, 100_000], 15, 200_000)
    };
    let new_repeat = (repeat / 20).max(1);
    let mut dp = Dataplane::load(&DataplaneOptions::default())?;
    let cgroups = [ResolvedCgroup {
        cgroup_id: own_cgroup_id()?,
        workload: WORKLOAD,
        class: WORKLOAD,
        mode: Mode::Enforce as u8,
    }];
    let mut rows = Vec::new();
    for &rules in rule_sizes {
        for &prefixes in prefix_sizes {
            dp.apply(&policy(rules, prefixes), &cgroups, &HostAddrs::default())?;
            for v6 in [false, true] {
                for (verdict, port) in [("allow", ALLOWED_PORT), ("deny", 444)] {
                    let family = if v6 { "v6" } else { "v4" };
                    let base = format!("{family}/{verdict}/rules={rules}/prefixes={prefixes}");
                    let mut fast = Row::new(format!("{base}/fastpath"));
                    let mut new = Row::new(format!("{base}/newflow"));
                    // The programs with enforcement disabled: one CONFIG read.
                    let mut baseline = Row::new(format!("{base}/baseline"));
                    dp.disable()?;
                    for round in 0..rounds {
                        let packet = tcp_packet(v6, 30_000 + round as u16, port, TCP_ACK);
                        let many =
                            dp.test_run_skb_repeat(Direction::Egress as u8, &packet, repeat)?;
                        baseline.samples.push(many.duration.as_nanos() as f64);
                    }
                    dp.enable()?;
                    for round in 0..rounds {
                        let sport = 20_000 + round as u16;
                        // A SYN is always judged in full (cgroup, address
                        // and verdict lookups, flow update), even on a
                        // known 4-tuple.
                        let first = tcp_packet(v6, sport, port, TCP_SYN);
                        let judged =
                            dp.test_run_skb_repeat(Direction::Egress as u8, &first, new_repeat)?;
                        anyhow::ensure!(
                            judged.passed() == (verdict == "allow"),
                            "{base}: unexpected verdict {}",
                            judged.verdict
                        );
                        new.samples.push(judged.duration.as_nanos() as f64);
                        // Packets of the now-known flow: one flow lookup.
                        let next = tcp_packet(v6, sport, port, TCP_ACK);
                        let many =
                            dp.test_run_skb_repeat(Direction::Egress as u8, &next, repeat)?;
                        fast.samples.push(many.duration.as_nanos() as f64);
                    }
                    dp.clear_flows()?;
                    rows.push(baseline);
                    rows.push(fast);
                    rows.push(new);
                }
            }
        }
    }
    report(rows, 56, json.as_deref())
}
