//! What the workspace contains, from `cargo metadata`.

use anyhow::{Context as _, Result};
use serde::Deserialize;

use crate::cmd;

#[derive(Deserialize)]
struct Metadata {
    packages: Vec<Package>,
}

#[derive(Deserialize)]
struct Package {
    id: String,
    name: String,
    targets: Vec<Target>,
}

#[derive(Deserialize)]
struct Target {
    name: String,
    kind: Vec<String>,
}

fn packages() -> Result<Vec<Package>> {
    let json = cmd::capture(cmd::cargo().args(["metadata", "--no-deps", "--format-version", "1"]))?;
    let metadata: Metadata =
        serde_json::from_str(&json).context("cannot parse `cargo metadata`")?;
    Ok(metadata.packages)
}

/// Cargo's package id of the workspace member `package`.
pub(crate) fn package_id(package: &str) -> Result<String> {
    packages()?
        .into_iter()
        .find(|p| p.name == package)
        .map(|p| p.id)
        .with_context(|| format!("no `{package}` package in the workspace"))
}

/// Names of the targets of `kind` (`bin`, `bench`, ...) in `package`.
pub(crate) fn targets(package: &str, kind: &str) -> Result<Vec<String>> {
    Ok(packages()?
        .into_iter()
        .filter(|p| p.name == package)
        .flat_map(|p| p.targets)
        .filter(|t| t.kind.iter().any(|k| k == kind))
        .map(|t| t.name)
        .collect())
}

/// Whether `package` has a target `name` of `kind`.
pub(crate) fn has_target(package: &str, kind: &str, name: &str) -> Result<bool> {
    Ok(targets(package, kind)?.iter().any(|t| t == name))
}
