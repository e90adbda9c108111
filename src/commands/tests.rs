//! The outcome types serialize to the documented result shapes, and the
//! wire commands, the schedule and the job table speak one vocabulary.

use serde_json::json;

use super::*;
use crate::chroma::RankedResult;

fn id(s: &str) -> crate::backup::SnapshotId {
    crate::backup::SnapshotId::parse(s).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn a_backup_outcome_has_the_documented_shape() {
    let full = Outcome::Backup(BackupOutcome {
        snapshot: id("0123456789abcdef"),
        backup_type: BackupType::Full,
        parent: None,
        collections: vec![CollectionCount {
            name: "docs".into(),
            records: 12,
        }],
        bytes_written: 300,
        bytes_referenced: 400,
        duration_ms: 5,
        encrypted: true,
        physical: None,
    });
    assert_eq!(
        full.to_json(),
        json!({
            "snapshot": "0123456789abcdef", "type": "full", "parent": null,
            "collections": [{"name": "docs", "records": 12}],
            "bytes_written": 300, "bytes_referenced": 400, "duration_ms": 5, "encrypted": true,
        })
    );
    assert_eq!(full.bytes_written(), 300);
    if let Outcome::Backup(mut b) = full {
        b.backup_type = BackupType::Incremental;
        b.parent = Some(id("fedcba9876543210"));
        let v = Outcome::Backup(b).to_json();
        assert_eq!(v["type"], "incremental");
        assert_eq!(v["parent"], "fedcba9876543210");
    }
}

#[test]
fn short_outcomes_have_the_documented_shapes() {
    assert_eq!(
        Outcome::Delete(DeleteOutcome {
            deleted: "0123456789abcdef".into()
        })
        .to_json(),
        json!({"deleted": "0123456789abcdef"})
    );
    assert_eq!(
        Outcome::Check(CheckOutcome {
            objects_checked: 9,
            key_used: false
        })
        .to_json(),
        json!({"objects_checked": 9, "key_used": false})
    );
    assert_eq!(
        Outcome::List(ListOutcome { snapshots: vec![] }).to_json(),
        json!({"snapshots": []})
    );
    assert_eq!(
        Outcome::Prune(PruneReport {
            dry_run: true,
            snapshots_kept: vec!["a".into()],
            snapshots_deleted: vec![],
            objects_deleted: 0,
            bytes_freed: 0,
        })
        .to_json(),
        json!({"dry_run": true, "snapshots_kept": ["a"], "snapshots_deleted": [], "objects_deleted": 0, "bytes_freed": 0})
    );
    let restored = json!({"snapshot": "0123456789abcdef", "restored": [{"collection": "docs", "target": "docs", "records": 3, "previous": null}]});
    let outcome: RestoreOutcome = serde_json::from_value(restored.clone()).expect("restore");
    assert_eq!(
        Outcome::Restore(outcome.clone()).to_json(),
        serde_json::to_value(&outcome).expect("json")
    );
    assert_eq!(
        Outcome::Restore(outcome).to_json()["restored"][0]["records"],
        3
    );
    let applied = json!({"applied": [], "version": 2});
    let report: crate::migrate::MigrationReport =
        serde_json::from_value(applied.clone()).expect("report");
    assert_eq!(
        Outcome::Migration(MigrationReport::Up(report)).to_json(),
        applied
    );
}

#[test]
fn a_query_outcome_says_when_documents_are_withheld() {
    let hit = RankedResult {
        id: "r1".into(),
        distance: Some(0.5),
        document: None,
        metadata: None,
    };
    let mut outcome = QueryOutcome {
        collection: "docs".into(),
        results: vec![hit],
        documents_withheld: false,
    };
    let v = Outcome::Query(outcome.clone()).to_json();
    assert_eq!(
        v,
        json!({"collection": "docs", "results": [{"id": "r1", "distance": 0.5, "document": null, "metadata": null}]})
    );
    outcome.documents_withheld = true;
    assert_eq!(
        Outcome::Query(outcome).to_json()["documents_withheld"],
        json!(true)
    );
}

#[test]
fn every_wire_command_is_a_request_or_answered_by_the_daemon() {
    let daemon_only = ["status", "reload", "jobs", "job_cancel"];
    for name in Command::NAMES {
        let arg_id = if *name == "job_cancel" {
            json!(7)
        } else {
            json!("0123456789abcdef")
        };
        let command: Command = serde_json::from_value(json!({
            "cmd": name, "collection": "c", "k": 1, "id": arg_id,
            "backup_type": "full", "mode": "fail-if-exists", "to": 2, "version": 3,
            "data_dir": "/srv/restored"
        }))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        match Request::try_from(command.clone()) {
            Ok(request) => {
                assert_eq!(request.name(), *name, "the audit action is the cmd name");
                assert!(!daemon_only.contains(name), "{name}");
                // Exactly the commands that take `wait` run as jobs.
                if command.wait().is_some() {
                    assert!(request.job_kind().is_some(), "{name}");
                }
            }
            Err(DaemonOnly(back)) => {
                assert!(daemon_only.contains(name), "{name} is not run");
                assert_eq!(back, command);
            }
        }
    }
}

#[test]
fn a_wire_query_withholds_documents_until_granted() {
    let request = Request::try_from(Command::Query {
        collection: "docs".into(),
        id: Some("r1".into()),
        vector: None,
        k: 3,
    });
    match request {
        Ok(Request::Query(q)) => assert!(!q.with_documents),
        other => panic!("{other:?}"),
    }
}

#[test]
fn scheduled_jobs_run_their_commands() {
    use crate::schedule::JobKind as Scheduled;
    let cases = [
        (Scheduled::FullBackup, "backup", JobKind::Full),
        (Scheduled::IncrementalBackup, "backup", JobKind::Incremental),
        (Scheduled::Prune, "prune", JobKind::Prune),
        (Scheduled::Verify, "backup_verify", JobKind::Verify),
    ];
    for (scheduled, name, kind) in cases {
        let request = Request::scheduled(scheduled);
        assert_eq!(request.name(), name);
        assert_eq!(request.job_kind(), Some(kind));
    }
    assert_eq!(
        Request::scheduled(Scheduled::Verify),
        Request::Verify(Verify {
            id: "latest".into(),
            full: true,
            recall: None,
        })
    );
    assert_eq!(
        Request::scheduled(Scheduled::Prune),
        Request::Prune(Prune { dry_run: false })
    );
    assert_eq!(
        Request::scheduled(Scheduled::FullBackup),
        Request::Backup(Backup::all(BackupType::Full))
    );
    let scheduled: Trigger = crate::schedule::Trigger::CatchUp.into();
    assert_eq!(scheduled, Trigger::Schedule);
}

#[test]
fn job_kinds_and_triggers_have_their_wire_names() {
    for (kind, name) in [
        (JobKind::Full, "full"),
        (JobKind::Incremental, "incremental"),
        (JobKind::Collection, "collection"),
        (JobKind::Restore, "restore"),
        (JobKind::Prune, "prune"),
        (JobKind::Verify, "verify"),
        (JobKind::Migrate, "migrate"),
    ] {
        assert_eq!(kind.as_str(), name);
        assert_eq!(serde_json::to_value(kind).ok(), Some(json!(name)));
    }
    for (trigger, name) in [
        (Trigger::Command, "command"),
        (Trigger::Schedule, "schedule"),
        (Trigger::Migration, "migration"),
    ] {
        assert_eq!(serde_json::to_value(trigger).ok(), Some(json!(name)));
    }
}

#[test]
fn errors_keep_their_kinds() {
    assert_eq!(
        CommandError::from(BackupError::NoSnapshot("latest".into())).kind(),
        "not_found"
    );
    assert_eq!(CommandError::BadRequest("x".into()).kind(), "bad_request");
}
