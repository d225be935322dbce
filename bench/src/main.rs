//! `enforcer-loadgen`: the request/response load generator of the
//! end-to-end benchmarks (`cargo xtask bench`).
//!
//! ```text
//! enforcer-loadgen server --listen ADDR:PORT [--size N] [--max-seconds S]
//! enforcer-loadgen rr     --connect ADDR:PORT [--size N] --seconds S
//! enforcer-loadgen crr    --connect ADDR:PORT [--size N] --seconds S
//! ```
//!
//! `rr` (like netperf's TCP_RR) sends `size`-byte requests over one TCP
//! connection and waits for each `size`-byte response; `crr` (TCP_CRR) opens
//! a new connection for every transaction. Both stop after `seconds` and
//! print one JSON line with the transaction count and rate. The server
//! answers both and exits by itself after `max-seconds`.

mod client;
mod server;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

/// How the client and the server wait for a peer at most: a filtered or lost
/// packet fails the measurement instead of hanging it.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);

struct Options {
    addr: Option<SocketAddr>,
    size: usize,
    seconds: f64,
    max_seconds: f64,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut options = Options {
        addr: None,
        size: 1,
        seconds: 0.0,
        max_seconds: 3600.0,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--listen" | "--connect" => options.addr = Some(value.parse().map_err(|e| bad(&e))?),
            "--size" => options.size = value.parse().map_err(|e| bad(&e))?,
            "--seconds" => options.seconds = value.parse().map_err(|e| bad(&e))?,
            "--max-seconds" => options.max_seconds = value.parse().map_err(|e| bad(&e))?,
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    if options.size == 0 {
        return Err("--size must be at least 1".to_owned());
    }
    Ok(options)
}

fn run(args: &[String]) -> Result<(), String> {
    let (mode, rest) = args
        .split_first()
        .ok_or("usage: enforcer-loadgen server|rr|crr OPTIONS")?;
    let options = parse(rest)?;
    let addr = options
        .addr
        .ok_or("an address is required (--listen/--connect)")?;
    let seconds = || {
        if options.seconds > 0.0 && options.seconds <= 600.0 {
            Ok(Duration::from_secs_f64(options.seconds))
        } else {
            Err("--seconds must be in (0, 600]".to_owned())
        }
    };
    match mode.as_str() {
        "server" => {
            if !(options.max_seconds > 0.0 && options.max_seconds <= 86_400.0) {
                return Err("--max-seconds must be in (0, 86400]".to_owned());
            }
            server::serve(
                addr,
                options.size,
                Duration::from_secs_f64(options.max_seconds),
            )
        }
        "rr" => client::report("tcp_rr", client::rr(addr, options.size, seconds()?)),
        "crr" => client::report("tcp_crr", client::crr(addr, options.size, seconds()?)),
        other => Err(format!("unknown mode {other} (server, rr, crr)")),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("enforcer-loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}
