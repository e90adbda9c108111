//! The `chroma`, `chroma_version` and `chroma_database` checks, per endpoint.

use std::sync::Arc;

use crate::chroma::{CallKind, ChromaError, ProductionChromaStore};
use crate::config::Config;
use crate::doctor::{Check, Options};
use crate::observe::MetricsCollector;

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

pub(super) async fn check_chroma(cfg: &Config, o: &Options) -> Vec<Check> {
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
                "set chroma.auth_token_file to the file holding Chroma's token (under systemd: LoadCredential=chroma-token:… with auth_token_file unset) and check chroma.auth_header",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_api_1_is_supported() {
        assert!(api_version_supported("1.0.0").is_ok());
        assert!(api_version_supported("\"1.3.2\"").is_ok());
        assert!(api_version_supported("0.5.23").is_err());
        assert!(api_version_supported("2.0.0").is_err());
        assert!(api_version_supported("garbage").is_err());
    }
}
