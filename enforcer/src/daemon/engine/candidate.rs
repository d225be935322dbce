//! A policy read and compiled, not yet in force: made without the engine
//! (so without its lock), since reading and compiling a large policy takes
//! seconds.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use super::EngineError;
use crate::compile::CompiledPolicy;

/// The files of a policy directory (name, text) as they were read.
pub(super) type Sources = Arc<[(PathBuf, String)]>;

/// A policy read and compiled, not yet in force: [`Candidate::from_dir`],
/// [`Candidate::from_files`].
pub struct Candidate {
    pub(super) sources: Sources,
    pub(super) compiled: CompiledPolicy,
    pub(super) warnings: Vec<String>,
}

impl Candidate {
    /// Read (see [`crate::policy::files`]) and compile the directory `dir`
    /// at `now`.
    pub fn from_dir(dir: &Path, now: SystemTime) -> Result<Candidate, EngineError> {
        let sources = crate::policy::read_dir(dir).map_err(EngineError::InvalidPolicy)?;
        Candidate::compile(sources.into(), now)
    }

    /// Compile files received over the API (name, text) at `now`, named
    /// `source/NAME` in diagnostics. The names and sizes are checked first
    /// ([`crate::policy::files::check_received`]).
    pub fn from_files(
        source: &Path,
        files: Vec<(String, String)>,
        now: SystemTime,
    ) -> Result<Candidate, EngineError> {
        crate::policy::files::check_received(files.iter().map(|(n, t)| (n.as_str(), t.as_str())))
            .map_err(|problems| EngineError::ReceivedFilesRefused { problems })?;
        let mut sources: Vec<(PathBuf, String)> = files
            .into_iter()
            .map(|(name, text)| (source.join(name), text))
            .collect();
        // The order a directory is read in, whatever order they came in.
        sources.sort_by(|a, b| a.0.cmp(&b.0));
        Candidate::compile(sources.into(), now)
    }

    /// The empty policy set: what a missing policy directory holds.
    pub(super) fn empty(now: SystemTime) -> Result<Candidate, EngineError> {
        Candidate::compile(Sources::from(Vec::new()), now)
    }

    /// Parse and compile the files of a policy set at `now`.
    pub(super) fn compile(sources: Sources, now: SystemTime) -> Result<Candidate, EngineError> {
        let loaded = crate::policy::load_sources(&sources).map_err(EngineError::InvalidPolicy)?;
        let (compiled, warnings) =
            crate::check::compile_loaded(loaded, now).map_err(EngineError::InvalidPolicy)?;
        Ok(Candidate {
            sources,
            compiled,
            warnings: warnings.iter().map(ToString::to_string).collect(),
        })
    }
}
