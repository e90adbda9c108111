//! The `change_feed` check: whether incrementals can read what changed from
//! the local Chroma's persist directory (`chroma.persist_directory`).

use std::sync::Arc;

use crate::backup::changes;
use crate::chroma::local::LocalChroma;
use crate::chroma::ProductionChromaStore;
use crate::config::Config;
use crate::doctor::{Check, Options};
use crate::observe::MetricsCollector;

const NAME: &str = "change_feed";

pub(super) async fn check_change_feed(cfg: &Config, o: &Options) -> Vec<Check> {
    let Some(dir) = &cfg.chroma.persist_directory else {
        return vec![Check::skip(
            NAME,
            "chroma.persist_directory is unset: incrementals read every record over HTTP",
        )];
    };
    let local = match LocalChroma::open(dir).await {
        Ok(l) => l,
        Err(why) => {
            return vec![Check::warn(
                NAME,
                format!("incrementals will read every record over HTTP: {why}"),
                format!(
                    "let the service read {} (e.g. `setfacl -R -m u:chromaprod:rX,d:u:chromaprod:rX {}`, or add the chromaprod user to the group owning it), or unset chroma.persist_directory if Chroma does not run on this host",
                    dir.display(),
                    dir.display()
                ),
            )]
        }
    };
    let mut quick = cfg.clone();
    quick.retry.max_retries = 0;
    quick.retry.deadline = o.timeout;
    let store = match ProductionChromaStore::new(&quick, Arc::new(MetricsCollector::new())) {
        Ok(s) => s,
        Err(e) => return vec![Check::skip(NAME, format!("no Chroma client: {e}"))],
    };
    let collections = match store.list_collections().await {
        Ok(c) => c,
        Err(e) => return vec![Check::skip(NAME, format!("Chroma unreachable: {e}"))],
    };
    for c in &collections {
        match changes::position(&local, &store, &c.id).await {
            Ok(Ok(_)) => {}
            Ok(Err(why)) => {
                return vec![Check::warn(
                    NAME,
                    format!("collection {}: {why}", c.name),
                    format!(
                        "set chroma.persist_directory to the --path of the Chroma server at {} (now {})",
                        cfg.chroma.endpoints.first().map(url::Url::as_str).unwrap_or("-"),
                        dir.display()
                    ),
                )]
            }
            Err(e) => return vec![Check::skip(NAME, format!("Chroma: {e}"))],
        }
    }
    vec![Check::ok(
        NAME,
        format!(
            "{} readable; its {} collection(s) match the server's",
            local.path().display(),
            collections.len()
        ),
    )]
}
