//! The operator's scenario, step by step, against the real package, real
//! services and real clients in the booted container.

use std::path::Path;
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use super::clients::{self, CLIENTS, Expect, INTRUDERS, Service};
use super::container::{Container, print_indented};
use super::install_doc;
use crate::cmd::{self, step};

/// How long the daemon may take to apply a reload or to notice a restarted
/// service's new cgroup. Generous: the log prints how long it really took.
const SETTLE: Duration = Duration::from_secs(5);

/// The outcome of every check, printed as a table at the end.
#[derive(Default)]
pub(super) struct Report {
    checks: Vec<(String, Result<(), String>, Duration)>,
}

impl Report {
    /// Runs one named check; its failure is recorded (not propagated) so the
    /// checks after it still run and the report lists every gap at once.
    pub(super) fn check(&mut self, name: &str, f: impl FnOnce() -> Result<()>) -> bool {
        println!("\n--- check: {name}");
        let started = Instant::now();
        let result = f().map_err(|e| format!("{e:#}"));
        if let Err(e) = &result {
            println!("    FAILED: {e}");
        }
        let ok = result.is_ok();
        self.checks
            .push((name.to_string(), result, started.elapsed()));
        ok
    }

    /// Records a failure that stopped the scenario before its checks ran.
    pub(super) fn abort(&mut self, name: &str, error: &anyhow::Error) {
        self.checks
            .push((name.to_string(), Err(format!("{error:#}")), Duration::ZERO));
    }

    pub(super) fn failed(&self) -> usize {
        self.checks.iter().filter(|(_, r, _)| r.is_err()).count()
    }

    pub(super) fn print(&self) {
        println!();
        for (name, result, elapsed) in &self.checks {
            match result {
                Ok(()) => println!("PASS  {name} ({elapsed:.1?})"),
                Err(e) => println!("FAIL  {name}: {}", first_line(e)),
            }
        }
        println!();
        println!(
            "{} passed, {} failed",
            self.checks.len() - self.failed(),
            self.failed()
        );
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

/// Test scaffolding, not part of the documented install: the slices the
/// client units are started in, and the database role they log in with.
pub(super) fn prepare(container: &Container) -> Result<()> {
    for slice in [CLIENTS, INTRUDERS] {
        container.write(
            &format!("/etc/systemd/system/{slice}"),
            "[Unit]\nDescription=enforcer e2e client units\n",
        )?;
    }
    container.run(&["systemctl", "daemon-reload"])?;
    container.run(&["systemctl", "start", CLIENTS, INTRUDERS])?;
    clients::prepare_database(container)?;
    clients::prepare_user(container)?;
    container.run(&["systemctl", "is-active", "nginx.service"])?;
    Ok(())
}

/// Everything the issue asks for, in order. Returns the report; the caller
/// fails when it has failures.
pub(super) fn run(container: &Container, deb: &Path, repo: &Path) -> Report {
    let mut report = Report::default();

    // Without the enforcer every client reaches every service: the denials
    // later on are the enforcer's doing, not the setup's.
    report.check(
        "without enforcer: every client reaches nginx and PostgreSQL",
        || {
            for slice in [CLIENTS, INTRUDERS] {
                for service in [Service::Nginx, Service::Postgres] {
                    clients::expect(container, slice, service, Expect::Reach)?;
                }
            }
            Ok(())
        },
    );

    let installed = report.check("install as the README says", || {
        install(container, deb, repo)
    });
    if !installed {
        // The unit file is in place even when the daemon did not start.
        report.check("systemd-analyze verify and security", || {
            unit_analysis(container)
        });
        diagnose(container);
        return report;
    }

    let bpf = Attachments::new(container);
    let mut attached = 0;
    report.check("programs attached and pinned in the container", || {
        attached = bpf.count()?;
        let pins = container.run(&["find", "/sys/fs/bpf/enforcer", "-mindepth", "1"])?;
        if attached == 0 {
            bail!("no eBPF program is attached to the container's cgroups");
        }
        if pins.trim().is_empty() {
            bail!("nothing is pinned under /sys/fs/bpf/enforcer in the container");
        }
        println!("    {attached} program attachments in the container's cgroup tree");
        Ok(())
    });

    report.check(
        "allowed unit reaches nginx (curl) and PostgreSQL (psql)",
        || {
            all(
                container,
                &[
                    (CLIENTS, Service::Nginx, Expect::Reach),
                    (CLIENTS, Service::Postgres, Expect::Reach),
                ],
            )
        },
    );
    report.check(
        "denied unit is refused at once: Operation not permitted",
        || {
            all(
                container,
                &[
                    (INTRUDERS, Service::Nginx, Expect::Refused),
                    (INTRUDERS, Service::Postgres, Expect::Refused),
                ],
            )
        },
    );

    report.check(
        "a user unit named like a workload's slice is not the workload",
        || user_unit_is_not_the_workload(container),
    );

    report.check(
        "systemctl restart nginx (a new cgroup) stays enforced",
        || {
            restart_nginx(container)?;
            // Checked at once: a window in which the new cgroup is unenforced
            // would let the intruder in here.
            clients::expect(container, INTRUDERS, Service::Nginx, Expect::Refused)?;
            clients::expect(container, CLIENTS, Service::Nginx, Expect::Reach)
        },
    );

    report.check("enforcer status names the units", || {
        let status = container.run(&["enforcer", "status"])?;
        for name in [
            "web",
            "db",
            "client",
            "intruder",
            "nginx.service",
            "system-postgresql.slice",
            CLIENTS,
            INTRUDERS,
        ] {
            if !status.contains(name) {
                bail!("`enforcer status` does not mention `{name}`");
            }
        }
        Ok(())
    });

    report.check("enforcer flows shows the denials by workload", || {
        let flows = container.run(&["enforcer", "flows", "--json", "--verdict", "deny"])?;
        let denied: Vec<serde_json::Value> = flows
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()
            .context("`enforcer flows --json` printed a line that is not JSON")?;
        let names = |v: &serde_json::Value| {
            [&v["workload"], &v["peer"]]
                .iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect::<Vec<_>>()
        };
        let intruder = denied.iter().any(|v| {
            v["verdict"] == "deny"
                && names(v)
                    .iter()
                    .any(|n| n == "intruder" || n == "web" || n == "db")
        });
        if !intruder {
            bail!("no deny event names the intruder or the services it was refused by");
        }
        container.run(&["enforcer", "flows"])?;
        Ok(())
    });

    report.check(
        "the package's groups: `enforcer` reads, only `enforcer-admin` applies",
        || package_groups(container),
    );

    report.check("systemctl reload enforcer applies a policy change", || {
        container.copy_in(
            &repo.join("tests/e2e/changes/web-for-intruder.toml"),
            "/etc/enforcer/policies/web-for-intruder.toml",
        )?;
        container.run(&["enforcer", "check", "/etc/enforcer/policies"])?;
        container.run(&["systemctl", "reload", "enforcer"])?;
        clients::expect_within(container, INTRUDERS, Service::Nginx, Expect::Reach, SETTLE)?;
        clients::expect(container, INTRUDERS, Service::Postgres, Expect::Refused)
    });

    report.check(
        "a broken policy is rejected, the old one keeps working",
        || {
            let broken = "/etc/enforcer/policies/zz-broken.toml";
            container.copy_in(&repo.join("tests/e2e/changes/zz-broken.toml"), broken)?;
            let result = broken_policy(container);
            // Always removed, so a failure here does not cascade into the
            // checks below (a daemon started on a broken directory).
            container.run(&["rm", "-f", broken])?;
            result
        },
    );

    report.check("systemctl reload enforcer revokes access at once", || {
        container.run(&["rm", "/etc/enforcer/policies/web-for-intruder.toml"])?;
        container.run(&["systemctl", "reload", "enforcer"])?;
        clients::expect_within(
            container,
            INTRUDERS,
            Service::Nginx,
            Expect::Refused,
            SETTLE,
        )
    });

    report.check(
        "systemctl stop enforcer leaves enforcement in place",
        || {
            container.run(&["systemctl", "stop", "enforcer"])?;
            expect_state(container, &["inactive"])?;
            enforced(container)?;
            same_attachments(&bpf, attached)
        },
    );
    report.check(
        "systemctl restart nginx while enforcer is stopped stays enforced",
        || {
            expect_state(container, &["inactive"])?;
            restart_nginx(container)?;
            // A new cgroup made while no daemon runs: the kernel registered
            // it at its creation. Checked at once, before any daemon could.
            clients::expect(container, INTRUDERS, Service::Nginx, Expect::Refused)?;
            clients::expect(container, CLIENTS, Service::Nginx, Expect::Reach)?;
            expect_state(container, &["inactive"])
        },
    );
    report.check("systemctl start enforcer adopts it", || {
        container.run(&["systemctl", "start", "enforcer"])?;
        expect_state(container, &["active"])?;
        container.run(&["enforcer", "status"])?;
        enforced(container)?;
        same_attachments(&bpf, attached)
    });
    report.check(
        "systemctl kill -s KILL enforcer leaves enforcement in place",
        || {
            container.run(&["systemctl", "kill", "-s", "KILL", "enforcer"])?;
            // Restart= may bring it back by itself; either way enforcement must
            // never have stopped.
            enforced(container)?;
            same_attachments(&bpf, attached)?;
            container.run(&["systemctl", "start", "enforcer"])?;
            expect_state(container, &["active"])?;
            container.run(&["enforcer", "status"])?;
            enforced(container)?;
            same_attachments(&bpf, attached)
        },
    );

    report.check("systemd-analyze verify and security", || {
        unit_analysis(container)
    });

    if report.failed() > 0 {
        diagnose(container);
    }
    report.check("apt-get purge enforcer leaves nothing behind", || {
        purge(container, &bpf, repo)
    });
    report
}

/// `systemctl restart nginx`, checked to have started a new main process.
fn restart_nginx(container: &Container) -> Result<()> {
    let show = ["systemctl", "show", "-p", "ControlGroup,MainPID", "nginx"];
    let before = container.run(&show)?;
    container.run(&["systemctl", "restart", "nginx"])?;
    let after = container.run(&show)?;
    if before == after {
        bail!("nginx was not restarted (same main pid)");
    }
    Ok(())
}

/// A user's own `clients.slice` (`systemd-run --user --slice=clients.slice`)
/// is not the system's, which the `client` workload names: its units are
/// refused by nginx and PostgreSQL, and `status` does not list them.
fn user_unit_is_not_the_workload(container: &Container) -> Result<()> {
    let mallory = clients::Manager::User(&clients::MALLORY);
    // Where such a unit really runs: in her manager's own `clients.slice`.
    let runtime_dir = format!("XDG_RUNTIME_DIR=/run/user/{}", clients::MALLORY.uid);
    let cgroup = container.run(&[
        "runuser",
        "-u",
        clients::MALLORY.name,
        "--",
        "env",
        &runtime_dir,
        "systemd-run",
        "--user",
        "--scope",
        "--quiet",
        "--slice",
        CLIENTS,
        "--",
        "cat",
        "/proc/self/cgroup",
    ])?;
    let inside = format!("/user@{}.service/{CLIENTS}/", clients::MALLORY.uid);
    if !cgroup.contains(&inside) {
        bail!("the user's unit does not run below {inside}: {cgroup}");
    }
    for service in [Service::Nginx, Service::Postgres] {
        clients::expect_by(container, mallory, CLIENTS, service, Expect::Refused)?;
    }
    let status = container.run(&["enforcer", "status"])?;
    let manager = format!("user@{}.service", clients::MALLORY.uid);
    if status.contains(&manager) {
        bail!("`enforcer status` lists a cgroup of {manager} as a workload's");
    }
    Ok(())
}

/// A user with no account (uid 4301) in each group the package creates
/// (`packaging/sysusers.d/enforcer.conf`, named by the shipped
/// `enforcer.toml`): the read group gets `status` but not `apply`, the
/// admin group may apply. Through the socket's ACL and the daemon's peer
/// check, as an operator's colleague would.
fn package_groups(container: &Container) -> Result<()> {
    let gid = |name: &str| -> Result<String> {
        let entry = container.run(&["getent", "group", name])?;
        entry
            .trim()
            .split(':')
            .nth(2)
            .map(str::to_owned)
            .with_context(|| format!("no gid in `getent group {name}`: {entry}"))
    };
    let as_member = |gid: &str, command: &[&str]| -> Result<std::process::Output> {
        let regid = format!("--regid={gid}");
        let mut argv = vec!["setpriv", "--reuid=4301", regid.as_str(), "--clear-groups"];
        argv.extend(command);
        println!("[container]# {}", super::container::shell_line(&argv));
        container.exec(&argv)
    };
    let (reader, admin) = (gid("enforcer")?, gid("enforcer-admin")?);
    let status = as_member(&reader, &["enforcer", "status"])?;
    if !status.status.success() {
        bail!(
            "a member of `enforcer` got no status: {}",
            String::from_utf8_lossy(&status.stderr)
        );
    }
    let apply = ["enforcer", "apply", "/etc/enforcer/policies"];
    let refused = as_member(&reader, &apply)?;
    let said = String::from_utf8_lossy(&refused.stderr);
    print_indented(&said);
    if refused.status.code() != Some(2) || !said.contains("permission denied") {
        bail!("a member of `enforcer` was not refused `apply`: {said}");
    }
    let applied = as_member(&admin, &apply)?;
    if !applied.status.success() {
        bail!(
            "a member of `enforcer-admin` could not apply: {}{}",
            String::from_utf8_lossy(&applied.stdout),
            String::from_utf8_lossy(&applied.stderr)
        );
    }
    Ok(())
}

/// The daemon's side of a failure, for the log: its status and journal.
fn diagnose(container: &Container) {
    println!("\n--- diagnostics: the daemon's status and journal");
    for argv in [
        &["systemctl", "status", "--no-pager", "--lines=0", "enforcer"][..],
        &["journalctl", "-u", "enforcer", "--no-pager", "-n", "60"][..],
        &["enforcer", "status"][..],
    ] {
        println!("[container]# {}", super::container::shell_line(argv));
        match container.exec(argv) {
            Ok(output) => {
                print_indented(&String::from_utf8_lossy(&output.stdout));
                print_indented(&String::from_utf8_lossy(&output.stderr));
            }
            Err(e) => println!("    (could not run it: {e:#})"),
        }
    }
}

/// Copies the package and the policy in, then runs the documented install.
fn install(container: &Container, deb: &Path, repo: &Path) -> Result<()> {
    let deb_name = deb
        .file_name()
        .and_then(|n| n.to_str())
        .context("the .deb path has no file name")?;
    container.copy_in(deb, &format!("/root/{deb_name}"))?;
    container.copy_in(
        &repo.join("tests/e2e/policies/shop.toml"),
        "/root/shop.toml",
    )?;
    for line in install_doc::block(&repo.join("README.md"), "install")? {
        container.run(&["sh", "-c", &format!("cd /root && {line}")])?;
    }
    let enabled = container.run(&["systemctl", "is-enabled", "enforcer"])?;
    if enabled.trim() != "enabled" {
        bail!("enforcer.service is `{}`, not enabled", enabled.trim());
    }
    Ok(())
}

/// The base policy's verdicts, all four.
fn enforced(container: &Container) -> Result<()> {
    all(
        container,
        &[
            (CLIENTS, Service::Nginx, Expect::Reach),
            (CLIENTS, Service::Postgres, Expect::Reach),
            (INTRUDERS, Service::Nginx, Expect::Refused),
            (INTRUDERS, Service::Postgres, Expect::Refused),
        ],
    )
}

/// Every expectation is tried and every failure reported, so one gap does
/// not hide the others.
fn all(container: &Container, cases: &[(&str, Service, Expect)]) -> Result<()> {
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|&(slice, service, want)| {
            clients::expect(container, slice, service, want)
                .err()
                .map(|e| format!("{e:#}"))
        })
        .collect();
    if failures.is_empty() {
        Ok(())
    } else {
        bail!("{}", failures.join("\n"))
    }
}

fn expect_state(container: &Container, wanted: &[&str]) -> Result<()> {
    let output = container.exec(&["systemctl", "is-active", "enforcer"])?;
    let state = String::from_utf8_lossy(&output.stdout).trim().to_string();
    println!("    enforcer.service is {state}");
    if wanted.contains(&state.as_str()) {
        Ok(())
    } else {
        bail!(
            "enforcer.service is `{state}`, expected {}",
            wanted.join(" or ")
        )
    }
}

/// With zz-broken.toml in the policy directory: the reload is rejected, the
/// running policy stays, and the error is where an operator looks.
fn broken_policy(container: &Container) -> Result<()> {
    let check = container.exec(&["enforcer", "check", "/etc/enforcer/policies"])?;
    if check.status.code() != Some(1) {
        bail!(
            "`enforcer check` on the broken directory exited {:?}, not 1",
            check.status.code()
        );
    }
    println!("[container]# systemctl reload enforcer");
    let reload = container.exec(&["systemctl", "reload", "enforcer"])?;
    println!(
        "    (exit {:?}: a rejected reload may fail or succeed)",
        reload.status.code()
    );
    print_indented(&String::from_utf8_lossy(&reload.stderr));
    sleep(Duration::from_secs(1));
    expect_state(container, &["active"])?;
    // The policy before the broken file: the intruder still reaches nginx
    // (granted by the last good reload) and still not PostgreSQL.
    clients::expect(container, INTRUDERS, Service::Nginx, Expect::Reach)?;
    clients::expect(container, INTRUDERS, Service::Postgres, Expect::Refused)?;
    clients::expect(container, CLIENTS, Service::Postgres, Expect::Reach)?;

    let status = container.exec(&[
        "systemctl",
        "status",
        "--no-pager",
        "--lines=20",
        "enforcer",
    ])?;
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    println!("[container]# systemctl status enforcer");
    print_indented(&status);
    if !status.contains("zz-broken.toml") {
        bail!("`systemctl status enforcer` does not show the rejected file zz-broken.toml");
    }
    let journal = container.run(&["journalctl", "-u", "enforcer", "--no-pager", "-n", "30"])?;
    if !journal.contains("zz-broken.toml:") {
        bail!("`journalctl -u enforcer` has no FILE:LINE:COL error for zz-broken.toml");
    }
    Ok(())
}

fn unit_analysis(container: &Container) -> Result<()> {
    let fragment = container.run(&["systemctl", "show", "-P", "FragmentPath", "enforcer"])?;
    let fragment = fragment.trim();
    println!("[container]# systemd-analyze verify {fragment}");
    let verify = container.exec(&["systemd-analyze", "verify", fragment])?;
    let complaints = format!(
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    print_indented(&complaints);
    let security = container.exec(&[
        "systemd-analyze",
        "security",
        "--no-pager",
        "enforcer.service",
    ])?;
    let security = String::from_utf8_lossy(&security.stdout).into_owned();
    println!("[container]# systemd-analyze security enforcer.service");
    print_indented(&security);
    if let Some(score) = security
        .lines()
        .find(|l| l.contains("Overall exposure level"))
    {
        step(format!(
            "EXPOSURE: {}",
            score.trim().trim_start_matches("→ ")
        ));
    }
    if !verify.status.success() || !complaints.trim().is_empty() {
        bail!(
            "`systemd-analyze verify {fragment}` complained: {}",
            complaints.trim()
        );
    }
    Ok(())
}

fn purge(container: &Container, bpf: &Attachments, repo: &Path) -> Result<()> {
    let files = container.run(&["dpkg-query", "-L", "enforcer"])?;
    for line in install_doc::block(&repo.join("README.md"), "uninstall")? {
        container.run(&["sh", "-c", &format!("cd /root && {line}")])?;
    }
    // Checked inside the container, where the package's symlinks resolve;
    // directories shared with other packages (/usr/bin, ...) stay.
    let mut script = String::from("for f in \"$@\"; do [ -d \"$f\" ] && continue; ");
    script.push_str("if [ -e \"$f\" ] || [ -L \"$f\" ]; then echo \"$f\"; fi; done");
    let mut argv = vec!["sh", "-c", script.as_str(), "sh"];
    argv.extend(files.lines().map(str::trim).filter(|f| f.starts_with('/')));
    let remaining = container.exec(&argv)?;
    let mut left: Vec<String> = String::from_utf8_lossy(&remaining.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    // Purge means everything: the configuration and the policies too.
    for path in [
        "/etc/enforcer",
        "/sys/fs/bpf/enforcer",
        "/run/enforcer",
        "/var/lib/enforcer",
    ] {
        let output = container.exec(&["test", "-e", path])?;
        if output.status.success() {
            left.push(path.to_string());
        }
    }
    let unit = container.exec(&["systemctl", "is-enabled", "enforcer"])?;
    let unit_state = String::from_utf8_lossy(&unit.stdout).trim().to_string();
    if unit.status.success() {
        left.push(format!("enforcer.service is still `{unit_state}`"));
    }
    let processes = container.exec(&["pgrep", "-x", "enforcer"])?;
    if processes.status.success() {
        left.push("an enforcer process is still running".to_string());
    }
    let attached = bpf.count()?;
    if attached != 0 {
        left.push(format!(
            "{attached} eBPF programs still attached to the container's cgroups"
        ));
    }
    if !left.is_empty() {
        bail!("left behind after the purge: {}", left.join(", "));
    }
    container.run(&[
        "sh",
        "-c",
        "find /etc/enforcer /sys/fs/bpf 2>/dev/null; true",
    ])?;
    // And the traffic is no longer filtered.
    clients::expect(container, INTRUDERS, Service::Postgres, Expect::Reach)
}

fn same_attachments(bpf: &Attachments, before: usize) -> Result<()> {
    let now = bpf.count()?;
    if now != before {
        bail!("{now} program attachments in the container's cgroup tree, {before} before");
    }
    Ok(())
}

/// eBPF programs attached anywhere in the container's cgroup tree, counted
/// from the host with `bpftool` (independent of the enforcer's own report).
struct Attachments {
    cgroup: std::path::PathBuf,
}

impl Attachments {
    fn new(container: &Container) -> Self {
        Self {
            cgroup: container.cgroup().to_path_buf(),
        }
    }

    fn count(&self) -> Result<usize> {
        let mut bpftool = Command::new("bpftool");
        bpftool.args(["-j", "cgroup", "tree"]).arg(&self.cgroup);
        let json = cmd::capture(&mut bpftool)?;
        let tree: serde_json::Value = serde_json::from_str(&json)
            .with_context(|| format!("`{}` printed invalid JSON", cmd::display(&bpftool)))?;
        // systemd attaches programs of its own (device access, IP
        // accounting and firewalling), all named `sd_*`: those are not ours.
        let count = tree
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|cg| cg["programs"].as_array())
            .flatten()
            .filter(|p| !p["name"].as_str().is_some_and(|n| n.starts_with("sd_")))
            .count();
        Ok(count)
    }
}
