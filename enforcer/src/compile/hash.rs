//! The content hash of a compiled policy: FNV-1a 64 over a canonical byte
//! encoding of every entry and name (the vectors are already sorted).

use std::time::SystemTime;

use super::compiled::{CompiledPolicy, EntityKind};
use crate::policy::{CgroupSelector, UnitUser};

const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME: u64 = 0x0000_0100_0000_01b3;

struct Fnv(u64);

impl Fnv {
    fn bytes(&mut self, b: &[u8]) {
        for &x in b {
            self.0 ^= u64::from(x);
            self.0 = self.0.wrapping_mul(PRIME);
        }
    }

    fn u32(&mut self, v: u32) {
        self.bytes(&v.to_le_bytes());
    }

    /// Length-prefixed, so ("ab","c") and ("a","bc") differ.
    fn str(&mut self, s: &str) {
        self.u32(s.len() as u32);
        self.bytes(s.as_bytes());
    }
}

pub(crate) fn content_hash(p: &CompiledPolicy) -> u64 {
    let CompiledPolicy {
        entities,
        workloads,
        prefixes_v4,
        prefixes_v6,
        verdicts,
        rules,
        next_expiry,
        content_hash: _,
    } = p;
    let mut h = Fnv(OFFSET);
    h.u32(entities.len() as u32);
    for e in entities {
        h.u32(e.identity);
        h.bytes(&[match e.kind {
            EntityKind::Workload => 0,
            EntityKind::Peer => 1,
            EntityKind::World => 2,
            EntityKind::Host => 3,
        }]);
        h.str(&e.name);
    }
    h.u32(workloads.len() as u32);
    for w in workloads {
        h.u32(w.identity);
        h.u32(w.class);
        h.str(&w.name);
        match &w.selector {
            CgroupSelector::Unit(u) => {
                h.bytes(&[0]);
                h.str(u);
            }
            CgroupSelector::Glob(g) => {
                h.bytes(&[1]);
                h.str(g);
            }
            CgroupSelector::UserUnit { unit, user } => {
                h.bytes(&[2]);
                h.str(unit);
                match user {
                    UnitUser::Name(name) => {
                        h.bytes(&[0]);
                        h.str(name);
                    }
                    UnitUser::Uid(uid) => {
                        h.bytes(&[1]);
                        h.u32(*uid);
                    }
                }
            }
            CgroupSelector::DelegatedGlob(g) => {
                h.bytes(&[3]);
                h.str(g);
            }
        }
        h.bytes(&[w.mode]);
    }
    h.u32(prefixes_v4.len() as u32);
    for (k, id) in prefixes_v4 {
        h.u32(k.prefix_len);
        h.bytes(&k.addr);
        h.u32(*id);
    }
    h.u32(prefixes_v6.len() as u32);
    for (k, id) in prefixes_v6 {
        h.u32(k.prefix_len);
        h.bytes(&k.addr);
        h.u32(*id);
    }
    h.u32(verdicts.len() as u32);
    for (k, v) in verdicts {
        h.u32(k.prefix_len);
        h.bytes(&k.data);
        h.u32(v.rule);
        h.bytes(&[v.action]);
    }
    h.u32(rules.len() as u32);
    for r in rules {
        h.str(&r.to_string());
    }
    match next_expiry.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok()) {
        Some(d) => {
            h.bytes(&[1]);
            h.bytes(&d.as_secs().to_le_bytes());
            h.u32(d.subsec_nanos());
        }
        None => h.bytes(&[0]),
    }
    h.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        let mut h = Fnv(OFFSET);
        h.bytes(b"");
        assert_eq!(h.0, 0xcbf2_9ce4_8422_2325);
        let mut h = Fnv(OFFSET);
        h.bytes(b"a");
        assert_eq!(h.0, 0xaf63_dc4c_8601_ec8c);
        let mut h = Fnv(OFFSET);
        h.bytes(b"foobar");
        assert_eq!(h.0, 0x8594_4171_f739_67e8);
    }
}
