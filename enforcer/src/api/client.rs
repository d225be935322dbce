//! The client side of the local API, used by `apply`, `confirm`, `status`
//! and `flows`. Blocking: every command makes one request.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

use super::proto::{Request, Response};

#[derive(Debug, Error)]
pub enum ClientError {
    /// No daemon listens there (`status` exits 3).
    #[error("no enforcer daemon answers on {path}: {source}")]
    NoDaemon {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("talking to the daemon on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the daemon sent an unreadable answer: {0}")]
    Protocol(String),
}

/// A connection to the daemon.
pub struct Client {
    path: PathBuf,
    writer: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Client {
    /// Connect to the daemon's socket.
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| ClientError::NoDaemon {
            path: path.to_path_buf(),
            source,
        })?;
        let io_err = |source| ClientError::Io {
            path: path.to_path_buf(),
            source,
        };
        let reader = BufReader::new(stream.try_clone().map_err(io_err)?);
        Ok(Client {
            path: path.to_path_buf(),
            writer: stream,
            reader,
        })
    }

    /// Give up on an answer after `timeout` (none by default: an `apply`
    /// of a large policy takes as long as it takes).
    pub fn set_timeout(&self, timeout: Option<Duration>) -> Result<(), ClientError> {
        self.reader
            .get_ref()
            .set_read_timeout(timeout)
            .map_err(|source| self.io(source))
    }

    fn io(&self, source: io::Error) -> ClientError {
        ClientError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Send a request.
    pub fn send(&mut self, request: &Request) -> Result<(), ClientError> {
        let mut line =
            serde_json::to_vec(request).map_err(|e| ClientError::Protocol(e.to_string()))?;
        line.push(b'\n');
        self.writer.write_all(&line).map_err(|e| self.io(e))
    }

    /// Read the next response; `None` when the daemon closed the connection.
    pub fn receive(&mut self) -> Result<Option<Response>, ClientError> {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).map_err(|e| self.io(e))?;
        if n == 0 {
            return Ok(None);
        }
        serde_json::from_str(line.trim_end())
            .map(Some)
            .map_err(|e| ClientError::Protocol(format!("{e}: {}", line.trim_end())))
    }

    /// Send a request and wait for its single response. When the send
    /// fails because the daemon already hung up, its last words (say, a
    /// refusal) are still read and returned.
    pub fn call(&mut self, request: &Request) -> Result<Response, ClientError> {
        let sent = self.send(request);
        match self.receive() {
            Ok(Some(response)) => Ok(response),
            Ok(None) => Err(sent.err().unwrap_or_else(|| {
                ClientError::Protocol("the daemon closed the connection without answering".into())
            })),
            Err(e) => Err(sent.err().unwrap_or(e)),
        }
    }
}
