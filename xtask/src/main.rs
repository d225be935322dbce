//! Developer entry points: `cargo xtask setup|test|demo|bench`.

mod bench;
mod cmd;
mod demo;
mod e2e;
mod ebpf_object;
mod setup;
mod test;
mod workspace;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "enforcer's developer tasks"
)]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the build, tests and benchmarks need (Debian packages,
    /// nightly + rust-src, bpf-linker, bpffs). Idempotent.
    Setup,
    /// Setup, fmt, clippy, build, unit tests, then the root integration
    /// tests one at a time.
    Test,
    /// Setup, build, then run the demo of real enforcement on the example
    /// policies (`enforcer-demo`).
    Demo(demo::Args),
    /// Micro-benchmarks and end-to-end network benchmarks; writes
    /// target/bench/report.{json,md}.
    Bench(bench::Args),
    /// The Debian package on a booted Debian with systemd (nspawn), with
    /// real nginx, PostgreSQL, curl and psql.
    E2e(e2e::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Task::Setup => setup::run(),
        Task::Test => test::run(),
        Task::Demo(args) => demo::run(args),
        Task::Bench(args) => bench::run(args),
        Task::E2e(args) => e2e::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
