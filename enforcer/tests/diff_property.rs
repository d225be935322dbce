//! Property: for random pairs of policies, applying the diff's verdict
//! changes to OLD's verdicts gives NEW's verdicts, on every connection of a
//! small universe, judged by a reference evaluator that follows the kernel's
//! lookup chain entry by entry (a linear longest-prefix scan, sharing no code
//! with the interval engine under test).

use std::net::IpAddr;

use enforcer::compile::{CompiledPolicy, EntityKind};
use enforcer::diff::testkit::PolicyBuilder;
use enforcer::diff::{Change, DiffInput, PolicyDiff, diff};
use enforcer::eval::{Connection, evaluate, resolve_addr};
use enforcer_common::{
    identity::{IDENTITY_ANY, IDENTITY_ANY_EXTERNAL, IDENTITY_HOST, IDENTITY_WORLD, Identity},
    protocol::Protocol,
    verdict::{Action, Direction, RULE_DEFAULT_DENY, VerdictKey},
};
use proptest::prelude::*;

const WORKLOADS: [&str; 3] = ["a", "b", "c"];
const PEERS: [&str; 2] = ["p", "q"];
const CIDRS: [&str; 7] = [
    "203.0.113.0/24",
    "203.0.113.0/25",
    "203.0.113.128/26",
    "203.0.113.5",
    "2001:db8::/32",
    "2001:db8:1::/48",
    "198.51.100.0/24",
];
const ADDRESSES: [&str; 10] = [
    "203.0.113.1",
    "203.0.113.5",
    "203.0.113.130",
    "203.0.113.200",
    "198.51.100.9",
    "198.18.0.1",
    "2001:db8::1",
    "2001:db8:1::1",
    "2001:db8:2::1",
    "2001:db9::1",
];
const PORTS: [u16; 13] = [
    0, 1, 21, 22, 23, 80, 443, 1000, 1023, 1024, 8000, 65534, 65535,
];

/// One verdict entry of the random policy, by position in the universe.
#[derive(Clone, Debug)]
struct Entry {
    workload: usize,
    egress: bool,
    protocol: u8,
    /// 0..3 workloads, 3..5 peers, 5 world, 6 host, 7 ANY_EXTERNAL, 8 ANY.
    remote: usize,
    lo: u16,
    hi: u16,
    allow: bool,
    rule: usize,
}

#[derive(Clone, Debug)]
struct Side {
    workloads: [bool; 3],
    /// Owner of each CIDR: 0 none, 1 p, 2 q.
    owners: [u8; 7],
    entries: Vec<Entry>,
}

fn entry() -> impl Strategy<Value = Entry> {
    (
        0..3usize,
        any::<bool>(),
        prop::sample::select(vec![
            Protocol::Tcp as u8,
            Protocol::Udp as u8,
            Protocol::Icmp as u8,
        ]),
        0..9usize,
        prop::sample::select(PORTS.to_vec()),
        prop::sample::select(PORTS.to_vec()),
        any::<bool>(),
        0..6usize,
    )
        .prop_map(
            |(workload, egress, protocol, remote, a, b, allow, rule)| Entry {
                workload,
                egress,
                protocol,
                remote,
                lo: a.min(b),
                hi: a.max(b),
                allow,
                rule,
            },
        )
}

fn pair() -> impl Strategy<Value = (Side, Side)> {
    (
        prop::collection::vec(entry(), 0..10),
        prop::collection::vec(entry(), 0..5),
        prop::collection::vec(entry(), 0..5),
        prop::array::uniform3(any::<bool>()),
        prop::array::uniform3(prop::bool::weighted(0.8)),
        prop::array::uniform7(0u8..3),
        prop::array::uniform7(0u8..3),
        prop::array::uniform7(prop::bool::weighted(0.7)),
    )
        .prop_map(
            |(base, old_extra, new_extra, present, keep, old_owners, new_owners, same)| {
                let old = Side {
                    workloads: present,
                    owners: old_owners,
                    entries: base.iter().chain(&old_extra).cloned().collect(),
                };
                let mut new_owners = new_owners;
                for i in 0..7 {
                    if same[i] {
                        new_owners[i] = old_owners[i];
                    }
                }
                let new = Side {
                    workloads: [0, 1, 2].map(|i| if keep[i] { present[i] } else { !present[i] }),
                    owners: new_owners,
                    entries: base.iter().chain(&new_extra).cloned().collect(),
                };
                (old, new)
            },
        )
}

fn build(side: &Side, first_identity: Identity, reverse: bool) -> CompiledPolicy {
    let mut b = PolicyBuilder::new().identities_from(first_identity);
    let mut ids: [Option<Identity>; 5] = [None; 5];
    let mut order: Vec<usize> = (0..5).collect();
    if reverse {
        order.reverse();
    }
    for i in order {
        if i < 3 {
            if side.workloads[i] {
                ids[i] = Some(b.workload(WORKLOADS[i]));
            }
        } else {
            let owner = (i - 2) as u8;
            let cidrs: Vec<&str> = (0..7)
                .filter(|c| side.owners[*c] == owner)
                .map(|c| CIDRS[c])
                .collect();
            if !cidrs.is_empty() {
                ids[i] = Some(b.peer(PEERS[i - 3], &cidrs));
            }
        }
    }
    for e in &side.entries {
        let Some(w) = ids[e.workload] else { continue };
        let remote = match e.remote {
            r @ 0..5 => match ids[r] {
                Some(id) => id,
                None => continue,
            },
            5 => IDENTITY_WORLD,
            6 => IDENTITY_HOST,
            7 => IDENTITY_ANY_EXTERNAL,
            _ => IDENTITY_ANY,
        };
        let section = match (e.allow, e.egress) {
            (true, false) => "allow-in",
            (true, true) => "allow-out",
            (false, false) => "deny-in",
            (false, true) => "deny-out",
        };
        let rule = b.rule(WORKLOADS[e.workload], section, e.rule);
        let direction = if e.egress {
            Direction::Egress as u8
        } else {
            Direction::Ingress as u8
        };
        let action = if e.allow {
            Action::Allow as u8
        } else {
            Action::Deny as u8
        };
        if e.protocol == Protocol::Icmp as u8 {
            let key = VerdictKey::new(w, direction, Protocol::Icmp as u8, remote, 0, 16);
            b.entry(key, action, rule);
        } else {
            b.ports(w, direction, e.protocol, remote, e.lo, e.hi, action, rule);
        }
    }
    b.build()
}

/// The reference: the kernel's lookup chain, entry by entry.
struct Oracle<'a>(&'a CompiledPolicy);

impl Oracle<'_> {
    fn id(&self, name: &str) -> Option<Identity> {
        self.0
            .entities
            .iter()
            .find(|e| e.name == name)
            .map(|e| e.identity)
    }
    fn name(&self, id: Identity) -> String {
        self.0
            .entities
            .iter()
            .find(|e| e.identity == id)
            .map(|e| e.name.clone())
            .unwrap_or_default()
    }
    fn resolve(&self, addr: IpAddr) -> Identity {
        let mut best: Option<(u32, Identity)> = None;
        let mut consider = |len: u32, id: Identity| {
            if best.is_none_or(|(l, _)| len > l) {
                best = Some((len, id));
            }
        };
        match addr {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                for (k, id) in &self.0.prefixes_v4 {
                    let p = u32::from_be_bytes(k.addr);
                    let mask = if k.prefix_len == 0 {
                        0
                    } else {
                        u32::MAX << (32 - k.prefix_len)
                    };
                    if a & mask == p & mask {
                        consider(k.prefix_len, *id);
                    }
                }
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                for (k, id) in &self.0.prefixes_v6 {
                    let p = u128::from_be_bytes(k.addr);
                    let mask = if k.prefix_len == 0 {
                        0
                    } else {
                        u128::MAX << (128 - k.prefix_len)
                    };
                    if a & mask == p & mask {
                        consider(k.prefix_len, *id);
                    }
                }
            }
        }
        let mine = best.map_or(IDENTITY_WORLD, |(_, id)| id);
        assert_eq!(
            mine,
            resolve_addr(self.0, addr),
            "oracles disagree on {addr}"
        );
        mine
    }
    fn level(&self, w: Identity, d: u8, p: u8, r: Identity, port: u16) -> Option<(bool, u32)> {
        let mut best: Option<(u32, bool, u32)> = None;
        // Workloads with identical rows share them under their class.
        let class = self.0.class_of(w);
        for (k, v) in &self.0.verdicts {
            if (k.workload(), k.direction(), k.protocol(), k.remote()) != (class, d, p, r) {
                continue;
            }
            let bits = k.port_bits();
            let mask: u16 = if bits == 0 {
                0
            } else {
                u16::MAX << (16 - bits)
            };
            if port & mask == k.port() & mask && best.is_none_or(|(b, _, _)| bits > b) {
                best = Some((bits, v.action == Action::Allow as u8, v.rule));
            }
        }
        best.map(|(_, a, r)| (a, r))
    }
    /// The linear scan, cross-checked against the project's reference
    /// evaluator (`eval::evaluate`), which must agree on every connection.
    fn one_side(&self, w: Identity, d: u8, p: u8, r: Identity, port: u16) -> (bool, u32) {
        let external = self
            .0
            .entities
            .iter()
            .any(|e| e.identity == r && matches!(e.kind, EntityKind::Peer | EntityKind::World));
        let mine = self
            .level(w, d, p, r, port)
            .or_else(|| {
                external
                    .then(|| self.level(w, d, p, IDENTITY_ANY_EXTERNAL, port))
                    .flatten()
            })
            .or_else(|| self.level(w, d, p, IDENTITY_ANY, port))
            .unwrap_or((false, RULE_DEFAULT_DENY));
        let reference = evaluate(
            self.0,
            &Connection {
                local: w,
                direction: d,
                remote: r,
                protocol: p,
                port,
            },
        );
        assert_eq!(
            mine,
            (reference.action == Action::Allow as u8, reference.rule),
            "oracles disagree on {w} {d} {p} {r} {port}"
        );
        mine
    }
    fn label(&self, rule: u32) -> String {
        if rule == RULE_DEFAULT_DENY {
            "default deny".into()
        } else {
            self.0.rules[rule as usize].to_string()
        }
    }
}

/// A verdict and its rule label, as the diff would spell it.
type Judged = (bool, Option<String>);

fn deny() -> Judged {
    (false, None)
}

/// Judges every connection of the universe on both sides and checks it
/// against the diff's rows.
fn check(old: &CompiledPolicy, new: &CompiledPolicy, d: &PolicyDiff) -> Result<(), TestCaseError> {
    let (o, n) = (Oracle(old), Oracle(new));
    let workload_judge = |or: &Oracle<'_>, from: &str, to: &str, p: u8, port: u16| -> Judged {
        let (Some(a), Some(b)) = (or.id(from), or.id(to)) else {
            return deny();
        };
        let (ea, er) = or.one_side(a, Direction::Egress as u8, p, b, port);
        let (ia, ir) = or.one_side(b, Direction::Ingress as u8, p, a, port);
        match (ea, ia) {
            (true, true) => (true, Some(format!("{} + {}", or.label(er), or.label(ir)))),
            (false, _) => (false, Some(or.label(er))),
            (true, false) => (false, Some(or.label(ir))),
        }
    };
    let protos = [
        (Protocol::Tcp as u8, "tcp"),
        (Protocol::Udp as u8, "udp"),
        (Protocol::Icmp as u8, "icmp"),
    ];
    let ports_of = |p: u8| -> Vec<u16> {
        if p == Protocol::Icmp as u8 {
            vec![0]
        } else {
            PORTS
                .iter()
                .flat_map(|x| [x.saturating_sub(1), *x, x.saturating_add(1)])
                .collect()
        }
    };
    for (p, pname) in protos {
        for port in ports_of(p) {
            for from in WORKLOADS {
                for to in WORKLOADS {
                    let before = workload_judge(&o, from, to, p, port);
                    let after = workload_judge(&n, from, to, p, port);
                    expect_row(d, from, to, pname, port, None, &before, &after)?;
                }
            }
            for w in WORKLOADS {
                // Remotes: host, and every address.
                let mut remotes: Vec<(String, String, Identity, Identity)> =
                    vec![("host".into(), "host".into(), IDENTITY_HOST, IDENTITY_HOST)];
                for a in ADDRESSES {
                    let addr: IpAddr = a.parse().expect("test address");
                    let (ro, rn) = (o.resolve(addr), n.resolve(addr));
                    remotes.push((o.name(ro), n.name(rn), ro, rn));
                }
                for (old_name, new_name, ro, rn) in remotes {
                    let was = (old_name != new_name).then_some(old_name.as_str());
                    for d_ in [Direction::Egress as u8, Direction::Ingress as u8] {
                        let judge = |or: &Oracle<'_>, r: Identity| -> Judged {
                            match or.id(w) {
                                Some(id) => {
                                    let (allow, rule) = or.one_side(id, d_, p, r, port);
                                    (allow, Some(or.label(rule)))
                                }
                                None => deny(),
                            }
                        };
                        let (before, after) = (judge(&o, ro), judge(&n, rn));
                        let (from, to) = if d_ == Direction::Egress as u8 {
                            (w, new_name.as_str())
                        } else {
                            (new_name.as_str(), w)
                        };
                        expect_row(d, from, to, pname, port, was, &before, &after)?;
                    }
                }
            }
        }
    }
    Ok(())
}

fn covers(c: &Change, port: u16) -> bool {
    match c.ports.as_str() {
        "any" => true,
        s => match s.split_once('-') {
            Some((lo, hi)) => {
                let (lo, hi): (u16, u16) = (lo.parse().unwrap_or(1), hi.parse().unwrap_or(0));
                (lo..=hi).contains(&port)
            }
            None => s.parse::<u16>().is_ok_and(|x| x == port),
        },
    }
}

#[expect(clippy::too_many_arguments, reason = "one connection's coordinates")]
fn expect_row(
    d: &PolicyDiff,
    from: &str,
    to: &str,
    protocol: &str,
    port: u16,
    was: Option<&str>,
    before: &Judged,
    after: &Judged,
) -> Result<(), TestCaseError> {
    let rows: Vec<&Change> = d
        .changes
        .iter()
        .filter(|c| {
            c.from == from
                && c.to == to
                && c.protocol == protocol
                && covers(c, port)
                && c.was.as_deref() == was
        })
        .collect();
    let what = format!(
        "{from} -> {to} {port}/{protocol} (was {was:?}): before {before:?}, after {after:?}"
    );
    prop_assert!(rows.len() <= 1, "several rows for {what}: {rows:#?}");
    match rows.first() {
        None => prop_assert_eq!(before.0, after.0, "missing row for {}", what),
        Some(c) => {
            prop_assert_eq!(
                c.before == "allow",
                before.0,
                "wrong before for {}: {:?}",
                what,
                c
            );
            prop_assert_eq!(
                c.after == "allow",
                after.0,
                "wrong after for {}: {:?}",
                what,
                c
            );
            // The rule: NEW's unless NEW is default deny.
            let expected = match &after.1 {
                Some(r) if after.0 || r != "default deny" => r.clone(),
                _ => before.1.clone().unwrap_or_default(),
            };
            prop_assert_eq!(&c.rule, &expected, "wrong rule for {}", what);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn applying_the_diff_to_old_gives_new((old, new) in pair(), reverse in any::<bool>()) {
        let old = build(&old, 16, false);
        let new = build(&new, 40, reverse);
        let d = diff(&DiffInput::from_compiled(old.clone()), &DiffInput::from_compiled(new.clone()));
        check(&old, &new, &d)?;
        prop_assert_eq!(d.widened, d.changes.iter().any(|c| c.after == "allow"));
        prop_assert_eq!(d.narrowed, d.changes.iter().any(|c| c.after == "deny"));
        // And a policy against itself is always empty.
        prop_assert!(diff(&DiffInput::from_compiled(new.clone()), &DiffInput::from_compiled(new)).is_empty());
    }
}

// ---------------------------------------------------------------------------
// The same property end to end: random TOML policy pairs, compiled by the
// real compiler (which folds wildcard levels and deny-wins), diffed, and
// checked connection by connection.

const SELECTORS: [&str; 10] = [
    r#""world""#,
    r#""host""#,
    r#""any""#,
    r#""workload:a""#,
    r#""workload:b""#,
    r#""workload:c""#,
    r#""peer:p""#,
    r#""peer:q""#,
    r#"{ zone = "z" }"#,
    r#"{ app = ["a", "b"] }"#,
];
const PORT_ITEMS: [&str; 10] = [
    "22/tcp",
    "21-23/tcp",
    "80-443/tcp",
    "1000-1023/udp",
    "1024-65535/tcp",
    "tcp",
    "udp",
    "icmp",
    "8000/udp",
    "1-1000/tcp",
];
const SECTIONS: [&str; 4] = ["allow-in", "allow-out", "deny-in", "deny-out"];

#[derive(Clone, Debug)]
struct TomlRule {
    section: usize,
    remotes: Vec<usize>,
    /// `None`: `ports` omitted.
    ports: Option<Vec<usize>>,
}

#[derive(Clone, Debug)]
struct TomlSide {
    workloads: [bool; 3],
    audit: [bool; 3],
    owners: [u8; 7],
    /// Rules of each workload's policy.
    rules: [Vec<TomlRule>; 3],
}

fn toml_rule() -> impl Strategy<Value = TomlRule> {
    (
        0..4usize,
        prop::collection::vec(0..SELECTORS.len(), 1..3),
        prop::option::weighted(0.8, prop::collection::vec(0..PORT_ITEMS.len(), 1..3)),
    )
        .prop_map(|(section, remotes, ports)| TomlRule {
            section,
            remotes,
            ports,
        })
}

fn toml_side() -> impl Strategy<Value = TomlSide> {
    (
        prop::array::uniform3(prop::bool::weighted(0.85)),
        prop::array::uniform3(prop::bool::weighted(0.1)),
        prop::array::uniform7(0u8..3),
        prop::array::uniform3(prop::collection::vec(toml_rule(), 0..4)),
    )
        .prop_map(|(workloads, audit, owners, rules)| TomlSide {
            workloads,
            audit,
            owners,
            rules,
        })
}

/// NEW as OLD with some edits: each part is kept with high probability.
fn toml_pair() -> impl Strategy<Value = (TomlSide, TomlSide)> {
    (
        toml_side(),
        toml_side(),
        prop::array::uniform3(prop::bool::weighted(0.85)),
        prop::array::uniform7(prop::bool::weighted(0.8)),
        prop::array::uniform3(prop::bool::weighted(0.6)),
    )
        .prop_map(|(old, other, keep_w, keep_c, keep_r)| {
            let mut new = old.clone();
            for i in 0..3 {
                if !keep_w[i] {
                    new.workloads[i] = other.workloads[i];
                    new.audit[i] = other.audit[i];
                }
                if !keep_r[i] {
                    // Edit the rule list: keep a prefix, append others' rules.
                    let keep = new.rules[i].len() / 2;
                    new.rules[i].truncate(keep);
                    new.rules[i].extend(other.rules[i].iter().cloned());
                }
            }
            for (c, keep) in keep_c.iter().enumerate() {
                if !keep {
                    new.owners[c] = other.owners[c];
                }
            }
            (old, new)
        })
}

fn render_toml(side: &TomlSide, reverse_rules: bool) -> String {
    let mut t = String::new();
    for (i, name) in WORKLOADS.iter().enumerate() {
        if side.workloads[i] {
            let mode = if side.audit[i] { "audit" } else { "enforce" };
            t += &format!(
                "[workload.{name}]\nunit = \"{name}.service\"\nlabels = {{ app = \"{name}\" }}\nmode = \"{mode}\"\n\n"
            );
        }
    }
    for (i, name) in PEERS.iter().enumerate() {
        let cidrs: Vec<String> = (0..7)
            .filter(|c| side.owners[*c] as usize == i + 1)
            .map(|c| format!("\"{}\"", CIDRS[c]))
            .collect();
        if !cidrs.is_empty() {
            let zone = if i == 0 { "z" } else { "y" };
            t += &format!(
                "[peer.{name}]\ncidrs = [{}]\nlabels = {{ zone = \"{zone}\" }}\n\n",
                cidrs.join(", ")
            );
        }
    }
    for (i, name) in WORKLOADS.iter().enumerate() {
        if !side.workloads[i] {
            continue;
        }
        t += &format!("[[policy]]\nname = \"{name}\"\nselect = {{ app = \"{name}\" }}\n");
        for (s, section) in SECTIONS.iter().enumerate() {
            let mut rules: Vec<String> = side.rules[i]
                .iter()
                .filter(|r| r.section == s)
                .map(|r| {
                    let key = if s % 2 == 0 { "from" } else { "to" };
                    let remotes: Vec<&str> = r.remotes.iter().map(|x| SELECTORS[*x]).collect();
                    let ports = match &r.ports {
                        Some(p) => {
                            let p: Vec<String> = p
                                .iter()
                                .map(|x| format!("\"{}\"", PORT_ITEMS[*x]))
                                .collect();
                            format!(", ports = [{}]", p.join(", "))
                        }
                        None => String::new(),
                    };
                    format!(
                        "  {{ {key} = [{}]{ports}, optional = true }},\n",
                        remotes.join(", ")
                    )
                })
                .collect();
            if reverse_rules {
                rules.reverse();
            }
            if !rules.is_empty() {
                t += &format!("{section} = [\n{}]\n", rules.concat());
            }
        }
        t += "\n";
    }
    t
}

fn compile_toml(text: &str) -> CompiledPolicy {
    let sources = [(std::path::PathBuf::from("p.toml"), text.to_owned())];
    let loaded = enforcer::policy::load_sources(&sources)
        .unwrap_or_else(|e| panic!("generated policy invalid: {e}\n{text}"));
    let (compiled, _) = enforcer::check::compile_loaded(loaded, std::time::SystemTime::now())
        .unwrap_or_else(|e| panic!("generated policy does not compile: {e}\n{text}"));
    compiled
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn compiled_policies_diff_to_their_verdict_changes((old, new) in toml_pair(), reverse in any::<bool>()) {
        let old_text = render_toml(&old, false);
        let new_text = render_toml(&new, reverse);
        let (old_c, new_c) = (compile_toml(&old_text), compile_toml(&new_text));
        let d = diff(&DiffInput::from_compiled(old_c.clone()), &DiffInput::from_compiled(new_c.clone()));
        check(&old_c, &new_c, &d)?;
        // Rule order never matters: the same side with its rules reversed
        // diffs to nothing.
        let again = compile_toml(&render_toml(&old, true));
        let same = diff(&DiffInput::from_compiled(old_c), &DiffInput::from_compiled(again));
        prop_assert!(same.changes.is_empty(), "reordering changed verdicts: {:#?}", same.changes);
    }
}
