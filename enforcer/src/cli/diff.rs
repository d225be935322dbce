//! `enforcer diff OLD NEW`: what may newly talk to what, and what no
//! longer may. Exit 0, or 1 when the `--fail-on` condition holds, 2 on
//! invalid input (either side's errors printed as `FILE:LINE:COL: message`).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use crate::diff::load::load_input;
use crate::diff::render::{Format, render};
use crate::diff::source::{Materialized, Source, materialize};
use crate::diff::{DiffInput, PolicyDiff, diff};
use crate::policy::{Diagnostic, LoadError};

/// Arguments of `enforcer diff`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The policy before the change: a directory, or REV:DIR from the git
    /// repository of the current directory (e.g. origin/main:policies).
    pub old: String,
    /// The policy after the change: a directory or REV:DIR.
    pub new: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Exit 1 when the diff is not empty (`any`) or newly allows something
    /// (`widen`).
    #[arg(long, value_enum, default_value_t = FailOn::Never)]
    pub fail_on: FailOn,
}

/// When `enforcer diff` exits 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FailOn {
    Never,
    Any,
    Widen,
}

impl FailOn {
    /// Whether `diff` trips this condition.
    pub fn holds(self, diff: &PolicyDiff) -> bool {
        match self {
            FailOn::Never => false,
            FailOn::Any => !diff.is_empty(),
            FailOn::Widen => diff.widened,
        }
    }
}

/// A problem in a policy, located in a file when possible.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadMessage {
    pub file: PathBuf,
    /// 1-based line and column; `None` for a problem with the file as a
    /// whole (unreadable, say).
    pub position: Option<(usize, usize)>,
    pub message: String,
    /// A warning: printed, but the policy is valid.
    pub warning: bool,
}

impl LoadMessage {
    fn from_diagnostic(d: &Diagnostic) -> Self {
        LoadMessage {
            file: d.file.clone(),
            position: Some((d.line, d.col)),
            message: d.message.clone(),
            warning: !d.is_error(),
        }
    }
}

/// A loaded policy and its warnings, or its errors.
pub type LoadResult = Result<(DiffInput, Vec<LoadMessage>), Vec<LoadMessage>>;

/// Runs `enforcer diff`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    // One instant for both sides, so `until` cuts them the same way.
    let now = SystemTime::now();
    run_with(args, &|dir| load(dir, now))
}

/// Loads a policy directory the way `enforcer check` does.
pub fn load(dir: &Path, now: SystemTime) -> LoadResult {
    match load_input(dir, now) {
        Ok((input, warnings)) => Ok((
            input,
            warnings.iter().map(LoadMessage::from_diagnostic).collect(),
        )),
        Err(LoadError::Io { path, source }) => Err(vec![LoadMessage {
            file: path,
            position: None,
            message: format!("cannot read: {source}"),
            warning: false,
        }]),
        Err(LoadError::Invalid(diags)) => {
            Err(diags.0.iter().map(LoadMessage::from_diagnostic).collect())
        }
    }
}

/// Runs the command with `load` reading a policy directory.
pub fn run_with(args: Args, load: &dyn Fn(&Path) -> LoadResult) -> anyhow::Result<ExitCode> {
    let stdout = std::io::stdout();
    let colour = stdout.is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let mut stderr = std::io::stderr().lock();
    // Both sides are loaded, so that both report their errors.
    let (Some(old), Some(new)) = (
        side(&args.old, load, &mut stderr),
        side(&args.new, load, &mut stderr),
    ) else {
        return Ok(ExitCode::from(2));
    };
    let result = diff(&old, &new);
    let mut out = stdout.lock();
    out.write_all(render(&result, args.format, colour).as_bytes())?;
    out.flush()?;
    Ok(if args.fail_on.holds(&result) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Reads one side, printing its warnings, or its errors (then `None`).
fn side(arg: &str, load: &dyn Fn(&Path) -> LoadResult, err: &mut dyn Write) -> Option<DiffInput> {
    let source = Source::parse(arg);
    let dir = match materialize(&source) {
        Ok(dir) => dir,
        Err(e) => {
            let _ = writeln!(err, "enforcer diff: {e}");
            return None;
        }
    };
    match load(dir.path()) {
        Ok((input, warnings)) => {
            for w in &warnings {
                let _ = writeln!(err, "{}", located(&dir, w));
            }
            Some(input)
        }
        Err(errors) => {
            for e in &errors {
                let _ = writeln!(err, "{}", located(&dir, e));
            }
            let count = errors.iter().filter(|e| !e.warning).count();
            let _ = writeln!(
                err,
                "enforcer diff: {}: invalid policy, {count} error(s)",
                source.display()
            );
            None
        }
    }
}

/// `FILE:LINE:COL: message` with `REV:DIR/FILE` names for git inputs.
fn located(dir: &Materialized, m: &LoadMessage) -> String {
    let file = dir.display_file(&m.file);
    let severity = if m.warning { "warning: " } else { "" };
    match m.position {
        Some((line, col)) => format!("{file}:{line}:{col}: {severity}{}", m.message),
        None => format!("{file}: {severity}{}", m.message),
    }
}
