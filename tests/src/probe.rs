//! Real traffic from real processes: wrappers around the `probe` binary.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::OnceLock,
    time::Duration,
};

use serde::Deserialize;

use crate::{
    cgroup::CgroupGuard,
    error::{Error, Result},
    netns::TestHost,
    process::{ChildGuard, Spawner, describe_status},
};

/// The probe's own bound on connecting and waiting for an answer, unless a
/// test sets another with [`Probe::timeout`]. Short, because tests that
/// expect a drop wait this long; a success on a veth takes well under 1 ms.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(500);
/// Extra time allowed for the probe process to start and exit on a loaded
/// machine, on top of its own timeout.
const PROCESS_SLACK: Duration = Duration::from_secs(10);
/// How long a server may take to print `ready`.
const SERVER_READY_TIMEOUT: Duration = Duration::from_secs(10);

static PROBE_PATH: OnceLock<PathBuf> = OnceLock::new();

/// Records where the probe binary is (the first caller wins). Tests do not
/// need this: [`privileged!`](crate::privileged!) does it.
pub fn set_probe_path(path: &Path) {
    let _ = PROBE_PATH.set(path.to_path_buf());
}

/// Where the probe binary is: `$ENFORCER_PROBE`, else the path recorded by
/// [`set_probe_path`] / [`privileged!`](crate::privileged!), else `probe`
/// next to the running executable or its parent directory (Cargo puts test
/// binaries in `target/<profile>/deps/` and `probe` in `target/<profile>/`).
pub fn probe_path() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("ENFORCER_PROBE") {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(Error::ProbeNotFound(format!(
                "ENFORCER_PROBE={}",
                path.display()
            )))
        };
    }
    if let Some(path) = PROBE_PATH.get().filter(|p| p.is_file()) {
        return Ok(path.clone());
    }
    let exe = std::env::current_exe().map_err(|e| Error::ProbeNotFound(e.to_string()))?;
    let dir = exe.parent();
    let candidates: Vec<PathBuf> = [dir, dir.and_then(Path::parent)]
        .into_iter()
        .flatten()
        .map(|d| d.join("probe"))
        .collect();
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| {
            let tried: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
            Error::ProbeNotFound(format!("tried {}", tried.join(", ")))
        })
}

/// What a probe saw, as tests assert it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// The exchange worked (connected and got the echo; got the ping reply).
    Ok,
    /// A local hook refused at once (EPERM/EACCES from connect/sendmsg/...).
    Eperm,
    /// No answer within the timeout (e.g. packets dropped).
    Timeout,
    /// The peer refused (TCP RST, or ICMP port unreachable on connected UDP).
    Refused,
    /// Anything else, with the probe's detail or the infrastructure's error.
    Error(String),
}

impl fmt::Display for ProbeOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ok => f.write_str("ok"),
            Self::Eperm => f.write_str("eperm"),
            Self::Timeout => f.write_str("timeout"),
            Self::Refused => f.write_str("refused"),
            Self::Error(detail) => write!(f, "error: {detail}"),
        }
    }
}

/// The probe's whole report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeReport {
    /// The classification.
    pub outcome: ProbeOutcome,
    /// The errno behind it (0 when none; `ETIMEDOUT` for timeouts).
    pub errno: i32,
    /// Time the probe spent on the network operation itself.
    pub elapsed_ms: u64,
    /// The client socket's local address, once it had one.
    pub local: Option<SocketAddr>,
    /// The raw JSON line (or the infrastructure error text).
    pub line: String,
}

impl ProbeReport {
    fn infra(err: &Error) -> Self {
        Self {
            outcome: ProbeOutcome::Error(err.to_string()),
            errno: 0,
            elapsed_ms: 0,
            local: None,
            line: err.to_string(),
        }
    }

    /// Parses one line of the probe's JSON output.
    pub fn parse(line: &str) -> Result<Self> {
        #[derive(Deserialize)]
        struct Wire {
            result: String,
            errno: i32,
            elapsed_ms: u64,
            local: Option<String>,
            detail: Option<String>,
        }
        let bad = || Error::BadOutput {
            what: "probe".into(),
            output: line.to_owned(),
        };
        let wire: Wire = serde_json::from_str(line).map_err(|_| bad())?;
        let outcome = match wire.result.as_str() {
            "ok" => ProbeOutcome::Ok,
            "eperm" => ProbeOutcome::Eperm,
            "timeout" => ProbeOutcome::Timeout,
            "refused" => ProbeOutcome::Refused,
            "error" => ProbeOutcome::Error(wire.detail.unwrap_or_default()),
            _ => return Err(bad()),
        };
        Ok(Self {
            outcome,
            errno: wire.errno,
            elapsed_ms: wire.elapsed_ms,
            local: wire.local.and_then(|l| l.parse().ok()),
            line: line.to_owned(),
        })
    }
}

/// One client probe, configured step by step and run with [`Probe::run`].
///
/// ```no_run
/// # use enforcer_tests::{Probe, ProbeOutcome, CgroupGuard, TestHost};
/// # let cg = CgroupGuard::new().unwrap();
/// # let host = TestHost::new("198.51.100.0/24", "2001:db8:1::/64").unwrap();
/// let report = Probe::tcp_connect(host.socket_v4(80))
///     .cgroup(&cg)
///     .timeout(std::time::Duration::from_millis(200))
///     .run();
/// assert_eq!(report.outcome, ProbeOutcome::Timeout, "{}", report.line);
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct Probe {
    command: &'static str,
    target: String,
    options: Vec<String>,
    cgroup: Option<PathBuf>,
    netns: Option<PathBuf>,
    timeout: Duration,
}

impl Probe {
    fn new(command: &'static str, target: String) -> Self {
        Self {
            command,
            target,
            options: Vec::new(),
            cgroup: None,
            netns: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Connects over TCP, sends a short text and waits for its echo.
    pub fn tcp_connect(addr: SocketAddr) -> Self {
        Self::new("tcp-connect", addr.to_string())
    }

    /// Sends one UDP datagram (unconnected: `sendto`) and waits for its echo.
    pub fn udp_send(addr: SocketAddr) -> Self {
        Self::new("udp-send", addr.to_string())
    }

    /// Sends one ICMP/ICMPv6 echo request and waits for the reply.
    pub fn ping(addr: IpAddr) -> Self {
        Self::new("ping", addr.to_string())
    }

    /// Runs the probe in this test cgroup.
    pub fn cgroup(mut self, cgroup: &CgroupGuard) -> Self {
        self.cgroup = Some(cgroup.path().to_path_buf());
        self
    }

    /// Runs the probe inside this test host's namespace.
    pub fn netns(mut self, host: &TestHost) -> Self {
        self.netns = Some(host.netns_path());
        self
    }

    /// Like [`Probe::netns`], for an optional host.
    pub fn netns_opt(self, host: Option<&TestHost>) -> Self {
        match host {
            Some(host) => self.netns(host),
            None => self,
        }
    }

    /// How long the probe waits for the connection and the answer.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Binds the client socket to this source address first (port 0: any).
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.options.extend(["--bind".to_owned(), addr.to_string()]);
        self
    }

    /// The text to send instead of the default (one line, not empty).
    pub fn payload(mut self, text: &str) -> Self {
        self.options.extend(["--send".to_owned(), text.to_owned()]);
        self
    }

    /// TCP: stop once connected, without exchanging data.
    pub fn connect_only(mut self) -> Self {
        self.options.push("--connect-only".to_owned());
        self
    }

    /// UDP: `connect` the socket before sending (connect hooks instead of
    /// sendmsg hooks; ICMP port unreachable becomes `Refused`).
    pub fn udp_connected(mut self) -> Self {
        self.options.push("--connect".to_owned());
        self
    }

    /// The probe's argument list (for messages and for running it by hand).
    pub fn args(&self) -> Vec<String> {
        let mut args = vec![
            self.command.to_owned(),
            self.target.clone(),
            "--timeout-ms".to_owned(),
            self.timeout.as_millis().to_string(),
        ];
        args.extend(self.options.iter().cloned());
        args
    }

    fn spawner(&self) -> Result<Spawner> {
        let mut spawner = Spawner::new(probe_path()?).args(self.args());
        if let Some(dir) = &self.cgroup {
            spawner = spawner.cgroup_dir(dir);
        }
        if let Some(ns) = &self.netns {
            spawner = spawner.netns_file(ns);
        }
        Ok(spawner)
    }

    /// Runs the probe to completion. Never panics and never hangs: problems
    /// of the infrastructure itself come back as [`ProbeOutcome::Error`].
    pub fn run(&self) -> ProbeReport {
        self.try_run()
            .unwrap_or_else(|err| ProbeReport::infra(&err))
    }

    fn try_run(&self) -> Result<ProbeReport> {
        let mut child = self.spawner()?.spawn()?;
        child.close_stdin();
        let what = format!("probe {}", self.args().join(" "));
        let out = child.wait_with_output(self.timeout + PROCESS_SLACK)?;
        let bad = |output: String| Error::BadOutput {
            what: what.clone(),
            output: format!(
                "{output} ({}; stderr: {})",
                describe_status(out.status),
                out.stderr.trim()
            ),
        };
        let Some(last) = out.lines.last() else {
            return Err(bad("nothing on stdout".into()));
        };
        let report = ProbeReport::parse(last).map_err(|_| bad(last.clone()))?;
        // The exit code must agree with the line: 0 exactly for "ok".
        if (report.outcome == ProbeOutcome::Ok) != out.status.success() {
            return Err(bad(last.clone()));
        }
        Ok(report)
    }
}

/// Runs `probe tcp-connect` from `cgroup` (and inside `netns` if given)
/// with the default timeout.
pub fn tcp_connect(
    cgroup: &CgroupGuard,
    netns: Option<&TestHost>,
    addr: SocketAddr,
) -> ProbeOutcome {
    Probe::tcp_connect(addr)
        .cgroup(cgroup)
        .netns_opt(netns)
        .run()
        .outcome
}

/// Runs `probe udp-send` from `cgroup` (and inside `netns` if given) with
/// the default timeout.
pub fn udp_send(cgroup: &CgroupGuard, netns: Option<&TestHost>, addr: SocketAddr) -> ProbeOutcome {
    Probe::udp_send(addr)
        .cgroup(cgroup)
        .netns_opt(netns)
        .run()
        .outcome
}

/// Runs `probe ping` from `cgroup` (and inside `netns` if given) with the
/// default timeout.
pub fn ping(cgroup: &CgroupGuard, netns: Option<&TestHost>, addr: IpAddr) -> ProbeOutcome {
    Probe::ping(addr)
        .cgroup(cgroup)
        .netns_opt(netns)
        .run()
        .outcome
}

/// Which protocol a [`Server`] speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// TCP echo server.
    Tcp,
    /// UDP echo server.
    Udp,
}

/// An echo server (`probe tcp-listen` / `probe udp-listen`), listening by
/// the time the constructor returns, killed when dropped.
#[derive(Debug)]
pub struct Server {
    child: ChildGuard,
    addr: SocketAddr,
}

impl Server {
    /// A TCP echo server on `addr` (port 0: any free port; see
    /// [`Server::addr`]), in `cgroup` and `netns` if given.
    pub fn tcp(
        cgroup: Option<&CgroupGuard>,
        netns: Option<&TestHost>,
        addr: SocketAddr,
    ) -> Result<Self> {
        Self::start(Proto::Tcp, cgroup, netns, addr)
    }

    /// A UDP echo server; see [`Server::tcp`].
    pub fn udp(
        cgroup: Option<&CgroupGuard>,
        netns: Option<&TestHost>,
        addr: SocketAddr,
    ) -> Result<Self> {
        Self::start(Proto::Udp, cgroup, netns, addr)
    }

    /// A server of either protocol.
    pub fn start(
        proto: Proto,
        cgroup: Option<&CgroupGuard>,
        netns: Option<&TestHost>,
        addr: SocketAddr,
    ) -> Result<Self> {
        let command = match proto {
            Proto::Tcp => "tcp-listen",
            Proto::Udp => "udp-listen",
        };
        // --exit-on-stdin-eof: if this process dies without running Drop,
        // the server sees its stdin close and exits instead of lingering.
        let mut spawner =
            Spawner::new(probe_path()?).args([command, &addr.to_string(), "--exit-on-stdin-eof"]);
        if let Some(cgroup) = cgroup {
            spawner = spawner.cgroup(cgroup);
        }
        if let Some(host) = netns {
            spawner = spawner.netns(host);
        }
        let mut child = spawner.spawn()?;
        let what = format!("probe {command} {addr}");
        let line = match child.read_line(SERVER_READY_TIMEOUT) {
            Ok(Some(line)) => line,
            Ok(None) => {
                let output = match child.wait_with_output(Duration::from_secs(2)) {
                    Ok(out) => format!("{}: {}", describe_status(out.status), out.stderr.trim()),
                    Err(err) => err.to_string(),
                };
                return Err(Error::BadOutput {
                    what,
                    output: format!("exited before listening ({output})"),
                });
            }
            Err(err) => {
                return Err(Error::BadOutput {
                    what,
                    output: format!("{err}; stderr: {}", child.stderr().trim()),
                });
            }
        };
        let bound = line
            .strip_prefix("ready ")
            .and_then(|a| a.trim().parse().ok())
            .ok_or_else(|| Error::BadOutput {
                what,
                output: line.clone(),
            })?;
        Ok(Self { child, addr: bound })
    }

    /// The address it listens on (with the real port if 0 was asked).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's pid.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.is_running()
    }

    /// The underlying child process.
    pub fn child_mut(&mut self) -> &mut ChildGuard {
        &mut self.child
    }
}

/// A TCP connection held open by `probe tcp-hold`, exchanging one numbered
/// message per [`TcpHold::exchange`] — to see an established connection
/// keep working, or be cut by a policy change.
#[derive(Debug)]
pub struct TcpHold {
    child: ChildGuard,
    connect: ProbeReport,
    timeout: Duration,
}

impl TcpHold {
    /// Connects from `cgroup` (inside `netns` if given) to `addr`; each
    /// later exchange waits at most `timeout` for its echo. Fails only on
    /// infrastructure problems: a refused or timed-out connection is in
    /// [`TcpHold::connect_report`].
    pub fn open(
        cgroup: &CgroupGuard,
        netns: Option<&TestHost>,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<Self> {
        let mut spawner = Spawner::new(probe_path()?)
            .args(["tcp-hold", &addr.to_string(), "--timeout-ms"])
            .arg(timeout.as_millis().to_string())
            .cgroup(cgroup);
        if let Some(host) = netns {
            spawner = spawner.netns(host);
        }
        let mut child = spawner.spawn()?;
        let connect = Self::next_report(&mut child, timeout)?;
        Ok(Self {
            child,
            connect,
            timeout,
        })
    }

    fn next_report(child: &mut ChildGuard, timeout: Duration) -> Result<ProbeReport> {
        match child.read_line(timeout + PROCESS_SLACK)? {
            Some(line) => ProbeReport::parse(&line),
            None => Err(Error::BadOutput {
                what: "probe tcp-hold".into(),
                output: format!("exited without a report: {}", child.stderr().trim()),
            }),
        }
    }

    /// How the initial connect went.
    pub fn connect_report(&self) -> &ProbeReport {
        &self.connect
    }

    /// Sends one message over the held connection and waits for its echo.
    pub fn exchange(&mut self) -> ProbeReport {
        let result = self
            .child
            .write_line("x")
            .and_then(|()| Self::next_report(&mut self.child, self.timeout));
        result.unwrap_or_else(|err| ProbeReport::infra(&err))
    }

    /// The probe process.
    pub fn child_mut(&mut self) -> &mut ChildGuard {
        &mut self.child
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_probe_lines() {
        let r = ProbeReport::parse(
            r#"{"result":"ok","errno":0,"elapsed_ms":3,"local":"198.51.100.1:4000"}"#,
        )
        .unwrap();
        assert_eq!(r.outcome, ProbeOutcome::Ok);
        assert_eq!(r.local, Some("198.51.100.1:4000".parse().unwrap()));
        let r = ProbeReport::parse(
            r#"{"result":"error","errno":113,"elapsed_ms":0,"detail":"connect: No route to host"}"#,
        )
        .unwrap();
        assert_eq!(
            r.outcome,
            ProbeOutcome::Error("connect: No route to host".into())
        );
        assert_eq!(r.errno, 113);
        assert!(ProbeReport::parse(r#"{"result":"maybe","errno":0,"elapsed_ms":0}"#).is_err());
        assert!(ProbeReport::parse("ready 1.2.3.4:5").is_err());
    }

    #[test]
    fn builds_the_agreed_command_line() {
        let p = Probe::tcp_connect("[2001:db8::2]:80".parse().unwrap())
            .timeout(Duration::from_millis(250))
            .bind("[2001:db8::1]:0".parse().unwrap())
            .connect_only();
        assert_eq!(
            p.args(),
            [
                "tcp-connect",
                "[2001:db8::2]:80",
                "--timeout-ms",
                "250",
                "--bind",
                "[2001:db8::1]:0",
                "--connect-only"
            ]
        );
    }
}
