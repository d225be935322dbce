//! The text forms of setting values, as the file and the command line
//! write them: `--unmanaged allow|audit|deny`, `--failsafe 22/tcp,...`,
//! `--log-format text|json`. The unmanaged mode and a failsafe port are
//! the data plane's types ([`UnmanagedMode`], [`FailsafePort`]); only
//! their text lives here.

use std::fmt;
use std::str::FromStr;

use enforcer_common::protocol::Protocol;
use serde::{Deserialize, Deserializer};

use crate::dataplane::{FailsafePort, UnmanagedMode};

impl UnmanagedMode {
    /// The setting's name, as `status` shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            UnmanagedMode::Allow => "allow",
            UnmanagedMode::Audit => "audit",
            UnmanagedMode::Deny => "deny",
        }
    }
}

impl fmt::Display for UnmanagedMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for UnmanagedMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "allow" => Ok(UnmanagedMode::Allow),
            "audit" => Ok(UnmanagedMode::Audit),
            "deny" => Ok(UnmanagedMode::Deny),
            other => Err(format!(
                "unknown unmanaged mode {other:?} (expected allow, audit or deny)"
            )),
        }
    }
}

impl<'de> Deserialize<'de> for UnmanagedMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
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
        let ports = FailsafePort::parse_list(s).map_err(|e| e.to_string())?;
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
        let items: Vec<String> = self
            .0
            .iter()
            .map(|p| {
                let proto = if p.protocol == Protocol::Tcp as u8 {
                    "tcp"
                } else {
                    "udp"
                };
                format!("{}/{proto}", p.port)
            })
            .collect();
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
