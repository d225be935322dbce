//! `enforcer run`: the daemon. It loads (or adopts) the pinned data plane,
//! resolves workloads to cgroups, puts the policy in force, and then
//! follows signals, policy file changes, cgroups, `until` expiries and API
//! requests. SIGTERM leaves enforcement in place; `--uninstall` removes it.
//!
//! - [`engine`]: the state and every change to it (policy lifecycle,
//!   probation and rollback, start, cgroup sync, bound ports, host
//!   addresses, status), one module per job;
//! - [`state`]: the state directory, where the last good policy is saved;
//! - [`addr_watch`]: notifications of this host's address changes;
//! - [`flows`]: the verdict event history;
//! - [`status`]: what `status` and metrics show, read without the engine;
//! - [`metrics`]: the Prometheus endpoint;
//! - [`integrity`]: the periodic check and repair of links and pins;
//! - [`memory`]: the allocator set up for a daemon that loads policies;
//! - [`duration`], [`time`]: operator-written durations; kernel timestamps
//!   to wall-clock time.

mod addr_watch;
pub mod engine;
pub mod flows;
pub mod integrity;
pub mod memory;
pub mod metrics;
pub mod state;
pub mod status;
pub mod time;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use futures_util::StreamExt;
use inotify::{Inotify, WatchMask};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{Notify, mpsc};

use crate::api::{Access, Group, Reply, Request, Response, Server};
use crate::cgroups::{self, CgroupWatcher, Discovery, WatchOptions};
use crate::compile::CompiledPolicy;
use crate::config::Settings;
use crate::dataplane::{Dataplane, DataplaneOptions, EventReader, RegistrationLimits};
use engine::{Candidate, EmptyPolicy, Engine, EngineError, Outcome, Trigger};
use flows::{FlowFilter, FlowHistory};
use memory::release_freed_heap;
use status::StatusBoard;

/// How long policy file events must be quiet before a reload: editors
/// write files in several steps.
const POLICY_SETTLE: Duration = Duration::from_millis(200);

/// Remove everything the daemon installed under `bpffs`: links (which
/// detaches the programs) and maps.
pub fn uninstall(settings: &Settings) -> anyhow::Result<()> {
    Dataplane::uninstall(&settings.bpffs)
        .with_context(|| format!("removing the pins under {}", settings.bpffs.display()))?;
    // The root itself, when nothing else lives there.
    let _ = std::fs::remove_dir(&settings.bpffs);
    Ok(())
}

fn notify(states: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// How often the ports bound on this host are scanned again.
const BOUND_PORTS_RESCAN: Duration = Duration::from_secs(30);

/// How often this host's addresses are read again besides the netlink
/// notifications (a safety net), and without them (when the socket cannot
/// be opened): an address change must be in force within a second.
const HOST_ADDRS_RECHECK: Duration = Duration::from_secs(30);
const HOST_ADDRS_POLL: Duration = Duration::from_secs(1);

/// Run the daemon until SIGTERM or SIGINT.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let root = cgroups::cgroup_root(settings.cgroup_root.as_deref())?;
    let v1_conflicts = cgroups::v1_conflicts();
    for conflict in &v1_conflicts {
        tracing::error!("NOT ENFORCED: {conflict}");
    }
    let group = |name: &Option<String>| name.as_deref().map(Group::resolve).transpose();
    let access = Access::new(group(&settings.read_group)?, group(&settings.admin_group)?);
    let server = Arc::new(Server::bind(&settings.socket, access, settings.limits).await?);

    let mut dataplane = Dataplane::load(&DataplaneOptions {
        pin_root: Some(settings.bpffs.clone()),
        // On a server the programs sit on the hierarchy's root, so that
        // workloads anywhere in the tree (and cgroups created later) are
        // judged; unmanaged processes follow --unmanaged (allow by default).
        allow_root_cgroup: true,
    })
    .with_context(|| {
        format!(
            "loading the data plane (pins under {})",
            settings.bpffs.display()
        )
    })?;
    dataplane.set_unmanaged(settings.unmanaged)?;
    dataplane.set_failsafe(&settings.failsafe.0)?;
    // Cgroups are registered in the kernel at their creation from now on,
    // whether this process runs or not. Without it (no kernel BTF, a
    // kernel older than 5.17) enforcement still works, with a window
    // between a cgroup's creation and its registration by this process:
    // said loudly and in status.
    let registration_error = match dataplane.enable_registration(RegistrationLimits {
        max_cgroups_per_workload: settings.max_cgroups_per_workload,
        ..RegistrationLimits::default()
    }) {
        Ok(()) => None,
        Err(e) => {
            let message = format!(
                "cgroups are not registered at their creation ({:#}): a cgroup created while this daemon is not running, or before it sees it, is not its workload until it does",
                anyhow::Error::from(e)
            );
            tracing::error!("NOT ENFORCED FROM CREATION: {message}");
            Some(message)
        }
    };
    let events = dataplane.take_events()?;
    let integrity_book = Arc::new(integrity::IntegrityBook::default());
    if let Some(reasons) = dataplane.replaced_maps() {
        integrity_book.repaired(
            format!(
                "pinned maps replaced by fresh ones ({})",
                reasons.join("; ")
            ),
            SystemTime::now(),
        );
    }

    // The first snapshot is taken with the watches in place, so that a
    // cgroup created while the policy loads is reported (queued) rather
    // than left to the periodic rescan. Only an unusable root stops the
    // daemon: whatever else cannot be walked is skipped and reported.
    let discovery = Discovery::default();
    let (mut cgroup_watcher, tree) =
        CgroupWatcher::start(&root, WatchOptions::default(), discovery.clone())
            .with_context(|| format!("watching cgroups under {}", root.display()))?;
    let flows = Arc::new(Mutex::new(FlowHistory::new(settings.flow_history)));
    let mut engine = Engine::new(
        settings.clone(),
        root.clone(),
        dataplane,
        tree,
        discovery,
        v1_conflicts,
        flows,
    );
    engine.set_registration_error(registration_error);
    // The policy goes into the maps before the programs are (re)attached,
    // so a fresh attach never enforces an empty policy and an adopted one
    // switches straight from the old policy to the new. An invalid policy
    // with nothing else to put in force ends the daemon here, before
    // READY=1: systemd then reports the unit failed.
    engine.start()?;
    engine
        .dataplane_mut()
        .attach(&root)
        .with_context(|| format!("attaching to {}", root.display()))?;
    // A binary of an earlier map layout may have left its programs attached
    // (an upgrade): they would keep enforcing its last policy beside ours.
    // Retire them once ours enforce a policy; until then they are the only
    // enforcement there is.
    if engine.has_policy() {
        match engine.dataplane_mut().retire_older_layouts() {
            Ok(dirs) => {
                for dir in dirs {
                    tracing::info!(pins = %dir.display(), "removed the programs and maps of an earlier map layout");
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot remove the pins of an earlier map layout; its programs still enforce its last policy (run `enforcer run --uninstall` with the older binary, or remove them by hand)");
            }
        }
    }
    // Attached: from now on every link is this process's own, and kept
    // attached and pinned by the integrity check.
    let integrity_monitor = engine.dataplane_mut().integrity_monitor();
    // Attached: from now on the kernel sees every bind(); the ports bound
    // before (services started before the daemon) come from a scan.
    engine.seed_bound_ports();
    // An adopted kernel policy holds the addresses of when it was written.
    let mut host_changes = addr_watch::watch_host_addrs();
    engine.refresh_host_addrs();
    let event_policy = engine.event_policy();
    let flow_history = engine.flows();
    let summary = engine.summary();
    let board = Arc::new(StatusBoard::new(
        engine.status(),
        engine
            .counter_reader()
            .context("opening the counter maps for status")?,
        Arc::clone(&integrity_book),
    ));
    // The start's load, once its status is built (see `Shared::change`).
    release_freed_heap();
    let shared = Arc::new(Shared {
        engine: tokio::sync::Mutex::new(engine),
        board: Arc::clone(&board),
        loads: tokio::sync::Mutex::new(()),
    });

    let wake = Arc::new(Notify::new());
    let handler = Arc::new(ApiHandler {
        shared: Arc::clone(&shared),
        flows: Arc::clone(&flow_history),
        wake: Arc::clone(&wake),
    });
    let serving = Arc::clone(&server);
    tokio::spawn(async move { serving.serve(handler).await });
    tokio::spawn(read_events(events, event_policy, flow_history));
    tokio::spawn(integrity::watch(integrity_monitor, integrity_book));
    if let Some(addr) = settings.metrics {
        let board = Arc::clone(&board);
        tokio::spawn(async move {
            let scrape = move || {
                let board = Arc::clone(&board);
                async move { current_status(board).await.map(|s| metrics::render(&s)) }
            };
            if let Err(e) = metrics::serve(addr, scrape).await {
                tracing::error!(%addr, error = %e, "metrics endpoint failed");
            }
        });
    }
    let mut policy_changes = watch_policy_dir(&settings.policies);

    let mut sighup = signal(SignalKind::hangup())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;

    tracing::info!(root = %root.display(), bpffs = %settings.bpffs.display(), socket = %settings.socket.display(), "{summary}");
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&summary),
    ]);

    // A safety net for ports bound before the daemon started whose
    // services then stop (no cgroup change to trigger a scan).
    let mut bound_rescan = tokio::time::interval(BOUND_PORTS_RESCAN);
    bound_rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    bound_rescan.tick().await; // the first tick is immediate; seeded above
    let policies = settings.policies.clone();
    let mut host_recheck = tokio::time::interval(if host_changes.is_some() {
        HOST_ADDRS_RECHECK
    } else {
        HOST_ADDRS_POLL
    });
    host_recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    host_recheck.tick().await; // read above
    loop {
        let deadline = shared.read(Engine::next_deadline).await;
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        let mut status_changed = true;
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = sighup.recv() => {
                // `systemctl reload` then waits for the outcome (systemd
                // tracks RELOADING=1 ... READY=1 with a monotonic stamp).
                let mut reloading = vec![sd_notify::NotifyState::Reloading];
                reloading.extend(sd_notify::NotifyState::monotonic_usec_now().ok());
                notify(&reloading);
                let _ = shared.load_dir(Trigger::Sighup, &policies).await;
                notify(&[sd_notify::NotifyState::Ready]);
            }
            Some(()) = recv(&mut policy_changes) => {
                let _ = shared.load_dir(Trigger::FileChange, &policies).await;
            }
            Some(update) = cgroup_watcher.next() => shared.change(|e| e.on_tree(update)).await,
            Some(()) = recv(&mut host_changes) => {
                status_changed = shared.change(Engine::refresh_host_addrs).await;
            }
            _ = host_recheck.tick() => {
                status_changed = shared.change(Engine::refresh_host_addrs).await;
            }
            _ = bound_rescan.tick() => {
                shared.change(Engine::seed_bound_ports).await;
                status_changed = false;
            }
            _ = sleep => shared.change(Engine::on_deadline).await,
            _ = wake.notified() => {}
            else => status_changed = false,
        }
        if status_changed {
            let summary = shared.read(Engine::summary).await;
            notify(&[sd_notify::NotifyState::Status(&summary)]);
        }
    }
    notify(&[sd_notify::NotifyState::Stopping]);
    tracing::info!("stopping; the policy in force stays enforced by the pinned programs");
    drop(server);
    Ok(())
}

async fn recv(rx: &mut Option<mpsc::Receiver<()>>) -> Option<()> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Watch the policy directory: a message after each settled burst of
/// changes to its files. `None` when it cannot be watched (the daemon then
/// reloads on SIGHUP and `apply` only).
fn watch_policy_dir(dir: &Path) -> Option<mpsc::Receiver<()>> {
    let inotify = Inotify::init().ok()?;
    let mask = WatchMask::CLOSE_WRITE
        | WatchMask::MOVED_TO
        | WatchMask::MOVED_FROM
        | WatchMask::CREATE
        | WatchMask::DELETE
        | WatchMask::ONLYDIR;
    if let Err(e) = inotify.watches().add(dir, mask) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the policy directory; reload with SIGHUP");
        return None;
    }
    let mut stream = inotify.into_event_stream([0u8; 4096]).ok()?;
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        while let Some(event) = stream.next().await {
            if event.is_err() {
                continue;
            }
            // Let the burst settle.
            loop {
                match tokio::time::timeout(POLICY_SETTLE, stream.next()).await {
                    Ok(Some(_)) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            if tx.send(()).await.is_err() {
                return;
            }
        }
    });
    Some(rx)
}

/// Move kernel verdict events into the flow history.
async fn read_events(
    reader: EventReader,
    policy: Arc<RwLock<Option<Arc<CompiledPolicy>>>>,
    history: Arc<Mutex<FlowHistory>>,
) {
    // SAFETY: the reader owns the ring buffer's map fd and returns that
    // same fd from `as_raw_fd` until it is dropped, with the AsyncFd.
    let mut fd = match unsafe { AsyncFd::register_with_interest(reader, Interest::READABLE) } {
        Ok(fd) => fd,
        Err(e) => {
            tracing::error!(error = ?e, "cannot poll the events ring buffer; flows stay empty");
            return;
        }
    };
    loop {
        let mut guard = match fd.readable_mut().await {
            Ok(guard) => guard,
            Err(e) => {
                tracing::error!(error = %e, "events ring buffer poll failed");
                return;
            }
        };
        let events = guard.get_inner_mut().drain();
        guard.clear_ready();
        if events.is_empty() {
            continue;
        }
        let policy = policy.read().ok().and_then(|p| p.clone());
        let records: Vec<_> = events
            .iter()
            .map(|e| flows::record_from_event(e, policy.as_deref()))
            .collect();
        if let Ok(mut history) = history.lock() {
            for r in records {
                history.push(r);
            }
        }
    }
}

/// The engine, shared by the main loop and the API, with the status board
/// it publishes to.
struct Shared {
    engine: tokio::sync::Mutex<Engine>,
    board: Arc<StatusBoard>,
    /// Serializes policy loads (read, compile, put in force) in the order
    /// they come. Held while compiling; the engine's lock is not.
    loads: tokio::sync::Mutex<()>,
}

impl Shared {
    /// Change the engine, then publish its status. A change makes system
    /// calls (map writes, a cgroup scan) for up to a second on a large
    /// policy: the runtime moves this worker's other tasks (API clients,
    /// metrics) to another thread meanwhile.
    async fn change<R>(&self, change: impl FnOnce(&mut Engine) -> R) -> R {
        let mut engine = self.engine.lock().await;
        tokio::task::block_in_place(|| {
            let result = change(&mut engine);
            self.board.publish(engine.status());
            // After the publish: the status of a large policy is tens of
            // thousands of small allocations, built again at every change
            // (a cgroup event, a periodic rescan) and the previous one
            // freed, all over the pages a load's scratch left free.
            release_freed_heap();
            result
        })
    }

    async fn read<R>(&self, read: impl FnOnce(&Engine) -> R) -> R {
        read(&*self.engine.lock().await)
    }

    /// A policy load: `compile` on a blocking thread without the engine's
    /// lock (reading and compiling a large policy takes seconds), then
    /// `install` under it.
    async fn load<R>(
        &self,
        compile: impl FnOnce() -> Result<Candidate, EngineError> + Send + 'static,
        install: impl FnOnce(&mut Engine, Result<Candidate, EngineError>) -> R,
    ) -> R {
        let _in_order = self.loads.lock().await;
        let candidate = tokio::task::spawn_blocking(compile)
            .await
            .unwrap_or_else(|e| Err(EngineError::CompileTaskFailed(e)));
        self.change(|engine| install(engine, candidate)).await
    }

    /// Load the configured policy directory (SIGHUP, file changes).
    async fn load_dir(&self, trigger: Trigger, dir: &Path) -> Result<Outcome, EngineError> {
        let read = dir.to_path_buf();
        self.load(
            move || Candidate::from_dir(&read, SystemTime::now()),
            |engine, candidate| engine.put_in_force(trigger, dir, candidate, EmptyPolicy::Refuse),
        )
        .await
    }
}

/// The status with its counters, read on a blocking thread (thousands of
/// map lookups), never under the engine's lock.
async fn current_status(board: Arc<StatusBoard>) -> Option<crate::api::StatusReport> {
    match tokio::task::spawn_blocking(move || board.current()).await {
        Ok(status) => Some(status),
        Err(e) => {
            tracing::error!(error = %e, "reading the status failed");
            None
        }
    }
}

/// The `source` of an `apply`: shown in `status`, logs and diagnostics,
/// never opened. An absolute path of printable characters.
fn apply_source(source: &str) -> Result<PathBuf, String> {
    const MAX: usize = 4096;
    if source.len() > MAX || source.chars().any(char::is_control) {
        return Err(format!(
            "apply: `source` must be at most {MAX} bytes of printable characters"
        ));
    }
    let path = PathBuf::from(source);
    if !path.is_absolute() {
        return Err(format!(
            "apply: `source` must be the absolute path of the policy directory, not {source:?}"
        ));
    }
    Ok(path)
}

/// Serves the local API from the engine.
struct ApiHandler {
    shared: Arc<Shared>,
    flows: Arc<Mutex<FlowHistory>>,
    /// Wakes the main loop, whose deadlines may have changed.
    wake: Arc<Notify>,
}

impl crate::api::Handler for ApiHandler {
    async fn handle(&self, request: Request) -> Reply {
        match request {
            Request::Apply {
                source,
                files,
                confirm_ms,
                allow_empty,
            } => {
                let source = match apply_source(&source) {
                    Ok(source) => source,
                    Err(message) => return Reply::One(Response::Error { message }),
                };
                let files: Vec<(String, String)> =
                    files.into_iter().map(|f| (f.name, f.text)).collect();
                let empty = if allow_empty {
                    EmptyPolicy::Allow
                } else {
                    EmptyPolicy::Refuse
                };
                let confirm = confirm_ms.map(Duration::from_millis);
                let shown = source.clone();
                let result = self
                    .shared
                    .load(
                        move || Candidate::from_files(&source, files, SystemTime::now()),
                        |engine, candidate| engine.apply(&shown, candidate, confirm, empty),
                    )
                    .await;
                self.wake.notify_one();
                Reply::One(match result {
                    Ok(o) => Response::Applied {
                        generation: u64::from(o.generation),
                        content_hash: format!("{:016x}", o.content_hash),
                        unchanged: o.unchanged,
                        rollback_at: o.rollback_at.map(crate::rfc3339::format_millis),
                        warnings: o.warnings,
                    },
                    Err(error) => Response::Rejected {
                        errors: error.messages(),
                    },
                })
            }
            Request::Confirm => {
                let result = self.shared.change(Engine::confirm).await;
                self.wake.notify_one();
                Reply::One(match result {
                    Ok(generation) => Response::Confirmed {
                        generation: u64::from(generation),
                    },
                    Err(error) => Response::Error {
                        message: error.joined(),
                    },
                })
            }
            Request::Status => {
                Reply::One(match current_status(Arc::clone(&self.shared.board)).await {
                    Some(status) => Response::Status(Box::new(status)),
                    None => Response::Error {
                        message: "the status could not be read; see the daemon's log".into(),
                    },
                })
            }
            Request::Flows {
                follow,
                workload,
                verdict,
            } => {
                let filter = FlowFilter { workload, verdict };
                let (snapshot, follower) = match self.flows.lock() {
                    Ok(h) => (h.snapshot(&filter), follow.then(|| h.subscribe())),
                    Err(_) => (Vec::new(), None),
                };
                let (tx, rx) = mpsc::channel(256);
                tokio::spawn(async move {
                    for r in snapshot {
                        if tx.send(Response::Flow(r)).await.is_err() {
                            return;
                        }
                    }
                    let Some(mut follower) = follower else {
                        let _ = tx.send(Response::End).await;
                        return;
                    };
                    loop {
                        match follower.recv().await {
                            Ok(r) if filter.matches(&r) => {
                                if tx.send(Response::Flow(r)).await.is_err() {
                                    return;
                                }
                            }
                            Ok(_) => {}
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                                tracing::warn!(skipped = n, "a flows follower is too slow");
                            }
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                        }
                    }
                });
                Reply::Stream(rx)
            }
        }
    }
}
