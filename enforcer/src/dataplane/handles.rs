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
    maps::{Array, HashMap, LpmTrie, Map, MapData, MapError, SkStorage, lpm_trie::Key},
};

use super::error::{DataplaneError, Result, read_err, type_err, write_err};

/// A map of the object.
pub(crate) fn map<'a>(ebpf: &'a Ebpf, name: &'static str) -> Result<&'a Map> {
    ebpf.map(name).ok_or(DataplaneError::MissingMap(name))
}

fn map_mut<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Map> {
    ebpf.map_mut(name).ok_or(DataplaneError::MissingMap(name))
}

/// A typed handle of a map, read-only (what every reader below makes).
fn typed<'a, T>(ebpf: &'a Ebpf, name: &'static str) -> Result<T>
where
    T: TryFrom<&'a Map, Error = MapError>,
{
    T::try_from(map(ebpf, name)?).map_err(type_err(name))
}

/// A typed handle of a map, writable.
fn typed_mut<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<T>
where
    T: TryFrom<&'a mut Map, Error = MapError>,
{
    T::try_from(map_mut(ebpf, name)?).map_err(type_err(name))
}

/// An array map, read-only.
pub(crate) fn array<'a, V: Pod>(
    ebpf: &'a Ebpf,
    name: &'static str,
) -> Result<Array<&'a MapData, V>> {
    typed(ebpf, name)
}

/// An array map, writable.
pub(crate) fn array_mut<'a, V: Pod>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<Array<&'a mut MapData, V>> {
    typed_mut(ebpf, name)
}

/// A hash map (or LRU hash map), read-only.
pub(crate) fn hash<'a, K: Pod, V: Pod>(
    ebpf: &'a Ebpf,
    name: &'static str,
) -> Result<HashMap<&'a MapData, K, V>> {
    typed(ebpf, name)
}

/// A hash map (or LRU hash map), writable.
pub(crate) fn hash_mut<'a, K: Pod, V: Pod>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<HashMap<&'a mut MapData, K, V>> {
    typed_mut(ebpf, name)
}

/// An LPM trie keyed by `K` (the bytes after the prefix length), read-only.
pub(crate) fn trie<'a, K: Pod, V: Pod>(
    ebpf: &'a Ebpf,
    name: &'static str,
) -> Result<LpmTrie<&'a MapData, K, V>> {
    typed(ebpf, name)
}

/// An LPM trie, writable.
pub(crate) fn trie_mut<'a, K: Pod, V: Pod>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<LpmTrie<&'a mut MapData, K, V>> {
    typed_mut(ebpf, name)
}

/// A socket storage map, read-only: its values are looked up by a socket
/// descriptor of this process.
pub(crate) fn socket_storage<'a, V: Pod>(
    ebpf: &'a Ebpf,
    name: &'static str,
) -> Result<SkStorage<&'a MapData, V>> {
    typed(ebpf, name)
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
    let mut m: HashMap<&mut MapData, K, V> = hash_mut(ebpf, name)?;
    let keys: Vec<K> = m.keys().collect::<Result<_, _>>().map_err(read_err(name))?;
    for k in keys {
        removed(m.remove(&k), name)?;
    }
    Ok(())
}

/// Empties an LPM trie, as [`clear_hash`] a hash map.
pub(crate) fn clear_trie<K: Pod, V: Pod>(ebpf: &mut Ebpf, name: &'static str) -> Result<()> {
    let mut m: LpmTrie<&mut MapData, K, V> = trie_mut(ebpf, name)?;
    let keys: Vec<Key<K>> = m.keys().collect::<Result<_, _>>().map_err(read_err(name))?;
    for k in keys {
        removed(m.remove(&k), name)?;
    }
    Ok(())
}
