//! `enforcer generate-assets DIR` (hidden): the man pages and shell
//! completions, generated from the clap definitions so they never drift
//! from the real command line. Packaging runs it before `cargo deb`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::CommandFactory;
use clap_complete::Shell;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Output directory; gets `man/*.1` and `completions/`.
    pub out: PathBuf,
}

fn write_man(cmd: &clap::Command, name: &str, dir: &Path) -> anyhow::Result<()> {
    let path = dir.join(format!("{name}.1"));
    let mut file = std::fs::File::create(&path).with_context(|| path.display().to_string())?;
    clap_mangen::Man::new(cmd.clone().display_name(name.to_owned()))
        .render(&mut file)
        .with_context(|| path.display().to_string())
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let man = args.out.join("man");
    let completions = args.out.join("completions");
    for dir in [&man, &completions] {
        std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    }
    let mut cmd = super::Cli::command();
    cmd.build();
    write_man(&cmd, "enforcer", &man)?;
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        write_man(sub, &format!("enforcer-{}", sub.get_name()), &man)?;
    }
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd, "enforcer", &completions)
            .with_context(|| format!("{shell} completions"))?;
    }
    println!(
        "wrote man pages to {} and completions to {}",
        man.display(),
        completions.display()
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_man_pages_and_completions_for_every_command() {
        let out = std::env::temp_dir().join(format!("enforcer-assets-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&out);
        run(Args { out: out.clone() }).unwrap();
        let page = std::fs::read_to_string(out.join("man/enforcer.1")).unwrap();
        assert!(page.contains(".TH enforcer"), "{page}");
        let run_page = std::fs::read_to_string(out.join("man/enforcer-run.1")).unwrap();
        assert!(run_page.contains("cgroup\\-root"), "{run_page}");
        assert!(!out.join("man/enforcer-generate-assets.1").exists());
        let bash = std::fs::read_to_string(out.join("completions/enforcer.bash")).unwrap();
        assert!(bash.contains("--confirm"));
        assert!(out.join("completions/_enforcer").exists());
        assert!(out.join("completions/enforcer.fish").exists());
        std::fs::remove_dir_all(&out).unwrap();
    }
}
