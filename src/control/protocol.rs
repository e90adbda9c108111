//! The control protocol: line-delimited JSON over a Unix stream socket.
//!
//! One request per connection. The client writes exactly one request line
//! (a JSON object followed by `\n`); the server answers with zero or more
//! event lines and then exactly one response line, and closes the
//! connection. Every line carries the protocol version `v`.
//!
//! Request (a [`Request`]): the version and the command, with the command's
//! name in `cmd` and its arguments beside it:
//!
//! ```text
//! {"v":1,"cmd":"status"}
//! {"v":1,"cmd":"reload"}
//! {"v":1,"cmd":"query","collection":"docs","vector":[0.1,0.2],"k":5}
//! ```
//!
//! Server lines (a [`Line`]), told apart by `type`:
//!
//! ```text
//! {"type":"event","v":1,"event":{"stage":"upload","done":3,"total":10}}
//! {"type":"response","v":1,"ok":true,"result":{"state":"ready"}}
//! {"type":"response","v":1,"ok":false,"error":{"kind":"permission_denied","message":"…"}}
//! ```
//!
//! A successful response has `ok: true` and may carry `result` (absent means
//! JSON `null`); a failed one has `ok: false` and an `error` with a stable,
//! machine-readable `kind` (see [`kind`]) and a human-readable `message`.
//!
//! Compatibility rules: new commands are new `cmd` values and new optional
//! fields; neither changes `v`. A server answers a `cmd` it does not know
//! with [`kind::UNKNOWN_COMMAND`], and a `v` it does not speak with
//! [`kind::UNSUPPORTED_VERSION`]. Clients ignore unknown fields and treat
//! unknown event shapes as opaque. `v` changes only if the framing or the
//! meaning of an existing field changes.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::secret::Secret;

/// The protocol version this build speaks (the `v` field of every line).
pub const PROTOCOL_VERSION: u32 = 1;

/// One request line: `{"v":1,"cmd":"…", …arguments}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub v: u32,
    #[serde(flatten)]
    pub command: Command,
}

impl Request {
    /// A request at this build's [`PROTOCOL_VERSION`].
    pub fn new(command: Command) -> Self {
        Self {
            v: PROTOCOL_VERSION,
            command,
        }
    }
}

/// A control command. The variant name, in `snake_case`, is the `cmd` value;
/// fields are the command's arguments. Add commands as new variants (and
/// their names to [`Command::NAMES`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// Daemon state: readiness, pool and breaker, jobs, last reload.
    Status,
    /// Re-read, validate and apply the configuration file.
    Reload,
    /// Nearest neighbours in `collection` of a stored record (`id`) or of a
    /// given embedding (`vector`); `k` results.
    Query {
        collection: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vector: Option<Vec<f32>>,
        k: usize,
    },
    /// Take a snapshot: `full`, `incremental` or `collection` (of `collections`).
    /// With `wait`, progress events stream until it finishes; otherwise the
    /// response carries the job id at once.
    Backup {
        backup_type: crate::backup::BackupType,
        #[serde(default)]
        collections: Vec<String>,
        #[serde(default)]
        wait: bool,
    },
    /// Snapshots in the repository, newest first.
    BackupsList,
    /// One snapshot's manifest.
    BackupShow { id: String },
    /// Check a snapshot's objects (sizes; with `full`, contents and keys),
    /// or with `recall` run its recorded queries against live collections
    /// (recall@k; `collection` and `as_name` name one, `target` another
    /// server, with the same token rules as `restore`).
    BackupVerify {
        id: String,
        #[serde(default)]
        full: bool,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        recall: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        collection: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        as_name: Option<String>,
        /// Least recall@k that passes (default 0.95).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min_recall: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        target: Option<String>,
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            with = "crate::secret::wire"
        )]
        target_token: Option<Secret<String>>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        allow_plain_http: bool,
    },
    /// What changed from snapshot `id` to snapshot `other`, or to the live
    /// collections (`live`): per collection, records added, changed and
    /// removed; with `ids`, their ids.
    BackupsDiff {
        id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        other: Option<String>,
        #[serde(default)]
        live: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        collection: Option<String>,
        #[serde(default)]
        ids: bool,
    },
    /// Remove a snapshot (its chunks go at the next prune).
    BackupDelete { id: String },
    /// Check every stored object for damage, without the key.
    BackupsCheck,
    /// Apply retention and delete unreferenced chunks.
    Prune {
        #[serde(default)]
        dry_run: bool,
    },
    /// Running and recent jobs, and the schedules.
    Jobs,
    /// Cancel a running job.
    JobCancel { id: u64 },
    /// Restore collections of a snapshot (staging collection, verify, swap;
    /// or with `mode: "delta"`, only what differs, after a restore point).
    Restore {
        id: String,
        #[serde(default)]
        collections: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        as_name: Option<String>,
        /// Another Chroma server to restore onto (default: the configured one).
        /// The configured token goes only to a configured endpoint, never here.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        target: Option<String>,
        /// The token for `target`, read by the CLI from `--target-token-file`
        /// with the caller's own rights (the daemon never opens a path a client
        /// names). Sent only to `target`; redacted in the audit log.
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            with = "crate::secret::wire"
        )]
        target_token: Option<Secret<String>>,
        /// Allow `target_token` over plain http to a target that is not loopback.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        allow_plain_http: bool,
        mode: crate::backup::RestoreMode,
        #[serde(default)]
        dry_run: bool,
        #[serde(default)]
        keep_previous: bool,
        /// With `mode: "delta"`: keep live records the snapshot does not have.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        keep_extra: bool,
        /// Do not run the snapshot's recorded queries against the restored
        /// collections (recall@k).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        no_recall: bool,
        #[serde(default)]
        wait: bool,
    },
    /// Write physical snapshot `id` as a complete persist directory into
    /// `data_dir` (absolute; new or empty), as a job. The daemon writes it
    /// with its own user and sandbox.
    RestorePhysical {
        id: String,
        data_dir: std::path::PathBuf,
        /// Restore onto other migration levels than the local Chroma's.
        #[serde(default)]
        force: bool,
        #[serde(default)]
        wait: bool,
    },
    /// Migration files and history side by side, what is pending and what is wrong.
    MigrateStatus,
    /// Apply pending migrations up to `to` (default: all), as a job.
    MigrateUp {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<u32>,
        #[serde(default)]
        wait: bool,
    },
    /// Undo applied migrations above version `to`, as a job.
    MigrateDown {
        to: u32,
        #[serde(default)]
        wait: bool,
    },
    /// Check files against the recorded history.
    MigrateValidate,
    /// Accept edited files, forget missing ones, clear failed runs.
    MigrateRepair,
    /// Record `version` as current without running anything.
    MigrateStamp { version: u32 },
}

impl Command {
    /// Every `cmd` value this build understands.
    pub const NAMES: &'static [&'static str] = &[
        "status",
        "reload",
        "query",
        "backup",
        "backups_list",
        "backup_show",
        "backup_verify",
        "backups_diff",
        "backup_delete",
        "backups_check",
        "prune",
        "jobs",
        "job_cancel",
        "restore",
        "restore_physical",
        "migrate_status",
        "migrate_up",
        "migrate_down",
        "migrate_validate",
        "migrate_repair",
        "migrate_stamp",
    ];

    /// The `cmd` value of this command.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Status => "status",
            Command::Reload => "reload",
            Command::Query { .. } => "query",
            Command::Backup { .. } => "backup",
            Command::BackupsList => "backups_list",
            Command::BackupShow { .. } => "backup_show",
            Command::BackupVerify { .. } => "backup_verify",
            Command::BackupsDiff { .. } => "backups_diff",
            Command::BackupDelete { .. } => "backup_delete",
            Command::BackupsCheck => "backups_check",
            Command::Prune { .. } => "prune",
            Command::Jobs => "jobs",
            Command::JobCancel { .. } => "job_cancel",
            Command::Restore { .. } => "restore",
            Command::RestorePhysical { .. } => "restore_physical",
            Command::MigrateStatus => "migrate_status",
            Command::MigrateUp { .. } => "migrate_up",
            Command::MigrateDown { .. } => "migrate_down",
            Command::MigrateValidate => "migrate_validate",
            Command::MigrateRepair => "migrate_repair",
            Command::MigrateStamp { .. } => "migrate_stamp",
        }
    }

    /// For the commands that run as a job (`backup`, `restore`,
    /// `migrate_up`, `migrate_down`): whether the caller waits for the
    /// outcome. `None` for commands that answer when done.
    pub fn wait(&self) -> Option<bool> {
        match self {
            Command::Backup { wait, .. }
            | Command::Restore { wait, .. }
            | Command::RestorePhysical { wait, .. }
            | Command::MigrateUp { wait, .. }
            | Command::MigrateDown { wait, .. } => Some(*wait),
            _ => None,
        }
    }

    /// This command as it may be recorded (audit log): any token replaced by
    /// `[redacted]`.
    /// A `target` URL loses its user info, query and fragment (a refused
    /// request is recorded too, before it is checked).
    pub fn redacted(&self) -> Command {
        let mut c = self.clone();
        if let Command::Restore {
            target_token,
            target,
            ..
        }
        | Command::BackupVerify {
            target_token,
            target,
            ..
        } = &mut c
        {
            if let Some(token) = target_token {
                *token = Secret::new("[redacted]".to_string());
            }
            if let Some(t) = target {
                *t = match url::Url::parse(t) {
                    Ok(u) => crate::config::url_location(&u).to_string(),
                    Err(_) => "[not a URL]".to_string(),
                };
            }
        }
        c
    }

    /// The access level a peer needs to run the command (see [`Level`]).
    pub fn level(&self) -> Level {
        match self {
            // Running the recorded queries on another server hands it
            // vectors of the snapshot (and perhaps a token).
            Command::BackupVerify {
                target: Some(_), ..
            } => Level::Admin,
            Command::Status
            | Command::Query { .. }
            | Command::BackupsList
            | Command::BackupShow { .. }
            | Command::BackupVerify { .. }
            | Command::BackupsDiff { .. }
            | Command::BackupsCheck
            | Command::Jobs
            | Command::MigrateStatus
            | Command::MigrateValidate
            | Command::Prune { dry_run: true } => Level::Read,
            Command::Reload
            | Command::Backup { .. }
            | Command::JobCancel { .. }
            | Command::MigrateUp { .. } => Level::Operate,
            // Replacing a live collection, or rewriting it (delta), destroys
            // data; restoring onto another server hands it a decrypted snapshot.
            Command::Restore {
                mode,
                dry_run,
                target,
                ..
            } => {
                let overwrites = matches!(
                    mode,
                    crate::backup::RestoreMode::Replace | crate::backup::RestoreMode::Delta
                );
                if target.is_some() || (overwrites && !dry_run) {
                    Level::Admin
                } else {
                    Level::Operate
                }
            }
            // It writes files wherever the client names.
            Command::BackupDelete { .. }
            | Command::RestorePhysical { .. }
            | Command::Prune { dry_run: false }
            | Command::MigrateDown { .. }
            | Command::MigrateRepair
            | Command::MigrateStamp { .. } => Level::Admin,
        }
    }

    /// Whether the command changes the daemon's state or data (it needs more
    /// than [`Level::Read`]); such commands are recorded in the audit log.
    pub fn is_mutating(&self) -> bool {
        self.level() > Level::Read
    }
}

/// Access levels on the control socket, lowest first; each includes the ones
/// below it. Who holds which level is decided from the peer's credentials
/// (see `docs/control-protocol.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// Anyone who can connect: state, listings, checks, dry runs, queries
    /// (document text only for the admin level or the daemon's own group).
    Read,
    /// Members of the socket's group: reload, backups, restores into a new
    /// or absent collection, `migrate_up`, cancelling jobs.
    Operate,
    /// Root, the daemon's user and members of `control.admin_group`: what
    /// destroys data or history (deleting snapshots, prune, restore over an
    /// existing collection, `migrate_down`, `migrate_repair`, `migrate_stamp`).
    Admin,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Read => "read",
            Level::Operate => "operate",
            Level::Admin => "admin",
        }
    }
}

/// One line from the server: progress events, then one response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Line {
    /// Progress of a long-running command; the shape depends on the command.
    Event { v: u32, event: Value },
    /// The final line; the server closes the connection after it.
    Response {
        v: u32,
        ok: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result: Option<Value>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<ErrorBody>,
    },
}

impl Line {
    pub fn event(event: Value) -> Self {
        Line::Event {
            v: PROTOCOL_VERSION,
            event,
        }
    }

    /// A successful response; a `null` result is sent as an absent `result`.
    pub fn ok(result: Value) -> Self {
        Line::Response {
            v: PROTOCOL_VERSION,
            ok: true,
            result: (!result.is_null()).then_some(result),
            error: None,
        }
    }

    pub fn error(kind: impl Into<String>, message: impl Into<String>) -> Self {
        Line::Response {
            v: PROTOCOL_VERSION,
            ok: false,
            result: None,
            error: Some(ErrorBody {
                kind: kind.into(),
                message: message.into(),
            }),
        }
    }

    /// The line as JSON followed by `\n`.
    pub fn to_json_line(&self) -> Vec<u8> {
        // Serializing these types cannot fail: all map keys are strings and
        // `serde_json` writes non-finite floats as `null`.
        let mut bytes = serde_json::to_vec(self).unwrap_or_else(|e| {
            serde_json::to_vec(&Line::error(kind::INTERNAL, e.to_string())).unwrap_or_default()
        });
        bytes.push(b'\n');
        bytes
    }
}

/// Why a command failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable, machine-readable; see [`kind`].
    pub kind: String,
    /// For people; may change between versions.
    pub message: String,
}

/// The error kinds the server itself produces. Handlers add their own
/// (e.g. `config_invalid`, `chroma_unavailable`, `not_found`).
pub mod kind {
    /// The request line is not valid JSON or not a valid request.
    pub const BAD_REQUEST: &str = "bad_request";
    /// The request line is longer than the server's limit.
    pub const REQUEST_TOO_LARGE: &str = "request_too_large";
    /// The request line did not arrive in time.
    pub const TIMEOUT: &str = "timeout";
    /// The request's `v` is not one the server speaks.
    pub const UNSUPPORTED_VERSION: &str = "unsupported_version";
    /// The request's `cmd` is not one the server knows (an older daemon).
    pub const UNKNOWN_COMMAND: &str = "unknown_command";
    /// The peer may not run this command (it needs the operate level).
    pub const PERMISSION_DENIED: &str = "permission_denied";
    /// The command destroys data or history and needs the admin level.
    pub const ADMIN_REQUIRED: &str = "admin_required";
    /// The server is at its connection limit, in all or for the peer's uid; try again.
    pub const BUSY: &str = "busy";
    /// The daemon is stopping; the command was not completed.
    pub const SHUTTING_DOWN: &str = "shutting_down";
    /// A bug in the daemon.
    pub const INTERNAL: &str = "internal";
}

#[cfg(test)]
mod tests;
