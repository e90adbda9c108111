//! Catch-up passes that cost the writes, not the collection: on a local
//! Chroma (`chroma.persist_directory`), the records the source's writers
//! touched since the last pass, from Chroma's own sequence numbers
//! (`chroma::local`), instead of comparing both collections whole.
//!
//! A pass reads the source's position first (the next pass's mark), lists
//! the rows written after the mark, copies those records, and deletes in
//! the copy what the source no longer holds (both id sets from SQLite, a
//! fraction of a second at 100k records). Anything unexpected
//! ([`Unusable`]) is logged and counted, and the rebuild goes on with the
//! whole-collection comparison.

use std::collections::HashSet;

use super::{write_over, MigrationError, Spec};
use crate::backup::changes;
use crate::backup::source::FETCH_BATCH;
use crate::chroma::local::{LocalChroma, Unusable};
use crate::chroma::{Collection, ProductionChromaStore};
use crate::migrate::tracker::fetch;

/// The source's change feed and where the last pass left it.
pub(super) struct Feed {
    local: LocalChroma,
    segment: String,
    mark: u64,
    /// The source's ids at the last pass (for deletions after the swap).
    source_ids: HashSet<String>,
}

/// What one pass did.
pub(super) struct Pass {
    /// Records copied and deleted.
    pub fixed: u64,
}

impl Feed {
    /// Where `source` stands now, checked against the server (record counts
    /// agree, so the directory is this server's).
    pub(super) async fn start(
        local: &LocalChroma,
        store: &ProductionChromaStore,
        source: &Collection,
    ) -> Result<Result<Feed, Unusable>, MigrationError> {
        let p = match changes::position(local, store, &source.id).await {
            Ok(Ok(p)) => p,
            Ok(Err(why)) => return Ok(Err(why)),
            Err(e) => return Err(MigrationError::Conflict(e.to_string())),
        };
        Ok(Ok(Feed {
            local: local.clone(),
            segment: p.segment,
            mark: p.seq_id,
            source_ids: HashSet::new(),
        }))
    }

    /// The ids written to the source since the mark; moves the mark to the
    /// position read first.
    async fn changed(&mut self, source: &Collection) -> Result<Vec<String>, Unusable> {
        let now = self.local.position(&source.id).await?;
        if now.segment != self.segment {
            return Err(Unusable::SegmentChanged {
                collection: source.id.clone(),
                was: self.segment.clone(),
                now: now.segment,
            });
        }
        if now.seq_id < self.mark {
            return Err(Unusable::SequenceBackwards {
                collection: source.id.clone(),
                was: self.mark,
                now: now.seq_id,
            });
        }
        let mut out = Vec::new();
        let mut rows = self.local.rows(&self.segment, Some(self.mark));
        while let Some(page) = rows.next().await? {
            out.extend(page.into_iter().map(|(id, _)| id));
        }
        self.mark = now.seq_id;
        Ok(out)
    }

    /// Every id of a collection, from its metadata segment.
    async fn ids(&self, collection_id: &str) -> Result<HashSet<String>, Unusable> {
        let segment = self.local.position(collection_id).await?.segment;
        let mut out = HashSet::new();
        let mut rows = self.local.rows(&segment, None);
        while let Some(page) = rows.next().await? {
            out.extend(page.into_iter().map(|(id, _)| id));
        }
        Ok(out)
    }

    /// Copies what the source's writers changed since the last pass and
    /// deletes in `target` what the source no longer holds: before the
    /// swap, anything `target` has beyond the source (only the rebuild
    /// writes to it); after it (`settling`), only ids that left the source
    /// since the last pass, so records clients write to the new collection
    /// stay.
    pub(super) async fn pass(
        &mut self,
        store: &ProductionChromaStore,
        spec: &Spec<'_>,
        source: &Collection,
        target: &Collection,
        settling: bool,
    ) -> Result<Result<Pass, Unusable>, MigrationError> {
        let changed = match self.changed(source).await {
            Ok(c) => c,
            Err(why) => return Ok(Err(why)),
        };
        let mut fixed = 0u64;
        for part in changed.chunks(FETCH_BATCH) {
            let records = fetch(store, &source.id, part.to_vec()).await?;
            fixed += write_over(store, &target.id, spec.prepare(records).await?).await? as u64;
        }
        let source_ids = match self.ids(&source.id).await {
            Ok(ids) => ids,
            Err(why) => return Ok(Err(why)),
        };
        let gone: Vec<String> = if settling {
            self.source_ids.difference(&source_ids).cloned().collect()
        } else {
            match self.ids(&target.id).await {
                Ok(t) => t.difference(&source_ids).cloned().collect(),
                Err(why) => return Ok(Err(why)),
            }
        };
        for part in gone.chunks(FETCH_BATCH) {
            store.delete(&target.id, Some(part), None).await?;
        }
        fixed += gone.len() as u64;
        self.source_ids = source_ids;
        Ok(Ok(Pass { fixed }))
    }
}
