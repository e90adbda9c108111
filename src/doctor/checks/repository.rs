//! The `repository` and `repository_write` checks: reachable, opened by the
//! configured key, writable by the service user (a probe object).

use std::path::Path;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::clock::check_clock;
use super::locks::check_locks;
use super::service_user::{
    describe_owner, dir_writable, existing_ancestor, service_user, unwritable_dirs,
};
use crate::backup::crypto::MasterKey;
use crate::backup::lock::{hostname, now_ms, LockInfo};
use crate::backup::repository::Repository;
use crate::backup::BackupError;
use crate::config::Config;
use crate::doctor::{Check, Options};
use crate::storage::{self, Backend, Env, ErrorKind, Location, ObjectKey, StorageOptions, Written};

fn storage_options(o: &Options) -> StorageOptions {
    StorageOptions {
        env: Env::process(),
        connect_timeout: o.timeout.min(Duration::from_secs(10)),
        read_timeout: o.timeout,
        max_retries: 1,
        ..StorageOptions::default()
    }
}

pub(super) fn storage_fix(e: &BackupError) -> String {
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

pub(super) async fn check_repository(
    cfg: &Config,
    key: Option<&MasterKey>,
    o: &Options,
) -> Vec<Check> {
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
