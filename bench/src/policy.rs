//! Generated policy directories for the control-plane benchmarks: the
//! compile micro-benchmark (`enforcer/benches/compile.rs`) and the daemon
//! section of `cargo xtask bench` load the very same files.
//!
//! A policy of [`Shape::size`] `N` has `N` workloads, `N` peers and `N`
//! rules. Every workload carries labels `app` (5 workloads per app) and
//! `team`; every peer a `zone` (10 peers per zone). The rules come in
//! policies of [`RULES_PER_POLICY`], each selecting one app; they cycle
//! through every kind of remote (a named peer, a peer zone, an app, `world`,
//! `host` plus a peer) and of port (a range, several protocols, ICMP, a TCP
//! port) and every section (allow-in, allow-out, deny-in, deny-out).

use std::fmt::Write as _;
use std::path::Path;

/// Rules per `[[policy]]`; each policy selects one app (5 workloads).
pub const RULES_PER_POLICY: usize = 10;

/// Workloads per app label, peers per zone label.
const WORKLOADS_PER_APP: usize = 5;
const PEERS_PER_ZONE: usize = 10;

/// The port given to the last rule by [`Variant::OneRuleChanged`]: no
/// rule of [`Variant::Base`] uses it.
pub const CHANGED_PORT: u16 = 65_000;

/// How many of each object a generated policy holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub workloads: usize,
    pub peers: usize,
    pub rules: usize,
}

impl Shape {
    /// The benchmarks' "size N": `N` workloads, `N` peers and `N` rules.
    pub const fn size(n: usize) -> Shape {
        Shape {
            workloads: n,
            peers: n,
            rules: n,
        }
    }
}

/// Which of two policies that differ in one rule to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    Base,
    /// The last rule's ports become [`CHANGED_PORT`]/tcp; everything else
    /// is identical to [`Variant::Base`].
    OneRuleChanged,
}

/// The policy files of `shape`, as (file name, contents).
pub fn files(shape: Shape, variant: Variant) -> Vec<(&'static str, String)> {
    vec![
        ("10-workloads.toml", workloads(shape)),
        ("20-peers.toml", peers(shape)),
        ("30-policies.toml", policies(shape, variant)),
    ]
}

/// Writes [`files`] into `dir` (which must exist).
pub fn write(dir: &Path, shape: Shape, variant: Variant) -> std::io::Result<()> {
    for (name, text) in files(shape, variant) {
        std::fs::write(dir.join(name), text)?;
    }
    Ok(())
}

/// A peer's address: documentation ranges only (the two IPv4 /24s for the
/// first 500 peers, then /48s of 2001:db8::/32).
fn peer_cidr(i: usize) -> String {
    match i {
        0..=249 => format!("198.51.100.{}/32", i + 1),
        250..=499 => format!("203.0.113.{}/32", i - 249),
        _ => format!("2001:db8:{i:x}::/48"),
    }
}

fn apps(shape: Shape) -> usize {
    shape.workloads.div_ceil(WORKLOADS_PER_APP).max(1)
}

fn zones(shape: Shape) -> usize {
    shape.peers.div_ceil(PEERS_PER_ZONE).max(1)
}

fn workloads(shape: Shape) -> String {
    let mut text = String::new();
    for i in 0..shape.workloads {
        let _ = writeln!(
            text,
            "[workload.w{i}]\nunit = \"w{i}.service\"\nlabels = {{ app = \"a{}\", team = \"t{}\" }}",
            i / WORKLOADS_PER_APP,
            i % 20
        );
    }
    text
}

fn peers(shape: Shape) -> String {
    let zones = zones(shape);
    let mut text = String::new();
    for i in 0..shape.peers {
        let _ = writeln!(
            text,
            "[peer.p{i}]\ncidrs = [\"{}\"]\nlabels = {{ zone = \"z{}\" }}",
            peer_cidr(i),
            i % zones
        );
    }
    text
}

/// One rule (`r` counts from 0 over the whole policy) in `section`
/// (0 allow-in, 1 allow-out, 2 deny-in, 3 deny-out).
fn rule(shape: Shape, r: usize, variant: Variant) -> (usize, String) {
    let (apps, zones) = (apps(shape), zones(shape));
    // A named peer needs at least one peer; without any, name `world`.
    let named_peer = |k: usize| {
        if shape.peers == 0 {
            "\"world\"".to_owned()
        } else {
            format!("\"peer:p{}\"", (r * k) % shape.peers)
        }
    };
    let remote = match r % 5 {
        0 => named_peer(7),
        1 if shape.peers > 0 => format!("{{ zone = \"z{}\" }}", r % zones),
        2 if shape.workloads > 0 => format!("{{ app = \"a{}\" }}", (r / 5) % apps),
        4 => format!("\"host\", {}", named_peer(13)),
        _ => "\"world\"".to_owned(),
    };
    let ports = if variant == Variant::OneRuleChanged && r + 1 == shape.rules {
        format!("\"{CHANGED_PORT}/tcp\"")
    } else {
        match r % 7 {
            0 => "\"8000-8100/tcp\"".to_owned(),
            1 => "\"53/udp\", \"53/tcp\"".to_owned(),
            2 => "\"icmp\"".to_owned(),
            _ => format!("\"{}/tcp\"", 1000 + r % 5000),
        }
    };
    let section = match r % 10 {
        9 => 2,
        8 => 3,
        n => n % 2,
    };
    let key = if section % 2 == 0 { "from" } else { "to" };
    (
        section,
        format!("  {{ {key} = [{remote}], ports = [{ports}] }},"),
    )
}

fn policies(shape: Shape, variant: Variant) -> String {
    let apps = apps(shape);
    let mut text = String::new();
    let mut r = 0usize;
    for p in 0..shape.rules.div_ceil(RULES_PER_POLICY) {
        let _ = writeln!(
            text,
            "[[policy]]\nname = \"pol{p}\"\nselect = {{ app = \"a{}\" }}",
            p % apps
        );
        let mut sections: [Vec<String>; 4] = Default::default();
        while r < shape.rules && r < (p + 1) * RULES_PER_POLICY {
            let (section, line) = rule(shape, r, variant);
            sections[section].push(line);
            r += 1;
        }
        for (name, rules) in ["allow-in", "allow-out", "deny-in", "deny-out"]
            .iter()
            .zip(&sections)
        {
            if !rules.is_empty() {
                let _ = writeln!(text, "{name} = [\n{}\n]", rules.join("\n"));
            }
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn text(shape: Shape, variant: Variant) -> String {
        files(shape, variant)
            .into_iter()
            .map(|(_, t)| t)
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn count(text: &str, prefix: &str) -> usize {
        text.lines().filter(|l| l.starts_with(prefix)).count()
    }

    #[test]
    fn size_n_has_n_workloads_peers_and_rules() {
        for n in [1, 9, 10, 11, 100, 1_000, 10_000] {
            let t = text(Shape::size(n), Variant::Base);
            assert_eq!(count(&t, "[workload."), n, "workloads of size {n}");
            assert_eq!(count(&t, "[peer."), n, "peers of size {n}");
            assert_eq!(count(&t, "  { "), n, "rules of size {n}");
            assert_eq!(
                count(&t, "[[policy]]"),
                n.div_ceil(RULES_PER_POLICY),
                "policies of size {n}"
            );
        }
    }

    #[test]
    fn other_shapes_keep_their_counts() {
        let shape = Shape {
            workloads: 1_000,
            peers: 10_000,
            rules: 20_000,
        };
        let t = text(shape, Variant::Base);
        assert_eq!(count(&t, "[workload."), 1_000);
        assert_eq!(count(&t, "[peer."), 10_000);
        assert_eq!(count(&t, "  { "), 20_000);
        let empty = text(Shape::size(0), Variant::Base);
        assert!(empty.trim().is_empty(), "{empty}");
    }

    #[test]
    fn names_and_addresses_are_distinct_and_in_documentation_ranges() {
        let t = peers(Shape::size(10_000));
        let cidrs: Vec<&str> = t.lines().filter(|l| l.starts_with("cidrs")).collect();
        assert_eq!(cidrs.iter().collect::<HashSet<_>>().len(), 10_000);
        assert!(cidrs.iter().all(|c| c.contains("\"198.51.100.")
            || c.contains("\"203.0.113.")
            || c.contains("\"2001:db8:")));
        let w = workloads(Shape::size(10_000));
        let names: HashSet<&str> = w.lines().filter(|l| l.starts_with("[workload.")).collect();
        assert_eq!(names.len(), 10_000);
    }

    #[test]
    fn every_rule_kind_and_section_is_used() {
        let t = policies(Shape::size(100), Variant::Base);
        for needle in [
            "allow-in = [",
            "allow-out = [",
            "deny-in = [",
            "deny-out = [",
            "\"peer:p",
            "{ zone = ",
            "{ app = ",
            "\"world\"",
            "\"host\", ",
            "\"8000-8100/tcp\"",
            "\"53/udp\", \"53/tcp\"",
            "\"icmp\"",
        ] {
            assert!(t.contains(needle), "no {needle} in the generated policy");
        }
    }

    #[test]
    fn the_changed_variant_differs_in_exactly_the_last_rule() {
        for n in [1, 100, 10_000] {
            let base = files(Shape::size(n), Variant::Base);
            let changed = files(Shape::size(n), Variant::OneRuleChanged);
            assert_eq!(base[..2], changed[..2], "only the policies file changes");
            let diff: Vec<(&str, &str)> = base[2]
                .1
                .lines()
                .zip(changed[2].1.lines())
                .filter(|(a, b)| a != b)
                .collect();
            assert_eq!(diff.len(), 1, "size {n}: {diff:?}");
            assert!(!base[2].1.contains(&format!("{CHANGED_PORT}/tcp")));
            assert!(
                diff[0]
                    .1
                    .contains(&format!("ports = [\"{CHANGED_PORT}/tcp\"]"))
            );
            assert_eq!(base[2].1.lines().count(), changed[2].1.lines().count());
        }
    }
}
