//! `restore`: collections of a snapshot into Chroma — loaded into a staging
//! collection, verified, then swapped in under the name, or with
//! `--mode delta` only what differs written into the live collection after a
//! restore point — onto the configured server or another one.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{resolve_id, Context, Progress};
use crate::backup::{BackupError, BackupManager, RestoreMode, RestoreOptions};
use crate::chroma::ProductionChromaStore;
use crate::config::Config;
use crate::observe::MetricsCollector;
use crate::secret::Secret;

/// Restore snapshot `id` (or `latest`).
#[derive(Debug, Clone, PartialEq)]
pub struct Restore {
    pub id: String,
    /// Collections of the snapshot to restore (empty: all).
    pub collections: Vec<String>,
    /// New name (one collection only).
    pub as_name: Option<String>,
    /// Another Chroma server to restore onto (default: the configured one).
    pub target: Option<String>,
    /// The token for `target` (see [`target_config`]).
    pub target_token: Option<Secret<String>>,
    /// Allow `target_token` over plain http to a target that is not loopback.
    pub allow_plain_http: bool,
    pub mode: RestoreMode,
    pub dry_run: bool,
    pub keep_previous: bool,
    /// With `RestoreMode::Delta`: keep live records the snapshot lacks.
    pub keep_extra: bool,
    /// Skip the recall check of the restored collections.
    pub no_recall: bool,
}

impl Restore {
    pub(super) async fn run(
        self,
        ctx: &Context,
        progress: &Progress,
        cancel: &CancellationToken,
    ) -> Result<RestoreOutcome, BackupError> {
        // Checked before anything else is touched.
        let target_cfg = self
            .target
            .as_deref()
            .map(|url| {
                target_config(
                    &ctx.config,
                    url,
                    self.target_token.as_ref(),
                    self.allow_plain_http,
                )
            })
            .transpose()?;
        let m = ctx.backups(false).await?;
        let m = match target_cfg {
            Some(cfg) => {
                // Its own metrics: the target's series must not replace
                // the configured endpoints' in /metrics.
                let store = ProductionChromaStore::new(&cfg, Arc::new(MetricsCollector::new()))?;
                BackupManager::with_repository(store, Arc::new(cfg), m.repo.clone())
            }
            None => m,
        };
        let id = resolve_id(&m, &self.id).await?;
        let opts = RestoreOptions {
            collections: self.collections,
            as_name: self.as_name,
            mode: self.mode,
            dry_run: self.dry_run,
            keep_previous: self.keep_previous,
            keep_extra: self.keep_extra,
            skip_recall: self.no_recall,
        };
        m.restore(&id, &opts, progress, cancel).await
    }
}

/// What a restore did (or, with `dry_run`, would do): `{"snapshot",
/// "restored": [...]}`, `{"snapshot", "dry_run", "plan": [...]}`, or for a
/// delta restore `{"snapshot", "dry_run", "restore_point", "delta": [...]}`.
pub use crate::backup::RestoreOutcome;

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
