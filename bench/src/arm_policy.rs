//! The policy of the enforcer arms of `cargo xtask bench`: workload
//! `client` (the benchmark client's cgroup) may reach the benchmark's own
//! services and decoy (peer, port) pairs that no traffic uses, one rule
//! each, and nothing else. `enforcer/examples/bench_arm.rs` compiles it
//! in-process; the root-attached arm gives it to the real daemon.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

/// Decoy peers the non-matching rules point at (203.0.113.0/24, which no
/// benchmark address uses); each rule is a distinct (peer, port) pair.
const DECOY_PEERS: usize = 250;
const DECOY_FIRST_PORT: usize = 10_000;

/// Fewer rules asked for than there are services to allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooFewRules {
    pub rules: usize,
    pub needed: usize,
}

impl std::fmt::Display for TooFewRules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} rules asked for: at least {} are needed for the allowed services",
            self.rules, self.needed
        )
    }
}

impl std::error::Error for TooFewRules {}

/// The policy file: workload `client` selected by `cgroup` (a path
/// relative to the daemon's cgroup root, without `*`), one `allow-out`
/// rule per allowed TCP service, `rules - allowed.len()` decoy rules.
pub fn client_policy(
    cgroup: &str,
    allowed: &[(Ipv4Addr, u16)],
    rules: usize,
) -> Result<String, TooFewRules> {
    if rules < allowed.len() {
        return Err(TooFewRules {
            rules,
            needed: allowed.len(),
        });
    }
    let decoys = rules - allowed.len();
    let peers = decoys.min(DECOY_PEERS);
    let mut t = String::new();
    let _ = writeln!(
        t,
        "[workload.client]\ncgroup = {cgroup:?}\nlabels = {{ role = \"bench-client\" }}\n"
    );
    // One peer per server address; one rule per allowed service.
    let mut servers: Vec<Ipv4Addr> = allowed.iter().map(|(addr, _)| *addr).collect();
    servers.sort_unstable();
    servers.dedup();
    for (i, addr) in servers.iter().enumerate() {
        let _ = writeln!(t, "[peer.server-{i}]\ncidrs = [\"{addr}/32\"]\n");
    }
    for i in 0..peers {
        let _ = writeln!(t, "[peer.decoy-{i}]\ncidrs = [\"203.0.113.{i}/32\"]\n");
    }
    let _ = writeln!(
        t,
        "[[policy]]\nname = \"client\"\nselect = {{ role = \"bench-client\" }}\nallow-out = ["
    );
    for (addr, port) in allowed {
        let i = servers.binary_search(addr).unwrap_or_default();
        let _ = writeln!(
            t,
            "  {{ to = [\"peer:server-{i}\"], ports = [\"{port}/tcp\"] }},"
        );
    }
    for i in 0..decoys {
        let port = DECOY_FIRST_PORT + i / peers;
        let _ = writeln!(
            t,
            "  {{ to = [\"peer:decoy-{}\"], ports = [\"{port}/tcp\"] }},",
            i % peers
        );
    }
    let _ = writeln!(t, "]");
    Ok(t)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    const ALLOWED: [(Ipv4Addr, u16); 2] = [
        (Ipv4Addr::new(198, 51, 100, 2), 5001),
        (Ipv4Addr::new(198, 51, 100, 2), 5201),
    ];

    #[test]
    fn n_rules_are_the_services_then_distinct_decoys() {
        for rules in [2, 10, 10_000] {
            let t = client_policy("bench/client", &ALLOWED, rules).unwrap();
            let rule_lines: Vec<&str> = t.lines().filter(|l| l.starts_with("  { to")).collect();
            assert_eq!(rule_lines.len(), rules);
            assert_eq!(
                rule_lines.iter().collect::<HashSet<_>>().len(),
                rules,
                "a repeated rule at {rules}"
            );
            assert_eq!(
                rule_lines[0],
                "  { to = [\"peer:server-0\"], ports = [\"5001/tcp\"] },"
            );
            assert_eq!(t.matches("[peer.server-").count(), 1);
            assert!(t.contains("cgroup = \"bench/client\""));
        }
    }

    #[test]
    fn fewer_rules_than_services_is_an_error() {
        assert_eq!(
            client_policy("c", &ALLOWED, 1),
            Err(TooFewRules {
                rules: 1,
                needed: 2
            })
        );
    }
}
