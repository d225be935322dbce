//! Tamper detection and repair: a running daemon keeps its links attached
//! and its pins its own (link and map pins removed, links force-detached
//! with `bpftool link detach`), and a daemon starting on pinned maps of the
//! wrong shape replaces them with fresh ones and enforces its policy in
//! full. Real daemons, real connections.

mod daemon_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use daemon_support::{Daemon, servers_and_web_policy, web_policy, write_policy};
use enforcer_common::layout::LAYOUT_DIR;
use enforcer_tests::{CgroupGuard, ProbeOutcome, bpftool_json, privileged, tcp_connect};

/// The eleven links a daemon pins: nine cgroup programs, two tracers.
const LINKS: usize = 11;

/// How long a repair may take (the daemon checks every half second).
const REPAIR_WITHIN: Duration = Duration::from_secs(2);

fn links_dir(daemon: &Daemon) -> PathBuf {
    daemon.bpffs.join(LAYOUT_DIR).join("links")
}

fn link_pins(daemon: &Daemon) -> Vec<PathBuf> {
    let mut pins: Vec<PathBuf> = std::fs::read_dir(links_dir(daemon))
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    pins.sort();
    pins
}

/// What `bpftool link show pinned PIN` says of a pinned link.
fn pinned_link(pin: &Path) -> serde_json::Value {
    bpftool_json(&["link", "show", "pinned", pin.to_str().expect("UTF-8 path")])
}

/// Whether every link pin of the daemon is there and holds an attached
/// link (a cgroup link on `cgroup_id`).
fn all_pins_attached(daemon: &Daemon, cgroup_id: u64) -> bool {
    let pins = link_pins(daemon);
    pins.len() == LINKS
        && pins.iter().all(|pin| {
            let link = pinned_link(pin);
            match link["type"].as_str() {
                Some("cgroup") => link["cgroup_id"].as_u64() == Some(cgroup_id),
                Some(_) => true,
                None => false,
            }
        })
}

fn assert_enforcing(
    web: &CgroupGuard,
    allowed: &enforcer_tests::Server,
    denied: &enforcer_tests::Server,
    daemon: &Daemon,
) {
    assert_eq!(
        tcp_connect(web, None, denied.addr()),
        ProbeOutcome::Eperm,
        "a denied connection must be refused\n{}",
        daemon.log()
    );
    assert_eq!(
        tcp_connect(web, None, allowed.addr()),
        ProbeOutcome::Ok,
        "an allowed connection must succeed\n{}",
        daemon.log()
    );
}

#[test]
fn removed_link_pins_detach_nothing_and_are_pinned_again() {
    let _root = privileged!();
    let root = CgroupGuard::new().expect("cgroup");
    let web = root.child("web").expect("web cgroup");
    let (allowed, denied, policies) = servers_and_web_policy();
    let mut daemon = Daemon::start(&root, &policies.0);
    assert!(all_pins_attached(&daemon, root.id()), "{}", daemon.log());
    assert_eq!(daemon.status().integrity.repairs, 0);

    // What `rm /sys/fs/bpf/enforcer/v6/links/*` does.
    for pin in link_pins(&daemon) {
        std::fs::remove_file(&pin).expect("remove a link pin");
    }
    // The daemon holds its links: nothing was detached, not even for the
    // time the pins were gone.
    assert_enforcing(&web, &allowed, &denied, &daemon);

    assert!(
        Daemon::eventually(REPAIR_WITHIN, || all_pins_attached(&daemon, root.id())),
        "the link pins are not back within {REPAIR_WITHIN:?}: {:?}\n{}",
        link_pins(&daemon),
        daemon.log()
    );
    let status = daemon.status();
    assert!(status.integrity.ok, "{:?}", status.integrity);
    assert!(
        status.integrity.repairs >= LINKS as u64,
        "{:?}",
        status.integrity
    );
    let last = status.integrity.last.expect("the last repair");
    assert!(last.what.starts_with("link pin "), "{}", last.what);
    assert!(
        last.what.ends_with("restored (it was removed)"),
        "{}",
        last.what
    );
    assert!(status.not_enforced.is_empty(), "{:?}", status.not_enforced);
    let log = daemon.log();
    for hook in [
        "cgroup_skb/egress",
        "cgroup/connect4",
        "tp_btf/cgroup_mkdir",
    ] {
        assert!(
            log.contains(&format!("integrity: link pin {hook} restored")),
            "no repair of {hook} logged:\n{log}"
        );
    }

    // The pins hold the real links: without the daemon they still enforce.
    daemon.kill9();
    assert_enforcing(&web, &allowed, &denied, &daemon);
}

/// The kernel id of the map pinned at `pin`, if a map is pinned there.
fn pinned_map_id(pin: &Path) -> Option<u64> {
    if !pin.exists() {
        return None;
    }
    bpftool_json(&["map", "show", "pinned", pin.to_str().expect("UTF-8 path")])["id"].as_u64()
}

#[test]
fn removed_map_pins_are_pinned_again_with_the_same_maps() {
    let _root = privileged!();
    let root = CgroupGuard::new().expect("cgroup");
    let web = root.child("web").expect("web cgroup");
    let (allowed, denied, policies) = servers_and_web_policy();
    let mut daemon = Daemon::start(&root, &policies.0);
    let maps = daemon.bpffs.join(LAYOUT_DIR);
    let pins: Vec<(PathBuf, u64)> = ["FLOWS", "SOCKET_FLOWS", "MANIFEST"]
        .iter()
        .map(|name| {
            let pin = maps.join(name);
            let id = pinned_map_id(&pin).expect("a pinned map");
            (pin, id)
        })
        .collect();
    for (pin, _) in &pins {
        std::fs::remove_file(pin).expect("remove a map pin");
    }
    assert!(
        Daemon::eventually(REPAIR_WITHIN, || pins
            .iter()
            .all(|(pin, id)| pinned_map_id(pin) == Some(*id))),
        "the map pins are not back with their maps within {REPAIR_WITHIN:?}\n{}",
        daemon.log()
    );
    let status = daemon.status();
    assert!(status.integrity.ok, "{:?}", status.integrity);
    let log = daemon.log();
    for name in ["FLOWS", "SOCKET_FLOWS", "MANIFEST"] {
        assert!(
            log.contains(&format!(
                "integrity: map pin {name} restored (it was removed)"
            )),
            "no repair of {name} logged:\n{log}"
        );
    }

    // The restored set, manifest included, is adopted by the next daemon.
    daemon.terminate();
    daemon.restart();
    assert_enforcing(&web, &allowed, &denied, &daemon);
    let log = daemon.log();
    assert!(!log.contains("the pinned maps are not adopted"), "{log}");
    for (pin, id) in &pins {
        assert_eq!(pinned_map_id(pin), Some(*id), "{}", pin.display());
    }
}

#[test]
fn force_detached_links_are_attached_again() {
    let _root = privileged!();
    let root = CgroupGuard::new().expect("cgroup");
    let web = root.child("web").expect("web cgroup");
    let (allowed, denied, policies) = servers_and_web_policy();
    let daemon = Daemon::start(&root, &policies.0);
    assert_enforcing(&web, &allowed, &denied, &daemon);

    // Only this daemon's links: the ones its pins hold.
    let links: Vec<serde_json::Value> = link_pins(&daemon).iter().map(|p| pinned_link(p)).collect();
    assert_eq!(links.len(), LINKS);
    let (cgroup_links, tracer_links): (Vec<_>, Vec<_>) = links
        .iter()
        .partition(|link| link["type"].as_str() == Some("cgroup"));
    assert_eq!(cgroup_links.len(), 9);
    for link in &cgroup_links {
        assert_eq!(link["cgroup_id"].as_u64(), Some(root.id()), "{link}");
        let id = link["id"].as_u64().expect("link id").to_string();
        let out = Command::new("bpftool")
            .args(["link", "detach", "id", &id])
            .output()
            .expect("run bpftool");
        assert!(
            out.status.success(),
            "bpftool link detach id {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The kernel refuses to detach a raw tracepoint link (EOPNOTSUPP): the
    // tracers' repair is their pins' (the test above). Should a kernel
    // allow it, they must be attached again like the others.
    let mut tracers_detached = Vec::new();
    for link in &tracer_links {
        let id = link["id"].as_u64().expect("link id").to_string();
        let out = Command::new("bpftool")
            .args(["link", "detach", "id", &id])
            .output()
            .expect("run bpftool");
        if out.status.success() {
            tracers_detached.push(link["tp_name"].as_str().unwrap_or("?").to_owned());
        }
    }

    // Enforcement is back within the repair time: real probes.
    assert!(
        Daemon::eventually(REPAIR_WITHIN, || tcp_connect(&web, None, denied.addr())
            == ProbeOutcome::Eperm),
        "a denied connection is not refused again within {REPAIR_WITHIN:?}\n{}",
        daemon.log()
    );
    assert!(
        Daemon::eventually(REPAIR_WITHIN, || all_pins_attached(&daemon, root.id())),
        "the pins do not hold attached links within {REPAIR_WITHIN:?}\n{}",
        daemon.log()
    );
    assert_enforcing(&web, &allowed, &denied, &daemon);
    // Each program once on the cgroup: the detached links are gone.
    let attached = bpftool_json(&["link", "show"])
        .as_array()
        .expect("links")
        .iter()
        .filter(|l| l["cgroup_id"].as_u64() == Some(root.id()))
        .count();
    assert_eq!(attached, 9, "{}", daemon.log());

    let status = daemon.status();
    assert!(status.integrity.ok, "{:?}", status.integrity);
    assert!(status.integrity.repairs >= 9, "{:?}", status.integrity);
    let log = daemon.log();
    for hook in [
        "cgroup_skb/egress",
        "cgroup_skb/ingress",
        "cgroup/connect4",
        "cgroup/connect6",
        "cgroup/sendmsg4",
        "cgroup/sendmsg6",
        "cgroup/post_bind4",
        "cgroup/post_bind6",
        "cgroup/sock_release",
    ] {
        assert!(
            log.contains(&format!("integrity: link {hook} re-attached")),
            "no re-attach of {hook} logged:\n{log}"
        );
    }
    for tracepoint in tracers_detached {
        assert!(
            log.contains(&format!("integrity: link tp_btf/{tracepoint} re-attached")),
            "the detached tracer {tracepoint} was not attached again:\n{log}"
        );
    }
    let out = daemon.cli(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("integrity: ok, "), "{text}");
}

/// `bpftool map create` at `pin`: a map shaped like `like` (what `bpftool
/// map show` printed) but for `value` and `entries`.
fn create_map(pin: &Path, like: &serde_json::Value, value: u64, entries: u64) {
    let text = |v: &serde_json::Value| v.as_u64().expect("a number").to_string();
    let out = Command::new("bpftool")
        .args(["map", "create"])
        .arg(pin)
        .args(["type", like["type"].as_str().expect("map type")])
        .args(["key", &text(&like["bytes_key"])])
        .args(["value", &value.to_string()])
        .args(["entries", &entries.to_string()])
        .args(["name", like["name"].as_str().expect("map name")])
        .args(["flags", &text(&like["flags"])])
        .output()
        .expect("run bpftool");
    assert!(
        out.status.success(),
        "bpftool map create {}: {}",
        pin.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn pinned_maps_of_the_wrong_shape_are_replaced_and_the_policy_enforced_in_full() {
    let _root = privileged!();
    let root = CgroupGuard::new().expect("cgroup");
    let web = root.child("web").expect("web cgroup");
    let (allowed, denied, policies) = servers_and_web_policy();
    let mut daemon = Daemon::start(&root, &policies.0);
    assert_enforcing(&web, &allowed, &denied, &daemon);
    daemon.terminate();

    // Two pins replaced while no daemon runs: a cgroup map whose values are
    // 4 bytes longer, a verdict trie with 16 entries.
    let maps = daemon.bpffs.join(LAYOUT_DIR);
    let mut expected = Vec::new();
    for (name, widen, entries) in [("CGROUPS_0", 4, None), ("VERDICTS_1", 0, Some(16))] {
        let pin = maps.join(name);
        let like = bpftool_json(&["map", "show", "pinned", pin.to_str().expect("UTF-8 path")]);
        let value = like["bytes_value"].as_u64().expect("value size");
        let max = like["max_entries"].as_u64().expect("max_entries");
        std::fs::remove_file(&pin).expect("remove the map pin");
        create_map(&pin, &like, value + widen, entries.unwrap_or(max));
        expected.push((name, value, max));
    }

    // The next daemon enforces another policy: what it says must hold in
    // full, from fresh maps (the old programs, still attached, enforce the
    // first policy with the maps they hold until the new ones replace them).
    write_policy(&policies.0, &web_policy(denied.addr().port()));
    daemon.restart();
    let log = daemon.log();
    assert!(
        log.contains("the pinned maps are not adopted: CGROUPS_0 has value size"),
        "{log}"
    );
    assert!(
        log.contains("the pinned maps are not adopted: VERDICTS_1 has max_entries 16"),
        "{log}"
    );
    assert_enforcing(&web, &denied, &allowed, &daemon);
    for (name, value, max) in expected {
        let pin = maps.join(name);
        let map = bpftool_json(&["map", "show", "pinned", pin.to_str().expect("UTF-8 path")]);
        assert_eq!(map["bytes_value"].as_u64(), Some(value), "{name}: {map}");
        assert_eq!(map["max_entries"].as_u64(), Some(max), "{name}: {map}");
    }
    let status = daemon.status();
    assert!(status.integrity.ok, "{:?}", status.integrity);
    assert_eq!(status.integrity.repairs, 1, "{:?}", status.integrity);
    let last = status.integrity.last.expect("the replacement is reported");
    assert!(
        last.what
            .starts_with("pinned maps replaced by fresh ones (CGROUPS_0 has value size"),
        "{}",
        last.what
    );
    assert!(status.not_enforced.is_empty(), "{:?}", status.not_enforced);
    assert!(status.policy.is_some(), "a policy in force");

    // And a map of the right shape put there by hand (another daemon's,
    // say) is caught by the manifest: the two cgroup maps swapped.
    daemon.terminate();
    let (zero, one, swap) = (
        maps.join("CGROUPS_0"),
        maps.join("CGROUPS_1"),
        maps.join("swap"),
    );
    std::fs::rename(&zero, &swap).expect("rename");
    std::fs::rename(&one, &zero).expect("rename");
    std::fs::rename(&swap, &one).expect("rename");
    write_policy(&policies.0, &web_policy(allowed.addr().port()));
    daemon.restart();
    let log = daemon.log();
    assert!(
        log.contains(
            "the pinned maps are not adopted: CGROUPS_0 is not the map pinned with this set"
        ),
        "{log}"
    );
    assert_enforcing(&web, &allowed, &denied, &daemon);
    assert!(daemon.status().integrity.ok);
}
