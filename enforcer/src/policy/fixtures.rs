//! Policy texts and a loader that the tests of every layer share.

use std::path::PathBuf;
use std::time::SystemTime;

use super::{Loaded, load_sources, parse_rfc3339};

/// The instant the tests compile at.
pub(crate) fn now() -> SystemTime {
    parse_rfc3339("2026-11-29T12:00:00Z").unwrap()
}

/// Loads files given as (name, text); panics on an invalid policy.
pub(crate) fn load_files(files: &[(&str, &str)]) -> Loaded {
    let sources: Vec<(PathBuf, String)> = files
        .iter()
        .map(|(n, t)| (PathBuf::from(n), t.to_string()))
        .collect();
    match load_sources(&sources) {
        Ok(l) => l,
        Err(e) => panic!("policy does not load: {e}"),
    }
}

/// Three workloads (identities 16 api, 17 db, 18 web) and three peers (19
/// lab, 20 office, 21 vendor), no policy.
pub(crate) const BASE: &str = r#"
[workload.web]
unit = "nginx.service"
labels = { app = "web", env = "prod" }
[workload.api]
cgroup = "system.slice/api-*.service"
labels = { app = "api", env = "staging" }
[workload.db]
unit = "postgresql.service"
labels = { app = "db", env = "prod" }
[peer.office]
cidrs = ["203.0.113.0/24", "2001:db8:20::/48"]
labels = { zone = "office" }
[peer.lab]
cidrs = ["203.0.113.128/25"]
labels = { zone = "lab" }
[peer.vendor]
cidrs = ["198.51.100.17"]
labels = { zone = "third-party" }
"#;

/// A policy for `web` (with [`BASE`]) that allows a TCP port range, one UDP
/// port and ICMP in from anyone, and anything out.
pub(crate) const WEB_PORT_KINDS: &str = r#"
[[policy]]
name = "p"
select = { app = "web" }
allow-in = [ { from = ["any"], ports = ["8000-8100/tcp", "53/udp", "icmp"] } ]
allow-out = [ { to = ["any"] } ]
"#;

/// One workload, `web`, allowed out to this host on 8080/tcp: a complete
/// policy for the daemon's tests.
pub(crate) const WEB_TO_HOST: &str = r#"
[workload.web]
cgroup = "web*"
labels = { app = "web" }

[[policy]]
name = "web"
select = { app = "web" }
allow-out = [ { to = ["host"], ports = ["8080/tcp"] } ]
"#;
