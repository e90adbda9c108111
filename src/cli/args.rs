//! The command line: verbs, their arguments and flags (clap definitions only).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use chromaprod::config::{CONFIG_PATH_ENV, DEFAULT_CONFIG_PATH};

#[derive(Parser, Debug)]
#[command(
    name = "chromaprod",
    version,
    about = "Production companion for Chroma: backups, a healthy connection pool, migrations, systemd integration"
)]
pub struct Cli {
    /// Configuration file.
    #[arg(long, global = true, env = CONFIG_PATH_ENV, default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    /// Control socket of the daemon (default: control.socket_path from the config file).
    #[arg(long, global = true, env = "CHROMAPROD_SOCKET")]
    pub socket: Option<PathBuf>,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Verb,
}

#[derive(Subcommand, Debug)]
pub enum Verb {
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
    /// List, show, verify, diff and delete snapshots.
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
    /// Restore collections of a snapshot (staging collection, verify, swap; or --mode delta: only what differs).
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
pub enum MigrateVerb {
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
pub struct BackupArgs {
    /// Every collection in scope (backup.include/exclude). The default.
    #[arg(long, conflicts_with_all = ["incremental", "collection"])]
    pub full: bool,
    /// Only what changed since the latest snapshot (restores on its own).
    #[arg(long, conflicts_with = "collection")]
    pub incremental: bool,
    /// Only these collections.
    #[arg(long = "collection", short = 'c')]
    pub collection: Vec<String>,
    /// A physical snapshot: Chroma's persist directory itself (chroma.persist_directory), restored with `restore ID --data-dir DIR`.
    #[arg(long, conflicts_with_all = ["full", "incremental", "collection"])]
    pub physical: bool,
    /// Wait for the backup to finish, showing progress.
    #[arg(long)]
    pub wait: bool,
}

#[derive(Subcommand, Debug)]
pub enum BackupsVerb {
    /// Snapshots, newest first.
    List,
    /// One snapshot's manifest (`latest` for the newest).
    Show { id: String },
    /// Check that a snapshot's objects are present and intact (`latest` for the newest),
    /// or with --recall that live collections answer its recorded queries as the backed-up ones did.
    Verify {
        id: String,
        /// Read every object: checksums, decryption, indexes.
        #[arg(long, conflicts_with = "recall")]
        full: bool,
        #[command(flatten)]
        recall: RecallArgs,
    },
    /// What changed from snapshot ID to OTHER, or with --live to the
    /// collections in Chroma now: records added, changed and removed per
    /// collection (`latest` for the newest).
    Diff {
        id: String,
        other: Option<String>,
        /// Compare with the live collections (those a full backup takes) instead of a second snapshot.
        #[arg(long)]
        live: bool,
        /// Only this collection.
        #[arg(long, short = 'c')]
        collection: Option<String>,
        /// List the ids added, changed and removed (sorted), not only counts.
        #[arg(long)]
        ids: bool,
    },
    /// Delete a snapshot (its chunks go at the next prune).
    Delete { id: String },
    /// Check every stored object for damage, without using the key.
    Check,
}

/// `backups verify --recall` and its options.
#[derive(Args, Debug)]
pub struct RecallArgs {
    /// Run the queries recorded at backup time against the live collections
    /// of the same names and report recall@k; exit 65 if one is below --min-recall.
    #[arg(long)]
    pub recall: bool,
    /// Only this collection of the snapshot.
    #[arg(long, short = 'c', requires = "recall")]
    pub collection: Option<String>,
    /// Check it against the live collection of this name (e.g. a restored copy).
    #[arg(long = "as", requires = "collection")]
    pub as_name: Option<String>,
    /// Least recall@k that passes, 0.0 to 1.0 (default 0.95: an HNSW index
    /// rebuilt by a restore may answer a few neighbours differently).
    #[arg(long, requires = "recall")]
    pub min_recall: Option<f64>,
    /// Another Chroma server to query. It gets no configured token unless
    /// it is a configured endpoint.
    #[arg(long, requires = "recall")]
    pub target: Option<String>,
    /// File holding the target's token, read here with your own rights.
    #[arg(long, requires = "target")]
    pub target_token_file: Option<PathBuf>,
    /// Allow the target's token over plain http to a host that is not loopback.
    #[arg(long, requires = "target_token_file")]
    pub allow_plain_http: bool,
}

#[derive(Subcommand, Debug)]
pub enum JobVerb {
    /// Cancel a running job; it leaves no snapshot behind.
    Cancel { id: u64 },
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// Snapshot id (`latest` for the newest).
    pub id: String,
    /// Only these collections (default: all in the snapshot).
    #[arg(long = "collection", short = 'c')]
    pub collection: Vec<String>,
    /// Restore under a new name (one collection).
    #[arg(long = "as")]
    pub as_name: Option<String>,
    /// Another Chroma server to restore onto. It gets no configured token
    /// unless it is a configured endpoint.
    #[arg(long)]
    pub target: Option<String>,
    /// File holding the target's token, read here with your own rights and
    /// sent only to the target (in chroma.auth_header's header).
    #[arg(long, requires = "target")]
    pub target_token_file: Option<PathBuf>,
    /// Allow the target's token over plain http to a host that is not loopback.
    #[arg(long, requires = "target_token_file")]
    pub allow_plain_http: bool,
    /// What to do when the target collection exists: refuse, swap in a
    /// whole copy, or write only what differs (delta).
    #[arg(long, value_enum, default_value = "fail-if-exists")]
    pub mode: ModeArg,
    /// Show what would be restored.
    #[arg(long)]
    pub dry_run: bool,
    /// With --mode replace, keep the previous collection as NAME-pre-restore-ID.
    #[arg(long)]
    pub keep_previous: bool,
    /// With --mode delta, keep live records the snapshot does not have.
    #[arg(long)]
    pub keep_extra: bool,
    /// Do not run the snapshot's recorded queries against the restored
    /// collections (the recall@k check a whole restore runs by default).
    #[arg(long)]
    pub no_recall: bool,
    /// Restore a physical snapshot as a complete persist directory into
    /// this new or empty directory (then start Chroma on it).
    #[arg(long, conflicts_with_all = ["collection", "as_name", "target", "dry_run", "keep_previous", "keep_extra"])]
    pub data_dir: Option<PathBuf>,
    /// With --data-dir: restore even if the local Chroma is at other migration levels.
    #[arg(long, requires = "data_dir")]
    pub force: bool,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum ModeArg {
    FailIfExists,
    Replace,
    /// Write into the existing collection only what differs (after a restore point).
    Delta,
}

#[derive(Subcommand, Debug)]
pub enum KeyVerb {
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
pub struct QueryArgs {
    /// Collection name.
    #[arg(long, short = 'c')]
    pub collection: String,
    /// Id of a stored record whose embedding is the query.
    #[arg(long, conflicts_with = "vector", required_unless_present = "vector")]
    pub id: Option<String>,
    /// The query vector, comma-separated.
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    pub vector: Option<Vec<f32>>,
    /// Number of results.
    #[arg(short = 'k', long, default_value_t = 10)]
    pub k: usize,
}

#[derive(Subcommand, Debug)]
pub enum AuditVerb {
    /// Check the hash chain; name the first line that was edited, removed or reordered.
    Verify {
        /// Audit file (default: audit.jsonl in daemon.state_dir from the config).
        #[arg(long)]
        file: Option<PathBuf>,
    },
}
