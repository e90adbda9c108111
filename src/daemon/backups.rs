//! Backup commands, carried out the same way by the daemon (as jobs) and by
//! the CLI when no daemon runs (a fresh host: only the config file and the key).

use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::jobs::Progress;
use crate::backup::{
    BackupError, BackupManager, BackupRequest, BackupType, RestoreOptions, Trigger,
};
use crate::chroma::ProductionChromaStore;
use crate::config::Config;
use crate::control::Command;
use crate::observe::MetricsCollector;

/// What backup commands need.
#[derive(Clone)]
pub struct BackupContext {
    pub store: ProductionChromaStore,
    pub config: Arc<Config>,
    pub metrics: Arc<MetricsCollector>,
}

/// The metric and job name of a command.
pub fn job_kind(command: &Command) -> &'static str {
    match command {
        Command::Backup { backup_type, .. } => match backup_type {
            BackupType::Full => "full",
            BackupType::Incremental => "incremental",
            BackupType::Collection => "collection",
        },
        Command::Restore { .. } => "restore",
        Command::Prune { .. } => "prune",
        Command::BackupVerify { .. } => "verify",
        Command::MigrateUp { .. } | Command::MigrateDown { .. } => "migrate",
        _ => "backup_command",
    }
}

/// Runs one backup command to completion.
pub async fn execute(
    ctx: &BackupContext,
    command: &Command,
    trigger: Trigger,
    progress: &Progress,
    cancel: &CancellationToken,
) -> Result<Value, BackupError> {
    let started = Instant::now();
    let kind = job_kind(command);
    let result = execute_inner(ctx, command, trigger, progress, cancel).await;
    let bytes = result
        .as_ref()
        .ok()
        .and_then(|v| v.get("bytes_written"))
        .and_then(Value::as_u64)
        .unwrap_or(0);
    if matches!(
        command,
        Command::Backup { .. }
            | Command::Restore { .. }
            | Command::Prune { dry_run: false }
            | Command::BackupVerify { .. }
    ) {
        ctx.metrics
            .backup_job(kind, result.is_ok(), started.elapsed(), bytes);
    }
    match &result {
        Ok(_) => tracing::info!(
            job = kind,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "backup command finished"
        ),
        Err(e) => tracing::error!(job = kind, error = %e, "backup command failed"),
    }
    result
}

async fn execute_inner(
    ctx: &BackupContext,
    command: &Command,
    trigger: Trigger,
    progress: &Progress,
    cancel: &CancellationToken,
) -> Result<Value, BackupError> {
    let open = |create: bool| BackupManager::open(ctx.store.clone(), ctx.config.clone(), create);
    match command {
        Command::Backup {
            backup_type,
            collections,
            ..
        } => {
            let m = open(true).await?;
            let manifest = m
                .create(
                    BackupRequest {
                        backup_type: *backup_type,
                        collections: collections.clone(),
                        trigger,
                    },
                    progress,
                    cancel,
                )
                .await?;
            for c in &manifest.collections {
                tracing::info!(backup_id = %manifest.snapshot_id, collection = %c.name, records = c.record_count, "collection backed up");
            }
            Ok(json!({
                "snapshot": manifest.snapshot_id,
                "type": manifest.metadata.backup_type,
                "parent": manifest.parent,
                "collections": manifest.collections.iter().map(|c| json!({"name": c.name, "records": c.record_count})).collect::<Vec<_>>(),
                "bytes_written": manifest.bytes_written,
                "bytes_referenced": manifest.bytes_referenced,
                "duration_ms": manifest.duration_ms,
                "encrypted": manifest.encrypted,
            }))
        }
        Command::BackupsList => match open(false).await {
            Ok(m) => Ok(json!({ "snapshots": m.list().await? })),
            // No backup taken yet: an empty list, not an error.
            Err(BackupError::NoRepository { .. }) => Ok(json!({ "snapshots": [] })),
            Err(e) => Err(e),
        },
        Command::BackupShow { id } => {
            let m = open(false).await?;
            let id = resolve_id(&m, id).await?;
            Ok(serde_json::to_value(m.show(&id).await?).unwrap_or(Value::Null))
        }
        Command::BackupVerify { id, full } => {
            let m = open(false).await?;
            let id = resolve_id(&m, id).await?;
            Ok(serde_json::to_value(m.verify(&id, *full, progress).await?).unwrap_or(Value::Null))
        }
        Command::BackupsCheck => {
            let repo = crate::backup::repository::Repository::open_keyless(
                &ctx.config.backup.storage_path,
                &crate::storage::StorageOptions::default(),
            )
            .await?;
            Ok(json!({ "objects_checked": repo.check_objects().await?, "key_used": false }))
        }
        Command::BackupDelete { id } => {
            open(false).await?.delete(id).await?;
            Ok(json!({ "deleted": id }))
        }
        Command::Prune { dry_run } => Ok(serde_json::to_value(
            open(false).await?.prune(*dry_run).await?,
        )
        .unwrap_or(Value::Null)),
        Command::Restore {
            id,
            collections,
            as_name,
            target,
            mode,
            dry_run,
            keep_previous,
            ..
        } => {
            let m = open(false).await?;
            let m = match target {
                Some(url) => {
                    let mut cfg = (*ctx.config).clone();
                    cfg.chroma.endpoints = vec![url::Url::parse(url)
                        .map_err(|e| BackupError::Invalid(format!("--target {url:?}: {e}")))?];
                    let store = ProductionChromaStore::new(&cfg, ctx.metrics.clone())?;
                    BackupManager::with_repository(store, Arc::new(cfg), m.repo.clone())
                }
                None => m,
            };
            let id = &resolve_id(&m, id).await?;
            let opts = RestoreOptions {
                collections: collections.clone(),
                as_name: as_name.clone(),
                mode: *mode,
                dry_run: *dry_run,
                keep_previous: *keep_previous,
            };
            m.restore(id, &opts, progress, cancel).await
        }
        other => Err(BackupError::Invalid(format!(
            "{} is not a backup command",
            other.name()
        ))),
    }
}

/// A snapshot id as given, or for `latest` the newest snapshot's.
async fn resolve_id(m: &BackupManager, id: &str) -> Result<String, BackupError> {
    if id != "latest" {
        return Ok(id.to_string());
    }
    m.list()
        .await?
        .first()
        .map(|s| s.metadata.backup_id.to_string())
        .ok_or_else(|| BackupError::NoSnapshot("latest".into()))
}
