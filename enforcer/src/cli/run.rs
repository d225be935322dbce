//! `enforcer run`: the daemon (systemd `Type=notify`); runs until SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::config::{self, ConfigDuration, Failsafe, FileConfig, LogFormat, Settings};
use crate::dataplane::UnmanagedMode;

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
    /// The group (name or gid) whose members may use `status` and `flows`.
    #[arg(long, value_name = "GROUP")]
    pub read_group: Option<String>,
    /// The group (name or gid) whose members may also `apply` and `confirm`.
    #[arg(long, value_name = "GROUP")]
    pub admin_group: Option<String>,
    /// The earlier name of --admin-group.
    #[arg(long, value_name = "GROUP", hide = true)]
    pub socket_group: Option<String>,
    /// API connections open at once [default: 256].
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// API connections open at once per uid other than root [default: 16].
    #[arg(long, value_name = "N")]
    pub max_connections_per_user: Option<usize>,
    /// Close an API connection with no request for this long [default: 60s].
    #[arg(long, value_name = "DURATION", value_parser = crate::duration::parse_duration)]
    pub idle_timeout: Option<std::time::Duration>,
    /// Time to send a request once begun, and to take each answer [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = crate::duration::parse_duration)]
    pub request_timeout: Option<std::time::Duration>,
    /// Processes in no workload: allow, audit or deny [default: allow].
    #[arg(long, value_name = "MODE")]
    pub unmanaged: Option<UnmanagedMode>,
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

/// Command line over file over defaults, and what to warn about once
/// logging is set up.
pub fn settings(args: &Args) -> anyhow::Result<(Settings, Vec<String>)> {
    let named = args.config.as_os_str() != config::DEFAULT_CONFIG;
    let file = FileConfig::load(&args.config, named)?;
    let mut notes = Vec::new();
    if file.socket_group.is_some() || args.socket_group.is_some() {
        notes.push(
            "socket_group (--socket-group) is the earlier name of admin_group: its members may \
             apply and confirm; set read_group for members that only read"
                .to_owned(),
        );
    }
    let cli = FileConfig {
        policies: args.policies.clone(),
        cgroup_root: args.cgroup_root.clone(),
        bpffs: args.bpffs.clone(),
        socket: args.socket.clone(),
        socket_group: args.socket_group.clone(),
        read_group: args.read_group.clone(),
        admin_group: args.admin_group.clone(),
        max_connections: args.max_connections,
        max_connections_per_user: args.max_connections_per_user,
        idle_timeout: args.idle_timeout.map(ConfigDuration),
        request_timeout: args.request_timeout.map(ConfigDuration),
        unmanaged: args.unmanaged,
        failsafe: args.failsafe.clone(),
        metrics: args.metrics,
        log_format: args.log_format,
        state_dir: args.state_dir.clone(),
        flow_history: None,
        max_cgroups_per_workload: None,
    };
    let cwd = std::env::current_dir().context("current directory")?;
    Ok((Settings::resolve(file, cli, &cwd)?, notes))
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
    let (settings, notes) = settings(&args)?;
    init_logging(settings.log_format);
    for note in notes {
        tracing::warn!("{note}");
    }
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
