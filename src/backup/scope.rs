//! Which collections a backup covers: the request's names, or every
//! collection the configured `include` and `exclude` globs admit.

use super::create::BackupRequest;
use super::manifest::BackupType;
use super::{BackupError, BackupManager};
use crate::chroma::swap::JOURNAL_COLLECTION;
use crate::chroma::Collection;
use crate::config::Config;

fn glob(pattern: &str, name: &str) -> bool {
    fn m(p: &[u8], n: &[u8]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some(b'*'), _) => m(&p[1..], n) || (!n.is_empty() && m(p, &n[1..])),
            (Some(b'?'), Some(_)) => m(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => m(&p[1..], &n[1..]),
            _ => false,
        }
    }
    m(pattern.as_bytes(), name.as_bytes())
}

/// Whether a collection is in a full backup's scope.
/// The swap journal (`chroma::swap`) never is: it describes this database's
/// swaps in progress, not a restored one's.
pub fn in_scope(config: &Config, name: &str) -> bool {
    name != JOURNAL_COLLECTION
        && config.backup.include.iter().any(|p| glob(p, name))
        && !config.backup.exclude.iter().any(|p| glob(p, name))
}

impl BackupManager {
    /// The collections a request covers, as Chroma describes them now.
    pub(super) async fn scope(&self, req: &BackupRequest) -> Result<Vec<Collection>, BackupError> {
        let all = self.store.list_collections().await?;
        if req.collections.is_empty() {
            if req.backup_type == BackupType::Collection {
                return Err(BackupError::Invalid(
                    "a collection backup needs --collection NAME".into(),
                ));
            }
            return Ok(all
                .into_iter()
                .filter(|c| in_scope(&self.config, &c.name))
                .collect());
        }
        let mut out = Vec::new();
        for name in &req.collections {
            match all.iter().find(|c| &c.name == name) {
                Some(c) => out.push(c.clone()),
                None => return Err(BackupError::NoCollection(name.clone())),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("*", "anything"));
        assert!(glob("docs_*", "docs_2024"));
        assert!(!glob("docs_*", "other"));
        assert!(glob("a?c", "abc"));
        assert!(!glob("a?c", "abbc"));
    }
}
