//! The connections the demo makes, what the policy says about each (the
//! library call behind `enforcer explain`), and what really happened.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::{Duration, SystemTime},
};

use anyhow::{Result, bail};
use enforcer::{
    api::{FlowRecord, Verdict},
    compile::CompiledPolicy,
    eval::{Flow, judge_flow, resolve_addr},
    policy::{RuleRef, ServicePort},
    rfc3339,
};
use enforcer_common::{identity::Identity, protocol::Protocol, verdict::Action, workload::Mode};
use enforcer_tests::{Probe, ProbeOutcome, ProbeReport};

use super::{
    daemon::port_of,
    stage::{Enforcement, Place, Remote, Stage, Tier, VENDOR_ADDR},
};

/// One connection to make.
#[derive(Clone, Debug)]
pub(crate) struct Case {
    pub client: Place,
    /// The source address, when the client must use a particular one.
    pub bind: Option<IpAddr>,
    pub server: Place,
    pub dest: SocketAddr,
}

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// The demo's connections: inbound from the office (IPv4 and IPv6), the
/// vendor and the rest of the world; between the workloads over loopback;
/// and one that only audit mode lets through.
pub(crate) fn plan(stage: &Stage) -> Vec<Case> {
    use Place::{Local, Remote as R};
    let office4 = stage.office.local_ipv4();
    let office6 = stage.office.local_ipv6();
    let vendor4 = stage.vendor.local_ipv4();
    let world4 = stage.world.local_ipv4();
    let world6 = stage.world.local_ipv6();
    let case = |client, bind, server, ip, port| Case {
        client,
        bind,
        server,
        dest: SocketAddr::new(ip, port),
    };
    vec![
        case(R(Remote::Office), None, Local(Tier::Db), office4, 5432),
        case(R(Remote::Office), None, Local(Tier::Db), office6, 5432),
        case(R(Remote::Office), None, Local(Tier::Db), office4, 22),
        case(
            R(Remote::Vendor),
            Some(VENDOR_ADDR),
            Local(Tier::Db),
            vendor4,
            22,
        ),
        case(R(Remote::World), None, Local(Tier::Db), world4, 5432),
        case(R(Remote::World), None, Local(Tier::Db), world6, 5432),
        case(R(Remote::World), None, Local(Tier::Web), world4, 443),
        case(R(Remote::Office), None, Local(Tier::Web), office6, 80),
        case(Local(Tier::Web), None, Local(Tier::Api), LOOPBACK, 8080),
        case(Local(Tier::Api), None, Local(Tier::Db), LOOPBACK, 5432),
        case(Local(Tier::Db), None, Local(Tier::Web), LOOPBACK, 80),
        case(
            Local(Tier::Api),
            None,
            R(Remote::World),
            stage.world.ipv4(),
            443,
        ),
    ]
}

/// What a client sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Connected and got its message echoed.
    Connected,
    /// `connect()` failed at once with EPERM: a hook on this host refused.
    Refused,
    /// No answer: the packets were dropped.
    Dropped,
}

/// A verdict event of the kernel, as the demo compares it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Event {
    /// Deny or audit.
    pub verdict: Verdict,
    /// The rule's name: `db deny-in[0]`, `default deny`.
    pub rule: String,
}

/// One end of a connection, named.
#[derive(Clone, Debug)]
pub(crate) struct End {
    pub identity: Identity,
    /// `office 203.0.113.2`, `db`.
    pub label: String,
}

/// What the policy says about a case, and what should therefore happen.
#[derive(Clone, Debug)]
pub(crate) struct Expectation {
    pub from: End,
    pub to: End,
    pub port: ServicePort,
    /// `allow` or `deny`, as `enforcer explain` prints it.
    pub verdict: &'static str,
    /// The deciding rule(s), as `enforcer explain` prints them.
    pub rule: String,
    /// `api in audit mode` when an audited end denies; `until TIME` for a
    /// temporary allow.
    pub note: Option<String>,
    pub outcome: Outcome,
    /// The event the kernel must send (denials and audits).
    pub event: Option<Event>,
}

/// The identity of a place: a workload's from the cgroup resolution, a test
/// host's from its address, by longest prefix over the peers.
/// The workload's address is part of the label on the receiving end.
fn end(
    stage: &Stage,
    policy: &CompiledPolicy,
    place: Place,
    addr: IpAddr,
    receiver: bool,
) -> Result<End> {
    match place {
        Place::Local(tier) => {
            let Some(r) = stage.resolution(tier) else {
                bail!(
                    "the demo's {} cgroup matches no workload of the policy",
                    stage.cgroup(tier).relative_path()
                );
            };
            Ok(End {
                identity: r.cgroup.workload,
                label: if receiver {
                    format!("{} {addr}", r.workload)
                } else {
                    r.workload.clone()
                },
            })
        }
        Place::Remote(_) => {
            let identity = resolve_addr(policy, addr);
            let name = policy
                .entity(identity)
                .map_or_else(|| format!("identity {identity}"), |e| e.name.clone());
            Ok(End {
                identity,
                label: format!("{name} {addr}"),
            })
        }
    }
}

/// The client's source address, as the server will see it.
fn source(stage: &Stage, case: &Case) -> IpAddr {
    match (case.bind, case.client) {
        (Some(ip), _) => ip,
        (None, Place::Remote(r)) => {
            let host = stage.host(r);
            if case.dest.is_ipv6() {
                host.ipv6()
            } else {
                host.ipv4()
            }
        }
        (None, Place::Local(_)) => case.dest.ip(),
    }
}

/// The policy's verdict (what `enforcer explain --from --to --port` says)
/// and the outcome and kernel event it implies.
/// `untils` holds the rules with an `until`, to show when an allow ends.
pub(crate) fn expect(
    stage: &Stage,
    policy: &CompiledPolicy,
    untils: &BTreeMap<RuleRef, SystemTime>,
    case: &Case,
) -> Result<Expectation> {
    let from = end(stage, policy, case.client, source(stage, case), false)?;
    let to = end(stage, policy, case.server, case.dest.ip(), true)?;
    let port = ServicePort {
        protocol: Protocol::Tcp as u8,
        port: case.dest.port(),
    };
    let flow = judge_flow(policy, from.identity, to.identity, port);
    let verdict = flow.verdict().map_or("unmanaged", |v| v.as_str());
    let rule = flow.deciding_rules(policy);
    let ends = match &flow {
        Flow::Judged(ends) => ends.as_slice(),
        Flow::Ungoverned => &[],
    };
    let mode = |identity| policy.workload(identity).map(|w| w.mode);
    // The ends that deny, in the order the kernel judges them (sender,
    // then receiver), and whether their mode lets the connection pass.
    let denying: Vec<_> = ends
        .iter()
        .filter(|e| e.decision.action != Action::Allow as u8)
        .filter(|e| mode(e.connection.local) != Some(Mode::Off as u8))
        .collect();
    let enforced = denying
        .iter()
        .find(|e| mode(e.connection.local) != Some(Mode::Audit as u8));
    let (outcome, event, note) = match (enforced, denying.first()) {
        (Some(e), _) => {
            // A client on this host is refused by `connect()`, which judges
            // its egress and a local receiver's ingress; a remote client's
            // SYN is dropped by the receiver's ingress program.
            let outcome = match case.client {
                Place::Local(_) => Outcome::Refused,
                Place::Remote(_) => Outcome::Dropped,
            };
            let event = Event {
                verdict: Verdict::Deny,
                rule: policy.rule_name(e.decision.rule),
            };
            (outcome, Some(event), None)
        }
        (None, Some(e)) => {
            let who = policy
                .workload(e.connection.local)
                .map_or("the workload", |w| w.name.as_str());
            let event = Event {
                verdict: Verdict::Audit,
                rule: policy.rule_name(e.decision.rule),
            };
            let note = format!("{who} in audit mode");
            (Outcome::Connected, Some(event), Some(note))
        }
        (None, None) => {
            // A temporary allow: say until when.
            let until = ends
                .iter()
                .filter_map(|e| policy.rules.get(e.decision.rule as usize))
                .find_map(|r| untils.get(r))
                .map(|t| format!("until {}", rfc3339::format(*t)));
            (Outcome::Connected, None, until)
        }
    };
    Ok(Expectation {
        from,
        to,
        port,
        verdict,
        rule,
        note,
        outcome,
        event,
    })
}

/// What really happened.
#[derive(Clone, Debug)]
pub(crate) struct Observation {
    pub report: ProbeReport,
    /// The first denial or audit event of this connection, if any.
    pub event: Option<Event>,
}

impl Observation {
    pub(crate) fn outcome(&self) -> Option<Outcome> {
        match self.report.outcome {
            ProbeOutcome::Ok => Some(Outcome::Connected),
            ProbeOutcome::Eperm => Some(Outcome::Refused),
            ProbeOutcome::Timeout => Some(Outcome::Dropped),
            _ => None,
        }
    }

    /// Whether it is what the policy says: the same outcome and, for
    /// denials and audits, an event naming the same rule.
    pub(crate) fn matches(&self, expected: &Expectation) -> bool {
        self.outcome() == Some(expected.outcome) && self.event == expected.event
    }
}

/// Makes the connection with a real client process.
pub(crate) fn run(stage: &Stage, case: &Case, timeout: Duration) -> ProbeReport {
    let mut probe = Probe::tcp_connect(case.dest)
        .timeout(timeout)
        .payload("hello from the enforcer demo");
    match case.client {
        Place::Local(tier) => probe = probe.cgroup(stage.cgroup(tier)),
        Place::Remote(r) => probe = probe.netns(stage.host(r)),
    }
    if let Some(ip) = case.bind {
        probe = probe.bind(SocketAddr::new(ip, 0));
    }
    probe.run()
}

/// The kernel's event about this connection: a denial or an audit of a
/// TCP flow whose service port is the case's port. Read from the data
/// plane's ring buffer (`--library`), or from the daemon's flow history
/// (what `enforcer flows` shows), waiting briefly when one is `expected`.
pub(crate) fn kernel_event(
    stage: &mut Stage,
    policy: &CompiledPolicy,
    case: &Case,
    expected: bool,
) -> Result<Option<Event>> {
    let port = case.dest.port();
    match stage.enforcement.as_mut() {
        Some(Enforcement::Library { events, .. }) => Ok(events
            .drain()
            .iter()
            .filter(|e| e.protocol == Protocol::Tcp as u8)
            .filter(|e| e.action == Action::Deny as u8 || e.action == Action::Audit as u8)
            .find(|e| e.local_port == port || e.remote_port == port)
            .map(|e| Event {
                verdict: if e.action == Action::Audit as u8 {
                    Verdict::Audit
                } else {
                    Verdict::Deny
                },
                rule: policy.rule_name(e.rule),
            })),
        Some(Enforcement::Daemon(daemon)) => {
            let about = |r: &FlowRecord| {
                r.protocol == "tcp"
                    && matches!(r.verdict, Verdict::Deny | Verdict::Audit)
                    && (port_of(&r.local) == Some(port) || port_of(&r.remote) == Some(port))
            };
            let records =
                daemon.new_records(expected.then_some(&about as &dyn Fn(&FlowRecord) -> bool))?;
            Ok(records.iter().find(|r| about(r)).map(|r| Event {
                verdict: r.verdict,
                rule: r.rule.clone(),
            }))
        }
        None => bail!("the policy is not in force"),
    }
}
