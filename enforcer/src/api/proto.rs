//! The messages of the local API: one JSON object per line in each
//! direction (see `docs/daemon.md`). A request gets one response, except
//! `flows`, which gets any number of `flow` lines and then `end` (or, with
//! `follow`, keeps sending until the client hangs up).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A verdict as shown by `flows`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Deny,
    Audit,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
            Verdict::Audit => "audit",
        }
    }
}

impl std::str::FromStr for Verdict {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "allow" => Ok(Verdict::Allow),
            "deny" => Ok(Verdict::Deny),
            "audit" => Ok(Verdict::Audit),
            other => Err(format!(
                "unknown verdict {other:?} (expected deny, audit or allow)"
            )),
        }
    }
}

/// What a client asks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    /// Load the policy directory `dir` (absolute: the daemon reads it
    /// itself). With `confirm_ms`, roll back to the running policy unless a
    /// `confirm` arrives within that many milliseconds.
    Apply {
        dir: PathBuf,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        confirm_ms: Option<u64>,
    },
    /// Keep the policy applied with a pending confirmation.
    Confirm,
    Status,
    Flows {
        #[serde(default)]
        follow: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        workload: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        verdict: Option<Verdict>,
    },
}

/// What the daemon answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "response", rename_all = "snake_case")]
pub enum Response {
    /// The new policy is in force.
    Applied {
        generation: u64,
        /// 16 hex digits.
        content_hash: String,
        /// The policy was identical to the running one: nothing changed.
        unchanged: bool,
        /// RFC 3339, when `confirm_ms` was given.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rollback_at: Option<String>,
        /// `FILE:LINE:COL: warning: message` lines.
        #[serde(default)]
        warnings: Vec<String>,
    },
    /// The policy was refused; the running one stays.
    Rejected {
        /// `FILE:LINE:COL: message` lines (or a plain reason).
        errors: Vec<String>,
    },
    Confirmed {
        generation: u64,
    },
    Status(Box<StatusReport>),
    Flow(FlowRecord),
    /// The end of a `flows` listing.
    End,
    /// The request could not be served (malformed, nothing to confirm...).
    Error {
        message: String,
    },
}

/// One verdict event, in the shape of the CLI contract (`flows --json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRecord {
    /// RFC 3339 with milliseconds, UTC.
    pub time: String,
    /// The local workload name, or `host`.
    pub workload: String,
    /// `egress` or `ingress`.
    pub direction: String,
    /// `tcp`, `udp` or `icmp`.
    pub protocol: String,
    /// `ADDR:PORT` (`[ADDR]:PORT` for IPv6).
    pub local: String,
    pub remote: String,
    /// The remote entity's name: a workload, a peer, `world` or `host`.
    pub peer: String,
    pub verdict: Verdict,
    /// `POLICY SECTION[INDEX]`, `default deny`, `built-in` or `unmanaged`.
    pub rule: String,
}

/// Counters per verdict.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerdictCounters {
    pub allow: u64,
    pub deny: u64,
    pub audit: u64,
}

/// One workload in `status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadStatus {
    pub name: String,
    pub identity: u32,
    /// `enforce`, `audit` or `off`.
    pub mode: String,
    /// The `unit = ...` or `cgroup = ...` selector as written.
    pub selector: String,
    /// Matched cgroup paths, relative to the cgroup root.
    pub cgroups: Vec<String>,
    /// Packets judged, per verdict.
    pub counters: VerdictCounters,
}

/// The policy in force.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyStatus {
    pub generation: u64,
    pub content_hash: String,
    /// RFC 3339.
    pub applied_at: String,
    /// The directory it was read from.
    pub source: String,
    /// RFC 3339: when a rule's `until` makes the daemon recompile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_expiry: Option<String>,
    /// RFC 3339: when an unconfirmed `apply --confirm` rolls back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_at: Option<String>,
    /// Set when the configured policy was rejected at start and the state
    /// directory's last good policy is in force instead: `adopted` (the
    /// kernel already enforced it) or `restored` (put back in force).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

/// The last policy refused since the running one was applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    pub time: String,
    /// `sighup`, `file change`, `apply` or `expiry`.
    pub trigger: String,
    pub source: String,
    pub errors: Vec<String>,
}

/// The answer to `status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    pub pid: u32,
    pub version: String,
    pub started_at: String,
    /// `None` until a first policy is in force.
    pub policy: Option<PolicyStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rejection: Option<Rejection>,
    pub cgroup_root: String,
    pub unmanaged: String,
    pub failsafe: String,
    pub workloads: Vec<WorkloadStatus>,
    /// Events the kernel could not deliver (ring buffer full).
    pub lost_events: u64,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    /// Everything that means a policy is NOT being enforced as written:
    /// shown loudly by `status` and logged as errors.
    pub not_enforced: Vec<String>,
}
