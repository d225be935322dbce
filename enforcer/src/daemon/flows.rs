//! The `flows` history: verdict events from the kernel, turned into the
//! contract's JSON records (entity and rule names resolved against the
//! policy in force), kept in a bounded ring and broadcast to followers.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use enforcer_common::{
    event::VerdictEvent,
    identity::{IDENTITY_HOST, IDENTITY_WORLD, Identity},
    protocol::Protocol,
    verdict::{Action, Direction},
};
use tokio::sync::broadcast;

use crate::api::{FlowRecord, Verdict};
use crate::compile::CompiledPolicy;

/// Which records a client wants.
#[derive(Clone, Debug, Default)]
pub struct FlowFilter {
    pub workload: Option<String>,
    pub verdict: Option<Verdict>,
}

impl FlowFilter {
    pub fn matches(&self, record: &FlowRecord) -> bool {
        self.workload.as_ref().is_none_or(|w| *w == record.workload)
            && self.verdict.is_none_or(|v| v == record.verdict)
    }
}

/// The last `capacity` records, oldest first.
pub struct FlowHistory {
    records: VecDeque<FlowRecord>,
    capacity: usize,
    followers: broadcast::Sender<FlowRecord>,
}

impl FlowHistory {
    pub fn new(capacity: usize) -> FlowHistory {
        let (followers, _) = broadcast::channel(1024);
        FlowHistory {
            records: VecDeque::with_capacity(capacity.min(1 << 16)),
            capacity: capacity.max(1),
            followers,
        }
    }

    pub fn push(&mut self, record: FlowRecord) {
        if self.records.len() == self.capacity {
            self.records.pop_front();
        }
        // No follower is fine: the record is still kept.
        let _ = self.followers.send(record.clone());
        self.records.push_back(record);
    }

    /// The matching records, oldest first.
    pub fn snapshot(&self, filter: &FlowFilter) -> Vec<FlowRecord> {
        self.records
            .iter()
            .filter(|r| filter.matches(r))
            .cloned()
            .collect()
    }

    /// Records pushed from now on. Take it under the same lock as the
    /// snapshot so that nothing falls between the two.
    pub fn subscribe(&self) -> broadcast::Receiver<FlowRecord> {
        self.followers.subscribe()
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

/// The name of an identity: the policy's entity name, or a placeholder
/// when the event predates the policy that knew it.
fn entity_name(policy: Option<&CompiledPolicy>, identity: Identity) -> String {
    match (policy.and_then(|p| p.entity(identity)), identity) {
        (Some(e), _) => e.name.clone(),
        (None, IDENTITY_WORLD) => "world".into(),
        (None, IDENTITY_HOST) => "host".into(),
        (None, other) => format!("#{other}"),
    }
}

fn address(family: u8, bytes: &[u8; 16]) -> IpAddr {
    if family == 4 {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*bytes))
    }
}

fn endpoint(protocol: u8, addr: IpAddr, port: u16) -> String {
    if protocol == Protocol::Icmp as u8 {
        addr.to_string()
    } else {
        SocketAddr::new(addr, port).to_string()
    }
}

/// A kernel event as a `flows` record.
pub fn record_from_event(event: &VerdictEvent, policy: Option<&CompiledPolicy>) -> FlowRecord {
    let protocol = match Protocol::from_raw(event.protocol) {
        Some(Protocol::Tcp) => "tcp".to_owned(),
        Some(Protocol::Udp) => "udp".to_owned(),
        Some(Protocol::Icmp) => "icmp".to_owned(),
        None => event.protocol.to_string(),
    };
    let verdict = match Action::from_raw(event.action) {
        Some(Action::Deny) => Verdict::Deny,
        Some(Action::Audit) => Verdict::Audit,
        Some(Action::Allow) | None => Verdict::Allow,
    };
    let rule = match policy {
        Some(p) => p.rule_name(event.rule),
        None if event.rule == enforcer_common::verdict::RULE_DEFAULT_DENY => "default deny".into(),
        None => format!("rule #{}", event.rule),
    };
    FlowRecord {
        time: crate::rfc3339::format_millis(super::time::from_monotonic(event.time_ns)),
        workload: entity_name(policy, event.local),
        direction: if event.direction == Direction::Egress as u8 {
            "egress"
        } else {
            "ingress"
        }
        .into(),
        local: endpoint(
            event.protocol,
            address(event.family, &event.local_addr),
            event.local_port,
        ),
        remote: endpoint(
            event.protocol,
            address(event.family, &event.remote_addr),
            event.remote_port,
        ),
        protocol,
        peer: entity_name(policy, event.remote),
        verdict,
        rule,
    }
}

#[cfg(test)]
mod tests {
    use enforcer_common::verdict::{Direction, RULE_DEFAULT_DENY};

    use super::*;
    use crate::compile::{EntityInfo, EntityKind};

    fn policy() -> CompiledPolicy {
        CompiledPolicy {
            entities: [
                EntityInfo::builtins(),
                vec![
                    EntityInfo::new(16, EntityKind::Workload, "api"),
                    EntityInfo::new(17, EntityKind::Peer, "vendor-support"),
                ],
            ]
            .concat(),
            workloads: Vec::new(),
            prefixes_v4: Vec::new(),
            prefixes_v6: Vec::new(),
            verdicts: Vec::new(),
            rules: Vec::new(),
            next_expiry: None,
            content_hash: 1,
        }
    }

    fn event(family: u8, action: u8) -> VerdictEvent {
        let mut local_addr = [0u8; 16];
        let mut remote_addr = [0u8; 16];
        if family == 4 {
            local_addr[..4].copy_from_slice(&[198, 51, 100, 1]);
            remote_addr[..4].copy_from_slice(&[198, 51, 100, 17]);
        } else {
            local_addr = "2001:db8::1".parse::<Ipv6Addr>().unwrap().octets();
            remote_addr = "2001:db8::2".parse::<Ipv6Addr>().unwrap().octets();
        }
        VerdictEvent {
            time_ns: super::super::time::monotonic_ns(),
            cgroup_id: 5,
            local: 16,
            remote: 17,
            rule: RULE_DEFAULT_DENY,
            family,
            protocol: Protocol::Tcp as u8,
            direction: Direction::Egress as u8,
            action,
            local_port: 40512,
            remote_port: 443,
            generation: 1,
            local_addr,
            remote_addr,
        }
    }

    #[test]
    fn events_become_contract_records() {
        let r = record_from_event(&event(4, Action::Deny as u8), Some(&policy()));
        assert_eq!(r.workload, "api");
        assert_eq!(r.direction, "egress");
        assert_eq!(r.protocol, "tcp");
        assert_eq!(r.local, "198.51.100.1:40512");
        assert_eq!(r.remote, "198.51.100.17:443");
        assert_eq!(r.peer, "vendor-support");
        assert_eq!(r.verdict, Verdict::Deny);
        assert_eq!(r.rule, "default deny");
        assert!(r.time.ends_with('Z') && r.time.len() == 24, "{}", r.time);

        let mut e = event(6, Action::Audit as u8);
        e.direction = Direction::Ingress as u8;
        e.remote = 99;
        let r = record_from_event(&e, Some(&policy()));
        assert_eq!(r.local, "[2001:db8::1]:40512");
        assert_eq!(r.direction, "ingress");
        assert_eq!(r.verdict, Verdict::Audit);
        assert_eq!(r.peer, "#99");
    }

    #[test]
    fn the_history_is_bounded_filtered_and_followed() {
        let mut h = FlowHistory::new(3);
        let mut follower = h.subscribe();
        for (i, action) in [
            Action::Deny as u8,
            Action::Audit as u8,
            Action::Deny as u8,
            Action::Deny as u8,
        ]
        .into_iter()
        .enumerate()
        {
            let mut e = event(4, action);
            e.local_port = 1000 + i as u16;
            h.push(record_from_event(&e, Some(&policy())));
        }
        assert_eq!(h.len(), 3);
        let all = h.snapshot(&FlowFilter::default());
        assert_eq!(
            all[0].local, "198.51.100.1:1001",
            "the oldest record was dropped"
        );
        let audits = h.snapshot(&FlowFilter {
            verdict: Some(Verdict::Audit),
            workload: None,
        });
        assert_eq!(audits.len(), 1);
        let none = h.snapshot(&FlowFilter {
            verdict: None,
            workload: Some("db".into()),
        });
        assert!(none.is_empty());
        assert_eq!(follower.try_recv().unwrap().local, "198.51.100.1:1000");
    }
}
