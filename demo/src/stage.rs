//! The demo's small world, all of it real and all of it removed on drop:
//! workload cgroups under a demo cgroup root, test hosts in network
//! namespaces, echo servers in the workloads, and the kernel programs
//! attached to the demo root with the policy in force.

use std::{
    collections::BTreeSet,
    fs,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    os::unix::fs::MetadataExt as _,
    path::Path,
};

use anyhow::{Context as _, Result, bail};
use enforcer::{
    cgroups::{CgroupTree, Matcher, uid_of_user},
    compile::CompiledPolicy,
    dataplane::{Dataplane, DataplaneOptions, EventReader, HostAddrs, ResolvedCgroup},
};
use enforcer_common::workload::Mode;
use enforcer_tests::{CgroupGuard, Server, TestHost};

use super::daemon::Daemon;

/// The address the vendor host connects from: `peer.vendor-support`.
pub(crate) const VENDOR_ADDR: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 17));

/// A process of one of the demo's workloads, on this machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Tier {
    Web,
    Api,
    Db,
}

/// A test host, somewhere on the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Remote {
    Office,
    Vendor,
    World,
}

/// Where a client or server runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Place {
    Local(Tier),
    Remote(Remote),
}

/// One cgroup the policy's selectors resolved to a workload.
#[derive(Clone, Debug)]
pub(crate) struct Resolution {
    /// Relative to the demo cgroup root.
    pub path: String,
    pub workload: String,
    pub cgroup: ResolvedCgroup,
}

/// The kernel side, once the policy is in force.
#[expect(
    clippy::large_enum_variant,
    reason = "one value per demo run, never copied: boxing either side buys nothing"
)]
pub(crate) enum Enforcement {
    /// The demo drives the data plane itself (`--library`).
    Library {
        dataplane: Box<Dataplane>,
        events: EventReader,
        generation: u32,
    },
    /// `enforcer run` does (the default).
    Daemon(Daemon),
}

/// Everything the demo created. Fields drop in declaration order: the
/// programs are detached first, then servers stop, then test hosts and
/// cgroups go.
pub(crate) struct Stage {
    pub enforcement: Option<Enforcement>,
    /// The cgroups resolved to workloads, once the policy is in force.
    pub resolved: Vec<Resolution>,
    servers: Vec<(Place, Server)>,
    pub office: TestHost,
    pub vendor: TestHost,
    pub world: TestHost,
    web: CgroupGuard,
    api: CgroupGuard,
    db: CgroupGuard,
    _slice: CgroupGuard,
    /// Declared last so the children above are removed before it (its own
    /// teardown would remove them too).
    root: CgroupGuard,
}

impl Stage {
    /// Creates the cgroups and the test hosts.
    pub(crate) fn build() -> Result<Stage> {
        // The workloads' cgroups as systemd names them, under a demo root
        // that stands in for the machine's cgroup root.
        let root = CgroupGuard::new().context("creating the demo cgroup root")?;
        let slice = root.child("system.slice")?;
        let web = slice.child("nginx.service")?;
        let api = slice.child("api-1.service")?;
        let db = slice.child("postgresql.service")?;
        let office = TestHost::new("203.0.113.0/24", "2001:db8:20::/64")
            .context("creating the office test host")?;
        // The vendor host's link is 198.51.100.0/27 (this machine .1, the
        // host .2); it connects from 198.51.100.17, vendor-support's /32.
        let vendor = TestHost::builder()
            .ipv4("198.51.100.0/27")
            .build()
            .context("creating the vendor test host")?;
        vendor
            .add_address(VENDOR_ADDR)
            .context("giving the vendor host 198.51.100.17")?;
        // Somewhere else on the Internet: no peer covers these addresses.
        let world = TestHost::new("198.51.100.128/25", "2001:db8:30::/64")
            .context("creating the world test host")?;
        Ok(Stage {
            enforcement: None,
            resolved: Vec::new(),
            servers: Vec::new(),
            office,
            vendor,
            world,
            web,
            api,
            db,
            _slice: slice,
            root,
        })
    }

    pub(crate) fn root(&self) -> &CgroupGuard {
        &self.root
    }

    pub(crate) fn cgroup(&self, tier: Tier) -> &CgroupGuard {
        match tier {
            Tier::Web => &self.web,
            Tier::Api => &self.api,
            Tier::Db => &self.db,
        }
    }

    pub(crate) fn host(&self, remote: Remote) -> &TestHost {
        match remote {
            Remote::Office => &self.office,
            Remote::Vendor => &self.vendor,
            Remote::World => &self.world,
        }
    }

    /// The network namespaces, for the cleanup check.
    pub(crate) fn netns_names(&self) -> Vec<String> {
        [&self.office, &self.vendor, &self.world]
            .iter()
            .map(|h| h.name().to_owned())
            .collect()
    }

    /// Starts `enforcer run` on the demo cgroup root and waits until the
    /// policy is in force; takes the daemon's cgroup resolution.
    pub(crate) fn enforce_with_daemon(&mut self, enforcer: &Path, policies: &Path) -> Result<()> {
        let daemon = Daemon::start(enforcer, policies, self.root.path(), 3)?;
        let status = daemon.status()?;
        let mut resolved = Vec::new();
        for w in &status.workloads {
            let mode = match w.mode.as_str() {
                "audit" => Mode::Audit as u8,
                "off" => Mode::Off as u8,
                _ => Mode::Enforce as u8,
            };
            for path in &w.cgroups {
                let dir = self.root.path().join(path);
                let cgroup_id = fs::metadata(&dir)
                    .with_context(|| format!("stat {}", dir.display()))?
                    .ino();
                resolved.push(Resolution {
                    path: path.clone(),
                    workload: w.name.clone(),
                    cgroup: ResolvedCgroup {
                        cgroup_id,
                        workload: w.identity,
                        // The status does not report verdict classes, and
                        // the demo only names workloads with these.
                        class: w.identity,
                        mode,
                    },
                });
            }
        }
        resolved.sort_by(|a, b| a.path.cmp(&b.path));
        self.resolved = resolved;
        self.enforcement = Some(Enforcement::Daemon(daemon));
        Ok(())
    }

    /// Loads the kernel programs, attaches them to the demo cgroup root,
    /// resolves the workload cgroups with the policy's selectors and puts
    /// the policy in force: what the daemon does at start.
    pub(crate) fn enforce_with_library(&mut self, policy: &CompiledPolicy) -> Result<()> {
        let mut dataplane =
            Dataplane::load(&DataplaneOptions::default()).context("loading the kernel programs")?;
        dataplane
            .attach(self.root.path())
            .with_context(|| format!("attaching to {}", self.root.path().display()))?;
        let resolved = resolve(policy, self.root.path())?;
        let cgroups: Vec<ResolvedCgroup> = resolved.iter().map(|r| r.cgroup).collect();
        // After the test hosts exist, so the veth addresses count as this
        // host's own.
        let host = HostAddrs::from_system().context("listing this host's addresses")?;
        let generation = dataplane
            .apply(policy, &cgroups, &host)
            .context("writing the policy into the kernel maps")?;
        let events = dataplane.take_events()?;
        self.resolved = resolved;
        self.enforcement = Some(Enforcement::Library {
            dataplane: Box::new(dataplane),
            events,
            generation,
        });
        Ok(())
    }

    /// The workload the policy resolved a tier's cgroup to.
    pub(crate) fn resolution(&self, tier: Tier) -> Option<&Resolution> {
        let id = self.cgroup(tier).id();
        self.resolved.iter().find(|r| r.cgroup.cgroup_id == id)
    }

    /// Starts an echo server at `addr` in `place`, unless one runs there.
    /// Started after [`Stage::enforce`], as services start after the
    /// daemon: the kernel learns which workload owns a port at `bind()`.
    pub(crate) fn serve(&mut self, place: Place, addr: SocketAddr) -> Result<()> {
        if self
            .servers
            .iter()
            .any(|(p, s)| *p == place && s.addr() == addr)
        {
            return Ok(());
        }
        let server = match place {
            Place::Local(tier) => Server::tcp(Some(self.cgroup(tier)), None, addr),
            Place::Remote(remote) => Server::tcp(None, Some(self.host(remote)), addr),
        }
        .with_context(|| {
            format!("starting a server on {addr} (is the port already used on this machine?)")
        })?;
        self.servers.push((place, server));
        Ok(())
    }

    /// The servers' ports per place, for the summary.
    pub(crate) fn ports(&self, place: Place) -> BTreeSet<u16> {
        self.servers
            .iter()
            .filter(|(p, _)| *p == place)
            .map(|(_, s)| s.addr().port())
            .collect()
    }

    /// How many servers run.
    pub(crate) fn server_count(&self) -> usize {
        self.servers.len()
    }
}

/// Resolves the cgroups under `root` (standing in for the cgroup root) to
/// the policy's workloads, as the daemon does (`enforcer::cgroups::Matcher`).
/// A cgroup's descendants need no entry: the kernel looks up ancestors.
pub(crate) fn resolve(policy: &CompiledPolicy, root: &Path) -> Result<Vec<Resolution>> {
    let tree = CgroupTree::scan(root).with_context(|| format!("scanning {}", root.display()))?;
    let matcher = Matcher::new(&policy.workloads, uid_of_user)
        .context("the policy's selectors do not fit the kernel's tables")?;
    let resolution = matcher.resolve(&tree);
    if let Some(ambiguity) = resolution.ambiguities.first() {
        bail!(
            "cgroup {} matches several workloads ({})",
            ambiguity.path,
            ambiguity.workloads.join(", ")
        );
    }
    resolution
        .cgroups
        .iter()
        .map(|c| {
            let w = policy
                .workload(c.workload)
                .context("a resolved workload is in the policy")?;
            Ok(Resolution {
                path: c.path.clone(),
                workload: w.name.clone(),
                cgroup: ResolvedCgroup {
                    cgroup_id: c.id,
                    workload: w.identity,
                    class: w.class,
                    mode: w.mode,
                },
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;

    /// A plain directory tree stands in for the cgroup tree: resolution
    /// only reads directory names, owners and inode numbers. (Run as root,
    /// as every test of this crate: the directories must belong to root.)
    #[test]
    fn resolves_the_example_policy_selectors_under_a_root() {
        // Root-owned directories, as cgroups the system manager made.
        let _root = enforcer_tests::privileged!();
        let dir =
            std::env::temp_dir().join(format!("enforcer-demo-resolve-{}", std::process::id()));
        for sub in [
            "system.slice/nginx.service/worker",
            "system.slice/api-1.service",
            "system.slice/api-2.service",
            "system.slice/postgresql.service",
            "system.slice/sshd.service",
            "user.slice/nginx.service.d",
        ] {
            fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/example");
        let (policy, _) = enforcer::check::compile_dir(&example, SystemTime::now()).unwrap();
        let resolved = resolve(&policy, &dir);
        fs::remove_dir_all(&dir).unwrap();
        let got: Vec<(String, String, u8)> = resolved
            .unwrap()
            .into_iter()
            .map(|r| (r.path, r.workload, r.cgroup.mode))
            .collect();
        let want = [
            ("system.slice/api-1.service", "api", Mode::Audit as u8),
            ("system.slice/api-2.service", "api", Mode::Audit as u8),
            ("system.slice/nginx.service", "web", Mode::Enforce as u8),
            ("system.slice/postgresql.service", "db", Mode::Enforce as u8),
        ]
        .map(|(p, w, m)| (p.to_owned(), w.to_owned(), m));
        assert_eq!(got, want);
    }
}
