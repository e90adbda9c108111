//! Chroma's rules for names, checked before a request is sent (config
//! validation, migration files).

/// Chroma's rule for collection names: 3-512 characters of
/// `[a-zA-Z0-9._-]`, starting and ending with a letter or digit.
pub fn valid_collection_name(name: &str) -> bool {
    let b = name.as_bytes();
    (3..=512).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

#[cfg(test)]
mod tests {
    use super::valid_collection_name;

    #[test]
    fn collection_names_follow_chroma() {
        assert!(valid_collection_name("docs"));
        assert!(valid_collection_name("docs.pre-v2"));
        assert!(valid_collection_name("chromaprod-migrations"));
        assert!(!valid_collection_name("ab"));
        assert!(!valid_collection_name("_docs"));
        assert!(!valid_collection_name("docs-"));
        assert!(!valid_collection_name("do cs"));
    }
}
