//! This host's addresses, which the policy in force judges as `host`: read
//! at every install, and put in force again whenever they change.

use super::{Engine, EngineError};
use crate::dataplane::HostAddrs;

/// This host's addresses, or why they cannot be listed.
pub(super) fn list_host_addrs() -> Result<HostAddrs, EngineError> {
    HostAddrs::from_system().map_err(EngineError::UnableToListHostAddrs)
}

impl Engine {
    /// This host's addresses may have changed (a netlink notification, or
    /// the periodic check): when they did, put them in force, as the
    /// `host` entries of the address tries of the policy in force, through
    /// the atomic swap (a new generation: flows and cached verdicts are
    /// judged again). Returns whether anything was written.
    pub fn refresh_host_addrs(&mut self) -> bool {
        let host = match list_host_addrs() {
            Ok(host) => host,
            Err(e) => {
                tracing::error!("{}", e.joined());
                return false;
            }
        };
        if host == self.host {
            return false;
        }
        let written =
            if let (Some(current), Some(matcher)) = (self.current.clone(), self.matcher.clone()) {
                let resolution = matcher.resolve(&self.tree);
                Some(
                    self.swap_in(&current.compiled, &matcher, resolution, &host)
                        .map(|(generation, resolution)| {
                            self.resolution = resolution;
                            generation
                        }),
                )
            } else if let Some(kernel) = &self.kernel_policy
                && let Some(base) = &kernel.base
            {
                Some(self.dataplane.apply_content(
                    base.clone().with_host_routes(&host),
                    kernel.stamp.unwrap_or_default(),
                ))
            } else {
                // Nothing in force: the next install reads them.
                None
            };
        let added: Vec<String> = host
            .addrs
            .iter()
            .filter(|a| !self.host.addrs.contains(a))
            .map(ToString::to_string)
            .collect();
        let removed: Vec<String> = self
            .host
            .addrs
            .iter()
            .filter(|a| !host.addrs.contains(a))
            .map(ToString::to_string)
            .collect();
        match written {
            Some(Ok(generation)) => {
                if let Some(current) = &mut self.current {
                    current.generation = generation;
                }
                tracing::info!(
                    generation,
                    ?added,
                    ?removed,
                    "this host's addresses changed: put in force"
                );
            }
            Some(Err(e)) => {
                tracing::error!(
                    ?added,
                    ?removed,
                    "cannot put this host's new addresses in force; retried at the next change or check: {e}"
                );
                return false;
            }
            None => tracing::info!(?added, ?removed, "this host's addresses changed"),
        }
        self.host = host;
        written.is_some()
    }
}
