//! Invalid policies: each must be rejected with every error at its exact
//! `FILE:LINE:COL` and a message saying what is wrong.

use std::path::PathBuf;
use std::time::SystemTime;

use enforcer::check::compile_loaded;
use enforcer::policy::{LoadError, load_sources, parse_rfc3339};

/// A workload and a policy selecting it: rules go on line 7.
const HEAD: &str = "[workload.web]\nunit = \"nginx.service\"\nlabels = { app = \"web\" }\n[[policy]]\nname = \"web\"\nselect = { app = \"web\" }\n";

struct Case {
    name: &'static str,
    files: Vec<(&'static str, String)>,
    /// (FILE:LINE:COL, a part of the message), one per expected error.
    errors: Vec<(&'static str, &'static str)>,
}

fn one(name: &'static str, text: &str, errors: Vec<(&'static str, &'static str)>) -> Case {
    Case {
        name,
        files: vec![("p.toml", text.to_string())],
        errors,
    }
}

fn rule(name: &'static str, line: &str, errors: Vec<(&'static str, &'static str)>) -> Case {
    one(name, &format!("{HEAD}{line}\n"), errors)
}

fn cases() -> Vec<Case> {
    vec![
        one(
            "toml syntax",
            "[workload.web\nunit = \"a.service\"\n",
            vec![("p.toml:1:14", "invalid TOML")],
        ),
        one(
            "unknown top-level key",
            "polcy = 1\n",
            vec![(
                "p.toml:1:1",
                "unknown field `polcy` in a policy file: did you mean `policy`?",
            )],
        ),
        one(
            "unknown workload field",
            "[workload.web]\nunit = \"nginx.service\"\nlables = { app = \"web\" }\n",
            vec![(
                "p.toml:3:1",
                "unknown field `lables` in workload `web`: did you mean `labels`?",
            )],
        ),
        one(
            "unit and cgroup",
            "[workload.web]\nunit = \"nginx.service\"\ncgroup = \"a/b\"\n",
            vec![(
                "p.toml:3:10",
                "workload `web` has both `unit` and `cgroup`: keep exactly one",
            )],
        ),
        one(
            "neither unit nor cgroup",
            "[workload.web]\nmode = \"audit\"\n",
            vec![("p.toml:1:11", "workload `web` needs `unit = ")],
        ),
        one(
            "bad name charset",
            "[workload.Web]\nunit = \"a.service\"\n",
            vec![("p.toml:1:11", "workload name: invalid name `Web`")],
        ),
        one(
            "reserved name",
            "[peer.world]\ncidrs = [\"198.51.100.1\"]\n",
            vec![("p.toml:1:7", "`world` is a reserved entity name")],
        ),
        one(
            "bad label key",
            "[workload.web]\nunit = \"a.service\"\nlabels = { App = \"x\" }\n",
            vec![("p.toml:3:12", "invalid label key `App`")],
        ),
        one(
            "label value too long",
            &format!(
                "[workload.web]\nunit = \"a.service\"\nlabels = {{ app = \"{}\" }}\n",
                "v".repeat(64)
            ),
            vec![("p.toml:3:18", "is longer than 63 bytes")],
        ),
        one(
            "label value not a string",
            "[workload.web]\nunit = \"a.service\"\nlabels = { app = 1 }\n",
            vec![("p.toml:3:18", "label `app` must be a string value")],
        ),
        one(
            "bad mode",
            "[workload.web]\nunit = \"a.service\"\nmode = \"strict\"\n",
            vec![(
                "p.toml:3:8",
                "invalid mode `strict`: use \"enforce\", \"audit\" or \"off\"",
            )],
        ),
        one(
            "unit without suffix",
            "[workload.web]\nunit = \"nginx\"\n",
            vec![("p.toml:2:8", "must name a .service, .scope or .slice")],
        ),
        one(
            "bad cgroup glob",
            "[workload.web]\ncgroup = \"a/**b\"\n",
            vec![("p.toml:2:10", "`**` must be a whole path segment")],
        ),
        one(
            "same cgroup pattern twice",
            "[workload.a]\ncgroup = \"x/*\"\n[workload.b]\ncgroup = \"/x/*\"\n",
            vec![(
                "p.toml:3:11",
                "workload `b` has the same cgroup selector as workload `a` (p.toml:1:11)",
            )],
        ),
        one(
            "peer without cidrs",
            "[peer.p]\nlabels = { zone = \"x\" }\n",
            vec![("p.toml:1:7", "peer `p` needs `cidrs")],
        ),
        one(
            "invalid cidr",
            "[peer.p]\ncidrs = [\"203.0.113.0/33\"]\n",
            vec![("p.toml:2:10", "invalid CIDR `203.0.113.0/33`")],
        ),
        one(
            "cidr with host bits",
            "[peer.p]\ncidrs = [\"198.51.100.7\", \"203.0.113.1/24\"]\n",
            vec![("p.toml:2:26", "did you mean \"203.0.113.0/24\"?")],
        ),
        Case {
            name: "same cidr in two peers",
            files: vec![
                ("a.toml", "[peer.p]\ncidrs = [\"198.51.100.0/24\"]\n".into()),
                ("b.toml", "[peer.q]\ncidrs = [\"198.51.100.0/24\"]\n".into()),
            ],
            errors: vec![(
                "b.toml:2:10",
                "CIDR 198.51.100.0/24 is already listed by peer `p` (a.toml:2:10)",
            )],
        },
        Case {
            name: "duplicate workload across files",
            files: vec![
                ("a.toml", "[workload.web]\nunit = \"a.service\"\n".into()),
                ("b.toml", "[workload.web]\nunit = \"b.service\"\n".into()),
            ],
            errors: vec![(
                "b.toml:1:11",
                "duplicate name: workload `web` is already declared at a.toml:1:11",
            )],
        },
        one(
            "workload and peer share a name",
            "[workload.web]\nunit = \"a.service\"\n[peer.web]\ncidrs = [\"198.51.100.1\"]\n",
            vec![(
                "p.toml:3:7",
                "duplicate name: workload `web` is already declared at p.toml:1:11",
            )],
        ),
        one(
            "duplicate policy name",
            &format!("{HEAD}[[policy]]\nname = \"web\"\nselect = {{ app = \"web\" }}\n"),
            vec![(
                "p.toml:7:1",
                "duplicate policy name `web`: already used at p.toml:4:1",
            )],
        ),
        one(
            "policy without name",
            "[[policy]]\nselect = \"workload:x\"\noptional = true\n",
            vec![("p.toml:1:1", "policy needs a `name = \"NAME\"`")],
        ),
        one(
            "policy table instead of array",
            "[policy]\nname = \"x\"\n",
            vec![(
                "p.toml:1:1",
                "`policy` must be an array of tables: write `[[policy]]`",
            )],
        ),
        one(
            "select matching nothing",
            "[workload.web]\nunit = \"a.service\"\nlabels = { app = \"web\" }\n[[policy]]\nname = \"p\"\nselect = { app = \"wbe\" }\n",
            vec![(
                "p.toml:6:10",
                "selector { app = \"wbe\" } matches no workload",
            )],
        ),
        one(
            "empty select",
            "[workload.web]\nunit = \"a.service\"\n[[policy]]\nname = \"p\"\nselect = []\n",
            vec![("p.toml:5:10", "`select` is empty")],
        ),
        one(
            "select naming a peer",
            "[peer.p]\ncidrs = [\"198.51.100.1\"]\n[[policy]]\nname = \"p\"\nselect = \"peer:p\"\n",
            vec![(
                "p.toml:5:10",
                "`select` picks the workloads a policy governs",
            )],
        ),
        rule(
            "rule selector matching nothing",
            "allow-in = [ { from = [{ app = \"ap\" }] } ]",
            vec![(
                "p.toml:7:24",
                "selector { app = \"ap\" } matches no workload or peer: fix the labels, or mark the rule `optional = true`",
            )],
        ),
        rule(
            "unknown selector name",
            "allow-in = [ { from = [\"worl\"] } ]",
            vec![(
                "p.toml:7:24",
                "unknown selector \"worl\": did you mean \"world\"?",
            )],
        ),
        rule(
            "unknown workload reference",
            "allow-out = [ { to = [\"workload:wbe\"] } ]",
            vec![(
                "p.toml:7:23",
                "no workload is named `wbe`: did you mean `web`?",
            )],
        ),
        rule(
            "empty label selector",
            "allow-in = [ { from = [{}] } ]",
            vec![("p.toml:7:24", "empty label selector")],
        ),
        rule(
            "port out of range",
            "allow-in = [ { from = [\"any\"], ports = [\"443/tcp\", \"70000/tcp\"] } ]",
            vec![(
                "p.toml:7:52",
                "port 70000 is out of range: ports are 1 to 65535",
            )],
        ),
        rule(
            "range low above high",
            "allow-in = [ { from = [\"any\"], ports = [\"9000-8000/tcp\"] } ]",
            vec![(
                "p.toml:7:41",
                "port range 9000-8000 is empty: write the lower port first (8000-9000)",
            )],
        ),
        rule(
            "bad protocol",
            "allow-in = [ { from = [\"any\"], ports = [\"80/sctp\"] } ]",
            vec![("p.toml:7:41", "unknown protocol `sctp`: use `tcp` or `udp`")],
        ),
        rule(
            "integer port",
            "allow-in = [ { from = [\"any\"], ports = [443] } ]",
            vec![(
                "p.toml:7:41",
                "write ports as strings with their protocol: \"443/tcp\"",
            )],
        ),
        rule(
            "to in an inbound rule",
            "allow-in = [ { to = [\"any\"] } ]",
            vec![(
                "p.toml:7:16",
                "a `allow-in` rule names its remote end with `from`, not `to`",
            )],
        ),
        rule(
            "rule without remote",
            "deny-out = [ { ports = [\"tcp\"] } ]",
            vec![("p.toml:7:14", "a `deny-out` rule needs `to`")],
        ),
        rule(
            "unknown rule field",
            "allow-in = [ { from = [\"any\"], port = [\"tcp\"] } ]",
            vec![(
                "p.toml:7:32",
                "unknown field `port` in a `allow-in` rule: did you mean `ports`?",
            )],
        ),
        rule(
            "bad until",
            "allow-in = [ { from = [\"any\"], until = \"next tuesday\" } ]",
            vec![(
                "p.toml:7:40",
                "invalid time `next tuesday`: write an RFC 3339 time with its offset",
            )],
        ),
        rule(
            "until without an offset",
            "allow-in = [ { from = [\"any\"], until = 2026-12-31T18:00:00 } ]",
            vec![(
                "p.toml:7:40",
                "`until` needs a full date, time and offset, e.g. \"2026-12-31T18:00:00Z\" (got `2026-12-31T18:00:00`)",
            )],
        ),
        rule(
            "section not a list",
            "allow-in = { from = [\"any\"] }",
            vec![("p.toml:7:12", "`allow-in` must be a list of rules")],
        ),
        one(
            "expectation with a bad verdict",
            &format!(
                "{HEAD}[[expect]]\nfrom = \"world\"\nto = \"web\"\nport = \"443/tcp\"\nverdict = \"maybe\"\n"
            ),
            vec![(
                "p.toml:11:11",
                "invalid verdict `maybe`: use \"allow\" or \"deny\"",
            )],
        ),
        one(
            "expectation naming an unknown entity",
            &format!(
                "{HEAD}[[expect]]\nfrom = \"wrld\"\nto = \"web\"\nport = \"443/tcp\"\nverdict = \"deny\"\n"
            ),
            vec![("p.toml:8:8", "unknown entity `wrld`: did you mean `world`?")],
        ),
        one(
            "expectation with a port range",
            &format!(
                "{HEAD}[[expect]]\nfrom = \"world\"\nto = \"web\"\nport = \"1-2/tcp\"\nverdict = \"deny\"\n"
            ),
            vec![("p.toml:10:8", "`1-2/tcp` is not a single port")],
        ),
        one(
            "expectation without a workload",
            &format!(
                "{HEAD}[[expect]]\nfrom = \"world\"\nto = \"host\"\nport = \"443/tcp\"\nverdict = \"deny\"\n"
            ),
            vec![("p.toml:7:1", "has no workload at either end")],
        ),
        one(
            "address used as a selector",
            &format!(
                "{HEAD}allow-in = [ {{ from = [\"world\"], ports = [\"443/tcp\"] }} ]\ndeny-in = [ {{ from = [\"198.51.100.0/24\"], ports = [\"443/tcp\"] }} ]\n"
            ),
            vec![(
                "p.toml:8:23",
                "\"198.51.100.0/24\" is an address, not a selector: declare a peer",
            )],
        ),
        one(
            "expectation that does not hold",
            &format!(
                "{HEAD}allow-in = [ {{ from = [\"world\"], ports = [\"443/tcp\"] }} ]\n[[expect]]\nfrom = \"198.51.100.1\"\nto = \"web\"\nport = \"443/tcp\"\nverdict = \"deny\"\n[[expect]]\nfrom = \"host\"\nto = \"web\"\nport = \"443/tcp\"\nverdict = \"allow\"\n"
            ),
            vec![
                (
                    "p.toml:8:1",
                    "expectation failed: 198.51.100.1 -> web 443/tcp is allow (decided by web allow-in[0]), expected deny",
                ),
                (
                    "p.toml:13:1",
                    "expectation failed: host -> web 443/tcp is deny (decided by default deny), expected allow",
                ),
            ],
        ),
        one(
            "several errors in one file are all reported",
            "[workload.web]\nunit = \"nginx\"\nmode = \"on\"\n[peer.p]\ncidrs = [\"1.2.3.4/40\"]\n",
            vec![
                ("p.toml:2:8", "must name a .service"),
                ("p.toml:3:8", "invalid mode `on`"),
                ("p.toml:5:10", "invalid CIDR"),
            ],
        ),
    ]
}

#[test]
fn every_invalid_policy_is_rejected_at_the_right_place() {
    let now = parse_rfc3339("2026-11-29T12:00:00Z").unwrap_or(SystemTime::UNIX_EPOCH);
    let cases = cases();
    assert!(cases.len() >= 25);
    let mut failures = Vec::new();
    for case in &cases {
        let sources: Vec<(PathBuf, String)> = case
            .files
            .iter()
            .map(|(n, t)| (PathBuf::from(n), t.clone()))
            .collect();
        let result = load_sources(&sources).and_then(|l| compile_loaded(l, now));
        let errors: Vec<String> = match result {
            Ok(_) => vec![],
            Err(LoadError::Invalid(d)) => d.errors().map(ToString::to_string).collect(),
            Err(e) => vec![format!("unexpected: {e}")],
        };
        let matched = errors.len() == case.errors.len()
            && case.errors.iter().all(|(loc, msg)| {
                errors
                    .iter()
                    .any(|e| e.starts_with(&format!("{loc}: ")) && e.contains(msg))
            });
        if !matched {
            failures.push(format!(
                "{}:\n  expected {:?}\n  got      {:?}",
                case.name, case.errors, errors
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn case_names_are_distinct() {
    let cases = cases();
    let mut names: Vec<_> = cases.iter().map(|c| c.name).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), cases.len());
}
