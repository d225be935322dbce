//! The measured traffic: request/response over one connection (TCP_RR),
//! a new connection per request (TCP_CRR), and bulk throughput (iperf3).

use std::io::{BufRead as _, BufReader, Read as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde::Deserialize;

use super::arms::Service;
use super::topology::{ClientCgroup, SERVER_ADDR, Topology};
use crate::cmd;

/// The load generator's server port (RR and CRR).
const LOADGEN_PORT: u16 = 5001;
/// A second load generator server that no arm allows: it must be reachable
/// in the baseline and unreachable under every filtering arm.
const DENIED_PORT: u16 = 5002;
const IPERF_PORT: u16 = 5201;
/// Servers stop by themselves after this long even if the harness is
/// killed before it can stop them.
const SERVER_LIFETIME_S: u32 = 3 * 3600;

/// The services of the real traffic, which every arm must allow.
pub(super) const ALLOWED: [Service; 2] = [
    Service {
        addr: SERVER_ADDR,
        port: LOADGEN_PORT,
    },
    Service {
        addr: SERVER_ADDR,
        port: IPERF_PORT,
    },
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Workload {
    Rr,
    Crr,
    Stream,
}

impl Workload {
    pub(super) const ALL: [Workload; 3] = [Workload::Rr, Workload::Crr, Workload::Stream];

    pub(super) fn name(self) -> &'static str {
        match self {
            Workload::Rr => "tcp_rr",
            Workload::Crr => "tcp_crr",
            Workload::Stream => "tcp_stream",
        }
    }

    pub(super) fn unit(self) -> &'static str {
        match self {
            Workload::Rr => "transactions/s",
            Workload::Crr => "connections/s",
            Workload::Stream => "Gbit/s",
        }
    }

    pub(super) fn describe(self) -> &'static str {
        match self {
            Workload::Rr => "1-byte request/response over one TCP connection",
            Workload::Crr => "connect, 1-byte request/response, close",
            Workload::Stream => "iperf3 bulk TCP throughput, one stream",
        }
    }
}

/// The server processes in the server namespace; killed when dropped.
pub(super) struct Servers {
    children: Vec<Child>,
}

impl Drop for Servers {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Servers {
    pub(super) fn start(topology: &Topology, loadgen: &Path) -> Result<Self> {
        let mut servers = Self {
            children: Vec::new(),
        };
        for port in [LOADGEN_PORT, DENIED_PORT] {
            let mut cmd = topology.server(loadgen);
            cmd.args(["server", "--listen", &format!("{SERVER_ADDR}:{port}")])
                .args(["--max-seconds", &SERVER_LIFETIME_S.to_string()]);
            servers.spawn_and_wait(cmd, |line| line.starts_with("listening"))?;
        }
        let mut iperf = topology.server(Path::new("iperf3"));
        iperf
            .args(["--server", "--bind", &SERVER_ADDR.to_string()])
            .args(["--port", &IPERF_PORT.to_string(), "--forceflush"]);
        servers.spawn_and_wait(iperf, |line| line.contains("Server listening"))?;
        Ok(servers)
    }

    /// Spawns `cmd` and waits until a line of its stdout satisfies `ready`.
    fn spawn_and_wait(&mut self, mut cmd: Command, ready: fn(&str) -> bool) -> Result<()> {
        let line = cmd::display(&cmd);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("could not start `{line}`"))?;
        let stdout = child.stdout.take().context("no stdout pipe")?;
        self.children.push(child);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.any(|l| l.is_ok_and(|l| ready(&l))));
            for _ in lines {}
        });
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(true) => Ok(()),
            Ok(false) => bail!("`{line}` exited before it was ready"),
            Err(_) => bail!("`{line}` was not ready within 10 s"),
        }
    }
}

#[derive(Deserialize)]
struct LoadgenResult {
    transactions: u64,
    per_second: f64,
}

/// Runs the load generator's `rr` or `crr` for `seconds` and returns how
/// many transactions (connections for `crr`) it completed; `None` for a
/// workload without discrete operations (bulk throughput).
pub(super) fn operations(
    topology: &Topology,
    loadgen: &Path,
    workload: Workload,
    seconds: u32,
) -> Result<Option<u64>> {
    if workload == Workload::Stream {
        return Ok(None);
    }
    let timeout = Duration::from_secs(u64::from(seconds) + 20);
    Ok(Some(
        run_loadgen(
            topology,
            ClientCgroup::Filtered,
            loadgen,
            workload,
            seconds,
            timeout,
        )?
        .transactions,
    ))
}

fn run_loadgen(
    topology: &Topology,
    cgroup: ClientCgroup,
    loadgen: &Path,
    workload: Workload,
    seconds: u32,
    timeout: Duration,
) -> Result<LoadgenResult> {
    let mode = if workload == Workload::Rr {
        "rr"
    } else {
        "crr"
    };
    let mut cmd = topology.client(cgroup, loadgen);
    cmd.args([mode, "--connect", &format!("{SERVER_ADDR}:{LOADGEN_PORT}")])
        .args(["--seconds", &seconds.to_string()]);
    let stdout = checked(&mut cmd, timeout)?;
    serde_json::from_str(stdout.trim())
        .with_context(|| format!("unexpected load generator output: {stdout}"))
}

/// Runs one measurement of `seconds` from a client in `cgroup` and returns
/// its rate in [`Workload::unit`].
pub(super) fn measure(
    topology: &Topology,
    cgroup: ClientCgroup,
    loadgen: &Path,
    workload: Workload,
    seconds: u32,
) -> Result<f64> {
    let timeout = Duration::from_secs(u64::from(seconds) + 20);
    match workload {
        Workload::Rr | Workload::Crr => {
            Ok(run_loadgen(topology, cgroup, loadgen, workload, seconds, timeout)?.per_second)
        }
        Workload::Stream => {
            let mut cmd = topology.client(cgroup, Path::new("iperf3"));
            cmd.args([
                "--client",
                &SERVER_ADDR.to_string(),
                "--port",
                &IPERF_PORT.to_string(),
            ])
            .args([
                "--time",
                &seconds.to_string(),
                "--json",
                "--connect-timeout",
                "2000",
            ]);
            let stdout = checked(&mut cmd, timeout)?;
            iperf3_gbits(&stdout)
        }
    }
}

/// The receiver's throughput in Gbit/s from `iperf3 --json`.
fn iperf3_gbits(json: &str) -> Result<f64> {
    let value: serde_json::Value =
        serde_json::from_str(json).context("iperf3 printed invalid JSON")?;
    if let Some(error) = value.get("error").and_then(serde_json::Value::as_str) {
        bail!("iperf3: {error}");
    }
    value
        .pointer("/end/sum_received/bits_per_second")
        .and_then(serde_json::Value::as_f64)
        .map(|bps| bps / 1e9)
        .context("iperf3 JSON has no end.sum_received.bits_per_second")
}

/// Whether a client in `cgroup` can complete a transaction with the
/// denied-port server: true in the baseline, false under any arm that
/// filters (true again from the unfiltered cgroup under an enforcer arm).
pub(super) fn reaches_denied_port(
    topology: &Topology,
    cgroup: ClientCgroup,
    loadgen: &Path,
) -> Result<bool> {
    let mut cmd = topology.client(cgroup, loadgen);
    cmd.args(["rr", "--connect", &format!("{SERVER_ADDR}:{DENIED_PORT}")])
        .args(["--seconds", "0.1"]);
    let output = with_timeout(&mut cmd, Duration::from_secs(15))?;
    Ok(output.status.success())
}

fn checked(cmd: &mut Command, timeout: Duration) -> Result<String> {
    let output = with_timeout(cmd, timeout)?;
    if !output.status.success() {
        bail!(
            "`{}` failed ({}): {}{}",
            cmd::display(cmd),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            // iperf3 --json reports its errors on stdout.
            String::from_utf8_lossy(&output.stdout)
                .lines()
                .find(|l| l.contains("\"error\""))
                .unwrap_or("")
        );
    }
    String::from_utf8(output.stdout).context("non-UTF-8 output")
}

/// Runs `cmd` to completion, killing it after `timeout`.
fn with_timeout(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let line = cmd::display(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start `{line}`"))?;
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut buf);
            }
            buf
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("`{line}` did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// Builds the load generator in release mode and returns its path.
pub(super) fn build_loadgen() -> Result<PathBuf> {
    cmd::run(cmd::cargo().args([
        "build",
        "--release",
        "-p",
        "enforcer-bench",
        "--bin",
        "enforcer-loadgen",
    ]))?;
    let path = cmd::target_dir().join("release/enforcer-loadgen");
    if !path.is_file() {
        bail!(
            "the load generator was built but {} does not exist",
            path.display()
        );
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::iperf3_gbits;

    #[test]
    fn reads_iperf3_receiver_throughput() {
        let json = r#"{"start":{},"end":{"sum_sent":{"bits_per_second":2.5e10},"sum_received":{"bits_per_second":2.0e10}}}"#;
        assert!((iperf3_gbits(json).unwrap() - 20.0).abs() < 1e-9);
        assert!(iperf3_gbits(r#"{"error":"unable to connect to server"}"#).is_err());
        assert!(iperf3_gbits(r#"{"end":{}}"#).is_err());
    }
}
