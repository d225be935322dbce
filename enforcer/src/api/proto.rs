//! The messages of the local API: one JSON object per line in each
//! direction (see `docs/daemon.md`). A request gets one response, except
//! `flows`, which gets any number of `flow` lines and then `end` (or, with
//! `follow`, keeps sending until the client hangs up).

use serde::{Deserialize, Serialize};

use super::access::Role;

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
    /// Put the policy set `files` in force. The client read the files; the
    /// daemon never opens a path a client names. With `confirm_ms`, roll
    /// back to the running policy unless a `confirm` arrives within that
    /// many milliseconds.
    Apply {
        /// The absolute directory the files were read from: only a label,
        /// for diagnostics (`SOURCE/NAME:LINE:COL`) and `status`.
        source: String,
        files: Vec<PolicyFile>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        confirm_ms: Option<u64>,
        /// Put a set with no workload in force even while a policy with
        /// workloads is enforced (`apply --allow-empty`).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        allow_empty: bool,
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

/// One policy file of an `apply`: its plain file name (`*.toml`, no
/// directory part) and its text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyFile {
    pub name: String,
    pub text: String,
}

impl PolicyFile {
    /// The files of a policy directory as `apply` sends them, from what
    /// [`crate::policy::read_dir`] read. A file name that is not UTF-8
    /// cannot be sent: an error naming the file.
    pub fn from_sources(
        sources: Vec<(std::path::PathBuf, String)>,
    ) -> Result<Vec<PolicyFile>, crate::policy::LoadError> {
        sources
            .into_iter()
            .map(
                |(path, text)| match path.file_name().and_then(|n| n.to_str()) {
                    Some(name) => Ok(PolicyFile {
                        name: name.to_owned(),
                        text,
                    }),
                    None => Err(crate::policy::LoadError::Io {
                        source: std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            "the file name is not UTF-8",
                        ),
                        path,
                    }),
                },
            )
            .collect()
    }
}

impl Request {
    /// Parses one request line. The `apply` of earlier versions, which
    /// named a directory for the daemon to read, gets its own answer.
    pub fn from_line(line: &str) -> Result<Request, String> {
        serde_json::from_str(line).map_err(|e| {
            let legacy = serde_json::from_str::<serde_json::Value>(line)
                .is_ok_and(|v| v["request"] == "apply" && v.get("dir").is_some());
            if legacy {
                "apply with `dir` is no longer served: the daemon does not open paths that a \
                 client names; send the files' text (`enforcer apply` of this version does)"
                    .to_owned()
            } else {
                format!("malformed request: {e}")
            }
        })
    }

    /// The least role that may make this request.
    pub fn needs(&self) -> Role {
        match self {
            Request::Apply { .. } | Request::Confirm => Role::Admin,
            Request::Status | Request::Flows { .. } => Role::Read,
        }
    }

    /// The request's name on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Apply { .. } => "apply",
            Request::Confirm => "confirm",
            Request::Status => "status",
            Request::Flows { .. } => "flows",
        }
    }
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

/// Whether the data plane is as the daemon made it: its programs attached
/// and its pins (links, maps) its own. The daemon checks every half second
/// and repairs what it finds (see `docs/daemon.md`, "Integrity").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntegrityStatus {
    /// False while something found broken could not be repaired.
    pub ok: bool,
    /// Repairs since the daemon started.
    pub repairs: u64,
    /// The last repair.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<IntegrityRepair>,
    /// What is broken and could not be repaired; empty when `ok`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

impl Default for IntegrityStatus {
    /// Nothing found broken yet.
    fn default() -> Self {
        IntegrityStatus {
            ok: true,
            repairs: 0,
            last: None,
            problems: Vec::new(),
        }
    }
}

/// One repair of the data plane.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntegrityRepair {
    /// RFC 3339 with milliseconds, UTC.
    pub time: String,
    /// What was repaired: `link cgroup_skb/egress re-attached`, `map pin
    /// FLOWS restored (it was removed)`...
    pub what: String,
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
    /// How complete cgroup discovery is. Absent from the answers of older
    /// daemons (then all zero).
    #[serde(default)]
    pub cgroup_discovery: CgroupDiscovery,
    /// Tamper detection and repair (absent from an earlier daemon's
    /// answer: then the default).
    #[serde(default)]
    pub integrity: IntegrityStatus,
    /// Cgroups registered by the kernel at their creation (absent from an
    /// earlier daemon's answer: then the default).
    #[serde(default)]
    pub cgroup_registration: CgroupRegistration,
    /// Data plane reads that failed while this answer was made: the values
    /// they would have given (counters, a generation) show as 0 or
    /// "unknown". Omitted when every read succeeded (and absent from an
    /// earlier daemon's answer).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read_errors: Vec<String>,
}

/// What the cgroup walks could not see (see `docs/daemon.md`, "Cgroups").
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupDiscovery {
    /// RFC 3339: the last successful scan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scanned_at: Option<String>,
    /// Cgroups found under the root by that scan, the root included.
    pub cgroups: u64,
    /// Directories that scan skipped, by reason.
    pub skipped: SkippedCgroups,
    /// Some of them (at most 16; paths past 240 bytes shortened).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped_paths: Vec<SkippedCgroup>,
    /// Cgroups without an inotify watch: changes below them are seen by
    /// the periodic rescan only.
    pub unwatched: u64,
    /// Rescans that failed since the daemon started (the root unusable).
    pub rescans_failed: u64,
    /// Why the last rescan failed, while rescans fail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// Skipped directories per reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SkippedCgroups {
    /// Its mode denies the daemon: recorded, not walked into.
    pub unreadable: u64,
    /// Removed during the walk (normal churn).
    pub vanished: u64,
    /// At the depth bound with subdirectories below.
    pub depth_limit: u64,
    /// Where the walk stopped at its bound on cgroups.
    pub size_limit: u64,
    /// A name that is not UTF-8 (skipped with its subtree).
    pub not_utf8: u64,
    /// Any other error.
    pub error: u64,
}

impl SkippedCgroups {
    /// (reason as in the JSON keys, count), every reason, in field order.
    pub fn by_reason(&self) -> [(&'static str, u64); 6] {
        let SkippedCgroups {
            unreadable,
            vanished,
            depth_limit,
            size_limit,
            not_utf8,
            error,
        } = *self;
        [
            ("unreadable", unreadable),
            ("vanished", vanished),
            ("depth_limit", depth_limit),
            ("size_limit", size_limit),
            ("not_utf8", not_utf8),
            ("error", error),
        ]
    }
}

/// The kernel's registration of cgroups at their creation (see
/// `docs/dataplane.md`, "Cgroups from their creation").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CgroupRegistration {
    /// Whether cgroups are registered at their creation; when not, one
    /// made while the daemon does not see it is not its workload until the
    /// daemon registers it (`not_enforced` says why).
    pub at_creation: bool,
    /// Cgroups the kernel registered with their workload at creation.
    pub registered: u64,
    /// Cgroups left out because their workload was at its quota
    /// (`max_cgroups_per_workload`).
    pub refused: u64,
    /// Cgroups whose matching states did not fit the kernel's tables (a
    /// delegated subtree past its share, or overlapping patterns): their
    /// children are registered by the daemon instead.
    pub overflows: u64,
}

/// One skipped directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedCgroup {
    /// Relative to the cgroup root.
    pub path: String,
    /// A key of [`SkippedCgroups`]: `unreadable`, `vanished`, ...
    pub reason: String,
}
