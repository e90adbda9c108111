//! Whether a record read back from Chroma is the one written: shared by
//! restore's read-back and the migrations' rebuild; and how to overwrite a
//! stored record with an upsert.

use serde_json::{Map, Value};

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

/// Makes an upsert of `want` over the stored `have` leave exactly `want`.
/// An upsert merges metadata and keeps a stored document or uri it is not
/// given a value for: each metadata key only `have` holds is added to
/// `want` as `null` (which removes it). Returns whether `have` holds a
/// document or uri that `want` lacks: then the stored record must be
/// deleted before the upsert.
pub fn overwrite(want: &mut Record, have: &Record) -> bool {
    let stale: Vec<String> = have
        .metadata
        .iter()
        .flatten()
        .map(|(k, _)| k)
        .filter(|k| !want.metadata.as_ref().is_some_and(|m| m.contains_key(*k)))
        .cloned()
        .collect();
    if !stale.is_empty() {
        let m = want.metadata.get_or_insert_with(Map::new);
        for k in stale {
            m.insert(k, Value::Null);
        }
    }
    (want.document.is_none() && have.document.is_some())
        || (want.uri.is_none() && have.uri.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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

    fn record(metadata: Value, document: Option<&str>) -> Record {
        Record {
            id: "a".into(),
            embedding: Some(vec![1.0]),
            document: document.map(str::to_string),
            metadata: metadata.as_object().cloned(),
            uri: None,
        }
    }

    #[test]
    fn overwrite_removes_keys_and_asks_to_clear_what_an_upsert_keeps() {
        let mut want = record(json!({"k": 1}), Some("d"));
        let have = record(json!({"k": 2, "gone": true}), Some("old"));
        assert!(!overwrite(&mut want, &have));
        assert_eq!(
            want.metadata,
            json!({"k": 1, "gone": null}).as_object().cloned()
        );

        // No metadata at all: every stored key is removed.
        let mut bare = record(Value::Null, None);
        assert!(
            overwrite(&mut bare, &have),
            "a stored document must be cleared"
        );
        assert_eq!(
            bare.metadata,
            json!({"k": null, "gone": null}).as_object().cloned()
        );

        // Nothing stored beyond `want`: unchanged.
        let mut same = record(json!({"k": 1}), Some("d"));
        assert!(!overwrite(&mut same, &record(json!({"k": 3}), None)));
        assert_eq!(same.metadata, json!({"k": 1}).as_object().cloned());
    }
}
