//! What registering cgroups in the kernel at their creation costs: the
//! time of `mkdir` and `rmdir` of a cgroup, the whole system call, with the
//! cgroup tracer (`tp_btf/cgroup_mkdir` and `cgroup_rmdir`) loaded and
//! enabled over a policy of N workloads, against the same calls with no
//! tracer, interleaved round by round. Needs root.
//!
//! The policy's workloads alternate between `unit = "wI.service"` and
//! `cgroup = "teamT/job-I-*"` (20 teams). Each measured batch creates
//! cgroups of one class under a cgroup of its own, then removes them:
//!
//! - `unit`: a unit's cgroup under a `.slice` (`sK.slice/wI.service`): an
//!   exact step of the automaton to a workload;
//! - `pattern`: a pattern's match (`teamT/job-I-K`): the team's `*` steps
//!   (N / 40 of them) tried on the name;
//! - `unmatched`: a name that leads nowhere from a parent with automaton
//!   states (`sK.slice/other-K.service`);
//! - `stateless`: any name under a cgroup without states (`misc/x-K`):
//!   most cgroups of a host that no selector comes near.
//!
//! Each round loads a fresh data plane, enables registration and applies
//! the policy to both slots (as a daemon does after two applies) for the
//! `tracer` half, and drops it (which detaches the tracer) for the
//! `baseline` half; which half comes first alternates. Results are ns per
//! cgroup, named `cgroup_mkdir/workloads=N/CLASS/{baseline,tracer}` (and
//! `cgroup_rmdir/...`), so the report gives each tracer figure its
//! baseline's ratio.
//!
//! `cargo bench -p enforcer --bench registration -- [--quick] [--json PATH]`

mod support;

use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, Result, bail, ensure};
use enforcer::{
    cgroups::{CgroupTree, Matcher, cgroup2_mount, uid_of_user},
    check::compile_loaded,
    compile::CompiledPolicy,
    dataplane::{Dataplane, DataplaneOptions, HostAddrs, RegistrationLimits, ResolvedCgroup},
    policy::load_sources,
};
use support::{Args, Row, report, thread_cpu_ns};

/// The bench's cgroup under the cgroup v2 mount, followed by its pid.
const ROOT_PREFIX: &str = "enforcer-regbench-";
/// Directories the pattern workloads are spread over.
const TEAMS: usize = 20;
/// Between dropping a data plane and the next measurement: the kernel
/// frees its maps after an RCU grace period, on a worker that must not
/// run during a measurement.
const SETTLE: Duration = Duration::from_millis(250);
/// Cgroups of a warm-up batch, created and removed before each measured
/// one so that both halves start with the same caches.
const WARM_UP: usize = 10;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Unit,
    Pattern,
    Unmatched,
    Stateless,
}

impl Class {
    const ALL: [Class; 4] = [
        Class::Unit,
        Class::Pattern,
        Class::Unmatched,
        Class::Stateless,
    ];

    fn name(self) -> &'static str {
        match self {
            Class::Unit => "unit",
            Class::Pattern => "pattern",
            Class::Unmatched => "unmatched",
            Class::Stateless => "stateless",
        }
    }

    /// Whether its cgroups become a workload's.
    fn registers(self) -> bool {
        matches!(self, Class::Unit | Class::Pattern)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Half {
    Baseline,
    Tracer,
}

impl Half {
    fn name(self) -> &'static str {
        match self {
            Half::Baseline => "baseline",
            Half::Tracer => "tracer",
        }
    }
}

/// The policy of `workloads` workloads (see the module's documentation).
fn policy_text(workloads: usize) -> String {
    let mut text = String::new();
    for i in 0..workloads {
        if i % 2 == 0 {
            text.push_str(&format!("[workload.w{i}]\nunit = \"w{i}.service\"\n\n"));
        } else {
            let team = (i / 2) % TEAMS;
            text.push_str(&format!(
                "[workload.w{i}]\ncgroup = \"team{team}/job-{i}-*\"\n\n"
            ));
        }
    }
    text
}

fn compile(workloads: usize) -> Result<CompiledPolicy> {
    let sources = [(
        PathBuf::from(format!("registration-{workloads}.toml")),
        policy_text(workloads),
    )];
    let loaded = load_sources(&sources).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(compile_loaded(loaded, SystemTime::now())
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .0)
}

/// The cgroups of one batch, relative to the bench's root: `count` of
/// `class`, for a policy of `workloads` workloads. `tag` keeps warm-up
/// names apart from measured ones.
fn batch(class: Class, workloads: usize, count: usize, tag: &str) -> Vec<PathBuf> {
    let units = workloads.div_ceil(2);
    let patterns = (workloads / 2).max(1);
    (0..count)
        .map(|k| {
            let path = match class {
                Class::Unit => format!("s{k}.slice/w{}.service", 2 * (k % units)),
                Class::Pattern => {
                    let i = 2 * (k % patterns) + 1;
                    format!("team{}/job-{i}-{tag}{k}", (i / 2) % TEAMS)
                }
                Class::Unmatched => format!("s{k}.slice/other-{tag}{k}.service"),
                Class::Stateless => format!("misc/x-{tag}{k}"),
            };
            PathBuf::from(path)
        })
        .collect()
}

/// The directories batches are made in: a `.slice` per cgroup of a batch,
/// the teams, and `misc`.
fn skeleton(count: usize) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = (0..count.max(WARM_UP))
        .map(|k| PathBuf::from(format!("s{k}.slice")))
        .collect();
    dirs.extend((0..TEAMS).map(|t| PathBuf::from(format!("team{t}"))));
    dirs.push(PathBuf::from("misc"));
    dirs
}

/// The bench's cgroup; removed with everything below it when dropped.
struct BenchRoot(PathBuf);

impl BenchRoot {
    fn create() -> Result<Self> {
        let mount = cgroup2_mount()?;
        remove_stale(&mount);
        let path = mount.join(format!("{ROOT_PREFIX}{}", std::process::id()));
        fs::create_dir(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(BenchRoot(path))
    }
}

impl Drop for BenchRoot {
    fn drop(&mut self) {
        remove_tree(&self.0);
    }
}

/// Removes a cgroup and its descendants, deepest first (best effort).
fn remove_tree(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&entry.path());
            }
        }
    }
    if let Err(e) = fs::remove_dir(dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        eprintln!("warning: cannot remove {}: {e}", dir.display());
    }
}

/// Roots of earlier runs whose process is gone (killed with SIGKILL).
fn remove_stale(mount: &Path) {
    let Ok(entries) = fs::read_dir(mount) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_prefix(ROOT_PREFIX)
            && !pid.is_empty()
            && pid.bytes().all(|b| b.is_ascii_digit())
            && !Path::new("/proc").join(pid).exists()
        {
            remove_tree(&entry.path());
        }
    }
}

/// A data plane with registration enabled and the policy in both slots,
/// with the cgroups under `root` registered and given their states, as
/// the daemon does.
fn load_with_tracer(policy: &CompiledPolicy, matcher: &Matcher, root: &Path) -> Result<Dataplane> {
    let mut dp = Dataplane::load(&DataplaneOptions::default())?;
    dp.enable_registration(RegistrationLimits::default())?;
    let key = dp
        .name_key()
        .context("registration is enabled but has no name key")?;
    let tables = matcher.automaton().kernel_tables(key);
    for _ in 0..2 {
        dp.stage(policy, &HostAddrs::default(), Some(&tables))?;
        let tree = CgroupTree::scan(root)?;
        let resolution = matcher.resolve(&tree);
        let (cgroups, _) = ResolvedCgroup::of_resolution(&resolution, &tree, policy, usize::MAX);
        dp.stage_cgroups(&cgroups, Some(&resolution.states))?;
        dp.commit()?;
    }
    Ok(dp)
}

/// ns per cgroup of creating, then of removing, `paths` under `root`: the
/// calling thread's CPU time, user and kernel (the tracer runs in the
/// `mkdir` caller's context), so that waiting for a core on a busy host
/// does not count.
fn mkdir_rmdir(root: &Path, paths: &[PathBuf]) -> Result<(f64, f64)> {
    let dirs: Vec<PathBuf> = paths.iter().map(|p| root.join(p)).collect();
    let started = thread_cpu_ns();
    for dir in &dirs {
        fs::create_dir(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let made = thread_cpu_ns().saturating_sub(started);
    let started = thread_cpu_ns();
    for dir in dirs.iter().rev() {
        fs::remove_dir(dir).with_context(|| format!("cannot remove {}", dir.display()))?;
    }
    let removed = thread_cpu_ns().saturating_sub(started);
    let per = |ns: u128| ns as f64 / dirs.len() as f64;
    Ok((per(made), per(removed)))
}

/// Proves the tracer registers: with it loaded, every cgroup of the
/// classes that name a workload is in the slot in force at its creation,
/// and none of the others.
fn check_registration(dp: &Dataplane, root: &Path, workloads: usize, count: usize) -> Result<()> {
    for class in Class::ALL {
        let paths = batch(class, workloads, count, "check-");
        let dirs: Vec<PathBuf> = paths.iter().map(|p| root.join(p)).collect();
        let mut ids = Vec::new();
        for dir in &dirs {
            fs::create_dir(dir).with_context(|| format!("cannot create {}", dir.display()))?;
            ids.push(fs::metadata(dir)?.ino());
        }
        let slot = dp.read_slot(dp.active_slot_index()?)?;
        let registered = ids
            .iter()
            .filter(|id| slot.cgroups.iter().any(|(c, _)| c == *id))
            .count();
        for dir in dirs.iter().rev() {
            fs::remove_dir(dir)?;
        }
        let expected = if class.registers() { ids.len() } else { 0 };
        ensure!(
            registered == expected,
            "{workloads} workloads, {} cgroups: the tracer registered {registered} of {}, expected {expected}",
            class.name(),
            ids.len()
        );
    }
    Ok(())
}

/// Adds a sample to the row of that name, made if new (rows keep the order
/// in which they first appear).
fn push_sample(rows: &mut Vec<Row>, name: String, value: f64) {
    match rows.iter_mut().find(|r| r.name == name) {
        Some(row) => row.samples.push(value),
        None => rows.push(Row {
            name,
            samples: vec![value],
        }),
    }
}

fn main() -> Result<()> {
    let args = Args::from_env();
    // SAFETY: no arguments.
    if unsafe { libc::geteuid() } != 0 {
        if std::env::var_os("CI").is_some() {
            bail!("the registration benchmark needs root");
        }
        eprintln!("skipped: the registration benchmark needs root");
        return Ok(());
    }
    // Up to the other benchmarks' largest policy.
    let (sizes, rounds, count): (&[usize], usize, usize) = if args.quick {
        (&[10, 10_000], 5, 50)
    } else {
        (&[10, 1_000, 10_000], 15, 100)
    };
    let root = BenchRoot::create()?;
    for dir in skeleton(count) {
        let path = root.0.join(dir);
        fs::create_dir(&path).with_context(|| format!("cannot create {}", path.display()))?;
    }
    let mut rows: Vec<Row> = Vec::new();
    for &workloads in sizes {
        let policy = compile(workloads)?;
        let matcher = Matcher::new(&policy.workloads, uid_of_user)?;
        {
            let dp = load_with_tracer(&policy, &matcher, &root.0)?;
            check_registration(&dp, &root.0, workloads, count)?;
        }
        for round in 0..rounds {
            let order = if round % 2 == 0 {
                [Half::Baseline, Half::Tracer]
            } else {
                [Half::Tracer, Half::Baseline]
            };
            for half in order {
                let dp = match half {
                    Half::Tracer => Some(load_with_tracer(&policy, &matcher, &root.0)?),
                    Half::Baseline => None,
                };
                std::thread::sleep(SETTLE);
                for class in Class::ALL {
                    mkdir_rmdir(&root.0, &batch(class, workloads, WARM_UP, "warm-"))?;
                    let (made, removed) =
                        mkdir_rmdir(&root.0, &batch(class, workloads, count, ""))?;
                    let name = |op: &str| {
                        format!(
                            "{op}/workloads={workloads}/{}/{}",
                            class.name(),
                            half.name()
                        )
                    };
                    push_sample(&mut rows, name("cgroup_mkdir"), made);
                    push_sample(&mut rows, name("cgroup_rmdir"), removed);
                }
                drop(dp);
            }
        }
    }
    report(rows, 48, args.json.as_deref())
}
