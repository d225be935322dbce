//! The daemon side of the local API: a unix socket server speaking
//! newline-delimited JSON, with the access rule of [`super::access`] and the
//! limits of [`super::limits`] applied to every connection.

use std::future::Future;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

use super::access::{Access, Peer, Role, SocketGate, gate_socket, peer_groups};
use super::limits::{Claimant, Limits, Slot, Slots, max_request_bytes};
use super::proto::{Request, Response};

/// What a handler answers: one response, or a stream of them (for `flows`)
/// that ends when the sender is dropped.
pub enum Reply {
    One(Response),
    Stream(mpsc::Receiver<Response>),
}

/// Serves requests. Implemented by the daemon (and by test doubles). The
/// server has checked the client's role before a request gets here.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, request: Request) -> impl Future<Output = Reply> + Send;
}

#[derive(Debug, Error)]
pub enum ServerError {
    #[error("another daemon already answers on {0}")]
    InUse(PathBuf),
    #[error("cannot create the socket directory {path}")]
    Directory {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot bind {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot set the permissions of {path}")]
    Permissions {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// How often a refusal or an accept failure is logged at most: a flood
/// must not flood the journal too.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// A bound socket; the file is removed when the server is dropped.
pub struct Server {
    listener: UnixListener,
    path: PathBuf,
    access: Access,
    limits: Limits,
    slots: Arc<Slots>,
    gate: SocketGate,
}

impl Server {
    /// Bind `path` and open it to the configured groups (see
    /// [`gate_socket`]). A stale socket left by a killed daemon is
    /// replaced; a live one is an error.
    pub async fn bind(path: &Path, access: Access, limits: Limits) -> Result<Server, ServerError> {
        if let Some(parent) = path.parent()
            && !parent.exists()
        {
            std::fs::create_dir_all(parent).map_err(|source| ServerError::Directory {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        if path.exists() {
            if UnixStream::connect(path).await.is_ok() {
                return Err(ServerError::InUse(path.to_path_buf()));
            }
            let _ = std::fs::remove_file(path);
        }
        let listener = UnixListener::bind(path).map_err(|source| ServerError::Bind {
            path: path.to_path_buf(),
            source,
        })?;
        let gate = gate_socket(path, &access.socket_gids()).map_err(|source| {
            let _ = std::fs::remove_file(path);
            ServerError::Permissions {
                path: path.to_path_buf(),
                source,
            }
        })?;
        if gate == SocketGate::Open {
            tracing::warn!(socket = %path.display(), "the socket's filesystem has no POSIX ACLs: the socket is mode 0666 and the peer credential check alone admits clients");
        }
        Ok(Server {
            listener,
            path: path.to_path_buf(),
            access,
            limits,
            slots: Slots::new(limits),
            gate,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How the socket file admits the groups.
    pub fn gate(&self) -> SocketGate {
        self.gate
    }

    /// Accept connections forever, each served by its own task.
    pub async fn serve<H: Handler>(&self, handler: Arc<H>) {
        let mut accept_failures = Throttle::default();
        let mut refusals = Throttle::default();
        loop {
            let stream = match self.listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors (EMFILE, ENFILE) or memory: the
                    // connection waits in the backlog. Pause rather than
                    // spin; idle timeouts give descriptors back.
                    accept_failures.log(|skipped| {
                        tracing::warn!(error = %e, skipped, "accept on the API socket failed; retrying");
                    });
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(cred) = stream.peer_cred() else {
                continue;
            };
            let peer = Peer {
                uid: cred.uid(),
                gid: cred.gid(),
                pid: cred.pid(),
            };
            let role = self.access.role_of(peer, || {
                peer_groups(stream.as_fd()).unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "cannot read an API client's groups; refusing it");
                    Vec::new()
                })
            });
            let Some(role) = role else {
                refusals.log(|skipped| tracing::warn!(uid = peer.uid, gid = peer.gid, pid = ?peer.pid, skipped, "refused an API client"));
                refuse(&stream, &self.access.refusal(peer));
                continue;
            };
            let claimant = if self.access.is_privileged(peer.uid) {
                Claimant::Privileged
            } else {
                Claimant::User {
                    uid: peer.uid,
                    role,
                }
            };
            let slot = match self.slots.take(claimant) {
                Ok(slot) => slot,
                Err(full) => {
                    refusals.log(|skipped| tracing::warn!(uid = peer.uid, pid = ?peer.pid, skipped, "refused an API client: {full}"));
                    refuse(&stream, &full.to_string());
                    continue;
                }
            };
            let handler = Arc::clone(&handler);
            let connection = Connection {
                role,
                limits: self.limits,
                access: self.access.clone(),
                _slot: slot,
            };
            tokio::spawn(async move {
                if let Err(e) = connection.serve(stream, handler).await {
                    tracing::debug!(error = %e, "API connection ended");
                }
            });
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Logs the first of a burst of events at once, then at most one line per
/// [`LOG_EVERY`] with the number skipped.
#[derive(Default)]
struct Throttle {
    last: Option<Instant>,
    skipped: u64,
}

impl Throttle {
    fn log(&mut self, emit: impl FnOnce(u64)) {
        if self.last.is_some_and(|at| at.elapsed() < LOG_EVERY) {
            self.skipped += 1;
            return;
        }
        emit(self.skipped);
        self.last = Some(Instant::now());
        self.skipped = 0;
    }
}

/// Tells a client it is not served, without waiting for it: one short line
/// fits the socket's buffer, and a client that does not read loses it.
fn refuse(stream: &UnixStream, message: &str) {
    let Ok(mut line) = serde_json::to_vec(&Response::Error {
        message: message.to_owned(),
    }) else {
        return;
    };
    line.push(b'\n');
    let _ = stream.try_write(&line);
}

/// Writes one response, giving up after `within` (a client that does not
/// read its answers).
async fn write_response<W: AsyncWriteExt + Unpin>(
    w: &mut W,
    response: &Response,
    within: Duration,
) -> io::Result<()> {
    let mut line = serde_json::to_vec(response).map_err(io::Error::other)?;
    line.push(b'\n');
    let write = async {
        w.write_all(&line).await?;
        w.flush().await
    };
    match tokio::time::timeout(within, write).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client did not take its answer",
        )),
    }
}

/// One admitted connection.
struct Connection {
    role: Role,
    limits: Limits,
    access: Access,
    /// Given back when the connection ends.
    _slot: Slot,
}

/// How a request line arrived.
enum Line {
    Complete,
    /// The client closed the connection.
    Closed,
    Idle,
    TooSlow,
    TooLong,
}

impl Connection {
    /// Reads the next request line into `line`, within the limits.
    async fn read_line<R: tokio::io::AsyncRead + Unpin>(
        &self,
        reader: &mut BufReader<R>,
        line: &mut Vec<u8>,
    ) -> io::Result<Line> {
        line.clear();
        // Idle until the first byte of a request.
        match tokio::time::timeout(self.limits.idle_timeout, reader.fill_buf()).await {
            Err(_) => return Ok(Line::Idle),
            Ok(Err(e)) => return Err(e),
            Ok(Ok([])) => return Ok(Line::Closed),
            Ok(Ok(_)) => {}
        }
        let max = max_request_bytes(self.role);
        let mut bounded = (&mut *reader).take(max as u64);
        let read = bounded.read_until(b'\n', line);
        match tokio::time::timeout(self.limits.request_timeout, read).await {
            Err(_) => Ok(Line::TooSlow),
            Ok(Err(e)) => Err(e),
            Ok(Ok(_)) if !line.ends_with(b"\n") && line.len() >= max => Ok(Line::TooLong),
            // A last line without its newline is still a request.
            Ok(Ok(_)) => Ok(Line::Complete),
        }
    }

    async fn serve<H: Handler>(self, stream: UnixStream, handler: Arc<H>) -> io::Result<()> {
        let (read, mut write) = stream.into_split();
        let mut reader = BufReader::new(read);
        let within = self.limits.request_timeout;
        let mut line = Vec::new();
        loop {
            let last_words = match self.read_line(&mut reader, &mut line).await? {
                Line::Complete => None,
                Line::Closed => return Ok(()),
                Line::Idle => Some(format!(
                    "closing the connection: no request for {} s",
                    self.limits.idle_timeout.as_secs_f64()
                )),
                Line::TooSlow => Some(format!(
                    "closing the connection: the request was not complete {} s after it began",
                    within.as_secs_f64()
                )),
                Line::TooLong => Some(match self.role {
                    Role::Read => format!(
                        "request too long: this client may send at most {} bytes (role read: \
                         status, flows); apply and confirm need root or the admin group",
                        max_request_bytes(self.role)
                    ),
                    Role::Admin => format!(
                        "request too long: at most {} bytes",
                        max_request_bytes(self.role)
                    ),
                }),
            };
            if let Some(message) = last_words {
                let _ = write_response(&mut write, &Response::Error { message }, within).await;
                return Ok(());
            }
            let request = match std::str::from_utf8(&line) {
                Ok(text) if text.trim().is_empty() => continue,
                Ok(text) => Request::from_line(text.trim()),
                Err(_) => Err("malformed request: not UTF-8".to_owned()),
            };
            // A large apply's buffer is not kept for the next request.
            line = Vec::new();
            let request = match request {
                Ok(request) if request.needs() > self.role => {
                    Err(self.access.not_allowed(request.name(), self.role))
                }
                other => other,
            };
            let request = match request {
                Ok(request) => request,
                Err(message) => {
                    write_response(&mut write, &Response::Error { message }, within).await?;
                    continue;
                }
            };
            match handler.handle(request).await {
                Reply::One(response) => write_response(&mut write, &response, within).await?,
                Reply::Stream(mut rx) => loop {
                    // Stop streaming as soon as the client hangs up, even
                    // when no event comes (`flows --follow` on a quiet host).
                    tokio::select! {
                        item = rx.recv() => match item {
                            Some(response) => write_response(&mut write, &response, within).await?,
                            None => break,
                        },
                        _ = peer_closed(&mut reader) => return Ok(()),
                    }
                },
            }
        }
    }
}

/// Completes when the peer closes its end (reads return EOF). Data sent
/// while a stream is running is not expected and is discarded.
async fn peer_closed<R: tokio::io::AsyncRead + Unpin>(r: &mut BufReader<R>) {
    let mut buf = [0u8; 256];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => continue,
        }
    }
}
