//! A wrapper that keeps secrets out of `Debug`, `Display` and logs and
//! wipes them when dropped, and the rule for files that hold secrets.

use std::fmt;
use std::path::{Path, PathBuf};

use zeroize::{Zeroize, ZeroizeOnDrop};

/// A secret value (token, key, credential). `Debug` and `Display` print
/// `[redacted]`; the value is reachable only through [`Secret::expose`].
/// Dropping it overwrites the value with zeros (`zeroize`): what it held
/// does not linger in freed memory. Copies made through `expose` (a
/// header value, a ring key schedule) are not covered.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T: Zeroize>(T);

impl<T: Zeroize> Secret<T> {
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// The secret itself. Call sites are easy to audit with `grep expose`.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T: Zeroize> Drop for Secret<T> {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl<T: Zeroize> ZeroizeOnDrop for Secret<T> {}

impl<T: Zeroize> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl<T: Zeroize> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Serde for an optional secret that must cross a trusted local channel (the
/// control socket). Opt in per field with `#[serde(with = "crate::secret::wire")]`:
/// `Secret` itself has no `Serialize`, so nothing else can write one by accident.
pub mod wire {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::Secret;

    pub fn serialize<S: Serializer>(v: &Option<Secret<String>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(secret) => s.serialize_some(secret.expose()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Secret<String>>, D::Error> {
        Ok(Option::<String>::deserialize(d)?.map(Secret::new))
    }
}

/// A file holding a key or token whose mode lets users other than its
/// owner at it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} has mode {mode:04o}: users other than its owner can read or change it; run `chmod 600 {}` (a key or token file must be private to the user chromaprod runs as)", path.display(), path.display())]
pub struct ExposedFile {
    pub path: PathBuf,
    /// The permission bits (`mode & 0o7777`).
    pub mode: u32,
}

/// Refuses a secret file that grants group or other any access (the rule
/// ssh applies to private keys). `meta` is the file's metadata, ideally
/// from the open handle that is then read.
pub fn check_private(path: &Path, meta: &std::fs::Metadata) -> Result<(), ExposedFile> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 == 0 {
        Ok(())
    } else {
        Err(ExposedFile {
            path: path.to_path_buf(),
            mode,
        })
    }
}

/// Where systemd puts a service's credentials (`LoadCredential=`; the
/// service sees the directory as `$CREDENTIALS_DIRECTORY`).
pub const SYSTEMD_CREDENTIALS_ROOT: &str = "/run/credentials";

/// Whether `path` is a credential systemd placed for a service: systemd
/// sets those files' owner and mode, so they are not judged here. The
/// source files under `/etc/chromaprod/credentials` are judged (an operator
/// shell may point `$CREDENTIALS_DIRECTORY` at them).
pub fn is_systemd_credential(path: &Path) -> bool {
    // `/run/credentials/../../tmp/key` names no credential.
    path.starts_with(SYSTEMD_CREDENTIALS_ROOT)
        && !path
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_hide_the_value() {
        let s = Secret::new("hunter2-token".to_string());
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(!format!("{s}").contains("hunter2"));
        assert_eq!(s.expose(), "hunter2-token");
    }

    /// Compile-time: these types wipe themselves when dropped. (What a test
    /// can show without `unsafe`: the trait is there, and the wipe it runs
    /// clears the value — not that no other copy exists.)
    #[test]
    fn secrets_are_zeroized_on_drop() {
        fn wipes_on_drop<T: ZeroizeOnDrop>() {}
        wipes_on_drop::<Secret<String>>();
        wipes_on_drop::<Secret<[u8; 32]>>();
        wipes_on_drop::<Secret<Vec<u8>>>();
        // The wipe Drop runs really clears the value.
        let mut s = Secret::new(*b"0123456789abcdef0123456789abcdef");
        s.0.zeroize();
        assert_eq!(s.expose(), &[0u8; 32]);
        let mut t = Secret::new("hunter2-token".to_string());
        t.0.zeroize();
        assert!(t.expose().is_empty());
    }

    #[test]
    fn a_file_group_or_other_can_access_is_exposed() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("token");
        std::fs::write(&f, "x").expect("write");
        for (mode, ok) in [
            (0o600, true),
            (0o400, true),
            (0o640, false),
            (0o604, false),
            (0o620, false),
        ] {
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).expect("chmod");
            let r = check_private(&f, &std::fs::metadata(&f).expect("stat"));
            assert_eq!(r.is_ok(), ok, "{mode:o}: {r:?}");
            if let Err(e) = r {
                let msg = e.to_string();
                assert!(msg.contains(&format!("{mode:04o}")), "{msg}");
                assert!(msg.contains(&format!("chmod 600 {}", f.display())), "{msg}");
            }
        }
    }
}
