//! The byte offsets of the kernel structure fields that the cgroup tracer
//! reads (`struct cgroup`, `struct kernfs_node`, `struct cgroup_root`),
//! found in the running kernel's BTF (`/sys/kernel/btf/vmlinux`).
//!
//! The programs are written in Rust, which has no CO-RE relocations: the
//! loader looks the offsets up here and writes them into the tracer's
//! configuration map instead. Only what that needs is parsed: the type
//! section's structs, unions and the modifiers between a member and its
//! type. aya keeps its own BTF lookups private, and the other BTF crate
//! (btf-rs) is LGPL.

use std::collections::HashMap;

use enforcer_common::cgroup_match::KernelOffsets;

/// Where the running kernel describes its types.
pub(super) const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

const BTF_MAGIC: u16 = 0xeb9f;

/// Why an offset could not be found.
#[derive(Debug, thiserror::Error)]
pub(super) enum BtfError {
    #[error("cannot read {path}")]
    Read {
        path: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the kernel's BTF is malformed: {0}")]
    Malformed(&'static str),
    #[error("the kernel's BTF has no struct {0}")]
    NoStruct(&'static str),
    #[error("struct {strukt} in the kernel's BTF has no member {member}")]
    NoMember {
        strukt: &'static str,
        member: &'static str,
    },
}

/// The kinds this reader follows (`BTF_KIND_*`).
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;
const KIND_INT: u32 = 1;

/// One member of a struct or union: its name, its type and its offset in
/// bits.
#[derive(Clone, Debug)]
struct Member {
    name: String,
    type_id: u32,
    bit_offset: u32,
}

#[derive(Clone, Debug)]
enum Type {
    /// A struct or union, with its members.
    Composite(Vec<Member>),
    /// A typedef or a modifier (const, volatile, ...): the type it refers to.
    Alias(u32),
    Other,
}

/// The parsed types of a BTF blob.
pub(super) struct KernelTypes {
    /// Indexed by type id; id 0 is `void`.
    types: Vec<Type>,
    /// Struct names to their type ids (the first of each name).
    structs: HashMap<String, u32>,
}

fn u16_at(data: &[u8], at: usize) -> Result<u16, BtfError> {
    data.get(at..at + 2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .ok_or(BtfError::Malformed("truncated"))
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, BtfError> {
    data.get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(BtfError::Malformed("truncated"))
}

impl KernelTypes {
    /// Reads the running kernel's BTF.
    pub(super) fn from_sys_fs() -> Result<KernelTypes, BtfError> {
        let data = std::fs::read(VMLINUX_BTF).map_err(|source| BtfError::Read {
            path: VMLINUX_BTF,
            source,
        })?;
        KernelTypes::parse(&data)
    }

    /// Parses a little-endian BTF blob (the `.BTF` format of
    /// `Documentation/bpf/btf.rst`).
    pub(super) fn parse(data: &[u8]) -> Result<KernelTypes, BtfError> {
        if u16_at(data, 0)? != BTF_MAGIC {
            return Err(BtfError::Malformed("bad magic (or a big-endian BTF)"));
        }
        let header_len = u32_at(data, 4)? as usize;
        let type_off = u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let types_start = header_len + type_off;
        let types_end = types_start + type_len;
        let strings_start = header_len + str_off;
        let strings = data
            .get(strings_start..strings_start + str_len)
            .ok_or(BtfError::Malformed("string section out of bounds"))?;
        let name = |offset: u32| -> String {
            let Some(tail) = strings.get(offset as usize..) else {
                return String::new();
            };
            let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
            String::from_utf8_lossy(&tail[..end]).into_owned()
        };
        if types_end > data.len() {
            return Err(BtfError::Malformed("type section out of bounds"));
        }
        let mut types = vec![Type::Other];
        let mut structs = HashMap::new();
        let mut at = types_start;
        while at < types_end {
            let name_off = u32_at(data, at)?;
            let info = u32_at(data, at + 4)?;
            let size_or_type = u32_at(data, at + 8)?;
            at += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 != 0;
            let ty = match kind {
                KIND_STRUCT | KIND_UNION => {
                    let mut members = Vec::with_capacity(vlen);
                    for i in 0..vlen {
                        let m = at + i * 12;
                        let offset = u32_at(data, m + 8)?;
                        members.push(Member {
                            name: name(u32_at(data, m)?),
                            type_id: u32_at(data, m + 4)?,
                            // With kind_flag the top 8 bits are a bitfield's
                            // size and the low 24 its offset.
                            bit_offset: if kind_flag {
                                offset & 0x00ff_ffff
                            } else {
                                offset
                            },
                        });
                    }
                    at += vlen * 12;
                    let struct_name = name(name_off);
                    if kind == KIND_STRUCT && !struct_name.is_empty() {
                        structs.entry(struct_name).or_insert(types.len() as u32);
                    }
                    Type::Composite(members)
                }
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    Type::Alias(size_or_type)
                }
                _ => {
                    at += match kind {
                        KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                        KIND_ARRAY => 12,
                        KIND_ENUM | KIND_FUNC_PROTO => vlen * 8,
                        KIND_DATASEC | KIND_ENUM64 => vlen * 12,
                        // PTR, FWD, FUNC, FLOAT: nothing follows.
                        _ => 0,
                    };
                    Type::Other
                }
            };
            types.push(ty);
        }
        Ok(KernelTypes { types, structs })
    }

    /// The type a typedef or modifier chain ends in.
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        // Chains are short; the bound only guards against a malformed loop.
        for _ in 0..32 {
            match self.types.get(id as usize)? {
                Type::Alias(next) => id = *next,
                other => return Some(other),
            }
        }
        None
    }

    /// The byte offset of `member` in `strukt`, looking into anonymous
    /// structs and unions as C does.
    pub(super) fn member_offset(
        &self,
        strukt: &'static str,
        member: &'static str,
    ) -> Result<u32, BtfError> {
        let id = *self.structs.get(strukt).ok_or(BtfError::NoStruct(strukt))?;
        let Some(Type::Composite(members)) = self.types.get(id as usize) else {
            return Err(BtfError::NoStruct(strukt));
        };
        self.find(members, member, 0, 0)
            .map(|bits| bits / 8)
            .ok_or(BtfError::NoMember { strukt, member })
    }

    fn find(&self, members: &[Member], wanted: &str, base: u32, depth: u32) -> Option<u32> {
        if depth > 8 {
            return None;
        }
        for m in members {
            if m.name == wanted {
                return Some(base + m.bit_offset);
            }
            if m.name.is_empty()
                && let Some(Type::Composite(inner)) = self.resolve(m.type_id)
                && let Some(found) = self.find(inner, wanted, base + m.bit_offset, depth + 1)
            {
                return Some(found);
            }
        }
        None
    }

    /// The offsets the cgroup tracer reads. `kernfs_node::parent` became
    /// `__parent` in Linux 6.15; either is accepted.
    pub(super) fn cgroup_tracer_offsets(&self) -> Result<KernelOffsets, BtfError> {
        let kn_parent = self
            .member_offset("kernfs_node", "__parent")
            .or_else(|_| self.member_offset("kernfs_node", "parent"))?;
        Ok(KernelOffsets {
            cgroup_kn: self.member_offset("cgroup", "kn")?,
            cgroup_root: self.member_offset("cgroup", "root")?,
            root_hierarchy_id: self.member_offset("cgroup_root", "hierarchy_id")?,
            kn_id: self.member_offset("kernfs_node", "id")?,
            kn_parent,
            kn_name: self.member_offset("kernfs_node", "name")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob with `struct outer { int a; union { int b; struct { int
    /// c; int d; }; }; }` and a typedef in the way.
    fn blob() -> Vec<u8> {
        let mut strings = vec![0u8];
        let mut add = |s: &str| {
            let at = strings.len() as u32;
            strings.extend_from_slice(s.as_bytes());
            strings.push(0);
            at
        };
        let (int, outer, a, b, c, d, td) = (
            add("int"),
            add("outer"),
            add("a"),
            add("b"),
            add("c"),
            add("d"),
            add("anon_t"),
        );
        let mut types = Vec::new();
        let mut push = |words: &[u32]| {
            for w in words {
                types.extend_from_slice(&w.to_le_bytes());
            }
        };
        // 1: int
        push(&[int, KIND_INT << 24, 4, 32]);
        // 2: struct { int c; int d; } (anonymous)
        push(&[0, (KIND_STRUCT << 24) | 2, 8, c, 1, 0, d, 1, 32]);
        // 3: typedef anon_t -> 2
        push(&[td, KIND_TYPEDEF << 24, 2]);
        // 4: union { int b; anon_t; }
        push(&[0, (KIND_UNION << 24) | 2, 8, b, 1, 0, 0, 3, 0]);
        // 5: struct outer { int a; <union at 64 bits>; }
        push(&[outer, (KIND_STRUCT << 24) | 2, 16, a, 1, 0, 0, 4, 64]);
        let mut data = Vec::new();
        data.extend_from_slice(&BTF_MAGIC.to_le_bytes());
        data.extend_from_slice(&[1, 0]);
        for w in [
            24u32,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            data.extend_from_slice(&w.to_le_bytes());
        }
        data.extend_from_slice(&types);
        data.extend_from_slice(&strings);
        data
    }

    #[test]
    fn finds_members_through_anonymous_unions_and_typedefs() {
        let types = KernelTypes::parse(&blob()).unwrap();
        assert_eq!(types.member_offset("outer", "a").unwrap(), 0);
        assert_eq!(types.member_offset("outer", "b").unwrap(), 8);
        assert_eq!(types.member_offset("outer", "c").unwrap(), 8);
        assert_eq!(types.member_offset("outer", "d").unwrap(), 12);
        assert!(matches!(
            types.member_offset("outer", "e"),
            Err(BtfError::NoMember { .. })
        ));
        assert!(matches!(
            types.member_offset("inner", "a"),
            Err(BtfError::NoStruct(_))
        ));
    }

    #[test]
    fn rejects_what_is_not_btf() {
        assert!(KernelTypes::parse(b"not btf at all, not at all").is_err());
        let mut truncated = blob();
        truncated.truncate(40);
        assert!(KernelTypes::parse(&truncated).is_err());
    }

    #[test]
    fn the_running_kernel_describes_the_tracer_fields() {
        // Every kernel this runs on has BTF (the tracer needs it); where a
        // test machine has none, there is nothing to check.
        let Ok(types) = KernelTypes::from_sys_fs() else {
            return;
        };
        let offsets = types.cgroup_tracer_offsets().unwrap();
        // `kn` is the second pointer-sized member on every kernel since 5.5
        // (after `self`, a large struct): never at offset 0.
        assert!(offsets.cgroup_kn > 0);
        assert!(offsets.kn_name > 0 && offsets.kn_id > 0);
    }
}
