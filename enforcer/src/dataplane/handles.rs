//! Typed handles of the object's maps, found by their name in
//! [`enforcer_common::map_names`]. aya's `Array`, `HashMap`, `LpmTrie`
//! and `SkStorage` check the key and value sizes of the type against the
//! map's when the handle is made, so a type that does not match the object
//! is an error ([`DataplaneError::WrongMapType`]), never a misread.
//!
//! The two memory-mapped arrays (`TCP_BOUND_PORT_BITS`,
//! `REGISTERED_CGROUPS_*`) are reached through [`mapped_array`] and
//! [`super::shared_array`]: aya 0.14 has no API to map an array map.

use aya::{
    Ebpf, Pod,
    maps::{HashMap, LpmTrie, Map, MapData, MapError, lpm_trie::Key},
};

use super::error::{DataplaneError, Result, read_err, type_err, write_err};

/// A map of the object.
pub(crate) fn map<'a>(ebpf: &'a Ebpf, name: &'static str) -> Result<&'a Map> {
    ebpf.map(name).ok_or(DataplaneError::MissingMap(name))
}

fn map_mut<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Map> {
    ebpf.map_mut(name).ok_or(DataplaneError::MissingMap(name))
}

/// A typed handle of a map, read-only: an `Array`, `HashMap`, `LpmTrie` or
/// `SkStorage` of the key and value types the caller names.
pub(crate) fn typed<'a, T>(ebpf: &'a Ebpf, name: &'static str) -> Result<T>
where
    T: TryFrom<&'a Map, Error = MapError>,
{
    T::try_from(map(ebpf, name)?).map_err(type_err(name))
}

/// A typed handle of a map, writable.
pub(crate) fn typed_mut<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<T>
where
    T: TryFrom<&'a mut Map, Error = MapError>,
{
    T::try_from(map_mut(ebpf, name)?).map_err(type_err(name))
}

/// A memory-mappable array map's handle, to map it
/// ([`super::shared_array::SharedArray`]).
pub(crate) fn mapped_array<'a>(ebpf: &'a Ebpf, name: &'static str) -> Result<&'a MapData> {
    match map(ebpf, name)? {
        Map::Array(data) => Ok(data),
        // The object defines it as an array: another type is not it.
        _ => Err(DataplaneError::MissingMap(name)),
    }
}

/// A lookup's value; `None` for a key the map does not hold.
pub(crate) fn found<V>(result: Result<V, MapError>, name: &'static str) -> Result<Option<V>> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(MapError::KeyNotFound) => Ok(None),
        Err(e) => Err(read_err(name)(e)),
    }
}

/// A removal whose key may already be gone: the outcome is the same.
pub(crate) fn removed(result: Result<(), MapError>, name: &'static str) -> Result<()> {
    match result {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(e) => Err(write_err(name)(e)),
    }
}

/// Empties a hash map (keys first collected, since deleting while
/// iterating restarts the walk).
pub(crate) fn clear_hash<K: Pod, V: Pod>(ebpf: &mut Ebpf, name: &'static str) -> Result<()> {
    let mut m: HashMap<&mut MapData, K, V> = typed_mut(ebpf, name)?;
    let keys: Vec<K> = m.keys().collect::<Result<_, _>>().map_err(read_err(name))?;
    for k in keys {
        removed(m.remove(&k), name)?;
    }
    Ok(())
}

/// Empties an LPM trie, as [`clear_hash`] a hash map.
pub(crate) fn clear_trie<K: Pod, V: Pod>(ebpf: &mut Ebpf, name: &'static str) -> Result<()> {
    let mut m: LpmTrie<&mut MapData, K, V> = typed_mut(ebpf, name)?;
    let keys: Vec<Key<K>> = m.keys().collect::<Result<_, _>>().map_err(read_err(name))?;
    for k in keys {
        removed(m.remove(&k), name)?;
    }
    Ok(())
}
