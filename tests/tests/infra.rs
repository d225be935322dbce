//! Tests of the test infrastructure itself (no eBPF): guards, placement of
//! processes, real traffic over IPv4 and IPv6, and cleanup — also after a
//! panic. Root only; run with `--test-threads=1`.

use std::{
    fs,
    net::SocketAddr,
    os::unix::fs::MetadataExt,
    panic::{AssertUnwindSafe, catch_unwind},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use enforcer_tests::{
    CgroupGuard, Error, Probe, ProbeOutcome, Server, Spawner, TcpHold, TestHost, cgroup_of_pid,
    netns::ensure_unused, ping, privileged, tcp_connect, udp_send,
};

const V4: &str = "198.51.100.0/24";
const V6: &str = "2001:db8:100::/64";

fn any_port(addr: std::net::IpAddr) -> SocketAddr {
    SocketAddr::new(addr, 0)
}

/// Whether a process still runs. Killed grandchildren are reparented to
/// PID 1, which reaps them when it gets to it: a zombie counts as dead.
fn pid_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "PID (COMM) STATE ...": COMM may contain spaces, so split at ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Everything a test created, to check afterwards that it is gone.
#[derive(Default, Debug)]
struct Created {
    cgroups: Vec<PathBuf>,
    netns: Vec<PathBuf>,
    links: Vec<String>,
    pids: Vec<u32>,
    subnets: Vec<String>,
}

impl Created {
    fn host(&mut self, host: &TestHost) {
        self.netns.push(host.netns_path());
        self.links.push(host.outer_ifname().to_owned());
        self.subnets.extend(host.subnet_v4().map(|s| s.to_string()));
        self.subnets.extend(host.subnet_v6().map(|s| s.to_string()));
    }

    fn assert_all_gone(&self) {
        assert!(!self.cgroups.is_empty() && !self.netns.is_empty() && !self.pids.is_empty());
        for dir in &self.cgroups {
            assert!(!dir.exists(), "cgroup {} left behind", dir.display());
        }
        for ns in &self.netns {
            assert!(!ns.exists(), "netns {} left behind", ns.display());
        }
        for link in &self.links {
            assert!(!link_exists(link), "link {link} left behind");
        }
        for pid in &self.pids {
            assert!(!pid_alive(*pid), "process {pid} left behind");
        }
        for subnet in &self.subnets {
            ensure_unused(&subnet.parse().unwrap())
                .unwrap_or_else(|e| panic!("{subnet} still in use: {e}"));
        }
    }
}

/// Builds a host, a cgroup with a nested child, servers in the host and a
/// held connection and a forking shell in the cgroups; records all of it.
fn populate(created: &mut Created) -> (TestHost, CgroupGuard, Vec<Box<dyn std::any::Any>>) {
    let host = TestHost::new(V4, V6).expect("test host");
    created.host(&host);
    let cg = CgroupGuard::new().expect("cgroup");
    let nested = cg.child("nested").expect("nested cgroup");
    created.cgroups.push(cg.path().to_owned());
    created.cgroups.push(nested.path().to_owned());

    let server = Server::tcp(None, Some(&host), any_port(host.ipv4())).expect("server");
    created.pids.push(server.pid());
    let hold = TcpHold::open(&cg, None, server.addr(), Duration::from_secs(2)).expect("hold");
    assert_eq!(hold.connect_report().outcome, ProbeOutcome::Ok);
    // A shell with grandchildren, left to the cgroup guard to kill.
    let shell = Spawner::new("sh")
        .args(["-c", "sleep 300 & sleep 300 & echo started; wait"])
        .cgroup(&nested)
        .spawn()
        .expect("shell");
    let mut shell = shell;
    assert_eq!(
        shell.read_line(Duration::from_secs(5)).unwrap().as_deref(),
        Some("started")
    );
    let all: Vec<u32> = [cg.procs().unwrap(), nested.procs().unwrap()].concat();
    assert!(
        all.len() >= 4,
        "expected hold, shell and two sleeps, got {all:?}"
    );
    created.pids.extend(all);
    // Leak the nested guard's drop to the parent: the parent must remove
    // the whole tree by itself.
    std::mem::forget(nested);
    (
        host,
        cg,
        vec![Box::new(server), Box::new(hold), Box::new(shell)],
    )
}

#[test]
fn tcp_udp_and_ping_from_a_cgroup_to_a_test_host_over_ipv4_and_ipv6() {
    let _root = privileged!();
    let host = TestHost::new(V4, V6).expect("test host");
    let cg = CgroupGuard::new().expect("cgroup");
    for ip in [host.ipv4(), host.ipv6()] {
        let tcp = Server::tcp(None, Some(&host), any_port(ip)).expect("tcp server");
        let udp = Server::udp(None, Some(&host), any_port(ip)).expect("udp server");
        assert_eq!(
            tcp_connect(&cg, None, tcp.addr()),
            ProbeOutcome::Ok,
            "tcp to {ip}"
        );
        assert_eq!(
            udp_send(&cg, None, udp.addr()),
            ProbeOutcome::Ok,
            "udp to {ip}"
        );
        let connected = Probe::udp_send(udp.addr())
            .cgroup(&cg)
            .udp_connected()
            .run();
        assert_eq!(connected.outcome, ProbeOutcome::Ok, "{}", connected.line);
        assert_eq!(ping(&cg, None, ip), ProbeOutcome::Ok, "ping {ip}");
    }
}

#[test]
fn traffic_from_a_test_host_to_a_server_in_a_cgroup() {
    let _root = privileged!();
    let host = TestHost::new(V4, V6).expect("test host");
    let cg = CgroupGuard::new().expect("cgroup");
    let client_cg = CgroupGuard::new().expect("client cgroup");
    for ip in [host.local_ipv4(), host.local_ipv6()] {
        let tcp = Server::tcp(Some(&cg), None, any_port(ip)).expect("tcp server");
        assert!(cg.contains(tcp.pid()));
        let udp = Server::udp(Some(&cg), None, any_port(ip)).expect("udp server");
        // Client in a cgroup *and* inside the test host.
        let report = Probe::tcp_connect(tcp.addr())
            .cgroup(&client_cg)
            .netns(&host)
            .run();
        assert_eq!(report.outcome, ProbeOutcome::Ok, "{}", report.line);
        assert!(
            report.local.is_some_and(|l| l.ip() != ip),
            "{}",
            report.line
        );
        assert_eq!(
            udp_send(&client_cg, Some(&host), udp.addr()),
            ProbeOutcome::Ok
        );
        assert_eq!(ping(&client_cg, Some(&host), ip), ProbeOutcome::Ok);
    }
}

#[test]
fn a_bound_source_address_is_used() {
    let _root = privileged!();
    let host = TestHost::new(V4, V6).expect("test host");
    let cg = CgroupGuard::new().expect("cgroup");
    let server = Server::tcp(None, Some(&host), host.socket_v6(7000)).expect("server");
    assert_eq!(server.addr(), host.socket_v6(7000));
    let source = SocketAddr::new(host.local_ipv6(), 40123);
    let report = Probe::tcp_connect(server.addr())
        .cgroup(&cg)
        .bind(source)
        .run();
    assert_eq!(report.outcome, ProbeOutcome::Ok, "{}", report.line);
    assert_eq!(report.local, Some(source));
}

#[test]
fn processes_are_really_in_their_cgroup_and_namespace() {
    let _root = privileged!();
    let host = TestHost::builder()
        .ipv4("203.0.113.0/24")
        .build()
        .expect("host");
    let cg = CgroupGuard::new().expect("cgroup");
    let web = cg.child("web").expect("child cgroup");
    assert_eq!(cg.id(), fs::metadata(cg.path()).unwrap().ino());
    assert_ne!(cg.id(), web.id());
    assert_eq!(web.relative_path(), format!("{}/web", cg.relative_path()));

    let mut child = Spawner::new("sleep")
        .arg("30")
        .cgroup(&web)
        .netns(&host)
        .spawn()
        .expect("spawn");
    let pid = child.pid();
    let proc_cgroup = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(
        proc_cgroup
            .lines()
            .any(|l| l == format!("0::{}", web.relative_path())),
        "/proc/{pid}/cgroup:\n{proc_cgroup}"
    );
    assert_eq!(cgroup_of_pid(pid).unwrap(), web.relative_path());
    assert_eq!(web.procs().unwrap(), [pid]);
    assert!(cg.procs().unwrap().is_empty());
    assert!(cg.populated().unwrap());

    let ns_link = fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    let ns_ino = fs::metadata(host.netns_path()).unwrap().ino();
    assert_eq!(ns_link.to_string_lossy(), format!("net:[{ns_ino}]"));
    let own = fs::read_link("/proc/self/ns/net").unwrap();
    assert_ne!(own, ns_link, "the test runner must stay in its namespace");

    // The runner itself never moves.
    let before = cgroup_of_pid(std::process::id()).unwrap();
    assert!(!before.starts_with(cg.relative_path()));
    child.kill().expect("kill");
    assert!(!cg.populated().unwrap());
}

#[test]
fn everything_is_gone_after_the_guards_drop() {
    let _root = privileged!();
    let mut created = Created::default();
    {
        let (_host, _cg, _others) = populate(&mut created);
    }
    created.assert_all_gone();
}

#[test]
fn everything_is_gone_after_a_panic_in_the_test() {
    let _root = privileged!();
    let mut created = Created::default();
    let result = catch_unwind(AssertUnwindSafe(|| {
        let (_host, _cg, _others) = populate(&mut created);
        panic!("a failing assertion in the middle of a test");
    }));
    assert!(result.is_err(), "the closure must have panicked");
    created.assert_all_gone();
}

#[test]
fn explicit_removal_reports_success_and_frees_the_range() {
    let _root = privileged!();
    let host = TestHost::new(V4, V6).expect("host");
    let cg = CgroupGuard::new().expect("cgroup");
    let (path, ns) = (cg.path().to_owned(), host.netns_path());
    let sleeper = Spawner::new("sleep")
        .arg("30")
        .cgroup(&cg)
        .spawn()
        .expect("spawn");
    cg.remove().expect("cgroup removal");
    host.remove().expect("host removal");
    assert!(!path.exists() && !ns.exists());
    drop(sleeper);
    // The same range can be used again at once.
    let again = TestHost::new(V4, V6).expect("the range is free again");
    drop(again);
}

#[test]
fn refused_connections_are_reported_quickly() {
    let _root = privileged!();
    let host = TestHost::new(V4, V6).expect("host");
    let cg = CgroupGuard::new().expect("cgroup");
    for addr in [host.socket_v4(9), host.socket_v6(9)] {
        let started = Instant::now();
        let report = Probe::tcp_connect(addr).cgroup(&cg).run();
        assert_eq!(report.outcome, ProbeOutcome::Refused, "{}", report.line);
        assert_eq!(report.errno, libc::ECONNREFUSED);
        assert!(report.elapsed_ms < 100, "{}", report.line);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );

        let udp = Probe::udp_send(addr).cgroup(&cg).udp_connected().run();
        assert_eq!(udp.outcome, ProbeOutcome::Refused, "{}", udp.line);
    }
}

#[test]
fn silence_is_reported_as_a_timeout() {
    let _root = privileged!();
    let host = TestHost::new(V4, V6).expect("host");
    let cg = CgroupGuard::new().expect("cgroup");
    // Nobody has .3 / ::3 on the link: no neighbour answers.
    let v4 = host.subnet_v4().unwrap().nth(3).unwrap();
    let timeout = Duration::from_millis(200);
    for report in [
        Probe::tcp_connect(SocketAddr::new(v4, 80))
            .cgroup(&cg)
            .timeout(timeout)
            .run(),
        Probe::udp_send(host.socket_v4(9))
            .cgroup(&cg)
            .timeout(timeout)
            .run(),
        Probe::ping(v4).cgroup(&cg).timeout(timeout).run(),
    ] {
        assert_eq!(report.outcome, ProbeOutcome::Timeout, "{}", report.line);
        assert!((150..1000).contains(&report.elapsed_ms), "{}", report.line);
    }
}

#[test]
fn a_held_connection_notices_a_cut_and_recovers() {
    let _root = privileged!();
    let host = TestHost::new(V4, V6).expect("host");
    let cg = CgroupGuard::new().expect("cgroup");
    let server = Server::tcp(None, Some(&host), host.socket_v4(7001)).expect("server");
    let mut hold =
        TcpHold::open(&cg, None, server.addr(), Duration::from_millis(300)).expect("hold");
    assert_eq!(hold.connect_report().outcome, ProbeOutcome::Ok);
    assert_eq!(hold.exchange().outcome, ProbeOutcome::Ok);
    assert_eq!(hold.exchange().outcome, ProbeOutcome::Ok);

    // Cut the wire without touching the sockets.
    let link = host.outer_ifname();
    let ip = |state: &str| {
        let ok = std::process::Command::new("ip")
            .args(["link", "set", link, state])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "ip link set {link} {state}");
    };
    ip("down");
    let cut = hold.exchange();
    assert_eq!(cut.outcome, ProbeOutcome::Timeout, "{}", cut.line);
    ip("up");
    // TCP retransmits with back-off; the late echo of the cut message is
    // skipped, and a later exchange gets its own echo again.
    let recovered = (0..10).any(|_| hold.exchange().outcome == ProbeOutcome::Ok);
    assert!(recovered, "the held connection did not recover");
}

#[test]
fn two_hosts_in_one_test() {
    let _root = privileged!();
    let a = TestHost::new("198.51.100.0/24", "2001:db8:a::/64").expect("host a");
    let b = TestHost::new("203.0.113.0/24", "2001:db8:b::/64").expect("host b");
    assert_ne!(a.name(), b.name());
    let cg = CgroupGuard::new().expect("cgroup");
    for host in [&a, &b] {
        let server = Server::tcp(None, Some(host), host.socket_v4(80)).expect("server");
        assert_eq!(tcp_connect(&cg, None, server.addr()), ProbeOutcome::Ok);
    }
    // From inside each host, this machine's end of its own link answers.
    assert_eq!(ping(&cg, Some(&a), a.local_ipv4()), ProbeOutcome::Ok);
    assert_eq!(ping(&cg, Some(&b), b.local_ipv6()), ProbeOutcome::Ok);
}

#[test]
fn ranges_in_use_or_outside_the_documentation_ranges_are_refused() {
    let _root = privileged!();
    let _host = TestHost::new(V4, V6).expect("host");
    let overlapping = TestHost::builder().ipv4("198.51.100.128/25").build();
    assert!(
        matches!(overlapping, Err(Error::RangeInUse { .. })),
        "{overlapping:?}"
    );
    let overlapping = TestHost::builder().ipv6("2001:db8:100:0:1::/80").build();
    assert!(
        matches!(overlapping, Err(Error::RangeInUse { .. })),
        "{overlapping:?}"
    );
    // This machine's own network, and a non-documentation range.
    for bad in ["192.0.2.0/24", "10.0.0.0/24"] {
        let result = TestHost::builder().ipv4(bad).build();
        assert!(
            matches!(result, Err(Error::NotDocumentationRange(_))),
            "{bad}: {result:?}"
        );
    }
    assert!(matches!(
        TestHost::builder().ipv4("2001:db8::/64").build(),
        Err(Error::BadSubnet(_))
    ));
}

#[test]
fn extra_addresses_on_a_test_host_are_reachable() {
    let _root = privileged!();
    let host = TestHost::new(V4, V6).expect("host");
    let cg = CgroupGuard::new().expect("cgroup");
    let on_link = "198.51.100.77".parse().unwrap();
    let routed = "203.0.113.5".parse().unwrap();
    host.add_address(on_link).expect("on-link address");
    host.add_address(routed).expect("routed address");
    assert!(host.add_address("192.0.2.9".parse().unwrap()).is_err());
    for ip in [on_link, routed] {
        let server = Server::tcp(None, Some(&host), SocketAddr::new(ip, 80)).expect("server");
        assert_eq!(
            tcp_connect(&cg, None, server.addr()),
            ProbeOutcome::Ok,
            "{ip}"
        );
    }
    drop(host);
    ensure_unused(&"203.0.113.5/32".parse().unwrap()).expect("the host route went with the link");
}

#[test]
fn leftovers_of_a_dead_run_are_reaped_and_live_ones_kept() {
    let _root = privileged!();
    // A pid that no longer exists stands for a test run that was SIGKILLed.
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    gone.wait().unwrap();
    let dead = gone.id();
    let mount = enforcer_tests::cgroup2_mount().unwrap();
    let stale_cg = mount.join(format!("enforcer-test-{dead}-0"));
    fs::create_dir_all(stale_cg.join("nested")).unwrap();
    let orphan = Spawner::new("sleep")
        .arg("300")
        .cgroup_dir(&stale_cg.join("nested"))
        .spawn()
        .expect("orphan in the stale cgroup");
    let orphan_pid = orphan.pid();
    // Its guard must not be what kills it.
    std::mem::forget(orphan);
    let (ns, outer, inner) = (
        format!("enft-{dead}-0"),
        format!("enf{dead}o0"),
        format!("enf{dead}i0"),
    );
    let ip = |args: &[&str]| {
        let ok = std::process::Command::new("ip")
            .args(args)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "ip {args:?}");
    };
    ip(&["netns", "add", &ns]);
    ip(&[
        "link", "add", &outer, "type", "veth", "peer", "name", &inner, "netns", &ns,
    ]);
    let live = CgroupGuard::new().expect("a live run's cgroup");

    let reaped = enforcer_tests::reap_stale().expect("reap");
    // Other dead runs' leftovers may be reaped too; ours must be among them.
    for item in [
        format!("cgroup {}", stale_cg.display()),
        format!("netns {ns}"),
        format!("link {outer}"),
    ] {
        assert!(reaped.contains(&item), "{item} not in {reaped:?}");
    }
    assert!(!stale_cg.exists());
    assert!(!Path::new("/run/netns").join(&ns).exists());
    assert!(!link_exists(&outer));
    assert!(!pid_alive(orphan_pid));
    assert!(live.path().exists(), "a live process's cgroup was reaped");
    // Reap the orphan we forgot (it is our child: a zombie until waited).
    // SAFETY: waitpid on our own child.
    unsafe { libc::waitpid(orphan_pid as libc::pid_t, std::ptr::null_mut(), 0) };
}

/// Set in the environment of the copies of this test binary that
/// `the_gate_skips_without_root_and_fails_under_ci` runs as `nobody`.
const GATE_CHILD: &str = "ENFORCER_TESTS_GATE_CHILD";

#[test]
fn the_gate_skips_without_root_and_fails_under_ci() {
    if std::env::var_os(GATE_CHILD).is_some() {
        // Running as nobody: privileged! must return (skip) or panic (CI).
        let _root = privileged!();
        panic!("privileged! let a process without root through");
    }
    let _root = privileged!();
    use std::os::unix::process::CommandExt;
    // nobody may not reach the checkout: it runs a copy of this binary.
    let exe = enforcer_tests::ReachableCopy::of(&std::env::current_exe().unwrap())
        .expect("a copy of the test binary nobody may run");
    let run = |ci: bool| {
        let mut cmd = std::process::Command::new(exe.path());
        cmd.args([
            "--exact",
            "the_gate_skips_without_root_and_fails_under_ci",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(GATE_CHILD, "1")
        .env_remove("CI")
        .uid(65534)
        .gid(65534);
        if ci {
            cmd.env("CI", "true");
        }
        cmd.output().expect("run the test binary as nobody")
    };
    let skipped = run(false);
    let text = String::from_utf8_lossy(&skipped.stderr);
    assert!(skipped.status.success(), "without CI it must skip: {text}");
    assert!(text.contains("SKIPPED: needs root"), "{text}");
    let failed = run(true);
    let text = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success(), "under CI it must fail: {text}");
    assert!(text.contains("CI is set"), "{text}");
}

/// A program below a directory only root may pass (a checkout in root's
/// home on Debian, mode 0700) is out of other users' reach; its
/// `ReachableCopy` is not, and goes away with its guard.
#[test]
fn a_reachable_copy_runs_as_another_user_wherever_the_original_is() {
    use std::os::unix::{fs::DirBuilderExt, fs::PermissionsExt, process::CommandExt};

    struct Removed(PathBuf);
    impl Drop for Removed {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    let _root = privileged!();
    let private =
        Removed(std::env::temp_dir().join(format!("enforcer-test-private-{}", std::process::id())));
    let _ = fs::remove_dir_all(&private.0);
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&private.0)
        .expect("mkdir");
    fs::set_permissions(&private.0, fs::Permissions::from_mode(0o700)).expect("chmod");
    let checkout = private.0.join("checkout");
    fs::create_dir(&checkout).expect("mkdir");
    fs::set_permissions(&checkout, fs::Permissions::from_mode(0o755)).expect("chmod");
    let original = checkout.join("true");
    fs::copy("/bin/true", &original).expect("copy /bin/true");

    let as_nobody = |program: &Path| {
        std::process::Command::new(program)
            .uid(65534)
            .gid(65534)
            .status()
    };
    let refused = as_nobody(&original).expect_err("nobody passed a directory of mode 0700");
    assert_eq!(
        refused.kind(),
        std::io::ErrorKind::PermissionDenied,
        "{refused}"
    );
    let copy = enforcer_tests::ReachableCopy::of(&original).expect("a reachable copy");
    let status = as_nobody(copy.path()).expect("run the copy as nobody");
    assert!(status.success(), "{status}");
    let dir = copy
        .path()
        .parent()
        .expect("the copy's directory")
        .to_path_buf();
    drop(copy);
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[test]
fn a_local_refusal_is_reported_as_eperm() {
    let _root = privileged!();
    if !Path::new("/usr/sbin/nft").exists() && !Path::new("/sbin/nft").exists() {
        // nft is only the tool that makes the kernel refuse here; the
        // probes' EPERM path is what is under test.
        assert!(std::env::var_os("CI").is_none(), "nft is needed under CI");
        eprintln!("SKIPPED: nft (nftables) is not installed");
        return;
    }
    let host = TestHost::new(V4, V6).expect("host");
    let cg = CgroupGuard::new().expect("cgroup");
    // An output filter inside the test host only (it dies with the host):
    // the kernel then refuses these sends with EPERM, as a cgroup hook does.
    let mut nft = Spawner::new("nft")
        .args(["-f", "-"])
        .netns(&host)
        .spawn()
        .expect("nft");
    for line in [
        "table inet probe_test {",
        "  chain out {",
        "    type filter hook output priority 0;",
        "    udp dport 9 drop",
        "    icmp type echo-request drop",
        "    icmpv6 type echo-request drop",
        "  }",
        "}",
    ] {
        nft.write_line(line).unwrap();
    }
    nft.close_stdin();
    let out = nft.wait_with_output(Duration::from_secs(10)).expect("nft");
    assert!(out.status.success(), "nft: {}", out.stderr);

    for (udp, ip) in [
        (host.socket_v4(9), host.local_ipv4()),
        (host.socket_v6(9), host.local_ipv6()),
    ] {
        let target = SocketAddr::new(ip, udp.port());
        let report = Probe::udp_send(target).cgroup(&cg).netns(&host).run();
        assert_eq!(report.outcome, ProbeOutcome::Eperm, "{}", report.line);
        assert_eq!(report.errno, libc::EPERM);
        assert_eq!(ping(&cg, Some(&host), ip), ProbeOutcome::Eperm, "ping {ip}");
        // Other ports and directions still work.
        let server = Server::udp(Some(&cg), None, SocketAddr::new(ip, 0)).expect("server");
        assert_eq!(udp_send(&cg, Some(&host), server.addr()), ProbeOutcome::Ok);
    }
}

#[test]
fn teardown_never_kills_the_test_runner() {
    let _root = privileged!();
    let me = std::process::id();
    let home = cgroup_of_pid(me).unwrap();
    let cg = CgroupGuard::new().expect("cgroup");
    let inner = cg.child("inner").expect("child");
    // A test that (wrongly) moves the runner itself into a test cgroup:
    // teardown must move it back out rather than kill it (if it did not,
    // this test binary would die of SIGKILL and the run would fail).
    inner.add_pid(me).expect("move the runner");
    assert_eq!(cgroup_of_pid(me).unwrap(), inner.relative_path());
    let sleeper = Spawner::new("sleep")
        .arg("30")
        .cgroup(&inner)
        .spawn()
        .expect("spawn");
    let sleeper_pid = sleeper.pid();
    std::mem::forget(inner);
    cg.remove().expect("teardown");
    assert_eq!(cgroup_of_pid(me).unwrap(), home);
    assert!(!pid_alive(sleeper_pid));
    drop(sleeper);
}

#[test]
fn a_server_that_cannot_listen_says_why() {
    let _root = privileged!();
    let host = TestHost::builder().ipv4(V4).build().expect("host");
    // The host's address does not exist in this machine's namespace.
    let err = Server::tcp(None, None, host.socket_v4(80)).expect_err("bind must fail");
    let text = err.to_string();
    assert!(text.contains("exited before listening"), "{text}");
    assert!(text.contains("Cannot assign requested address"), "{text}");
}
