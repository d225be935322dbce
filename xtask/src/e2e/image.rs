//! The cached Debian root the end-to-end test boots.
//!
//! Built once with `debootstrap` plus the services and clients the scenario
//! needs, then kept under [`CACHE_DIR`] (outside the repository) in a
//! directory named after a hash of everything that went into it: the suite,
//! the mirror, the architecture and the package lists. A later run with the
//! same inputs finds it and starts in seconds; a change of any input builds a
//! new one next to it. Each run boots a throw-away overlay of the image (see
//! `container.rs`), so the image itself is never modified after it is built.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, Result, bail};

use crate::cmd::{self, step};

/// Where images and per-run overlays live: outside the repository, so a fresh
/// clone on the same machine reuses them.
pub(super) const CACHE_DIR: &str = "/var/cache/enforcer-e2e";

/// What the booted system needs to be a systemd host at all, with user
/// managers as on any installed Debian (`libpam-systemd` gives them their
/// runtime directory): the test starts units of a user's own manager.
const BASE_PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "dbus",
    "libpam-systemd",
    "iproute2",
];

/// Real daemons listening on TCP and their real clients, as an operator's
/// server would have them (installed from Debian, not built here). `man-db`
/// too, as on any standard Debian: `systemd-analyze verify` runs `man` to
/// check the unit's `Documentation=man:` pages.
const SERVICE_PACKAGES: &[&str] = &["nginx", "postgresql", "curl", "postgresql-client", "man-db"];

/// Bumped when the way the image is built changes (not only its inputs).
const RECIPE_VERSION: u32 = 1;

/// The file inside an image that holds its full key, checked on reuse so a
/// hash collision or a half-written image is never taken for a good one.
const KEY_FILE: &str = "enforcer-e2e.key";

/// The inputs an image is built from.
#[derive(Debug)]
pub(super) struct Spec {
    pub suite: String,
    pub mirror: String,
    pub arch: String,
}

impl Spec {
    /// The host's own suite and mirror, read from `/etc/os-release` and the
    /// apt sources: the archive this machine is known to reach.
    pub(super) fn from_host() -> Result<Self> {
        let os_release =
            fs::read_to_string("/etc/os-release").context("cannot read /etc/os-release")?;
        let suite = os_release_field(&os_release, "VERSION_CODENAME")
            .context("/etc/os-release has no VERSION_CODENAME: not a Debian release?")?;
        let mirror = apt_mirror(&suite)?;
        let arch = cmd::capture(Command::new("dpkg").arg("--print-architecture"))?
            .trim()
            .to_string();
        Ok(Self {
            suite,
            mirror,
            arch,
        })
    }

    /// Every input, one per line: stored in the image and hashed for its name.
    fn key(&self) -> String {
        let mut key = String::new();
        let _ = writeln!(key, "recipe {RECIPE_VERSION}");
        let _ = writeln!(key, "suite {}", self.suite);
        let _ = writeln!(key, "mirror {}", self.mirror);
        let _ = writeln!(key, "arch {}", self.arch);
        let _ = writeln!(key, "base {}", BASE_PACKAGES.join(","));
        let _ = writeln!(key, "services {}", SERVICE_PACKAGES.join(","));
        key
    }

    /// The image directory for these inputs.
    pub(super) fn image_dir(&self) -> PathBuf {
        Path::new(CACHE_DIR).join(format!(
            "image-{}-{:016x}",
            self.suite,
            fnv1a(self.key().as_bytes())
        ))
    }
}

/// The image for `spec`: reused when a complete one exists, built otherwise.
pub(super) fn ensure(spec: &Spec) -> Result<PathBuf> {
    let dir = spec.image_dir();
    let root = dir.join("root");
    let key = spec.key();
    if fs::read_to_string(root.join(KEY_FILE)).is_ok_and(|stored| stored == key) {
        step(format!(
            "cached root {} (key: {})",
            root.display(),
            one_line(&key)
        ));
        return Ok(root);
    }
    step(format!(
        "no cached root for this package list: building {} (a few minutes, once)",
        root.display()
    ));
    build(spec, &dir)?;
    Ok(root)
}

/// Builds into a temporary directory and renames it into place only when
/// complete, so an interrupted build is never reused.
fn build(spec: &Spec, dir: &Path) -> Result<()> {
    let building = dir.with_extension("building");
    if building.exists() {
        fs::remove_dir_all(&building)
            .with_context(|| format!("cannot remove the stale {}", building.display()))?;
    }
    fs::create_dir_all(&building)
        .with_context(|| format!("cannot create {}", building.display()))?;
    let root = building.join("root");

    let started = Instant::now();
    cmd::run(
        Command::new("debootstrap")
            .arg("--variant=minbase")
            .arg(format!("--include={}", BASE_PACKAGES.join(",")))
            .arg(format!("--arch={}", spec.arch))
            .arg(&spec.suite)
            .arg(&root)
            .arg(&spec.mirror),
    )?;
    step(format!("debootstrap: {:.0?}", started.elapsed()));

    let started = Instant::now();
    install_services(&root)?;
    step(format!("service packages: {:.0?}", started.elapsed()));

    fs::write(root.join(KEY_FILE), spec.key())
        .with_context(|| format!("cannot write {}", root.join(KEY_FILE).display()))?;
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("cannot replace {}", dir.display()))?;
    }
    fs::rename(&building, dir)
        .with_context(|| format!("cannot rename {} to {}", building.display(), dir.display()))?;
    Ok(())
}

/// Installs the services with apt inside the new root. `systemd-nspawn`
/// without `-b` gives apt a proper /proc, /dev and /sys and the host's
/// network to reach the archive; a `policy-rc.d` that refuses every start
/// keeps the maintainer scripts from starting nginx or PostgreSQL here, where
/// they would listen in the host's network namespace. The services start for
/// real when the image is booted.
fn install_services(root: &Path) -> Result<()> {
    let policy_rc_d = root.join("usr/sbin/policy-rc.d");
    fs::write(
        &policy_rc_d,
        "#!/bin/sh\n# enforcer-e2e image build: start nothing\nexit 101\n",
    )
    .with_context(|| format!("cannot write {}", policy_rc_d.display()))?;
    set_executable(&policy_rc_d)?;

    let script = format!(
        "set -eu\n\
         export DEBIAN_FRONTEND=noninteractive\n\
         apt-get update\n\
         apt-get install -y --no-install-recommends {}\n\
         apt-get clean\n",
        SERVICE_PACKAGES.join(" ")
    );
    let result = cmd::run(
        Command::new("systemd-nspawn")
            .env("SYSTEMD_SECCOMP", "0")
            .args(["--quiet", "--register=no", "--keep-unit", "--pipe", "-D"])
            .arg(root)
            .args(["/bin/sh", "-c", &script]),
    );
    fs::remove_file(&policy_rc_d)
        .with_context(|| format!("cannot remove {}", policy_rc_d.display()))?;
    result
}

fn set_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("cannot chmod {}", path.display()))
}

/// The URI of the first apt source that serves `suite` itself (not
/// `-updates` or `-security`), from both one-line (`*.list`) and deb822
/// (`*.sources`) files.
fn apt_mirror(suite: &str) -> Result<String> {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(entries) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        more.sort();
        files.extend(more);
    }
    for file in &files {
        let Ok(text) = fs::read_to_string(file) else {
            continue;
        };
        let found = if file.extension().is_some_and(|e| e == "sources") {
            mirror_in_deb822(&text, suite)
        } else {
            mirror_in_one_line(&text, suite)
        };
        if let Some(mirror) = found {
            return Ok(mirror);
        }
    }
    bail!(
        "no apt source for suite `{suite}` in /etc/apt/sources.list or /etc/apt/sources.list.d: \
         cannot tell debootstrap which mirror to use"
    )
}

fn mirror_in_one_line(text: &str, suite: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let line = line.split('#').next().unwrap_or_default();
        let mut words = line.split_whitespace();
        if words.next() != Some("deb") {
            return None;
        }
        // Skip an options block such as `[signed-by=... arch=amd64]`.
        let mut uri = words.next()?;
        if uri.starts_with('[') {
            while !uri.ends_with(']') {
                uri = words.next()?;
            }
            uri = words.next()?;
        }
        (words.next() == Some(suite)).then(|| uri.to_string())
    })
}

fn mirror_in_deb822(text: &str, suite: &str) -> Option<String> {
    // Stanzas are separated by blank lines; comment lines are ignored.
    text.split("\n\n").find_map(|stanza| {
        let field = |name: &str| {
            stanza
                .lines()
                .filter(|l| !l.starts_with('#'))
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
        };
        let is_deb = field("Types").is_some_and(|t| t.split_whitespace().any(|t| t == "deb"));
        let has_suite = field("Suites").is_some_and(|s| s.split_whitespace().any(|s| s == suite));
        let uri = field("URIs")?.split_whitespace().next()?;
        (is_deb && has_suite).then(|| uri.to_string())
    })
}

fn os_release_field(text: &str, name: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix('=')?;
        let value = value.trim().trim_matches('"');
        (!value.is_empty()).then(|| value.to_string())
    })
}

/// 64-bit FNV-1a: a stable, dependency-free hash for the cache directory's
/// name (the full key is compared too, so collisions cannot mislead).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn one_line(key: &str) -> String {
    key.lines().collect::<Vec<_>>().join("; ")
}

/// Removes images other than `keep` (older package lists), so the cache does
/// not grow with every change of inputs.
pub(super) fn prune_others(keep: &Path) -> Result<()> {
    let Ok(entries) = fs::read_dir(CACHE_DIR) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_image = entry.file_name().to_string_lossy().starts_with("image-");
        if is_image && path != keep && path.extension().is_none_or(|e| e != "building") {
            step(format!(
                "removing an image of another package list: {}",
                path.display()
            ));
            fs::remove_dir_all(&path)
                .with_context(|| format!("cannot remove {}", path.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deb822_picks_the_stanza_with_the_exact_suite() {
        let text = "Types: deb\n# comment\nURIs: http://security.example/debian-security\n\
                    Suites: bookworm-security\nComponents: main\n\n\
                    Types: deb\nURIs: http://archive.example/debian\n\
                    Suites: bookworm bookworm-updates\nComponents: main\n";
        assert_eq!(
            mirror_in_deb822(text, "bookworm").as_deref(),
            Some("http://archive.example/debian")
        );
        assert_eq!(mirror_in_deb822(text, "trixie"), None);
    }

    #[test]
    fn one_line_sources_skip_options_and_other_suites() {
        let text = "# deb http://old.example/debian bookworm main\n\
                    deb http://tools.example/apt cloud-sdk-bookworm main\n\
                    deb [arch=amd64 signed-by=/k.gpg] http://archive.example/debian bookworm main\n";
        assert_eq!(
            mirror_in_one_line(text, "bookworm").as_deref(),
            Some("http://archive.example/debian")
        );
    }

    #[test]
    fn key_changes_with_the_package_list_and_the_mirror() {
        let a = Spec {
            suite: "bookworm".into(),
            mirror: "http://a.example/debian".into(),
            arch: "amd64".into(),
        };
        let b = Spec {
            mirror: "http://b.example/debian".into(),
            ..Spec {
                suite: a.suite.clone(),
                mirror: String::new(),
                arch: a.arch.clone(),
            }
        };
        assert_ne!(a.image_dir(), b.image_dir());
        assert!(a.key().contains(&SERVICE_PACKAGES.join(",")));
    }
}
