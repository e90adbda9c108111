//! The id listing a backup reads by: [`IdList`], spooled to a temporary
//! file, filled from a `get` response ([`IdList::list`]) or id by id
//! ([`IdSpool`]).

use std::fs::File;
use std::io::{BufReader, BufWriter, Read as _, Seek as _, Write as _};

use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::backup::BackupError;
use crate::chroma::{ChromaError, GetRequest, ProductionChromaStore};

/// The ids of a collection as one listing returned them, kept in a
/// temporary file rather than in memory, and handed out in order.
///
/// The response is written to an unnamed temporary file as it arrives, then
/// parsed as a stream into a second one (each id as a little-endian `u32`
/// length and its bytes), so neither the response nor the ids are ever held
/// in memory whole: a backup's memory does not grow with the number of
/// records. Both files live in `$TMPDIR` (else `/tmp`) and disappear when
/// closed, also after a crash.
pub struct IdList {
    file: BufReader<File>,
    len: usize,
    taken: usize,
}

fn spool(e: std::io::Error) -> BackupError {
    BackupError::Spool(e)
}

impl IdList {
    /// Lists every id of `collection_id` in one `get` without `include`.
    pub async fn list(
        store: &ProductionChromaStore,
        collection_id: &str,
    ) -> Result<Self, BackupError> {
        let body = tempfile::tempfile().map_err(spool)?;
        let request = GetRequest {
            include: Vec::new(),
            ..GetRequest::default()
        };
        store
            .get_records_to_file(collection_id, &request, &body)
            .await?;
        tokio::task::spawn_blocking(move || Self::from_response(body))
            .await
            .map_err(|e| BackupError::Corrupt(format!("listing ids failed: {e}")))?
    }

    /// Parses a `get` response (`{"ids":[…],…}`) held in `body`.
    pub fn from_response(mut body: File) -> Result<Self, BackupError> {
        body.rewind().map_err(spool)?;
        let spill = tempfile::tempfile().map_err(spool)?;
        let mut out = BufWriter::new(&spill);
        let mut de =
            serde_json::Deserializer::from_reader(BufReader::with_capacity(64 * 1024, body));
        let decode = |e: serde_json::Error| {
            BackupError::Chroma(ChromaError::Decode {
                operation: "get",
                endpoint: String::new(),
                detail: format!("the id listing: {e}"),
            })
        };
        let mut written = Ok(());
        let len = Response {
            out: &mut out,
            written: &mut written,
        }
        .deserialize(&mut de)
        .map_err(decode)?;
        written.map_err(spool)?;
        de.end().map_err(decode)?;
        out.flush().map_err(spool)?;
        drop(out);
        let mut spill = spill;
        spill.rewind().map_err(spool)?;
        Ok(IdList {
            file: BufReader::with_capacity(64 * 1024, spill),
            len,
            taken: 0,
        })
    }

    /// Number of ids listed.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Ids handed out so far.
    pub fn taken(&self) -> usize {
        self.taken
    }

    /// The next (at most) `n` ids; empty at the end.
    pub fn next(&mut self, n: usize) -> Result<Vec<String>, BackupError> {
        let n = n.min(self.len - self.taken);
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let mut len = [0u8; 4];
            self.file.read_exact(&mut len).map_err(spool)?;
            let len = u32::from_le_bytes(len) as usize;
            let mut id = vec![0u8; len];
            self.file.read_exact(&mut id).map_err(spool)?;
            let id = String::from_utf8(id)
                .map_err(|e| spool(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
            out.push(id);
        }
        self.taken += out.len();
        Ok(out)
    }
}

/// Writes ids one by one into a new [`IdList`] (the same temporary-file
/// form a listing takes).
pub struct IdSpool {
    out: BufWriter<File>,
    len: usize,
}

impl IdSpool {
    pub fn new() -> Result<Self, BackupError> {
        Ok(IdSpool {
            out: BufWriter::with_capacity(64 * 1024, tempfile::tempfile().map_err(spool)?),
            len: 0,
        })
    }

    pub fn push(&mut self, id: &str) -> Result<(), BackupError> {
        let len = u32::try_from(id.len()).map_err(|_| {
            spool(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "a record id longer than 4 GiB",
            ))
        })?;
        self.out.write_all(&len.to_le_bytes()).map_err(spool)?;
        self.out.write_all(id.as_bytes()).map_err(spool)?;
        self.len += 1;
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn finish(self) -> Result<IdList, BackupError> {
        let mut file = self.out.into_inner().map_err(|e| spool(e.into_error()))?;
        file.rewind().map_err(spool)?;
        Ok(IdList {
            file: BufReader::with_capacity(64 * 1024, file),
            len: self.len,
            taken: 0,
        })
    }
}

/// The top-level object of a `get` response: its `ids` go to `out`, every
/// other member is skipped. Yields the number of ids.
struct Response<'a, W> {
    out: &'a mut W,
    written: &'a mut std::io::Result<()>,
}

impl<'de, W: std::io::Write> DeserializeSeed<'de> for Response<'_, W> {
    type Value = usize;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, W: std::io::Write> Visitor<'de> for Response<'_, W> {
    type Value = usize;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a get response object with ids")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<usize, A::Error> {
        let mut count = None;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key == "ids" && count.is_none() {
                count = Some(map.next_value_seed(Ids {
                    out: &mut *self.out,
                    written: &mut *self.written,
                })?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        count.ok_or_else(|| serde::de::Error::missing_field("ids"))
    }
}

struct Ids<'a, W> {
    out: &'a mut W,
    written: &'a mut std::io::Result<()>,
}

impl<'de, W: std::io::Write> DeserializeSeed<'de> for Ids<'_, W> {
    type Value = usize;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, W: std::io::Write> Visitor<'de> for Ids<'_, W> {
    type Value = usize;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a list of record ids")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
        let mut n = 0usize;
        while let Some(id) = seq.next_element::<std::borrow::Cow<'de, str>>()? {
            let len = u32::try_from(id.len())
                .map_err(|_| serde::de::Error::custom("a record id longer than 4 GiB"))?;
            if self.written.is_ok() {
                *self.written = self
                    .out
                    .write_all(&len.to_le_bytes())
                    .and_then(|()| self.out.write_all(id.as_bytes()));
            }
            n += 1;
        }
        Ok(n)
    }
}
