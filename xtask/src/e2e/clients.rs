//! Real clients (curl, psql) run as transient systemd units inside the
//! container, and the two outcomes the test asserts: reached, or refused at
//! once with "Operation not permitted".

use std::fmt;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use super::container::Container;

/// The slice whose units the policy allows to reach nginx and PostgreSQL.
pub(super) const CLIENTS: &str = "clients.slice";
/// The slice whose units the services' allow-in rules keep out.
pub(super) const INTRUDERS: &str = "intruders.slice";

/// The PostgreSQL role the clients log in as (created over the Unix socket,
/// which the enforcer does not govern).
pub(super) const DB_ROLE: &str = "e2e";
const DB_PASSWORD: &str = "e2e-password";

/// A refusal must come back well before any network timeout would.
const AT_ONCE: Duration = Duration::from_secs(3);

/// Which service a client talks to.
#[derive(Clone, Copy)]
pub(super) enum Service {
    Nginx,
    Postgres,
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Nginx => "nginx (curl http://127.0.0.1/)",
            Self::Postgres => "PostgreSQL (psql -h 127.0.0.1)",
        })
    }
}

/// One client run.
pub(super) struct Attempt {
    pub exit: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl fmt::Display for Attempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "exit {:?} after {:.0?}, stdout {:?}, stderr:\n{}",
            self.exit,
            self.elapsed,
            self.stdout.trim(),
            self.stderr.trim_end()
        )
    }
}

/// A user of the container with a user manager of their own
/// (`user@UID.service`), who starts units with `systemd-run --user`.
pub(super) struct User {
    pub name: &'static str,
    pub uid: u32,
}

/// The user whose units try to pass for workloads by their names.
pub(super) const MALLORY: User = User {
    name: "e2e-mallory",
    uid: 4400,
};

/// Which service manager starts the client.
#[derive(Clone, Copy)]
pub(super) enum Manager<'a> {
    /// The system manager (`systemd-run`, as root).
    System,
    /// That user's manager (`systemd-run --user`, as that user).
    User(&'a User),
}

/// Creates [`MALLORY`] and starts her user manager (no login needed).
pub(super) fn prepare_user(container: &Container) -> Result<()> {
    let uid = MALLORY.uid.to_string();
    if container
        .exec(&["id", "-u", MALLORY.name])?
        .status
        .success()
    {
        // A container kept from an earlier run.
    } else {
        container.run(&["useradd", "--uid", &uid, "--create-home", MALLORY.name])?;
    }
    let unit = format!("user@{uid}.service");
    if let Err(e) = container.run(&["systemctl", "start", &unit]) {
        // Its journal, for the log.
        let _ = container.run(&["journalctl", "--no-pager", "-n", "40", "-u", &unit]);
        return Err(e);
    }
    Ok(())
}

/// Runs the client for `service` as a new transient unit in `slice`, the
/// way an operator would start one: `systemd-run --slice=... -- curl ...`.
pub(super) fn attempt(container: &Container, slice: &str, service: Service) -> Result<Attempt> {
    attempt_by(container, Manager::System, slice, service)
}

/// [`attempt`], with the unit started by `manager`.
pub(super) fn attempt_by(
    container: &Container,
    manager: Manager<'_>,
    slice: &str,
    service: Service,
) -> Result<Attempt> {
    let password = format!("PGPASSWORD={DB_PASSWORD}");
    let (env, command): (&[&str], &[&str]) = match service {
        // -v: curl prints the connect() error text, "Operation not
        // permitted" for EPERM; the bound --max-time turns a hang into a
        // distinct failure (exit 28) rather than a stuck test.
        Service::Nginx => (
            &[],
            &[
                "curl",
                "-sS",
                "-v",
                "--max-time",
                "10",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "http://127.0.0.1/",
            ],
        ),
        Service::Postgres => (
            &[&password, "PGCONNECT_TIMEOUT=10"],
            &[
                "psql",
                "-h",
                "127.0.0.1",
                "-U",
                DB_ROLE,
                "-d",
                "postgres",
                "-tAc",
                "SELECT 40 + 2",
            ],
        ),
    };
    let runtime_dir;
    let mut argv: Vec<&str> = match manager {
        // A transient service, waited for, its output piped back.
        Manager::System => {
            let mut argv = vec![
                "systemd-run",
                "--wait",
                "--pipe",
                "--quiet",
                "--collect",
                "--slice",
                slice,
            ];
            for var in env {
                argv.extend(["--setenv", var]);
            }
            argv.push("--");
            argv
        }
        // A transient scope of the user's manager, which needs only its
        // private socket (a user bus, for `--wait --pipe`, is a desktop
        // package): the command runs in the foreground, in the scope.
        Manager::User(user) => {
            runtime_dir = format!("XDG_RUNTIME_DIR=/run/user/{}", user.uid);
            let mut argv = vec![
                "runuser",
                "-u",
                user.name,
                "--",
                "env",
                runtime_dir.as_str(),
                "systemd-run",
                "--user",
                "--scope",
                "--quiet",
                "--slice",
                slice,
                "--",
                "env",
            ];
            argv.extend_from_slice(env);
            argv
        }
    };
    argv.extend_from_slice(command);
    let started = Instant::now();
    let output = container.exec(&argv)?;
    Ok(Attempt {
        exit: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        elapsed: started.elapsed(),
    })
}

/// Whether the attempt got a real answer from the service.
pub(super) fn reached(service: Service, attempt: &Attempt) -> bool {
    attempt.exit == Some(0)
        && match service {
            Service::Nginx => attempt.stdout.trim() == "200",
            Service::Postgres => attempt.stdout.trim() == "42",
        }
}

/// Whether the attempt was refused by connect() with EPERM, at once.
pub(super) fn refused(attempt: &Attempt) -> bool {
    attempt.exit.is_some_and(|code| code != 0)
        && attempt.stderr.contains("Operation not permitted")
        && attempt.elapsed < AT_ONCE
}

/// The outcome a check expects.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Expect {
    Reach,
    Refused,
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Reach => "reaches",
            Self::Refused => "is refused at once with \"Operation not permitted\" by",
        })
    }
}

/// Runs one client and checks the outcome; the error carries the client's
/// full output.
pub(super) fn expect(
    container: &Container,
    slice: &str,
    service: Service,
    want: Expect,
) -> Result<()> {
    expect_by(container, Manager::System, slice, service, want)
}

/// [`expect`], with the unit started by `manager`.
pub(super) fn expect_by(
    container: &Container,
    manager: Manager<'_>,
    slice: &str,
    service: Service,
    want: Expect,
) -> Result<()> {
    let attempt = attempt_by(container, manager, slice, service)?;
    let ok = match want {
        Expect::Reach => reached(service, &attempt),
        Expect::Refused => refused(&attempt),
    };
    let by = match manager {
        Manager::System => String::new(),
        Manager::User(user) => format!(" of {}'s user manager", user.name),
    };
    let what = format!("a unit{by} in {slice} {want} {service}");
    if ok {
        println!("    ok: {what} ({:.0?})", attempt.elapsed);
        Ok(())
    } else {
        bail!("expected: {what}; got {attempt}")
    }
}

/// Like [`expect`], retried until `within` has passed: for changes the daemon
/// applies asynchronously (a reload, a restarted service's new cgroup). The
/// time it took is printed, so a slow path shows in the log.
pub(super) fn expect_within(
    container: &Container,
    slice: &str,
    service: Service,
    want: Expect,
    within: Duration,
) -> Result<()> {
    let started = Instant::now();
    let mut tries = 0;
    loop {
        tries += 1;
        let attempt = attempt(container, slice, service)?;
        let ok = match want {
            Expect::Reach => reached(service, &attempt),
            Expect::Refused => refused(&attempt),
        };
        let what = format!("a unit in {slice} {want} {service}");
        if ok {
            println!(
                "    ok: {what} ({:.0?} after the change, attempt {tries})",
                started.elapsed()
            );
            return Ok(());
        }
        if started.elapsed() > within {
            bail!("expected within {within:?}: {what}; last of {tries} attempts: {attempt}");
        }
        sleep(Duration::from_millis(250));
    }
}

/// The role the clients log in with, created as the postgres superuser over
/// the Unix socket. Waits for the server first: it may still be starting.
pub(super) fn prepare_database(container: &Container) -> Result<()> {
    let started = Instant::now();
    loop {
        let ready = container.exec(&["runuser", "-u", "postgres", "--", "pg_isready", "-q"])?;
        if ready.status.success() {
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("PostgreSQL did not become ready in the container within 60 s");
        }
        sleep(Duration::from_millis(250));
    }
    let sql = format!("CREATE ROLE {DB_ROLE} LOGIN PASSWORD '{DB_PASSWORD}'");
    container.run(&["runuser", "-u", "postgres", "--", "psql", "-q", "-c", &sql])?;
    Ok(())
}
