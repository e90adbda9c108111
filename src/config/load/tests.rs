use super::validate::check_storage_path;
use super::*;
use std::os::unix::fs::PermissionsExt as _;

#[test]
fn empty_file_gives_defaults() {
    assert_eq!(load_from_str("").expect("valid"), Config::default());
}

#[test]
fn every_bad_key_is_reported_at_once() {
    let err = load_from_str(
        r#"
        [pool]
        max_connections = "many"
        connection_timeout = "soon"
        [retry]
        retryable_errors = ["timeout", "teapot"]
        [chroma]
        endpoints = ["ftp://x"]
        [metrics]
        listen = "nowhere"
        [bogus]
        x = 1
        [log]
        levle = "debug"
        "#,
    )
    .expect_err("invalid");
    let keys: Vec<String> = err.issues().into_iter().map(|i| i.key).collect();
    for k in [
        "pool.max_connections",
        "pool.connection_timeout",
        "retry.retryable_errors[1]",
        "chroma.endpoints[0]",
        "metrics.listen",
        "bogus",
        "log.levle",
    ] {
        assert!(keys.contains(&k.to_string()), "missing {k} in {keys:?}");
    }
}

#[test]
fn cross_key_checks() {
    let err =
        load_from_str("[pool]\nmin_connections = 5\nmax_connections = 2\n").expect_err("invalid");
    assert_eq!(err.issues()[0].key, "pool.min_connections");
}

#[test]
fn environment_overrides_file() {
    let env = vec![
        (
            "CHROMAPROD__POOL__MAX_CONNECTIONS".to_string(),
            "42".to_string(),
        ),
        (
            "CHROMAPROD__CHROMA__ENDPOINTS".to_string(),
            "http://a:1,http://b:2".to_string(),
        ),
        (
            "CHROMAPROD__CONTROL__SOCKET_MODE".to_string(),
            "0600".to_string(),
        ),
    ];
    let c = from_parts("[pool]\nmax_connections = 3\n", "t", &env).expect("valid");
    assert_eq!(c.pool.max_connections, 42);
    assert_eq!(c.chroma.endpoints.len(), 2);
    assert_eq!(c.control.socket_mode, 0o600);
}

#[test]
fn token_is_read_from_its_file_and_hidden_from_debug() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("token");
    std::fs::write(&file, "sekrit-token-123\n").expect("write");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let text = format!(
        "[chroma]\nauth_token_file = {:?}\n",
        file.display().to_string()
    );
    let c = load_from_str(&text).expect("valid");
    assert_eq!(
        c.chroma.auth_token.as_ref().map(|t| t.expose().as_str()),
        Some("sekrit-token-123")
    );
    assert!(!format!("{c:?}").contains("sekrit"));
    assert!(!serde_json::to_string(&c).expect("json").contains("sekrit"));
}

#[test]
fn endpoint_user_info_is_refused_without_echoing_the_password() {
    let err = load_from_str(
        "[chroma]\nendpoints = [\"http://127.0.0.1:8000\", \"http://admin:pw-s3cr3t@chroma.internal:8000\"]\n",
    )
    .expect_err("user info refused");
    let issues = err.issues();
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert_eq!(issues[0].key, "chroma.endpoints[1]");
    assert!(issues[0].problem.contains("user info"), "{issues:?}");
    assert!(!err.to_string().contains("pw-s3cr3t"), "{err}");
    assert!(!err.to_string().contains("admin"), "{err}");
    // A query string (a token by another name) is refused the same way.
    let err = load_from_str("[chroma]\nendpoints = [\"http://127.0.0.1:8000/?token=qs-s3cr3t\"]\n")
        .expect_err("query refused");
    assert_eq!(err.issues()[0].key, "chroma.endpoints[0]");
    assert!(!err.to_string().contains("qs-s3cr3t"), "{err}");
    // A user name alone is refused too.
    let err = load_from_str("[chroma]\nendpoints = [\"https://bob@chroma.internal\"]\n")
        .expect_err("user name refused");
    assert_eq!(err.issues()[0].key, "chroma.endpoints[0]");
}

#[test]
fn plain_http_with_a_token_needs_allow_plain_http() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("token");
    std::fs::write(&token, "tok\n").expect("write");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let with = |endpoints: &str, extra: &str| {
        load_from_str(&format!(
            "[chroma]\nendpoints = [{endpoints}]\nauth_token_file = {:?}\n{extra}",
            token.display().to_string()
        ))
    };
    let err = with(
        "\"https://chroma.internal\", \"http://10.255.255.1:8000\"",
        "",
    )
    .expect_err("plain http refused");
    let issues = err.issues();
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert_eq!(issues[0].key, "chroma.endpoints[1]");
    assert!(
        issues[0].problem.contains("chroma.allow_plain_http"),
        "{issues:?}"
    );
    let c = with("\"http://10.255.255.1:8000\"", "allow_plain_http = true\n")
        .expect("allowed explicitly");
    assert!(c.chroma.allow_plain_http);
    // Loopback and https need nothing; nor does plain http without a token.
    with(
        "\"http://127.0.0.1:8000\", \"http://localhost:8000\", \"http://[::1]:8000\", \"https://10.0.0.7\"",
        "",
    )
    .expect("loopback and https");
    load_from_str("[chroma]\nendpoints = [\"http://10.255.255.1:8000\"]\n").expect("no token");
}

#[test]
fn storage_paths() {
    assert!(check_storage_path("/var/backups").is_ok());
    assert!(check_storage_path("s3://bucket/prefix").is_ok());
    assert!(check_storage_path("gs://b").is_ok());
    assert!(check_storage_path("relative/dir").is_err());
    assert!(check_storage_path("ftp://x").is_err());
    assert!(check_storage_path("s3://").is_err());
}

#[test]
fn token_and_key_files_group_or_other_can_read_are_refused_with_the_fix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("token");
    std::fs::write(&token, "sekrit-token-123\n").expect("write");
    let key = dir.path().join("backup-key");
    std::fs::write(&key, format!("{}\n", "ab".repeat(32))).expect("write");
    let text = format!(
        "[chroma]\nauth_token_file = {:?}\n[backup]\nencrypt = true\nkey_file = {:?}\n",
        token.display().to_string(),
        key.display().to_string()
    );
    for mode in [0o644, 0o640, 0o604] {
        for f in [&token, &key] {
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(mode)).expect("chmod");
        }
        let err = load_from_str(&text).expect_err("exposed token");
        assert!(!err.to_string().contains("sekrit"), "{err}");
        let mut issues = err.issues();
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        issues.extend(secret_file_issues(&load_from_str(&text).expect("valid")));
        for (name, path) in [
            ("chroma.auth_token_file", &token),
            ("backup.key_file", &key),
        ] {
            let issue = issues
                .iter()
                .find(|i| i.key == name)
                .unwrap_or_else(|| panic!("no issue for {name}: {issues:?}"));
            assert!(issue.problem.contains(&format!("{mode:04o}")), "{issue:?}");
            assert!(
                issue
                    .problem
                    .contains(&format!("chmod 600 {}", path.display())),
                "{issue:?}"
            );
        }
    }
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o400)).expect("chmod");
    let c = load_from_str(&text).expect("private files are fine");
    assert_eq!(secret_file_issues(&c), vec![]);
    // A key file that does not exist yet is not reported here (the
    // backup says what to do).
    std::fs::remove_file(&key).expect("rm");
    assert_eq!(secret_file_issues(&c), vec![]);
}
