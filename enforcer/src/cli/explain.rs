//! `enforcer explain [DIR] --from ENTITY|IP --to ENTITY|IP --port PORT/PROTO`:
//! the policy's verdict for one flow and the rule(s) that decide it.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use enforcer_common::verdict::{Action, Direction};

use crate::compile::CompiledPolicy;
use crate::eval::{Flow, endpoint_identity, judge_flow};
use crate::policy::{LoadError, Mode, ServicePort, resolve_endpoint};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The policy directory.
    #[arg(default_value = crate::policy::DEFAULT_DIR)]
    pub dir: PathBuf,
    /// The sender: a workload or peer name, `world`, `host`, or an IP address.
    #[arg(long)]
    pub from: String,
    /// The receiver: a workload or peer name, `world`, `host`, or an IP address.
    #[arg(long)]
    pub to: String,
    /// The service port: `PORT/PROTO` (e.g. `5432/tcp`) or `icmp`.
    #[arg(long)]
    pub port: String,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let port: ServicePort = match args.port.parse() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("enforcer explain: --port: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let loaded = match crate::policy::load_dir(&args.dir) {
        Ok(l) => l,
        Err(LoadError::Io { path, source }) => {
            eprintln!("enforcer explain: cannot read {}: {source}", path.display());
            return Ok(ExitCode::from(2));
        }
        Err(LoadError::Invalid(d)) => {
            print!("{d}");
            eprintln!("enforcer explain: invalid policy: run `enforcer check`");
            return Ok(ExitCode::from(1));
        }
    };
    let set = loaded.set.clone();
    // Expectation failures do not stop `explain`: it is how one finds out why.
    let compiled = match crate::compile::compile(&set, SystemTime::now()) {
        Ok(c) => c,
        Err(d) => {
            print!("{d}");
            return Ok(ExitCode::from(1));
        }
    };
    let mut ends = Vec::new();
    for (flag, value) in [("--from", &args.from), ("--to", &args.to)] {
        match resolve_endpoint(&set, value) {
            Ok(e) => ends.push(e),
            Err(e) => {
                eprintln!("enforcer explain: {flag}: {e}");
                return Ok(ExitCode::from(2));
            }
        }
    }
    let from = endpoint_identity(&compiled, &ends[0]);
    let to = endpoint_identity(&compiled, &ends[1]);
    let flow = judge_flow(&compiled, from, to, port);
    let text = render(&compiled, &flow, from, to, port);
    std::io::stdout().lock().write_all(text.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

/// The explanation, e.g.
///
/// ```text
/// allow: db allow-in[1]
///   ingress of db from office, 5432/tcp: allow by db allow-in[1]
/// ```
pub fn render(
    policy: &CompiledPolicy,
    flow: &Flow,
    from: u32,
    to: u32,
    port: ServicePort,
) -> String {
    let name = |id| {
        policy
            .entity(id)
            .map_or_else(|| format!("identity {id}"), |e| e.name.clone())
    };
    let Flow::Judged(ends) = flow else {
        return format!(
            "unmanaged: neither {} nor {} is a workload, so no policy rule applies \
             (this host's unmanaged processes follow the daemon's --unmanaged setting)\n",
            name(from),
            name(to)
        );
    };
    let verdict = flow.verdict().map_or("deny", |v| v.as_str());
    let mut text = format!("{verdict}: {}\n", flow.deciding_rules(policy));
    for end in ends {
        let c = end.connection;
        let (dir, prep) = if c.direction == Direction::Egress as u8 {
            ("egress", "to")
        } else {
            ("ingress", "from")
        };
        let action = if end.decision.action == Action::Allow as u8 {
            "allow"
        } else {
            "deny"
        };
        let rule = policy.rule_name(end.decision.rule);
        let why = if end.decision.rule == enforcer_common::verdict::RULE_DEFAULT_DENY {
            format!("({rule})")
        } else {
            format!("by {rule}")
        };
        text.push_str(&format!(
            "  {dir} of {} {prep} {}, {port}: {action} {why}\n",
            name(c.local),
            name(c.remote),
        ));
        if let Some(w) = policy.workload(c.local) {
            if w.mode == Mode::Audit.number() && end.decision.action != Action::Allow as u8 {
                text.push_str(&format!(
                    "  note: workload {} is in audit mode: the connection passes and is reported as an audit event\n",
                    w.name
                ));
            } else if w.mode == Mode::Off.number() {
                text.push_str(&format!(
                    "  note: workload {} is in mode off: it is not checked\n",
                    w.name
                ));
            }
        }
    }
    text
}
