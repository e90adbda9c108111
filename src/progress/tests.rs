use super::*;
use serde_json::json;

/// Each event as the control socket sent it before events were typed.
fn wire() -> Vec<(Event, Value)> {
    let step = |detail| {
        Event::Migrate(MigrateStep {
            version: 3,
            operation: "rebuild".into(),
            detail,
        })
    };
    vec![
        (
            Event::Backup {
                collection: "docs".into(),
                records_done: 10,
                records_total: 20,
                bytes_written: 300,
            },
            json!({"phase": "backup", "collection": "docs", "records_done": 10, "records_total": 20, "bytes_written": 300}),
        ),
        (
            Event::Done {
                snapshot: "ab12".into(),
                bytes_written: 9,
            },
            json!({"phase": "done", "snapshot": "ab12", "bytes_written": 9}),
        ),
        (
            Event::Verify {
                chunks_done: 1,
                chunks_total: 2,
            },
            json!({"phase": "verify", "chunks_done": 1, "chunks_total": 2}),
        ),
        (
            Event::RestoreVerify {
                collection: "docs".into(),
                records_done: 5,
                records_total: 6,
            },
            json!({"phase": "restore_verify", "collection": "docs", "records_done": 5, "records_total": 6}),
        ),
        (
            Event::DeltaWrite {
                collection: "docs".into(),
                records_done: 1,
                records_total: 3,
            },
            json!({"phase": "delta_write", "collection": "docs", "records_done": 1, "records_total": 3}),
        ),
        (
            Event::WaitingForLock {
                holder: "ops@db1".into(),
            },
            json!({"phase": "waiting_for_lock", "holder": "ops@db1"}),
        ),
        (
            Event::RestorePoint {
                collections: vec!["docs".into()],
            },
            json!({"phase": "restore_point", "collections": ["docs"]}),
        ),
        (
            step(MigrateDetail::Started {
                name: "reindex".into(),
                op_index: 0,
                ops: 2,
            }),
            json!({"phase": "migrate", "version": 3, "name": "reindex", "operation": "rebuild", "op_index": 0, "ops": 2}),
        ),
        (
            step(MigrateDetail::Records {
                collection: None,
                records_done: 4,
                records_total: 8,
            }),
            json!({"phase": "migrate", "version": 3, "operation": "rebuild", "records_done": 4, "records_total": 8}),
        ),
        (
            step(MigrateDetail::Records {
                collection: Some("docs".into()),
                records_done: 4,
                records_total: 8,
            }),
            json!({"phase": "migrate", "version": 3, "operation": "rebuild", "collection": "docs", "records_done": 4, "records_total": 8}),
        ),
        (
            step(MigrateDetail::Rebuild(RebuildStep::Copy {
                collection: "docs".into(),
                records_done: 1,
                records_total: 2,
            })),
            json!({"phase": "migrate", "version": 3, "operation": "rebuild", "step": "copy", "collection": "docs", "records_done": 1, "records_total": 2}),
        ),
        (
            step(MigrateDetail::Rebuild(RebuildStep::CatchUp {
                collection: "docs".into(),
                records_fixed: 7,
                write_requests: 2,
                write_ms: 1_300,
            })),
            json!({"phase": "migrate", "version": 3, "operation": "rebuild", "step": "catch_up", "collection": "docs", "records_fixed": 7, "write_requests": 2, "write_ms": 1300}),
        ),
        (
            step(MigrateDetail::Rebuild(RebuildStep::Verify {
                collection: "docs".into(),
                overlap: None,
            })),
            json!({"phase": "migrate", "version": 3, "operation": "rebuild", "step": "verify", "collection": "docs", "overlap": null}),
        ),
        (
            Event::MigrateDown {
                version: 2,
                operation: "drop_collection".into(),
            },
            json!({"phase": "migrate_down", "version": 2, "operation": "drop_collection"}),
        ),
        (
            Event::Diff {
                collection: "docs".into(),
                records_done: 7,
                records_total: 8,
            },
            json!({"phase": "diff", "collection": "docs", "records_done": 7, "records_total": 8}),
        ),
    ]
}

#[test]
fn events_keep_the_wire_shape_and_read_back() {
    for (event, json) in wire() {
        assert_eq!(event.to_json(), json, "{event:?}");
        let back: Event = serde_json::from_value(json.clone()).expect("parses");
        assert_eq!(back, event, "{json}");
    }
}

#[test]
fn people_read_counts_and_collections() {
    let (e, _) = &wire()[0];
    assert_eq!(e.to_string(), "backup docs: 10/20 records");
    let (e, _) = &wire()[11];
    assert_eq!(
        e.to_string(),
        "migrate 3 rebuild catch-up docs: 7 records fixed in 2 write requests (1.3 s)"
    );
}

#[tokio::test]
async fn every_subscriber_is_told_and_channels_close_with_the_last_clone() {
    let (json_progress, mut json_rx) = Progress::detached();
    let (typed_tx, mut typed_rx) = broadcast::channel::<Event>(8);
    let progress = json_progress.with(Arc::new(typed_tx));
    drop(json_progress);
    let event = Event::Verify {
        chunks_done: 1,
        chunks_total: 1,
    };
    progress.clone().send(event.clone());
    assert_eq!(json_rx.recv().await.expect("json"), event.to_json());
    assert_eq!(typed_rx.recv().await.expect("typed"), event);
    drop(progress);
    assert!(json_rx.recv().await.is_err(), "closed with the last clone");
    assert!(typed_rx.recv().await.is_err());
}
