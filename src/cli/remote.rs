//! Commands sent to the daemon over its control socket, and the offline
//! fallback that runs them here when no daemon runs (a fresh host: the config
//! file and the key are enough).

use std::path::{Path, PathBuf};

use serde_json::Value;

use chromaprod::config;
use chromaprod::control::{self, Command};
use chromaprod::secret::Secret;

use super::args::Cli;
use super::out::errln;
use super::progress::Reporter;
use super::render;

/// `sysexits.h` EX_UNAVAILABLE: a daemon-only command found no daemon.
const EXIT_NO_DAEMON: i32 = 69;
/// `sysexits.h` EX_DATAERR: `migrate status` found files and history
/// disagreeing, or `backups verify --recall` a collection below `--min-recall`.
const EXIT_DATA: i32 = 65;

/// The socket to talk to: `--socket`, else the config file's (even if the
/// rest of the file is invalid), else the default.
pub fn socket_path(cli: &Cli) -> PathBuf {
    if let Some(s) = &cli.socket {
        return s.clone();
    }
    config::socket_path_hint(&cli.config)
        .unwrap_or_else(|| config::Config::default().control.socket_path)
}

pub fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => Some(r),
        Err(e) => {
            errln!("chromaprod: cannot start the async runtime: {e}");
            None
        }
    }
}

/// A command only the daemon answers (status, reload, query, jobs, job
/// cancel): exit 69 when none runs.
pub fn daemon_only(cli: &Cli, command: Command) -> i32 {
    let Some(rt) = runtime() else { return 1 };
    let mut reporter = Reporter::new(cli.json);
    let result = rt.block_on(control::client::call(
        &socket_path(cli),
        command.clone(),
        |event| reporter.event(&event),
    ));
    reporter.finish();
    match result {
        Ok(value) => finish(cli, &command, &value),
        Err(e) => {
            errln!("chromaprod: {e}");
            if matches!(e, control::ClientError::DaemonNotRunning { .. }) {
                EXIT_NO_DAEMON
            } else {
                1
            }
        }
    }
}

/// A command that runs in the daemon if one runs, otherwise here.
pub fn daemon_or_here(cli: &Cli, command: Command) -> i32 {
    let Some(rt) = runtime() else { return 1 };
    let mut reporter = Reporter::new(cli.json);
    let result = rt.block_on(control::client::call(
        &socket_path(cli),
        command.clone(),
        |event| reporter.event(&event),
    ));
    let result = match result {
        Err(control::ClientError::DaemonNotRunning { .. }) => {
            if matches!(command, Command::Backup { wait: false, .. }) {
                reporter.note("chromaprod: no daemon is running; taking the backup here");
            }
            rt.block_on(offline(cli, command.clone(), &mut reporter))
        }
        other => other.map_err(anyhow::Error::from),
    };
    reporter.finish();
    match result {
        Ok(value) => finish(cli, &command, &value),
        Err(e) => {
            errln!("chromaprod: {e}");
            1
        }
    }
}

/// Prints a command's result (as it came: JSON with `--json`, else for
/// people) and says how the process exits.
fn finish(cli: &Cli, command: &Command, value: &Value) -> i32 {
    if cli.json {
        super::out::outln!("{value}");
    } else {
        render::result(command, value);
    }
    match command {
        // A reload the daemon rejected is a failure for `ExecReload=` and scripts.
        Command::Reload if value["ok"] == Value::Bool(false) => 1,
        Command::MigrateStatus if value["problems"].as_array().is_some_and(|p| !p.is_empty()) => {
            EXIT_DATA
        }
        Command::BackupVerify { recall: true, .. } if value["passed"] == Value::Bool(false) => {
            EXIT_DATA
        }
        _ => 0,
    }
}

/// Runs `command` in this process, its progress shown by `reporter`. The one
/// place the CLI calls the command layer directly.
async fn offline(cli: &Cli, command: Command, reporter: &mut Reporter) -> anyhow::Result<Value> {
    use chromaprod::commands::{self, Context, Progress, Request};
    chromaprod::observe::logging::init_cli();
    let loaded = config::load(&cli.config)?;
    let cfg = std::sync::Arc::new(loaded.config);
    let metrics = std::sync::Arc::new(chromaprod::observe::MetricsCollector::new());
    let store = chromaprod::chroma::ProductionChromaStore::new(&cfg, metrics.clone())?;
    let ctx = Context {
        store,
        config: cfg,
        metrics,
    };
    if touches_chroma(&command) {
        // Finish name swaps a crash interrupted before anything else.
        match chromaprod::chroma::swap::recover(&ctx.store).await {
            Ok(recovered) => {
                for r in recovered {
                    reporter.note(&format!("chromaprod: {r}"));
                }
            }
            Err(e) => reporter.note(&format!(
                "chromaprod: cannot read the swap journal ({}): {e}",
                chromaprod::chroma::swap::JOURNAL_COLLECTION
            )),
        }
    }
    let (progress, mut rx) = Progress::detached();
    let cancel = tokio_util::sync::CancellationToken::new();
    let c2 = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            c2.cancel();
        }
    });
    let run = async {
        let r: anyhow::Result<Value> = match Request::try_from(command) {
            Ok(request) => commands::execute(
                &ctx,
                request,
                chromaprod::backup::Trigger::Command,
                &progress,
                &cancel,
            )
            .await
            .map(|outcome| outcome.to_json())
            .map_err(Into::into),
            Err(e) => Err(e.into()),
        };
        drop(progress);
        r
    };
    tokio::pin!(run);
    // Events are shown as they come, here on this task, until the command ends.
    let mut events_open = true;
    loop {
        tokio::select! {
            r = &mut run => {
                while let Ok(ev) = rx.try_recv() {
                    reporter.event(&ev);
                }
                return r;
            }
            ev = rx.recv(), if events_open => match ev {
                Ok(ev) => reporter.event(&ev),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => events_open = false,
            },
        }
    }
}

/// Whether an offline command reads or writes Chroma (and so first
/// finishes interrupted swaps); repository-only commands do not.
fn touches_chroma(command: &Command) -> bool {
    matches!(
        command,
        Command::Backup { .. }
            | Command::Restore { dry_run: false, .. }
            | Command::MigrateUp { .. }
            | Command::MigrateDown { .. }
            | Command::MigrateRepair
            | Command::MigrateStamp { .. }
    )
}

/// A token file named on the command line, read with the caller's own rights
/// (so the daemon never opens a path a client names); trimmed, never shown.
pub fn read_token_file(path: &Path) -> Result<Secret<String>, String> {
    match fs_err::read_to_string(path) {
        Ok(t) if t.trim().is_empty() => Err(format!(
            "--target-token-file {} is empty; put the target's token in it",
            path.display()
        )),
        Ok(t) => Ok(Secret::new(t.trim().to_string())),
        Err(e) => Err(format!(
            "cannot read --target-token-file {}: {}",
            path.display(),
            e.kind()
        )),
    }
}
