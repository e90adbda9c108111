//! The repository a host backs up to, pinned in its state directory.
//!
//! A repository is identified by the random id in its `config` object. The
//! first time a host opens the repository at a location, the id is written
//! to `<state_dir>/repositories/<hash of the location>.json`; from then on a
//! repository at that location with another id (recreated, replaced, a copy
//! of another one) is refused, and so is creating a new one where the pinned
//! one has gone. Removing the pin file is how an operator says the change is
//! intended.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::format::sha256_hex;
use super::BackupError;

/// What a pin file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    /// The repository's location (never with credentials), for people.
    pub location: String,
    pub repository_id: String,
    /// When it was pinned (RFC 3339, UTC).
    pub pinned_at: String,
}

/// The pin file of the repository at `location`.
pub fn path(state_dir: &Path, location: &str) -> PathBuf {
    state_dir
        .join("repositories")
        .join(format!("{}.json", &sha256_hex(location.as_bytes())[..24]))
}

/// The pin of `location`, if one is recorded. A state directory this user
/// cannot read (an offline command run as another user) is no pin, with a
/// warning: the repository's own checks still hold. A pin file that does
/// not parse is an error: ignoring it would turn the check off.
pub fn read(state_dir: &Path, location: &str) -> Result<Option<(Pin, PathBuf)>, BackupError> {
    let file = path(state_dir, location);
    match fs_err::read(&file) {
        Ok(bytes) => match serde_json::from_slice::<Pin>(&bytes) {
            Ok(pin) => Ok(Some((pin, file))),
            Err(e) => Err(BackupError::Invalid(format!(
                "the repository pin {} is damaged ({e}); if the repository at {location} is the right one, remove the file and it is pinned again",
                file.display()
            ))),
        },
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the repository pin; the repository's id is not checked");
            Ok(None)
        }
    }
}

/// Pins `repository_id` for `location`. Only where the state directory
/// exists (the daemon creates it; an offline command does not), written
/// whole (temporary file, then rename).
pub fn write(state_dir: &Path, location: &str, repository_id: &str) -> std::io::Result<PathBuf> {
    let file = path(state_dir, location);
    if !state_dir.is_dir() {
        return Err(std::io::Error::new(
            ErrorKind::NotFound,
            format!("state directory {} does not exist", state_dir.display()),
        ));
    }
    let dir = file.parent().unwrap_or(state_dir);
    // Root running an offline command leaves the pin to the state
    // directory's owner, so the service can still replace it.
    let adopt = crate::owner::Adopt::for_dir(dir);
    fs_err::create_dir_all(dir)?;
    let pin = Pin {
        location: location.to_string(),
        repository_id: repository_id.to_string(),
        pinned_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
    };
    let tmp = file.with_extension("json.tmp");
    {
        use std::io::Write as _;
        let mut f = fs_err::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(&pin)?)?;
        f.sync_all()?;
    }
    fs_err::rename(&tmp, &file)?;
    fs_err::File::open(dir)?.sync_all()?;
    if let Some(adopt) = adopt {
        adopt.claim(&file)?;
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pin_round_trips_and_is_per_location() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(read(dir.path(), "/srv/a").expect("read").is_none());
        let file = write(dir.path(), "/srv/a", "00ff").expect("write");
        let (pin, at) = read(dir.path(), "/srv/a").expect("read").expect("pinned");
        assert_eq!((pin.repository_id.as_str(), at), ("00ff", file.clone()));
        assert!(read(dir.path(), "/srv/b").expect("read").is_none());
        // A damaged pin is an error, never a reason to stop checking.
        std::fs::write(&file, "{").expect("damage");
        let err = read(dir.path(), "/srv/a").expect_err("damaged").to_string();
        assert!(
            err.contains("damaged") && err.contains(&file.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn no_pin_is_written_where_the_state_directory_is_missing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing");
        assert!(write(&missing, "/srv/a", "00ff").is_err());
        assert!(!missing.exists());
    }
}
