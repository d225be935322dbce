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
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    maps::{Array, Map, MapData, MapError},
};
use aya_obj::generated::bpf_map_type;
use enforcer_common::{layout::LAYOUT_VERSION, map_names::ALL};

use super::{
    bpf_sys::{self, ObjectKind},
    error::{DataplaneError, Result},
    pins::{self, MANIFEST, PinDir},
};

/// The manifest: slot 0 the layout version, slot `1 + i` the id of
/// `ALL[i]`.
const MANIFEST_SLOTS: u32 = 1 + ALL.len() as u32;

/// The shape of a map, as the kernel reports it (and as the object
/// defines it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MapShape {
    pub(crate) map_type: u32,
    pub(crate) key_size: u32,
    pub(crate) value_size: u32,
    pub(crate) max_entries: u32,
    pub(crate) flags: u32,
}

/// A map's id and shape, from the kernel.
fn map_info(map: &MapData) -> Result<(u32, MapShape), MapError> {
    let info = map.info()?;
    let shape = MapShape {
        map_type: info.map_type()? as u32,
        key_size: info.key_size(),
        value_size: info.value_size(),
        max_entries: info.max_entries(),
        flags: info.map_flags(),
    };
    Ok((info.id(), shape))
}

/// The shape of every map, in [`ALL`] order, as the loader creates it.
pub(crate) type Shapes = Vec<(&'static str, MapShape)>;

/// The shapes the compiled object defines, with the adjustments aya's
/// loader makes when it creates the maps (a ring buffer's size is rounded
/// up to a power-of-two number of pages, its value size is 0).
pub(crate) fn expected_shapes(object: &[u8]) -> Result<Shapes> {
    let parsed = aya_obj::Object::parse(object)
        .map_err(|e| DataplaneError::UnableToParseObject(e.to_string()))?;
    ALL.iter()
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
    Map {
        id: u32,
        shape: MapShape,
        map: MapData,
    },
    Wrong(String),
}

fn inspect(path: &Path) -> Pinned {
    let fd = match bpf_sys::open_pin(path) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Pinned::Absent,
        Err(e) => return Pinned::Wrong(format!("is not a bpf object ({e})")),
    };
    match bpf_sys::kind(fd.as_fd()) {
        ObjectKind::Map => match MapData::from_fd(fd) {
            Ok(map) => match map_info(&map) {
                Ok((id, shape)) => Pinned::Map { id, shape, map },
                Err(e) => Pinned::Wrong(format!("cannot be read ({e})")),
            },
            Err(e) => Pinned::Wrong(format!("cannot be read ({e})")),
        },
        other => Pinned::Wrong(format!("is a bpf {}, not a map", pins::describe(other))),
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

/// Checks the maps pinned in `pins` before the loader adopts them; when
/// they fail, removes every map pin and the manifest (each reason is
/// returned, for the log and `status`). Links are not touched: an
/// earlier process's programs keep enforcing with the maps they hold
/// until this process's programs replace them.
pub(crate) fn vet(pins: &PinDir, shapes: &Shapes) -> Result<Adoption> {
    let mut reasons = Vec::new();
    let mut ids = Vec::with_capacity(shapes.len());
    let mut present = 0;
    for (name, expected) in shapes {
        match inspect(&pins.map_pin(name)) {
            Pinned::Absent => {
                ids.push(None);
                reasons.push(format!("{name} is missing"));
            }
            Pinned::Wrong(why) => {
                present += 1;
                ids.push(None);
                reasons.push(format!("{name} {why}"));
            }
            Pinned::Map { id, shape, .. } => {
                present += 1;
                ids.push(Some(id));
                if shape != *expected {
                    reasons.push(format!("{name} has {}", difference(&shape, expected)));
                }
            }
        }
    }
    let manifest = read_manifest(&pins.manifest_pin());
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
    pins.remove_maps()?;
    Ok(Adoption::Replaced { reasons })
}

/// The manifest's slots, `None` when there is none.
fn read_manifest(path: &Path) -> Result<Option<Vec<u32>>, String> {
    let map = match inspect(path) {
        Pinned::Absent => return Ok(None),
        Pinned::Wrong(why) => return Err(why),
        Pinned::Map { shape, .. } if shape != manifest_shape() => {
            return Err(format!("has {}", difference(&shape, &manifest_shape())));
        }
        Pinned::Map { map, .. } => map,
    };
    let unreadable = |e: MapError| format!("cannot be read ({e})");
    let map = Map::from_map_data(map).map_err(unreadable)?;
    let manifest: Array<&MapData, u32> = Array::try_from(&map).map_err(unreadable)?;
    (0..MANIFEST_SLOTS)
        .map(|slot| manifest.get(&slot, 0))
        .collect::<Result<Vec<u32>, MapError>>()
        .map(Some)
        .map_err(unreadable)
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

/// A map this process holds, with its pin.
#[derive(Debug)]
pub(crate) struct KeptMap {
    pub(crate) name: &'static str,
    pub(crate) path: Option<PathBuf>,
    /// A handle of its own (a duplicated descriptor).
    pub(crate) map: Map,
    pub(crate) id: u32,
}

/// After loading: checks that every map of `ebpf` has its shape (which
/// catches a map pinned between [`vet`] and the load, and any difference
/// between what the loader creates and [`expected_shapes`]), and returns
/// a handle of each, with its pin when pinning.
pub(crate) fn check_loaded(
    ebpf: &Ebpf,
    shapes: &Shapes,
    pins: Option<&PinDir>,
) -> Result<Vec<KeptMap>> {
    shapes
        .iter()
        .map(|&(name, expected)| {
            let map = ebpf.map(name).ok_or(DataplaneError::MissingMap(name))?;
            let fd = map_data(map)
                .fd()
                .as_fd()
                .try_clone_to_owned()
                .map_err(|source| DataplaneError::UnableToDuplicateMap { name, source })?;
            let unreadable = |e: MapError| DataplaneError::UnableToReadMap {
                map: name,
                source: Box::new(e),
            };
            let data = MapData::from_fd(fd).map_err(unreadable)?;
            let (id, shape) = map_info(&data).map_err(unreadable)?;
            if shape != expected {
                return Err(DataplaneError::WrongMapShape {
                    map: name,
                    difference: difference(&shape, &expected),
                });
            }
            Ok(KeptMap {
                name,
                path: pins.map(|dir| dir.map_pin(name)),
                map: Map::from_map_data(data).map_err(unreadable)?,
                id,
            })
        })
        .collect()
}

/// Pins the manifest of `maps` (keeping an adopted one that already names
/// them) and returns it, to be watched like the maps.
pub(crate) fn pin_manifest(pins: &PinDir, maps: &[KeptMap], adopted: bool) -> Result<KeptMap> {
    let path = pins.manifest_pin();
    let err = |source| DataplaneError::UnableToPinManifest {
        path: path.clone(),
        source,
    };
    let map = if adopted {
        MapData::from_pin(&path).and_then(Map::from_map_data)
    } else {
        new_manifest(maps)
    }
    .map_err(|e| err(map_io_error(e)))?;
    let (id, _) = map_info(map_data(&map)).map_err(|e| err(map_io_error(e)))?;
    if !adopted {
        pins::put_map(&map, &path).map_err(err)?;
    }
    Ok(KeptMap {
        name: MANIFEST,
        path: Some(path.clone()),
        map,
        id,
    })
}

/// A new manifest naming `maps`.
fn new_manifest(maps: &[KeptMap]) -> Result<Map, MapError> {
    let MapShape {
        map_type,
        key_size,
        value_size,
        max_entries,
        flags,
    } = manifest_shape();
    let definition =
        aya_obj::Map::new_from_params(map_type, key_size, value_size, max_entries, flags);
    let mut manifest = Map::Array(MapData::create(definition, MANIFEST, None)?);
    let mut slots: Array<&mut MapData, u32> = Array::try_from(&mut manifest)?;
    slots.set(0, LAYOUT_VERSION, 0)?;
    for (slot, map) in (1..).zip(maps) {
        slots.set(slot, map.id, 0)?;
    }
    Ok(manifest)
}

/// The I/O error behind a map error, for the errors that carry one.
fn map_io_error(e: MapError) -> io::Error {
    match e {
        MapError::SyscallError(e) => e.io_error,
        MapError::CreateError { io_error, .. } => io_error,
        other => io::Error::other(other),
    }
}

/// The handle inside any map.
fn map_data(map: &Map) -> &MapData {
    match map {
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_object_defines_every_map() {
        let shapes = expected_shapes(super::super::OBJECT).expect("shapes");
        assert_eq!(shapes.len(), ALL.len());
        let flows = shapes.iter().find(|(n, _)| *n == "FLOWS").expect("FLOWS");
        assert_eq!(
            flows.1.value_size as usize,
            size_of::<enforcer_common::flow::FlowValue>()
        );
        assert_eq!(flows.1.max_entries, enforcer_common::capacity::MAX_FLOWS);
    }

    #[test]
    fn the_object_defines_exactly_the_named_maps() {
        let parsed = aya_obj::Object::parse(super::super::OBJECT).expect("the object parses");
        // Sections of global data (`.bss`, `.rodata`...) are maps to the
        // loader but no map of ours.
        let mut defined: Vec<&str> = parsed
            .maps
            .keys()
            .map(String::as_str)
            .filter(|name| !name.starts_with('.'))
            .collect();
        defined.sort_unstable();
        let mut named = ALL.to_vec();
        named.sort_unstable();
        assert_eq!(
            defined, named,
            "enforcer_common::map_names::ALL against the object"
        );
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
