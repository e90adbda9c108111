//! `chromaprod key …`: repository keys, handled here (never through the
//! socket) with the key file and the backend's credentials of the caller.

use serde_json::Value;

use chromaprod::config;
use chromaprod::observe::audit;

use super::args::{Cli, KeyVerb};
use super::out::{errln, outln};
use super::remote::runtime;
use super::units::{text, time, Table};

/// Runs a key command; 0 on success.
pub fn run(cli: &Cli, verb: &KeyVerb) -> i32 {
    use chromaprod::backup::crypto::{KeyId, MasterKey};
    use chromaprod::backup::repository::Repository;
    if let KeyVerb::Generate { file } = verb {
        return match MasterKey::generate().and_then(|k| k.write_new_key_file(file).map(|()| k)) {
            Ok(k) => {
                if cli.json {
                    outln!(
                        "{}",
                        serde_json::json!({ "generated": k.key_id().to_string(), "file": file })
                    );
                } else {
                    outln!("wrote a new key {} to {}; back it up: without a key the backups cannot be read", k.key_id(), file.display());
                }
                0
            }
            Err(e) => {
                errln!("chromaprod: {e}");
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
                outln!("{v}");
            } else {
                render(verb, &v);
            }
            0
        }
        Err(e) => {
            errln!("chromaprod: {e}");
            1
        }
    }
}

/// A key command's result for people.
fn render(verb: &KeyVerb, v: &Value) {
    match verb {
        KeyVerb::List => {
            let mut t = Table::new(&["KEY ID", "ADDED"]);
            for k in v["keys"].as_array().into_iter().flatten() {
                t.row(vec![text(&k["id"]), time(&k["created"])]);
            }
            t.print();
        }
        KeyVerb::Add { .. } => outln!(
            "key {} added; it opens the repository from now on",
            text(&v["added"])
        ),
        KeyVerb::Remove { .. } => outln!(
            "key {} removed; it no longer opens the repository",
            text(&v["removed"])
        ),
        KeyVerb::Generate { .. } => {}
    }
}
