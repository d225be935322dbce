//! The local API between the daemon and the `apply`, `confirm`, `status`
//! and `flows` commands: newline-delimited JSON over a unix socket, with
//! access limited to root and a configured group.

pub mod access;
pub mod client;
pub mod proto;
pub mod server;

pub use access::{Access, AccessError, resolve_group};
pub use client::{Client, ClientError};
pub use proto::{FlowRecord, Request, Response, StatusReport, Verdict};
pub use server::{Handler, Reply, Server, ServerError};

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;
    use std::sync::Arc;

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
                Request::Apply { dir, confirm_ms } => Reply::One(Response::Rejected {
                    errors: vec![format!("{}:{confirm_ms:?}", dir.display())],
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_and_streams_round_trip() {
        let path = socket_path("rt");
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
        let server = Arc::new(Server::bind(&path, Access::new(None)).await.unwrap());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        let serving = Arc::clone(&server);
        let task = tokio::spawn(async move { serving.serve(Arc::new(Echo)).await });

        let client_path = path.clone();
        tokio::task::spawn_blocking(move || {
            let mut client = Client::connect(&client_path).unwrap();
            assert_eq!(
                client.call(&Request::Confirm).unwrap(),
                Response::Confirmed { generation: 7 }
            );
            let apply = Request::Apply {
                dir: "/etc/p".into(),
                confirm_ms: Some(2000),
            };
            assert_eq!(
                client.call(&apply).unwrap(),
                Response::Rejected {
                    errors: vec!["/etc/p:Some(2000)".into()]
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

            let mut raw = std::os::unix::net::UnixStream::connect(&client_path).unwrap();
            raw.write_all(b"{\"request\":\"reboot\"}\n").unwrap();
            let mut answer = String::new();
            std::io::BufRead::read_line(&mut std::io::BufReader::new(raw), &mut answer).unwrap();
            assert!(answer.contains("malformed request"), "{answer}");
        })
        .await
        .unwrap();

        // A second daemon on the same socket is refused.
        assert!(matches!(
            Server::bind(&path, Access::new(None)).await,
            Err(ServerError::InUse(_))
        ));
        task.abort();
        let _ = task.await;
        drop(server);
        assert!(!path.exists(), "the socket file is removed with the server");
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
        let server = Server::bind(&path, Access::new(None)).await.unwrap();
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
        let parsed: Request =
            serde_json::from_str(r#"{"request":"apply","dir":"/etc/enforcer/policies"}"#).unwrap();
        assert_eq!(
            parsed,
            Request::Apply {
                dir: "/etc/enforcer/policies".into(),
                confirm_ms: None
            }
        );
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
