//! The compiler's output itself: identities, the shape of the entries, map
//! capacities. What the entries mean, judged by the reference evaluator, is
//! tested per semantic rule of the language in `crate::check`.

use enforcer_common::{protocol::Protocol, verdict::Direction};

use super::*;
use crate::policy::fixtures::{BASE, WEB_PORT_KINDS, load_files, now};

fn with_base(policies: &str) -> CompiledPolicy {
    compile(
        &load_files(&[("t.toml", &format!("{BASE}\n{policies}"))]).set,
        now(),
    )
    .unwrap()
}

#[test]
fn identities_are_assigned_by_kind_then_name() {
    let c = with_base("");
    let names: Vec<(u32, &str)> = c
        .entities
        .iter()
        .map(|e| (e.identity, e.name.as_str()))
        .collect();
    assert_eq!(
        names,
        vec![
            (1, "world"),
            (2, "host"),
            (16, "api"),
            (17, "db"),
            (18, "web"),
            (19, "lab"),
            (20, "office"),
            (21, "vendor")
        ]
    );
    assert_eq!(
        c.workloads.iter().map(|w| w.identity).collect::<Vec<_>>(),
        vec![16, 17, 18]
    );
}

#[test]
fn port_items_compile_to_aligned_blocks_per_protocol() {
    let c = with_base(WEB_PORT_KINDS);
    // Shapes: tcp alone is one entry with no port bits; icmp is port 0/16.
    let mut out: Vec<_> = c
        .verdicts
        .iter()
        .filter(|(k, _)| k.direction() == Direction::Egress as u8)
        .map(|(k, _)| (k.protocol(), k.port(), k.port_bits()))
        .collect();
    out.sort();
    assert_eq!(
        out,
        vec![
            (Protocol::Icmp as u8, 0, 16),
            (Protocol::Tcp as u8, 0, 0),
            (Protocol::Udp as u8, 0, 0)
        ]
    );
    let tcp_in = c
        .verdicts
        .iter()
        .filter(|(k, _)| {
            k.direction() == Direction::Ingress as u8 && k.protocol() == Protocol::Tcp as u8
        })
        .count();
    assert_eq!(tcp_in, ports::aligned_blocks(8000, 8100).len());
}

#[test]
fn a_policy_larger_than_the_maps_is_rejected() {
    let set = load_files(&[("t.toml", &format!("{BASE}\n[[policy]]\nname = \"p\"\nselect = {{ env = \"prod\" }}\nallow-in = [ {{ from = [\"any\"], ports = [\"1-65534/tcp\"] }} ]\n"))]).set;
    let c = compile(&set, now()).unwrap();
    // Two workloads with the same rows (one class), 30 aligned blocks.
    assert_eq!(c.verdicts.len(), 30);
    let limits = Limits {
        verdicts: 29,
        prefixes_v4: 2,
        ..Limits::default()
    };
    let err = compile_with_limits(&set, now(), &limits).unwrap_err();
    let msgs: Vec<String> = err.0.iter().map(|d| d.message.clone()).collect();
    assert_eq!(
        msgs,
        vec![
            "the policy needs 3 IPv4 prefixes, more than the kernel map holds (2): simplify the policy".to_string(),
            "the policy needs 30 verdict entries, more than the kernel map holds (29): simplify the policy".to_string(),
        ]
    );
    assert!(
        compile_with_limits(
            &set,
            now(),
            &Limits {
                verdicts: 30,
                prefixes_v4: 3,
                ..Limits::default()
            }
        )
        .is_ok()
    );
}
