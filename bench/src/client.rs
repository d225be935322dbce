//! The measuring side: transactions until a deadline.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::IO_TIMEOUT;

/// What one measurement did.
pub(crate) struct Measurement {
    pub transactions: u64,
    pub elapsed: Duration,
}

fn connect(addr: SocketAddr) -> Result<TcpStream, String> {
    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_nodelay(true)
        .and_then(|()| stream.set_read_timeout(Some(IO_TIMEOUT)))
        .and_then(|()| stream.set_write_timeout(Some(IO_TIMEOUT)))
        .map_err(|e| format!("socket options: {e}"))?;
    Ok(stream)
}

fn transact(stream: &mut TcpStream, buf: &mut [u8]) -> Result<(), String> {
    stream.write_all(buf).map_err(|e| format!("send: {e}"))?;
    stream.read_exact(buf).map_err(|e| format!("receive: {e}"))
}

/// Request/response over one connection (TCP_RR).
pub(crate) fn rr(addr: SocketAddr, size: usize, duration: Duration) -> Result<Measurement, String> {
    let mut buf = vec![b'r'; size];
    let mut stream = connect(addr)?;
    let start = Instant::now();
    let mut transactions = 0;
    while start.elapsed() < duration {
        transact(&mut stream, &mut buf)
            .map_err(|e| format!("after {transactions} transactions: {e}"))?;
        transactions += 1;
    }
    Ok(Measurement {
        transactions,
        elapsed: start.elapsed(),
    })
}

/// Connect, one request/response, close (TCP_CRR).
pub(crate) fn crr(
    addr: SocketAddr,
    size: usize,
    duration: Duration,
) -> Result<Measurement, String> {
    let mut buf = vec![b'c'; size];
    let start = Instant::now();
    let mut transactions = 0;
    while start.elapsed() < duration {
        let mut stream =
            connect(addr).map_err(|e| format!("after {transactions} connections: {e}"))?;
        transact(&mut stream, &mut buf)
            .map_err(|e| format!("after {transactions} connections: {e}"))?;
        transactions += 1;
    }
    Ok(Measurement {
        transactions,
        elapsed: start.elapsed(),
    })
}

/// Prints the measurement as one JSON line, which the harness parses.
pub(crate) fn report(
    workload: &str,
    measurement: Result<Measurement, String>,
) -> Result<(), String> {
    let Measurement {
        transactions,
        elapsed,
    } = measurement?;
    let seconds = elapsed.as_secs_f64();
    let per_second = transactions as f64 / seconds;
    println!(
        r#"{{"workload":"{workload}","transactions":{transactions},"seconds":{seconds:.6},"per_second":{per_second:.3}}}"#
    );
    Ok(())
}
