//! `enforcer run`: the daemon (systemd `Type=notify`); runs until SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::config::{self, Failsafe, FileConfig, LogFormat, Overrides, Settings, Unmanaged};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The policy directory [default: /etc/enforcer/policies].
    #[arg(long, value_name = "DIR")]
    pub policies: Option<PathBuf>,
    /// The configuration file; command-line options override it.
    #[arg(long, value_name = "FILE", default_value = config::DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Narrow workload discovery (and the attach point) to this cgroup v2
    /// subtree, absolute or relative to the cgroup v2 mount.
    #[arg(long, value_name = "PATH")]
    pub cgroup_root: Option<PathBuf>,
    /// Where programs, links and maps are pinned [default: /sys/fs/bpf/enforcer].
    #[arg(long, value_name = "DIR")]
    pub bpffs: Option<PathBuf>,
    /// The local API socket [default: /run/enforcer/enforcer.sock].
    #[arg(long, value_name = "PATH", env = config::SOCKET_ENV)]
    pub socket: Option<PathBuf>,
    /// The group (name or gid) allowed to use the socket besides root.
    #[arg(long, value_name = "GROUP")]
    pub socket_group: Option<String>,
    /// Processes in no workload: allow, audit or deny [default: allow].
    #[arg(long, value_name = "MODE")]
    pub unmanaged: Option<Unmanaged>,
    /// Inbound ports always reachable, e.g. `22/tcp,2222/tcp`, or `none` [default: 22/tcp].
    #[arg(long, value_name = "PORTS")]
    pub failsafe: Option<Failsafe>,
    /// Serve Prometheus metrics on this address (off by default).
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<SocketAddr>,
    /// Log format: text or json.
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Where the last good policy is kept, to put it back in force after a
    /// restart or a reboot with an invalid policy [default: /var/lib/enforcer].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Remove every pinned program, link and map under --bpffs, then exit.
    #[arg(long)]
    pub uninstall: bool,
}

/// Command line over file over defaults.
pub fn settings(args: &Args) -> anyhow::Result<Settings> {
    let named = args.config.as_os_str() != config::DEFAULT_CONFIG;
    let file = FileConfig::load(&args.config, named)?;
    let cli = Overrides {
        policies: args.policies.clone(),
        cgroup_root: args.cgroup_root.clone(),
        bpffs: args.bpffs.clone(),
        socket: args.socket.clone(),
        socket_group: args.socket_group.clone(),
        unmanaged: args.unmanaged,
        failsafe: args.failsafe.clone(),
        metrics: args.metrics,
        log_format: args.log_format,
        state_dir: args.state_dir.clone(),
    };
    let cwd = std::env::current_dir().context("current directory")?;
    Ok(Settings::resolve(file, cli, &cwd)?)
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ENFORCER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter);
    // The binary may have installed a subscriber already; that one stays.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let settings = settings(&args)?;
    init_logging(settings.log_format);
    if args.uninstall {
        crate::daemon::uninstall(&settings)?;
        println!(
            "removed the enforcer's programs, links and maps under {}",
            settings.bpffs.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    crate::daemon::memory::tune_allocator();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(crate::daemon::run(settings))?;
    Ok(ExitCode::SUCCESS)
}
