//! `probe`: makes one real connection (or serves them) and says what
//! happened in one line of JSON, for the root-only integration tests.
//!
//! ```text
//! probe tcp-listen ADDR:PORT [SERVER OPTIONS]     echo server; prints "ready ADDR:PORT"
//! probe udp-listen ADDR:PORT [SERVER OPTIONS]     echo server; prints "ready ADDR:PORT"
//! probe tcp-connect ADDR:PORT [--timeout-ms N] [--bind ADDR:PORT] [--send TEXT] [--connect-only]
//! probe udp-send ADDR:PORT [--timeout-ms N] [--bind ADDR:PORT] [--send TEXT] [--connect]
//! probe ping ADDR [--timeout-ms N] [--bind ADDR]
//! probe tcp-hold ADDR:PORT [--timeout-ms N] [--bind ADDR:PORT] [--interval-ms N] [--count N]
//!
//! SERVER OPTIONS: --exit-on-stdin-eof  --lifetime-ms N (default 1800000; 0 = forever)
//! ```
//!
//! Clients print `{"result":"ok"|"eperm"|"timeout"|"refused"|"error",
//! "errno":N,"elapsed_ms":N,...}` and exit 0 (ok), 1 (error), 2 (eperm),
//! 3 (timeout) or 4 (refused); 64 on a usage error. `tcp-hold` connects,
//! prints one such line with `"event":"connect"`, then exchanges one
//! numbered message per stdin line (or every `--interval-ms`) and prints a
//! line with `"event":"exchange","seq":N` for each, until stdin closes or
//! `--count` exchanges are done.
//!
//! Every wait is bounded by `--timeout-ms` (default 1000).

mod icmp;
mod net;
mod report;

use std::{
    io::{self, BufRead, Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    process::ExitCode,
    thread,
    time::{Duration, Instant},
};

use net::{bind, connect, family, local_addr, recv_from, send_all, send_to, set_reuseaddr, socket};
use report::{Fields, Outcome, Verdict, print};

const USAGE: &str = "usage: probe (tcp-listen|udp-listen|tcp-connect|udp-send|tcp-hold) ADDR:PORT [options]\n       probe ping ADDR [options]\n(see the source's header for the options)";
const DEFAULT_TIMEOUT_MS: u64 = 1000;
const DEFAULT_LIFETIME_MS: u64 = 30 * 60 * 1000;
const DEFAULT_PAYLOAD: &str = "enforcer-probe";

/// Parsed command line.
struct Args {
    command: String,
    target: String,
    timeout: Duration,
    bind: Option<SocketAddr>,
    send: String,
    connect_only: bool,
    udp_connect: bool,
    interval: Option<Duration>,
    count: Option<u64>,
    exit_on_stdin_eof: bool,
    lifetime: Option<Duration>,
}

fn parse_args(mut argv: impl Iterator<Item = String>) -> Result<Args, String> {
    let command = argv.next().ok_or("missing command")?;
    let target = argv.next().ok_or("missing address")?;
    let mut args = Args {
        command,
        target,
        timeout: Duration::from_millis(DEFAULT_TIMEOUT_MS),
        bind: None,
        send: DEFAULT_PAYLOAD.to_owned(),
        connect_only: false,
        udp_connect: false,
        interval: None,
        count: None,
        exit_on_stdin_eof: false,
        lifetime: Some(Duration::from_millis(DEFAULT_LIFETIME_MS)),
    };
    while let Some(flag) = argv.next() {
        let mut value = || argv.next().ok_or(format!("{flag} needs a value"));
        let millis = |v: String| {
            v.parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|_| format!("{flag}: not a number of milliseconds: {v}"))
        };
        match flag.as_str() {
            "--timeout-ms" => args.timeout = millis(value()?)?,
            "--bind" => args.bind = Some(parse_bind(&value()?)?),
            "--send" => args.send = value()?,
            "--connect-only" => args.connect_only = true,
            "--connect" => args.udp_connect = true,
            "--interval-ms" => args.interval = Some(millis(value()?)?),
            "--count" => {
                let v = value()?;
                args.count = Some(
                    v.parse()
                        .map_err(|_| format!("--count: not a number: {v}"))?,
                );
            }
            "--exit-on-stdin-eof" => args.exit_on_stdin_eof = true,
            "--lifetime-ms" => {
                let d = millis(value()?)?;
                args.lifetime = (!d.is_zero()).then_some(d);
            }
            other => return Err(format!("unknown option {other}")),
        }
    }
    if args.send.is_empty() || args.send.contains('\n') {
        return Err("--send needs a non-empty single-line text".into());
    }
    Ok(args)
}

/// `ADDR:PORT`, `[V6]:PORT` or a bare address (port 0).
fn parse_bind(text: &str) -> Result<SocketAddr, String> {
    text.parse::<SocketAddr>()
        .or_else(|_| text.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 0)))
        .map_err(|_| format!("not an address: {text}"))
}

fn parse_target(text: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|_| format!("not ADDR:PORT (IPv6 as [ADDR]:PORT): {text}"))
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(msg) => {
            eprintln!("probe: {msg}\n{USAGE}");
            return ExitCode::from(64);
        }
    };
    let result = match args.command.as_str() {
        "tcp-listen" => parse_target(&args.target).map(|a| serve(&args, a, tcp_listen)),
        "udp-listen" => parse_target(&args.target).map(|a| serve(&args, a, udp_listen)),
        "tcp-connect" => parse_target(&args.target).map(|a| tcp_connect(&args, a)),
        "udp-send" => parse_target(&args.target).map(|a| udp_send(&args, a)),
        "tcp-hold" => parse_target(&args.target).map(|a| tcp_hold(&args, a)),
        "ping" => args
            .target
            .parse::<IpAddr>()
            .map_err(|_| format!("not an address: {}", args.target))
            .map(|ip| {
                let started = Instant::now();
                let outcome = icmp::ping(ip, args.bind.map(|b| b.ip()), started + args.timeout);
                print(&outcome, started, Fields::default())
            }),
        other => Err(format!("unknown command {other}")),
    };
    match result {
        Ok(verdict) => ExitCode::from(verdict.exit_code()),
        Err(msg) => {
            eprintln!("probe: {msg}\n{USAGE}");
            ExitCode::from(64)
        }
    }
}

/// Runs a server with its safety nets: it ends after `--lifetime-ms`, and
/// with `--exit-on-stdin-eof` when whoever started it goes away.
fn serve(args: &Args, addr: SocketAddr, run: fn(SocketAddr) -> io::Result<()>) -> Verdict {
    if let Some(lifetime) = args.lifetime {
        thread::spawn(move || {
            thread::sleep(lifetime);
            eprintln!("probe: lifetime of {lifetime:?} over, exiting");
            std::process::exit(0);
        });
    }
    if args.exit_on_stdin_eof {
        thread::spawn(|| {
            let mut sink = [0u8; 256];
            let mut stdin = io::stdin();
            while let Ok(1..) = stdin.read(&mut sink) {}
            std::process::exit(0);
        });
    }
    match run(addr) {
        Ok(()) => Verdict::Ok,
        Err(e) => {
            eprintln!("probe: serving {addr}: {e}");
            Outcome::from_io("serve", &e).verdict
        }
    }
}

fn announce(addr: io::Result<SocketAddr>) -> io::Result<()> {
    let addr = addr?;
    let mut out = io::stdout().lock();
    writeln!(out, "ready {addr}")?;
    out.flush()
}

fn tcp_listen(addr: SocketAddr) -> io::Result<()> {
    let listener = TcpListener::bind(addr)?;
    announce(listener.local_addr())?;
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        thread::spawn(move || echo_stream(stream));
    }
    Ok(())
}

fn echo_stream(mut stream: TcpStream) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

fn udp_listen(addr: SocketAddr) -> io::Result<()> {
    let socket = UdpSocket::bind(addr)?;
    announce(socket.local_addr())?;
    let mut buf = [0u8; 64 * 1024];
    loop {
        let (n, peer) = socket.recv_from(&mut buf)?;
        // A failed echo is the client's problem to notice.
        let _ = socket.send_to(&buf[..n], peer);
    }
}

/// Opens a non-blocking TCP socket, binds it if asked, and connects.
fn tcp_open(
    args: &Args,
    dst: SocketAddr,
    deadline: Instant,
) -> Result<std::os::fd::OwnedFd, Outcome> {
    let fd = socket(family(dst.ip()), libc::SOCK_STREAM, 0)
        .map_err(|e| Outcome::from_io("socket", &e))?;
    if let Some(src) = args.bind {
        set_reuseaddr(&fd).map_err(|e| Outcome::from_io("setsockopt", &e))?;
        bind(&fd, src).map_err(|e| Outcome::from_io("bind", &e))?;
    }
    match connect(&fd, dst, deadline) {
        Ok(true) => Ok(fd),
        Ok(false) => Err(Outcome::timeout("the connection request")),
        Err(e) => Err(Outcome::from_io("connect", &e)),
    }
}

fn local_field(fields: Fields, fd: &std::os::fd::OwnedFd) -> Fields {
    match local_addr(fd) {
        Some(local) => fields.str("local", &local.to_string()),
        None => fields,
    }
}

fn tcp_connect(args: &Args, dst: SocketAddr) -> Verdict {
    let started = Instant::now();
    let deadline = started + args.timeout;
    let fd = match tcp_open(args, dst, deadline) {
        Ok(fd) => fd,
        Err(outcome) => return print(&outcome, started, Fields::default()),
    };
    let fields = local_field(Fields::default(), &fd);
    if args.connect_only {
        return print(&Outcome::ok(), started, fields);
    }
    let outcome = exchange(&fd, args.send.as_bytes(), deadline);
    print(&outcome, started, fields)
}

/// Sends `payload` and reads until the same bytes came back.
fn exchange(fd: &std::os::fd::OwnedFd, payload: &[u8], deadline: Instant) -> Outcome {
    match send_all(fd, payload, deadline) {
        Ok(true) => {}
        Ok(false) => return Outcome::timeout("sending"),
        Err(e) => return Outcome::from_io("send", &e),
    }
    let mut got = Vec::with_capacity(payload.len());
    let mut buf = [0u8; 4096];
    while got.len() < payload.len() {
        match recv_from(fd, &mut buf, deadline) {
            Ok(Some((0, _))) => return Outcome::error("connection closed before the echo"),
            Ok(Some((n, _))) => got.extend_from_slice(&buf[..n]),
            Ok(None) => return Outcome::timeout("the message"),
            Err(e) => return Outcome::from_io("recv", &e),
        }
    }
    if got == payload {
        Outcome::ok()
    } else {
        Outcome::error(format!("echo differs: {:?}", String::from_utf8_lossy(&got)))
    }
}

fn udp_send(args: &Args, dst: SocketAddr) -> Verdict {
    let started = Instant::now();
    let deadline = started + args.timeout;
    let (outcome, fields) = match udp_exchange(args, dst, deadline) {
        Ok((outcome, fields)) | Err((outcome, fields)) => (outcome, fields),
    };
    print(&outcome, started, fields)
}

type Step<T> = Result<T, (Outcome, Fields)>;

fn udp_exchange(args: &Args, dst: SocketAddr, deadline: Instant) -> Step<(Outcome, Fields)> {
    let fail = |call: &str, e: io::Error| (Outcome::from_io(call, &e), Fields::default());
    let fd = socket(family(dst.ip()), libc::SOCK_DGRAM, 0).map_err(|e| fail("socket", e))?;
    if let Some(src) = args.bind {
        set_reuseaddr(&fd).map_err(|e| fail("setsockopt", e))?;
        bind(&fd, src).map_err(|e| fail("bind", e))?;
    }
    // A connected UDP socket goes through the connect hooks and learns of
    // ICMP port-unreachable (as ECONNREFUSED); an unconnected one goes
    // through the sendmsg hooks.
    let peer = if args.udp_connect {
        match connect(&fd, dst, deadline) {
            Ok(_) => None,
            Err(e) => return Err(fail("connect", e)),
        }
    } else {
        Some(dst)
    };
    let payload = args.send.as_bytes();
    if let Err(e) = send_to(&fd, payload, peer) {
        return Err(fail("sendto", e));
    }
    let fields = local_field(Fields::default(), &fd);
    let mut buf = [0u8; 64 * 1024];
    loop {
        match recv_from(&fd, &mut buf, deadline) {
            Ok(Some((n, from))) => {
                if from.is_some_and(|f| f != dst) {
                    continue; // not our server's answer
                }
                let outcome = if &buf[..n] == payload {
                    Outcome::ok()
                } else {
                    Outcome::error("echo differs")
                };
                return Ok((outcome, fields));
            }
            Ok(None) => return Ok((Outcome::timeout("the datagram"), fields)),
            Err(e) => return Ok((Outcome::from_io("recvfrom", &e), fields)),
        }
    }
}

fn tcp_hold(args: &Args, dst: SocketAddr) -> Verdict {
    let started = Instant::now();
    let fd = match tcp_open(args, dst, started + args.timeout) {
        Ok(fd) => fd,
        Err(outcome) => {
            return print(&outcome, started, Fields::default().str("event", "connect"));
        }
    };
    print(
        &Outcome::ok(),
        started,
        local_field(Fields::default().str("event", "connect"), &fd),
    );

    let stdin = io::stdin();
    let mut lines = stdin.lock().lines();
    let mut seq: u64 = 0;
    let mut pending = Vec::new();
    let mut last = Verdict::Ok;
    loop {
        if args.count.is_some_and(|c| seq >= c) {
            return last;
        }
        match args.interval {
            Some(interval) => thread::sleep(interval),
            None => match lines.next() {
                Some(Ok(_)) => {}
                _ => return last,
            },
        }
        seq += 1;
        let started = Instant::now();
        let outcome = numbered_exchange(&fd, seq, &mut pending, started + args.timeout);
        let fields = Fields::default().str("event", "exchange").num("seq", seq);
        last = print(&outcome, started, fields);
    }
}

/// Sends `seq N\n` and reads lines until `seq N` comes back. Echoes of
/// earlier messages that arrive late (after a timeout, once traffic flows
/// again) are skipped, so each exchange judges only its own message.
fn numbered_exchange(
    fd: &std::os::fd::OwnedFd,
    seq: u64,
    pending: &mut Vec<u8>,
    deadline: Instant,
) -> Outcome {
    let message = format!("seq {seq}\n");
    match send_all(fd, message.as_bytes(), deadline) {
        Ok(true) => {}
        Ok(false) => return Outcome::timeout("sending"),
        Err(e) => return Outcome::from_io("send", &e),
    }
    let want = &message.as_bytes()[..message.len() - 1];
    let mut buf = [0u8; 4096];
    loop {
        while let Some(pos) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=pos).collect();
            if &line[..pos] == want {
                return Outcome::ok();
            }
        }
        match recv_from(fd, &mut buf, deadline) {
            Ok(Some((0, _))) => return Outcome::error("connection closed by the peer"),
            Ok(Some((n, _))) => pending.extend_from_slice(&buf[..n]),
            Ok(None) => return Outcome::timeout("the message"),
            Err(e) => return Outcome::from_io("recv", &e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Args, String> {
        parse_args(list.iter().map(|s| (*s).to_owned()))
    }

    #[test]
    fn parses_options() {
        let a = args(&[
            "tcp-connect",
            "[2001:db8::2]:80",
            "--timeout-ms",
            "250",
            "--bind",
            "2001:db8::1",
        ])
        .unwrap();
        assert_eq!(a.timeout, Duration::from_millis(250));
        assert_eq!(a.bind, Some("[2001:db8::1]:0".parse().unwrap()));
        assert!(args(&["tcp-connect", "x", "--nope"]).is_err());
        assert!(args(&["tcp-connect", "x", "--timeout-ms"]).is_err());
        assert!(args(&["tcp-connect", "x", "--send", ""]).is_err());
        let l = args(&["tcp-listen", "198.51.100.2:80", "--lifetime-ms", "0"]).unwrap();
        assert_eq!(l.lifetime, None);
    }
}
