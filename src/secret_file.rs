//! Files that hold secrets (service-account key, OAuth client secret, token
//! encryption key): like ssh and gcloud, we refuse one that others can read.

use std::path::Path;

use anyhow::{Context, bail};

/// Checks that `path` is a regular file readable by its owner only. `what`
/// names the setting in the error (e.g. "service-account key file").
pub fn check_private(path: &Path, what: &str) -> anyhow::Result<()> {
    let meta = std::fs::metadata(path).with_context(|| format!("{what} {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            bail!(
                "{what} {} is readable by group or others (mode {:o}); run: chmod 600 {}",
                path.display(),
                mode,
                path.display()
            );
        }
    }
    if !meta.is_file() {
        bail!("{what} {} is not a file", path.display());
    }
    Ok(())
}

/// Reads a one-line secret (surrounding whitespace trimmed) from a private file.
pub fn read_secret(path: &Path, what: &str) -> anyhow::Result<secrecy::SecretString> {
    check_private(path, what)?;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading {what} {}", path.display()))?;
    let value = text.trim();
    if value.is_empty() {
        bail!("{what} {} is empty", path.display());
    }
    Ok(secrecy::SecretString::from(value.to_owned()))
}
