//! The shipped example configuration documents every key with its default.

use std::collections::BTreeSet;

use chromaprod::config::{self, Config};

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/etc/chromaprod.toml");

/// Every key but one: the shipped file turns encryption on, while a file
/// that leaves `backup.encrypt` out gets the compiled-in `false` (and a
/// warning from `validate`).
#[test]
fn example_parses_and_equals_the_compiled_in_defaults_but_encryption() {
    let loaded = config::load(std::path::Path::new(EXAMPLE)).expect("example config is valid");
    assert!(loaded.config.backup.encrypt, "the shipped config encrypts");
    let mut expected = Config::default();
    assert!(!expected.backup.encrypt);
    expected.backup.encrypt = true;
    assert_eq!(loaded.config, expected);
}

fn validate(config: &std::path::Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_chromaprod"))
        .args(["validate", "--config"])
        .arg(config)
        .output()
        .expect("run chromaprod")
}

/// A plaintext repository has no authenticity: `validate` says so (and how
/// to move to an encrypted one) without failing; the shipped file is quiet.
#[test]
fn validate_warns_about_a_plaintext_repository() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plain = dir.path().join("plain.toml");
    std::fs::write(&plain, "[backup]\nencrypt = false\n").expect("write");
    let out = validate(&plain);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("warning: backup.encrypt"), "{stderr}");
    assert!(stderr.contains("chromaprod key generate"), "{stderr}");

    // The shipped file is valid before its key exists; validate names the
    // command that makes it, and is quiet once the key is handed over.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chromaprod"))
        .args(["validate", "--config", EXAMPLE])
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .expect("run chromaprod");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("backup.encrypt"), "{stderr}");
    assert!(
        stderr.contains("warning: backup.key_file")
            && stderr.contains("`chromaprod key generate /etc/chromaprod/credentials/backup-key`"),
        "{stderr}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chromaprod"))
        .args(["validate", "--config", EXAMPLE])
        .env("CREDENTIALS_DIRECTORY", dir.path())
        .output()
        .expect("run chromaprod");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");
}

/// Encryption on and no key: the error is the exact command that creates
/// one, for a key file and for the systemd credential.
#[test]
fn a_missing_key_names_the_command_that_creates_it() {
    use chromaprod::backup::load_key;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = Config::default();
    c.backup.encrypt = true;
    let file = dir.path().join("backup-key");
    c.backup.key_file = Some(file.clone());
    let err = load_key(&c).expect_err("no key").to_string();
    assert!(
        err.contains(&format!("`chromaprod key generate {}`", file.display())),
        "{err}"
    );

    let key =
        chromaprod::backup::crypto::MasterKey::from_credential_in(Some(dir.path()), "backup-key")
            .expect_err("no credential")
            .to_string();
    assert!(
        key.contains("`chromaprod key generate /etc/chromaprod/credentials/backup-key`")
            && key.contains("LoadCredential=backup-key:/etc/chromaprod/credentials/backup-key"),
        "{key}"
    );
}

#[test]
fn example_mentions_every_key() {
    let text = std::fs::read_to_string(EXAMPLE).expect("read example");
    let defaults = serde_json::to_value(Config::default()).expect("serialize");
    let mut missing = BTreeSet::new();
    for (section, body) in defaults.as_object().expect("object") {
        let start = text
            .find(&format!("[{section}]"))
            .unwrap_or_else(|| panic!("no [{section}] section"));
        let rest = &text[start + section.len() + 2..];
        let end = rest.find("\n[").unwrap_or(rest.len());
        let block = &rest[..end];
        for key in body.as_object().expect("table").keys() {
            let set = block
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("{key} =")));
            let commented = block
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("# {key} =")));
            if !set && !commented {
                missing.insert(format!("{section}.{key}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "keys not documented in etc/chromaprod.toml: {missing:?}"
    );
}

#[test]
fn validate_exits_78_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[pool]\nmax_connections = 0\n[retry]\nbase_delay = \"often\"\n",
    )
    .expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chromaprod"))
        .args(["validate", "--config"])
        .arg(&bad)
        .output()
        .expect("run chromaprod");
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("pool.max_connections"), "{stderr}");
    assert!(stderr.contains("retry.base_delay"), "{stderr}");

    let ok = std::process::Command::new(env!("CARGO_BIN_EXE_chromaprod"))
        .args(["validate", "--config", EXAMPLE])
        .output()
        .expect("run chromaprod");
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

#[test]
fn readme_reference_lists_every_key_and_no_other() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    let defaults = serde_json::to_value(Config::default()).expect("serialize");
    let mut keys = BTreeSet::new();
    for (section, body) in defaults.as_object().expect("object") {
        for key in body.as_object().expect("table").keys() {
            keys.insert(format!("{section}.{key}"));
        }
    }
    let documented: BTreeSet<String> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|k| k.contains('.'))
        .map(str::to_string)
        .collect();
    let missing: Vec<_> = keys.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&keys).collect();
    assert!(
        missing.is_empty(),
        "keys missing from the README reference: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "README documents keys the code does not have: {extra:?}"
    );
}

#[test]
fn example_migrations_load_and_plan_in_order() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let files = chromaprod::migrate::file::load_dir(&dir).expect("example migrations are valid");
    assert_eq!(files.len(), 2);
    let plan = chromaprod::migrate::plan::plan_up(&files, &[], None).expect("plan");
    assert_eq!(
        plan.iter().map(|s| s.version).collect::<Vec<_>>(),
        vec![1, 2]
    );
    // Both are reversible without a written `down`.
    for m in &files {
        m.down_ops().expect("derived down");
    }
}
