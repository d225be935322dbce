//! `enforcer run`: the daemon. It loads (or adopts) the pinned data plane,
//! resolves workloads to cgroups, puts the policy in force, and then
//! follows signals, policy file changes, cgroups, `until` expiries and API
//! requests. SIGTERM leaves enforcement in place; `--uninstall` removes it.
//!
//! - [`engine`]: the state and every change to it;
//! - [`state`]: the state directory, where the last good policy is saved;
//! - [`addr_watch`]: notifications of this host's address changes;
//! - [`flows`]: the verdict event history;
//! - [`metrics`]: the Prometheus endpoint;
//! - [`memory`]: the allocator set up for a daemon that loads policies;
//! - [`duration`], [`time`]: operator-written durations; kernel timestamps
//!   to wall-clock time.

mod addr_watch;
pub mod duration;
pub mod engine;
pub mod flows;
pub mod memory;
pub mod metrics;
pub mod state;
pub mod time;

use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use inotify::{Inotify, WatchMask};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{Notify, mpsc};

use crate::api::{Access, Reply, Request, Response, Server};
use crate::cgroups::{self, CgroupTree, CgroupWatcher, WatchOptions};
use crate::compile::compiled::CompiledPolicy;
use crate::config::Settings;
use crate::dataplane::{Dataplane, DataplaneOptions, EventReader, FailsafePort, UnmanagedMode};
use engine::{Engine, Trigger};
use flows::{FlowFilter, FlowHistory};

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

fn unmanaged_mode(settings: &Settings) -> UnmanagedMode {
    match settings.unmanaged {
        crate::config::Unmanaged::Allow => UnmanagedMode::Allow,
        crate::config::Unmanaged::Audit => UnmanagedMode::Audit,
        crate::config::Unmanaged::Deny => UnmanagedMode::Deny,
    }
}

fn notify(states: &[sd_notify::NotifyState]) {
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
    let group = settings
        .socket_group
        .as_deref()
        .map(crate::api::resolve_group)
        .transpose()?;
    let server = Arc::new(Server::bind(&settings.socket, Access::new(group)).await?);

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
    dataplane.set_unmanaged(unmanaged_mode(&settings))?;
    let failsafe: Vec<FailsafePort> = settings
        .failsafe
        .0
        .iter()
        .map(|p| FailsafePort {
            protocol: p.protocol,
            port: p.port,
        })
        .collect();
    dataplane.set_failsafe(&failsafe)?;
    let events = dataplane.take_events()?;

    let tree = CgroupTree::scan(&root)
        .with_context(|| format!("scanning cgroups under {}", root.display()))?;
    // Watch from the snapshot on, so that a cgroup created while the policy
    // loads is reported (queued) rather than left to the periodic rescan.
    let mut cgroup_watcher = CgroupWatcher::start(tree.clone(), WatchOptions::default())?;
    let flows = Arc::new(Mutex::new(FlowHistory::new(settings.flow_history)));
    let mut engine = Engine::new(
        settings.clone(),
        root.clone(),
        dataplane,
        tree,
        v1_conflicts,
        flows,
    );
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
                tracing::error!(error = %e, "cannot remove the pins of an earlier map layout; its programs still enforce its last policy (run `enforcer run --uninstall` with the older binary, or remove them by hand)")
            }
        }
    }
    // Attached: from now on the kernel sees every bind(); the ports bound
    // before (services started before the daemon) come from a scan.
    engine.seed_bound_ports();
    // An adopted kernel policy holds the addresses of when it was written.
    let mut host_changes = addr_watch::watch_host_addrs();
    engine.refresh_host_addrs();
    let event_policy = engine.event_policy();
    let flow_history = engine.flows();
    let summary = engine.summary();
    let engine = Arc::new(tokio::sync::Mutex::new(engine));

    let wake = Arc::new(Notify::new());
    let handler = Arc::new(ApiHandler {
        engine: Arc::clone(&engine),
        flows: Arc::clone(&flow_history),
        wake: Arc::clone(&wake),
    });
    let serving = Arc::clone(&server);
    tokio::spawn(async move { serving.serve(handler).await });
    tokio::spawn(read_events(events, event_policy, flow_history));
    if let Some(addr) = settings.metrics {
        let engine = Arc::clone(&engine);
        tokio::spawn(async move {
            let scrape = move || {
                let engine = Arc::clone(&engine);
                async move { metrics::render(&engine.lock().await.status()) }
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
    let mut host_recheck = tokio::time::interval(if host_changes.is_some() {
        HOST_ADDRS_RECHECK
    } else {
        HOST_ADDRS_POLL
    });
    host_recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    host_recheck.tick().await; // read above
    loop {
        let deadline = engine.lock().await.next_deadline();
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
                let _ = engine.lock().await.reload(Trigger::Sighup);
                notify(&[sd_notify::NotifyState::Ready]);
            }
            Some(()) = recv(&mut policy_changes) => {
                let mut engine = engine.lock().await;
                let dir = engine.settings().policies.clone();
                let _ = engine.load(Trigger::FileChange, &dir);
            }
            Some(update) = cgroup_watcher.next() => engine.lock().await.on_tree(update),
            Some(()) = recv(&mut host_changes) => {
                status_changed = engine.lock().await.refresh_host_addrs();
            }
            _ = host_recheck.tick() => {
                status_changed = engine.lock().await.refresh_host_addrs();
            }
            _ = bound_rescan.tick() => {
                engine.lock().await.seed_bound_ports();
                status_changed = false;
            }
            _ = sleep => engine.lock().await.on_deadline(),
            _ = wake.notified() => {}
            else => status_changed = false,
        }
        if status_changed {
            let summary = engine.lock().await.summary();
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

/// Serves the local API from the engine.
struct ApiHandler {
    engine: Arc<tokio::sync::Mutex<Engine>>,
    flows: Arc<Mutex<FlowHistory>>,
    /// Wakes the main loop, whose deadlines may have changed.
    wake: Arc<Notify>,
}

impl crate::api::Handler for ApiHandler {
    async fn handle(&self, request: Request) -> Reply {
        match request {
            Request::Apply { dir, confirm_ms } => {
                let result = self
                    .engine
                    .lock()
                    .await
                    .apply(&dir, confirm_ms.map(Duration::from_millis));
                self.wake.notify_one();
                Reply::One(match result {
                    Ok(o) => Response::Applied {
                        generation: u64::from(o.generation),
                        content_hash: format!("{:016x}", o.content_hash),
                        unchanged: o.unchanged,
                        rollback_at: o.rollback_at.map(crate::rfc3339::format_millis),
                        warnings: o.warnings,
                    },
                    Err(errors) => Response::Rejected { errors },
                })
            }
            Request::Confirm => {
                let result = self.engine.lock().await.confirm();
                self.wake.notify_one();
                Reply::One(match result {
                    Ok(generation) => Response::Confirmed {
                        generation: u64::from(generation),
                    },
                    Err(message) => Response::Error { message },
                })
            }
            Request::Status => Reply::One(Response::Status(Box::new(
                self.engine.lock().await.status(),
            ))),
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
