//! Adopting pinned maps safely. aya's loader reuses whatever is pinned at
//! a map's name, whatever its shape, so before loading, every pinned map
//! is checked against what the compiled object defines (type, key and
//! value size, `max_entries`, flags), and against the manifest that the
//! daemon pinned beside them (the layout version and the id of every map
//! of the set, which catches a map of the right shape put there by hand).
//! A set that fails is removed whole, so that the loader creates a fresh
//! one: the programs never run with a map of the wrong shape, and never
//! with a mix of adopted and fresh maps. See `docs/dataplane.md`,
//! "Integrity".

use std::{
    io,
    os::fd::{AsFd as _, BorrowedFd, OwnedFd},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    maps::{Map, MapData},
};
use aya_obj::generated::bpf_map_type;
use enforcer_common::layout::LAYOUT_VERSION;

use super::{
    ALL_MAPS,
    bpf_sys::{self, MapShape, ObjectKind},
    error::{DataplaneError, Result},
    pin,
};

/// The name of the manifest pinned beside the maps.
pub(crate) const MANIFEST: &str = "MANIFEST";

/// The manifest: slot 0 the layout version, slot `1 + i` the id of
/// `ALL_MAPS[i]`.
const MANIFEST_SLOTS: u32 = 1 + ALL_MAPS.len() as u32;

/// The shape of every map, in `ALL_MAPS` order, as the loader creates it.
pub(crate) type Shapes = Vec<(&'static str, MapShape)>;

/// The shapes the compiled object defines, with the adjustments aya's
/// loader makes when it creates the maps (a ring buffer's size is rounded
/// up to a power-of-two number of pages, its value size is 0).
pub(crate) fn expected_shapes(object: &[u8]) -> Result<Shapes> {
    let parsed = aya_obj::Object::parse(object)
        .map_err(|e| DataplaneError::UnableToParseObject(e.to_string()))?;
    ALL_MAPS
        .iter()
        .map(|&name| {
            let def = parsed
                .maps
                .get(name)
                .ok_or(DataplaneError::MissingMap(name))?;
            let mut shape = MapShape {
                map_type: def.map_type(),
                key_size: def.key_size(),
                value_size: def.value_size(),
                max_entries: def.max_entries(),
                flags: def.map_flags(),
            };
            if shape.map_type == bpf_map_type::BPF_MAP_TYPE_RINGBUF as u32 {
                shape.value_size = 0;
                shape.max_entries = ring_buffer_bytes(shape.max_entries);
            }
            Ok((name, shape))
        })
        .collect()
}

/// A ring buffer's size as the loader creates it: a power-of-two number of
/// pages.
fn ring_buffer_bytes(requested: u32) -> u32 {
    // SAFETY: sysconf has no preconditions.
    let page = u32::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    if requested == 0 || page == 0 {
        return requested;
    }
    page.saturating_mul(requested.div_ceil(page).next_power_of_two())
}

/// What was done with the maps pinned in a layout directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Adoption {
    /// Nothing was pinned: fresh maps.
    Fresh,
    /// The pinned set is adopted; `manifest` says whether it had one (a
    /// set pinned by an earlier version has none, and gets one).
    Adopted { manifest: bool },
    /// The pinned set failed the checks and was removed: fresh maps.
    Replaced { reasons: Vec<String> },
}

/// What a map pin holds.
enum Pinned {
    Absent,
    Map { id: u32, shape: MapShape },
    Wrong(String),
}

fn inspect(path: &Path) -> Pinned {
    let fd = match bpf_sys::open_pin(path) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Pinned::Absent,
        Err(e) => return Pinned::Wrong(format!("is not a bpf object ({e})")),
    };
    match bpf_sys::kind(fd.as_fd()) {
        ObjectKind::Map => match bpf_sys::map_info(fd.as_fd()) {
            Ok((id, shape)) => Pinned::Map { id, shape },
            Err(e) => Pinned::Wrong(format!("cannot be read ({e})")),
        },
        other => Pinned::Wrong(format!("is a bpf {}, not a map", pin::describe(other))),
    }
}

/// How a pinned map differs from what the object defines.
fn difference(found: &MapShape, expected: &MapShape) -> String {
    let fields = [
        ("type", found.map_type, expected.map_type),
        ("key size", found.key_size, expected.key_size),
        ("value size", found.value_size, expected.value_size),
        ("max_entries", found.max_entries, expected.max_entries),
        ("flags", found.flags, expected.flags),
    ];
    fields
        .iter()
        .filter(|(_, found, expected)| found != expected)
        .map(|(what, found, expected)| format!("{what} {found}, expected {expected}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks the maps pinned in `dir` before the loader adopts them; when
/// they fail, removes every map pin and the manifest (each reason is
/// returned, for the log and `status`). Links are not touched: an
/// earlier process's programs keep enforcing with the maps they hold
/// until this process's programs replace them.
pub(crate) fn vet(dir: &Path, shapes: &Shapes) -> Result<Adoption> {
    let mut reasons = Vec::new();
    let mut ids = Vec::with_capacity(shapes.len());
    let mut present = 0;
    for (name, expected) in shapes {
        match inspect(&dir.join(name)) {
            Pinned::Absent => {
                ids.push(None);
                reasons.push(format!("{name} is missing"));
            }
            Pinned::Wrong(why) => {
                present += 1;
                ids.push(None);
                reasons.push(format!("{name} {why}"));
            }
            Pinned::Map { id, shape } => {
                present += 1;
                ids.push(Some(id));
                if shape != *expected {
                    reasons.push(format!("{name} has {}", difference(&shape, expected)));
                }
            }
        }
    }
    let manifest_path = dir.join(MANIFEST);
    let manifest = read_manifest(&manifest_path);
    if present == 0 && matches!(manifest, Ok(None)) {
        return Ok(Adoption::Fresh);
    }
    match &manifest {
        Ok(None) => {}
        Ok(Some(recorded)) => {
            let version = recorded.first().copied().unwrap_or(0);
            if version != LAYOUT_VERSION {
                reasons.push(format!(
                    "the manifest is of layout version {version}, not {LAYOUT_VERSION}"
                ));
            }
            for ((name, _), (found, recorded)) in
                shapes.iter().zip(ids.iter().zip(recorded.iter().skip(1)))
            {
                if let Some(found) = found
                    && found != recorded
                {
                    reasons.push(format!(
                        "{name} is not the map pinned with this set (id {found}, the manifest names {recorded})"
                    ));
                }
            }
        }
        Err(why) => reasons.push(format!("the manifest {why}")),
    }
    if reasons.is_empty() {
        return Ok(Adoption::Adopted {
            manifest: matches!(manifest, Ok(Some(_))),
        });
    }
    remove_set(dir)?;
    Ok(Adoption::Replaced { reasons })
}

/// The manifest's slots, `None` when there is none.
fn read_manifest(path: &Path) -> Result<Option<Vec<u32>>, String> {
    let fd = match inspect(path) {
        Pinned::Absent => return Ok(None),
        Pinned::Wrong(why) => return Err(why),
        Pinned::Map { shape, .. } if shape != manifest_shape() => {
            return Err(format!("has {}", difference(&shape, &manifest_shape())));
        }
        Pinned::Map { .. } => {
            bpf_sys::open_pin(path).map_err(|e| format!("cannot be opened ({e})"))?
        }
    };
    (0..MANIFEST_SLOTS)
        .map(|slot| bpf_sys::read_u32(fd.as_fd(), slot))
        .collect::<io::Result<Vec<u32>>>()
        .map(Some)
        .map_err(|e| format!("cannot be read ({e})"))
}

fn manifest_shape() -> MapShape {
    MapShape {
        map_type: bpf_map_type::BPF_MAP_TYPE_ARRAY as u32,
        key_size: 4,
        value_size: 4,
        max_entries: MANIFEST_SLOTS,
        flags: 0,
    }
}

/// Removes every map pin of the set and the manifest.
fn remove_set(dir: &Path) -> Result<()> {
    for name in ALL_MAPS.iter().chain(std::iter::once(&MANIFEST)) {
        let path = dir.join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(DataplaneError::UnableToUnpin { path, source }),
        }
    }
    Ok(())
}

/// A map this process holds, with its pin.
#[derive(Debug)]
pub(crate) struct KeptMap {
    pub(crate) name: &'static str,
    pub(crate) path: Option<PathBuf>,
    pub(crate) fd: OwnedFd,
    pub(crate) id: u32,
}

/// After loading: checks that every map of `ebpf` has its shape (which
/// catches a map pinned between [`vet`] and the load, and any difference
/// between what the loader creates and [`expected_shapes`]), and returns
/// a descriptor of each, with its pin under `dir` when pinning.
pub(crate) fn check_loaded(
    ebpf: &Ebpf,
    shapes: &Shapes,
    dir: Option<&Path>,
) -> Result<Vec<KeptMap>> {
    shapes
        .iter()
        .map(|&(name, expected)| {
            let map = ebpf.map(name).ok_or(DataplaneError::MissingMap(name))?;
            let fd = bpf_sys::duplicate(map_fd(map))
                .map_err(|source| DataplaneError::UnableToDuplicateMap { name, source })?;
            let (id, shape) = bpf_sys::map_info(fd.as_fd())
                .map_err(|source| DataplaneError::UnableToDuplicateMap { name, source })?;
            if shape != expected {
                return Err(DataplaneError::WrongMapShape {
                    map: name,
                    difference: difference(&shape, &expected),
                });
            }
            Ok(KeptMap {
                name,
                path: dir.map(|d| d.join(name)),
                fd,
                id,
            })
        })
        .collect()
}

/// Pins the manifest of `maps` in `dir` (keeping an adopted one that
/// already names them) and returns it, to be watched like the maps.
pub(crate) fn pin_manifest(dir: &Path, maps: &[KeptMap], adopted: bool) -> Result<KeptMap> {
    let path = dir.join(MANIFEST);
    let err = |source| DataplaneError::UnableToPinManifest {
        path: path.clone(),
        source,
    };
    let fd = if adopted {
        bpf_sys::open_pin(&path).map_err(err)?
    } else {
        let fd = bpf_sys::create_u32_array(MANIFEST, MANIFEST_SLOTS).map_err(err)?;
        bpf_sys::write_u32(fd.as_fd(), 0, LAYOUT_VERSION).map_err(err)?;
        for (slot, map) in (1..).zip(maps) {
            bpf_sys::write_u32(fd.as_fd(), slot, map.id).map_err(err)?;
        }
        pin::put(fd.as_fd(), &path).map_err(err)?;
        fd
    };
    let (id, _) = bpf_sys::map_info(fd.as_fd()).map_err(err)?;
    Ok(KeptMap {
        name: MANIFEST,
        path: Some(path.clone()),
        fd,
        id,
    })
}

/// The descriptor of any map of the object.
fn map_fd(map: &Map) -> BorrowedFd<'_> {
    let data: &MapData = match map {
        Map::Array(d)
        | Map::ArrayOfMaps(d)
        | Map::BloomFilter(d)
        | Map::CgroupArray(d)
        | Map::CgroupStorage(d)
        | Map::CgrpStorage(d)
        | Map::CpuMap(d)
        | Map::DevMap(d)
        | Map::DevMapHash(d)
        | Map::HashMap(d)
        | Map::HashOfMaps(d)
        | Map::InodeStorage(d)
        | Map::LpmTrie(d)
        | Map::LruHashMap(d)
        | Map::PerCpuArray(d)
        | Map::PerCpuCgroupStorage(d)
        | Map::PerCpuHashMap(d)
        | Map::PerCpuLruHashMap(d)
        | Map::PerfEventArray(d)
        | Map::ProgramArray(d)
        | Map::Queue(d)
        | Map::ReusePortSockArray(d)
        | Map::RingBuf(d)
        | Map::SockHash(d)
        | Map::SockMap(d)
        | Map::SkStorage(d)
        | Map::Stack(d)
        | Map::StackTraceMap(d)
        | Map::Unsupported(d)
        | Map::XskMap(d) => d,
    };
    data.fd().as_fd()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_object_defines_every_map() {
        let shapes = expected_shapes(super::super::OBJECT).expect("shapes");
        assert_eq!(shapes.len(), ALL_MAPS.len());
        let flows = shapes.iter().find(|(n, _)| *n == "FLOWS").expect("FLOWS");
        assert_eq!(
            flows.1.value_size as usize,
            std::mem::size_of::<enforcer_common::flow::FlowValue>()
        );
        assert_eq!(flows.1.max_entries, enforcer_common::capacity::MAX_FLOWS);
    }

    #[test]
    fn differences_name_each_field() {
        let a = manifest_shape();
        let b = MapShape {
            value_size: 8,
            max_entries: 3,
            ..a
        };
        assert_eq!(
            difference(&b, &a),
            format!("value size 8, expected 4, max_entries 3, expected {MANIFEST_SLOTS}")
        );
    }

    #[test]
    fn ring_buffers_are_rounded_to_pages() {
        assert_eq!(ring_buffer_bytes(0), 0);
        assert_eq!(ring_buffer_bytes(1 << 20), 1 << 20);
        let page = ring_buffer_bytes(1);
        assert!(page >= 4096 && page.is_power_of_two());
        assert_eq!(ring_buffer_bytes(3 * page), 4 * page);
    }
}
