//! The echo side: reads `size` bytes, answers `size` bytes, until the peer
//! closes.

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use crate::IO_TIMEOUT;

/// A few accepting threads, each serving its connections one after the
/// other: no thread is spawned per connection (that would dominate the
/// connection-rate benchmark), and a stuck connection blocks one thread for
/// at most [`IO_TIMEOUT`].
const WORKERS: usize = 4;

pub(crate) fn serve(addr: SocketAddr, size: usize, max_lifetime: Duration) -> Result<(), String> {
    let listener = TcpListener::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
    // Bounded lifetime: the server stops by itself even if whoever started
    // it is killed before it can stop it.
    std::thread::spawn(move || {
        std::thread::sleep(max_lifetime);
        std::process::exit(0);
    });
    // The harness waits for this line before starting clients.
    println!("listening {addr}");
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let listener = listener
            .try_clone()
            .map_err(|e| format!("clone listener: {e}"))?;
        workers.push(std::thread::spawn(move || accept_loop(&listener, size)));
    }
    for worker in workers {
        worker
            .join()
            .map_err(|_| "a server thread panicked".to_owned())??;
    }
    Ok(())
}

fn accept_loop(listener: &TcpListener, size: usize) -> Result<(), String> {
    let mut buf = vec![0u8; size];
    loop {
        match listener.accept() {
            // A single connection's failure (reset, timeout) is the client's
            // to report; the server keeps serving.
            Ok((stream, _)) => {
                let _ = echo(stream, &mut buf);
            }
            Err(e) if is_transient(&e) => continue,
            Err(e) => return Err(format!("accept: {e}")),
        }
    }
}

fn is_transient(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::Interrupted
    ) || e.raw_os_error() == Some(24) // EMFILE: retry once others closed
}

fn echo(mut stream: TcpStream, buf: &mut [u8]) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    loop {
        match stream.read_exact(buf) {
            Ok(()) => stream.write_all(buf)?,
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}
