//! The daemon side of the local API: a unix socket server speaking
//! newline-delimited JSON.

use std::future::Future;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

use super::access::{Access, Peer, supplementary_groups};
use super::proto::{Request, Response};

/// The longest request line accepted; a policy path is far shorter.
const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// What a handler answers: one response, or a stream of them (for `flows`)
/// that ends when the sender is dropped.
pub enum Reply {
    One(Response),
    Stream(mpsc::Receiver<Response>),
}

/// Serves requests. Implemented by the daemon (and by test doubles).
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
    #[error("cannot set owner and mode of {path}")]
    Permissions {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A bound socket; the file is removed when the server is dropped.
pub struct Server {
    listener: UnixListener,
    path: PathBuf,
    access: Access,
}

impl Server {
    /// Bind `path` (mode 0660, group `access.group`). A stale socket left by
    /// a killed daemon is replaced; a live one is an error.
    pub async fn bind(path: &Path, access: Access) -> Result<Server, ServerError> {
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
        let perms = |source| ServerError::Permissions {
            path: path.to_path_buf(),
            source,
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(perms)?;
        if let Some(gid) = access.group {
            std::os::unix::fs::chown(path, None, Some(gid)).map_err(perms)?;
        }
        Ok(Server {
            listener,
            path: path.to_path_buf(),
            access,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accept connections forever, each served by its own task.
    pub async fn serve<H: Handler>(&self, handler: Arc<H>) {
        loop {
            let stream = match self.listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "accept on the API socket failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
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
            let admitted = self.access.admits(peer, || {
                peer.pid.map(supplementary_groups).unwrap_or_default()
            });
            if !admitted {
                tracing::warn!(uid = peer.uid, gid = peer.gid, pid = ?peer.pid, "refused an API client");
                tokio::spawn(refuse(stream));
                continue;
            }
            let handler = Arc::clone(&handler);
            tokio::spawn(async move {
                if let Err(e) = serve_connection(stream, handler).await {
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

async fn refuse(mut stream: UnixStream) {
    let _ = write_response(
        &mut stream,
        &Response::Error {
            message: "permission denied: not root and not in the socket group".into(),
        },
    )
    .await;
}

async fn write_response<W: AsyncWriteExt + Unpin>(
    w: &mut W,
    response: &Response,
) -> io::Result<()> {
    let mut line = serde_json::to_vec(response).map_err(io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line).await?;
    w.flush().await
}

async fn serve_connection<H: Handler>(stream: UnixStream, handler: Arc<H>) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    let mut line = String::new();
    loop {
        line.clear();
        let n = (&mut lines)
            .take(MAX_REQUEST_BYTES as u64)
            .read_line(&mut line)
            .await?;
        if n == 0 {
            return Ok(());
        }
        if !line.ends_with('\n') && n >= MAX_REQUEST_BYTES {
            write_response(
                &mut write,
                &Response::Error {
                    message: "request too long".into(),
                },
            )
            .await?;
            return Ok(());
        }
        if line.trim().is_empty() {
            continue;
        }
        let request: Request = match serde_json::from_str(line.trim()) {
            Ok(r) => r,
            Err(e) => {
                write_response(
                    &mut write,
                    &Response::Error {
                        message: format!("malformed request: {e}"),
                    },
                )
                .await?;
                continue;
            }
        };
        match handler.handle(request).await {
            Reply::One(response) => write_response(&mut write, &response).await?,
            Reply::Stream(mut rx) => loop {
                // Stop streaming as soon as the client hangs up, even when
                // no event comes (`flows --follow` on a quiet host).
                tokio::select! {
                    item = rx.recv() => match item {
                        Some(response) => write_response(&mut write, &response).await?,
                        None => break,
                    },
                    _ = peer_closed(&mut lines) => return Ok(()),
                }
            },
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
