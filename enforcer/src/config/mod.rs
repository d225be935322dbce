//! The daemon's configuration: `/etc/enforcer/enforcer.toml`, overridden by
//! command-line options, with the defaults of the CLI contract.
//!
//! ```toml
//! policies = "/etc/enforcer/policies"
//! cgroup_root = "/sys/fs/cgroup"        # default: the cgroup v2 mount
//! bpffs = "/sys/fs/bpf/enforcer"
//! socket = "/run/enforcer/enforcer.sock"
//! read_group = "enforcer"               # may use status/flows
//! admin_group = "enforcer-admin"        # may also use apply/confirm
//! max_connections = 256                 # API connections at once
//! max_connections_per_user = 16         # ... per uid other than root
//! idle_timeout = "60s"                  # no request begun: closed
//! request_timeout = "10s"               # to send a request, to take an answer
//! state_dir = "/var/lib/enforcer"       # the last good policy, for restarts and reboots
//! unmanaged = "allow"                   # allow | audit | deny
//! failsafe = ["22/tcp"]                 # or "22/tcp,2222/tcp", or "none"
//! metrics = "127.0.0.1:9617"            # Prometheus endpoint, off by default
//! log_format = "text"                   # text | json
//! flow_history = 10000                  # verdict events kept for `flows`
//! max_cgroups_per_workload = 8192       # cgroups one workload may register
//! ```
//!
//! Unknown keys are errors, reported as `FILE:LINE:COL: message` like policy
//! errors, so a typo never silently leaves a setting at its default.
//!
//! Here: the settings and their merge (command line over file over
//! defaults); `file`: the file's format; `values`: the text forms of
//! setting values.

mod file;
#[cfg(test)]
mod tests;
mod values;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use file::{ConfigDuration, ConfigError, FileConfig};
pub use values::{Failsafe, LogFormat};

use crate::api::Limits;
use crate::dataplane::UnmanagedMode;
use crate::policy::DEFAULT_DIR;

pub const DEFAULT_CONFIG: &str = "/etc/enforcer/enforcer.toml";
pub const DEFAULT_SOCKET: &str = "/run/enforcer/enforcer.sock";
/// Environment variable naming the socket, for every client command.
pub const SOCKET_ENV: &str = "ENFORCER_SOCKET";
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf/enforcer";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/enforcer";
pub const DEFAULT_FLOW_HISTORY: usize = 10_000;

/// The settings the daemon runs with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Absolute.
    pub policies: PathBuf,
    /// `None`: the cgroup v2 mount; otherwise narrowed to this subtree.
    pub cgroup_root: Option<PathBuf>,
    pub bpffs: PathBuf,
    pub socket: PathBuf,
    /// The group (name or numeric gid) whose members may use `status` and
    /// `flows`; `None`: nobody but the admins.
    pub read_group: Option<String>,
    /// The group whose members may also `apply` and `confirm`; `None`: root
    /// (and the daemon's own user) only.
    pub admin_group: Option<String>,
    /// Connection caps and timeouts of the API.
    pub limits: Limits,
    pub unmanaged: UnmanagedMode,
    pub failsafe: Failsafe,
    pub metrics: Option<SocketAddr>,
    pub log_format: LogFormat,
    pub flow_history: usize,
    /// The most cgroups one workload may have in the kernel's cgroup map
    /// (its own and their descendants): whoever can create cgroups under a
    /// workload cannot fill the map that the others need.
    pub max_cgroups_per_workload: u32,
    /// Absolute: where the last good policy is kept (see `daemon/state.rs`).
    pub state_dir: PathBuf,
}

/// Default of `max_cgroups_per_workload`: an eighth of the cgroup map.
pub const DEFAULT_MAX_CGROUPS_PER_WORKLOAD: u32 = enforcer_common::capacity::MAX_CGROUPS / 8;

impl Settings {
    /// Merge: command line over file over defaults. Relative paths are made
    /// absolute against `cwd`, since the daemon must not depend on where it
    /// was started from.
    pub fn resolve(file: FileConfig, cli: FileConfig, cwd: &Path) -> Result<Settings, ConfigError> {
        let absolute = |p: PathBuf| if p.is_absolute() { p } else { cwd.join(p) };
        let admin_group = admin_group(
            (cli.admin_group.clone(), cli.socket_group.clone()),
            (file.admin_group.clone(), file.socket_group.clone()),
        )?;
        let c = cli.over(file);
        let flow_history = c.flow_history.unwrap_or(DEFAULT_FLOW_HISTORY);
        if flow_history == 0 {
            return Err(ConfigError::Invalid(
                "flow_history must be at least 1".into(),
            ));
        }
        let max_cgroups_per_workload = c
            .max_cgroups_per_workload
            .unwrap_or(DEFAULT_MAX_CGROUPS_PER_WORKLOAD);
        if max_cgroups_per_workload == 0
            || max_cgroups_per_workload > enforcer_common::capacity::MAX_CGROUPS
        {
            return Err(ConfigError::Invalid(format!(
                "max_cgroups_per_workload must be 1 to {}",
                enforcer_common::capacity::MAX_CGROUPS
            )));
        }
        let defaults = Limits::default();
        let limits = Limits {
            max_connections: c.max_connections.unwrap_or(defaults.max_connections),
            max_connections_per_user: c
                .max_connections_per_user
                .unwrap_or(defaults.max_connections_per_user),
            idle_timeout: c.idle_timeout.map_or(defaults.idle_timeout, |d| d.0),
            request_timeout: c.request_timeout.map_or(defaults.request_timeout, |d| d.0),
        };
        limits.validate().map_err(ConfigError::Invalid)?;
        Ok(Settings {
            policies: absolute(c.policies.unwrap_or_else(|| DEFAULT_DIR.into())),
            cgroup_root: c.cgroup_root,
            bpffs: absolute(c.bpffs.unwrap_or_else(|| DEFAULT_BPFFS.into())),
            socket: absolute(c.socket.unwrap_or_else(|| DEFAULT_SOCKET.into())),
            read_group: c.read_group,
            admin_group,
            limits,
            unmanaged: c.unmanaged.unwrap_or_default(),
            failsafe: c.failsafe.unwrap_or_default(),
            metrics: c.metrics,
            log_format: c.log_format.unwrap_or_default(),
            flow_history,
            max_cgroups_per_workload,
            state_dir: absolute(c.state_dir.unwrap_or_else(|| DEFAULT_STATE_DIR.into())),
        })
    }
}

/// The admin group from (admin_group, socket_group) of the command line,
/// then of the file. `socket_group`, the name of earlier versions, keeps
/// its meaning (its members could apply); naming both in one place is an
/// error, since they would disagree.
fn admin_group(
    cli: (Option<String>, Option<String>),
    file: (Option<String>, Option<String>),
) -> Result<Option<String>, ConfigError> {
    let one = |(admin, socket): (Option<String>, Option<String>), place: &str| match (admin, socket)
    {
        (Some(_), Some(_)) => Err(ConfigError::Invalid(format!(
            "{place}: set admin_group only: socket_group is its earlier name"
        ))),
        (admin, socket) => Ok(admin.or(socket)),
    };
    Ok(one(cli, "the command line")?.or(one(file, "the configuration file")?))
}
