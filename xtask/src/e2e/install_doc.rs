//! The command blocks of the README (its install section) that the test runs as written, so
//! the documented install is exactly the tested one.

use std::fs;
use std::path::Path;

use anyhow::{Context as _, Result, bail};

/// The commands of the fenced block that follows the `<!-- e2e:NAME ... -->`
/// marker in `doc`: one command per line, blank and `#` lines skipped.
pub(super) fn block(doc: &Path, name: &str) -> Result<Vec<String>> {
    let text = fs::read_to_string(doc).with_context(|| format!("cannot read {}", doc.display()))?;
    parse(&text, name).with_context(|| format!("in {}", doc.display()))
}

fn parse(text: &str, name: &str) -> Result<Vec<String>> {
    let marker = format!("<!-- e2e:{name} ");
    let mut lines = text.lines().skip_while(|l| !l.starts_with(&marker));
    if lines.next().is_none() {
        bail!("no `{marker}...-->` marker");
    }
    let mut lines = lines.skip_while(|l| l.trim().is_empty());
    if !lines
        .next()
        .is_some_and(|l| l.trim_start().starts_with("```"))
    {
        bail!("the `e2e:{name}` marker is not followed by a fenced code block");
    }
    let mut commands = Vec::new();
    for line in lines {
        let line = line.trim();
        if line.starts_with("```") {
            if commands.is_empty() {
                bail!("the `e2e:{name}` block is empty");
            }
            return Ok(commands);
        }
        if !line.is_empty() && !line.starts_with('#') {
            commands.push(line.to_string());
        }
    }
    bail!("the `e2e:{name}` block is not closed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_the_block_after_its_marker() {
        let text = "# Install\n<!-- e2e:other x -->\n```sh\nnope\n```\n\
                    <!-- e2e:install as written -->\n\n```sh\n# comment\napt-get install -y ./x.deb\n\n\
                    systemctl enable --now enforcer\n```\nafter\n";
        assert_eq!(
            parse(text, "install").unwrap(),
            [
                "apt-get install -y ./x.deb",
                "systemctl enable --now enforcer"
            ]
        );
    }

    #[test]
    fn missing_marker_or_fence_is_an_error() {
        assert!(parse("text", "install").is_err());
        assert!(parse("<!-- e2e:install -->\ntext\n", "install").is_err());
        assert!(parse("<!-- e2e:install -->\n```sh\nls\n", "install").is_err());
    }
}
