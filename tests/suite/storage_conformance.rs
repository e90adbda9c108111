//! One conformance suite for every storage backend: local disk, S3 (moto),
//! Azure Blob (Azurite) and GCS (fake-gcs-server). Each backend's test starts
//! its emulator, runs the same checks, then proves that configured secrets
//! never appear in `Debug`/`Display` of the backend or of its errors.
//!
//! `cargo test --test suite storage_conformance:: -- --nocapture` prints the 64 MiB
//! round-trip timings.

use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chromaprod::storage::{self, Backend, Env, ErrorKind, ObjectKey, StorageOptions, Written};
use common::emulators::{self, AZURITE_ACCOUNT, AZURITE_KEY};

const BIG: usize = 64 << 20;

fn key(s: &str) -> ObjectKey {
    ObjectKey::new(s).unwrap_or_else(|e| panic!("test key {s}: {e}"))
}

fn options(env: Env) -> StorageOptions {
    StorageOptions {
        env,
        retry_base_delay: Duration::from_millis(20),
        ..StorageOptions::default()
    }
}

/// Deterministic, incompressible-looking bytes.
fn pattern(len: usize, seed: u64) -> Bytes {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    Bytes::from(v)
}

async fn sorted_keys(b: &dyn Backend, prefix: Option<&str>) -> Vec<String> {
    let p = prefix.map(key);
    let mut keys: Vec<String> = b
        .list(p.as_ref())
        .await
        .unwrap_or_else(|e| panic!("list {prefix:?}: {e}"))
        .into_iter()
        .map(|m| m.key.to_string())
        .collect();
    keys.sort();
    keys
}

/// The checks every backend must pass.
async fn conformance(b: Arc<dyn Backend>) {
    let name = b.describe();
    let ctx = |what: &str| format!("[{name}] {what}");

    // Empty repository.
    assert!(
        sorted_keys(&*b, None).await.is_empty(),
        "{}",
        ctx("fresh backend lists nothing")
    );

    // Round trip, head.
    let k = key("a/b/c.bin");
    let data = Bytes::from_static(b"hello, chromaprod");
    assert_eq!(
        b.write_if_absent(&k, data.clone()).await.expect("write"),
        Written::Created
    );
    assert_eq!(
        b.read(&k).await.expect("read"),
        data,
        "{}",
        ctx("round trip")
    );
    let meta = b.head(&k).await.expect("head").expect("present");
    assert_eq!(
        (meta.key.clone(), meta.size),
        (k.clone(), data.len() as u64),
        "{}",
        ctx("head")
    );
    assert!(
        b.head(&key("a/b/absent"))
            .await
            .expect("head missing")
            .is_none(),
        "{}",
        ctx("head missing")
    );

    // Empty object.
    let empty = key("a/empty");
    assert_eq!(
        b.write_if_absent(&empty, Bytes::new())
            .await
            .expect("write empty"),
        Written::Created
    );
    assert!(
        b.read(&empty).await.expect("read empty").is_empty(),
        "{}",
        ctx("empty object")
    );

    // Ranges.
    assert_eq!(
        &b.read_range(&k, 7..17).await.expect("range")[..],
        b"chromaprod",
        "{}",
        ctx("range")
    );
    assert_eq!(
        &b.read_range(&k, 0..1).await.expect("range")[..],
        b"h",
        "{}",
        ctx("first byte")
    );
    assert_eq!(
        &b.read_range(&k, 7..1000).await.expect("range past end")[..],
        b"chromaprod",
        "{}",
        ctx("range past end is cut")
    );
    assert!(
        b.read_range(&k, 5..5)
            .await
            .expect("empty range")
            .is_empty(),
        "{}",
        ctx("empty range")
    );
    let err = b
        .read_range(&k, 100..200)
        .await
        .expect_err("range beyond the object");
    assert!(
        !matches!(err.kind(), ErrorKind::NotFound),
        "{}: {err}",
        ctx("range beyond object")
    );
    let err = b
        .read_range(&key("a/none"), 0..10)
        .await
        .expect_err("range of missing");
    assert_eq!(
        err.kind(),
        ErrorKind::NotFound,
        "{}: {err}",
        ctx("range of missing")
    );

    // Listing: nested keys, segment-wise prefixes, empty results.
    for (i, k) in ["list/x", "list/y/z", "list/y/w/v", "listing/q"]
        .iter()
        .enumerate()
    {
        let body = pattern(10 + i, i as u64);
        assert_eq!(
            b.write_if_absent(&key(k), body).await.expect("write list"),
            Written::Created
        );
    }
    assert_eq!(
        sorted_keys(&*b, Some("list")).await,
        ["list/x", "list/y/w/v", "list/y/z"],
        "{}",
        ctx("list prefix is segment-wise")
    );
    assert_eq!(
        sorted_keys(&*b, Some("list/y")).await,
        ["list/y/w/v", "list/y/z"],
        "{}",
        ctx("nested prefix")
    );
    assert!(
        sorted_keys(&*b, Some("nothing/here")).await.is_empty(),
        "{}",
        ctx("unknown prefix")
    );
    assert!(
        sorted_keys(&*b, Some("list/x")).await.is_empty(),
        "{}",
        ctx("an object is not a directory")
    );
    let all = sorted_keys(&*b, None).await;
    assert_eq!(
        all,
        [
            "a/b/c.bin",
            "a/empty",
            "list/x",
            "list/y/w/v",
            "list/y/z",
            "listing/q"
        ],
        "{}",
        ctx("list everything")
    );
    let sizes: Vec<u64> = {
        let mut m = b.list(Some(&key("list"))).await.expect("list");
        m.sort_by(|x, y| x.key.cmp(&y.key));
        m.into_iter().map(|m| m.size).collect()
    };
    assert_eq!(sizes, [10, 12, 11], "{}", ctx("listed sizes"));

    // Create-only: a second write never overwrites.
    let again = b
        .write_if_absent(&k, Bytes::from_static(b"other content"))
        .await
        .expect("second write");
    assert_eq!(again, Written::AlreadyExists, "{}", ctx("second write"));
    assert_eq!(
        b.read(&k).await.expect("read"),
        data,
        "{}",
        ctx("original kept")
    );

    // Missing objects.
    let err = b.read(&key("no/such/object")).await.expect_err("missing");
    assert_eq!(
        err.kind(),
        ErrorKind::NotFound,
        "{}: {err}",
        ctx("read missing")
    );
    assert!(
        err.to_string().contains("no/such/object"),
        "{}: {err}",
        ctx("error names the key")
    );
    assert!(!err.is_transient());

    // Delete is idempotent.
    b.delete(&k).await.expect("delete");
    b.delete(&k).await.expect("delete again");
    b.delete(&key("never/written"))
        .await
        .expect("delete never written");
    assert_eq!(
        b.read(&k).await.expect_err("deleted").kind(),
        ErrorKind::NotFound,
        "{}",
        ctx("deleted")
    );
    assert!(
        b.head(&k).await.expect("head").is_none(),
        "{}",
        ctx("head after delete")
    );
    assert_eq!(
        b.write_if_absent(&k, data.clone()).await.expect("rewrite"),
        Written::Created,
        "{}",
        ctx("recreate after delete")
    );

    // Invalid keys cannot even be formed, so no call reaches the backend.
    for bad in [
        "../x",
        "/abs",
        "a//b",
        "a/",
        "a/../../etc/passwd",
        "a b",
        "",
        "a~b",
    ] {
        let err = ObjectKey::new(bad).expect_err(bad);
        assert_eq!(err.kind(), ErrorKind::InvalidKey, "{bad}: {err}");
    }
    assert_eq!(
        sorted_keys(&*b, None).await.len(),
        6,
        "{}",
        ctx("nothing stray written")
    );

    // Unusual but allowed characters.
    let odd = [
        "odd/a+b=c,d@e:f_g-h.i",
        "odd/UPPER.lower",
        "odd/-dash",
        "odd/.dotfile",
        "odd/x..y",
        "odd/2026-11-25T20:00:00Z",
    ];
    for (i, s) in odd.iter().enumerate() {
        let body = pattern(100 + i, 7 + i as u64);
        assert_eq!(
            b.write_if_absent(&key(s), body.clone()).await.expect(s),
            Written::Created,
            "{}",
            ctx(s)
        );
        assert_eq!(b.read(&key(s)).await.expect(s), body, "{}", ctx(s));
    }
    let mut want: Vec<String> = odd.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(
        sorted_keys(&*b, Some("odd")).await,
        want,
        "{}",
        ctx("odd keys listed verbatim")
    );

    // Concurrent create-only writers of one key: exactly one wins.
    let race = key("race/one");
    let mut tasks = Vec::new();
    for i in 0..8u64 {
        let b = Arc::clone(&b);
        let race = race.clone();
        tasks.push(tokio::spawn(async move {
            let body = pattern(4096, 100 + i);
            (b.write_if_absent(&race, body.clone()).await, body)
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        let (res, body) = t.await.expect("join");
        match res.expect("concurrent write") {
            Written::Created => winners.push(body),
            Written::AlreadyExists => {}
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "{}",
        ctx("exactly one concurrent writer wins")
    );
    assert_eq!(
        b.read(&race).await.expect("read race"),
        winners[0],
        "{}",
        ctx("the winner's bytes are stored")
    );

    // A 64 MiB object.
    let big = key("big/object");
    let body = pattern(BIG, 42);
    let t0 = Instant::now();
    assert_eq!(
        b.write_if_absent(&big, body.clone())
            .await
            .expect("write 64 MiB"),
        Written::Created
    );
    let wrote = t0.elapsed();
    let t1 = Instant::now();
    let back = b.read(&big).await.expect("read 64 MiB");
    let read = t1.elapsed();
    assert!(back == body, "{}", ctx("64 MiB round trip"));
    drop(back);
    let mid = b
        .read_range(&big, 33_000_000..33_000_100)
        .await
        .expect("range of big");
    assert_eq!(
        mid,
        body.slice(33_000_000..33_000_100),
        "{}",
        ctx("range of big")
    );
    assert_eq!(
        b.head(&big).await.expect("head").map(|m| m.size),
        Some(BIG as u64)
    );
    assert_eq!(
        b.write_if_absent(&big, body.slice(..1024))
            .await
            .expect("rewrite big"),
        Written::AlreadyExists,
        "{}",
        ctx("big create-only")
    );
    println!("[{name}] 64 MiB: write {wrote:.2?}, read {read:.2?}");
    b.delete(&big).await.expect("delete big");
}

/// Configures `secret` as a credential (via `env`), provokes errors and
/// checks the secret never shows in `Debug`/`Display` of backend or errors.
async fn assert_no_secret_leaks(url: &str, env: Env, secret: &str) {
    let opts = StorageOptions {
        max_retries: 1,
        ..options(env)
    };
    let b = storage::open(url, &opts).unwrap_or_else(|e| panic!("open {url}: {e}"));
    let mut shown = vec![format!("{b:?}"), b.describe()];
    for res in [
        b.read(&key("missing/key")).await.map(|_| ()),
        b.write_if_absent(&key("x/y"), Bytes::from_static(b"data"))
            .await
            .map(|_| ()),
        b.list(None).await.map(|_| ()),
        b.delete(&key("x/y")).await,
    ] {
        if let Err(e) = res {
            println!("[{url}] provoked: {e}");
            shown.push(format!("{e:?}"));
            shown.push(e.to_string());
        }
    }
    assert!(
        shown.len() > 2,
        "{url}: expected at least one error, got none"
    );
    for s in &shown {
        assert!(!s.contains(secret), "secret leaked for {url}: {s}");
    }
}

fn s3_env(endpoint: &str, secret: &str) -> Env {
    Env::from_pairs([
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", secret),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ENDPOINT_URL", endpoint),
    ])
}

fn azure_env(endpoint: &str, key: &str) -> Env {
    Env::from_pairs([
        ("AZURE_STORAGE_ACCOUNT_NAME", AZURITE_ACCOUNT.to_string()),
        ("AZURE_STORAGE_ACCOUNT_KEY", key.to_string()),
        (
            "AZURE_STORAGE_ENDPOINT",
            format!("{endpoint}/{AZURITE_ACCOUNT}"),
        ),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_filesystem_conforms() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("repo");
    let b = storage::open(root.to_str().expect("utf-8 path"), &options(Env::default()))
        .expect("open local");
    conformance(Arc::clone(&b)).await;
    // file:// URLs name the same repository.
    let url = format!("file://{}", root.display());
    let same = storage::open(&url, &options(Env::default())).expect("open file://");
    assert!(same.head(&key("a/b/c.bin")).await.expect("head").is_some());
    // Nothing outside the root was touched.
    let outside: Vec<_> = std::fs::read_dir(dir.path()).expect("read_dir").collect();
    assert_eq!(
        outside.len(),
        1,
        "only the repository directory exists beside it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_on_moto_conforms() {
    let emu = emulators::moto();
    emu.create_bucket("backups").await;
    let env = s3_env(&emu.endpoint, "moto-any-secret");
    let b = storage::open("s3://backups/repo/one", &options(env)).expect("open s3");
    conformance(b).await;
    // The prefix really scopes the repository.
    let other =
        storage::open("s3://backups/repo", &options(s3_env(&emu.endpoint, "x"))).expect("open s3");
    assert!(other.list(Some(&key("one"))).await.expect("list").len() > 5);
    assert!(other
        .list(Some(&key("two")))
        .await
        .expect("list")
        .is_empty());

    let secret = "S3-SECRET-wJalrXUtnFEMI-K7MDENG";
    // Wrong bucket on a live endpoint, then an endpoint where nothing listens.
    assert_no_secret_leaks(
        "s3://no-such-bucket/p",
        s3_env(&emu.endpoint, secret),
        secret,
    )
    .await;
    let dead = format!("http://127.0.0.1:{}", dead_port());
    assert_no_secret_leaks("s3://backups/p", s3_env(&dead, secret), secret).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_on_azurite_conforms() {
    let emu = emulators::azurite();
    emu.create_bucket("backups").await;
    let b = storage::open(
        "az://backups/repo",
        &options(azure_env(&emu.endpoint, AZURITE_KEY)),
    )
    .expect("open az");
    conformance(b).await;

    // A wrong (but well-formed) account key is refused; it must not leak.
    let secret = "V1JPTkctS0VZLWRvLW5vdC1sZWFrLXRoaXMtdmFsdWUtYW55d2hlcmU=";
    assert_no_secret_leaks(
        "az://backups/repo",
        azure_env(&emu.endpoint, secret),
        secret,
    )
    .await;
    let dead = format!("http://127.0.0.1:{}", dead_port());
    assert_no_secret_leaks("az://backups/repo", azure_env(&dead, secret), secret).await;
    // Azure credentials come from the environment only.
    let err = storage::open("az://backups/repo", &options(Env::default())).expect_err("no account");
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcs_on_fake_gcs_server_conforms() {
    let emu = emulators::fake_gcs();
    emu.create_bucket("backups").await;
    let env = || Env::from_pairs([("STORAGE_EMULATOR_HOST", emu.endpoint.clone())]);
    // Small objects use one multipart request, the 64 MiB object a resumable
    // session in 8 MiB requests.
    let opts = StorageOptions {
        gcs_resumable_threshold: 16 << 20,
        gcs_chunk_size: 8 << 20,
        ..options(env())
    };
    let b = storage::open("gs://backups/repo", &opts).expect("open gs");
    conformance(Arc::clone(&b)).await;

    // Listing pages through more than one page (the server pages at 1000).
    let many = storage::open("gs://backups/many", &opts).expect("open gs");
    use futures_util::StreamExt as _;
    let results: Vec<_> = futures_util::stream::iter(0..1100)
        .map(|i| {
            let many = Arc::clone(&many);
            async move {
                many.write_if_absent(&key(&format!("k/{i:05}")), Bytes::from_static(b"x"))
                    .await
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    for r in results {
        r.expect("write");
    }
    assert_eq!(
        many.list(None).await.expect("list").len(),
        1100,
        "pagination"
    );

    // A resumable upload is create-only too.
    let k = key("resumable/twice");
    let body = pattern(20 << 20, 5);
    assert_eq!(
        b.write_if_absent(&k, body.clone()).await.expect("first"),
        Written::Created
    );
    assert_eq!(
        b.write_if_absent(&k, pattern(20 << 20, 6))
            .await
            .expect("second"),
        Written::AlreadyExists
    );
    assert!(
        b.read(&k).await.expect("read") == body,
        "resumable original kept"
    );

    // A service-account key: the self-signed JWT is exchanged once at the
    // token URI, the token is cached and sent as a bearer token.
    let (token_uri, seen) = token_server(
        200,
        r#"{"access_token":"ya29.EXCHANGED-token-secret","expires_in":3600}"#,
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let sa_path = service_account_file(dir.path(), &token_uri);
    let sa_env = |host: String| {
        Env::from_pairs([
            ("STORAGE_EMULATOR_HOST", host),
            (
                "GOOGLE_APPLICATION_CREDENTIALS",
                sa_path.display().to_string(),
            ),
        ])
    };
    let sa = storage::open("gs://backups/sa", &options(sa_env(emu.endpoint.clone())))
        .expect("open with key file");
    assert_eq!(
        sa.write_if_absent(&key("k"), Bytes::from_static(b"v"))
            .await
            .expect("write"),
        Written::Created
    );
    assert_eq!(&sa.read(&key("k")).await.expect("read")[..], b"v");
    let forms = seen.lock().expect("lock").clone();
    assert_eq!(
        forms.len(),
        1,
        "one token exchange, then the cached token: {forms:?}"
    );
    assert!(
        forms[0].contains("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer"),
        "{}",
        forms[0]
    );
    assert!(forms[0].contains("assertion=ey"), "{}", forms[0]);
    let key_line = private_key_line(&sa_path);
    assert_no_secret_leaks(
        "gs://backups/p",
        sa_env(format!("127.0.0.1:{}", dead_port())),
        &key_line,
    )
    .await;
    assert_no_secret_leaks(
        "gs://backups/p",
        sa_env(format!("127.0.0.1:{}", dead_port())),
        "EXCHANGED-token-secret",
    )
    .await;
    // A refused exchange is an access error that says what to check.
    let (bad_uri, _) = token_server(
        400,
        r#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#,
    )
    .await;
    let bad_path = service_account_file(dir.path(), &bad_uri);
    let bad_env = Env::from_pairs([
        ("STORAGE_EMULATOR_HOST", emu.endpoint.clone()),
        (
            "GOOGLE_APPLICATION_CREDENTIALS",
            bad_path.display().to_string(),
        ),
    ]);
    let bad = storage::open("gs://backups/sa", &options(bad_env)).expect("open");
    let err = bad.read(&key("k")).await.expect_err("refused token");
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert!(
        err.to_string().contains("invalid_grant") && err.to_string().contains("credentials"),
        "{err}"
    );
    assert!(!format!("{err:?}").contains(&key_line));

    let secret = "ya29.GCS-SECRET-token-do-not-leak";
    let with_token = |host: String| {
        Env::from_pairs([
            ("STORAGE_EMULATOR_HOST", host),
            ("GOOGLE_OAUTH_ACCESS_TOKEN", secret.to_string()),
        ])
    };
    assert_no_secret_leaks(
        "gs://no-such-bucket/p",
        with_token(emu.endpoint.clone()),
        secret,
    )
    .await;
    assert_no_secret_leaks(
        "gs://backups/p",
        with_token(format!("127.0.0.1:{}", dead_port())),
        secret,
    )
    .await;
}

/// A port nothing listens on (bound, then released).
fn dead_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("ephemeral port")
}

/// A one-route OAuth token endpoint answering `status` and `body` to every
/// request; returns its URL and the form bodies it received.
async fn token_server(
    status: u16,
    body: &'static str,
) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some((head, rest)) = text.split_once("\r\n\r\n") {
                        let len = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if rest.len() >= len {
                            log.lock().expect("lock").push(rest.to_string());
                            break;
                        }
                    }
                }
                let reply = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(reply.as_bytes()).await;
            });
        }
    });
    (format!("http://{addr}/token"), seen)
}

/// The test service-account fixture with its `token_uri` replaced.
fn service_account_file(dir: &std::path::Path, token_uri: &str) -> std::path::PathBuf {
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/gcs-test-service-account.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture).expect("fixture")).expect("json");
    v["token_uri"] = serde_json::Value::String(token_uri.to_string());
    let path = dir.join(format!(
        "sa-{}.json",
        token_uri
            .rsplit(':')
            .next()
            .unwrap_or("x")
            .replace('/', "_")
    ));
    std::fs::write(&path, v.to_string()).expect("write key file");
    path
}

/// One line from the middle of the key file's private key.
fn private_key_line(path: &std::path::Path) -> String {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("read")).expect("json");
    let pem = v["private_key"].as_str().expect("private_key").to_string();
    pem.lines().nth(5).expect("a key line").to_string()
}

/// Every backend retries 503s a bounded number of times, then reports a
/// transient error; a 403 is reported at once as an access error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_boundedly_then_classified() {
    let (unavailable, seen) = token_server(503, r#"{"error":"busy"}"#).await;
    let base = unavailable.trim_end_matches("/token").to_string();
    let envs = [
        ("s3://b/p", s3_env(&base, "s")),
        ("az://c/p", azure_env(&base, AZURITE_KEY)),
        (
            "gs://b/p",
            Env::from_pairs([("STORAGE_EMULATOR_HOST", base.clone())]),
        ),
    ];
    for (url, env) in envs {
        let opts = StorageOptions {
            max_retries: 2,
            ..options(env)
        };
        let b = storage::open(url, &opts).expect("open");
        let before = seen.lock().expect("lock").len();
        let err = b.read(&key("k")).await.expect_err("503");
        let attempts = seen.lock().expect("lock").len() - before;
        assert!(err.is_transient(), "{url}: {err}");
        assert_eq!(attempts, 3, "{url}: one try and two retries");
    }
    let (forbidden, seen) = token_server(403, r#"{"error":"denied"}"#).await;
    let base = forbidden.trim_end_matches("/token").to_string();
    for (url, env) in [
        ("s3://b/p", s3_env(&base, "s")),
        ("az://c/p", azure_env(&base, AZURITE_KEY)),
        (
            "gs://b/p",
            Env::from_pairs([("STORAGE_EMULATOR_HOST", base.clone())]),
        ),
    ] {
        let b = storage::open(url, &options(env)).expect("open");
        let before = seen.lock().expect("lock").len();
        let err = b.read(&key("k")).await.expect_err("403");
        assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{url}: {err}");
        assert_eq!(
            seen.lock().expect("lock").len() - before,
            1,
            "{url}: not retried"
        );
    }
}
