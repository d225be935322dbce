//! `enforcer-demo`: a short live demonstration of real enforcement, run by
//! `cargo xtask demo`. It compiles `policies/example/`, builds a small world
//! of real cgroups (web, api, db), real test hosts in network namespaces
//! (office, vendor-support, world) and real servers, puts the policy in
//! force in the kernel, makes real connections and compares every outcome
//! with the policy's verdict. Exits 0 only if all of them agree.
//!
//! Here: compile the example policy, build the stage, put the policy in
//! force, make the connections, print what the policy said and what really
//! happened, and clean everything up (also on Ctrl-C). See `docs/demo.md`.

mod cases;
mod daemon;
mod interrupt;
mod stage;
mod table;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result, bail};
use enforcer::{
    check::compile_loaded,
    compile::{CompiledPolicy, EntityKind},
    policy::{LoadError, Mode, RuleRef, load_dir},
};
use enforcer_tests::privileged::{missing_requirement, require_root};

use self::{
    cases::Observation,
    interrupt::{Interrupted, Stop},
    stage::{Enforcement, Place, Remote, Stage, Tier},
    table::{Row, Table},
};

const USAGE: &str = "\
usage: enforcer-demo [--policies DIR] [--library] [--timeout-ms N] [--pause-ms N]

Enforces the example policy on real cgroups, processes and test hosts (network
namespaces), makes real connections and compares each outcome with the
policy. Needs root. Exits 0 when every connection matched the policy, 1 when
one did not, 2 on an error, 130 when interrupted (after cleaning up).

  --policies DIR   the policy directory (default: policies/example)
  --library        drive the data plane directly instead of starting the
                   daemon (`enforcer run`, found next to this binary)
  --timeout-ms N   how long a client waits for an answer (default: 500)
  --pause-ms N     pause between connections, to watch them (default: 0)";

struct Args {
    policies: PathBuf,
    library: bool,
    timeout: Duration,
    pause: Duration,
}

fn default_policies() -> PathBuf {
    let relative = Path::new("policies/example");
    if relative.is_dir() {
        relative.to_path_buf()
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/example")
    }
}

fn parse_args() -> Result<Option<Args>> {
    let mut args = Args {
        policies: default_policies(),
        library: false,
        timeout: Duration::from_millis(500),
        pause: Duration::ZERO,
    };
    let mut it = std::env::args_os().skip(1);
    while let Some(arg) = it.next() {
        let arg = arg.to_string_lossy().into_owned();
        let mut value = |name: &str| {
            it.next()
                .with_context(|| format!("{name} needs a value\n\n{USAGE}"))
        };
        let millis = |v: std::ffi::OsString, name: &str| -> Result<Duration> {
            let text = v.to_string_lossy();
            text.parse::<u64>()
                .map(Duration::from_millis)
                .with_context(|| format!("{name}: `{text}` is not a number of milliseconds"))
        };
        match arg.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(None);
            }
            "--policies" => args.policies = PathBuf::from(value("--policies")?),
            "--library" => args.library = true,
            "--timeout-ms" => args.timeout = millis(value("--timeout-ms")?, "--timeout-ms")?,
            "--pause-ms" => args.pause = millis(value("--pause-ms")?, "--pause-ms")?,
            other => bail!("unknown argument `{other}`\n\n{USAGE}"),
        }
    }
    Ok(Some(args))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(args)) => args,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("enforcer-demo: {e:#}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) if e.is::<Interrupted>() => {
            eprintln!("enforcer-demo: interrupted");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("enforcer-demo: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The compiled policy, and the rules that end at some time.
struct Policy {
    compiled: CompiledPolicy,
    untils: BTreeMap<RuleRef, SystemTime>,
}

/// Loads and compiles the policy now, with its expectations checked.
fn compile(dir: &Path) -> Result<Policy> {
    let loaded = match load_dir(dir) {
        Ok(loaded) => loaded,
        Err(LoadError::Invalid(d)) => {
            print!("{d}");
            bail!("the policy in {} is invalid", dir.display())
        }
        Err(e) => return Err(e.into()),
    };
    let mut untils = BTreeMap::new();
    for p in &loaded.set.policies {
        for r in &p.rules {
            if let Some(until) = &r.until {
                let rule = RuleRef {
                    policy: p.name.to_string(),
                    section: r.section,
                    index: r.index,
                };
                untils.insert(rule, until.value);
            }
        }
    }
    match compile_loaded(loaded, SystemTime::now()) {
        Ok((compiled, warnings)) => {
            for w in warnings {
                println!("{w}");
            }
            Ok(Policy { compiled, untils })
        }
        Err(LoadError::Invalid(d)) => {
            print!("{d}");
            bail!("the policy in {} is invalid", dir.display())
        }
        Err(e) => Err(e.into()),
    }
}

/// Label printed for a line of the summary.
fn field(name: &str, text: impl std::fmt::Display) {
    println!("{name:<11} {text}");
}

fn run(args: &Args) -> Result<bool> {
    println!(
        "enforcer demo: the policy in {}, enforced on real processes and real traffic",
        args.policies.display()
    );
    println!();
    let Policy {
        compiled: policy,
        untils,
    } = compile(&args.policies)?;
    let count = |kind| policy.entities.iter().filter(|e| e.kind == kind).count();
    field(
        "policy",
        format!(
            "{}: {} workloads, {} peers, {} rules, {} verdict entries (hash {:016x})",
            args.policies.display(),
            count(EntityKind::Workload),
            count(EntityKind::Peer),
            policy.rules.len(),
            policy.verdicts.len(),
            policy.content_hash
        ),
    );
    if let Some(reason) = missing_requirement() {
        bail!("the demo cannot run here: {reason}");
    }
    // Test hosts use the documentation ranges: take the lock that keeps
    // root tests (of any worktree) and this demo from overlapping.
    let Some(_lock) = require_root() else {
        bail!("the demo cannot run here (see above)");
    };
    // From here on, Ctrl-C only raises a flag so that the guards run.
    let stop = Stop::install()?;
    let started = Instant::now();
    let mut stage = Stage::build()?;
    let root_path = stage.root().path().to_path_buf();
    let netns = stage.netns_names();
    let result = show(&mut stage, &policy, &untils, &stop, args);
    drop(stage);
    let cleaned = check_cleanup(&root_path, &netns, args.library);
    let (matched, total) = result?;
    cleaned?;
    println!();
    println!(
        "{matched}/{total} connections matched the policy ({:.1} s).",
        started.elapsed().as_secs_f64()
    );
    Ok(matched == total)
}

/// Checks that the cgroups, network namespaces, pins and socket are gone.
fn check_cleanup(root: &Path, netns: &[String], library: bool) -> Result<()> {
    let mut left = Vec::new();
    let paths = daemon::paths();
    for path in std::iter::once(root).chain(paths.all()) {
        if path.exists() {
            left.push(path.display().to_string());
        }
    }
    for name in netns {
        if Path::new("/run/netns").join(name).exists() {
            left.push(format!("network namespace {name}"));
        }
    }
    if !left.is_empty() {
        bail!("cleanup left {}", left.join(", "));
    }
    let netns = netns.join(" ");
    let text = if library {
        format!(
            "servers stopped, programs detached; {} and network namespaces {netns} removed",
            root.display()
        )
    } else {
        format!(
            "servers and daemon stopped, programs detached; {}, {}, {} and network namespaces {netns} removed",
            root.display(),
            paths.bpffs.display(),
            paths.socket.display()
        )
    };
    field("cleanup", text);
    Ok(())
}

/// Everything between setup and cleanup; returns how many connections
/// matched the policy, out of how many.
fn show(
    stage: &mut Stage,
    policy: &CompiledPolicy,
    untils: &BTreeMap<RuleRef, SystemTime>,
    stop: &Stop,
    args: &Args,
) -> Result<(usize, usize)> {
    stop.check()?;
    if args.library {
        stage.enforce_with_library(policy)?;
    } else {
        let enforcer = daemon::enforcer_binary()?;
        stage.enforce_with_daemon(&enforcer, &args.policies)?;
    }
    field(
        "cgroups",
        format!(
            "{} stands in for the cgroup root",
            stage.root().path().display()
        ),
    );
    for r in &stage.resolved {
        field(
            "",
            format!(
                "  {:<32} -> workload {} ({})",
                r.path,
                r.workload,
                Mode::from_number(r.cgroup.mode)
                    .unwrap_or_default()
                    .as_str()
            ),
        );
    }
    match &stage.enforcement {
        Some(Enforcement::Library { generation, .. }) => field(
            "kernel",
            format!(
                "programs attached to the demo root by the demo itself (--library), policy generation {generation} in force"
            ),
        ),
        Some(Enforcement::Daemon(d)) => {
            let generation = d.status()?.policy.map_or_else(
                || "no policy".into(),
                |p| format!("policy generation {}", p.generation),
            );
            field(
                "daemon",
                format!(
                    "enforcer run (pid {}), programs attached to the demo root, {generation} in force",
                    d.pid().unwrap_or_default()
                ),
            );
            field(
                "",
                format!(
                    "--cgroup-root {} --bpffs {} --socket {} --failsafe none",
                    stage.root().path().display(),
                    d.bpffs().display(),
                    d.socket().display()
                ),
            );
        }
        None => bail!("the policy is not in force"),
    }
    let host = |name: &str, h: &enforcer_tests::TestHost, extra: &str| {
        let v6 = h
            .subnet_v6()
            .map(|_| format!(" {}", h.ipv6()))
            .unwrap_or_default();
        format!("{name} {}{v6}{extra} (netns {})", h.ipv4(), h.name())
    };
    field("test hosts", host("office", &stage.office, ""));
    field(
        "",
        host("vendor", &stage.vendor, &format!(" {}", stage::VENDOR_ADDR)),
    );
    field("", host("world", &stage.world, ""));

    let plan = cases::plan(stage);
    for case in &plan {
        stage.serve(case.server, case.dest)?;
    }
    stop.check()?;
    let ports = |place| {
        stage
            .ports(place)
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    };
    field(
        "servers",
        format!(
            "{} echo servers: web {}, api {}, db {} (in the workload cgroups); world {} (in its netns)",
            stage.server_count(),
            ports(Place::Local(Tier::Web)),
            ports(Place::Local(Tier::Api)),
            ports(Place::Local(Tier::Db)),
            ports(Place::Remote(Remote::World)),
        ),
    );
    println!();

    let expected = plan
        .iter()
        .map(|case| cases::expect(stage, policy, untils, case))
        .collect::<Result<Vec<_>>>()?;
    let table = Table::start(&expected);
    let mut rows = Vec::new();
    let mut matched = 0;
    for (i, (case, expected)) in plan.iter().zip(expected).enumerate() {
        stop.check()?;
        let report = cases::run(stage, case, args.timeout);
        let event = cases::kernel_event(stage, policy, case, expected.event.is_some())?;
        let row = Row {
            expected,
            observed: Observation { report, event },
        };
        matched += usize::from(table.row(i, &row));
        rows.push(row);
        std::thread::sleep(args.pause);
    }
    table::mismatches(&rows);
    println!();
    match &stage.enforcement {
        Some(Enforcement::Library { dataplane, .. }) => {
            let c = dataplane.global_counters()?;
            field(
                "kernel",
                format!(
                    "{} packets judged, {} new flows, {} packets dropped, {} events lost, \
                     {} connections and datagrams allowed from cached verdicts",
                    c.packets, c.new_flows, c.dropped, c.events_lost, c.cached_verdicts
                ),
            );
        }
        Some(Enforcement::Daemon(d)) => {
            for command in [&["status"][..], &["flows", "--verdict", "deny"][..]] {
                println!("$ enforcer {}", command.join(" "));
                print!("{}", d.cli(command)?);
                println!();
            }
        }
        None => {}
    }
    Ok((matched, rows.len()))
}
