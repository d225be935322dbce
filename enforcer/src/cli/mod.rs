//! Subcommands, one file each.

pub mod diff;
