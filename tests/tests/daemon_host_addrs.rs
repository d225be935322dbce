//! This host's addresses are followed as they change: an address added to
//! an interface (as DHCP, IPv6 privacy addresses or `ip addr add` do) is
//! `host` within a second, and stops being `host` within a second of its
//! removal, for a policy compiled long before.

mod daemon_support;

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use daemon_support::{Daemon, Scratch, web_policy_ports, write_policy};
use enforcer_tests::netns::ensure_unused;
use enforcer_tests::{
    CgroupGuard, ProbeOutcome, Server, Subnet, TestHost, privileged, tcp_connect,
};

/// An address on an interface of this machine, removed when dropped (if
/// the test did not remove it already).
struct HostAddress {
    dev: String,
    cidr: String,
    removed: bool,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl HostAddress {
    fn add(dev: &str, addr: IpAddr) -> HostAddress {
        let subnet = Subnet::host(addr);
        assert!(subnet.is_documentation());
        ensure_unused(&subnet).expect("a free documentation address");
        let cidr = subnet.to_string();
        let mut args = vec!["addr", "add", cidr.as_str(), "dev", dev];
        if addr.is_ipv6() {
            // Usable at once, without duplicate address detection.
            args.push("nodad");
        }
        ip(&args);
        HostAddress {
            dev: dev.to_owned(),
            cidr,
            removed: false,
        }
    }

    fn remove(&mut self) {
        self.removed = true;
        ip(&["addr", "del", &self.cidr, "dev", &self.dev]);
    }
}

impl Drop for HostAddress {
    fn drop(&mut self) {
        if !self.removed {
            let _ = Command::new("ip")
                .args(["addr", "del", &self.cidr, "dev", &self.dev])
                .output();
        }
    }
}

/// How long until the workload's connection to `to` gives `want`, polled;
/// `None` when it does not within `within`.
fn time_until(
    web: &CgroupGuard,
    to: SocketAddr,
    want: ProbeOutcome,
    within: Duration,
) -> Option<Duration> {
    let started = Instant::now();
    Daemon::eventually(within, || tcp_connect(web, None, to) == want).then(|| started.elapsed())
}

/// A workload `web` that may reach this host, not the world, on the ports
/// of two servers listening on every address; and an interface of this
/// machine (its end of a test host's veth pair) to add addresses to.
struct Setup {
    root: CgroupGuard,
    web: CgroupGuard,
    link: TestHost,
    server4: Server,
    server6: Server,
    policies: Scratch,
}

fn setup() -> Setup {
    let root = CgroupGuard::new().expect("cgroup");
    let web = root.child("web").expect("web cgroup");
    let link = TestHost::builder()
        .ipv4("203.0.113.248/30")
        .ipv6("2001:db8:7c::/64")
        .build()
        .expect("test host");
    // Listening on every address, so that an address added later reaches it.
    let server4 = Server::tcp(None, None, "0.0.0.0:0".parse().unwrap()).expect("server");
    let server6 = Server::tcp(None, None, "[::]:0".parse().unwrap()).expect("server");
    let policies = Scratch::new("policies");
    write_policy(
        &policies.0,
        &web_policy_ports(&[server4.addr().port(), server6.addr().port()]),
    );
    Setup {
        root,
        web,
        link,
        server4,
        server6,
        policies,
    }
}

/// Adds an IPv4 and an IPv6 address to the test interface: each is `host`
/// (the connection allowed) within 1 s, and `world` (refused) again within
/// 1 s of its removal.
fn assert_added_addresses_followed(s: &Setup, daemon: &Daemon) {
    let added: [IpAddr; 2] = [
        "198.51.100.201".parse().unwrap(),
        "2001:db8:7d::1".parse().unwrap(),
    ];
    let targets = [
        SocketAddr::new(added[0], s.server4.addr().port()),
        SocketAddr::new(added[1], s.server6.addr().port()),
    ];
    for to in targets {
        // Not this host's yet: `world`, refused at once.
        assert_eq!(tcp_connect(&s.web, None, to), ProbeOutcome::Eperm, "{to}");
    }

    let mut addresses: Vec<HostAddress> = added
        .iter()
        .map(|a| HostAddress::add(s.link.outer_ifname(), *a))
        .collect();
    let added_at = Instant::now();
    for to in targets {
        let took = time_until(&s.web, to, ProbeOutcome::Ok, Duration::from_secs(1));
        assert!(
            took.is_some() && added_at.elapsed() < Duration::from_secs(1),
            "{to} not judged as host within 1 s of its addition\n{}",
            daemon.log()
        );
    }
    assert!(
        daemon
            .log()
            .contains("this host's addresses changed: put in force"),
        "{}",
        daemon.log()
    );

    for address in &mut addresses {
        address.remove();
    }
    let removed_at = Instant::now();
    for to in targets {
        let took = time_until(&s.web, to, ProbeOutcome::Eperm, Duration::from_secs(1));
        assert!(
            took.is_some() && removed_at.elapsed() < Duration::from_secs(1),
            "{to} still judged as host 1 s after its removal\n{}",
            daemon.log()
        );
    }
}

#[test]
fn an_address_added_to_this_host_is_host_within_a_second_and_stops_being_when_removed() {
    let _root = privileged!();
    let s = setup();
    let daemon = Daemon::start(&s.root, &s.policies.0);
    assert_added_addresses_followed(&s, &daemon);
}

/// The same for a policy known only from the kernel: adopted after a
/// restart with an invalid policy and no usable saved copy.
#[test]
fn the_kernels_policy_adopted_without_its_text_follows_this_hosts_addresses_too() {
    let _root = privileged!();
    let s = setup();
    let mut daemon = Daemon::start(&s.root, &s.policies.0);
    daemon.kill9();
    std::fs::remove_file(daemon.state_dir.join("last-good.json")).expect("saved policy");
    write_policy(&s.policies.0, "[workload.web]\ncgroup = 7\n");
    daemon.restart();
    let status = daemon.status();
    assert!(status.policy.is_none(), "{:?}", status.policy);
    assert!(
        status
            .not_enforced
            .iter()
            .any(|p| p.contains("pinned by an earlier daemon")),
        "{:?}",
        status.not_enforced
    );
    assert_added_addresses_followed(&s, &daemon);
}
