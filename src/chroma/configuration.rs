//! A collection's `configuration_json` as Chroma stores it: its distance
//! space, the part Chroma accepts again on create, and a change merged in.

use serde_json::Value;

/// The distance space (`l2`, `cosine` or `ip`) of an HNSW or SPANN
/// configuration; `l2`, Chroma's default, when none is named.
pub fn space_of(configuration: &Value) -> &str {
    configuration
        .pointer("/hnsw/space")
        .or_else(|| configuration.pointer("/spann/space"))
        .and_then(Value::as_str)
        .unwrap_or("l2")
}

/// The parts of a stored `configuration_json` Chroma accepts on create.
pub fn creatable_configuration(stored: &Value) -> Value {
    let mut out = serde_json::Map::new();
    if let Some(Value::Object(h)) = stored.get("hnsw") {
        out.insert("hnsw".into(), Value::Object(h.clone()));
    }
    if let Some(Value::Object(s)) = stored.get("spann") {
        out.insert("spann".into(), Value::Object(s.clone()));
    }
    if let Some(ef @ Value::Object(_)) = stored.get("embedding_function") {
        if ef.get("type").and_then(Value::as_str) != Some("legacy") {
            out.insert("embedding_function".into(), ef.clone());
        }
    }
    Value::Object(out)
}

/// `base` with the tables of `change` merged in, one level deep.
pub fn merge_configuration(base: &Value, change: &Value) -> Value {
    let mut out = base.as_object().cloned().unwrap_or_default();
    if let Some(ch) = change.as_object() {
        for (k, v) in ch {
            match (out.get_mut(k), v) {
                (Some(Value::Object(dst)), Value::Object(src)) => {
                    dst.extend(src.clone());
                }
                _ => {
                    out.insert(k.clone(), v.clone());
                }
            }
        }
    }
    // hnsw and spann exclude each other: keep the one the change names.
    if change.get("spann").is_some() && change.get("hnsw").is_none() {
        out.remove("hnsw");
    }
    if change.get("hnsw").is_some() && change.get("spann").is_none() {
        out.remove("spann");
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn configuration_changes_merge_into_the_source() {
        let base = json!({"hnsw": {"space": "l2", "ef_construction": 100, "max_neighbors": 16}});
        let merged = merge_configuration(&base, &json!({"hnsw": {"space": "cosine"}}));
        assert_eq!(
            merged,
            json!({"hnsw": {"space": "cosine", "ef_construction": 100, "max_neighbors": 16}})
        );
        assert_eq!(space_of(&merged), "cosine");
        let spann = merge_configuration(&base, &json!({"spann": {"space": "ip"}}));
        assert_eq!(spann, json!({"spann": {"space": "ip"}}));
        assert_eq!(space_of(&spann), "ip");
        assert_eq!(space_of(&json!({})), "l2");
    }

    #[test]
    fn stored_configuration_is_trimmed_to_what_create_accepts() {
        let stored = json!({"hnsw": {"space": "cosine", "ef_search": 50}, "spann": null, "embedding_function": {"type": "legacy"}});
        assert_eq!(
            creatable_configuration(&stored),
            json!({"hnsw": {"space": "cosine", "ef_search": 50}})
        );
    }
}
