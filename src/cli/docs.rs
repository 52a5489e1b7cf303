//! Shell completions and man pages, generated from the clap definitions in [`super::args`] so
//! they cannot drift from the real command line. scripts/package.sh puts them in the .deb.

use std::path::Path;

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;

use super::args::{Args, CompletionShell};

/// Writes the completion script for `shell` to stdout.
pub fn completions(shell: CompletionShell) -> Result<()> {
    let shell = match shell {
        CompletionShell::Bash => Shell::Bash,
        CompletionShell::Zsh => Shell::Zsh,
        CompletionShell::Fish => Shell::Fish,
    };
    let mut cmd = Args::command();
    clap_complete::generate(shell, &mut cmd, "concentrator", &mut std::io::stdout());
    Ok(())
}

/// Writes `concentrator.1` and `concentrator-<subcommand>.1` for every visible subcommand
/// into `dir`.
pub fn manpages(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let cmd = Args::command();
    write_page(dir, "concentrator", cmd.clone())?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("concentrator-{}", sub.get_name());
        let sub = sub.clone().name(name.clone());
        write_page(dir, &name, sub)?;
    }
    Ok(())
}

fn write_page(dir: &Path, name: &str, cmd: clap::Command) -> Result<()> {
    let path = dir.join(format!("{name}.1"));
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd)
        .render(&mut page)
        .with_context(|| format!("rendering the man page {name}"))?;
    std::fs::write(&path, page).with_context(|| format!("writing {}", path.display()))
}
