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
use crate::secret::Secret;

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
            target_token,
            allow_plain_http,
            mode,
            dry_run,
            keep_previous,
            ..
        } => {
            // Checked before anything else is touched.
            let target_cfg = target
                .as_deref()
                .map(|url| {
                    target_config(&ctx.config, url, target_token.as_ref(), *allow_plain_http)
                })
                .transpose()?;
            let m = open(false).await?;
            let m = match target_cfg {
                Some(cfg) => {
                    // Its own metrics: the target's series must not replace
                    // the configured endpoints' in /metrics.
                    let store =
                        ProductionChromaStore::new(&cfg, Arc::new(MetricsCollector::new()))?;
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
            let outcome = m.restore(id, &opts, progress, cancel).await?;
            Ok(serde_json::to_value(outcome).unwrap_or(Value::Null))
        }
        other => Err(BackupError::Invalid(format!(
            "{} is not a backup command",
            other.name()
        ))),
    }
}

/// The configuration a restore onto `target` runs with: the target as the
/// only endpoint, and as its token `token` (given for the target) if any, else
/// the configured token only when the target is a configured endpoint (same
/// scheme, host and port) — never a configured credential to another server.
/// A given token over plain http to a host that is not loopback needs
/// `allow_plain_http`. No I/O.
pub fn target_config(
    config: &Config,
    target: &str,
    token: Option<&Secret<String>>,
    allow_plain_http: bool,
) -> Result<Config, BackupError> {
    let url = url::Url::parse(target).map_err(|e| {
        // Do not echo what may hold a password.
        let shown = if target.contains('@') {
            "the --target URL".to_string()
        } else {
            format!("--target {target:?}")
        };
        BackupError::Invalid(format!("{shown} is not a URL: {e}"))
    })?;
    let shown = crate::config::without_user_info(&url);
    if !matches!(url.scheme(), "http" | "https") {
        return Err(BackupError::Invalid(format!(
            "--target {:?}: scheme {:?} is not http or https",
            shown.as_str(),
            url.scheme()
        )));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(BackupError::Invalid(format!(
            "--target {:?} carries user info (user:password@); remove it and give the target's token with --target-token-file",
            shown.as_str()
        )));
    }
    let configured = config.chroma.endpoints.iter().any(|e| same_origin(e, &url));
    let token = match token {
        Some(t) => {
            if !allow_plain_http {
                if let Some(why) = crate::config::plain_http_problem(&url) {
                    return Err(BackupError::Invalid(format!(
                        "--target {why}; use https://, or pass --allow-plain-http if that network is trusted"
                    )));
                }
            }
            Some(t.clone())
        }
        None if configured => config.chroma.auth_token.clone(),
        None => None,
    };
    let mut cfg = config.clone();
    if token.is_none() {
        cfg.chroma.auth_token_file = None;
    }
    cfg.chroma.auth_token = token;
    cfg.chroma.endpoints = vec![url];
    Ok(cfg)
}

/// Same scheme, host and port (the port a scheme implies counts).
fn same_origin(a: &url::Url, b: &url::Url) -> bool {
    a.scheme() == b.scheme()
        && a.host() == b.host()
        && a.port_or_known_default() == b.port_or_known_default()
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

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIGURED: &str = "tok-configured-1f2e";

    fn config() -> Config {
        let mut c = Config::default();
        c.chroma.endpoints = vec![
            url::Url::parse("http://127.0.0.1:8000").unwrap_or_else(|e| panic!("{e}")),
            url::Url::parse("https://chroma.internal").unwrap_or_else(|e| panic!("{e}")),
        ];
        c.chroma.auth_token_file = Some("/run/credentials/chroma-token".into());
        c.chroma.auth_token = Some(Secret::new(CONFIGURED.into()));
        c
    }

    fn token_of(c: &Config) -> Option<&str> {
        c.chroma.auth_token.as_ref().map(|t| t.expose().as_str())
    }

    #[test]
    fn the_configured_token_goes_only_to_a_configured_endpoint() {
        let c = config();
        for other in [
            "http://127.0.0.1:8001",
            "http://localhost:8000",
            "https://chroma.internal:8443",
            "http://chroma.internal:443",
            "https://evil.example",
        ] {
            let t = target_config(&c, other, None, false).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(token_of(&t), None, "{other}");
            assert_eq!(t.chroma.auth_token_file, None, "{other}");
            assert_eq!(t.chroma.endpoints.len(), 1);
        }
        for same in ["http://127.0.0.1:8000/", "https://chroma.internal:443"] {
            let t = target_config(&c, same, None, false).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(token_of(&t), Some(CONFIGURED), "{same}");
        }
    }

    #[test]
    fn a_given_token_goes_to_the_target_and_plain_http_needs_allowing() {
        let c = config();
        let given = Secret::new("tok-target".to_string());
        let t = target_config(&c, "https://10.0.0.7", Some(&given), false)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(token_of(&t), Some("tok-target"));
        let t = target_config(&c, "http://127.0.0.1:9000", Some(&given), false)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(token_of(&t), Some("tok-target"));
        let err = target_config(&c, "http://10.255.255.1:8000", Some(&given), false)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("--allow-plain-http"), "{err}");
        assert!(!err.contains("tok-target"), "{err}");
        let t = target_config(&c, "http://10.255.255.1:8000", Some(&given), true)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(token_of(&t), Some("tok-target"));
        // Without a token, plain http is no concern.
        target_config(&c, "http://10.255.255.1:8000", None, false)
            .unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn bad_targets_are_refused_without_echoing_credentials() {
        let c = config();
        for bad in [
            "http://admin:pw-9c1d@10.0.0.7:8000",
            "http://admin@127.0.0.1:8000",
            "ftp://10.0.0.7",
            "not a url",
            "http://admin:pw-9c1d@[::1:8000",
        ] {
            let err = target_config(&c, bad, None, false)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(!err.is_empty(), "{bad} accepted");
            assert!(!err.contains("pw-9c1d"), "{err}");
        }
    }
}
