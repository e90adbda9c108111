//! `migrate down`: applied migrations above a version undone, highest
//! first, each through its `down` list (written or derived).

use std::time::Instant;

use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::file::Migration;
use super::lease::MigrationLease;
use super::manager::highest_applied;
use super::ops::apply;
use super::plan::plan_down;
use super::report::{DownReport, UndoneMigration};
use super::tracker::Tracker;
use super::{MigrationError, MigrationManager};
use crate::progress::{Event, Progress};

impl MigrationManager {
    /// Undoes applied migrations above version `to`.
    pub async fn down(
        &self,
        to: u32,
        progress: &Progress,
        cancel: &CancellationToken,
    ) -> Result<DownReport, MigrationError> {
        let files = self.files()?;
        // Refuse early: a down list that cannot be derived.
        for s in plan_down(&files, &self.history().await?, to)? {
            if let Some(m) = files.iter().find(|m| m.version == s.version) {
                m.down_ops()?;
            }
        }
        self.locked(progress, async |lease| {
            self.down_locked(&files, to, lease, progress, cancel).await
        })
        .await
    }

    async fn down_locked(
        &self,
        files: &[Migration],
        to: u32,
        lease: &MigrationLease,
        progress: &Progress,
        cancel: &CancellationToken,
    ) -> Result<DownReport, MigrationError> {
        let recorded = lease.entries().await?;
        let steps = plan_down(files, &recorded, to)?;
        let local =
            crate::chroma::local::LocalChroma::configured(&self.config, self.store.metrics()).await;
        let mut undone = Vec::new();
        for step in &steps {
            let m = files
                .iter()
                .find(|m| m.version == step.version)
                .ok_or(MigrationError::NoSuchVersion(step.version))?;
            let Some(mut entry) = recorded.iter().find(|h| h.version == m.version).cloned() else {
                continue;
            };
            let started = Instant::now();
            tracing::info!(migration = m.version, name = %m.name, "undoing migration");
            entry.checkpoint = None;
            let cell = Mutex::new(entry);
            let tracker = Tracker {
                store: &self.store,
                lease,
                entry: &cell,
                version: m.version,
                progress,
                cancel,
                last_save: std::sync::Mutex::new(None),
                local: local.clone(),
            };
            let mut result = Ok(());
            for op in m.down_ops()? {
                progress.send(Event::MigrateDown {
                    version: m.version,
                    operation: op.name().to_string(),
                });
                cell.lock().await.checkpoint = None;
                if let Err(e) = apply(&op, &tracker).await {
                    result = Err((op.name(), e));
                    break;
                }
            }
            self.metrics.migration_run("down", result.is_ok());
            if let Err((op, e)) = result {
                let mut entry = cell.lock().await;
                entry.error = Some(format!("down failed at {op}: {e}"));
                entry.checkpoint = None;
                let _ = lease.record(&entry).await;
                return Err(MigrationError::Failed {
                    version: m.version,
                    name: m.name.clone(),
                    op_index: 0,
                    op: op.to_string(),
                    why: e.to_string(),
                    state: "the migration is still recorded as applied; fix the cause and run `chromaprod migrate down` again".into(),
                });
            }
            lease.forget(m.version).await?;
            tracing::info!(
                migration = m.version,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "migration undone"
            );
            undone.push(UndoneMigration {
                version: m.version,
                name: m.name.clone(),
                duration_ms: started.elapsed().as_millis() as u64,
            });
        }
        let now = lease.entries().await?;
        self.metrics.migration_version(highest_applied(&now));
        Ok(DownReport {
            undone,
            version: highest_applied(&now),
        })
    }
}
