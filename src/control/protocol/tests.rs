use super::*;
use proptest::prelude::*;
use serde_json::json;

#[test]
fn requests_have_the_documented_shape() {
    let r = Request::new(Command::Status);
    assert_eq!(
        serde_json::to_value(&r).ok(),
        Some(json!({"v":1,"cmd":"status"}))
    );
    let q = Request::new(Command::Query {
        collection: "docs".into(),
        id: None,
        vector: Some(vec![0.5, -1.0]),
        k: 3,
    });
    assert_eq!(
        serde_json::to_value(&q).ok(),
        Some(json!({"v":1,"cmd":"query","collection":"docs","vector":[0.5,-1.0],"k":3}))
    );
}

#[test]
fn lines_have_the_documented_shape() {
    assert_eq!(
        serde_json::to_value(Line::event(json!({"done":1}))).ok(),
        Some(json!({"type":"event","v":1,"event":{"done":1}}))
    );
    assert_eq!(
        serde_json::to_value(Line::ok(json!({"state":"ready"}))).ok(),
        Some(json!({"type":"response","v":1,"ok":true,"result":{"state":"ready"}}))
    );
    assert_eq!(
        serde_json::to_value(Line::ok(Value::Null)).ok(),
        Some(json!({"type":"response","v":1,"ok":true}))
    );
    assert_eq!(
        serde_json::to_value(Line::error("timeout", "slow")).ok(),
        Some(
            json!({"type":"response","v":1,"ok":false,"error":{"kind":"timeout","message":"slow"}})
        )
    );
    let line = Line::ok(json!(1)).to_json_line();
    assert_eq!(line.last(), Some(&b'\n'));
    assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
}

#[test]
fn unknown_fields_are_ignored_and_missing_options_default() {
    let r: Request =
        serde_json::from_str(r#"{"v":1,"cmd":"query","collection":"c","k":2,"future":true}"#)
            .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        r.command,
        Command::Query {
            collection: "c".into(),
            id: None,
            vector: None,
            k: 2
        }
    );
}

#[test]
fn mutating_commands() {
    assert!(Command::Reload.is_mutating());
    assert!(!Command::Status.is_mutating());
    // Every name parses (with the arguments any command may need) and maps back.
    for name in Command::NAMES {
        let id = if *name == "job_cancel" {
            json!(7)
        } else {
            json!("0123456789abcdef")
        };
        let c: Command = serde_json::from_value(json!({
            "cmd": name, "collection": "c", "k": 1, "id": id,
            "backup_type": "full", "mode": "fail-if-exists", "to": 2, "version": 3,
            "data_dir": "/srv/restored"
        }))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(c.name(), *name);
    }
    // A physical restore writes files where the client says: admin only.
    let physical: Command = serde_json::from_value(json!({
        "cmd": "restore_physical", "id": "latest", "data_dir": "/srv/restored"
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(physical.level(), Level::Admin);
    assert_eq!(physical.wait(), Some(false));
    assert!(Command::Prune { dry_run: false }.is_mutating());
    assert!(!Command::Prune { dry_run: true }.is_mutating());
    assert!(!Command::BackupsList.is_mutating());
    assert!(Command::MigrateUp {
        to: None,
        wait: true
    }
    .is_mutating());
    assert!(Command::MigrateStamp { version: 1 }.is_mutating());
    assert!(!Command::MigrateStatus.is_mutating());
    assert!(!Command::MigrateValidate.is_mutating());
}

#[test]
fn a_target_token_crosses_the_wire_but_not_into_records() {
    let c = Command::Restore {
        id: "latest".into(),
        collections: vec![],
        as_name: None,
        target: Some("http://127.0.0.1:9000".into()),
        target_token: Some(Secret::new("tok-wire-1234".into())),
        allow_plain_http: false,
        mode: crate::backup::RestoreMode::FailIfExists,
        dry_run: false,
        keep_previous: false,
        keep_extra: false,
        no_recall: false,
        wait: true,
    };
    let text = serde_json::to_string(&Request::new(c.clone())).unwrap_or_default();
    let back: Request = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(back.command, c);
    assert!(!format!("{c:?}").contains("tok-wire"));
    let recorded = serde_json::to_string(&c.redacted()).unwrap_or_default();
    assert!(!recorded.contains("tok-wire"), "{recorded}");
    let mut with_password = c.clone();
    if let Command::Restore { target, .. } = &mut with_password {
        *target = Some("http://admin:hunter2@10.0.0.9:8000/?sig=s3cr3t#x".into());
    }
    let recorded = serde_json::to_string(&with_password.redacted()).unwrap_or_default();
    assert!(
        !recorded.contains("hunter2") && !recorded.contains("s3cr3t"),
        "{recorded}"
    );
    assert!(recorded.contains("http://10.0.0.9:8000/"), "{recorded}");
    assert!(
        recorded.contains("\"target_token\":\"[redacted]\""),
        "{recorded}"
    );
}

#[test]
fn destructive_commands_need_the_admin_level() {
    use crate::backup::RestoreMode;
    let restore = |mode, dry_run| Command::Restore {
        id: "latest".into(),
        collections: vec![],
        as_name: None,
        target: None,
        target_token: None,
        allow_plain_http: false,
        mode,
        dry_run,
        keep_previous: false,
        keep_extra: false,
        no_recall: false,
        wait: false,
    };
    assert_eq!(restore(RestoreMode::Replace, false).level(), Level::Admin);
    assert_eq!(restore(RestoreMode::Replace, true).level(), Level::Operate);
    assert_eq!(restore(RestoreMode::Delta, false).level(), Level::Admin);
    assert_eq!(restore(RestoreMode::Delta, true).level(), Level::Operate);
    assert_eq!(
        restore(RestoreMode::FailIfExists, false).level(),
        Level::Operate
    );
    let mut elsewhere = restore(RestoreMode::FailIfExists, false);
    if let Command::Restore { target, .. } = &mut elsewhere {
        *target = Some("http://10.0.0.9:8000".into());
    }
    assert_eq!(
        elsewhere.level(),
        Level::Admin,
        "a decrypted snapshot leaves"
    );
    assert_eq!(Command::Prune { dry_run: false }.level(), Level::Admin);
    assert_eq!(Command::Prune { dry_run: true }.level(), Level::Read);
    assert_eq!(
        Command::BackupDelete { id: "x".into() }.level(),
        Level::Admin
    );
    assert_eq!(
        Command::MigrateDown { to: 0, wait: true }.level(),
        Level::Admin
    );
    assert_eq!(Command::MigrateRepair.level(), Level::Admin);
    assert_eq!(Command::MigrateStamp { version: 1 }.level(), Level::Admin);
    assert_eq!(
        Command::MigrateUp {
            to: None,
            wait: true
        }
        .level(),
        Level::Operate
    );
    assert_eq!(Command::Reload.level(), Level::Operate);
    assert_eq!(Command::Status.level(), Level::Read);
    // A diff changes nothing; the ids it lists count as metadata.
    let diff = Command::BackupsDiff {
        id: "a".into(),
        other: None,
        live: true,
        collection: None,
        ids: true,
    };
    assert_eq!(diff.level(), Level::Read);
    assert_eq!(
        serde_json::to_value(&diff).expect("json"),
        json!({"cmd": "backups_diff", "id": "a", "live": true, "ids": true})
    );
    assert!(Level::Read < Level::Operate && Level::Operate < Level::Admin);
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        Just(Command::Status),
        Just(Command::Reload),
        (
            ".*",
            proptest::option::of(".*"),
            proptest::option::of(proptest::collection::vec(
                proptest::num::f32::NORMAL | proptest::num::f32::ZERO,
                0..8
            )),
            any::<usize>()
        )
            .prop_map(|(collection, id, vector, k)| Command::Query {
                collection,
                id,
                vector,
                k
            }),
    ]
}

proptest! {
    #[test]
    fn requests_round_trip(command in command(), v in any::<u32>()) {
        let r = Request { v, command };
        let text = serde_json::to_string(&r).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(!text.contains('\n'));
        let back: Request = serde_json::from_str(&text).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(back, r);
    }

    #[test]
    fn responses_round_trip(ok in any::<bool>(), kind in "[a-z_]{1,20}", message in ".*", n in any::<i64>()) {
        let line = if ok { Line::ok(serde_json::json!({"n": n})) } else { Line::error(kind, message) };
        let bytes = line.to_json_line();
        let back: Line = serde_json::from_slice(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(back, line);
    }
}
