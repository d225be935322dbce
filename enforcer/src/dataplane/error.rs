//! Errors of the data plane, named after what could not be done.

use std::path::PathBuf;

use aya::{EbpfError, maps::MapError, programs::ProgramError};

/// Everything that can go wrong loading, attaching, writing or reading the
/// kernel side.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("cannot create the pin directory {path}")]
    UnableToCreatePinDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not on a bpf filesystem (mount one with `mount -t bpf bpf /sys/fs/bpf`)")]
    NotOnBpffs { path: PathBuf },
    #[error("cannot load the eBPF object into the kernel")]
    UnableToLoadObject(#[source] Box<EbpfError>),
    #[error("the eBPF object has no program {0}")]
    MissingProgram(&'static str),
    #[error("the eBPF object has no map {0}")]
    MissingMap(&'static str),
    #[error("cannot load program {program}")]
    UnableToLoadProgram {
        program: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("cannot open cgroup {path}")]
    UnableToOpenCgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "refusing to attach to the root cgroup {path}: every process on the host would be filtered"
    )]
    RefusingRootCgroup { path: PathBuf },
    #[error("cannot attach program {program} to {path}")]
    UnableToAttach {
        program: &'static str,
        path: PathBuf,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("cannot pin the link of {program} at {path}")]
    UnableToPinLink {
        program: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the compiled eBPF object: {0}")]
    UnableToParseObject(String),
    #[error("map {map} was created with {difference}: the programs must not run with it")]
    WrongMapShape {
        map: &'static str,
        difference: String,
    },
    #[error("cannot pin the manifest of the maps at {path}")]
    UnableToPinManifest {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot take over the pinned link {path}")]
    UnableToAdoptLink {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot remove the pin {path}")]
    UnableToUnpin {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("map {map} has wrong type or layout")]
    WrongMapType {
        map: &'static str,
        #[source]
        source: Box<MapError>,
    },
    #[error("cannot update map {map}")]
    UnableToWriteMap {
        map: &'static str,
        #[source]
        source: Box<MapError>,
    },
    #[error("cannot duplicate the descriptor of map {name}")]
    UnableToDuplicateMap {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read map {map}")]
    UnableToReadMap {
        map: &'static str,
        #[source]
        source: Box<MapError>,
    },
    #[error("the policy needs {needed} entries in {map}, which holds at most {capacity}")]
    CapacityExceeded {
        map: &'static str,
        needed: usize,
        capacity: u32,
    },
    #[error("the kernel's BTF is not usable ({0}): cgroups cannot be registered at their creation")]
    NoKernelBtf(String),
    #[error("cannot attach the cgroup tracer {program}")]
    UnableToAttachTracer {
        program: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("cannot draw a random key")]
    NoRandomness(#[source] std::io::Error),
    #[error("invalid setting: {0}")]
    InvalidSetting(String),
    #[error("the events ring buffer was already taken")]
    EventsAlreadyTaken,
    #[error("BPF_PROG_TEST_RUN of {program} failed")]
    TestRunFailed {
        program: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("cannot read this network namespace's cookie (SO_NETNS_COOKIE, Linux 5.14)")]
    UnableToReadNetns(#[source] std::io::Error),
    #[error("cannot list the host's addresses")]
    UnableToListAddresses(#[source] std::io::Error),
    #[error("cannot read {path}")]
    UnableToReadProc {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = DataplaneError> = std::result::Result<T, E>;

pub(crate) fn write_err(map: &'static str) -> impl FnOnce(MapError) -> DataplaneError {
    move |e| DataplaneError::UnableToWriteMap {
        map,
        source: Box::new(e),
    }
}

pub(crate) fn read_err(map: &'static str) -> impl FnOnce(MapError) -> DataplaneError {
    move |e| DataplaneError::UnableToReadMap {
        map,
        source: Box::new(e),
    }
}

pub(crate) fn type_err(map: &'static str) -> impl FnOnce(MapError) -> DataplaneError {
    move |e| DataplaneError::WrongMapType {
        map,
        source: Box::new(e),
    }
}

/// Checks, before anything is written, that each map holds what it must:
/// `(map, entries needed, capacity)`; the first that does not is the error.
pub(crate) fn ensure_capacity(checks: &[(&'static str, usize, u32)]) -> Result<()> {
    match checks
        .iter()
        .find(|&&(_, needed, capacity)| needed > capacity as usize)
    {
        Some(&(map, needed, capacity)) => Err(DataplaneError::CapacityExceeded {
            map,
            needed,
            capacity,
        }),
        None => Ok(()),
    }
}
