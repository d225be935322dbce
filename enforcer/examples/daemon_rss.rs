//! The resident memory of `enforcer run` with a small and a large policy
//! (the target: under 30 MiB with 10,000 rules). Needs root. See "Memory" in
//! `docs/daemon.md`.
//!
//! Starts the release daemon on a test cgroup of its own (one child cgroup
//! per workload), a test bpffs directory and a socket in a temporary
//! directory, with a 10-rule policy (`--start-large`: the large one); then
//! applies a generated policy of `--rules` rules over `--workloads`
//! workloads and `--peers` peers (`enforcer_bench::policy`, the shape of the
//! benchmarks), then the same policy with one rule changed, with
//! `--confirm` (the daemon then also keeps the first one to roll back to),
//! then confirms and applies the first again
//! (and then `--repeat` more times, alternating the two).
//! After each step and `--settle` seconds of rest it prints the daemon's
//! `VmRSS`, `VmHWM`, `RssAnon`, threads (`/proc/PID/status`) and the
//! resident size of its `[heap]` (`/proc/PID/smaps`; `--maps`: the largest
//! mappings too). Everything it created is removed at the end, also on
//! failure.
//!
//! ```text
//! cargo build --release -p enforcer --example daemon_rss --bin enforcer
//! target/release/examples/daemon_rss [--rules 10000] [--workloads 1000] [--peers 10000]
//!     [--settle 3] [--start-large] [--maps] [--bin PATH] [--wrap 'heaptrack -o FILE']
//!     [--steps 1|2|3] [--kill] [--repeat N]
//! ```
//!
//! `--wrap` runs the daemon under a profiler (words split on spaces); the
//! daemon's own process id comes from `status`, so a wrapper that forks is
//! fine. `--steps 1` stops after the first large apply (2: after the
//! `--confirm`), and `--kill` ends the daemon with SIGKILL rather than
//! SIGTERM, so that what it held at that moment is what a heap profiler
//! reports as leaked: `--steps 1 --kill --bin target/debug/enforcer --wrap
//! 'heaptrack -o FILE'`, then `heaptrack_print -f FILE.zst -l 1` (the debug
//! binary has the symbols).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use enforcer::api::{Client, PolicyFile, Request, Response};
use enforcer::cgroups::cgroup2_mount;
use enforcer_bench::policy::{Shape, Variant};
use enforcer_bench::proc_status::kib;
use enforcer_tests::daemon::{self, DaemonProcess, DaemonSpec};

struct Args {
    rules: usize,
    workloads: usize,
    peers: usize,
    settle: Duration,
    bin: PathBuf,
    wrap: Vec<String>,
    steps: usize,
    kill: bool,
    maps: bool,
    start_large: bool,
    repeat: usize,
}

fn parse_args() -> Result<Args> {
    let mut parsed = Args {
        rules: 10_000,
        workloads: 1_000,
        peers: 10_000,
        settle: Duration::from_secs(3),
        // target/release/examples/daemon_rss -> target/release/enforcer
        bin: std::env::current_exe()?
            .parent()
            .and_then(Path::parent)
            .context("no target directory")?
            .join("enforcer"),
        wrap: Vec::new(),
        steps: 3,
        kill: false,
        maps: false,
        start_large: false,
        repeat: 0,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--rules" => parsed.rules = value()?.parse().context("--rules")?,
            "--workloads" => parsed.workloads = value()?.parse().context("--workloads")?,
            "--peers" => parsed.peers = value()?.parse().context("--peers")?,
            "--settle" => {
                parsed.settle = Duration::from_secs_f64(value()?.parse().context("--settle")?);
            }
            "--bin" => parsed.bin = PathBuf::from(value()?),
            "--wrap" => parsed.wrap = value()?.split_whitespace().map(String::from).collect(),
            "--steps" => parsed.steps = value()?.parse().context("--steps")?,
            "--kill" => parsed.kill = true,
            "--maps" => parsed.maps = true,
            "--start-large" => parsed.start_large = true,
            "--repeat" => parsed.repeat = value()?.parse().context("--repeat")?,
            other => bail!("unknown argument {other:?}"),
        }
    }
    if parsed.workloads == 0 || parsed.peers == 0 {
        bail!("--workloads and --peers must be at least 1");
    }
    Ok(parsed)
}

/// A test cgroup and its children, removed (children first) on drop. No
/// process is ever moved into them.
struct Cgroups {
    root: PathBuf,
    children: Vec<PathBuf>,
}

impl Cgroups {
    fn create(root: PathBuf, children: usize) -> Result<Cgroups> {
        std::fs::create_dir(&root).with_context(|| format!("mkdir {}", root.display()))?;
        let mut cgroups = Cgroups {
            root,
            children: Vec::new(),
        };
        for i in 0..children {
            let child = cgroups.root.join(format!("w{i}.service"));
            std::fs::create_dir(&child).with_context(|| format!("mkdir {}", child.display()))?;
            cgroups.children.push(child);
        }
        Ok(cgroups)
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        for dir in self.children.iter().rev().chain([&self.root]) {
            if let Err(e) = std::fs::remove_dir(dir) {
                eprintln!("daemon_rss: rmdir {}: {e}", dir.display());
            }
        }
    }
}

/// The daemon's pins, removed on drop (after the daemon stopped).
struct Pins {
    bin: PathBuf,
    dir: PathBuf,
}

impl Drop for Pins {
    fn drop(&mut self) {
        if let Err(e) = daemon::uninstall(&self.bin, &self.dir) {
            eprintln!("daemon_rss: uninstall {}: {e}", self.dir.display());
        }
    }
}

/// The running daemon (possibly under a wrapper); stopped with `signal`
/// (SIGTERM, or SIGKILL with `--kill`) on drop, killed if it does not exit
/// within 30 s.
struct Daemon {
    process: DaemonProcess,
    signal: i32,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self
            .process
            .stop(self.signal, Duration::from_secs(30))
            .is_err()
        {
            self.process.kill();
        }
    }
}

/// The `Rss` of the `[heap]` mapping in `/proc/PID/smaps`, in KiB.
fn heap_rss_kib(smaps: &str) -> u64 {
    let mut in_heap = false;
    for line in smaps.lines() {
        if line.ends_with("[heap]") {
            in_heap = true;
        } else if in_heap && let Some(v) = line.strip_prefix("Rss:") {
            return v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
        }
    }
    0
}

/// The mappings holding the most resident memory (`--maps`).
fn largest_mappings(smaps: &str) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let mut name = String::new();
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            // "START-END PERMS OFFSET DEV INODE [PATH]"
            let fields: Vec<&str> = line.split_whitespace().collect();
            name = format!("{} {}", fields[0], fields.get(5).unwrap_or(&"(anon)"));
        } else if let Some(v) = line.strip_prefix("Rss:") {
            let kib = v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
            out.push((kib, name.clone()));
        }
    }
    out.sort_unstable_by(|a, b| b.cmp(a));
    out.truncate(8);
    out
}

fn sample(pid: i32, maps: bool, step: &str) -> Result<()> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "{step:<34} VmRSS {:6.1} MiB  VmHWM {:6.1} MiB  RssAnon {:6.1} MiB  [heap] {:6.1} MiB  threads {}",
        mib(kib(&status, "VmRSS").unwrap_or(0)),
        mib(kib(&status, "VmHWM").unwrap_or(0)),
        mib(kib(&status, "RssAnon").unwrap_or(0)),
        mib(heap_rss_kib(&smaps)),
        status
            .lines()
            .find_map(|l| l.strip_prefix("Threads:")?.trim().parse::<u64>().ok())
            .unwrap_or(0),
    );
    if maps {
        for (kib, name) in largest_mappings(&smaps) {
            println!("    {:6.1} MiB  {name}", mib(kib));
        }
    }
    Ok(())
}

fn call(socket: &Path, request: &Request) -> Result<Response> {
    let mut client = Client::connect(socket)?;
    Ok(client.call(request)?)
}

fn apply(socket: &Path, dir: &Path, confirm_ms: Option<u64>) -> Result<()> {
    // As `enforcer apply` does: read the files here, send their text.
    let files = PolicyFile::from_sources(enforcer::policy::read_dir(dir)?)?;
    match call(
        socket,
        &Request::Apply {
            source: dir.display().to_string(),
            files,
            confirm_ms,
            allow_empty: false,
        },
    )? {
        Response::Applied { .. } => Ok(()),
        other => bail!("apply {}: {other:?}", dir.display()),
    }
}

fn write_policy(dir: &Path, shape: Shape, variant: Variant) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    enforcer_bench::policy::write(dir, shape, variant)?;
    Ok(())
}

fn main() -> Result<()> {
    let args = parse_args()?;
    if !args.bin.exists() {
        bail!(
            "{} not found: cargo build --release -p enforcer --bin enforcer",
            args.bin.display()
        );
    }
    let scratch = tempfile::tempdir()?;
    let small = scratch.path().join("small");
    let large = scratch.path().join("large");
    let large2 = scratch.path().join("large2");
    let shape = Shape {
        workloads: args.workloads,
        peers: args.peers,
        rules: args.rules,
    };
    let small_shape = Shape {
        workloads: 2,
        peers: 5,
        rules: 10,
    };
    write_policy(&small, small_shape, Variant::Base)?;
    write_policy(&large, shape, Variant::Base)?;
    write_policy(&large2, shape, Variant::OneRuleChanged)?;

    let tag = format!("enforcer-rss-{}", std::process::id());
    // Dropped last to first: the daemon, then its pins, then the cgroups.
    let cgroups = Cgroups::create(cgroup2_mount()?.join(&tag), args.workloads)?;
    let pins = Pins {
        bin: args.bin.clone(),
        dir: PathBuf::from("/sys/fs/bpf").join(&tag),
    };
    let spec = DaemonSpec::new(
        &args.bin,
        if args.start_large { &large } else { &small },
        &cgroups.root,
        &pins.dir,
        scratch.path(),
    )
    .wrapper(&args.wrap)
    .env("ENFORCER_LOG", "warn")
    .ready_timeout(Duration::from_secs(60));
    let socket = spec.socket_path().to_path_buf();
    let process = spec
        .start()
        .with_context(|| format!("starting {}", args.bin.display()))?;
    let mut daemon = Daemon {
        process,
        signal: if args.kill {
            libc::SIGKILL
        } else {
            libc::SIGTERM
        },
    };
    let result = measure(&args, &mut daemon, &socket, &large, &large2);
    drop(daemon);
    if result.is_err() {
        eprintln!("daemon log:\n{}", spec.log());
    }
    drop(pins);
    drop(cgroups);
    result
}

fn measure(
    args: &Args,
    daemon: &mut Daemon,
    socket: &Path,
    large: &Path,
    large2: &Path,
) -> Result<()> {
    // The daemon's own pid: a wrapper may have forked it.
    let pid = match call(socket, &Request::Status)? {
        Response::Status(report) => report.pid,
        other => bail!("status: {other:?}"),
    };
    daemon.process.set_pid(pid);
    let pid = pid as i32;
    std::thread::sleep(args.settle);
    let started_with = if args.start_large { args.rules } else { 10 };
    sample(pid, args.maps, &format!("started, {started_with} rules"))?;

    let started = Instant::now();
    apply(socket, large, None)?;
    let took = started.elapsed();
    std::thread::sleep(args.settle);
    sample(
        pid,
        args.maps,
        &format!("apply {} rules ({took:.1?})", args.rules),
    )?;
    if args.steps < 2 {
        return Ok(());
    }

    apply(socket, large2, Some(600_000))?;
    std::thread::sleep(args.settle);
    sample(pid, args.maps, "apply --confirm of another")?;
    if args.steps < 3 {
        return Ok(());
    }
    match call(socket, &Request::Confirm)? {
        Response::Confirmed { .. } => {}
        other => bail!("confirm: {other:?}"),
    }
    apply(socket, large, None)?;
    std::thread::sleep(args.settle);
    sample(pid, args.maps, "confirm, apply the first again")?;
    // Fragmentation would show as growth over many loads.
    for i in 0..args.repeat {
        apply(socket, if i % 2 == 0 { large2 } else { large }, None)?;
    }
    if args.repeat > 0 {
        std::thread::sleep(args.settle);
        sample(pid, args.maps, &format!("{} more applies", args.repeat))?;
    }
    Ok(())
}
