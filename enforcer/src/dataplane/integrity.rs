//! Tamper detection and repair while the daemon runs: every link still
//! attached where it must be, every pin (links, maps, the manifest)
//! holding the object this process made, and what is found broken put
//! right from this process's own descriptors. See `docs/dataplane.md`,
//! "Integrity".

use std::{
    io,
    sync::{Arc, Mutex, PoisonError},
};

use super::{
    adoption::KeptMap,
    bpf_sys::ObjectKind,
    links::{Health, KeptLink, LinkSet},
    pins::{self, PinState},
};

/// What one pass of [`IntegrityMonitor::check`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IntegrityReport {
    /// What was broken and is repaired, one line each
    /// (`link cgroup_skb/egress re-attached`).
    pub repaired: Vec<String>,
    /// What is broken and could not be repaired, one line each, with the
    /// reason.
    pub unrepaired: Vec<String>,
}

impl IntegrityReport {
    pub fn is_clean(&self) -> bool {
        self.repaired.is_empty() && self.unrepaired.is_empty()
    }
}

/// Checks and repairs the links and pins of a [`super::Dataplane`],
/// without it (and without the lock a daemon holds on it): the links are
/// shared with it behind their own lock, held for one pass (a few system
/// calls per object), and the maps' descriptors are its own.
#[derive(Debug)]
pub struct IntegrityMonitor {
    links: Arc<Mutex<LinkSet>>,
    maps: Arc<Vec<KeptMap>>,
}

impl IntegrityMonitor {
    pub(crate) fn new(links: Arc<Mutex<LinkSet>>, maps: Arc<Vec<KeptMap>>) -> IntegrityMonitor {
        IntegrityMonitor { links, maps }
    }

    /// One pass: for each link, its state (one call) and its pin (three
    /// calls and a close); for each map, its pin. Repairs what it can:
    ///
    /// - a link detached from its cgroup, or running another program, is
    ///   replaced by a new attachment, which is pinned;
    /// - a removed pin, or one holding another object, is pinned again
    ///   from this process's descriptor.
    pub fn check(&self) -> IntegrityReport {
        let mut report = IntegrityReport::default();
        let mut links = self.links.lock().unwrap_or_else(PoisonError::into_inner);
        let pin_dir = links.pins().cloned();
        for link in links.links_mut() {
            let relinked = check_link(link, &mut report);
            if let Some(path) = pin_dir.as_ref().map(|dir| dir.link_pin(link.name)) {
                let state = if relinked {
                    PinState::Foreign("the link it replaced".to_owned())
                } else {
                    pins::state(&path, ObjectKind::Link, link.id())
                };
                restore_pin(
                    &format!("link pin {}", link.hook),
                    state,
                    relinked,
                    || pins::put_link(link.fd(), &path),
                    &mut report,
                );
            }
        }
        drop(links);
        for map in self.maps.iter() {
            let Some(path) = &map.path else { continue };
            let state = pins::state(path, ObjectKind::Map, map.id);
            restore_pin(
                &format!("map pin {}", map.name),
                state,
                false,
                || pins::put_map(&map.map, path),
                &mut report,
            );
        }
        report
    }
}

/// Checks one link and attaches it again when it is detached or runs
/// another program; returns whether it did.
fn check_link(link: &mut KeptLink, report: &mut IntegrityReport) -> bool {
    let health = match link.health() {
        Ok(health) => health,
        Err(e) => {
            report
                .unrepaired
                .push(format!("link {} cannot be read: {e}", link.hook));
            return false;
        }
    };
    if health == Health::Attached {
        return false;
    }
    match link.reattach() {
        Ok(()) => {
            let why = match health {
                Health::Replaced => " (it ran another program)",
                _ => "",
            };
            report
                .repaired
                .push(format!("link {} re-attached{why}", link.hook));
            true
        }
        Err(e) => {
            report.unrepaired.push(format!(
                "link {} is detached and cannot be attached to {} again: {e}",
                link.hook,
                link.target_description()
            ));
            false
        }
    }
}

/// Pins an object again when its pin is missing or holds another one.
/// After a re-attach the pin is renewed without a report of its own.
fn restore_pin(
    what: &str,
    state: PinState,
    quiet: bool,
    put: impl FnOnce() -> io::Result<()>,
    report: &mut IntegrityReport,
) {
    let why = match state {
        PinState::Ours => return,
        PinState::Missing => "it was removed".to_owned(),
        PinState::Foreign(found) => format!("it held {found}"),
    };
    match put() {
        Ok(()) if quiet => {}
        Ok(()) => report.repaired.push(format!("{what} restored ({why})")),
        Err(e) => report
            .unrepaired
            .push(format!("{what} cannot be restored ({why}): {e}")),
    }
}
