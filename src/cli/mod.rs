//! The `chromaprod` command line: arguments (`args`), calls to the daemon and
//! the offline fallback (`remote`), output for people (`render`, `units`,
//! `progress`) and for scripts (`--json`: each result as the daemon or the
//! offline run returned it), key commands (`keys`), and a stdout that a
//! closed pipe does not break (`out`).

mod args;
mod keys;
pub(crate) mod out;
mod progress;
mod remote;
mod render;
mod units;

use std::path::Path;
use std::process::ExitCode;

use clap::Parser;

use chromaprod::backup::{BackupType, RestoreMode};
use chromaprod::config;
use chromaprod::control::Command;
use chromaprod::daemon;
use chromaprod::observe::{audit, logging};
use chromaprod::EXIT_CONFIG;

use args::{AuditVerb, BackupsVerb, Cli, JobVerb, MigrateVerb, ModeArg, Verb};
use out::{errln, outln};
use remote::{daemon_only, daemon_or_here};

/// Parses the command line and runs it; the process's exit code.
pub fn main() -> ExitCode {
    // `chromaprod dist …`: packaging helpers outside the CLI (see src/dist.rs).
    if let Some(code) = chromaprod::dist::intercept(<Cli as clap::CommandFactory>::command) {
        return ExitCode::from(code);
    }
    let cli = Cli::parse();
    let code = match cli.command {
        Verb::Daemon => run_daemon(&cli.config),
        Verb::Validate => validate(&cli.config, cli.json),
        Verb::Audit(AuditVerb::Verify { ref file }) => audit_verify(&cli, file.as_deref()),
        Verb::Status => daemon_only(&cli, Command::Status),
        Verb::Reload => daemon_only(&cli, Command::Reload),
        Verb::Query(ref q) => daemon_only(
            &cli,
            Command::Query {
                collection: q.collection.clone(),
                id: q.id.clone(),
                vector: q.vector.clone(),
                k: q.k,
            },
        ),
        Verb::Backup(ref b) => {
            let backup_type = if b.physical {
                BackupType::Physical
            } else if b.incremental {
                BackupType::Incremental
            } else if !b.collection.is_empty() {
                BackupType::Collection
            } else {
                BackupType::Full
            };
            daemon_or_here(
                &cli,
                Command::Backup {
                    backup_type,
                    collections: b.collection.clone(),
                    wait: b.wait,
                },
            )
        }
        Verb::Backups(BackupsVerb::Verify {
            ref id,
            full,
            ref recall,
        }) => match recall
            .target_token_file
            .as_deref()
            .map(remote::read_token_file)
        {
            Some(Err(e)) => {
                errln!("chromaprod: {e}");
                1
            }
            target_token => daemon_or_here(
                &cli,
                Command::BackupVerify {
                    id: id.clone(),
                    full,
                    recall: recall.recall,
                    collection: recall.collection.clone(),
                    as_name: recall.as_name.clone(),
                    min_recall: recall.min_recall,
                    target: recall.target.clone(),
                    target_token: target_token.and_then(Result::ok),
                    allow_plain_http: recall.allow_plain_http,
                },
            ),
        },
        Verb::Backups(ref v) => daemon_or_here(
            &cli,
            match v {
                BackupsVerb::List => Command::BackupsList,
                BackupsVerb::Show { id } => Command::BackupShow { id: id.clone() },
                BackupsVerb::Verify { .. } => unreachable!("handled above"),
                BackupsVerb::Diff {
                    id,
                    other,
                    live,
                    collection,
                    ids,
                } => Command::BackupsDiff {
                    id: id.clone(),
                    other: other.clone(),
                    live: *live,
                    collection: collection.clone(),
                    ids: *ids,
                },
                BackupsVerb::Delete { id } => Command::BackupDelete { id: id.clone() },
                BackupsVerb::Check => Command::BackupsCheck,
            },
        ),
        Verb::Prune { dry_run } => daemon_or_here(&cli, Command::Prune { dry_run }),
        Verb::Jobs => daemon_only(&cli, Command::Jobs),
        Verb::Job(JobVerb::Cancel { id }) => daemon_only(&cli, Command::JobCancel { id }),
        Verb::Restore(ref r) if r.data_dir.is_some() => restore_physical(&cli, r),
        Verb::Restore(ref r) => match r.target_token_file.as_deref().map(remote::read_token_file) {
            Some(Err(e)) => {
                errln!("chromaprod: {e}");
                1
            }
            target_token => daemon_or_here(
                &cli,
                Command::Restore {
                    id: r.id.clone(),
                    collections: r.collection.clone(),
                    as_name: r.as_name.clone(),
                    target: r.target.clone(),
                    target_token: target_token.and_then(Result::ok),
                    allow_plain_http: r.allow_plain_http,
                    mode: match r.mode {
                        ModeArg::FailIfExists => RestoreMode::FailIfExists,
                        ModeArg::Replace => RestoreMode::Replace,
                        ModeArg::Delta => RestoreMode::Delta,
                    },
                    dry_run: r.dry_run,
                    keep_previous: r.keep_previous,
                    keep_extra: r.keep_extra,
                    no_recall: r.no_recall,
                    wait: true,
                },
            ),
        },
        Verb::Key(ref k) => keys::run(&cli, k),
        Verb::Migrate(MigrateVerb::New { ref name, ref dir }) => {
            migrate_new(&cli, name, dir.as_deref())
        }
        Verb::Migrate(ref v) => daemon_or_here(
            &cli,
            match v {
                MigrateVerb::Status => Command::MigrateStatus,
                MigrateVerb::Up { to } => Command::MigrateUp {
                    to: *to,
                    wait: true,
                },
                MigrateVerb::Down { to } => Command::MigrateDown {
                    to: *to,
                    wait: true,
                },
                MigrateVerb::Validate => Command::MigrateValidate,
                MigrateVerb::Repair => Command::MigrateRepair,
                MigrateVerb::Stamp { version } => Command::MigrateStamp { version: *version },
                MigrateVerb::New { .. } => unreachable!("handled above"),
            },
        ),
        Verb::Doctor(ref d) => {
            chromaprod::doctor::main(&cli.config, cli.socket.as_deref(), cli.json, d)
        }
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// `restore ID --data-dir DIR`: the directory made absolute here (the
/// daemon's working directory is not the caller's).
fn restore_physical(cli: &Cli, r: &args::RestoreArgs) -> i32 {
    let Some(dir) = r.data_dir.as_deref() else {
        return 2;
    };
    let data_dir = match std::path::absolute(dir) {
        Ok(d) => d,
        Err(e) => {
            errln!("chromaprod: --data-dir {}: {e}", dir.display());
            return 2;
        }
    };
    daemon_or_here(
        cli,
        Command::RestorePhysical {
            id: r.id.clone(),
            data_dir,
            force: r.force,
            wait: true,
        },
    )
}

fn run_daemon(path: &Path) -> i32 {
    let loaded = match config::load(path) {
        Ok(l) => l,
        Err(e) => {
            errln!("chromaprod: {e}");
            return EXIT_CONFIG;
        }
    };
    let log = match logging::init(&loaded.config.log) {
        Ok(h) => h,
        Err(e) => {
            errln!("chromaprod: cannot set up logging: {e}");
            return EXIT_CONFIG;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return 1;
        }
    };
    match runtime.block_on(daemon::run(loaded, log)) {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!(error = %e, "chromaprod stopped");
            errln!("chromaprod: {e}");
            e.exit_code()
        }
    }
}

fn validate(path: &Path, json: bool) -> i32 {
    // Secret files readable by others make the configuration unusable too.
    let loaded = config::load(path).and_then(|loaded| {
        let issues = config::secret_file_issues(&loaded.config);
        if issues.is_empty() {
            Ok(loaded)
        } else {
            Err(config::ConfigError::Invalid {
                source_name: path.display().to_string(),
                issues,
            })
        }
    });
    match loaded {
        Ok(loaded) => {
            let warnings = config::warnings(&loaded.config);
            if json {
                outln!(
                    "{}",
                    serde_json::json!({ "ok": true, "path": path, "env_overrides": loaded.source.env_overrides, "warnings": warnings })
                );
            } else {
                for w in &warnings {
                    errln!("chromaprod: warning: {w}");
                }
                outln!("{}: configuration is valid", path.display());
            }
            0
        }
        Err(e) => {
            if json {
                let issues = e.issues();
                outln!(
                    "{}",
                    serde_json::json!({ "ok": false, "path": path, "error": e.to_string(), "issues": issues })
                );
            } else {
                errln!("chromaprod: {e}");
            }
            EXIT_CONFIG
        }
    }
}

fn audit_verify(cli: &Cli, file: Option<&Path>) -> i32 {
    let path = match file {
        Some(f) => f.to_path_buf(),
        None => match config::load(&cli.config) {
            Ok(l) => l.config.daemon.state_dir.join(audit::FILE_NAME),
            Err(e) => {
                errln!("chromaprod: {e}\n(or pass --file)");
                return EXIT_CONFIG;
            }
        },
    };
    match audit::verify(&path) {
        Ok(lines) => {
            if cli.json {
                outln!(
                    "{}",
                    serde_json::json!({ "ok": true, "path": path, "lines": lines })
                );
            } else {
                outln!("{}: {lines} entries, chain intact", path.display());
            }
            0
        }
        Err(e) => {
            if cli.json {
                outln!(
                    "{}",
                    serde_json::json!({ "ok": false, "path": path, "error": e.to_string() })
                );
            } else {
                errln!("chromaprod: {}: {e}", path.display());
            }
            1
        }
    }
}

fn migrate_new(cli: &Cli, name: &str, dir: Option<&Path>) -> i32 {
    let dir = match dir {
        Some(d) => d.to_path_buf(),
        None => match config::load(&cli.config) {
            Ok(l) => l.config.migrations.path,
            Err(e) => {
                errln!("chromaprod: {e}");
                return EXIT_CONFIG;
            }
        },
    };
    match chromaprod::migrate::file::new_file(&dir, name) {
        Ok(path) => {
            outln!("{}", path.display());
            0
        }
        Err(e) => {
            errln!("chromaprod: {e}");
            1
        }
    }
}
