//! `enforcer flows [--follow] [--json] [--workload NAME] [--verdict V]`:
//! recent verdict events from the daemon's history.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::api::{FlowRecord, Request, Response, Verdict};
use crate::config;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Keep printing new events as they come.
    #[arg(long)]
    pub follow: bool,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
    /// Only this workload's events.
    #[arg(long, value_name = "NAME")]
    pub workload: Option<String>,
    /// Only this verdict: deny, audit or allow.
    #[arg(long, value_name = "VERDICT")]
    pub verdict: Option<Verdict>,
    /// The daemon's socket.
    #[arg(long, value_name = "PATH", env = config::SOCKET_ENV, default_value = config::DEFAULT_SOCKET)]
    pub socket: PathBuf,
}

fn text(r: &FlowRecord) -> String {
    format!(
        "{} {:<5} {} {} {} {} -> {} ({}) {}",
        r.time,
        r.verdict.as_str(),
        r.workload,
        r.direction,
        r.protocol,
        r.local,
        r.remote,
        r.peer,
        r.rule
    )
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let Some(mut client) = super::connect_daemon(&args.socket)? else {
        return Ok(ExitCode::from(super::EXIT_NO_DAEMON));
    };
    client.send(&Request::Flows {
        follow: args.follow,
        workload: args.workload.clone(),
        verdict: args.verdict,
    })?;
    let mut out = std::io::stdout().lock();
    while let Some(response) = client.receive()? {
        match response {
            Response::Flow(record) => {
                if args.json {
                    serde_json::to_writer(&mut out, &record)?;
                    writeln!(out)?;
                } else {
                    writeln!(out, "{}", text(&record))?;
                }
                // Followers read this as it comes.
                out.flush()?;
            }
            Response::End => break,
            Response::Error { message } => {
                eprintln!("enforcer: {message}");
                return Ok(ExitCode::from(2));
            }
            other => anyhow::bail!("unexpected answer from the daemon: {other:?}"),
        }
    }
    Ok(ExitCode::SUCCESS)
}
