//! The checks of `chromaprod doctor`, one function each.

use std::future::Future;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::clock::{self, Skew};
use super::{Check, Options, Report, Status};
use crate::backup::crypto::MasterKey;
use crate::backup::lock::{hostname, list_locks, now_ms, LockInfo};
use crate::backup::repository::Repository;
use crate::backup::BackupError;
use crate::chroma::{CallKind, ChromaError, ProductionChromaStore};
use crate::config::{self, Config};
use crate::control::{self, ClientError, Command};
use crate::observe::MetricsCollector;
use crate::storage::{self, Backend, Env, ErrorKind, Location, ObjectKey, StorageOptions, Written};

/// Where `LoadCredential=backup-key:…` reads the key in the shipped unit;
/// checked when `CREDENTIALS_DIRECTORY` is not set (outside the service).
pub const DEFAULT_CREDENTIALS_DIR: &str = "/etc/chromaprod/credentials";

const SYNC_CLOCK: &str = "synchronise the clock with NTP on this host and every host that shares the repository: `timedatectl set-ntp true`, then `timedatectl timesync-status`";

pub(super) async fn run_all(o: &Options) -> Report {
    let mut checks = Vec::new();
    let cfg = match config::load(&o.config) {
        Ok(loaded) => {
            let overrides = if loaded.source.env_overrides.is_empty() {
                "no environment overrides".to_string()
            } else {
                format!(
                    "environment overrides: {}",
                    loaded.source.env_overrides.join(", ")
                )
            };
            checks.push(Check::ok("config", format!("valid; {overrides}")));
            loaded.config
        }
        Err(e) => {
            checks.push(Check::fail(
                "config",
                one_line(&e.to_string()),
                format!(
                    "edit {} (`chromaprod validate --config {}` lists every problem; the example is /usr/share/doc/chromaprod/examples/chromaprod.toml)",
                    o.config.display(),
                    o.config.display()
                ),
            ));
            for name in [
                "key",
                "chroma",
                "repository",
                "repository_write",
                "locks",
                "clock",
            ] {
                checks.push(Check::skip(name, "needs a valid configuration"));
            }
            let socket = o
                .socket
                .clone()
                .or_else(|| config::socket_path_hint(&o.config))
                .unwrap_or_else(|| Config::default().control.socket_path);
            checks.extend(bounded(o, "socket", check_socket(&socket, None, o)).await);
            return Report {
                config: o.config.clone(),
                checks,
            };
        }
    };

    let (key_check, key) = check_key(&cfg);
    checks.push(key_check);
    checks.extend(bounded(o, "chroma", check_chroma(&cfg, o)).await);
    checks.extend(bounded(o, "repository", check_repository(&cfg, key.as_ref(), o)).await);
    let socket = o
        .socket
        .clone()
        .unwrap_or_else(|| cfg.control.socket_path.clone());
    checks.extend(bounded(o, "socket", check_socket(&socket, Some(&cfg), o)).await);
    Report {
        config: o.config.clone(),
        checks,
    }
}

/// Runs a group of checks with the per-check time limit.
async fn bounded(
    o: &Options,
    name: &'static str,
    f: impl Future<Output = Vec<Check>>,
) -> Vec<Check> {
    // A group runs several checks; give it room for each.
    match tokio::time::timeout(o.timeout * 4, f).await {
        Ok(checks) => checks,
        Err(_) => vec![Check::fail(
            name,
            format!("did not finish within {}", humantime::format_duration(o.timeout * 4)),
            "something is hanging (a firewall dropping packets, an overloaded server); rerun with a longer --timeout to see which step",
        )],
    }
}

fn one_line(s: &str) -> String {
    s.lines()
        .map(|l| l.trim().trim_start_matches("- "))
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

// ------------------------------------------------------------------ key

/// The key file the configuration points at, and how it was chosen.
fn key_path(cfg: &Config) -> (PathBuf, String) {
    if let Some(p) = &cfg.backup.key_file {
        return (p.clone(), "backup.key_file".into());
    }
    match std::env::var_os("CREDENTIALS_DIRECTORY") {
        Some(dir) => (
            Path::new(&dir).join("backup-key"),
            "$CREDENTIALS_DIRECTORY/backup-key".into(),
        ),
        None => (
            Path::new(DEFAULT_CREDENTIALS_DIR).join("backup-key"),
            "the source of the unit's LoadCredential=backup-key (CREDENTIALS_DIRECTORY is set only inside the service)".into(),
        ),
    }
}

fn check_key(cfg: &Config) -> (Check, Option<MasterKey>) {
    const NAME: &str = "key";
    if !cfg.backup.encrypt {
        return (
            Check::warn(
                NAME,
                crate::config::PLAINTEXT_WARNING,
                crate::config::PLAINTEXT_FIX,
            ),
            None,
        );
    }
    let (path, source) = key_path(cfg);
    match MasterKey::from_file(&path) {
        Ok(key) => {
            let mode = std::fs::metadata(&path)
                .map(|m| m.permissions().mode() & 0o777)
                .unwrap_or(0);
            let check = Check::ok(
                NAME,
                format!(
                    "key {} readable from {} ({source}), mode {mode:04o}",
                    key.key_id(),
                    path.display()
                ),
            );
            (check, Some(key))
        }
        // chromaprod refuses such a key: a failure, with the one command that fixes it.
        Err(crate::backup::crypto::CryptoError::Exposed(e)) => (
            Check::fail(
                NAME,
                format!("the key file ({source}) {e}"),
                format!("chmod 600 {}", path.display()),
            ),
            None,
        ),
        Err(crate::backup::crypto::CryptoError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::PermissionDenied
                && !nix::unistd::geteuid().is_root() =>
        {
            (
                Check::warn(
                    NAME,
                    format!("cannot read {} as this user: {source}", path.display()),
                    "run `sudo chromaprod doctor` to check the key",
                ),
                None,
            )
        }
        Err(e) => (
            Check::fail(
                NAME,
                e.to_string(),
                format!(
                    "put the key back at {} from your safe copy (runbook: \"Lose it\"); a new repository needs a new key: `chromaprod key generate {}`",
                    path.display(),
                    path.display()
                ),
            ),
            None,
        ),
    }
}

// --------------------------------------------------------------- chroma

/// Whether chromaprod speaks the API a Chroma server reports from
/// `/api/v2/version`: the v2 API of Chroma 1.x reports `1.x.y`.
pub fn api_version_supported(version: &str) -> Result<(), String> {
    let major = version
        .trim()
        .trim_matches('"')
        .split('.')
        .next()
        .and_then(|m| m.parse::<u64>().ok())
        .ok_or_else(|| format!("unreadable API version {version:?}"))?;
    if major == 1 {
        Ok(())
    } else {
        Err(format!(
            "API version {version} is not supported: chromaprod speaks Chroma's v2 API as served by Chroma 1.x (API 1.x)"
        ))
    }
}

async fn check_chroma(cfg: &Config, o: &Options) -> Vec<Check> {
    let mut out = Vec::new();
    for endpoint in &cfg.chroma.endpoints {
        out.extend(check_endpoint(cfg, endpoint, o).await);
    }
    out
}

async fn check_endpoint(cfg: &Config, endpoint: &url::Url, o: &Options) -> Vec<Check> {
    // One endpoint, one attempt, short limits: a diagnosis, not a workload.
    let mut one = cfg.clone();
    one.chroma.endpoints = vec![endpoint.clone()];
    one.retry.max_retries = 0;
    one.retry.deadline = o.timeout;
    one.pool.request_timeout = one.pool.request_timeout.min(o.timeout);
    one.pool.connect_timeout = one.pool.connect_timeout.min(o.timeout);
    one.pool.connection_timeout = one.pool.connection_timeout.min(o.timeout);
    let ep = endpoint.as_str();
    let store = match ProductionChromaStore::new(&one, Arc::new(MetricsCollector::new())) {
        Ok(s) => s,
        Err(e) => {
            return vec![Check::fail(
                "chroma",
                format!("{ep}: {e}"),
                "fix chroma.tls_ca_file / chroma.auth_token_file",
            )]
        }
    };
    let unwrap = |e: ChromaError| match e {
        ChromaError::RetryExhausted(r) => *r.last,
        e => e,
    };
    let skip_rest = |why: &str| {
        vec![
            Check::skip("chroma_version", format!("{ep}: {why}")),
            Check::skip("chroma_database", format!("{ep}: {why}")),
        ]
    };
    let mut out = Vec::new();
    let health = store
        .call("doctor", CallKind::Read, |c| async move {
            c.healthcheck().await
        })
        .await
        .map_err(unwrap);
    let not_chroma = match health {
        Ok(()) => {
            out.push(Check::ok(
                "chroma",
                format!("{ep} is reachable and healthy"),
            ));
            None
        }
        Err(
            e @ ChromaError::Http {
                status: 401 | 403, ..
            },
        ) => {
            out.push(Check::fail(
                "chroma",
                e.to_string(),
                "set chroma.auth_token_file to the file holding Chroma's token (under systemd: LoadCredential=chroma-token:… and auth_token_file = \"/run/credentials/chromaprod.service/chroma-token\") and check chroma.auth_header",
            ));
            out.extend(skip_rest("needs an authorised connection"));
            return out;
        }
        Err(e @ ChromaError::Unhealthy { .. }) => {
            out.push(Check::fail(
                "chroma",
                e.to_string(),
                "Chroma answers but reports itself unhealthy: see its log (`journalctl -u chroma`, or the server's output)",
            ));
            out.extend(skip_rest("needs a healthy server"));
            return out;
        }
        Err(
            e @ (ChromaError::Http {
                status: 400..=499, ..
            }
            | ChromaError::Decode { .. }
            | ChromaError::NotFound { .. }),
        ) => {
            out.push(Check::ok(
                "chroma",
                format!("{ep} answers HTTP (but not Chroma's healthcheck)"),
            ));
            Some(e)
        }
        Err(e) => {
            out.push(Check::fail(
                "chroma",
                e.to_string(),
                format!(
                    "start Chroma (e.g. `systemctl start chroma`), or correct chroma.endpoints; from this host, `curl {ep}api/v2/healthcheck` must answer"
                ),
            ));
            out.extend(skip_rest("needs a reachable server"));
            return out;
        }
    };
    let version_fix = "run Chroma 1.x (the v2 API), e.g. `pip install 'chromadb>=1.0'` and `chroma run`, or point chroma.endpoints at a Chroma server";
    if let Some(e) = not_chroma {
        out.push(Check::fail(
            "chroma_version",
            format!("{ep} is not a supported Chroma server: {e}"),
            version_fix,
        ));
        out.push(Check::skip(
            "chroma_database",
            format!("{ep}: needs a supported server"),
        ));
        return out;
    }
    let info = store
        .call("doctor", CallKind::Read, |c| async move {
            let v = c.version().await?;
            let pf = c.pre_flight_checks().await?;
            Ok((v, pf))
        })
        .await
        .map_err(unwrap);
    match info {
        Ok((version, pf)) => match api_version_supported(&version) {
            Ok(()) => out.push(Check::ok(
                "chroma_version",
                format!(
                    "{ep}: API {version} (Chroma 1.x, v2 API), max batch {} records, base64 embeddings {}",
                    pf.max_batch_size,
                    if pf.supports_base64_encoding { "supported" } else { "not supported" }
                ),
            )),
            Err(why) => {
                out.push(Check::fail("chroma_version", format!("{ep}: {why}"), version_fix));
                out.push(Check::skip("chroma_database", format!("{ep}: needs a supported server")));
                return out;
            }
        },
        Err(e) => {
            out.push(Check::fail(
                "chroma_version",
                format!("{ep}: {e}"),
                version_fix,
            ));
            out.push(Check::skip("chroma_database", format!("{ep}: needs a supported server")));
            return out;
        }
    }
    let db = store
        .call("doctor", CallKind::Read, |c| async move {
            c.check_database().await
        })
        .await
        .map_err(unwrap);
    let (tenant, database) = (&cfg.chroma.tenant, &cfg.chroma.database);
    out.push(match db {
        Ok(()) => Check::ok(
            "chroma_database",
            format!("{ep}: tenant {tenant:?}, database {database:?} exist"),
        ),
        Err(e) => Check::fail(
            "chroma_database",
            format!("{ep}: tenant {tenant:?} / database {database:?}: {e}"),
            "create the database in Chroma (e.g. Python: `chromadb.AdminClient(...).create_database(NAME, TENANT)`) or correct chroma.tenant / chroma.database; a missing database would back up nothing",
        ),
    });
    out
}

// ----------------------------------------------------------- repository

fn storage_options(o: &Options) -> StorageOptions {
    StorageOptions {
        env: Env::process(),
        connect_timeout: o.timeout.min(Duration::from_secs(10)),
        read_timeout: o.timeout,
        max_retries: 1,
        ..StorageOptions::default()
    }
}

fn storage_fix(e: &BackupError) -> String {
    match e {
        BackupError::Storage(s) => match s.kind() {
            ErrorKind::PermissionDenied => "check the backend's credentials in the service's environment (EnvironmentFile= or LoadCredential=; runbook: \"Configure a backend\") and that they may read, write, list and delete under the prefix".into(),
            ErrorKind::Transient => "check that this host reaches the storage endpoint (DNS, firewall, proxy) and that the service is up".into(),
            ErrorKind::Config => "fix backup.storage_path or the backend's environment variables (runbook: \"Configure a backend\")".into(),
            _ if s.to_string().contains("does not exist") => "create the bucket/container, or correct backup.storage_path".into(),
            _ => "see the error; `chromaprod backups check` reads every object".into(),
        },
        BackupError::Format(_) | BackupError::Corrupt(_) | BackupError::BadObject { .. } => {
            "the repository's config object is unreadable: run `chromaprod backups check`; restore from another copy of the repository if it is damaged".into()
        }
        _ => "see the error above".into(),
    }
}

/// The service user, for permission checks of a local repository.
struct ServiceUser {
    name: String,
    uid: u32,
    gids: Vec<u32>,
    /// Set when the configured user does not exist and the current one is used.
    note: Option<String>,
}

fn service_user(o: &Options) -> ServiceUser {
    use nix::unistd::{getgrouplist, Gid, User};
    let found = User::from_name(&o.service_user).ok().flatten();
    let (user, note) = match found {
        Some(u) => (Some(u), None),
        None => (
            User::from_uid(nix::unistd::geteuid()).ok().flatten(),
            Some(format!(
                "user {} does not exist on this host; checked as the current user",
                o.service_user
            )),
        ),
    };
    match user {
        Some(u) => {
            let gids = std::ffi::CString::new(u.name.clone())
                .ok()
                .and_then(|c| getgrouplist(&c, u.gid).ok())
                .unwrap_or_else(|| vec![u.gid])
                .into_iter()
                .map(Gid::as_raw)
                .collect();
            ServiceUser {
                name: u.name,
                uid: u.uid.as_raw(),
                gids,
                note,
            }
        }
        None => ServiceUser {
            name: format!("uid {}", nix::unistd::geteuid()),
            uid: nix::unistd::geteuid().as_raw(),
            gids: vec![nix::unistd::getegid().as_raw()],
            note,
        },
    }
}

/// Whether `user` may create and delete entries in directory `meta`.
fn dir_writable(meta: &std::fs::Metadata, user: &ServiceUser) -> bool {
    if user.uid == 0 {
        return true;
    }
    let mode = meta.mode();
    if meta.uid() == user.uid {
        mode & 0o300 == 0o300
    } else if user.gids.contains(&meta.gid()) {
        mode & 0o030 == 0o030
    } else {
        mode & 0o003 == 0o003
    }
}

fn describe_owner(path: &Path, meta: &std::fs::Metadata) -> String {
    let user = nix::unistd::User::from_uid(meta.uid().into())
        .ok()
        .flatten()
        .map_or_else(|| meta.uid().to_string(), |u| u.name);
    let group = nix::unistd::Group::from_gid(meta.gid().into())
        .ok()
        .flatten()
        .map_or_else(|| meta.gid().to_string(), |g| g.name);
    format!(
        "{} ({user}:{group} {:04o})",
        path.display(),
        meta.mode() & 0o7777
    )
}

/// Directories of a local repository (the root, its subdirectories and
/// the fan-out directories below them) the service user cannot write.
fn unwritable_dirs(root: &Path, user: &ServiceUser) -> Vec<String> {
    let mut bad = Vec::new();
    let mut check = |p: &Path| {
        if let Ok(meta) = std::fs::metadata(p) {
            if meta.is_dir() && !dir_writable(&meta, user) {
                bad.push(describe_owner(p, &meta));
            }
        }
    };
    check(root);
    let subdirs = |p: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(p)
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default()
    };
    for sub in subdirs(root) {
        check(&sub);
        for fan in subdirs(&sub) {
            check(&fan);
        }
    }
    bad
}

/// The nearest existing ancestor of `path`.
fn existing_ancestor(path: &Path) -> Option<&Path> {
    path.ancestors().skip(1).find(|p| p.exists())
}

async fn check_repository(cfg: &Config, key: Option<&MasterKey>, o: &Options) -> Vec<Check> {
    let url = &cfg.backup.storage_path;
    let location = match Location::parse(url) {
        Ok(l) => l,
        Err(e) => {
            return vec![
                Check::fail("repository", e.to_string(), "fix backup.storage_path"),
                Check::skip("locks", "needs a repository"),
                Check::skip("repository_write", "needs a repository"),
                Check::skip("clock", "needs a repository"),
            ]
        }
    };
    let user = service_user(o);
    let as_user = match &user.note {
        Some(n) => format!("{} ({n})", user.name),
        None => user.name.clone(),
    };
    let mut out = Vec::new();

    // A local repository that does not exist yet: never create it here
    // (as root, doctor would leave directories the service cannot write).
    if let Location::Local(path) = &location {
        if !path.exists() {
            out.push(Check::warn(
                "repository",
                format!("no repository at {} yet", path.display()),
                "nothing to do if this is a new installation: the first backup creates it (`chromaprod backup --full --wait`); otherwise correct backup.storage_path",
            ));
            out.push(Check::skip("locks", "no repository yet"));
            out.push(match existing_ancestor(path) {
                Some(parent) => match std::fs::metadata(parent) {
                    Ok(meta) if dir_writable(&meta, &user) => Check::ok(
                        "repository_write",
                        format!("{} can create {}: {} is writable", as_user, path.display(), parent.display()),
                    ),
                    Ok(meta) => Check::fail(
                        "repository_write",
                        format!("{} cannot create {}: {}", as_user, path.display(), describe_owner(parent, &meta)),
                        format!(
                            "sudo install -d -o {u} -g {u} -m 0700 {p} (outside /var/lib/chromaprod, also add ReadWritePaths={p} to the unit in a drop-in)",
                            u = user.name,
                            p = path.display()
                        ),
                    ),
                    Err(e) => Check::fail("repository_write", format!("{}: {e}", parent.display()), "fix backup.storage_path"),
                },
                None => Check::fail("repository_write", format!("no directory above {} exists", path.display()), "fix backup.storage_path"),
            });
            out.push(Check::skip(
                "clock",
                "no local repository to write a probe into yet",
            ));
            return out;
        }
    }

    let options = storage_options(o);
    let repo = match Repository::open_keyless(url, &options).await {
        Ok(repo) => Some(repo),
        Err(BackupError::NoRepository { .. }) => {
            out.push(Check::warn(
                "repository",
                format!("no repository at {url} yet"),
                "nothing to do if this is a new installation: the first backup creates it (`chromaprod backup --full --wait`); otherwise correct backup.storage_path",
            ));
            None
        }
        Err(e) => {
            out.push(Check::fail("repository", e.to_string(), storage_fix(&e)));
            out.push(Check::skip("locks", "needs a reachable repository"));
            out.push(Check::skip(
                "repository_write",
                "needs a reachable repository",
            ));
            out.push(check_clock(&location, None, cfg, o).await);
            return out;
        }
    };

    if let Some(repo) = &repo {
        out.push(repository_state(repo, url, cfg, key).await);
        out.push(check_locks(repo, cfg).await);
    } else {
        out.push(Check::skip("locks", "no repository yet"));
    }

    // Writable: for a local repository, by the service user (directory
    // permissions), then a probe object if this process acts for that user.
    let backend = match &repo {
        Some(r) => r.backend().clone(),
        None => match storage::open(url, &options) {
            Ok(b) => b,
            Err(e) => {
                let e = BackupError::from(e);
                out.push(Check::fail(
                    "repository_write",
                    e.to_string(),
                    storage_fix(&e),
                ));
                out.push(check_clock(&location, None, cfg, o).await);
                return out;
            }
        },
    };
    let mut probe_time = None;
    match &location {
        Location::Local(root) => {
            let bad = unwritable_dirs(root, &user);
            let euid = nix::unistd::geteuid().as_raw();
            if !bad.is_empty() {
                let shown: Vec<&str> = bad.iter().take(3).map(String::as_str).collect();
                out.push(Check::fail(
                    "repository_write",
                    format!(
                        "{} cannot write {} director{} of the repository: {}{}",
                        as_user,
                        bad.len(),
                        if bad.len() == 1 { "y" } else { "ies" },
                        shown.join(", "),
                        if bad.len() > 3 { ", …" } else { "" }
                    ),
                    format!(
                        "sudo chown -R {u}:{u} {p} (files created by commands run as root belong to root; run them as the service user, or through the daemon)",
                        u = user.name,
                        p = root.display()
                    ),
                ));
            } else if euid == 0 || euid == user.uid {
                match probe(&*backend, Some(root)).await {
                    Ok(p) => {
                        probe_time = p.local_mtime.map(|m| (p.sent, p.received, m));
                        out.push(Check::ok(
                            "repository_write",
                            format!("{} can write {}; a probe object was created, read back and deleted in {} ms", as_user, root.display(), p.millis),
                        ));
                    }
                    Err(e) => out.push(Check::fail(
                        "repository_write",
                        e.to_string(),
                        storage_fix(&e),
                    )),
                }
            } else {
                out.push(Check::ok(
                    "repository_write",
                    format!("{} can write every directory of {} (no probe written: this process runs as another user)", as_user, root.display()),
                ));
            }
        }
        _ => match probe(&*backend, None).await {
            Ok(p) => out.push(Check::ok(
                "repository_write",
                format!(
                    "a probe object was created, read back and deleted at {} in {} ms",
                    backend.describe(),
                    p.millis
                ),
            )),
            Err(e) => out.push(Check::fail(
                "repository_write",
                e.to_string(),
                storage_fix(&e),
            )),
        },
    }
    out.push(check_clock(&location, probe_time, cfg, o).await);
    out
}

/// The repository's state and whether the configured key opens it.
async fn repository_state(
    repo: &Repository,
    url: &str,
    cfg: &Config,
    key: Option<&MasterKey>,
) -> Check {
    const NAME: &str = "repository";
    let snapshots = match repo.snapshot_ids().await {
        Ok(ids) => ids.len(),
        Err(e) => return Check::fail(NAME, e.to_string(), storage_fix(&e)),
    };
    let what = format!(
        "{} (format {}, {}, {} snapshot(s))",
        repo.location,
        repo.config.format_version,
        if repo.config.encrypted {
            "encrypted"
        } else {
            "not encrypted"
        },
        snapshots
    );
    match (repo.config.encrypted, cfg.backup.encrypt) {
        (true, false) => {
            return Check::fail(
                NAME,
                format!("{what}: the repository is encrypted but backup.encrypt = false, so backups and restores are refused"),
                "set backup.encrypt = true and provide the repository's key (backup.key_file or LoadCredential=backup-key:…)",
            )
        }
        (false, true) => {
            return Check::fail(
                NAME,
                format!("{what}: backup.encrypt = true but the repository is not encrypted, so backups are refused"),
                "point backup.storage_path at a new location to start an encrypted repository, or set backup.encrypt = false",
            )
        }
        _ => {}
    }
    if !repo.config.encrypted {
        return Check::warn(
            NAME,
            format!("{what} is reachable, but its snapshots can be read and changed undetected by anyone who can write to it"),
            crate::config::PLAINTEXT_FIX,
        );
    }
    let Some(key) = key else {
        return Check::ok(
            NAME,
            format!("{what} is reachable; no usable key to try on it (see the key check)"),
        );
    };
    match Repository::open_on(repo.backend().clone(), url, Some(key), false).await {
        Ok(_) => Check::ok(NAME, format!("{what} is reachable and key {} opens it", key.key_id())),
        Err(e) => Check::fail(
            NAME,
            format!("{what}: {e}"),
            "configure a key that was added to this repository (`chromaprod key list` on a host where backups work shows their ids); if every key is lost the snapshots cannot be read (runbook: \"Lose it\")",
        ),
    }
}

/// What a probe write measured.
struct Probe {
    millis: u128,
    sent: SystemTime,
    received: SystemTime,
    /// A local repository: the probe file's modification time.
    local_mtime: Option<SystemTime>,
}

/// Creates a uniquely named object at the repository's top level, reads it
/// back, and deletes it. Nothing in the repository format lists the top
/// level, so a probe left behind by a killed doctor is inert.
async fn probe(backend: &dyn Backend, local_root: Option<&Path>) -> Result<Probe, BackupError> {
    let id = format!("doctor-probe-{:016x}", rand::random::<u64>());
    let key = ObjectKey::new(&id).map_err(BackupError::Storage)?;
    let body = serde_json::to_vec(&LockInfo {
        holder: hostname(),
        pid: std::process::id(),
        purpose: "chromaprod doctor write probe".into(),
        exclusive: false,
        created_ms: now_ms(),
        expires_ms: now_ms() + 60_000,
    })
    .map_err(|e| BackupError::Corrupt(e.to_string()))?;
    let started = std::time::Instant::now();
    let sent = SystemTime::now();
    let written = backend
        .write_if_absent(&key, Bytes::from(body.clone()))
        .await?;
    let received = SystemTime::now();
    let local_mtime = local_root.and_then(|r| std::fs::metadata(r.join(&id)).ok()?.modified().ok());
    let result = async {
        if written != Written::Created {
            return Err(BackupError::Corrupt(format!(
                "probe object {id} already existed"
            )));
        }
        let back = backend.read(&key).await?;
        if back.as_ref() != body.as_slice() {
            return Err(BackupError::Corrupt(format!(
                "probe object {id} read back {} bytes different from the {} written",
                back.len(),
                body.len()
            )));
        }
        Ok(())
    }
    .await;
    let deleted = backend.delete(&key).await;
    result?;
    deleted?;
    if backend.head(&key).await?.is_some() {
        return Err(BackupError::Corrupt(format!(
            "probe object {id} is still there after delete"
        )));
    }
    Ok(Probe {
        millis: started.elapsed().as_millis(),
        sent,
        received,
        local_mtime,
    })
}

// ----------------------------------------------------------------- locks

/// Locks sorted by what they say about the hosts holding them.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LockSummary {
    pub live: Vec<LockInfo>,
    pub expired: Vec<LockInfo>,
    /// Created later than now (beyond `tolerance_ms`): the holder's clock is ahead.
    pub from_future: Vec<LockInfo>,
}

pub fn classify_locks(locks: Vec<LockInfo>, now_ms: u64, tolerance_ms: u64) -> LockSummary {
    let mut s = LockSummary::default();
    for l in locks {
        if l.created_ms > now_ms.saturating_add(tolerance_ms) {
            s.from_future.push(l);
        } else if l.expires_ms < now_ms {
            s.expired.push(l);
        } else {
            s.live.push(l);
        }
    }
    s
}

fn describe_lock(l: &LockInfo, now: u64) -> String {
    let when = if l.expires_ms >= now {
        format!("expires in {}s", (l.expires_ms - now) / 1000)
    } else {
        format!("expired {}s ago", (now - l.expires_ms) / 1000)
    };
    format!(
        "{} {} lock of {} (pid {}), {when}",
        if l.exclusive { "exclusive" } else { "shared" },
        l.purpose,
        l.holder,
        l.pid
    )
}

async fn check_locks(repo: &Repository, cfg: &Config) -> Check {
    const NAME: &str = "locks";
    let objects = match repo.list("locks").await {
        Ok(m) => m.len(),
        Err(e) => return Check::fail(NAME, e.to_string(), storage_fix(&e)),
    };
    let locks = match list_locks(repo).await {
        Ok(l) => l,
        Err(e) => return Check::fail(NAME, e.to_string(), storage_fix(&e)),
    };
    let unreadable = objects.saturating_sub(locks.len());
    let now = now_ms();
    let (_, fail) = clock::limits(cfg.backup.lock_ttl);
    let tolerance = u64::try_from(fail.as_millis()).unwrap_or(u64::MAX);
    let s = classify_locks(locks, now, tolerance);
    if let Some(l) = s.from_future.first() {
        return Check::fail(
            NAME,
            format!(
                "a lock of {} (pid {}) was created {}s in the future: that host's clock is ahead, so leases between hosts cannot be trusted",
                l.holder,
                l.pid,
                (l.created_ms - now) / 1000
            ),
            SYNC_CLOCK,
        );
    }
    if !s.expired.is_empty() {
        let shown: Vec<String> = s
            .expired
            .iter()
            .take(3)
            .map(|l| describe_lock(l, now))
            .collect();
        return Check::warn(
            NAME,
            format!(
                "{} expired lock(s) left by processes that stopped without releasing them: {}",
                s.expired.len(),
                shown.join("; ")
            ),
            "nothing to do unless those processes still run: the next backup, prune or verify removes expired locks",
        );
    }
    if unreadable > 0 {
        return Check::warn(
            NAME,
            format!("{unreadable} object(s) under locks/ are not readable locks"),
            "the next lock holder removes them; if they keep appearing, something else writes into the repository",
        );
    }
    if s.live.is_empty() {
        Check::ok(NAME, "no locks held")
    } else {
        let shown: Vec<String> = s.live.iter().map(|l| describe_lock(l, now)).collect();
        Check::ok(
            NAME,
            format!("{} live lock(s): {}", s.live.len(), shown.join("; ")),
        )
    }
}

// ----------------------------------------------------------------- clock

async fn check_clock(
    location: &Location,
    local_probe: Option<(SystemTime, SystemTime, SystemTime)>,
    cfg: &Config,
    o: &Options,
) -> Check {
    const NAME: &str = "clock";
    let (skew, source) = match location {
        Location::Local(root) => match local_probe {
            // Local file systems stamp files with the kernel's coarse clock.
            Some((sent, received, mtime)) => (
                Skew::measure(sent, received, mtime, Duration::from_millis(20)),
                format!(
                    "the modification time of a probe file in {}",
                    root.display()
                ),
            ),
            None => return Check::skip(NAME, "needs a probe file in the local repository"),
        },
        other => {
            let Some(endpoint) = clock::backend_endpoint(other, &Env::process()) else {
                return Check::skip(
                    NAME,
                    "the backend's endpoint is not known from the environment",
                );
            };
            match clock::skew_from_http(&endpoint, o.timeout).await {
                Ok(s) => (s, format!("the Date header of {endpoint}")),
                Err(e) => {
                    return Check::warn(
                        NAME,
                        format!("cannot measure the skew: {e}"),
                        "check that this host reaches the storage endpoint",
                    )
                }
            }
        }
    };
    let (status, text) = clock::verdict(skew, cfg.backup.lock_ttl);
    let summary = format!("{text} (from {source})");
    match status {
        Status::Ok => Check::ok(NAME, summary),
        Status::Warn => Check::warn(NAME, summary, SYNC_CLOCK),
        _ => Check::fail(NAME, summary, SYNC_CLOCK),
    }
}

// ---------------------------------------------------------------- socket

async fn check_socket(path: &Path, cfg: Option<&Config>, o: &Options) -> Vec<Check> {
    use std::os::unix::fs::FileTypeExt as _;
    const NAME: &str = "socket";
    let shown = path.display();
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return vec![Check::warn(
                NAME,
                format!("no control socket at {shown}: the daemon is not running"),
                "start it: `systemctl enable --now chromaprod` (if it stopped, `journalctl -u chromaprod -e` says why); restores and backups also work without it",
            )]
        }
        Err(e) => {
            return vec![Check::fail(
                NAME,
                format!("cannot inspect {shown}: {e}"),
                "run as root or as a member of the socket's group",
            )]
        }
    };
    if !meta.file_type().is_socket() {
        return vec![Check::fail(
            NAME,
            format!("{shown} exists and is not a socket: the daemon cannot start"),
            "move it away, or set control.socket_path to another path",
        )];
    }
    let mode = meta.mode() & 0o777;
    let group = nix::unistd::Group::from_gid(meta.gid().into())
        .ok()
        .flatten()
        .map_or_else(|| meta.gid().to_string(), |g| g.name);
    if mode & 0o007 != 0 {
        return vec![Check::fail(
            NAME,
            format!("{shown} has mode {mode:04o}: every local user can control the daemon (backups, restores, deletes, reloads)"),
            "set control.socket_mode = \"0660\" (and control.socket_group) in the configuration, then `chromaprod reload`",
        )];
    }
    let options = control::CallOptions {
        connect_timeout: o.timeout.min(Duration::from_secs(5)),
        idle_timeout: o.timeout,
        ..control::CallOptions::default()
    };
    let status = control::call_with(path, Command::Status, &options, |_| {}).await;
    let v = match status {
        Ok(v) => v,
        Err(ClientError::DaemonNotRunning { .. }) => {
            return vec![Check::warn(
                NAME,
                format!("{shown} is a stale socket: no daemon listens on it"),
                "start the daemon (`systemctl start chromaprod`; it replaces the stale socket); `journalctl -u chromaprod -e` says why it stopped",
            )]
        }
        Err(e @ ClientError::PermissionDenied { .. }) => {
            return vec![Check::fail(NAME, e.to_string(), format!("members of group {group} may use the socket: `sudo usermod -aG {group} $USER`, then log in again"))]
        }
        Err(e) => {
            return vec![Check::fail(
                NAME,
                format!("{shown}: {e}"),
                "the daemon does not answer: `systemctl status chromaprod` and `journalctl -u chromaprod -e`",
            )]
        }
    };
    let answer = format!(
        "daemon {} (pid {}) answers on {shown} (mode {mode:04o}, group {group}); {}",
        v["version"].as_str().unwrap_or("?"),
        v["pid"],
        v["health"].as_str().unwrap_or("health unknown")
    );
    let reload = &v["config"]["last_reload"];
    if reload["ok"] == serde_json::Value::Bool(false) {
        return vec![Check::warn(
            NAME,
            format!(
                "{answer}; its last reload was rejected: {}",
                one_line(reload["error"].as_str().unwrap_or("no reason given"))
            ),
            "fix the file (`chromaprod validate` lists every problem), then `chromaprod reload`; until then the daemon keeps the configuration it had",
        )];
    }
    if let Some(cfg) = cfg {
        let want_mode = cfg.control.socket_mode;
        if mode != want_mode {
            return vec![Check::warn(
                NAME,
                format!("{answer}; but control.socket_mode is {want_mode:04o}"),
                "`chromaprod reload` (or `systemctl reload chromaprod`) applies control.socket_mode to the running socket (or correct the setting)",
            )];
        }
        if let Some(want) = cfg
            .control
            .socket_group
            .as_deref()
            .filter(|g| !g.is_empty())
        {
            if want != group {
                return vec![Check::warn(
                    NAME,
                    format!("{answer}; but control.socket_group is {want}"),
                    "`chromaprod reload` (or `systemctl reload chromaprod`) applies control.socket_group to the running socket (or correct the setting)",
                )];
            }
        }
    }
    vec![Check::ok(NAME, answer)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock(created_ms: u64, expires_ms: u64) -> LockInfo {
        LockInfo {
            holder: "h".into(),
            pid: 1,
            purpose: "backup".into(),
            exclusive: false,
            created_ms,
            expires_ms,
        }
    }

    #[test]
    fn locks_are_live_expired_or_from_the_future() {
        let now = 1_000_000;
        let s = classify_locks(
            vec![
                lock(now - 10, now + 100_000),
                lock(now - 300_000, now - 180_000),
                lock(now + 3_600_000, now + 3_720_000),
                // A little ahead: within tolerance.
                lock(now + 2_000, now + 122_000),
            ],
            now,
            40_000,
        );
        assert_eq!(s.live.len(), 2);
        assert_eq!(s.expired, vec![lock(now - 300_000, now - 180_000)]);
        assert_eq!(s.from_future, vec![lock(now + 3_600_000, now + 3_720_000)]);
    }

    #[test]
    fn only_api_1_is_supported() {
        assert!(api_version_supported("1.0.0").is_ok());
        assert!(api_version_supported("\"1.3.2\"").is_ok());
        assert!(api_version_supported("0.5.23").is_err());
        assert!(api_version_supported("2.0.0").is_err());
        assert!(api_version_supported("garbage").is_err());
    }

    #[test]
    fn directory_permissions_are_judged_for_the_service_user() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
            .expect("chmod");
        let meta = std::fs::metadata(dir.path()).expect("meta");
        let owner = ServiceUser {
            name: "owner".into(),
            uid: meta.uid(),
            gids: vec![meta.gid()],
            note: None,
        };
        let stranger = ServiceUser {
            name: "stranger".into(),
            uid: 54_321,
            gids: vec![54_321],
            note: None,
        };
        let member = ServiceUser {
            name: "member".into(),
            uid: 54_322,
            gids: vec![meta.gid()],
            note: None,
        };
        assert!(dir_writable(&meta, &owner) || owner.uid == 0);
        assert!(!dir_writable(&meta, &stranger));
        assert!(!dir_writable(&meta, &member));
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o770))
            .expect("chmod");
        let meta = std::fs::metadata(dir.path()).expect("meta");
        assert!(dir_writable(&meta, &member));
        assert_eq!(unwritable_dirs(dir.path(), &stranger).len(), 1);
    }
}
