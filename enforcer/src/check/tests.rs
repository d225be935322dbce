//! One test per semantic rule of the language, through the whole path:
//! source text -> model -> compiled entries -> reference evaluator, and the
//! expectations and expiry warnings checked on top.

use std::time::{Duration, SystemTime};

use enforcer_common::{
    identity::{IDENTITY_ANY, IDENTITY_ANY_EXTERNAL, IDENTITY_HOST, IDENTITY_WORLD},
    protocol::Protocol,
    verdict::{Action, Direction, RULE_DEFAULT_DENY, VERDICT_FIXED_PREFIX_BITS},
    workload::Mode as KMode,
};

use super::*;
use crate::eval::{Connection, Decision, evaluate, resolve_addr};
use crate::policy::fixtures::{BASE, WEB_PORT_KINDS, load_files, now};
use crate::policy::{ServicePort, parse_rfc3339};

fn compile_at(text: &str, at: SystemTime) -> CompiledPolicy {
    compile(&load_files(&[("t.toml", text)]).set, at).unwrap()
}

fn compiled(text: &str) -> CompiledPolicy {
    compile_at(text, now())
}

fn port(s: &str) -> ServicePort {
    s.parse().unwrap()
}

/// "allow by RULE", "deny by RULE" for a flow between two entity names or IPs.
fn flow(c: &CompiledPolicy, from: &str, to: &str, p: &str) -> String {
    let id = |s: &str| match s.parse::<std::net::IpAddr>() {
        Ok(a) => resolve_addr(c, a),
        Err(_) => c.identity_of(s).unwrap_or_else(|| panic!("no entity {s}")),
    };
    let f = judge_flow(c, id(from), id(to), port(p));
    match f.verdict() {
        Some(v) => format!("{v} by {}", f.deciding_rules(c)),
        None => "ungoverned".into(),
    }
}

/// The decision for a TCP connection into `local` from `remote`.
fn tcp_in(c: &CompiledPolicy, local: u32, remote: u32, port: u16) -> Decision {
    evaluate(
        c,
        &Connection {
            local,
            direction: Direction::Ingress as u8,
            remote,
            protocol: Protocol::Tcp as u8,
            port,
        },
    )
}

/// Asserts each case, written `FROM -> TO PORT: VERDICT` with the verdict
/// as [`flow`] spells it.
fn assert_flows(c: &CompiledPolicy, cases: &[&str]) {
    for case in cases {
        let parsed = case.split_once(": ").and_then(|(connection, expected)| {
            match connection.split(' ').collect::<Vec<_>>()[..] {
                [from, "->", to, p] => Some((from, to, p, expected)),
                _ => None,
            }
        });
        let Some((from, to, p, expected)) = parsed else {
            panic!("malformed case {case:?}");
        };
        assert_eq!(flow(c, from, to, p), expected, "{case}");
    }
}

fn with_base(policies: &str) -> CompiledPolicy {
    compiled(&format!("{BASE}\n{policies}"))
}

#[test]
fn default_deny_isolates_selected_and_unselected_workloads() {
    let c = with_base("[[policy]]\nname = \"p\"\nselect = { app = \"web\" }\n");
    assert!(c.verdicts.is_empty());
    assert_flows(
        &c,
        &[
            "office -> web 443/tcp: deny by default deny",
            "db -> office 443/tcp: deny by default deny",
        ],
    );
    let d = tcp_in(&c, 18, IDENTITY_HOST, 1);
    assert_eq!((d.action, d.rule), (Action::Deny as u8, RULE_DEFAULT_DENY));
}

#[test]
fn deny_wins_over_every_allow_in_every_policy() {
    let c = with_base(
        r#"
[[policy]]
name = "a"
select = { app = "db" }
allow-in = [ { from = ["any"] } ]
[[policy]]
name = "z"
select = { env = "prod" }
deny-in = [ { from = [{ zone = "office" }], ports = ["22/tcp"] } ]
"#,
    );
    assert_flows(
        &c,
        &[
            "office -> db 22/tcp: deny by z deny-in[0]",
            "203.0.113.7 -> db 22/tcp: deny by z deny-in[0]",
            "office -> db 23/tcp: allow by a allow-in[0]",
            "vendor -> db 22/tcp: allow by a allow-in[0]",
            "world -> db 22/tcp: allow by a allow-in[0]",
            "host -> db 22/tcp: allow by a allow-in[0]",
        ],
    );
}

#[test]
fn wildcard_levels_are_folded_into_exact_entries() {
    // An exact allow for a peer must not hide a `world` deny or an `any` deny.
    let c = with_base(
        r#"
[[policy]]
name = "db"
select = { app = "db" }
allow-in = [ { from = ["peer:office", "host", "workload:api"], ports = ["tcp"] } ]
deny-in = [ { from = ["world"], ports = ["22/tcp"] }, { from = ["any"], ports = ["23/tcp"] } ]
"#,
    );
    assert_flows(
        &c,
        &[
            "office -> db 22/tcp: deny by db deny-in[0]",
            "office -> db 23/tcp: deny by db deny-in[1]",
            "office -> db 24/tcp: allow by db allow-in[0]",
        ],
    );
    // `world` does not cover this host or its workloads.
    assert_flows(
        &c,
        &[
            "host -> db 22/tcp: allow by db allow-in[0]",
            "host -> db 23/tcp: deny by db deny-in[1]",
        ],
    );
    assert_eq!(tcp_in(&c, 17, 16, 22).action, Action::Allow as u8);
    // Entries exist at all three levels.
    let remotes: std::collections::BTreeSet<u32> =
        c.verdicts.iter().map(|(k, _)| k.remote()).collect();
    assert!(remotes.contains(&IDENTITY_ANY) && remotes.contains(&IDENTITY_ANY_EXTERNAL));
    assert!(remotes.contains(&IDENTITY_HOST) && remotes.contains(&20));
}

#[test]
fn world_host_and_any_select_what_they_say() {
    let c = with_base(
        r#"
[[policy]]
name = "w"
select = { app = "web" }
allow-in = [ { from = ["world"], ports = ["443/tcp"] }, { from = ["host"], ports = ["80/tcp"] }, { from = ["any"], ports = ["8443/tcp"] } ]
"#,
    );
    for from in ["world", "office", "lab", "198.51.100.1", "2001:db8:20::5"] {
        assert_eq!(
            flow(&c, from, "web", "443/tcp"),
            "allow by w allow-in[0]",
            "{from}"
        );
        assert_eq!(
            flow(&c, from, "web", "80/tcp"),
            "deny by default deny",
            "{from}"
        );
    }
    assert_flows(
        &c,
        &[
            "host -> web 443/tcp: deny by default deny",
            "host -> web 80/tcp: allow by w allow-in[1]",
        ],
    );
    for from in ["world", "office", "host"] {
        assert_eq!(
            flow(&c, from, "web", "8443/tcp"),
            "allow by w allow-in[2]",
            "{from}"
        );
    }
    let e = |remote| tcp_in(&c, 18, remote, 443);
    assert_eq!(
        e(16).action,
        Action::Deny as u8,
        "world must not cover a workload"
    );
    assert_eq!(e(IDENTITY_WORLD).action, Action::Allow as u8);
}

#[test]
fn label_selectors_match_workloads_and_peers_with_list_values() {
    let c = with_base(
        r#"
[[policy]]
name = "db"
select = { app = "db" }
allow-in = [ { from = [{ env = ["prod", "staging"] }], ports = ["5432/tcp"] }, { from = [{ zone = ["office", "lab"], missing = "x" }], optional = true, ports = ["1/tcp"] }, { from = [{ zone = ["office", "lab"] }], ports = ["6000/tcp"] } ]
[[policy]]
name = "out"
select = [{ app = "api" }, "workload:web"]
allow-out = [ { to = [{ app = "db" }], ports = ["5432/tcp"] } ]
"#,
    );
    assert_flows(
        &c,
        &[
            "api -> db 5432/tcp: allow by out allow-out[0] and db allow-in[0]",
            "web -> db 5432/tcp: allow by out allow-out[0] and db allow-in[0]",
            "office -> db 5432/tcp: deny by default deny",
            "office -> db 6000/tcp: allow by db allow-in[2]",
            "lab -> db 6000/tcp: allow by db allow-in[2]",
            "vendor -> db 6000/tcp: deny by default deny",
            "office -> db 1/tcp: deny by default deny",
        ],
    );
}

#[test]
fn both_ends_must_allow_traffic_between_workloads() {
    let c = with_base(
        r#"
[[policy]]
name = "api"
select = { app = "api" }
allow-out = [ { to = [{ app = "db" }], ports = ["5432/tcp"] } ]
"#,
    );
    assert_eq!(flow(&c, "api", "db", "5432/tcp"), "deny by default deny");
    let c = with_base(
        r#"
[[policy]]
name = "api"
select = { app = "api" }
allow-out = [ { to = [{ app = "db" }], ports = ["5432/tcp"] } ]
[[policy]]
name = "db"
select = { app = "db" }
allow-in = [ { from = ["workload:api"], ports = ["5432/tcp"] } ]
"#,
    );
    assert_flows(
        &c,
        &[
            "api -> db 5432/tcp: allow by api allow-out[0] and db allow-in[0]",
            "db -> api 5432/tcp: deny by default deny",
            "office -> vendor 5432/tcp: ungoverned",
        ],
    );
}

#[test]
fn port_ranges_protocols_and_icmp() {
    let c = with_base(WEB_PORT_KINDS);
    for (p, v) in [
        ("7999/tcp", "deny"),
        ("8000/tcp", "allow"),
        ("8064/tcp", "allow"),
        ("8100/tcp", "allow"),
        ("8101/tcp", "deny"),
        ("8050/udp", "deny"),
        ("53/udp", "allow"),
        ("53/tcp", "deny"),
        ("icmp", "allow"),
    ] {
        assert!(
            flow(&c, "office", "web", p).starts_with(v),
            "{p}: {}",
            flow(&c, "office", "web", p)
        );
    }
    // Omitted ports: every protocol and port.
    for p in ["1/tcp", "65535/tcp", "1/udp", "65535/udp", "icmp"] {
        assert_eq!(flow(&c, "web", "office", p), "allow by p allow-out[0]");
    }
}

#[test]
fn longest_prefix_picks_the_most_specific_peer() {
    let c = with_base(
        r#"
[[policy]]
name = "p"
select = { app = "web" }
allow-in = [ { from = ["peer:office"], ports = ["443/tcp"] } ]
"#,
    );
    let id = |a: &str| resolve_addr(&c, a.parse().unwrap());
    assert_eq!(id("203.0.113.1"), 20);
    assert_eq!(id("203.0.113.127"), 20);
    assert_eq!(id("203.0.113.128"), 19);
    assert_eq!(id("198.51.100.17"), 21);
    assert_eq!(id("198.51.100.18"), IDENTITY_WORLD);
    assert_eq!(id("2001:db8:20:ffff::1"), 20);
    assert_eq!(id("2001:db8:21::1"), IDENTITY_WORLD);
    assert_flows(
        &c,
        &[
            "203.0.113.1 -> web 443/tcp: allow by p allow-in[0]",
            "203.0.113.200 -> web 443/tcp: deny by default deny",
            "2001:db8:20::1 -> web 443/tcp: allow by p allow-in[0]",
        ],
    );
    assert_eq!(c.prefixes_v4.len(), 3);
    assert_eq!(c.prefixes_v6.len(), 1);
    assert_eq!(c.prefixes_v6[0].0.prefix_len, 48);
}

#[test]
fn modes_are_compiled_and_do_not_change_verdicts() {
    let text = BASE
        .replace(
            "unit = \"nginx.service\"",
            "unit = \"nginx.service\"\nmode = \"audit\"",
        )
        .replace(
            "unit = \"postgresql.service\"",
            "unit = \"postgresql.service\"\nmode = \"off\"",
        );
    let c = compiled(&text);
    let modes: Vec<(String, u8)> = c
        .workloads
        .iter()
        .map(|w| (w.name.clone(), w.mode))
        .collect();
    assert_eq!(
        modes,
        vec![
            ("api".into(), KMode::Enforce as u8),
            ("db".into(), KMode::Off as u8),
            ("web".into(), KMode::Audit as u8)
        ]
    );
    assert_eq!(flow(&c, "office", "web", "443/tcp"), "deny by default deny");
}

#[test]
fn until_stops_matching_at_its_instant() {
    let text = format!(
        "{BASE}\n{}",
        r#"
[[policy]]
name = "db"
select = { app = "db" }
allow-in = [ { from = ["peer:vendor"], ports = ["22/tcp"], until = "2026-12-31T18:00:00Z" }, { from = ["peer:vendor"], ports = ["23/tcp"], until = 2027-01-01T00:00:00Z } ]
"#
    );
    let until = parse_rfc3339("2026-12-31T18:00:00Z").unwrap();
    let before = compile_at(&text, until - Duration::from_secs(1));
    assert_eq!(
        flow(&before, "vendor", "db", "22/tcp"),
        "allow by db allow-in[0]"
    );
    assert_eq!(before.next_expiry, Some(until));
    let at = compile_at(&text, until);
    assert_flows(
        &at,
        &[
            "vendor -> db 22/tcp: deny by default deny",
            "vendor -> db 23/tcp: allow by db allow-in[1]",
        ],
    );
    assert_eq!(
        at.next_expiry,
        Some(parse_rfc3339("2027-01-01T00:00:00Z").unwrap())
    );
    assert_eq!(at.rules.len(), 1);
    let loaded = load_files(&[("t.toml", &text)]);
    assert!(expiry_warnings(&loaded.set, until - Duration::from_secs(1)).is_empty());
    let w = expiry_warnings(&loaded.set, until);
    assert_eq!(w.len(), 1);
    assert!(
        w[0].to_string()
            .contains("warning: rule db allow-in[0] has expired"),
        "{}",
        w[0]
    );
}

#[test]
fn compiled_entries_are_sorted_disjoint_and_masked() {
    let c = with_base(
        r#"
[[policy]]
name = "p"
select = { env = "prod" }
allow-in = [ { from = ["any"], ports = ["1000-2000/tcp", "1500-3000/tcp"] }, { from = ["world"], ports = ["1-65535/tcp"] } ]
deny-in = [ { from = [{ zone = "office" }], ports = ["1024-1100/tcp", "udp"] } ]
"#,
    );
    assert!(c.verdicts.windows(2).all(|w| w[0].0 < w[1].0));
    for (k, _) in &c.verdicts {
        let bits = k.prefix_len - VERDICT_FIXED_PREFIX_BITS;
        let mask: u16 = if bits == 0 {
            0
        } else {
            u16::MAX << (16 - bits)
        };
        assert_eq!(k.port() & !mask, 0, "{k:?} has bits set past its prefix");
    }
    // No two entries of one (w, d, p, r) overlap.
    for (i, (a, _)) in c.verdicts.iter().enumerate() {
        for (b, _) in &c.verdicts[i + 1..] {
            if a.data[..10] != b.data[..10] {
                continue;
            }
            let span = |k: &enforcer_common::verdict::VerdictKey| {
                let size = 1u32 << (16 - k.port_bits());
                (u32::from(k.port()), u32::from(k.port()) + size - 1)
            };
            let (a0, a1) = span(a);
            let (b0, b1) = span(b);
            assert!(a1 < b0 || b1 < a0, "{a:?} overlaps {b:?}");
        }
    }
    assert_flows(
        &c,
        &[
            "office -> db 1050/tcp: deny by p deny-in[0]",
            "office -> db 1101/tcp: allow by p allow-in[0]",
            "office -> db 2500/tcp: allow by p allow-in[0]",
            "office -> db 5000/tcp: allow by p allow-in[1]",
            "host -> db 5000/tcp: deny by default deny",
            "host -> db 1500/tcp: allow by p allow-in[0]",
        ],
    );
}

#[test]
fn file_and_rule_order_do_not_change_the_output() {
    let a = r#"
[[policy]]
name = "a"
select = { app = "db" }
allow-in = [ { from = ["any"], ports = ["1-100/tcp"] }, { from = ["world"], ports = ["50-200/tcp"] } ]
"#;
    let a_reordered = r#"
[[policy]]
name = "a"
select = { app = "db" }
allow-in = [ { from = ["world"], ports = ["50-200/tcp"] }, { from = ["any"], ports = ["1-100/tcp"] } ]
"#;
    let b = "[[policy]]\nname = \"b\"\nselect = { app = \"db\" }\ndeny-in = [ { from = [\"peer:lab\"], ports = [\"60/tcp\"] } ]\n";
    let one = compile(
        &load_files(&[("0.toml", BASE), ("1.toml", a), ("2.toml", b)]).set,
        now(),
    )
    .unwrap();
    let two = compile(
        &load_files(&[("0.toml", b), ("1.toml", a), ("2.toml", BASE)]).set,
        now(),
    )
    .unwrap();
    assert_eq!(one, two);
    // Reordering a section's rules renumbers them, so only the decisions
    // (not the reported indexes) must agree.
    let three = compile(
        &load_files(&[("0.toml", BASE), ("1.toml", a_reordered), ("2.toml", b)]).set,
        now(),
    )
    .unwrap();
    for p in ["1/tcp", "60/tcp", "150/tcp", "300/tcp"] {
        for from in ["lab", "office", "host", "world"] {
            assert_eq!(
                flow(&one, from, "db", p).split(' ').next(),
                flow(&three, from, "db", p).split(' ').next()
            );
        }
    }
    assert_ne!(one.content_hash, 0);
    assert_ne!(one.content_hash, compiled(BASE).content_hash);
}

#[test]
fn expectations_fail_with_the_deciding_rule() {
    let text = format!(
        "{BASE}\n{}",
        r#"
[[policy]]
name = "db"
select = { app = "db" }
allow-in = [ { from = [{ zone = "office" }], ports = ["5432/tcp"] } ]
deny-in = [ { from = [{ zone = "office" }], ports = ["22/tcp"] } ]

[[expect]]
from = "office"
to = "db"
port = "22/tcp"
verdict = "allow"

[[expect]]
from = "203.0.113.9"
to = "db"
port = "5432/tcp"
verdict = "allow"

[[expect]]
from = "world"
to = "db"
port = "5432/tcp"
verdict = "allow"
"#
    );
    let loaded = load_files(&[("t.toml", &text)]);
    let c = compile(&loaded.set, now()).unwrap();
    let failures = expectations(&loaded.set, &c);
    let msgs: Vec<String> = failures.iter().map(ToString::to_string).collect();
    assert_eq!(msgs.len(), 2, "{msgs:?}");
    assert!(msgs[0].starts_with("t.toml:28:1: expectation failed: office -> db 22/tcp is deny (decided by db deny-in[0]), expected allow"), "{}", msgs[0]);
    assert!(
        msgs[1].contains("world -> db 5432/tcp is deny (decided by default deny)"),
        "{}",
        msgs[1]
    );
}

#[test]
fn workloads_with_identical_rows_share_a_verdict_class() {
    // web and db are both `env = prod`: one policy, identical rows.
    let text = r#"
[[policy]]
name = "prod"
select = { env = "prod" }
allow-in = [ { from = [{ zone = "office" }], ports = ["443/tcp", "5432/tcp"] } ]
deny-in = [ { from = ["peer:lab"], ports = ["1-1024/tcp"] } ]
[[policy]]
name = "api"
select = { app = "api" }
allow-out = [ { to = ["world"], ports = ["53/udp"] } ]
"#;
    let c = with_base(text);
    let (api, db, web) = (16, 17, 18);
    let class: Vec<(u32, u32)> = c.workloads.iter().map(|w| (w.identity, w.class)).collect();
    assert_eq!(class, vec![(api, api), (db, db), (web, db)]);
    assert_eq!(c.class_of(web), db);
    assert_eq!(c.class_of(IDENTITY_HOST), IDENTITY_HOST);
    // Only the representatives have entries.
    assert!(c.verdicts.iter().all(|(k, _)| k.workload() != web));
    assert!(c.verdicts.iter().any(|(k, _)| k.workload() == db));
    // The member is judged by the class's rows.
    for to in ["web", "db"] {
        assert_eq!(
            flow(&c, "office", to, "443/tcp"),
            "allow by prod allow-in[0]"
        );
        assert_eq!(
            flow(&c, "203.0.113.200", to, "443/tcp"),
            "deny by prod deny-in[0]"
        );
        assert_eq!(flow(&c, "office", to, "22/tcp"), "deny by default deny");
    }
    assert_eq!(flow(&c, "office", "api", "443/tcp"), "deny by default deny");

    // Classes and the content hash do not depend on the order of the
    // files, policies or rules.
    let (a, b) = text.split_at(text.find("[[policy]]\nname = \"api\"").unwrap());
    let reordered = compile(
        &load_files(&[("b.toml", &format!("{BASE}\n{b}")), ("a.toml", a)]).set,
        now(),
    )
    .unwrap();
    assert_eq!(reordered, c);
    assert_eq!(reordered.content_hash, c.content_hash);
    // Giving web rows of its own gives it its own class and another hash.
    let apart = with_base(&format!(
        "{text}\n[[policy]]\nname = \"web\"\nselect = {{ app = \"web\" }}\nallow-out = [ {{ to = [\"host\"], ports = [\"80/tcp\"] }} ]\n"
    ));
    assert_eq!(apart.class_of(web), web);
    assert_ne!(apart.content_hash, c.content_hash);
}
