//! Whether a record read back from Chroma is the one written: shared by
//! restore's read-back and the migrations' rebuild.

use serde_json::Value;

use super::records::Record;

/// Equal as Chroma round-trips values: exact for l2/ip embeddings, integers
/// and strings; within a few ulp for cosine embeddings and float metadata.
pub fn records_match(want: &Record, got: &Record, cosine: bool) -> bool {
    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a.is_nan() && b.is_nan())
            || a == b
            || (a - b).abs() <= rel * a.abs().max(b.abs()).max(f64::MIN_POSITIVE)
    }
    let emb = match (&want.embedding, &got.embedding) {
        (Some(a), Some(b)) if a.len() == b.len() => a.iter().zip(b).all(|(x, y)| {
            if cosine {
                close(f64::from(*x), f64::from(*y), 1e-5) || (x.is_nan() || y.is_nan())
            } else {
                x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan())
            }
        }),
        (None, None) => true,
        _ => false,
    };
    let meta = match (&want.metadata, &got.metadata) {
        (Some(a), Some(b)) => {
            a.len() == b.len()
                && a.iter().all(|(k, v)| match (v, b.get(k)) {
                    (Value::Number(x), Some(Value::Number(y))) if x.is_f64() || y.is_f64() => {
                        close(
                            x.as_f64().unwrap_or(f64::NAN),
                            y.as_f64().unwrap_or(f64::NAN),
                            1e-12,
                        )
                    }
                    (x, Some(y)) => x == y,
                    (_, None) => false,
                })
        }
        (None, None) => true,
        (Some(a), None) | (None, Some(a)) => a.is_empty(),
    };
    emb && meta && want.document == got.document && want.uri == got.uri
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_tolerance_only_for_cosine() {
        let a = Record {
            id: "x".into(),
            embedding: Some(vec![1.0, 0.5]),
            document: None,
            metadata: None,
            uri: None,
        };
        let mut b = a.clone();
        b.embedding = Some(vec![f32::from_bits(1.0f32.to_bits() + 1), 0.5]);
        assert!(records_match(&a, &b, true));
        assert!(!records_match(&a, &b, false));
        assert!(records_match(&a, &a, false));
    }
}
