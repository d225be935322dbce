//! Pairs of compiled policies with known expected diffs. The policies are
//! built entry by entry (`diff::testkit`), as the compiler's contract
//! describes them, so these tests pin the engine's semantics on their own.

use enforcer::diff::render::{Format, render};
use enforcer::diff::testkit::PolicyBuilder;
use enforcer::diff::{Change, DiffInput, ExpectationInfo, PolicyDiff, PolicyMeta, RuleInfo, diff};
use enforcer::policy::CgroupSelector;
use enforcer_common::{
    identity::{IDENTITY_ANY, IDENTITY_ANY_EXTERNAL, IDENTITY_WORLD, Identity},
    protocol::Protocol,
    verdict::{Action, Direction, VerdictKey},
    workload::Mode,
};

/// The directions, short: the tables below read as rows.
const IN: Direction = Direction::Ingress;
const OUT: Direction = Direction::Egress;

fn run(old: PolicyBuilder, new: PolicyBuilder) -> PolicyDiff {
    diff(
        &DiffInput::from_compiled(old.build()),
        &DiffInput::from_compiled(new.build()),
    )
}

/// A TCP allow of one port: `(workload, direction, remote, port, policy,
/// section)`, the rule the first of its section.
type TcpAllow<'a> = (Identity, Direction, Identity, u16, &'a str, &'a str);

fn allow_tcp<'a>(b: &mut PolicyBuilder, rows: impl IntoIterator<Item = TcpAllow<'a>>) {
    for (workload, direction, remote, port, policy, section) in rows {
        b.grant(
            (policy, section, 0),
            (workload, direction, remote),
            (Protocol::Tcp, port..=port, Action::Allow),
        );
    }
}

/// The shop's rules, in the order `shop()` adds them; `db_policy` names
/// the database's policy.
fn shop_rules(web: Identity, api: Identity, db: Identity, db_policy: &str) -> [TcpAllow<'_>; 5] {
    [
        (web, IN, IDENTITY_ANY_EXTERNAL, 443, "web", "allow-in"),
        (web, OUT, api, 8080, "web", "allow-out"),
        (api, IN, web, 8080, "api", "allow-in"),
        (api, OUT, db, 5432, "api", "allow-out"),
        (db, IN, api, 5432, db_policy, "allow-in"),
    ]
}

/// An expected change: `[from, to, protocol, ports, before, after]` and
/// the rule that decides it.
fn row([from, to, proto, ports, before, after]: [&str; 6], rule: &str) -> Change {
    Change {
        from: from.into(),
        to: to.into(),
        protocol: proto.into(),
        ports: ports.into(),
        before: before.into(),
        after: after.into(),
        rule: rule.into(),
        addresses: None,
        was: None,
    }
}

/// The shop of the language's example: web, api, db, peer office.
struct Shop {
    b: PolicyBuilder,
    web: u32,
    api: u32,
    db: u32,
    office: u32,
}

fn shop() -> Shop {
    let mut b = PolicyBuilder::new();
    let api = b.workload("api");
    let db = b.workload("db");
    let web = b.workload("web");
    let office = b.peer("office", &["203.0.113.0/24", "2001:db8:20::/48"]);
    allow_tcp(&mut b, shop_rules(web, api, db, "db"));
    Shop {
        b,
        web,
        api,
        db,
        office,
    }
}

/// The shop plus `db allow-in[1]`: office may reach db on 5432/tcp.
fn shop_with_office_to_db() -> Shop {
    let mut shop = shop();
    shop.b.grant(
        ("db", "allow-in", 1),
        (shop.db, IN, shop.office),
        (Protocol::Tcp, 5432..=5432, Action::Allow),
    );
    shop
}

#[test]
fn identical_policies_give_an_empty_diff() {
    let d = run(shop().b, shop().b);
    assert!(d.is_empty(), "{d:#?}");
    assert!(!d.widened && !d.narrowed);
}

#[test]
fn adding_a_rule_widens() {
    let old = shop();
    let new = shop_with_office_to_db();
    let d = run(old.b, new.b);
    assert_eq!(
        d.changes,
        vec![row(
            ["office", "db", "tcp", "5432", "deny", "allow"],
            "db allow-in[1]"
        )]
    );
    assert!(d.widened && !d.narrowed);
}

#[test]
fn removing_a_rule_narrows_and_names_the_old_rule() {
    let old = shop_with_office_to_db();
    let d = run(old.b, shop().b);
    assert_eq!(
        d.changes,
        vec![row(
            ["office", "db", "tcp", "5432", "allow", "deny"],
            "db allow-in[1]"
        )]
    );
    assert!(!d.widened && d.narrowed);
}

#[test]
fn workload_traffic_needs_both_ends() {
    // api newly allows egress to web 9000: web's ingress still refuses it.
    let old = shop();
    let mut new = shop();
    new.b.grant(
        ("api", "allow-out", 1),
        (new.api, OUT, new.web),
        (Protocol::Tcp, 9000..=9000, Action::Allow),
    );
    let d = run(old.b, new.b.clone());
    assert!(d.is_empty(), "{d:#?}");
    // Once web accepts it too, the flow opens, naming both rules.
    let mut newer = new;
    newer.b.grant(
        ("web", "allow-in", 1),
        (newer.web, IN, newer.api),
        (Protocol::Tcp, 9000..=9000, Action::Allow),
    );
    let d = run(shop().b, newer.b);
    assert_eq!(
        d.changes,
        vec![row(
            ["api", "web", "tcp", "9000", "deny", "allow"],
            "api allow-out[1] + web allow-in[1]"
        )]
    );
}

#[test]
fn narrowing_a_range_reports_the_removed_part() {
    let build = |hi: u16| {
        let mut s = shop();
        s.b.grant(
            ("api", "allow-out", 1),
            (s.api, OUT, IDENTITY_ANY_EXTERNAL),
            (Protocol::Tcp, 8000..=hi, Action::Allow),
        );
        s.b
    };
    let d = run(build(8100), build(8049));
    // One row per remote entity (office and world), each one range.
    assert_eq!(
        d.changes,
        vec![
            row(
                ["api", "office", "tcp", "8050-8100", "allow", "deny"],
                "api allow-out[1]"
            ),
            row(
                ["api", "world", "tcp", "8050-8100", "allow", "deny"],
                "api allow-out[1]"
            ),
        ]
    );
}

#[test]
fn splitting_and_merging_ranges_without_changing_access_is_empty() {
    let mut old = shop();
    for (index, ports) in [(1, 8000..=8049), (2, 8050..=8100)] {
        old.b.grant(
            ("api", "allow-out", index),
            (old.api, OUT, IDENTITY_WORLD),
            (Protocol::Udp, ports, Action::Allow),
        );
    }
    let mut new = shop();
    new.b.grant(
        ("api", "allow-out", 1),
        (new.api, OUT, IDENTITY_WORLD),
        (Protocol::Udp, 8000..=8100, Action::Allow),
    );
    assert!(run(old.b.clone(), new.b.clone()).is_empty());
    // Merging 80 and 443 into 80-443 opens 81-442, reported as one range.
    let mut wide = shop();
    wide.b.grant(
        ("web", "allow-in", 0),
        (wide.web, IN, IDENTITY_ANY_EXTERNAL),
        (Protocol::Tcp, 80..=443, Action::Allow),
    );
    let d = run(shop().b, wide.b);
    assert_eq!(
        d.changes,
        vec![
            row(
                ["office", "web", "tcp", "80-442", "deny", "allow"],
                "web allow-in[0]"
            ),
            row(
                ["world", "web", "tcp", "80-442", "deny", "allow"],
                "web allow-in[0]"
            ),
        ]
    );
}

#[test]
fn a_narrower_peer_carves_a_hole_out_of_a_wider_one() {
    let with_office_access = |vendor: bool| {
        let mut s = shop();
        s.b.grant(
            ("db", "allow-in", 1),
            (s.db, IN, s.office),
            (Protocol::Tcp, 5432..=5432, Action::Allow),
        );
        if vendor {
            s.b.peer("vendor", &["203.0.113.17"]);
        }
        s.b
    };
    let d = run(with_office_access(false), with_office_access(true));
    let mut expected = row(
        ["vendor", "db", "tcp", "5432", "allow", "deny"],
        "db allow-in[1]",
    );
    expected.addresses = Some(vec!["203.0.113.17/32".into()]);
    expected.was = Some("office".into());
    assert_eq!(d.changes, vec![expected]);
    assert_eq!(d.entities.len(), 1);
    assert_eq!(d.entities[0].change, "added");
    assert_eq!(d.entities[0].name, "vendor");
    assert!(d.narrowed && !d.widened);
}

#[test]
fn shrinking_a_peer_hands_its_addresses_to_world() {
    let old = shop_with_office_to_db();
    let mut new = PolicyBuilder::new();
    let api = new.workload("api");
    let db = new.workload("db");
    let web = new.workload("web");
    let office = new.peer("office", &["203.0.113.0/25", "2001:db8:20::/48"]);
    allow_tcp(&mut new, shop_rules(web, api, db, "db"));
    new.grant(
        ("db", "allow-in", 1),
        (db, IN, office),
        (Protocol::Tcp, 5432..=5432, Action::Allow),
    );
    let d = run(old.b, new);
    let mut expected = row(
        ["world", "db", "tcp", "5432", "allow", "deny"],
        "db allow-in[1]",
    );
    expected.addresses = Some(vec!["203.0.113.128/25".into()]);
    expected.was = Some("office".into());
    assert_eq!(d.changes, vec![expected]);
    assert_eq!(d.entities[0].change, "cidrs");
    assert_eq!(
        d.entities[0].detail.as_deref(),
        Some("+203.0.113.0/25 -203.0.113.0/24")
    );
}

#[test]
fn deny_masks_allow() {
    // db accepts anything on tcp; NEW denies office 22 (folded by the
    // compiler into the exact level, the rest falls through to ANY).
    let build = |deny: bool| {
        let mut s = shop();
        s.b.grant(
            ("db", "allow-in", 1),
            (s.db, IN, IDENTITY_ANY),
            (Protocol::Tcp, 0..=65535, Action::Allow),
        );
        if deny {
            s.b.grant(
                ("db", "deny-in", 0),
                (s.db, IN, s.office),
                (Protocol::Tcp, 22..=22, Action::Deny),
            );
        }
        s.b
    };
    let d = run(build(false), build(true));
    assert_eq!(
        d.changes,
        vec![row(
            ["office", "db", "tcp", "22", "allow", "deny"],
            "db deny-in[0]"
        )]
    );
}

#[test]
fn icmp_is_a_single_port_spelled_any() {
    let old = shop();
    let mut new = shop();
    let r = new.b.rule("web", "allow-in", 1);
    let key = VerdictKey::new(
        new.web,
        IN as u8,
        Protocol::Icmp as u8,
        IDENTITY_WORLD,
        0,
        16,
    );
    new.b.entry(key, Action::Allow as u8, r);
    let d = run(old.b, new.b);
    assert_eq!(
        d.changes,
        vec![row(
            ["world", "web", "icmp", "any", "deny", "allow"],
            "web allow-in[1]"
        )]
    );
}

#[test]
fn host_rows_use_only_the_workload_side() {
    let old = shop();
    let mut new = shop();
    new.b.grant(
        ("db", "allow-in", 1),
        (new.db, IN, enforcer_common::identity::IDENTITY_HOST),
        (Protocol::Tcp, 5432..=5432, Action::Allow),
    );
    let d = run(old.b, new.b);
    assert_eq!(
        d.changes,
        vec![row(
            ["host", "db", "tcp", "5432", "deny", "allow"],
            "db allow-in[1]"
        )]
    );
}

#[test]
fn mode_changes_are_reported_and_counted() {
    let old = shop();
    let mut new = shop();
    new.b.set_mode(new.api, Mode::Audit as u8);
    let d = run(old.b, new.b);
    assert!(d.changes.is_empty());
    assert_eq!(d.modes.len(), 1);
    assert_eq!(
        (
            d.modes[0].workload.as_str(),
            d.modes[0].before.as_str(),
            d.modes[0].after.as_str()
        ),
        ("api", "enforce", "audit")
    );
    assert!(d.widened && !d.narrowed);
    let mut back = shop();
    back.b.set_mode(back.api, Mode::Audit as u8);
    let d = run(back.b, shop().b);
    assert!(d.narrowed && !d.widened);
}

#[test]
fn a_rename_keeping_the_selector_is_only_a_rename() {
    let old = shop();
    // `db` becomes `database`, same unit, identities handed out differently.
    let mut b = PolicyBuilder::new().identities_from(100);
    let office = b.peer("office", &["203.0.113.0/24", "2001:db8:20::/48"]);
    let web = b.workload("web");
    let db = b.workload_with(
        "database",
        CgroupSelector::Unit("db.service".into()),
        Mode::Enforce as u8,
    );
    let api = b.workload("api");
    let _ = office;
    allow_tcp(&mut b, shop_rules(web, api, db, "database"));
    let d = run(old.b, b);
    assert!(d.changes.is_empty(), "{:#?}", d.changes);
    assert_eq!(d.entities.len(), 1);
    assert_eq!(d.entities[0].change, "renamed");
    assert_eq!(d.entities[0].name, "database");
    assert_eq!(d.entities[0].detail.as_deref(), Some("was db"));
}

#[test]
fn a_rename_with_a_new_selector_removes_and_adds() {
    let old = shop();
    let mut b = PolicyBuilder::new();
    let api = b.workload("api");
    let db = b.workload_with(
        "pg",
        CgroupSelector::Glob("system.slice/pg-*.service".into()),
        Mode::Enforce as u8,
    );
    let web = b.workload("web");
    b.peer("office", &["203.0.113.0/24", "2001:db8:20::/48"]);
    allow_tcp(&mut b, shop_rules(web, api, db, "pg"));
    let d = run(old.b, b);
    assert_eq!(
        d.changes,
        vec![
            row(
                ["api", "db", "tcp", "5432", "allow", "deny"],
                "api allow-out[0] + db allow-in[0]"
            ),
            row(
                ["api", "pg", "tcp", "5432", "deny", "allow"],
                "api allow-out[0] + pg allow-in[0]"
            ),
        ]
    );
    let kinds: Vec<(&str, &str)> = d
        .entities
        .iter()
        .map(|e| (e.name.as_str(), e.change.as_str()))
        .collect();
    assert_eq!(kinds, vec![("db", "removed"), ("pg", "added")]);
}

#[test]
fn reordering_and_renumbering_identities_is_empty() {
    // Same policy, entities declared in another order with other identities,
    // rule table in another order.
    let old = shop();
    let mut b = PolicyBuilder::new().identities_from(500);
    let office = b.peer("office", &["2001:db8:20::/48", "203.0.113.0/24"]);
    let web = b.workload("web");
    let db = b.workload("db");
    let api = b.workload("api");
    let _ = office;
    allow_tcp(&mut b, shop_rules(web, api, db, "db").into_iter().rev());
    let d = run(old.b, b);
    assert!(d.is_empty(), "{d:#?}");
}

#[test]
fn expectations_and_untils_are_compared_as_sets() {
    let exp = |from: &str, verdict: &str| ExpectationInfo {
        from: from.into(),
        to: "db".into(),
        port: "5432/tcp".into(),
        verdict: verdict.into(),
    };
    let rule = |key: &str, at: &str, until: Option<&str>| RuleInfo {
        key: key.into(),
        rule: at.into(),
        until: until.map(Into::into),
    };
    let old = DiffInput {
        compiled: shop().b.build(),
        meta: PolicyMeta {
            expectations: vec![exp("office", "allow"), exp("world", "deny")],
            rules: vec![
                rule(
                    "db allow-in vendor 22/tcp",
                    "db allow-in[2]",
                    Some("2026-12-31T18:00:00Z"),
                ),
                rule("db allow-in api 5432/tcp", "db allow-in[0]", None),
            ],
        },
    };
    let new = DiffInput {
        compiled: shop().b.build(),
        meta: PolicyMeta {
            // Reordered, one verdict flipped, one added.
            expectations: vec![
                exp("world", "deny"),
                exp("office", "deny"),
                exp("api", "allow"),
            ],
            rules: vec![
                rule("db allow-in api 5432/tcp", "db allow-in[1]", None),
                rule(
                    "db allow-in vendor 22/tcp",
                    "db allow-in[0]",
                    Some("2027-01-31T18:00:00Z"),
                ),
            ],
        },
    };
    let d = diff(&old, &new);
    let e: Vec<(&str, Option<&str>, Option<&str>)> = d
        .expectations
        .iter()
        .map(|e| (e.from.as_str(), e.before.as_deref(), e.after.as_deref()))
        .collect();
    assert_eq!(
        e,
        vec![
            ("api", None, Some("allow")),
            ("office", Some("allow"), Some("deny"))
        ]
    );
    assert_eq!(d.untils.len(), 1);
    assert_eq!(d.untils[0].rule, "db allow-in[0]");
    assert_eq!(d.untils[0].after.as_deref(), Some("2027-01-31T18:00:00Z"));
    assert!(!d.is_empty() && !d.widened && !d.narrowed);
    // Reordering alone changes nothing.
    let mut same = new.clone();
    same.meta.expectations.reverse();
    same.meta.rules.reverse();
    assert!(diff(&new, &same).is_empty());
}

#[test]
fn json_has_the_contract_shape() {
    let old = shop();
    let new = shop_with_office_to_db();
    let d = run(old.b, new.b);
    let v: serde_json::Value =
        serde_json::from_str(&render(&d, Format::Json, false)).expect("valid json");
    assert_eq!(v["widened"], true);
    assert_eq!(v["narrowed"], false);
    assert_eq!(
        v["changes"][0],
        serde_json::json!({"from": "office", "to": "db", "protocol": "tcp", "ports": "5432",
                           "before": "deny", "after": "allow", "rule": "db allow-in[1]"})
    );
}

#[test]
fn text_and_markdown_show_signs_and_a_summary() {
    let mut old = shop();
    old.b.grant(
        ("web", "allow-in", 1),
        (old.web, IN, IDENTITY_ANY_EXTERNAL),
        (Protocol::Tcp, 80..=80, Action::Allow),
    );
    let new = shop_with_office_to_db();
    let d = run(old.b, new.b);
    let text = render(&d, Format::Text, false);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "widens and narrows access: 3 verdict changes (1 newly allowed, 2 newly denied)"
    );
    assert!(lines[2].starts_with("  FROM"), "{text}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("+ office") && l.ends_with("db allow-in[1]")),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("- world") && l.contains(" 80 ")),
        "{text}"
    );
    assert!(!text.contains('\x1b'));
    assert!(render(&d, Format::Text, true).contains("\x1b[32m+ office"));
    let md = render(&d, Format::Markdown, false);
    let first = md.lines().next().expect("a summary line");
    assert!(
        first.starts_with("**Policy diff:** widens and narrows access"),
        "{md}"
    );
    assert!(
        md.contains("| ➕ | office | db | tcp | 5432 | deny | allow | `db allow-in[1]` |"),
        "{md}"
    );
    let empty = render(&PolicyDiff::default(), Format::Markdown, false);
    assert_eq!(empty, "**Policy diff:** no changes\n");
}

#[test]
fn a_peer_renamed_with_the_same_addresses_is_only_a_rename() {
    let build = |peer: &str| {
        let mut b = PolicyBuilder::new();
        let db = b.workload("db");
        let p = b.peer(peer, &["203.0.113.0/24", "2001:db8:20::/48"]);
        b.grant(
            ("db", "allow-in", 0),
            (db, IN, p),
            (Protocol::Tcp, 5432..=5432, Action::Allow),
        );
        b
    };
    let d = run(build("office"), build("hq"));
    assert!(d.changes.is_empty(), "{:#?}", d.changes);
    let e: Vec<(&str, &str, Option<&str>)> = d
        .entities
        .iter()
        .map(|e| (e.name.as_str(), e.change.as_str(), e.detail.as_deref()))
        .collect();
    assert_eq!(e, vec![("hq", "renamed", Some("was office"))]);
    // A rename that also drops access shows the rows, under the new name
    // with the addresses' old owner.
    let mut lost = PolicyBuilder::new();
    lost.workload("db");
    lost.peer("hq", &["203.0.113.0/24", "2001:db8:20::/48"]);
    let d = run(build("office"), lost);
    assert_eq!(d.changes.len(), 1);
    assert_eq!(
        (d.changes[0].from.as_str(), d.changes[0].was.as_deref()),
        ("hq", Some("office"))
    );
    assert_eq!(
        d.changes[0].addresses.as_deref(),
        Some(&["203.0.113.0/24".to_owned(), "2001:db8:20::/48".to_owned()][..])
    );
}
