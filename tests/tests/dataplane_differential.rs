//! Differential tests: for thousands of random policies and first packets
//! (IPv4 and IPv6; TCP, UDP, ICMP echo; ingress and egress), the kernel's
//! verdict through `BPF_PROG_TEST_RUN` equals the reference evaluator's
//! (`enforcer::eval::evaluate`), and the address resolution equals
//! `eval::resolve_addr` and an independent longest-prefix search here.
//! Nothing is attached: the test process's own cgroup is mapped to the
//! workload, since test runs report the caller's cgroup.

mod dataplane_support;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use dataplane_support::{
    random::{PolicyShape, random_policy, random_port, random_v4, random_v6},
    *,
};
use enforcer::{
    compile::CompiledPolicy,
    dataplane::{
        Dataplane, DataplaneOptions, FailsafePort, HostAddrs, ResolvedCgroup, UnmanagedMode,
    },
    eval::{self, Connection, Decision},
};
use enforcer_common::{
    flow::{FlowKey, FlowValue},
    identity::{IDENTITY_WORLD, Identity},
    packet,
    protocol::Protocol,
    verdict::{Action, Direction, RULE_BUILTIN, RULE_MODE_OFF, RULE_UNMANAGED},
    workload::Mode,
};
use enforcer_tests::privileged;

const WORKLOADS: [(u32, &str); 2] = [(16, "api"), (17, "web")];
/// A workload with no verdict entries of its own: each policy makes it a
/// member of the class of one of [`WORKLOADS`], so the kernel must look its
/// verdicts up under the class while naming the workload itself.
const MEMBER: (u32, &str) = (30, "batch");
/// The local workloads a round may run as.
const LOCALS: [u32; 3] = [WORKLOADS[0].0, WORKLOADS[1].0, MEMBER.0];
const PEERS: [(u32, &str); 4] = [(18, "office"), (19, "vendor"), (20, "lab"), (21, "dc")];

fn resolve(p: &CompiledPolicy, addr: IpAddr) -> Identity {
    match addr {
        IpAddr::V4(a) => p
            .prefixes_v4
            .iter()
            .filter(|(k, _)| {
                let len = k.prefix_len;
                let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
                u32::from(a) & mask == u32::from_be_bytes(k.addr) & mask
            })
            .max_by_key(|(k, _)| k.prefix_len)
            .map_or(IDENTITY_WORLD, |(_, id)| *id),
        IpAddr::V6(a) => p
            .prefixes_v6
            .iter()
            .filter(|(k, _)| {
                let len = k.prefix_len;
                let mask = if len == 0 {
                    0
                } else {
                    u128::MAX << (128 - len)
                };
                u128::from(a) & mask == u128::from_be_bytes(k.addr) & mask
            })
            .max_by_key(|(k, _)| k.prefix_len)
            .map_or(IDENTITY_WORLD, |(_, id)| *id),
    }
}

/// The random policies of both differential tests.
const SHAPE: PolicyShape<'static> = PolicyShape {
    workloads: &WORKLOADS,
    member: MEMBER,
    member_classes: &[WORKLOADS[0].0, WORKLOADS[1].0],
    peers: &PEERS,
    max_prefixes: 12,
    max_verdicts: 120,
};

/// One random first packet of a new flow.
struct Case {
    bytes: Vec<u8>,
    direction: u8,
    proto: u8,
    service: u16,
    remote: IpAddr,
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    kind: Kind,
}

impl Case {
    /// The connection the reference evaluator judges: this packet's, as
    /// seen by workload `local` with the remote end resolved to `remote`.
    fn connection(&self, local: Identity, remote: Identity) -> Connection {
        Connection {
            local,
            direction: self.direction,
            remote,
            protocol: self.proto,
            port: self.service,
        }
    }

    /// The flow the kernel stored for this packet.
    fn flow_in(&self, dp: &Dataplane) -> FlowValue {
        let parsed = packet::parse(&self.bytes[..]).expect("parse own packet");
        let direction = Direction::from_raw(self.direction).expect("a direction");
        dp.flow(&FlowKey::of_packet(&parsed, direction))
            .expect("read flow")
            .expect("flow stored")
    }
}

impl std::fmt::Display for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?} {} {}:{} -> {}:{}",
            self.kind, self.direction, self.src, self.sport, self.dst, self.dport
        )
    }
}

fn random_case(rng: &mut Rng, next_port: &mut u16) -> Case {
    let v6 = rng.chance(50);
    let (local, remote): (IpAddr, IpAddr) = if v6 {
        (random_v6(rng).into(), random_v6(rng).into())
    } else {
        (random_v4(rng).into(), random_v4(rng).into())
    };
    let kind = [Kind::TcpSyn, Kind::Udp, Kind::EchoRequest][rng.below(3) as usize];
    let direction = if rng.chance(50) {
        Direction::Egress as u8
    } else {
        Direction::Ingress as u8
    };
    let service = if kind == Kind::EchoRequest {
        0
    } else {
        random_port(rng)
    };
    // A fresh client port (or echo id) per case: every case is a new flow.
    *next_port = if *next_port == u16::MAX {
        1024
    } else {
        *next_port + 1
    };
    let client = *next_port;
    let (src, dst, sport, dport) = if direction == Direction::Egress as u8 {
        (local, remote, client, service)
    } else {
        (remote, local, client, service)
    };
    let proto = match kind {
        Kind::TcpSyn => Protocol::Tcp as u8,
        Kind::Udp => Protocol::Udp as u8,
        Kind::EchoRequest => Protocol::Icmp as u8,
    };
    Case {
        bytes: ip_packet(kind, src, dst, sport, dport),
        direction,
        proto,
        service,
        remote,
        src,
        dst,
        sport,
        dport,
        kind,
    }
}

#[test]
fn kernel_verdicts_equal_the_reference_evaluator() {
    let _root = privileged!();
    let (seed, mut rng) = seeded_rng();
    let mut dp = Dataplane::load(&DataplaneOptions::default()).expect("load");
    let own = own_cgroup_id();
    let mut compared = 0u64;
    let mut allowed = 0u64;
    let mut next_port: u16 = 1024;
    for round in 0..40 {
        let policy = random_policy(&mut rng, &SHAPE);
        let workload = LOCALS[round % LOCALS.len()];
        let cgroups = [ResolvedCgroup {
            cgroup_id: own,
            workload,
            class: policy.class_of(workload),
            mode: Mode::Enforce as u8,
        }];
        dp.apply(&policy, &cgroups, &HostAddrs::default())
            .expect("apply");
        for _ in 0..120 {
            let c = random_case(&mut rng, &mut next_port);
            let r = resolve(&policy, c.remote);
            assert_eq!(
                r,
                eval::resolve_addr(&policy, c.remote),
                "address resolution"
            );
            let Decision { action, rule } = eval::evaluate(&policy, &c.connection(workload, r));
            let outcome = dp.test_run_skb(c.direction, &c.bytes).expect("test run");
            let expected = u32::from(action == Action::Allow as u8);
            assert_eq!(
                outcome.verdict, expected,
                "seed {seed} round {round}: {c} (remote identity {r}) expected rule {rule}"
            );
            // The flow records the same rule and identities.
            let flow = c.flow_in(&dp);
            assert_eq!(
                (flow.rule, flow.remote, flow.local),
                (rule, r, workload),
                "seed {seed}"
            );
            assert_eq!(
                (flow.direction, flow.service_port),
                (c.direction, c.service)
            );
            compared += 1;
            allowed += u64::from(expected);
        }
        dp.clear_flows().expect("clear flows");
    }
    println!("compared {compared} cases with the reference evaluator ({allowed} allowed)");
    assert!(
        allowed > 0 && allowed < compared,
        "both verdicts must occur"
    );
}

/// The scenarios of the modes test: a workload's mode, or an unmanaged
/// process under an `--unmanaged` setting.
#[derive(Clone, Copy, Debug)]
enum Scenario {
    Workload(Mode),
    Unmanaged(UnmanagedMode),
}

#[test]
fn modes_unmanaged_and_failsafe_follow_the_reference() {
    let _root = privileged!();
    let (seed, mut rng) = seeded_rng();
    let mut dp = Dataplane::load(&DataplaneOptions::default()).expect("load");
    let own = own_cgroup_id();
    let scenarios = [
        Scenario::Workload(Mode::Enforce),
        Scenario::Workload(Mode::Audit),
        Scenario::Workload(Mode::Off),
        Scenario::Unmanaged(UnmanagedMode::Allow),
        Scenario::Unmanaged(UnmanagedMode::Audit),
        Scenario::Unmanaged(UnmanagedMode::Deny),
    ];
    let mut compared = 0u64;
    let mut next_port: u16 = 1024;
    for round in 0..36 {
        let scenario = scenarios[round % scenarios.len()];
        let policy = random_policy(&mut rng, &SHAPE);
        let workload = LOCALS[rng.below(LOCALS.len() as u64) as usize];
        let failsafe = FailsafePort {
            protocol: if rng.chance(50) {
                Protocol::Tcp as u8
            } else {
                Protocol::Udp as u8
            },
            port: random_port(&mut rng),
        };
        let (cgroups, unmanaged) = match scenario {
            Scenario::Workload(mode) => (
                vec![ResolvedCgroup {
                    cgroup_id: own,
                    workload,
                    class: policy.class_of(workload),
                    mode: mode as u8,
                }],
                UnmanagedMode::Allow,
            ),
            Scenario::Unmanaged(u) => (Vec::new(), u),
        };
        dp.set_unmanaged(unmanaged).expect("unmanaged");
        dp.set_failsafe(&[failsafe]).expect("failsafe");
        dp.apply(&policy, &cgroups, &HostAddrs::default())
            .expect("apply");
        for _ in 0..100 {
            let c = random_case(&mut rng, &mut next_port);
            let r = eval::resolve_addr(&policy, c.remote);
            let decision = eval::evaluate(&policy, &c.connection(workload, r));
            let is_failsafe = c.direction == Direction::Ingress as u8
                && c.proto == failsafe.protocol
                && c.service == failsafe.port;
            let (action, rule) = if is_failsafe {
                (Action::Allow as u8, RULE_BUILTIN)
            } else {
                match scenario {
                    Scenario::Workload(Mode::Off) => (Action::Allow as u8, RULE_MODE_OFF),
                    Scenario::Workload(Mode::Audit) if decision.action == Action::Deny as u8 => {
                        (Action::Audit as u8, decision.rule)
                    }
                    Scenario::Workload(_) => (decision.action, decision.rule),
                    Scenario::Unmanaged(UnmanagedMode::Allow) => {
                        (Action::Allow as u8, RULE_UNMANAGED)
                    }
                    Scenario::Unmanaged(UnmanagedMode::Audit) => {
                        (Action::Audit as u8, RULE_UNMANAGED)
                    }
                    Scenario::Unmanaged(UnmanagedMode::Deny) => {
                        (Action::Deny as u8, RULE_UNMANAGED)
                    }
                }
            };
            let outcome = dp.test_run_skb(c.direction, &c.bytes).expect("test run");
            let context = format!("seed {seed} round {round} {scenario:?}: {c}");
            assert_eq!(
                outcome.verdict,
                u32::from(action != Action::Deny as u8),
                "{context}"
            );
            let flow = c.flow_in(&dp);
            assert_eq!((flow.action, flow.rule), (action, rule), "{context}");
            compared += 1;
        }
        dp.clear_flows().expect("clear flows");
    }
    println!("compared {compared} cases across modes, unmanaged settings and failsafe ports");
}

/// A denied flow reports once, its later packets take the fast path without
/// events during the one-second quiet period (checked with jiffies, see
/// `FlowValue::quiet_until`), and the first packet after it reports again.
#[test]
fn denied_flow_events_are_rate_limited_per_second() {
    let _root = privileged!();
    let mut dp = Dataplane::load(&DataplaneOptions::default()).expect("load");
    let mut events = dp.take_events().expect("events");
    let cgroups = [enforced(own_cgroup_id(), WORKLOADS[0].0)];
    // No verdicts: everything the workload sends is denied by default.
    dp.apply(
        &empty_policy(&WORKLOADS, &PEERS),
        &cgroups,
        &HostAddrs::default(),
    )
    .expect("apply");
    let ends: [(IpAddr, IpAddr); 2] = [
        (
            Ipv4Addr::new(198, 51, 100, 1).into(),
            Ipv4Addr::new(203, 0, 113, 9).into(),
        ),
        (
            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1).into(),
            Ipv6Addr::new(0x2001, 0xdb8, 9, 0, 0, 0, 0, 9).into(),
        ),
    ];
    for (src, dst) in ends {
        let syn = ip_packet(Kind::TcpSyn, src, dst, 40_000, 8080);
        let mut ack = syn.clone();
        let flags = if src.is_ipv6() { 40 } else { 20 } + 13;
        ack[flags] = packet::TCP_ACK;
        let ours = |events: &mut enforcer::dataplane::EventReader| {
            events
                .drain()
                .into_iter()
                .filter(|e| e.local_port == 40_000 && e.remote_port == 8080)
                .count()
        };
        ours(&mut events);

        let first = dp
            .test_run_skb(Direction::Egress as u8, &syn)
            .expect("test run");
        assert!(!first.passed(), "{src}: the SYN is denied");
        assert_eq!(ours(&mut events), 1, "{src}: the first packet reports");
        let key = FlowKey::of_packet(&packet::parse(&syn[..]).expect("parse"), Direction::Egress);
        let flow = dp.flow(&key).expect("read flow").expect("flow stored");
        assert_eq!(flow.action, Action::Deny as u8);
        assert_ne!(flow.quiet_until, 0, "{src}: the quiet period is known");

        let burst = dp
            .test_run_skb_repeat(Direction::Egress as u8, &ack, 1000)
            .expect("test run");
        assert!(!burst.passed(), "{src}: later packets are denied");
        assert_eq!(ours(&mut events), 0, "{src}: no event within a second");

        std::thread::sleep(std::time::Duration::from_millis(1100));
        let later = dp
            .test_run_skb(Direction::Egress as u8, &ack)
            .expect("test run");
        assert!(!later.passed(), "{src}: still denied");
        assert_eq!(ours(&mut events), 1, "{src}: a second later, one event");
        let again = dp
            .test_run_skb(Direction::Egress as u8, &ack)
            .expect("test run");
        assert!(!again.passed());
        assert_eq!(ours(&mut events), 0, "{src}: then quiet again");
        let renewed = dp.flow(&key).expect("read flow").expect("flow stored");
        assert!(renewed.last_event_ns > flow.last_event_ns);
        assert_ne!(renewed.quiet_until, flow.quiet_until);
    }
}
