//! Keyset pages of a segment's `(embedding_id, seq_id)` rows: one read
//! transaction each ([`LocalChroma::page_split`]), and the cursor that goes
//! through them ([`Rows`]).

use rusqlite::types::ValueRef;

use super::{id_hash, seq_value, LocalChroma, Sample, Unusable, PAGE};

/// One page of a segment's rows, split at a sequence number
/// ([`LocalChroma::page_split`]).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SplitPage {
    /// Rows written after the sequence number: `(id, seq_id)`.
    pub written: Vec<(String, u64)>,
    /// How many rows were written at or before it (their ids not read out)...
    pub at_or_before: u64,
    /// ...and their ids' [`id_hash`]es XORed together: a digest of that set
    /// of ids, order aside.
    pub at_or_before_ids: u64,
    /// The page's last id (where the next page starts), `None` after the
    /// last page.
    pub next: Option<String>,
    /// The sample the read was given, every row of the page offered to it.
    pub sample: Option<Sample>,
}

impl LocalChroma {
    /// Up to `limit` rows of `segment` with ids after `after`, in id order
    /// (one short read transaction), split at `since`: the rows written
    /// after it with their ids, the others only counted. Without `since`,
    /// every row is read out. Every row is offered to `sample`, if given.
    pub async fn page_split(
        &self,
        segment: &str,
        after: Option<String>,
        since: Option<u64>,
        limit: usize,
        sample: Option<Sample>,
    ) -> Result<SplitPage, Unusable> {
        let segment = segment.to_string();
        self.read(move |conn| {
            let limit_sql = i64::try_from(limit).unwrap_or(i64::MAX);
            // Two statements, not `(?2 IS NULL OR embedding_id > ?2)`: SQLite
            // plans that once for either binding, as a walk of the index from
            // the segment's first row, so every page would read all the rows
            // before it.
            let mut stmt = conn.prepare_cached(match after {
                None => FIRST_PAGE,
                Some(_) => NEXT_PAGE,
            })?;
            let mut rows = match after.as_deref() {
                None => stmt.query((&segment, limit_sql))?,
                Some(after) => stmt.query((&segment, after, limit_sql))?,
            };
            let (mut page, mut last, mut n) = (
                SplitPage {
                    sample,
                    ..SplitPage::default()
                },
                String::new(),
                0usize,
            );
            while let Some(r) = rows.next()? {
                n += 1;
                let id = match r.get_ref(0)? {
                    ValueRef::Text(t) => {
                        std::str::from_utf8(t).map_err(|e| rusqlite::Error::Utf8Error(0, e))?
                    }
                    _ => return Ok(Err(Unusable::Value("embedding_id is not text".into()))),
                };
                last.clear();
                last.push_str(id);
                let seq = match seq_value(r.get_ref(1)?).value() {
                    Ok(seq) => seq,
                    Err(e) => return Ok(Err(e)),
                };
                let written = since.is_none_or(|since| seq > since);
                let hash = (!written || page.sample.is_some()).then(|| id_hash(id));
                if let (Some(sample), Some(hash)) = (page.sample.as_mut(), hash) {
                    sample.offer(id, hash);
                }
                match hash {
                    Some(hash) if !written => {
                        page.at_or_before += 1;
                        page.at_or_before_ids ^= hash;
                    }
                    _ => page.written.push((id.to_string(), seq)),
                }
            }
            page.next = (n == limit && limit > 0).then_some(last);
            Ok(Ok(page))
        })
        .await
    }
}

/// The first page of a segment's rows, in id order (`?1` the segment, `?2`
/// the page's size).
pub(super) const FIRST_PAGE: &str = "SELECT embedding_id, seq_id FROM embeddings \
     WHERE segment_id = ?1 ORDER BY embedding_id LIMIT ?2";
/// The page after id `?2`: a range of Chroma's `(segment_id, embedding_id)`
/// index.
pub(super) const NEXT_PAGE: &str = "SELECT embedding_id, seq_id FROM embeddings \
     WHERE segment_id = ?1 AND embedding_id > ?2 ORDER BY embedding_id LIMIT ?3";

/// Every row of a segment (only those written after `since` when set), in
/// id order, `limit` rows read at a time: one short read transaction each
/// ([`LocalChroma::rows`], [`LocalChroma::scan`]).
pub struct Rows {
    local: LocalChroma,
    segment: String,
    since: Option<u64>,
    limit: usize,
    after: Option<String>,
    sample: Option<Sample>,
    done: bool,
}

impl Rows {
    /// The next page, split at `since` ([`LocalChroma::page_split`]), or
    /// `None` after the last. Its rows have been offered to the sample,
    /// which stays with the scan ([`Rows::into_sample`]).
    pub async fn next_split(&mut self) -> Result<Option<SplitPage>, Unusable> {
        if self.done {
            return Ok(None);
        }
        let mut page = self
            .local
            .page_split(
                &self.segment,
                self.after.take(),
                self.since,
                self.limit,
                self.sample.take(),
            )
            .await?;
        self.sample = page.sample.take();
        self.done = page.next.is_none();
        self.after.clone_from(&page.next);
        Ok(Some(page))
    }

    /// The next page of `(id, seq_id)`, or `None` after the last. With
    /// `since` set, a page holds only the rows of those read that were
    /// written after it, and may be empty.
    pub async fn next(&mut self) -> Result<Option<Vec<(String, u64)>>, Unusable> {
        Ok(self.next_split().await?.map(|page| page.written))
    }

    /// The sample the scan was given, every row read so far offered to it.
    pub fn into_sample(self) -> Option<Sample> {
        self.sample
    }
}

impl LocalChroma {
    /// The rows of `segment` (written after `since` when set), [`PAGE`]
    /// rows at a time.
    pub fn rows(&self, segment: &str, since: Option<u64>) -> Rows {
        self.scan(segment, since, PAGE, None)
    }

    /// The rows of `segment`, `limit` at a time, split at `since`, each
    /// offered to `sample` if given.
    pub fn scan(
        &self,
        segment: &str,
        since: Option<u64>,
        limit: usize,
        sample: Option<Sample>,
    ) -> Rows {
        Rows {
            local: self.clone(),
            segment: segment.to_string(),
            since,
            limit,
            after: None,
            sample,
            done: false,
        }
    }
}
