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

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use enforcer_common::{protocol::Protocol, workload::Mode};
use serde::{Deserialize, Deserializer};
use thiserror::Error;

use crate::api::Limits;
use crate::policy::{DEFAULT_DIR, LineIndex};

pub const DEFAULT_CONFIG: &str = "/etc/enforcer/enforcer.toml";
pub const DEFAULT_SOCKET: &str = "/run/enforcer/enforcer.sock";
/// Environment variable naming the socket, for every client command.
pub const SOCKET_ENV: &str = "ENFORCER_SOCKET";
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf/enforcer";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/enforcer";
pub const DEFAULT_FLOW_HISTORY: usize = 10_000;

/// What to do with processes that belong to no workload (`--unmanaged`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Unmanaged {
    #[default]
    Allow,
    Audit,
    Deny,
}

impl Unmanaged {
    /// The `Config::unmanaged` value the kernel reads.
    pub fn mode(self) -> u8 {
        match self {
            Unmanaged::Allow => Mode::Off as u8,
            Unmanaged::Audit => Mode::Audit as u8,
            Unmanaged::Deny => Mode::Enforce as u8,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Unmanaged::Allow => "allow",
            Unmanaged::Audit => "audit",
            Unmanaged::Deny => "deny",
        }
    }
}

impl FromStr for Unmanaged {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "allow" => Ok(Unmanaged::Allow),
            "audit" => Ok(Unmanaged::Audit),
            "deny" => Ok(Unmanaged::Deny),
            other => Err(format!(
                "unknown unmanaged mode {other:?} (expected allow, audit or deny)"
            )),
        }
    }
}

/// One inbound port kept reachable whatever the policy says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FailsafePort {
    /// Protocol::Tcp or Protocol::Udp.
    pub protocol: u8,
    pub port: u16,
}

impl fmt::Display for FailsafePort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = if self.protocol == Protocol::Tcp as u8 {
            "tcp"
        } else {
            "udp"
        };
        write!(f, "{}/{proto}", self.port)
    }
}

impl FromStr for FailsafePort {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (port, proto) = s
            .trim()
            .split_once('/')
            .ok_or_else(|| format!("failsafe port {s:?} must be PORT/tcp or PORT/udp"))?;
        let protocol = match proto {
            "tcp" => Protocol::Tcp as u8,
            "udp" => Protocol::Udp as u8,
            _ => return Err(format!("failsafe port {s:?}: protocol must be tcp or udp")),
        };
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("failsafe port {s:?}: port must be 1-65535"))?;
        Ok(FailsafePort { protocol, port })
    }
}

/// The `--failsafe` list: comma-separated `PORT/PROTO`, or `none`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failsafe(pub Vec<FailsafePort>);

impl Default for Failsafe {
    fn default() -> Self {
        Failsafe(vec![FailsafePort {
            protocol: Protocol::Tcp as u8,
            port: 22,
        }])
    }
}

impl FromStr for Failsafe {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim() == "none" {
            return Ok(Failsafe(Vec::new()));
        }
        let mut ports = s
            .split(',')
            .map(FailsafePort::from_str)
            .collect::<Result<Vec<_>, _>>()?;
        ports.sort();
        ports.dedup();
        let max = enforcer_common::capacity::MAX_FAILSAFE_PORTS as usize;
        if ports.len() > max {
            return Err(format!("at most {max} failsafe ports"));
        }
        Ok(Failsafe(ports))
    }
}

impl fmt::Display for Failsafe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        let items: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&items.join(","))
    }
}

impl<'de> Deserialize<'de> for Failsafe {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            Many(Vec<String>),
        }
        let text = match Raw::deserialize(d)? {
            Raw::One(s) => s,
            Raw::Many(items) if items.is_empty() => "none".to_owned(),
            Raw::Many(items) => items.join(","),
        };
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Log line format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "unknown log format {other:?} (expected text or json)"
            )),
        }
    }
}

/// A duration in the configuration file: `"90s"`, `"500ms"`, `"2m"`, or a
/// number of seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigDuration(pub std::time::Duration);

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Seconds(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Seconds(s) => Ok(ConfigDuration(std::time::Duration::from_secs(s))),
            Raw::Text(t) => crate::daemon::duration::parse_duration(&t)
                .map(ConfigDuration)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// The configuration file as written: every key optional.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub policies: Option<PathBuf>,
    pub cgroup_root: Option<PathBuf>,
    pub bpffs: Option<PathBuf>,
    pub socket: Option<PathBuf>,
    /// The earlier name of `admin_group`.
    pub socket_group: Option<String>,
    pub read_group: Option<String>,
    pub admin_group: Option<String>,
    pub max_connections: Option<usize>,
    pub max_connections_per_user: Option<usize>,
    pub idle_timeout: Option<ConfigDuration>,
    pub request_timeout: Option<ConfigDuration>,
    pub unmanaged: Option<Unmanaged>,
    pub failsafe: Option<Failsafe>,
    pub metrics: Option<SocketAddr>,
    pub log_format: Option<LogFormat>,
    pub flow_history: Option<usize>,
    pub max_cgroups_per_workload: Option<u32>,
    pub state_dir: Option<PathBuf>,
}

/// Why the configuration cannot be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Displayed as `FILE:LINE:COL: message`.
    #[error("{}:{line}:{col}: {message}", path.display())]
    Parse {
        path: PathBuf,
        line: usize,
        col: usize,
        message: String,
    },
    #[error("{0}")]
    Invalid(String),
}

impl FileConfig {
    /// Parse a configuration text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<FileConfig, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let (line, col) = e
                .span()
                .map_or((1, 1), |span| LineIndex::new(text).line_col(span.start));
            ConfigError::Parse {
                path: path.to_path_buf(),
                line,
                col,
                message: e.message().trim_end().to_owned(),
            }
        })
    }

    /// Read a configuration file. A missing file is an empty configuration
    /// when `required` is false (the default path), an error otherwise (a
    /// path the operator named).
    pub fn load(path: &Path, required: bool) -> Result<FileConfig, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => FileConfig::parse(&text, path),
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => {
                Ok(FileConfig::default())
            }
            Err(source) => Err(ConfigError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }
}

/// Command-line values, which win over the file.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub policies: Option<PathBuf>,
    pub cgroup_root: Option<PathBuf>,
    pub bpffs: Option<PathBuf>,
    pub socket: Option<PathBuf>,
    /// The earlier name of `admin_group`.
    pub socket_group: Option<String>,
    pub read_group: Option<String>,
    pub admin_group: Option<String>,
    pub max_connections: Option<usize>,
    pub max_connections_per_user: Option<usize>,
    pub idle_timeout: Option<std::time::Duration>,
    pub request_timeout: Option<std::time::Duration>,
    pub unmanaged: Option<Unmanaged>,
    pub failsafe: Option<Failsafe>,
    pub metrics: Option<SocketAddr>,
    pub log_format: Option<LogFormat>,
    pub state_dir: Option<PathBuf>,
}

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
    pub unmanaged: Unmanaged,
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
    pub fn resolve(file: FileConfig, cli: Overrides, cwd: &Path) -> Result<Settings, ConfigError> {
        let absolute = |p: PathBuf| if p.is_absolute() { p } else { cwd.join(p) };
        let flow_history = file.flow_history.unwrap_or(DEFAULT_FLOW_HISTORY);
        if flow_history == 0 {
            return Err(ConfigError::Invalid(
                "flow_history must be at least 1".into(),
            ));
        }
        let max_cgroups_per_workload = file
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
        let admin_group = admin_group(
            (cli.admin_group, cli.socket_group),
            (file.admin_group, file.socket_group),
        )?;
        let defaults = Limits::default();
        let limits = Limits {
            max_connections: cli
                .max_connections
                .or(file.max_connections)
                .unwrap_or(defaults.max_connections),
            max_connections_per_user: cli
                .max_connections_per_user
                .or(file.max_connections_per_user)
                .unwrap_or(defaults.max_connections_per_user),
            idle_timeout: cli
                .idle_timeout
                .or(file.idle_timeout.map(|d| d.0))
                .unwrap_or(defaults.idle_timeout),
            request_timeout: cli
                .request_timeout
                .or(file.request_timeout.map(|d| d.0))
                .unwrap_or(defaults.request_timeout),
        };
        limits.validate().map_err(ConfigError::Invalid)?;
        Ok(Settings {
            policies: absolute(
                cli.policies
                    .or(file.policies)
                    .unwrap_or_else(|| DEFAULT_DIR.into()),
            ),
            cgroup_root: cli.cgroup_root.or(file.cgroup_root),
            bpffs: absolute(
                cli.bpffs
                    .or(file.bpffs)
                    .unwrap_or_else(|| DEFAULT_BPFFS.into()),
            ),
            socket: absolute(
                cli.socket
                    .or(file.socket)
                    .unwrap_or_else(|| DEFAULT_SOCKET.into()),
            ),
            read_group: cli.read_group.or(file.read_group),
            admin_group,
            limits,
            unmanaged: cli.unmanaged.or(file.unmanaged).unwrap_or_default(),
            failsafe: cli.failsafe.or(file.failsafe).unwrap_or_default(),
            metrics: cli.metrics.or(file.metrics),
            log_format: cli.log_format.or(file.log_format).unwrap_or_default(),
            flow_history,
            max_cgroups_per_workload,
            state_dir: absolute(
                cli.state_dir
                    .or(file.state_dir)
                    .unwrap_or_else(|| DEFAULT_STATE_DIR.into()),
            ),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_gives_the_contract_defaults() {
        let s =
            Settings::resolve(FileConfig::default(), Overrides::default(), Path::new("/")).unwrap();
        assert_eq!(s.policies, Path::new(DEFAULT_DIR));
        assert_eq!(s.socket, Path::new(DEFAULT_SOCKET));
        assert_eq!(s.bpffs, Path::new(DEFAULT_BPFFS));
        assert_eq!(s.unmanaged, Unmanaged::Allow);
        assert_eq!(s.failsafe.to_string(), "22/tcp");
        assert_eq!(s.metrics, None);
        assert_eq!(s.cgroup_root, None);
        assert_eq!(s.state_dir, Path::new(DEFAULT_STATE_DIR));
    }

    #[test]
    fn every_key_parses_and_the_command_line_wins() {
        let text = r#"
policies = "/srv/policies"
cgroup_root = "system.slice"
bpffs = "/sys/fs/bpf/other"
socket = "/run/other.sock"
read_group = "enforcer"
admin_group = "enforcer-admin"
max_connections = 64
max_connections_per_user = 4
idle_timeout = "2m"
request_timeout = 5
unmanaged = "audit"
failsafe = ["22/tcp", "53/udp"]
metrics = "127.0.0.1:9617"
log_format = "json"
flow_history = 50
state_dir = "state"
"#;
        let file = FileConfig::parse(text, Path::new("e.toml")).unwrap();
        let cli = Overrides {
            socket: Some("rel.sock".into()),
            unmanaged: Some(Unmanaged::Deny),
            ..Overrides::default()
        };
        let s = Settings::resolve(file, cli, Path::new("/work")).unwrap();
        assert_eq!(s.policies, Path::new("/srv/policies"));
        assert_eq!(s.socket, Path::new("/work/rel.sock"));
        assert_eq!(s.unmanaged, Unmanaged::Deny);
        assert_eq!(s.failsafe.to_string(), "22/tcp,53/udp");
        assert_eq!(s.metrics, Some("127.0.0.1:9617".parse().unwrap()));
        assert_eq!(s.log_format, LogFormat::Json);
        assert_eq!(s.flow_history, 50);
        assert_eq!(s.state_dir, Path::new("/work/state"));
        assert_eq!(s.read_group.as_deref(), Some("enforcer"));
        assert_eq!(s.admin_group.as_deref(), Some("enforcer-admin"));
        assert_eq!(
            s.limits,
            Limits {
                max_connections: 64,
                max_connections_per_user: 4,
                idle_timeout: std::time::Duration::from_secs(120),
                request_timeout: std::time::Duration::from_secs(5),
            }
        );
    }

    #[test]
    fn socket_group_is_the_earlier_name_of_admin_group() {
        let file = FileConfig::parse("socket_group = \"ops\"", Path::new("c")).unwrap();
        let s = Settings::resolve(file.clone(), Overrides::default(), Path::new("/")).unwrap();
        assert_eq!(s.admin_group.as_deref(), Some("ops"));
        assert_eq!(s.read_group, None);
        // The command line wins, under either name.
        let cli = Overrides {
            socket_group: Some("sre".into()),
            ..Overrides::default()
        };
        let s = Settings::resolve(file, cli, Path::new("/")).unwrap();
        assert_eq!(s.admin_group.as_deref(), Some("sre"));
        // Both names in one place disagree: an error.
        let both =
            FileConfig::parse("socket_group = \"a\"\nadmin_group = \"b\"", Path::new("c")).unwrap();
        let err = Settings::resolve(both, Overrides::default(), Path::new("/")).unwrap_err();
        assert!(err.to_string().contains("socket_group"), "{err}");
    }

    #[test]
    fn connection_limits_are_checked() {
        let file = FileConfig::parse(
            "max_connections = 8\nmax_connections_per_user = 4",
            Path::new("c"),
        )
        .unwrap();
        assert!(Settings::resolve(file, Overrides::default(), Path::new("/")).is_err());
        assert!(FileConfig::parse("idle_timeout = \"soon\"", Path::new("c")).is_err());
    }

    #[test]
    fn unknown_keys_are_errors_with_file_line_col() {
        let text = "policies = \"/p\"\n  sokcet = \"/x\"\n";
        let err = FileConfig::parse(text, Path::new("/etc/enforcer/enforcer.toml")).unwrap_err();
        let shown = err.to_string();
        assert!(
            shown.starts_with("/etc/enforcer/enforcer.toml:2:3: "),
            "{shown}"
        );
        assert!(shown.contains("sokcet"), "{shown}");
    }

    #[test]
    fn bad_values_are_errors_with_their_position() {
        let err = FileConfig::parse("unmanaged = \"maybe\"\n", Path::new("c.toml")).unwrap_err();
        assert!(err.to_string().starts_with("c.toml:1:13: "), "{err}");
        let err = FileConfig::parse("\nfailsafe = \"22/sctp\"\n", Path::new("c.toml")).unwrap_err();
        assert!(err.to_string().starts_with("c.toml:2:"), "{err}");
        assert!(FileConfig::parse("metrics = \"nope\"", Path::new("c.toml")).is_err());
    }

    #[test]
    fn failsafe_lists() {
        assert_eq!("none".parse::<Failsafe>().unwrap().0, []);
        assert_eq!(
            "443/tcp, 22/tcp,22/tcp"
                .parse::<Failsafe>()
                .unwrap()
                .to_string(),
            "22/tcp,443/tcp"
        );
        assert!("0/tcp".parse::<Failsafe>().is_err());
        assert!("22".parse::<Failsafe>().is_err());
        assert!("70000/udp".parse::<Failsafe>().is_err());
        let file = FileConfig::parse("failsafe = []", Path::new("c")).unwrap();
        assert_eq!(file.failsafe, Some(Failsafe(Vec::new())));
    }

    #[test]
    fn a_missing_default_file_is_empty_but_a_named_one_is_an_error() {
        let missing = Path::new("/nonexistent/enforcer.toml");
        assert_eq!(
            FileConfig::load(missing, false).unwrap(),
            FileConfig::default()
        );
        assert!(matches!(
            FileConfig::load(missing, true),
            Err(ConfigError::Read { .. })
        ));
    }
}
