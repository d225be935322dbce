//! Following cgroups as they come and go: the kernel's cgroup map of the
//! policy in force, corrected in place after every change of the tree.

use super::Engine;
use crate::cgroups::TreeUpdate;
use crate::dataplane::ResolvedCgroup;

impl Engine {
    /// Cgroups came or went: update the policy in force in place. The
    /// tracer registered the new ones at their creation already; this
    /// corrects what it could not know (a directory handed to another user
    /// after its creation, a cgroup past a quota or past the kernel's
    /// state capacity) and writes the states of cgroups it did not follow.
    pub fn on_tree(&mut self, update: TreeUpdate) {
        self.tree = update.tree;
        self.seed_bound_ports();
        let (Some(matcher), Some(current)) = (&self.matcher, &self.current) else {
            return;
        };
        let newer = matcher.resolve(&self.tree);
        let quota = self.settings.max_cgroups_per_workload as usize;
        let (wanted, refused) =
            ResolvedCgroup::of_resolution(&newer, &self.tree, &current.compiled, quota);
        let states = self.dataplane.name_key().map(|_| &newer.states);
        match self.dataplane.sync_cgroups(&wanted, states) {
            Ok(true) => tracing::info!(
                cgroups = wanted.len(),
                "cgroups of the policy in force updated"
            ),
            Ok(false) => {}
            Err(e) => tracing::error!(error = %e, "cannot update the cgroups of the policy"),
        }
        self.refused = refused;
        self.resolution = newer;
    }
}
