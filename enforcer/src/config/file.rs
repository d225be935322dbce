//! The configuration file: every key optional, unknown keys and bad values
//! errors at `FILE:LINE:COL`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};
use thiserror::Error;

use super::{Failsafe, LogFormat};
use crate::dataplane::UnmanagedMode;
use crate::policy::LineIndex;

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
            Raw::Text(t) => crate::duration::parse_duration(&t)
                .map(ConfigDuration)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// The configuration file as written, every key optional; the command
/// line gives its options as the same keys ([`FileConfig::over`]).
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
    pub unmanaged: Option<UnmanagedMode>,
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
    /// These values where set, `lower`'s elsewhere: the command line (given
    /// as the file's keys) over the file.
    pub fn over(self, lower: FileConfig) -> FileConfig {
        FileConfig {
            policies: self.policies.or(lower.policies),
            cgroup_root: self.cgroup_root.or(lower.cgroup_root),
            bpffs: self.bpffs.or(lower.bpffs),
            socket: self.socket.or(lower.socket),
            socket_group: self.socket_group.or(lower.socket_group),
            read_group: self.read_group.or(lower.read_group),
            admin_group: self.admin_group.or(lower.admin_group),
            max_connections: self.max_connections.or(lower.max_connections),
            max_connections_per_user: self
                .max_connections_per_user
                .or(lower.max_connections_per_user),
            idle_timeout: self.idle_timeout.or(lower.idle_timeout),
            request_timeout: self.request_timeout.or(lower.request_timeout),
            unmanaged: self.unmanaged.or(lower.unmanaged),
            failsafe: self.failsafe.or(lower.failsafe),
            metrics: self.metrics.or(lower.metrics),
            log_format: self.log_format.or(lower.log_format),
            flow_history: self.flow_history.or(lower.flow_history),
            max_cgroups_per_workload: self
                .max_cgroups_per_workload
                .or(lower.max_cgroups_per_workload),
            state_dir: self.state_dir.or(lower.state_dir),
        }
    }

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
