//! The shipped example configuration documents every key with its default.

use std::collections::BTreeSet;

use chromaprod::config::{self, Config};

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/etc/chromaprod.toml");

#[test]
fn example_parses_and_equals_the_compiled_in_defaults() {
    let loaded = config::load(std::path::Path::new(EXAMPLE)).expect("example config is valid");
    assert_eq!(loaded.config, Config::default());
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
