//! `enforcer check` and `enforcer explain`, run as the built binary.

mod support;

use std::path::{Path, PathBuf};

use support::{dir_with, enforcer, stdout};

fn example() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../policies/example")
        .display()
        .to_string()
}

#[test]
fn check_accepts_the_example_policy() {
    let o = enforcer(&["check", &example()]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}{}",
        stdout(&o),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        stdout(&o).contains("valid: 3 workloads, 2 peers"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn check_exits_2_on_a_missing_directory_and_on_usage_errors() {
    assert_eq!(
        enforcer(&["check", "/nonexistent/enforcer-policies"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        enforcer(&["check", "--no-such-flag"]).status.code(),
        Some(2)
    );
    assert_eq!(enforcer(&[]).status.code(), Some(2));
}

#[test]
fn check_prints_every_error_with_its_position_and_exits_1() {
    let dir = dir_with(&[
        (
            "a.toml",
            "[workload.web]\nunit = \"nginx\"\nmode = \"loud\"\n",
        ),
        ("b.toml", "[peer.office]\ncidrs = [\"203.0.113.0/33\"]\n"),
        ("notes.txt", "not a policy"),
    ]);
    let o = enforcer(&["check", &dir.path().display().to_string()]);
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    let a = dir.path().join("a.toml").display().to_string();
    let b = dir.path().join("b.toml").display().to_string();
    let lines: Vec<&str> = out.lines().filter(|l| !l.contains("warning:")).collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[0].starts_with(&format!("{a}:2:8: unit `nginx` must name")),
        "{out}"
    );
    assert!(
        lines[1].starts_with(&format!("{a}:3:8: invalid mode `loud`")),
        "{out}"
    );
    assert!(
        lines[2].starts_with(&format!("{b}:2:10: invalid CIDR")),
        "{out}"
    );
}

#[test]
fn check_warns_without_failing() {
    let dir = dir_with(&[(
        "p.toml",
        "[workload.web]\nunit = \"nginx.service\"\n[workload.db]\nunit = \"db.service\"\n[[policy]]\nname = \"web\"\nselect = \"workload:web\"\nallow-in = [ { from = [\"world\"], ports = [\"22/tcp\"], until = \"2020-01-01T00:00:00Z\" } ]\n",
    )]);
    let o = enforcer(&["check", &dir.path().display().to_string()]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    let p = dir.path().join("p.toml").display().to_string();
    let out = stdout(&o);
    assert!(
        out.contains(&format!(
            "{p}:3:11: warning: no policy selects workload `db`"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "{p}:8:62: warning: rule web allow-in[0] has expired"
        )),
        "{out}"
    );
}

#[test]
fn check_fails_on_an_expectation_that_does_not_hold() {
    let mut text =
        std::fs::read_to_string(PathBuf::from(example()).join("shop.toml")).unwrap_or_default();
    text.push_str(
        "\n[[expect]]\nfrom = \"office\"\nto = \"db\"\nport = \"22/tcp\"\nverdict = \"allow\"\n",
    );
    let line = text.lines().count() - 4;
    let dir = dir_with(&[("shop.toml", &text)]);
    let o = enforcer(&["check", &dir.path().display().to_string()]);
    assert_eq!(o.status.code(), Some(1));
    let expected = format!(
        "{}:{line}:1: expectation failed: office -> db 22/tcp is deny (decided by db deny-in[0]), expected allow",
        dir.path().join("shop.toml").display()
    );
    assert!(stdout(&o).contains(&expected), "{}", stdout(&o));
}

#[test]
fn explain_names_the_deciding_rule() {
    let ex = example();
    let run = |from: &str, to: &str, port: &str| {
        let o = enforcer(&["explain", &ex, "--from", from, "--to", to, "--port", port]);
        assert_eq!(
            o.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        stdout(&o)
    };
    assert!(run("office", "db", "5432/tcp").starts_with("allow: db allow-in[1]\n"));
    assert!(run("203.0.113.9", "db", "5432/tcp").starts_with("allow: db allow-in[1]\n"));
    assert!(run("world", "db", "5432/tcp").starts_with("deny: default deny\n"));
    assert!(run("office", "db", "22/tcp").starts_with("deny: db deny-in[0]\n"));
    let both = run("web", "api", "8080/tcp");
    assert!(
        both.starts_with("allow: web allow-out[0] and api allow-in[0]\n"),
        "{both}"
    );
    assert!(
        both.contains("  egress of web to api, 8080/tcp: allow by web allow-out[0]\n"),
        "{both}"
    );
    assert!(run("api", "2001:db8:20::1", "icmp").starts_with("deny: default deny\n"));
    assert!(run("office", "host", "22/tcp").starts_with("unmanaged:"));
    assert!(
        run("127.0.0.1", "db", "5432/tcp")
            .contains("ingress of db from host, 5432/tcp: deny (default deny)")
    );
}

#[test]
fn explain_rejects_bad_arguments_with_status_2() {
    let ex = example();
    for args in [
        vec![
            "explain", &ex, "--from", "office", "--to", "db", "--port", "5432",
        ],
        vec![
            "explain", &ex, "--from", "ofice", "--to", "db", "--port", "5432/tcp",
        ],
        vec!["explain", &ex, "--from", "office", "--to", "db"],
        vec![
            "explain",
            "/nonexistent/enforcer",
            "--from",
            "office",
            "--to",
            "db",
            "--port",
            "1/tcp",
        ],
    ] {
        assert_eq!(enforcer(&args).status.code(), Some(2), "{args:?}");
    }
}
