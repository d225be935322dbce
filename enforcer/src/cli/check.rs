//! `enforcer check [DIR]`: exit 0 valid, 1 invalid, 2 usage or IO error.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use crate::check::compile_dir;
use crate::policy::LoadError;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The policy directory (every `*.toml` file in it, in name order).
    #[arg(default_value = crate::policy::DEFAULT_DIR)]
    pub dir: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match compile_dir(&args.dir, SystemTime::now()) {
        Ok((compiled, warnings)) => {
            if compiled.entities.len() == 2 && compiled.rules.is_empty() {
                eprintln!(
                    "enforcer check: warning: {} holds no policy",
                    args.dir.display()
                );
            }
            for w in &warnings {
                writeln!(out, "{w}")?;
            }
            writeln!(
                out,
                "{}: valid: {} workloads, {} peers, {} rules, {} verdict entries, hash {:016x}",
                args.dir.display(),
                compiled.workloads.len(),
                compiled.entities.len() - compiled.workloads.len() - 2,
                compiled.rules.len(),
                compiled.verdicts.len(),
                compiled.content_hash,
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Err(LoadError::Io { path, source }) => {
            eprintln!("enforcer check: cannot read {}: {source}", path.display());
            Ok(ExitCode::from(2))
        }
        Err(LoadError::Invalid(diags)) => {
            for d in &diags.0 {
                writeln!(out, "{d}")?;
            }
            let errors = diags.errors().count();
            eprintln!(
                "enforcer check: {}: invalid policy, {errors} error(s)",
                args.dir.display()
            );
            Ok(ExitCode::from(1))
        }
    }
}
