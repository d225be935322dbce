//! What a walk could not see: the directories it skipped, counted per
//! reason, the first few named.

use std::collections::BTreeMap;

use rustix::io::Errno;

use super::MAX_NAMED_SKIPS;

/// Why part of the tree was not walked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SkipReason {
    /// The directory cannot be opened or listed (its mode denies it): it is
    /// in the snapshot (its id and owner come from its parent), what lies
    /// below it is not.
    Unreadable,
    /// Removed while the walk reached it: normal churn (systemd creates and
    /// removes scopes all the time).
    Vanished,
    /// At [`ScanLimits::max_depth`] and has subdirectories, which are not
    /// walked.
    DepthLimit,
    /// The walk stopped in this directory at [`ScanLimits::max_cgroups`]
    /// or [`ScanLimits::max_path_bytes`]: the rest of the tree is not
    /// walked.
    SizeLimit,
    /// The name is not UTF-8: selectors and `status` speak UTF-8, and a
    /// lossy conversion could make two names one. Skipped with its subtree.
    NotUtf8,
    /// Anything else (file descriptors or memory exhausted, I/O errors).
    Error,
}

impl SkipReason {
    /// Every reason, in the order `status` and the metrics list them.
    pub const ALL: [SkipReason; 6] = [
        SkipReason::Unreadable,
        SkipReason::Vanished,
        SkipReason::DepthLimit,
        SkipReason::SizeLimit,
        SkipReason::NotUtf8,
        SkipReason::Error,
    ];

    /// The name in `status --json` and in the metrics' `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::Unreadable => "unreadable",
            SkipReason::Vanished => "vanished",
            SkipReason::DepthLimit => "depth_limit",
            SkipReason::SizeLimit => "size_limit",
            SkipReason::NotUtf8 => "not_utf8",
            SkipReason::Error => "error",
        }
    }

    pub(super) fn of(errno: Errno) -> SkipReason {
        match errno {
            Errno::ACCESS | Errno::PERM => SkipReason::Unreadable,
            Errno::NOENT => SkipReason::Vanished,
            _ => SkipReason::Error,
        }
    }
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One directory the walk skipped (or did not walk below).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// Relative to the root, as in the tree (a name that is not UTF-8 is
    /// shown lossily). May be longer than `PATH_MAX`.
    pub path: String,
    pub reason: SkipReason,
    /// The `errno` behind an `unreadable` or `error` skip.
    pub errno: Option<i32>,
}

/// What a walk could not see.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanReport {
    counts: BTreeMap<SkipReason, u64>,
    named: Vec<Skipped>,
}

impl ScanReport {
    /// Directories skipped for `reason`.
    pub fn count(&self, reason: SkipReason) -> u64 {
        self.counts.get(&reason).copied().unwrap_or(0)
    }

    /// Skipped directories of every reason.
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    /// The first [`MAX_NAMED_SKIPS`] skipped directories, in walk order.
    pub fn named(&self) -> &[Skipped] {
        &self.named
    }

    pub(super) fn record(&mut self, path: String, reason: SkipReason, errno: Option<Errno>) {
        *self.counts.entry(reason).or_insert(0) += 1;
        if self.named.len() < MAX_NAMED_SKIPS {
            self.named.push(Skipped {
                path,
                reason,
                errno: errno.map(Errno::raw_os_error),
            });
        }
    }
}
