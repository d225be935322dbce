//! The Prometheus endpoint (off unless `metrics = "ADDR:PORT"`): a minimal
//! HTTP/1.0 responder for `GET /metrics` in the text exposition format.
//! The body comes from the status board (`status.rs`), never from the
//! engine, so a scrape never waits for nor holds up a policy load. At most
//! [`MAX_SCRAPES`] connections are served at once, each for at most
//! [`SCRAPE_TIMEOUT`] per read and write: anyone who can reach the address
//! can connect.

use std::fmt::Write;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::api::StatusReport;

/// Connections served at once; more are closed at once.
pub const MAX_SCRAPES: usize = 16;
/// How long a scraper may take to send its request and to take the answer.
pub const SCRAPE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Escape a label value.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A metric's `# HELP` and `# TYPE` lines.
fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A metric of one value, without labels.
fn single(out: &mut String, (name, kind, help, value): (&str, &str, &str, u64)) {
    header(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

/// The metrics of a status report.
pub fn render(status: &StatusReport) -> String {
    let mut out = String::new();
    let generation = status.policy.as_ref().map_or(0, |p| p.generation);
    single(
        &mut out,
        (
            "enforcer_policy_generation",
            "gauge",
            "Generation of the policy in force (0: none).",
            generation,
        ),
    );
    header(
        &mut out,
        "enforcer_reloads_total",
        "counter",
        "Policy loads, by result.",
    );
    for (result, n) in [
        ("success", status.reloads_ok),
        ("failure", status.reloads_failed),
    ] {
        let _ = writeln!(out, "enforcer_reloads_total{{result=\"{result}\"}} {n}");
    }
    let discovery = &status.cgroup_discovery;
    for metric in [
        (
            "enforcer_events_lost_total",
            "counter",
            "Verdict events the kernel could not deliver.",
            status.lost_events,
        ),
        (
            "enforcer_not_enforced",
            "gauge",
            "Problems that keep a policy from being enforced as written.",
            status.not_enforced.len() as u64,
        ),
        (
            "enforcer_status_read_errors",
            "gauge",
            "Data plane reads that failed while this scrape was made (their values show as 0).",
            status.read_errors.len() as u64,
        ),
        (
            "enforcer_cgroups",
            "gauge",
            "Cgroups found under the cgroup root by the last scan.",
            discovery.cgroups,
        ),
    ] {
        single(&mut out, metric);
    }
    header(
        &mut out,
        "enforcer_cgroups_skipped",
        "gauge",
        "Directories under the cgroup root the last scan could not walk, by reason.",
    );
    for (reason, n) in discovery.skipped.by_reason() {
        let _ = writeln!(out, "enforcer_cgroups_skipped{{reason=\"{reason}\"}} {n}");
    }
    let registration = &status.cgroup_registration;
    for metric in [
        (
            "enforcer_cgroups_unwatched",
            "gauge",
            "Cgroups without an inotify watch (seen by periodic rescans only).",
            discovery.unwatched,
        ),
        (
            "enforcer_cgroup_rescans_failed_total",
            "counter",
            "Cgroup rescans that failed (the root unusable).",
            discovery.rescans_failed,
        ),
        (
            "enforcer_cgroup_registration_at_creation",
            "gauge",
            "1 when the kernel registers cgroups with their workload at their creation.",
            u64::from(registration.at_creation),
        ),
        (
            "enforcer_cgroups_registered_total",
            "counter",
            "Cgroups the kernel registered with their workload at their creation.",
            registration.registered,
        ),
        (
            "enforcer_cgroup_registrations_refused_total",
            "counter",
            "Cgroups left out because their workload was at its quota (max_cgroups_per_workload).",
            registration.refused,
        ),
        (
            "enforcer_cgroup_match_overflows_total",
            "counter",
            "Cgroups whose matching states did not fit the kernel's tables.",
            registration.overflows,
        ),
        (
            "enforcer_integrity_repairs_total",
            "counter",
            "Links re-attached and pins restored by the integrity check.",
            status.integrity.repairs,
        ),
        (
            "enforcer_integrity_unrepaired",
            "gauge",
            "1 while a link or pin found broken could not be repaired.",
            u64::from(!status.integrity.ok),
        ),
    ] {
        single(&mut out, metric);
    }
    header(
        &mut out,
        "enforcer_workload_cgroups",
        "gauge",
        "Cgroups matched by each workload.",
    );
    for w in &status.workloads {
        let _ = writeln!(
            out,
            "enforcer_workload_cgroups{{workload=\"{}\"}} {}",
            label(&w.name),
            w.cgroups.len()
        );
    }
    header(
        &mut out,
        "enforcer_packets_total",
        "counter",
        "Packets judged, by workload and verdict.",
    );
    for w in &status.workloads {
        for (verdict, n) in [
            ("allow", w.counters.allow),
            ("deny", w.counters.deny),
            ("audit", w.counters.audit),
        ] {
            let _ = writeln!(
                out,
                "enforcer_packets_total{{workload=\"{}\",verdict=\"{verdict}\"}} {n}",
                label(&w.name)
            );
        }
    }
    out
}

/// Serve `GET /metrics` on `addr`, with the body from `scrape` (`None`:
/// 503).
pub async fn serve<F, Fut>(addr: SocketAddr, scrape: F) -> std::io::Result<()>
where
    F: Fn() -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = Option<String>> + Send,
{
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(%addr, "metrics endpoint listening");
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPES));
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            // Out of descriptors, say: do not spin.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        let Ok(slot) = std::sync::Arc::clone(&slots).try_acquire_owned() else {
            continue;
        };
        let scrape = scrape.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut request = Vec::with_capacity(512);
            let mut buf = [0u8; 512];
            // Read the request head (bounded); the body of a GET is empty.
            while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
                match tokio::time::timeout(SCRAPE_TIMEOUT, stream.read(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => request.extend_from_slice(&buf[..n]),
                    _ => break,
                }
            }
            let head = String::from_utf8_lossy(&request);
            let path = head.split_whitespace().nth(1).unwrap_or("");
            let response = if head.starts_with("GET ")
                && (path == "/metrics" || path.starts_with("/metrics?"))
            {
                match scrape().await {
                    Some(body) => format!(
                        "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    ),
                    None => "HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        .to_owned(),
                }
            } else {
                "HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_owned()
            };
            let _ =
                tokio::time::timeout(SCRAPE_TIMEOUT, stream.write_all(response.as_bytes())).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::proto::{
        CgroupDiscovery, PolicyStatus, SkippedCgroups, VerdictCounters, WorkloadStatus,
    };

    fn status() -> StatusReport {
        StatusReport {
            pid: 1,
            version: "0".into(),
            started_at: String::new(),
            policy: Some(PolicyStatus {
                generation: 4,
                content_hash: "00".into(),
                applied_at: String::new(),
                source: String::new(),
                next_expiry: None,
                rollback_at: None,
                origin: None,
            }),
            last_rejection: None,
            cgroup_root: String::new(),
            unmanaged: "allow".into(),
            failsafe: "22/tcp".into(),
            workloads: vec![WorkloadStatus {
                name: "web".into(),
                identity: 16,
                mode: "enforce".into(),
                selector: String::new(),
                cgroups: vec!["a".into()],
                counters: VerdictCounters {
                    allow: 5,
                    deny: 2,
                    audit: 0,
                },
            }],
            lost_events: 3,
            reloads_ok: 7,
            reloads_failed: 1,
            not_enforced: Vec::new(),
            integrity: crate::api::IntegrityStatus {
                ok: false,
                repairs: 2,
                last: None,
                problems: vec!["link pin cgroup/connect4 cannot be restored".into()],
            },
            cgroup_registration: crate::api::proto::CgroupRegistration {
                at_creation: true,
                registered: 40,
                refused: 3,
                overflows: 1,
            },
            cgroup_discovery: CgroupDiscovery {
                cgroups: 12,
                skipped: SkippedCgroups {
                    unreadable: 2,
                    depth_limit: 1,
                    ..SkippedCgroups::default()
                },
                rescans_failed: 5,
                ..CgroupDiscovery::default()
            },
            read_errors: vec!["verdict counters: 3 lookups failed, shown as 0: x".into()],
        }
    }

    #[test]
    fn renders_the_exposition_format() {
        let text = render(&status());
        assert!(text.contains("enforcer_policy_generation 4\n"));
        assert!(text.contains("enforcer_reloads_total{result=\"failure\"} 1\n"));
        assert!(text.contains("enforcer_packets_total{workload=\"web\",verdict=\"deny\"} 2\n"));
        assert!(text.contains("enforcer_events_lost_total 3\n"));
        assert!(text.contains("enforcer_cgroups 12\n"));
        assert!(text.contains("enforcer_cgroups_skipped{reason=\"unreadable\"} 2\n"));
        assert!(text.contains("enforcer_cgroups_skipped{reason=\"depth_limit\"} 1\n"));
        assert!(text.contains("enforcer_cgroups_skipped{reason=\"vanished\"} 0\n"));
        assert!(text.contains("enforcer_cgroups_unwatched 0\n"));
        assert!(text.contains("enforcer_cgroup_rescans_failed_total 5\n"));
        assert!(text.contains("enforcer_integrity_repairs_total 2\n"));
        assert!(text.contains("enforcer_cgroup_registration_at_creation 1\n"));
        assert!(text.contains("enforcer_cgroups_registered_total 40\n"));
        assert!(text.contains("enforcer_cgroup_registrations_refused_total 3\n"));
        assert!(text.contains("enforcer_cgroup_match_overflows_total 1\n"));
        assert!(text.contains("enforcer_integrity_unrepaired 1\n"));
        assert!(text.contains("enforcer_status_read_errors 1\n"));
        assert_eq!(label("a\"b"), "a\\\"b");
    }

    #[tokio::test]
    async fn answers_get_metrics_over_http() {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        let task = tokio::spawn(serve(addr, || async { Some(render(&status())) }));
        let mut answer = String::new();
        for _ in 0..50 {
            if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
                s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                    .await
                    .unwrap();
                s.read_to_string(&mut answer).await.unwrap();
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(answer.starts_with("HTTP/1.0 200 OK"), "{answer}");
        assert!(answer.contains("enforcer_reloads_total{result=\"success\"} 7"));
        task.abort();
    }
}
