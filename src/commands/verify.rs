//! `backups verify`: check a snapshot's objects (sizes; with `full`, their
//! contents and the key), or with `--recall` run the queries it recorded
//! against live collections and report recall@k.

use std::sync::Arc;

use serde::Serialize;

use super::restore::target_config;
use super::{resolve_id, Context, Progress};
use crate::backup::recall::{RecallOptions, RecallVerifyReport};
use crate::backup::{BackupError, BackupManager};
use crate::chroma::ProductionChromaStore;
use crate::observe::MetricsCollector;
use crate::secret::Secret;

pub use crate::backup::VerifyReport;

/// Verify snapshot `id` (or `latest`).
#[derive(Debug, Clone, PartialEq)]
pub struct Verify {
    pub id: String,
    pub full: bool,
    /// Run the recorded queries instead of checking the objects.
    pub recall: Option<RecallRequest>,
}

/// What `--recall` checks, and where.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecallRequest {
    /// Only this collection of the snapshot…
    pub collection: Option<String>,
    /// …against the live collection of this name.
    pub as_name: Option<String>,
    /// Least recall@k that passes (default `recall::DEFAULT_MIN_RECALL`).
    pub min_recall: Option<f64>,
    /// Another Chroma server (default: the configured one), with the token
    /// rules of `restore --target` ([`target_config`]).
    pub target: Option<String>,
    pub target_token: Option<Secret<String>>,
    pub allow_plain_http: bool,
}

/// The result of `backups verify`: the objects checked, or with `--recall`
/// the recall of each collection (`passed` says whether each reached
/// `min_recall`).
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum VerifyOutcome {
    Objects(VerifyReport),
    Recall(RecallVerifyReport),
}

impl Verify {
    pub(super) async fn run(
        self,
        ctx: &Context,
        progress: &Progress,
    ) -> Result<VerifyOutcome, BackupError> {
        let Some(recall) = self.recall else {
            let m = ctx.backups(false).await?;
            let id = resolve_id(&m, &self.id).await?;
            return Ok(VerifyOutcome::Objects(
                m.verify(&id, self.full, progress).await?,
            ));
        };
        if self.full {
            return Err(BackupError::Invalid(
                "--recall and --full are two checks: run them one after the other".into(),
            ));
        }
        // Checked before anything else is touched.
        let target_cfg = recall
            .target
            .as_deref()
            .map(|url| {
                target_config(
                    &ctx.config,
                    url,
                    recall.target_token.as_ref(),
                    recall.allow_plain_http,
                )
            })
            .transpose()?;
        let m = ctx.backups(false).await?;
        let m = match target_cfg {
            Some(cfg) => {
                // Its own metrics, as for `restore --target`.
                let store = ProductionChromaStore::new(&cfg, Arc::new(MetricsCollector::new()))?;
                BackupManager::with_repository(store, Arc::new(cfg), m.repo.clone())
            }
            None => m,
        };
        let id = resolve_id(&m, &self.id).await?;
        let opts = RecallOptions {
            collection: recall.collection,
            as_name: recall.as_name,
            min_recall: recall.min_recall,
        };
        Ok(VerifyOutcome::Recall(m.verify_recall(&id, &opts).await?))
    }
}
