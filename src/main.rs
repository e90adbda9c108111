//! The `chromaprod` binary: `chromaprod daemon` runs the service; every other
//! verb is a CLI command, offline or over the daemon's control socket.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use serde_json::Value;

use chromaprod::backup::{BackupType, RestoreMode};
use chromaprod::config::{self, CONFIG_PATH_ENV, DEFAULT_CONFIG_PATH};
use chromaprod::control::{self, Command};
use chromaprod::daemon;
use chromaprod::observe::{audit, logging};
use chromaprod::secret::Secret;
use chromaprod::EXIT_CONFIG;

#[derive(Parser, Debug)]
#[command(
    name = "chromaprod",
    version,
    about = "Production companion for Chroma: backups, a healthy connection pool, migrations, systemd integration"
)]
struct Cli {
    /// Configuration file.
    #[arg(long, global = true, env = CONFIG_PATH_ENV, default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// Control socket of the daemon (default: control.socket_path from the config file).
    #[arg(long, global = true, env = "CHROMAPROD_SOCKET")]
    socket: Option<PathBuf>,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Verb,
}

#[derive(Subcommand, Debug)]
enum Verb {
    /// Run the daemon (as the systemd service does).
    Daemon,
    /// Check a configuration file without touching the daemon; exit 78 if invalid.
    Validate,
    /// Show the daemon's state: config, reload, endpoints, pool.
    Status,
    /// Make the daemon re-read its configuration file.
    Reload,
    /// Nearest neighbours of a stored record or a vector in a collection.
    Query(QueryArgs),
    /// The audit log.
    #[command(subcommand)]
    Audit(AuditVerb),
    /// Take a snapshot (full by default). Runs in the daemon, or here when none runs.
    Backup(BackupArgs),
    /// List, show, verify and delete snapshots.
    #[command(subcommand)]
    Backups(BackupsVerb),
    /// Delete snapshots retention no longer keeps, then unreferenced chunks.
    Prune {
        /// Only list what would be deleted.
        #[arg(long)]
        dry_run: bool,
    },
    /// Running and recent jobs, and the backup schedules.
    Jobs,
    /// Control a running job.
    #[command(subcommand)]
    Job(JobVerb),
    /// Restore collections of a snapshot (staging collection, verify, swap).
    Restore(RestoreArgs),
    /// Repository keys.
    #[command(subcommand)]
    Key(KeyVerb),
    /// Check this host the way an operator would (config, key, Chroma, repository, locks, socket, clock) and say what to fix; exit 1 if a check fails.
    Doctor(chromaprod::doctor::DoctorArgs),
    /// Versioned migrations: status, up, down, validate, repair, stamp, new.
    /// Runs in the daemon, or here when none runs.
    #[command(subcommand)]
    Migrate(MigrateVerb),
}

#[derive(Subcommand, Debug)]
enum MigrateVerb {
    /// Each version: applied, pending, failed or changed; and what is wrong.
    Status,
    /// Apply pending migrations (a restore point first, unless turned off).
    Up {
        /// Stop after this version.
        #[arg(long)]
        to: Option<u32>,
    },
    /// Undo applied migrations above a version.
    Down {
        /// The version to go back to (0: undo all).
        #[arg(long)]
        to: u32,
    },
    /// Check the files against the history recorded in Chroma.
    Validate,
    /// Accept edited files of applied migrations, forget missing ones, clear failures.
    Repair,
    /// Record VERSION as current without running anything (adopt a database).
    Stamp { version: u32 },
    /// Write a new migration file with the next version into migrations.path.
    New {
        /// What it does, e.g. "docs cosine".
        name: String,
        /// Directory (default: migrations.path from the config file).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Args, Debug)]
struct BackupArgs {
    /// Every collection in scope (backup.include/exclude). The default.
    #[arg(long, conflicts_with_all = ["incremental", "collection"])]
    full: bool,
    /// Only what changed since the latest snapshot (restores on its own).
    #[arg(long, conflicts_with = "collection")]
    incremental: bool,
    /// Only these collections.
    #[arg(long = "collection", short = 'c')]
    collection: Vec<String>,
    /// Wait for the backup to finish, showing progress.
    #[arg(long)]
    wait: bool,
}

#[derive(Subcommand, Debug)]
enum BackupsVerb {
    /// Snapshots, newest first.
    List,
    /// One snapshot's manifest (`latest` for the newest).
    Show { id: String },
    /// Check that a snapshot's objects are present and intact (`latest` for the newest).
    Verify {
        id: String,
        /// Read every object: checksums, decryption, indexes.
        #[arg(long)]
        full: bool,
    },
    /// Delete a snapshot (its chunks go at the next prune).
    Delete { id: String },
    /// Check every stored object for damage, without using the key.
    Check,
}

#[derive(Subcommand, Debug)]
enum JobVerb {
    /// Cancel a running job; it leaves no snapshot behind.
    Cancel { id: u64 },
}

#[derive(Args, Debug)]
struct RestoreArgs {
    /// Snapshot id (`latest` for the newest).
    id: String,
    /// Only these collections (default: all in the snapshot).
    #[arg(long = "collection", short = 'c')]
    collection: Vec<String>,
    /// Restore under a new name (one collection).
    #[arg(long = "as")]
    as_name: Option<String>,
    /// Another Chroma server to restore onto. It gets no configured token
    /// unless it is a configured endpoint.
    #[arg(long)]
    target: Option<String>,
    /// File holding the target's token, read here with your own rights and
    /// sent only to the target (in chroma.auth_header's header).
    #[arg(long, requires = "target")]
    target_token_file: Option<PathBuf>,
    /// Allow the target's token over plain http to a host that is not loopback.
    #[arg(long, requires = "target_token_file")]
    allow_plain_http: bool,
    /// What to do when the target collection exists.
    #[arg(long, value_enum, default_value = "fail-if-exists")]
    mode: ModeArg,
    /// Show what would be restored.
    #[arg(long)]
    dry_run: bool,
    /// With --mode replace, keep the previous collection as NAME-pre-restore-ID.
    #[arg(long)]
    keep_previous: bool,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum ModeArg {
    FailIfExists,
    Replace,
}

#[derive(Subcommand, Debug)]
enum KeyVerb {
    /// Write a new random key file (mode 0600); never overwrites.
    Generate { file: PathBuf },
    /// Key ids that can open the repository.
    List,
    /// Let another key open the repository (no data is re-encrypted).
    Add {
        /// The new key's file.
        file: PathBuf,
    },
    /// Remove a key id (the last key cannot be removed).
    Remove { id: String },
}

#[derive(Args, Debug)]
struct QueryArgs {
    /// Collection name.
    #[arg(long, short = 'c')]
    collection: String,
    /// Id of a stored record whose embedding is the query.
    #[arg(long, conflicts_with = "vector", required_unless_present = "vector")]
    id: Option<String>,
    /// The query vector, comma-separated.
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    vector: Option<Vec<f32>>,
    /// Number of results.
    #[arg(short = 'k', long, default_value_t = 10)]
    k: usize,
}

#[derive(Subcommand, Debug)]
enum AuditVerb {
    /// Check the hash chain; name the first line that was edited, removed or reordered.
    Verify {
        /// Audit file (default: audit.jsonl in daemon.state_dir from the config).
        #[arg(long)]
        file: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    // `chromaprod dist …`: packaging helpers outside the CLI (see src/dist.rs).
    if let Some(code) = chromaprod::dist::intercept(<Cli as clap::CommandFactory>::command) {
        return ExitCode::from(code);
    }
    let cli = Cli::parse();
    let code = match cli.command {
        Verb::Daemon => run_daemon(&cli.config),
        Verb::Validate => validate(&cli.config, cli.json),
        Verb::Audit(AuditVerb::Verify { ref file }) => audit_verify(&cli, file.as_deref()),
        Verb::Status => remote(&cli, Command::Status, print_status),
        Verb::Reload => remote(&cli, Command::Reload, print_reload),
        Verb::Query(ref q) => remote(
            &cli,
            Command::Query {
                collection: q.collection.clone(),
                id: q.id.clone(),
                vector: q.vector.clone(),
                k: q.k,
            },
            print_query,
        ),
        Verb::Backup(ref b) => {
            let backup_type = if b.incremental {
                BackupType::Incremental
            } else if !b.collection.is_empty() {
                BackupType::Collection
            } else {
                BackupType::Full
            };
            backup_command(
                &cli,
                Command::Backup {
                    backup_type,
                    collections: b.collection.clone(),
                    wait: b.wait,
                },
            )
        }
        Verb::Backups(ref v) => backup_command(
            &cli,
            match v {
                BackupsVerb::List => Command::BackupsList,
                BackupsVerb::Show { id } => Command::BackupShow { id: id.clone() },
                BackupsVerb::Verify { id, full } => Command::BackupVerify {
                    id: id.clone(),
                    full: *full,
                },
                BackupsVerb::Delete { id } => Command::BackupDelete { id: id.clone() },
                BackupsVerb::Check => Command::BackupsCheck,
            },
        ),
        Verb::Prune { dry_run } => backup_command(&cli, Command::Prune { dry_run }),
        Verb::Jobs => remote(&cli, Command::Jobs, print_json),
        Verb::Job(JobVerb::Cancel { id }) => remote(&cli, Command::JobCancel { id }, print_json),
        Verb::Restore(ref r) => match r.target_token_file.as_deref().map(read_token_file) {
            Some(Err(e)) => {
                eprintln!("chromaprod: {e}");
                1
            }
            target_token => backup_command(
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
                    },
                    dry_run: r.dry_run,
                    keep_previous: r.keep_previous,
                    wait: true,
                },
            ),
        },
        Verb::Key(ref k) => key_command(&cli, k),
        Verb::Migrate(MigrateVerb::New { ref name, ref dir }) => {
            migrate_new(&cli, name, dir.as_deref())
        }
        Verb::Migrate(ref v) => backup_command(
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

fn run_daemon(path: &Path) -> i32 {
    let loaded = match config::load(path) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("chromaprod: {e}");
            return EXIT_CONFIG;
        }
    };
    let log = match logging::init(&loaded.config.log) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("chromaprod: cannot set up logging: {e}");
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
            eprintln!("chromaprod: {e}");
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
                println!(
                    "{}",
                    serde_json::json!({ "ok": true, "path": path, "env_overrides": loaded.source.env_overrides, "warnings": warnings })
                );
            } else {
                for w in &warnings {
                    eprintln!("chromaprod: warning: {w}");
                }
                println!("{}: configuration is valid", path.display());
            }
            0
        }
        Err(e) => {
            if json {
                let issues = e.issues();
                println!(
                    "{}",
                    serde_json::json!({ "ok": false, "path": path, "error": e.to_string(), "issues": issues })
                );
            } else {
                eprintln!("chromaprod: {e}");
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
                eprintln!("chromaprod: {e}\n(or pass --file)");
                return EXIT_CONFIG;
            }
        },
    };
    match audit::verify(&path) {
        Ok(lines) => {
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({ "ok": true, "path": path, "lines": lines })
                );
            } else {
                println!("{}: {lines} entries, chain intact", path.display());
            }
            0
        }
        Err(e) => {
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({ "ok": false, "path": path, "error": e.to_string() })
                );
            } else {
                eprintln!("chromaprod: {}: {e}", path.display());
            }
            1
        }
    }
}

/// A token file named on the command line, read with the caller's own rights
/// (so the daemon never opens a path a client names); trimmed, never shown.
fn read_token_file(path: &Path) -> Result<Secret<String>, String> {
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

/// The socket to talk to: `--socket`, else the config file's (even if the
/// rest of the file is invalid), else the default.
fn socket_path(cli: &Cli) -> PathBuf {
    if let Some(s) = &cli.socket {
        return s.clone();
    }
    config::socket_path_hint(&cli.config)
        .unwrap_or_else(|| config::Config::default().control.socket_path)
}

fn remote(cli: &Cli, command: Command, print: fn(&Value)) -> i32 {
    let is_reload = matches!(command, Command::Reload);
    let socket = socket_path(cli);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("chromaprod: cannot start the async runtime: {e}");
            return 1;
        }
    };
    let json = cli.json;
    let result = runtime.block_on(control::client::call(&socket, command, |event| {
        if json {
            println!("{}", serde_json::json!({ "event": event }));
        } else {
            eprintln!("{event}");
        }
    }));
    match result {
        Ok(value) => {
            if json {
                println!("{value}");
            } else {
                print(&value);
            }
            // A reload the daemon rejected is a failure for `ExecReload=` and scripts.
            if is_reload && value["ok"] == Value::Bool(false) {
                1
            } else {
                0
            }
        }
        Err(e) => {
            eprintln!("chromaprod: {e}");
            if matches!(e, control::ClientError::DaemonNotRunning { .. }) {
                69
            } else {
                1
            }
        }
    }
}

fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!("chromaprod: cannot start the async runtime: {e}");
            None
        }
    }
}

/// Progress on stderr: one redrawn line on a terminal, JSON lines with --json.
fn show_progress(json: bool) -> impl FnMut(Value) {
    use std::io::{IsTerminal, Write};
    let tty = std::io::stderr().is_terminal();
    move |event: Value| {
        if json {
            println!("{}", serde_json::json!({ "event": event }));
            return;
        }
        let line = if let Some(version) = event["version"].as_u64() {
            migration_progress(version, &event)
        } else if event["phase"] == "waiting_for_lock" {
            format!(
                "waiting for the migration lock, held by {}",
                s(&event["holder"])
            )
        } else if event["phase"] == "restore_point" {
            format!("taking a restore point of {}", event["collections"])
        } else {
            match (
                event["records_done"].as_u64(),
                event["records_total"].as_u64(),
            ) {
                (Some(d), Some(t)) => format!(
                    "{} {}: {d}/{t} records{}",
                    s(&event["phase"]),
                    s(&event["collection"]),
                    event["bytes_written"]
                        .as_u64()
                        .map(|b| format!(", {} written", human_bytes(b)))
                        .unwrap_or_default()
                ),
                _ => match (
                    event["chunks_done"].as_u64(),
                    event["chunks_total"].as_u64(),
                ) {
                    (Some(d), Some(t)) => format!("{}: {d}/{t} chunks", s(&event["phase"])),
                    _ => event.to_string(),
                },
            }
        };
        if tty {
            let mut err = std::io::stderr();
            let _ = write!(err, "\r\x1b[2K{line}");
            let _ = err.flush();
        } else {
            eprintln!("{line}");
        }
    }
}

/// One line for a migration progress event.
fn migration_progress(version: u64, event: &Value) -> String {
    let mut line = format!("migration {version}");
    if event["phase"] == "migrate_down" {
        line.push_str(" (down)");
    }
    if let Some(op) = event["operation"].as_str() {
        line.push_str(&format!(" {op}"));
    }
    if let Some(step) = event["step"].as_str() {
        line.push_str(&format!(" {step}"));
    }
    if let Some(c) = event["collection"].as_str() {
        line.push_str(&format!(" {c}"));
    }
    if let (Some(d), Some(t)) = (
        event["records_done"].as_u64(),
        event["records_total"].as_u64(),
    ) {
        line.push_str(&format!(": {d}/{t} records"));
    }
    if let Some(f) = event["records_fixed"].as_u64() {
        line.push_str(&format!(": {f} records caught up"));
    }
    if let Some(o) = event["overlap"].as_f64() {
        line.push_str(&format!(": neighbour overlap {o:.3}"));
    }
    line
}

fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A backup command: through the daemon if it runs, otherwise here, with
/// the config file and key alone (restore on a fresh host).
fn backup_command(cli: &Cli, command: Command) -> i32 {
    let Some(rt) = runtime() else { return 1 };
    let socket = socket_path(cli);
    let json = cli.json;
    let result = rt.block_on(control::client::call(
        &socket,
        command.clone(),
        show_progress(json),
    ));
    let value = match result {
        Err(control::ClientError::DaemonNotRunning { .. }) => {
            if matches!(command, Command::Backup { wait: false, .. }) {
                eprintln!("chromaprod: no daemon is running; taking the backup here");
            }
            match rt.block_on(offline(cli, command.clone())) {
                Ok(v) => v,
                Err(e) => {
                    eprintln!("\nchromaprod: {e}");
                    return 1;
                }
            }
        }
        Err(e) => {
            eprintln!("\nchromaprod: {e}");
            return 1;
        }
        Ok(v) => v,
    };
    if !json && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        eprintln!();
    }
    if json {
        println!("{value}");
    } else if matches!(command, Command::MigrateStatus) {
        print_migrate_status(&value);
    } else {
        print_json(&value);
    }
    // `migrate status` exits non-zero when files and history disagree.
    if matches!(command, Command::MigrateStatus)
        && value["problems"].as_array().is_some_and(|p| !p.is_empty())
    {
        return 65;
    }
    0
}

fn migrate_new(cli: &Cli, name: &str, dir: Option<&Path>) -> i32 {
    let dir = match dir {
        Some(d) => d.to_path_buf(),
        None => match config::load(&cli.config) {
            Ok(l) => l.config.migrations.path,
            Err(e) => {
                eprintln!("chromaprod: {e}");
                return EXIT_CONFIG;
            }
        },
    };
    match chromaprod::migrate::file::new_file(&dir, name) {
        Ok(path) => {
            println!("{}", path.display());
            0
        }
        Err(e) => {
            eprintln!("chromaprod: {e}");
            1
        }
    }
}

fn print_migrate_status(v: &Value) {
    println!("version {}   ({})", v["version"], s(&v["path"]));
    for m in v["migrations"].as_array().into_iter().flatten() {
        println!(
            "{:>6}  {:<28} {:<22} {}",
            s(&m["version"]),
            s(&m["name"]),
            s(&m["state"]),
            m["applied_at"].as_str().unwrap_or("")
        );
        if let Some(e) = m["error"].as_str() {
            println!("        error: {e}");
        }
    }
    let pending: Vec<String> = v["pending"]
        .as_array()
        .into_iter()
        .flatten()
        .map(ToString::to_string)
        .collect();
    if !pending.is_empty() {
        println!("pending: {}", pending.join(", "));
    }
    for p in v["problems"].as_array().into_iter().flatten() {
        println!("problem: {}", s(p));
    }
}

async fn offline(cli: &Cli, command: Command) -> anyhow::Result<Value> {
    use chromaprod::daemon::backups::{execute, BackupContext};
    use chromaprod::daemon::jobs::Progress;
    let loaded = config::load(&cli.config)?;
    let cfg = std::sync::Arc::new(loaded.config);
    let metrics = std::sync::Arc::new(chromaprod::observe::MetricsCollector::new());
    let store = chromaprod::chroma::ProductionChromaStore::new(&cfg, metrics.clone())?;
    let ctx = BackupContext {
        store,
        config: cfg,
        metrics,
    };
    if touches_chroma(&command) {
        // Finish name swaps a crash interrupted before anything else.
        match chromaprod::chroma::swap::recover(&ctx.store).await {
            Ok(recovered) => {
                for r in recovered {
                    eprintln!("chromaprod: {r}");
                }
            }
            Err(e) => eprintln!(
                "chromaprod: cannot read the swap journal ({}): {e}",
                chromaprod::chroma::swap::JOURNAL_COLLECTION
            ),
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
    let mut show = show_progress(cli.json);
    let printer = tokio::spawn(async move {
        while let Ok(ev) = rx.recv().await {
            show(ev);
        }
    });
    let r: anyhow::Result<Value> = if chromaprod::daemon::migrations::is_migration(&command) {
        chromaprod::daemon::migrations::execute(&ctx, &command, &progress, &cancel)
            .await
            .map_err(Into::into)
    } else {
        execute(
            &ctx,
            &command,
            chromaprod::backup::Trigger::Command,
            &progress,
            &cancel,
        )
        .await
        .map_err(Into::into)
    };
    drop(progress);
    let _ = printer.await;
    r
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

fn key_command(cli: &Cli, verb: &KeyVerb) -> i32 {
    use chromaprod::backup::crypto::{KeyId, MasterKey};
    use chromaprod::backup::repository::Repository;
    if let KeyVerb::Generate { file } = verb {
        return match MasterKey::generate().and_then(|k| k.write_new_key_file(file).map(|()| k)) {
            Ok(k) => {
                println!("wrote a new key {} to {}; back it up: without a key the backups cannot be read", k.key_id(), file.display());
                0
            }
            Err(e) => {
                eprintln!("chromaprod: {e}");
                1
            }
        };
    }
    let Some(rt) = runtime() else { return 1 };
    let result: anyhow::Result<Value> = rt.block_on(async {
        let cfg = config::load(&cli.config)?.config;
        let key = chromaprod::backup::load_key(&cfg)?;
        // A key change is always recorded: without a writable audit log, nothing changes.
        let log = match verb {
            KeyVerb::Add { .. } | KeyVerb::Remove { .. } => Some(
                audit::AuditLog::open_creating(&cfg.daemon.state_dir).map_err(|e| {
                    anyhow::anyhow!("{e}; key changes are recorded in the audit log, so nothing was changed: run this as the service user or as root")
                })?,
            ),
            _ => None,
        };
        let repo = Repository::open(&cfg.backup.storage_path, &Default::default(), key.as_ref(), false).await?;
        let (action, key_id, outcome): (&str, Option<String>, anyhow::Result<Value>) = match verb {
            KeyVerb::List => {
                let ring = repo.keyring().await?;
                return Ok(serde_json::json!({ "keys": ring.slots.iter().map(|s| serde_json::json!({"id": s.key_id.as_str(), "created": s.created})).collect::<Vec<_>>() }));
            }
            KeyVerb::Add { file } => match MasterKey::from_file(file) {
                Ok(new) => {
                    let id = new.key_id().to_string();
                    let r = repo.add_key(&new).await;
                    ("key_add", Some(id), r.map(|id| serde_json::json!({ "added": id.as_str() })).map_err(Into::into))
                }
                Err(e) => ("key_add", None, Err(e.into())),
            },
            KeyVerb::Remove { id } => match KeyId::parse(id) {
                Ok(kid) => (
                    "key_remove",
                    Some(id.clone()),
                    repo.remove_key(&kid).await.map(|()| serde_json::json!({ "removed": id })).map_err(Into::into),
                ),
                Err(e) => ("key_remove", Some(id.clone()), Err(e.into())),
            },
            KeyVerb::Generate { .. } => return Ok(Value::Null),
        };
        if let Some(log) = log {
            let details = serde_json::json!({
                "via": "cli",
                "repository": config::redact_secrets(&Value::String(cfg.backup.storage_path.clone())),
                "opened_with": key.as_ref().map(|k| k.key_id().to_string()),
                "key_id": key_id,
                "ok": outcome.is_ok(),
                "error": outcome.as_ref().err().map(ToString::to_string),
            });
            if let Err(e) = log.append(&audit::Actor::this_process(), action, details) {
                let done = if outcome.is_ok() { "the key change was made" } else { "the key change failed" };
                anyhow::bail!("{done} but could not be recorded in the audit log: {e}");
            }
        }
        outcome
    });
    match result {
        Ok(v) => {
            if cli.json {
                println!("{v}")
            } else {
                print_json(&v)
            }
            0
        }
        Err(e) => {
            eprintln!("chromaprod: {e}");
            1
        }
    }
}

fn print_json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn print_status(v: &Value) {
    println!(
        "chromaprod {} (pid {}), up {}s",
        s(&v["version"]),
        s(&v["pid"]),
        s(&v["uptime_seconds"])
    );
    println!("health:   {}", s(&v["health"]));
    println!("config:   {}", s(&v["config"]["path"]));
    match v["config"]["last_reload"].as_object() {
        None => println!("reload:   none since start"),
        Some(r) if r.get("ok").and_then(Value::as_bool) == Some(true) => {
            let keys: Vec<String> = r["changed_keys"]
                .as_array()
                .map(|a| a.iter().map(s).collect())
                .unwrap_or_default();
            println!(
                "reload:   ok at {} ({})",
                s(&r["at"]),
                if keys.is_empty() {
                    "no changes".into()
                } else {
                    keys.join(", ")
                }
            );
        }
        Some(r) => println!(
            "reload:   FAILED at {}, running config kept:\n{}",
            s(&r["at"]),
            s(&r["error"])
        ),
    }
    println!(
        "chroma:   tenant {} database {}",
        s(&v["chroma"]["tenant"]),
        s(&v["chroma"]["database"])
    );
    let pool = &v["pool"];
    println!(
        "pool:     {} in use of {}, {} waiting",
        s(&pool["in_use"]),
        s(&pool["max"]),
        s(&pool["waiting"])
    );
    for e in pool["endpoints"].as_array().into_iter().flatten() {
        let health = if e["healthy"].as_bool() == Some(true) {
            "up"
        } else {
            "DOWN"
        };
        println!(
            "endpoint: {} {} breaker {}{}",
            s(&e["url"]),
            health,
            s(&e["breaker"]),
            e["last_error"]
                .as_str()
                .map(|m| format!(" (last error: {m})"))
                .unwrap_or_default()
        );
    }
}

fn print_reload(v: &Value) {
    if v["ok"].as_bool() == Some(true) {
        let keys: Vec<String> = v["changed_keys"]
            .as_array()
            .map(|a| a.iter().map(s).collect())
            .unwrap_or_default();
        if keys.is_empty() {
            println!("reloaded: no changes");
        } else {
            println!("reloaded: {}", keys.join(", "));
        }
        if let Some(r) = v["needs_restart"].as_array().filter(|a| !a.is_empty()) {
            println!(
                "restart needed for: {}",
                r.iter().map(s).collect::<Vec<_>>().join(", ")
            );
        }
    } else {
        println!(
            "reload rejected; the running configuration stays in force:\n{}",
            s(&v["error"])
        );
    }
}

fn print_query(v: &Value) {
    println!("{:>4}  {:<24} {:>12}  document", "rank", "id", "distance");
    for (i, r) in v["results"].as_array().into_iter().flatten().enumerate() {
        let doc = s(&r["document"]);
        let doc: String = doc.chars().take(60).collect();
        println!(
            "{:>4}  {:<24} {:>12.6}  {}",
            i + 1,
            s(&r["id"]),
            r["distance"].as_f64().unwrap_or(f64::NAN),
            doc
        );
    }
    if v["documents_withheld"] == Value::Bool(true) {
        println!("(documents withheld: run as root, as the daemon's user, or as a member of the daemon's group or of control.admin_group to see them)");
    }
}
