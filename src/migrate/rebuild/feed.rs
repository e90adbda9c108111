//! Catch-up passes that cost the writes, not the collection: on a local
//! Chroma (`chroma.persist_directory`), the records the source's writers
//! touched since the last pass, from Chroma's own sequence numbers
//! (`chroma::local`), instead of comparing both collections whole.
//!
//! A pass reads the source's position first (the next pass's mark), then
//! lists the source's rows once: those written after the mark are copied,
//! and the ids the copy holds beyond the listing are deleted there. The
//! copy's ids are listed once, at the first pass; after that they are kept
//! as the passes write and delete them (before the swap only the rebuild
//! writes to the copy). So a pass costs one listing of the source (a
//! fraction of a second at 100k records) and the writes. Anything
//! unexpected ([`Unusable`]) is logged and counted, and the rebuild goes on
//! with the whole-collection comparison.

use std::collections::HashSet;

use super::write::{delete, write_over, Writes, PART};
use super::{MigrationError, Spec};
use crate::backup::changes;
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
    /// The copy's ids, listed at the first pass before the swap and kept
    /// since as passes write and delete.
    target_ids: Option<HashSet<String>>,
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
            target_ids: None,
        }))
    }

    /// The source's rows in one listing: the ids written since the mark,
    /// and every id. Moves the mark to the position read first.
    async fn changed(
        &mut self,
        source: &Collection,
    ) -> Result<(Vec<String>, HashSet<String>), Unusable> {
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
        let (mut changed, mut ids) = (Vec::new(), HashSet::new());
        let mut rows = self.local.rows(&self.segment, None);
        while let Some(page) = rows.next().await? {
            for (id, seq) in page {
                if seq > self.mark {
                    changed.push(id.clone());
                }
                ids.insert(id);
            }
        }
        self.mark = now.seq_id;
        Ok((changed, ids))
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
        writes: &mut Writes,
    ) -> Result<Result<Pass, Unusable>, MigrationError> {
        let (changed, source_ids) = match self.changed(source).await {
            Ok(c) => c,
            Err(why) => return Ok(Err(why)),
        };
        if !settling && self.target_ids.is_none() {
            match self.ids(&target.id).await {
                Ok(t) => self.target_ids = Some(t),
                Err(why) => return Ok(Err(why)),
            }
        }
        let mut fixed = 0u64;
        for part in changed.chunks(PART) {
            let records = fetch(store, &source.id, part.to_vec()).await?;
            if let Some(t) = self.target_ids.as_mut() {
                t.extend(records.iter().map(|r| r.id.clone()));
            }
            let records = spec.prepare(records).await?;
            fixed += write_over(store, &target.id, records, writes).await? as u64;
        }
        let gone: Vec<String> = match (settling, self.target_ids.as_ref()) {
            (false, Some(t)) => t.difference(&source_ids).cloned().collect(),
            _ => self.source_ids.difference(&source_ids).cloned().collect(),
        };
        for part in gone.chunks(PART) {
            delete(store, &target.id, part, writes).await?;
        }
        if let Some(t) = self.target_ids.as_mut() {
            for id in &gone {
                t.remove(id);
            }
        }
        fixed += gone.len() as u64;
        self.source_ids = source_ids;
        Ok(Ok(Pass { fixed }))
    }
}
