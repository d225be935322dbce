//! Property tests over random policies: order never matters, the compiled
//! entries agree with the naive source-model evaluator, and the parser never
//! panics whatever it is fed.

use std::path::PathBuf;
use std::time::SystemTime;

use enforcer::compile::{CompiledPolicy, compile};
use enforcer::eval::source::{self, Entity};
use enforcer::eval::{Connection, evaluate};
use enforcer::policy::{LoadError, Loaded, PolicySet, ServicePort, load_sources, parse_rfc3339};
use enforcer_common::{
    identity::{IDENTITY_HOST, IDENTITY_WORLD},
    protocol::Protocol,
    verdict::{Action, Direction},
};
use proptest::prelude::*;

const NOW: &str = "2026-11-29T12:00:00Z";
const APPS: [&str; 3] = ["a", "b", "c"];
const ENVS: [&str; 2] = ["p", "s"];
const ZONES: [&str; 2] = ["x", "y"];
const CIDRS: [&str; 8] = [
    "198.51.100.0/24",
    "198.51.100.0/25",
    "198.51.100.128/26",
    "198.51.100.7",
    "203.0.113.0/24",
    "203.0.113.64/27",
    "2001:db8::/32",
    "2001:db8:1::/48",
];
const PORTS: [&str; 11] = [
    "1-2/tcp",
    "22/tcp",
    "80-90/tcp",
    "85/tcp",
    "tcp",
    "udp",
    "53/udp",
    "icmp",
    "1-1000/udp",
    "1024-65535/tcp",
    "65535/tcp",
];
const SECTIONS: [&str; 4] = ["allow-in", "allow-out", "deny-in", "deny-out"];
const UNTILS: [&str; 2] = ["2026-01-01T00:00:00Z", "2027-01-01T00:00:00Z"];

/// One item of a policy file, already rendered as TOML text.
#[derive(Clone, Debug)]
struct Item(String);

#[derive(Clone, Debug)]
struct GenRule {
    remotes: Vec<String>,
    ports: Option<Vec<&'static str>>,
    until: Option<&'static str>,
}

#[derive(Clone, Debug)]
struct GenPolicy {
    select: String,
    sections: [Vec<GenRule>; 4],
}

#[derive(Clone, Debug)]
struct Gen {
    workloads: Vec<(usize, usize)>,
    /// (cidr indexes, zone, app label index or none)
    peers: Vec<(Vec<usize>, usize, Option<usize>)>,
    policies: Vec<GenPolicy>,
}

fn selector(n_workloads: usize, n_peers: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        Just("\"world\"".to_string()),
        Just("\"host\"".to_string()),
        Just("\"any\"".to_string()),
        (0..n_workloads.max(1)).prop_map(|i| format!("\"workload:w{i}\"")),
        (0..n_peers.max(1)).prop_map(move |i| if n_peers == 0 {
            "\"any\"".into()
        } else {
            format!("\"peer:p{i}\"")
        }),
        (0..APPS.len()).prop_map(|i| format!("{{ app = \"{}\" }}", APPS[i])),
        (0..ZONES.len()).prop_map(|i| format!("{{ zone = \"{}\" }}", ZONES[i])),
        (0..APPS.len()).prop_map(|i| format!("{{ app = \"{}\", env = [\"p\", \"s\"] }}", APPS[i])),
        (0..ENVS.len()).prop_map(|i| format!("{{ env = \"{}\" }}", ENVS[i])),
    ]
}

fn rule(n_workloads: usize, n_peers: usize) -> impl Strategy<Value = GenRule> {
    (
        prop::collection::vec(selector(n_workloads, n_peers), 1..3),
        prop::option::weighted(
            0.8,
            prop::collection::vec(prop::sample::select(PORTS.to_vec()), 1..3),
        ),
        prop::option::weighted(0.2, prop::sample::select(UNTILS.to_vec())),
    )
        .prop_map(|(remotes, ports, until)| GenRule {
            remotes,
            ports,
            until,
        })
}

fn policy(n_workloads: usize, n_peers: usize) -> impl Strategy<Value = GenPolicy> {
    let select = prop_oneof![
        (0..APPS.len()).prop_map(|i| format!("{{ app = \"{}\" }}", APPS[i])),
        (0..ENVS.len()).prop_map(|i| format!("{{ env = \"{}\" }}", ENVS[i])),
        (0..n_workloads.max(1)).prop_map(|i| format!("\"workload:w{i}\"")),
    ];
    let section = move || prop::collection::vec(rule(n_workloads, n_peers), 0..4);
    (select, section(), section(), section(), section()).prop_map(|(select, a, b, c, d)| {
        GenPolicy {
            select,
            sections: [a, b, c, d],
        }
    })
}

fn policy_set() -> impl Strategy<Value = Gen> {
    (1usize..5, 0usize..4).prop_flat_map(|(nw, np)| {
        let workloads = prop::collection::vec((0..APPS.len(), 0..ENVS.len()), nw);
        // Each CIDR goes to at most one peer: a random owner per CIDR.
        let owners = prop::collection::vec(0..np + 2, CIDRS.len());
        let peer_labels =
            prop::collection::vec((0..ZONES.len(), prop::option::of(0..APPS.len())), np);
        let policies = prop::collection::vec(policy(nw, np), 1..4);
        (workloads, owners, peer_labels, policies).prop_map(
            move |(workloads, owners, labels, policies)| {
                let peers = labels
                    .into_iter()
                    .enumerate()
                    .map(|(p, (zone, app))| {
                        let mut cidrs: Vec<usize> =
                            (0..CIDRS.len()).filter(|&c| owners[c] == p).collect();
                        if cidrs.is_empty() {
                            // A private address per peer keeps every peer valid.
                            cidrs.push(usize::MAX - p);
                        }
                        (cidrs, zone, app)
                    })
                    .collect();
                Gen {
                    workloads,
                    peers,
                    policies,
                }
            },
        )
    })
}

fn cidr_text(i: usize) -> String {
    match CIDRS.get(i) {
        Some(c) => (*c).to_string(),
        None => format!("203.0.113.{}", 200 + (usize::MAX - i)),
    }
}

impl Gen {
    /// Every top-level item, in declaration order.
    fn items(&self, rule_order_seed: Option<u64>) -> Vec<Item> {
        let mut items = Vec::new();
        for (i, (app, env)) in self.workloads.iter().enumerate() {
            items.push(Item(format!(
                "[workload.w{i}]\nunit = \"w{i}.service\"\nlabels = {{ app = \"{}\", env = \"{}\" }}\n",
                APPS[*app], ENVS[*env]
            )));
        }
        for (i, (cidrs, zone, app)) in self.peers.iter().enumerate() {
            let cidrs: Vec<String> = cidrs
                .iter()
                .map(|&c| format!("\"{}\"", cidr_text(c)))
                .collect();
            let app = app
                .map(|a| format!(", app = \"{}\"", APPS[a]))
                .unwrap_or_default();
            items.push(Item(format!(
                "[peer.p{i}]\ncidrs = [{}]\nlabels = {{ zone = \"{}\"{app} }}\n",
                cidrs.join(", "),
                ZONES[*zone]
            )));
        }
        for (i, p) in self.policies.iter().enumerate() {
            let mut text = format!(
                "[[policy]]\nname = \"pol{i}\"\nselect = {}\noptional = true\n",
                p.select
            );
            for (s, rules) in SECTIONS.iter().zip(&p.sections) {
                let mut rules = rules.clone();
                if let Some(seed) = rule_order_seed {
                    shuffle(&mut rules, seed ^ (i as u64) << 8);
                }
                let remote = if s.ends_with("-in") { "from" } else { "to" };
                let rendered: Vec<String> = rules
                    .iter()
                    .map(|r| {
                        let mut t =
                            format!("{{ {remote} = [{}], optional = true", r.remotes.join(", "));
                        if let Some(ports) = &r.ports {
                            let ports: Vec<String> =
                                ports.iter().map(|p| format!("\"{p}\"")).collect();
                            t.push_str(&format!(", ports = [{}]", ports.join(", ")));
                        }
                        if let Some(u) = r.until {
                            t.push_str(&format!(", until = \"{u}\""));
                        }
                        t.push_str(" }");
                        t
                    })
                    .collect();
                text.push_str(&format!("{s} = [{}]\n", rendered.join(", ")));
            }
            items.push(Item(text));
        }
        items
    }
}

/// A deterministic Fisher-Yates shuffle (xorshift).
fn shuffle<T>(v: &mut [T], seed: u64) {
    let mut x = seed | 1;
    for i in (1..v.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
}

/// Spreads items over `files` files (round-robin after a shuffle).
fn files(items: &[Item], files: usize, seed: Option<u64>) -> Vec<(PathBuf, String)> {
    let mut items = items.to_vec();
    if let Some(seed) = seed {
        shuffle(&mut items, seed);
    }
    let mut out: Vec<(PathBuf, String)> = (0..files)
        .map(|f| (PathBuf::from(format!("{f:02}.toml")), String::new()))
        .collect();
    for (i, item) in items.iter().enumerate() {
        out[i % files].1.push_str(&item.0);
        out[i % files].1.push('\n');
    }
    out
}

fn load(sources: &[(PathBuf, String)]) -> Loaded {
    match load_sources(sources) {
        Ok(l) => l,
        Err(e) => panic!("generated policy is invalid: {e}\n{sources:#?}"),
    }
}

fn now() -> SystemTime {
    parse_rfc3339(NOW).unwrap_or(SystemTime::UNIX_EPOCH)
}

const SERVICE_PORTS: [(u8, u16); 14] = [
    (Protocol::Tcp as u8, 1),
    (Protocol::Tcp as u8, 22),
    (Protocol::Tcp as u8, 80),
    (Protocol::Tcp as u8, 85),
    (Protocol::Tcp as u8, 90),
    (Protocol::Tcp as u8, 91),
    (Protocol::Tcp as u8, 1023),
    (Protocol::Tcp as u8, 1024),
    (Protocol::Tcp as u8, 65535),
    (Protocol::Udp as u8, 53),
    (Protocol::Udp as u8, 1000),
    (Protocol::Udp as u8, 1001),
    (Protocol::Icmp as u8, 0),
    (Protocol::Udp as u8, 65535),
];

/// Every (local workload, direction, remote, port) of a compiled policy.
fn connections(c: &CompiledPolicy) -> Vec<Connection> {
    let mut remotes: Vec<u32> = c.entities.iter().map(|e| e.identity).collect();
    remotes.retain(|&r| r != IDENTITY_WORLD && r != IDENTITY_HOST);
    remotes.extend([IDENTITY_WORLD, IDENTITY_HOST]);
    let mut out = Vec::new();
    for w in &c.workloads {
        for direction in [Direction::Egress as u8, Direction::Ingress as u8] {
            for &remote in &remotes {
                for (protocol, port) in SERVICE_PORTS {
                    out.push(Connection {
                        local: w.identity,
                        direction,
                        remote,
                        protocol,
                        port,
                    });
                }
            }
        }
    }
    out
}

fn source_entity(c: &CompiledPolicy, set: &PolicySet, id: u32) -> Entity {
    match id {
        IDENTITY_WORLD => Entity::World,
        IDENTITY_HOST => Entity::Host,
        _ => {
            let name = c.entity(id).map(|e| e.name.clone()).unwrap_or_default();
            if let Some(w) = set.workloads.iter().find(|w| w.name.as_str() == name) {
                Entity::Workload(w.name.clone())
            } else if let Some(p) = set.peers.iter().find(|p| p.name.as_str() == name) {
                Entity::Peer(p.name.clone())
            } else {
                panic!("identity {id} is no entity")
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn file_and_item_order_give_byte_identical_output(g in policy_set(), n_files in 1usize..4, seed in any::<u64>()) {
        let items = g.items(None);
        let a = compile(&load(&files(&items, 1, None)).set, now()).unwrap();
        let b = compile(&load(&files(&items, n_files, Some(seed))).set, now()).unwrap();
        prop_assert_eq!(&a, &b);
        prop_assert_eq!(a.content_hash, b.content_hash);
    }

    #[test]
    fn rule_order_never_changes_a_verdict(g in policy_set(), seed in any::<u64>()) {
        let a = compile(&load(&files(&g.items(None), 2, None)).set, now()).unwrap();
        let b = compile(&load(&files(&g.items(Some(seed)), 2, Some(seed))).set, now()).unwrap();
        prop_assert_eq!(&a.entities, &b.entities);
        for conn in connections(&a) {
            prop_assert_eq!(evaluate(&a, &conn).action, evaluate(&b, &conn).action, "{:?}", conn);
        }
    }

    #[test]
    fn compiled_entries_agree_with_the_source_model(g in policy_set()) {
        let loaded = load(&files(&g.items(None), 2, None));
        let c = compile(&loaded.set, now()).unwrap();
        for conn in connections(&c) {
            let compiled = evaluate(&c, &conn);
            let local = match source_entity(&c, &loaded.set, conn.local) {
                Entity::Workload(n) => n,
                other => panic!("local end {other:?} is no workload"),
            };
            let remote = source_entity(&c, &loaded.set, conn.remote);
            let port = ServicePort { protocol: conn.protocol, port: conn.port };
            let (verdict, rule) = source::evaluate(&loaded.set, now(), &local, conn.direction, &remote, port);
            prop_assert_eq!(compiled.action == Action::Allow as u8, verdict == enforcer::policy::Verdict::Allow, "{:?}", conn);
            let expected = rule.map_or_else(|| "default deny".to_string(), |r| r.to_string());
            prop_assert_eq!(c.rule_name(compiled.rule), expected, "{:?}", conn);
        }
    }

    #[test]
    fn the_parser_never_panics_on_arbitrary_text(text in "\\PC{0,300}") {
        let _ = load_sources(&[(PathBuf::from("f.toml"), text)]);
    }

    #[test]
    fn the_parser_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let _ = load_sources(&[(PathBuf::from("f.toml"), text)]);
    }

    #[test]
    fn the_parser_never_panics_on_mutated_policies(
        g in policy_set(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), 0u8..3, prop::sample::select(vec!['"', '[', ']', '{', '}', '=', ',', '\n', '/', '-', '*', ':', 'a', '9', ' ', '.', '#'])), 1..6),
    ) {
        let mut text: Vec<char> = files(&g.items(None), 1, None).remove(0).1.chars().collect();
        for (at, op, ch) in edits {
            if text.is_empty() {
                break;
            }
            let i = at.index(text.len());
            match op {
                0 => { text.remove(i); }
                1 => text.insert(i, ch),
                _ => text[i] = ch,
            }
        }
        let text: String = text.into_iter().collect();
        match load_sources(&[(PathBuf::from("f.toml"), text)]) {
            Ok(loaded) => {
                let _ = enforcer::check::compile_loaded(loaded, now());
            }
            Err(LoadError::Invalid(d)) => prop_assert!(d.has_errors()),
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
    }
}
