//! Record batches: their size, how they are cut into requests, and the
//! request body of a write (embeddings as floats or base64).

use std::ops::Range;

use base64::Engine as _;
use serde::Serialize;

use super::types::Metadata;

/// Chroma's request-body limit (a larger body gets 413 or a reset).
pub const MAX_REQUEST_BYTES: usize = 40 * 1024 * 1024;

/// The body size a split write aims for: about 1,500 records of 384
/// dimensions with documents. Chroma 1.5.9 indexed batches of 500 to
/// 5,000 such records equally fast (`docs/benchmarks.md`), and a request
/// this size keeps the client's buffers a few MiB whatever the batch.
pub const WRITE_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// Records to upsert: parallel arrays, each optional field either absent
/// or as long as `ids`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecordBatch {
    pub ids: Vec<String>,
    pub embeddings: Option<Vec<Vec<f32>>>,
    pub documents: Option<Vec<Option<String>>>,
    pub metadatas: Option<Vec<Option<Metadata>>>,
    pub uris: Option<Vec<Option<String>>>,
}

impl RecordBatch {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Every optional array is as long as `ids`.
    pub fn validate(&self) -> Result<(), String> {
        let n = self.ids.len();
        let check = |name: &str, len: Option<usize>| match len {
            Some(l) if l != n => Err(format!("{name} has {l} entries but ids has {n}")),
            _ => Ok(()),
        };
        check("embeddings", self.embeddings.as_ref().map(Vec::len))?;
        check("documents", self.documents.as_ref().map(Vec::len))?;
        check("metadatas", self.metadatas.as_ref().map(Vec::len))?;
        check("uris", self.uris.as_ref().map(Vec::len))
    }

    /// A cheap lower bound of the request body of `range`: enough to
    /// choose its buffer (see [`crate::mem::buffer_for`]).
    pub(super) fn body_floor(&self, range: Range<usize>, base64: bool) -> usize {
        let per_float = if base64 { 4 } else { 8 };
        range
            .map(|i| {
                let vector = self
                    .embeddings
                    .as_ref()
                    .map_or(0, |e| e[i].len() * per_float);
                let document = self
                    .documents
                    .as_ref()
                    .and_then(|d| d[i].as_ref())
                    .map_or(0, String::len);
                self.ids[i].len() + vector + document + 16
            })
            .sum()
    }

    /// Estimated request-body bytes of record `i` (JSON with base64 embeddings).
    pub fn record_size(&self, i: usize, base64: bool) -> usize {
        let mut size = self.ids[i].len() + 8;
        if let Some(e) = &self.embeddings {
            let dim = e[i].len();
            size += if base64 {
                (dim * 4).div_ceil(3) * 4 + 4
            } else {
                dim * 16 + 2
            };
        }
        if let Some(Some(d)) = self.documents.as_ref().map(|d| &d[i]) {
            // JSON escaping can grow a string up to 6× (\uXXXX); be safe.
            size += d.len() * 2 + 4;
        }
        if let Some(Some(m)) = self.metadatas.as_ref().map(|m| &m[i]) {
            size += serde_json::to_string(m).map_or(1024, |s| s.len() * 2) + 2;
        }
        if let Some(Some(u)) = self.uris.as_ref().map(|u| &u[i]) {
            size += u.len() * 2 + 4;
        }
        size + 8
    }
}

/// Split `batch` into consecutive ranges of at most `max_records` records
/// and (estimated) `max_bytes` bytes each. A single record larger than
/// `max_bytes` still gets a range of its own (Chroma will answer 413).
pub fn plan_batches(
    batch: &RecordBatch,
    max_records: usize,
    max_bytes: usize,
    base64: bool,
) -> Vec<Range<usize>> {
    let max_records = max_records.max(1);
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 256usize;
    for i in 0..batch.len() {
        let size = batch.record_size(i, base64);
        if i > start && (i - start >= max_records || bytes + size > max_bytes) {
            out.push(start..i);
            start = i;
            bytes = 256;
        }
        bytes += size;
    }
    if start < batch.len() {
        out.push(start..batch.len());
    }
    out
}

/// Little-endian f32 bytes in standard base64, as Chroma's upsert accepts.
pub fn encode_embedding(v: &[f32]) -> String {
    let mut bytes = Vec::with_capacity(v.len() * 4);
    for x in v {
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Embeddings as a request sends them: JSON arrays of numbers, or base64
/// strings encoded one at a time as the body is written (a batch's
/// strings are never all held at once).
enum EmbeddingsOut<'a> {
    Floats(&'a [Vec<f32>]),
    Base64(&'a [Vec<f32>]),
}

impl Serialize for EmbeddingsOut<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        match self {
            EmbeddingsOut::Floats(es) => es.serialize(s),
            EmbeddingsOut::Base64(es) => {
                let mut seq = s.serialize_seq(Some(es.len()))?;
                for e in *es {
                    seq.serialize_element(&encode_embedding(e))?;
                }
                seq.end()
            }
        }
    }
}

/// The body of an upsert, add or update: a range of a batch, borrowed.
#[derive(Serialize)]
pub(super) struct UpsertBody<'a> {
    ids: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    embeddings: Option<EmbeddingsOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    documents: Option<&'a [Option<String>]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadatas: Option<&'a [Option<Metadata>]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    uris: Option<&'a [Option<String>]>,
}

impl<'a> UpsertBody<'a> {
    /// `batch[range]`; the caller has checked `range` against the batch.
    pub(super) fn of(batch: &'a RecordBatch, range: Range<usize>, base64: bool) -> Self {
        let embeddings = batch.embeddings.as_deref().map(|es| {
            let es = &es[range.clone()];
            if base64 {
                EmbeddingsOut::Base64(es)
            } else {
                EmbeddingsOut::Floats(es)
            }
        });
        UpsertBody {
            ids: &batch.ids[range.clone()],
            embeddings,
            documents: batch.documents.as_deref().map(|d| &d[range.clone()]),
            metadatas: batch.metadatas.as_deref().map(|m| &m[range.clone()]),
            uris: batch.uris.as_deref().map(|u| &u[range]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embeddings_encode_as_little_endian_f32_base64() {
        // Python: base64.b64encode(struct.pack("<3f", 1.0, 2.5, -3.25))
        assert_eq!(encode_embedding(&[1.0, 2.5, -3.25]), "AACAPwAAIEAAAFDA");
        // In a request body, one string per embedding, or arrays of numbers.
        let es = vec![vec![1.0, 2.5, -3.25], vec![0.5]];
        assert_eq!(
            serde_json::to_string(&EmbeddingsOut::Base64(&es)).expect("json"),
            r#"["AACAPwAAIEAAAFDA","AAAAPw=="]"#
        );
        assert_eq!(
            serde_json::to_string(&EmbeddingsOut::Floats(&es)).expect("json"),
            "[[1.0,2.5,-3.25],[0.5]]"
        );
    }

    #[test]
    fn batches_respect_record_and_byte_limits() {
        let n = 10;
        let batch = RecordBatch {
            ids: (0..n).map(|i| format!("id{i}")).collect(),
            embeddings: Some(vec![vec![0.0; 96]; n]),
            documents: Some(vec![Some("x".repeat(1000)); n]),
            ..RecordBatch::default()
        };
        let plan = plan_batches(&batch, 4, usize::MAX, true);
        assert_eq!(plan, vec![0..4, 4..8, 8..10]);
        let one = batch.record_size(0, true);
        let plan = plan_batches(&batch, 100, 256 + one * 3, true);
        assert_eq!(plan, vec![0..3, 3..6, 6..9, 9..10]);
        // Each planned batch's real JSON body fits the byte limit.
        let limit = 256 + one * 3;
        for r in plan {
            let body =
                serde_json::to_vec(&UpsertBody::of(&batch, r, true)).expect("should succeed");
            assert!(body.len() <= limit, "{} > {limit}", body.len());
        }
        // A single oversized record still gets its own batch.
        assert_eq!(plan_batches(&batch, 100, 10, true).len(), n);
        assert!(plan_batches(&RecordBatch::default(), 10, 10, true).is_empty());
    }

    #[test]
    fn validate_catches_ragged_batches() {
        let b = RecordBatch {
            ids: vec!["a".into(), "b".into()],
            documents: Some(vec![None]),
            ..RecordBatch::default()
        };
        assert!(b.validate().expect_err("should fail").contains("documents"));
    }
}
