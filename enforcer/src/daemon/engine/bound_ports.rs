//! The ports bound before the programs could see the `bind()` (services
//! started before the daemon), recorded in `BOUND_PORTS` so that local
//! connections to them are judged against the receiving workload.

use std::collections::BTreeMap;

use enforcer_common::ports::BoundPort;

use super::Engine;

impl Engine {
    /// Record the ports bound on this host that `BOUND_PORTS` lacks. Runs
    /// at start, on each full apply, on each cgroup change and every 30 s
    /// (services can start and stop without a cgroup change); failures are
    /// logged, since the kernel's own entries keep working.
    pub fn seed_bound_ports(&mut self) {
        let mount = match crate::cgroups::cgroup2_mount() {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list bound ports: no cgroup v2 mount");
                return;
            }
        };
        // The scan sees this namespace's sockets; the kernel keeps every
        // namespace's apart.
        let netns = match crate::dataplane::netns_cookie() {
            Ok(cookie) => cookie,
            Err(e) => {
                tracing::error!(error = %e, "cannot record the ports already bound");
                return;
            }
        };
        let known: BTreeMap<(u8, u16), BoundPort> = match self.dataplane.bound_ports() {
            Ok(entries) => entries
                .into_iter()
                .filter(|(k, _)| k.netns == netns)
                .map(|(k, v)| ((k.protocol, k.port), v))
                .collect(),
            Err(e) => {
                tracing::error!(error = %e, "cannot read the bound ports");
                return;
            }
        };
        let scan = crate::cgroups::sockets::scan(&mount, |protocol, port| {
            known.contains_key(&(protocol, port))
        });
        let mut ports = scan.owners;
        // Seeded entries whose port is still bound stay (the `/proc`
        // fallback does not look their owners up again).
        ports.extend(
            known
                .iter()
                .filter(|(key, v)| v.cookie == 0 && scan.bound.contains(key))
                .map(|(&(protocol, port), v)| (protocol, port, v.cgroup_id)),
        );
        match self.dataplane.seed_bound_ports(netns, &ports) {
            Ok(0) => {}
            Ok(added) => {
                tracing::info!(added, "ports bound before the daemon started recorded");
            }
            Err(e) => tracing::error!(error = %e, "cannot record the ports already bound"),
        }
    }
}
