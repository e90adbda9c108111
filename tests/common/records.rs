//! Reading a whole collection back, for comparing restores with sources.

use chromaprod::backup::records::Record;
use chromaprod::chroma::{Collection, GetRequest, Include, ProductionChromaStore};

/// The collection and all its records with every field, sorted by id.
pub async fn collection_records(
    store: &ProductionChromaStore,
    name: &str,
) -> (Collection, Vec<Record>) {
    let col = store.get_collection(name).await.expect("collection");
    let r = store
        .get_records(
            &col.id,
            &GetRequest {
                include: Include::RECORD.to_vec(),
                ..GetRequest::default()
            },
        )
        .await
        .expect("get");
    let mut v = chromaprod::backup::source::to_records(r);
    v.sort_by(|a, b| a.id.cmp(&b.id));
    (col, v)
}
