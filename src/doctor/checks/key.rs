//! The `key` check: the backup key the configuration points at.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use crate::backup::crypto::MasterKey;
use crate::config::Config;
use crate::doctor::Check;

/// Where `LoadCredential=backup-key:…` reads the key in the shipped unit;
/// checked when `CREDENTIALS_DIRECTORY` is not set (outside the service).
pub const DEFAULT_CREDENTIALS_DIR: &str = "/etc/chromaprod/credentials";

/// The key file the configuration points at, and how it was chosen.
fn key_path(cfg: &Config) -> (PathBuf, String) {
    if let Some(p) = &cfg.backup.key_file {
        return (p.clone(), "backup.key_file".into());
    }
    match std::env::var_os("CREDENTIALS_DIRECTORY") {
        Some(dir) => (
            Path::new(&dir).join("backup-key"),
            "$CREDENTIALS_DIRECTORY/backup-key".into(),
        ),
        None => (
            Path::new(DEFAULT_CREDENTIALS_DIR).join("backup-key"),
            "the source of the unit's LoadCredential=backup-key (CREDENTIALS_DIRECTORY is set only inside the service)".into(),
        ),
    }
}

pub(super) fn check_key(cfg: &Config) -> (Check, Option<MasterKey>) {
    const NAME: &str = "key";
    if !cfg.backup.encrypt {
        return (
            Check::warn(
                NAME,
                crate::config::PLAINTEXT_WARNING,
                crate::config::PLAINTEXT_FIX,
            ),
            None,
        );
    }
    let (path, source) = key_path(cfg);
    match MasterKey::from_file(&path) {
        Ok(key) => {
            let mode = std::fs::metadata(&path)
                .map(|m| m.permissions().mode() & 0o777)
                .unwrap_or(0);
            let check = Check::ok(
                NAME,
                format!(
                    "key {} readable from {} ({source}), mode {mode:04o}",
                    key.key_id(),
                    path.display()
                ),
            );
            (check, Some(key))
        }
        // chromaprod refuses such a key: a failure, with the one command that fixes it.
        Err(crate::backup::crypto::CryptoError::Exposed(e)) => (
            Check::fail(
                NAME,
                format!("the key file ({source}) {e}"),
                format!("chmod 600 {}", path.display()),
            ),
            None,
        ),
        Err(crate::backup::crypto::CryptoError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::PermissionDenied
                && !nix::unistd::geteuid().is_root() =>
        {
            (
                Check::warn(
                    NAME,
                    format!("cannot read {} as this user: {source}", path.display()),
                    "run `sudo chromaprod doctor` to check the key",
                ),
                None,
            )
        }
        Err(e) => (
            Check::fail(
                NAME,
                e.to_string(),
                format!(
                    "put the key back at {} from your safe copy (runbook: \"Lose it\"); a new repository needs a new key: `chromaprod key generate {}`",
                    path.display(),
                    path.display()
                ),
            ),
            None,
        ),
    }
}
