//! `enforcer diff` through the built binary: real policy directories,
//! `REV:DIR` from a temporary git repository, formats and exit codes.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use support::{code, enforcer_in, stderr, stdout, write};
use tempfile::TempDir;

const SHOP: &str = r#"
[workload.web]
unit = "nginx.service"
labels = { app = "web", env = "prod" }

[workload.api]
cgroup = "system.slice/api-*.service"
labels = { app = "api", env = "prod" }

[workload.db]
unit = "postgresql.service"
labels = { app = "db", env = "prod" }

[peer.office]
cidrs = ["203.0.113.0/24", "2001:db8:20::/48"]
labels = { zone = "office" }

[[policy]]
name = "web"
select = { app = "web" }
allow-in = [ { from = ["world"], ports = ["443/tcp", "80/tcp"] } ]
allow-out = [ { to = [{ app = "api" }], ports = ["8080/tcp"] } ]

[[policy]]
name = "api"
select = { app = "api" }
allow-in  = [ { from = [{ app = "web" }], ports = ["8080/tcp"] } ]
allow-out = [
  { to = [{ app = "db", env = "prod" }], ports = ["5432/tcp"] },
  { to = ["world"], ports = ["53/udp", "53/tcp"] },
]

[[policy]]
name = "db"
select = { app = "db" }
allow-in = [
  { from = [{ app = "api" }], ports = ["5432/tcp"] },
  { from = ["peer:office"], ports = ["5432/tcp"] },
]

[[expect]]
from = "office"
to = "db"
port = "5432/tcp"
verdict = "allow"
"#;

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(o)))
}

fn git(repo: &Path, args: &[&str]) {
    let o = Command::new("git")
        .current_dir(repo)
        .args([
            "-c",
            "user.name=test",
            "-c",
            "user.email=test@example.invalid",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .output()
        .expect("run git");
    assert!(
        o.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn a_widening_change_in_every_format() {
    let t = TempDir::new().expect("tempdir");
    write(&t.path().join("old"), &[("shop.toml", SHOP)]);
    let new = SHOP.replace(
        r#"{ from = ["peer:office"], ports = ["5432/tcp"] },"#,
        r#"{ from = ["peer:office"], ports = ["5432/tcp", "8000-8100/tcp"] },"#,
    );
    write(&t.path().join("new"), &[("shop.toml", &new)]);

    let o = enforcer_in(t.path(), &["diff", "old", "new", "--format", "json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(
        json(&o),
        serde_json::json!({
            "widened": true, "narrowed": false,
            "changes": [{"from": "office", "to": "db", "protocol": "tcp", "ports": "8000-8100",
                         "before": "deny", "after": "allow", "rule": "db allow-in[1]"}],
            "entities": [], "modes": [], "expectations": [], "untils": []
        })
    );

    let o = enforcer_in(t.path(), &["diff", "old", "new"]);
    let text = stdout(&o);
    assert!(
        text.starts_with("widens access: 1 verdict change"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("+ office") && l.contains("8000-8100")),
        "{text}"
    );
    assert!(
        !text.contains('\x1b'),
        "no colour when stdout is not a terminal"
    );

    let o = enforcer_in(t.path(), &["diff", "old", "new", "--format", "markdown"]);
    let md = stdout(&o);
    assert!(md.starts_with("**Policy diff:** widens access"), "{md}");
    assert!(
        md.contains("| ➕ | office | db | tcp | 8000-8100 | deny | allow | `db allow-in[1]` |"),
        "{md}"
    );

    assert_eq!(
        code(&enforcer_in(
            t.path(),
            &["diff", "old", "new", "--fail-on", "widen"]
        )),
        1
    );
    assert_eq!(
        code(&enforcer_in(
            t.path(),
            &["diff", "old", "new", "--fail-on", "any"]
        )),
        1
    );
    assert_eq!(
        code(&enforcer_in(
            t.path(),
            &["diff", "new", "old", "--fail-on", "widen"]
        )),
        0
    );
    assert_eq!(
        code(&enforcer_in(
            t.path(),
            &["diff", "new", "old", "--fail-on", "any"]
        )),
        1
    );
}

#[test]
fn reordering_splitting_and_renaming_files_is_an_empty_diff() {
    let t = TempDir::new().expect("tempdir");
    write(&t.path().join("old"), &[("shop.toml", SHOP)]);
    // Same policy: entities in one file, policies (rules and selectors
    // reordered, formatting changed) in another.
    let (entities, policies) = SHOP.split_at(SHOP.find("[[policy]]").expect("policies"));
    let reordered = policies
        .replace(
            "allow-out = [\n  { to = [{ app = \"db\", env = \"prod\" }], ports = [\"5432/tcp\"] },\n  { to = [\"world\"], ports = [\"53/udp\", \"53/tcp\"] },\n]",
            "allow-out = [\n  { to = [\"world\"], ports = [\"53/tcp\", \"53/udp\"] },\n  { to = [{ env = \"prod\", app = \"db\" }], ports = [\"5432/tcp\"] },\n]",
        )
        .replace("ports = [\"443/tcp\", \"80/tcp\"]", "ports = [ \"80/tcp\",\"443/tcp\" ]");
    assert_ne!(reordered, policies, "the test must really reorder");
    write(
        &t.path().join("new"),
        &[
            ("b-policies.toml", &reordered),
            ("a-entities.toml", entities),
        ],
    );
    let o = enforcer_in(
        t.path(),
        &["diff", "old", "new", "--fail-on", "any", "--format", "json"],
    );
    assert_eq!(code(&o), 0, "{}\n{}", stdout(&o), stderr(&o));
    let v = json(&o);
    assert_eq!(v["changes"], serde_json::json!([]));
    assert_eq!(v["widened"], false);
    let o = enforcer_in(t.path(), &["diff", "old", "new"]);
    assert_eq!(stdout(&o), "no changes\n");
}

#[test]
fn invalid_input_exits_2_with_located_errors() {
    let t = TempDir::new().expect("tempdir");
    write(&t.path().join("good"), &[("shop.toml", SHOP)]);
    let broken = SHOP.replace("from = [{ app = \"web\" }]", "from = [{ app = \"wbe\" }]");
    write(&t.path().join("bad"), &[("shop.toml", &broken)]);
    for args in [["diff", "good", "bad"], ["diff", "bad", "good"]] {
        let o = enforcer_in(t.path(), &args);
        assert_eq!(code(&o), 2, "{}", stderr(&o));
        assert!(stdout(&o).is_empty());
        let err = stderr(&o);
        assert!(
            err.lines().any(|l| l.starts_with("bad/shop.toml:")
                && l.split(':')
                    .nth(2)
                    .is_some_and(|c| c.parse::<usize>().is_ok())),
            "{err}"
        );
    }
    // A failing expectation makes a side invalid too.
    let failing = SHOP.replace(r#"{ from = ["peer:office"], ports = ["5432/tcp"] },"#, "");
    write(&t.path().join("failing"), &[("shop.toml", &failing)]);
    let o = enforcer_in(t.path(), &["diff", "good", "failing"]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("expectation failed"), "{}", stderr(&o));
    // A missing directory, and a usage error.
    assert_eq!(
        code(&enforcer_in(t.path(), &["diff", "good", "nowhere"])),
        2
    );
    assert_eq!(
        code(&enforcer_in(
            t.path(),
            &["diff", "good", "good", "--format", "yaml"]
        )),
        2
    );
}

#[test]
fn rev_dir_inputs_come_from_git() {
    let t = TempDir::new().expect("tempdir");
    let repo = t.path();
    git(repo, &["init", "-q", "-b", "main"]);
    write(&repo.join("policies"), &[("shop.toml", SHOP)]);
    git(repo, &["add", "."]);
    git(repo, &["commit", "-q", "-m", "v1"]);
    // The working tree removes office's access to db (and the expectation
    // that relied on it).
    let narrowed = SHOP
        .replace(r#"{ from = ["peer:office"], ports = ["5432/tcp"] },"#, "")
        .replace("verdict = \"allow\"", "verdict = \"deny\"");
    write(&repo.join("policies"), &[("shop.toml", &narrowed)]);

    let o = enforcer_in(
        repo,
        &[
            "diff",
            "HEAD:policies",
            "policies",
            "--format",
            "json",
            "--fail-on",
            "widen",
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v = json(&o);
    assert_eq!(v["narrowed"], true);
    assert_eq!(v["widened"], false);
    assert_eq!(
        v["changes"],
        serde_json::json!([{"from": "office", "to": "db", "protocol": "tcp", "ports": "5432",
                            "before": "allow", "after": "deny", "rule": "db allow-in[1]"}])
    );
    assert_eq!(
        v["expectations"],
        serde_json::json!([{"from": "office", "to": "db", "port": "5432/tcp", "before": "allow", "after": "deny"}])
    );

    // Both sides from git, and the same revision twice is empty.
    git(repo, &["commit", "-q", "-am", "v2"]);
    let o = enforcer_in(
        repo,
        &[
            "diff",
            "HEAD~1:policies",
            "HEAD:policies",
            "--format",
            "json",
        ],
    );
    assert_eq!(json(&o)["changes"].as_array().map(Vec::len), Some(1));
    let o = enforcer_in(
        repo,
        &["diff", "HEAD:policies", "policies", "--fail-on", "any"],
    );
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));

    // Errors inside a revision are named REV:DIR/FILE:LINE:COL.
    let broken = SHOP.replace("from = [{ app = \"web\" }]", "from = [{ app = \"wbe\" }]");
    write(&repo.join("policies"), &[("shop.toml", &broken)]);
    git(repo, &["commit", "-q", "-am", "broken"]);
    let o = enforcer_in(repo, &["diff", "HEAD~1:policies", "HEAD:policies"]);
    assert_eq!(code(&o), 2);
    assert!(
        stderr(&o)
            .lines()
            .any(|l| l.starts_with("HEAD:policies/shop.toml:")),
        "{}",
        stderr(&o)
    );

    // Unknown revisions and paths are invalid input.
    for bad in [
        "nosuchrev:policies",
        "HEAD:nosuchdir",
        "HEAD:policies/shop.toml",
    ] {
        let o = enforcer_in(repo, &["diff", bad, "policies"]);
        assert_eq!(code(&o), 2, "{bad}: {}", stderr(&o));
        assert!(stderr(&o).contains(bad), "{bad}: {}", stderr(&o));
    }
}

#[test]
fn until_and_mode_changes_are_reported() {
    let t = TempDir::new().expect("tempdir");
    let with_vendor = |until: &str, mode: &str| {
        SHOP.replace(
            "[[policy]]\nname = \"db\"",
            "[peer.vendor]\ncidrs = [\"198.51.100.17\"]\n\n[[policy]]\nname = \"db\"",
        )
        .replace(
            r#"{ from = ["peer:office"], ports = ["5432/tcp"] },"#,
            &format!(
                r#"{{ from = ["peer:office"], ports = ["5432/tcp"] }},
  {{ from = ["peer:vendor"], ports = ["22/tcp"], until = "{until}" }},"#
            ),
        )
        .replace(
            "unit = \"postgresql.service\"",
            &format!("unit = \"postgresql.service\"\nmode = \"{mode}\""),
        )
    };
    write(
        &t.path().join("old"),
        &[("shop.toml", &with_vendor("2099-01-01T00:00:00Z", "enforce"))],
    );
    write(
        &t.path().join("new"),
        &[("shop.toml", &with_vendor("2099-06-30T12:00:00Z", "audit"))],
    );
    let o = enforcer_in(t.path(), &["diff", "old", "new", "--format", "json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v = json(&o);
    assert_eq!(v["changes"], serde_json::json!([]));
    assert_eq!(
        v["untils"],
        serde_json::json!([{"rule": "db allow-in[2]", "before": "2099-01-01T00:00:00Z", "after": "2099-06-30T12:00:00Z"}])
    );
    assert_eq!(
        v["modes"],
        serde_json::json!([{"workload": "db", "before": "enforce", "after": "audit"}])
    );
    assert_eq!(v["widened"], true);

    // An `until` in the past: the rule no longer matches, so its access is gone.
    write(
        &t.path().join("expired"),
        &[("shop.toml", &with_vendor("2001-01-01T00:00:00Z", "enforce"))],
    );
    let o = enforcer_in(t.path(), &["diff", "old", "expired", "--format", "json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v = json(&o);
    assert_eq!(
        v["changes"],
        serde_json::json!([{"from": "vendor", "to": "db", "protocol": "tcp", "ports": "22",
                            "before": "allow", "after": "deny", "rule": "db allow-in[2]"}])
    );
    assert!(
        stderr(&o).contains("warning:"),
        "expiry warning expected: {}",
        stderr(&o)
    );
}

/// A `*.toml` symbolic link is read from a revision as `load_dir` reads it
/// from a working tree: followed (also from a subdirectory, and link to
/// link); a dangling link is an error naming it in both; a link out of the
/// repository is an error that says how to fix it.
#[test]
fn rev_dir_follows_symbolic_links_like_a_working_tree() {
    use std::os::unix::fs::symlink;
    let t = TempDir::new().expect("tempdir");
    let repo = t.path();
    git(repo, &["init", "-q", "-b", "main"]);
    write(&repo.join("shared"), &[("shop.toml", SHOP)]);
    std::fs::create_dir_all(repo.join("hosts/a")).expect("mkdir");
    std::fs::create_dir_all(repo.join("hosts/b")).expect("mkdir");
    // A link to a link to the file.
    symlink("../../shared/shop.toml", repo.join("hosts/b/shop.toml")).expect("symlink");
    symlink("../b/shop.toml", repo.join("hosts/a/shop.toml")).expect("symlink");
    git(repo, &["add", "."]);
    git(repo, &["commit", "-q", "-m", "v1"]);

    // The same policy in the revision and in the working tree: no change,
    // whether read from the root or a subdirectory.
    let o = enforcer_in(
        repo,
        &["diff", "HEAD:hosts/a", "hosts/a", "--fail-on", "any"],
    );
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let o = enforcer_in(
        &repo.join("hosts"),
        &["diff", "HEAD:./a", "a", "--fail-on", "any"],
    );
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));

    // Skipping the links would leave an empty policy: a change.
    let o = enforcer_in(
        repo,
        &["diff", "HEAD:shared", "HEAD:hosts/a", "--fail-on", "any"],
    );
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));

    // A dangling link: an error naming it, in a revision as in a working
    // tree (skipping it would silently drop a policy file).
    symlink("missing.toml", repo.join("hosts/a/gone.toml")).expect("symlink");
    git(repo, &["add", "."]);
    git(repo, &["commit", "-q", "-m", "dangling link"]);
    for args in [
        ["diff", "HEAD:hosts/b", "HEAD:hosts/a"],
        ["diff", "HEAD:hosts/b", "hosts/a"],
    ] {
        let o = enforcer_in(repo, &args);
        assert_eq!(code(&o), 2, "{}{}", stdout(&o), stderr(&o));
        assert!(stderr(&o).contains("hosts/a/gone.toml"), "{}", stderr(&o));
    }
    git(repo, &["rm", "-q", "hosts/a/gone.toml"]);
    git(repo, &["commit", "-q", "-m", "no dangling link"]);

    // Out of the repository: an error naming the link.
    symlink("/etc/enforcer/shop.toml", repo.join("hosts/a/abs.toml")).expect("symlink");
    git(repo, &["add", "."]);
    git(repo, &["commit", "-q", "-m", "absolute link"]);
    let o = enforcer_in(repo, &["diff", "HEAD:hosts/a", "hosts/a"]);
    assert_eq!(code(&o), 2, "{}{}", stdout(&o), stderr(&o));
    assert!(
        stderr(&o)
            .contains("HEAD:hosts/a/abs.toml: a symbolic link to \"/etc/enforcer/shop.toml\""),
        "{}",
        stderr(&o)
    );
}
