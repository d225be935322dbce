//! The local API between the daemon and the `apply`, `confirm`, `status`
//! and `flows` commands: newline-delimited JSON over a unix socket, with
//! two roles (read, admin) given by the client's credentials, and limits on
//! what one client can cost.

pub mod access;
pub mod client;
pub mod limits;
pub mod proto;
pub mod server;

pub use access::{Access, AccessError, Group, Role, resolve_group};
pub use client::{Client, ClientError};
pub use limits::Limits;
pub use proto::{
    FlowRecord, IntegrityRepair, IntegrityStatus, PolicyFile, Request, Response, StatusReport,
    Verdict,
};
pub use server::{Handler, Reply, Server, ServerError};

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::net::UnixStream;
    use std::path::PathBuf;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use tokio::sync::mpsc;

    use super::proto::VerdictCounters;
    use super::*;

    /// Answers `confirm` with a fixed generation and `flows` with two
    /// records filtered by verdict, so the tests see real request data
    /// travel both ways.
    struct Echo;

    fn record(verdict: Verdict) -> FlowRecord {
        FlowRecord {
            time: "2026-11-29T10:00:00.123Z".into(),
            workload: "api".into(),
            direction: "egress".into(),
            protocol: "tcp".into(),
            local: "198.51.100.1:40512".into(),
            remote: "198.51.100.17:443".into(),
            peer: "vendor-support".into(),
            verdict,
            rule: "default deny".into(),
        }
    }

    impl Handler for Echo {
        async fn handle(&self, request: Request) -> Reply {
            match request {
                Request::Confirm => Reply::One(Response::Confirmed { generation: 7 }),
                Request::Apply {
                    source,
                    files,
                    confirm_ms,
                    allow_empty,
                } => Reply::One(Response::Rejected {
                    errors: files
                        .iter()
                        .map(|f| {
                            format!(
                                "{source}/{}:{}:{confirm_ms:?}:{allow_empty}",
                                f.name,
                                f.text.len()
                            )
                        })
                        .collect(),
                }),
                Request::Flows { verdict, .. } => {
                    let (tx, rx) = mpsc::channel(4);
                    tokio::spawn(async move {
                        for v in [Verdict::Deny, Verdict::Audit] {
                            if verdict.is_none_or(|want| want == v) {
                                let _ = tx.send(Response::Flow(record(v))).await;
                            }
                        }
                        let _ = tx.send(Response::End).await;
                    });
                    Reply::Stream(rx)
                }
                Request::Status => Reply::One(Response::Error {
                    message: "no status here".into(),
                }),
            }
        }
    }

    fn socket_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("enforcer-api-{name}-{}/d.sock", std::process::id()))
    }

    /// A server of [`Echo`] on a fresh socket with `limits`; the task
    /// serving it, and the path.
    async fn echo_server(
        name: &str,
        limits: Limits,
    ) -> (Arc<Server>, tokio::task::JoinHandle<()>, PathBuf) {
        let path = socket_path(name);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
        let server = Arc::new(
            Server::bind(&path, Access::new(None, None), limits)
                .await
                .unwrap(),
        );
        let serving = Arc::clone(&server);
        let task = tokio::spawn(async move { serving.serve(Arc::new(Echo)).await });
        (server, task, path)
    }

    fn read_answer(stream: &UnixStream) -> String {
        let mut answer = String::new();
        BufReader::new(stream).read_line(&mut answer).unwrap();
        answer
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_and_streams_round_trip() {
        let (server, task, path) = echo_server("rt", Limits::default()).await;
        // No group configured: only root and the owner may connect.
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        let client_path = path.clone();
        tokio::task::spawn_blocking(move || {
            let mut client = Client::connect(&client_path).unwrap();
            assert_eq!(
                client.call(&Request::Confirm).unwrap(),
                Response::Confirmed { generation: 7 }
            );
            let apply = Request::Apply {
                source: "/etc/p".into(),
                files: vec![PolicyFile {
                    name: "a.toml".into(),
                    text: "x = \"\\n\"\n".into(),
                }],
                confirm_ms: Some(2000),
                allow_empty: true,
            };
            assert_eq!(
                client.call(&apply).unwrap(),
                Response::Rejected {
                    errors: vec!["/etc/p/a.toml:9:Some(2000):true".into()]
                }
            );
            client
                .send(&Request::Flows {
                    follow: false,
                    workload: None,
                    verdict: Some(Verdict::Audit),
                })
                .unwrap();
            assert_eq!(
                client.receive().unwrap(),
                Some(Response::Flow(record(Verdict::Audit)))
            );
            assert_eq!(client.receive().unwrap(), Some(Response::End));
            // The connection still serves requests after a stream.
            assert!(matches!(
                client.call(&Request::Status).unwrap(),
                Response::Error { .. }
            ));

            let mut raw = UnixStream::connect(&client_path).unwrap();
            raw.write_all(b"{\"request\":\"reboot\"}\n").unwrap();
            let answer = read_answer(&raw);
            assert!(answer.contains("malformed request"), "{answer}");
            // The apply of earlier versions, which named a directory.
            raw.write_all(b"{\"request\":\"apply\",\"dir\":\"/etc/enforcer/policies\"}\n")
                .unwrap();
            let answer = read_answer(&raw);
            assert!(answer.contains("does not open paths"), "{answer}");
        })
        .await
        .unwrap();

        // A second daemon on the same socket is refused.
        assert!(matches!(
            Server::bind(&path, Access::new(None, None), Limits::default()).await,
            Err(ServerError::InUse(_))
        ));
        task.abort();
        let _ = task.await;
        drop(server);
        assert!(!path.exists(), "the socket file is removed with the server");
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_slow_and_oversized_clients_are_cut_off() {
        let limits = Limits {
            idle_timeout: Duration::from_millis(300),
            request_timeout: Duration::from_millis(300),
            ..Limits::default()
        };
        let (server, task, path) = echo_server("limits", limits).await;
        let client_path = path.clone();
        tokio::task::spawn_blocking(move || {
            // Idle: closed with a reason after the idle timeout.
            let idle = UnixStream::connect(&client_path).unwrap();
            let started = Instant::now();
            let answer = read_answer(&idle);
            assert!(answer.contains("no request for 0.3 s"), "{answer}");
            assert!(started.elapsed() >= Duration::from_millis(250));
            assert!(started.elapsed() < Duration::from_secs(3));
            assert_eq!(read_answer(&idle), "", "then closed");

            // A request begun but never finished: cut off as well.
            let mut slow = UnixStream::connect(&client_path).unwrap();
            slow.write_all(b"{\"request\":").unwrap();
            let answer = read_answer(&slow);
            assert!(answer.contains("not complete"), "{answer}");

            // A request line longer than the role allows (root is admin:
            // the policy set's limit, doubled for escaping, and a margin).
            let mut long = UnixStream::connect(&client_path).unwrap();
            long.set_write_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let chunk = vec![b' '; 1 << 20];
            let mut sent = 0;
            let max = limits::max_request_bytes(Role::Admin);
            while sent <= max {
                match long.write(&chunk) {
                    Ok(n) => sent += n,
                    Err(_) => break,
                }
            }
            let answer = read_answer(&long);
            assert!(answer.contains("request too long"), "{answer}");

            // A client that does not read its answers: the daemon gives up
            // writing after the request timeout instead of blocking.
            let mut deaf = UnixStream::connect(&client_path).unwrap();
            let requests = b"{\"request\":\"confirm\"}\n".repeat(50_000);
            deaf.set_write_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let started = Instant::now();
            let _ = deaf.write_all(&requests);
            assert!(
                started.elapsed() < Duration::from_secs(4),
                "the daemon kept the connection while blocked on its answers"
            );
            let mut drained = Vec::new();
            deaf.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            // What was buffered, then the end (or a reset): closed.
            if let Err(e) = deaf.read_to_end(&mut drained) {
                assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
            }

            // Others are still served.
            let mut client = Client::connect(&client_path).unwrap();
            assert_eq!(
                client.call(&Request::Confirm).unwrap(),
                Response::Confirmed { generation: 7 }
            );
        })
        .await
        .unwrap();
        task.abort();
        let _ = task.await;
        drop(server);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced_and_a_missing_daemon_is_reported() {
        let path = socket_path("stale");
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        // A socket file nobody listens on, as left by `kill -9`.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(matches!(
            Client::connect(&path),
            Err(ClientError::NoDaemon { .. })
        ));
        let server = Server::bind(&path, Access::new(None, None), Limits::default())
            .await
            .unwrap();
        drop(server);
        assert!(matches!(
            Client::connect(&path),
            Err(ClientError::NoDaemon { .. })
        ));
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn the_wire_format_is_tagged_json() {
        let request = Request::Flows {
            follow: true,
            workload: Some("db".into()),
            verdict: Some(Verdict::Deny),
        };
        assert_eq!(
            serde_json::to_string(&request).unwrap(),
            r#"{"request":"flows","follow":true,"workload":"db","verdict":"deny"}"#
        );
        let parsed = Request::from_line(
            r#"{"request":"apply","source":"/etc/enforcer/policies","files":[{"name":"a.toml","text":"x"}]}"#,
        )
        .unwrap();
        assert_eq!(
            parsed,
            Request::Apply {
                source: "/etc/enforcer/policies".into(),
                files: vec![PolicyFile {
                    name: "a.toml".into(),
                    text: "x".into()
                }],
                confirm_ms: None,
                allow_empty: false,
            }
        );
        assert_eq!(parsed.needs(), Role::Admin);
        assert_eq!(Request::Status.needs(), Role::Read);
        assert_eq!(Request::Confirm.needs(), Role::Admin);
        let flow = serde_json::to_value(Response::Flow(record(Verdict::Deny))).unwrap();
        assert_eq!(flow["response"], "flow");
        assert_eq!(flow["verdict"], "deny");
        assert_eq!(flow["peer"], "vendor-support");
        let counters = serde_json::to_value(VerdictCounters {
            allow: 1,
            deny: 2,
            audit: 3,
        })
        .unwrap();
        assert_eq!(
            counters,
            serde_json::json!({"allow": 1, "deny": 2, "audit": 3})
        );
    }
}
