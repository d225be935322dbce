//! The `enforcer` binary as the CLI tests run it, and the files they give it.
//! Each integration test that drives the CLI declares `mod support;`.

#![allow(dead_code, reason = "each test file uses a different subset")]

use std::path::Path;
use std::process::{Command, Output};

/// Runs the built `enforcer` with `args` in the current directory.
pub(crate) fn enforcer(args: &[&str]) -> Output {
    enforcer_in(Path::new("."), args)
}

/// Runs the built `enforcer` with `args` in `cwd`, without colours.
pub(crate) fn enforcer_in(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_enforcer"))
        .current_dir(cwd)
        .env("NO_COLOR", "1")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run enforcer {args:?}: {e}"))
}

/// The exit status; panics if a signal ended the process.
pub(crate) fn code(o: &Output) -> i32 {
    o.status.code().expect("exit code")
}

pub(crate) fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub(crate) fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Writes `files` as (name, text) into `dir`, creating it.
pub(crate) fn write(dir: &Path, files: &[(&str, &str)]) {
    std::fs::create_dir_all(dir).expect("create policy dir");
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap_or_else(|e| panic!("write {name}: {e}"));
    }
}

/// A new temporary directory holding `files`.
pub(crate) fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), files);
    dir
}
