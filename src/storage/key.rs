//! Object keys: relative, `/`-separated names checked before any I/O.

use std::fmt;
use std::str::FromStr;

use super::StorageError;

/// Longest accepted key, in bytes (S3 and GCS allow 1024, Azure more).
pub const MAX_KEY_LEN: usize = 1024;
/// Longest accepted segment, in bytes (the usual file-name limit).
pub const MAX_SEGMENT_LEN: usize = 255;

/// A validated object key such as `data/3f/3f9a…` or `snapshots/2026-11-25T20:00:00Z.json`.
///
/// Invariants, checked by [`ObjectKey::new`]: non-empty, at most
/// [`MAX_KEY_LEN`] bytes; segments separated by single `/`, none empty (so no
/// leading or trailing `/`), none `.` or `..`, each at most
/// [`MAX_SEGMENT_LEN`] bytes; only ASCII letters, digits and `. _ - = + , @ :`.
/// A key therefore names a path strictly inside a backend's root on every
/// backend and needs no escaping in a file name or in object_store's paths
/// (which would percent-encode `~`, so it is excluded).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey(String);

/// Characters allowed in a key segment besides ASCII letters and digits.
const EXTRA_CHARS: &[u8] = b"._-=+,@:";

impl ObjectKey {
    /// Validates `key`. The error names the offending part and the rule.
    pub fn new(key: impl Into<String>) -> Result<Self, StorageError> {
        let key = key.into();
        validate(&key).map_err(|reason| StorageError::InvalidKey {
            key: printable(&key),
            reason,
        })?;
        Ok(Self(key))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `self/child` — both parts validated, the result re-checked for length.
    pub fn join(&self, child: &str) -> Result<Self, StorageError> {
        Self::new(format!("{}/{child}", self.0))
    }

    /// True if `self` lies under `prefix` as a directory (`a/b` is under `a`,
    /// `ab` is not).
    pub fn is_under(&self, prefix: &ObjectKey) -> bool {
        self.0
            .strip_prefix(prefix.as_str())
            .is_some_and(|rest| rest.starts_with('/'))
    }
}

fn validate(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("a key must not be empty".into());
    }
    if key.len() > MAX_KEY_LEN {
        return Err(format!("a key must be at most {MAX_KEY_LEN} bytes"));
    }
    if key.starts_with('/') {
        return Err("a key is relative: remove the leading '/'".into());
    }
    for segment in key.split('/') {
        match segment {
            "" => return Err("empty segment ('//' or a trailing '/')".into()),
            "." | ".." => return Err(format!("segment '{segment}' is not allowed")),
            s if s.len() > MAX_SEGMENT_LEN => {
                return Err(format!("a segment must be at most {MAX_SEGMENT_LEN} bytes"))
            }
            s => {
                if let Some(c) = s.chars().find(|c| {
                    !(c.is_ascii_alphanumeric()
                        || (c.is_ascii() && EXTRA_CHARS.contains(&(*c as u8))))
                }) {
                    return Err(format!(
                        "character {c:?} is not allowed (use ASCII letters, digits and . _ - = + , @ :)"
                    ));
                }
            }
        }
    }
    Ok(())
}

/// The key as shown in errors: control characters escaped, long keys cut.
fn printable(key: &str) -> String {
    let mut shown: String = key.chars().take(200).flat_map(char::escape_debug).collect();
    if key.chars().count() > 200 {
        shown.push('…');
    }
    shown
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectKey({:?})", self.0)
    }
}

impl FromStr for ObjectKey {
    type Err = StorageError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<&str> for ObjectKey {
    type Error = StorageError;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl AsRef<str> for ObjectKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::path::{Component, Path};

    #[test]
    fn accepts_ordinary_keys() {
        for k in [
            "a",
            "data/3f/3f9a0c",
            "snapshots/2026-11-25T20:00:00Z.json",
            "odd/a+b=c,d@e:f_g-h.i",
            ".hidden/x",
            "a..b/c",
        ] {
            assert!(ObjectKey::new(k).is_ok(), "{k} should be valid");
        }
    }

    #[test]
    fn rejects_escapes_and_malformed_keys() {
        for k in [
            "", "/", "/a", "a/", "a//b", ".", "..", "../x", "a/../b", "a/./b", "a\\b", "a b",
            "a\0b", "é", "a?b", "a#b", "a%2e", "a\nb", "a~b",
        ] {
            let err = ObjectKey::new(k).expect_err(k);
            assert!(matches!(err, StorageError::InvalidKey { .. }), "{k}: {err}");
        }
    }

    #[test]
    fn error_names_the_rule() {
        let msg = ObjectKey::new("../x").expect_err("invalid").to_string();
        assert!(msg.contains("'..'"), "{msg}");
        let msg = ObjectKey::new("/abs").expect_err("invalid").to_string();
        assert!(msg.contains("leading '/'"), "{msg}");
    }

    #[test]
    fn length_limits() {
        assert!(ObjectKey::new("a".repeat(MAX_SEGMENT_LEN)).is_ok());
        assert!(ObjectKey::new("a".repeat(MAX_SEGMENT_LEN + 1)).is_err());
        let long = vec!["a".repeat(100); 11].join("/");
        assert!(long.len() > MAX_KEY_LEN);
        assert!(ObjectKey::new(long).is_err());
    }

    #[test]
    fn is_under_is_segment_wise() {
        let k = ObjectKey::new("a/b/c").expect("valid");
        assert!(k.is_under(&ObjectKey::new("a").expect("valid")));
        assert!(k.is_under(&ObjectKey::new("a/b").expect("valid")));
        assert!(!k.is_under(&ObjectKey::new("a/b/c").expect("valid")));
        assert!(!ObjectKey::new("ab/c")
            .expect("valid")
            .is_under(&ObjectKey::new("a").expect("valid")));
    }

    proptest! {
        /// Whatever the input, validation never panics, and an accepted key
        /// joined to a root stays strictly inside that root.
        #[test]
        fn arbitrary_strings_never_escape(s in any::<String>()) {
            if let Ok(k) = ObjectKey::new(s.clone()) {
                let p = Path::new("/root").join(k.as_str());
                prop_assert!(p.starts_with("/root"));
                prop_assert!(p.components().skip(2).all(|c| matches!(c, Component::Normal(_))));
                prop_assert!(p.components().count() >= 3);
                prop_assert_eq!(k.as_str(), s.as_str());
            }
        }

        /// The same over strings built from the characters that matter.
        #[test]
        fn path_like_strings_never_escape(s in "[a./\\\\:~+ ]{0,12}") {
            if let Ok(k) = ObjectKey::new(s) {
                let p = Path::new("/root").join(k.as_str());
                prop_assert!(p.components().skip(2).all(|c| matches!(c, Component::Normal(_))));
                prop_assert!(!k.as_str().split('/').any(|seg| seg.is_empty() || seg == "." || seg == ".."));
            }
        }

        /// Every key made of valid segments is accepted and round-trips.
        #[test]
        fn valid_segments_are_accepted(segs in proptest::collection::vec("[A-Za-z0-9_=+,@:-][A-Za-z0-9._=+,@:-]{0,20}", 1..6)) {
            let s = segs.join("/");
            prop_assume!(!segs.iter().any(|x| x == "." || x == ".."));
            let k = ObjectKey::new(s.clone());
            prop_assert!(k.is_ok(), "{:?}", k);
            prop_assert_eq!(k.expect("checked").to_string(), s);
        }
    }
}
