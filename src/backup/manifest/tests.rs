use super::*;
use crate::backup::crypto::DataKey;
use crate::backup::records::tests::synthetic;
use crate::backup::records::{ChunkIndex, ChunkPlanner, Record};
use proptest::prelude::*;

pub(super) fn sid(s: &str) -> SnapshotId {
    SnapshotId::parse(s).expect("id")
}

#[test]
fn snapshot_ids_are_validated() {
    SnapshotId::parse("0123456789abcdef").expect("valid");
    let g = SnapshotId::generate().expect("rng");
    SnapshotId::parse(g.as_str()).expect("generated ids parse");
    for bad in [
        "",
        "../../../etc/pa",
        "0123456789abcde/",
        "../0123456789abcd",
        "0123456789ABCDEF",
        "0123456789abcde",
        "0123456789abcdef0",
        "0123456789abcdeg",
        "0123456789abcd\n",
        "０123456789abcde",
    ] {
        assert!(SnapshotId::parse(bad).is_err(), "{bad:?} accepted");
    }
    let json = r#""../etc/passwd""#;
    assert!(serde_json::from_str::<SnapshotId>(json).is_err());
}

/// Writes records as chunks with the planner; returns refs + indexes and
/// the total plaintext size.
pub(super) fn write_chunks(
    records: &[Record],
    codec: &Codec,
    target: usize,
) -> (Vec<(ChunkRef, ChunkIndex)>, usize) {
    let mut p = ChunkPlanner::new(target, 10_000);
    let mut planned = Vec::new();
    for r in records {
        planned.extend(p.push(r).expect("push"));
    }
    planned.extend(p.finish());
    let mut plain = 0;
    let out = planned
        .into_iter()
        .map(|c| {
            plain += c.plaintext.len();
            let (r, _, _) = ChunkRef::encode(&c, codec).expect("encode");
            (r, c.index)
        })
        .collect();
    (out, plain)
}

pub(super) fn manifest(chunks: Vec<ChunkRef>, parent: Option<SnapshotId>) -> Manifest {
    let id = sid("00112233445566ff");
    let record_count = chunks.iter().map(ChunkRef::live_records).sum();
    let mut m = Manifest {
        format_version: MANIFEST_FORMAT,
        snapshot_id: id.clone(),
        metadata: BackupMetadata {
            backup_id: id,
            created_at: "2026-11-25T20:00:00Z".into(),
            backup_type: if parent.is_some() {
                BackupType::Incremental
            } else {
                BackupType::Full
            },
            collections: vec![],
            size_bytes: 0,
            checksum: String::new(),
            chroma_version: "1.5.9".into(),
        },
        parent,
        host: "db1".into(),
        trigger: Trigger::Schedule,
        duration_ms: 1234,
        encrypted: true,
        bytes_written: 0,
        bytes_referenced: 0,
        collections: vec![CollectionSnapshot {
            name: "docs".into(),
            id: "6b4a1c1e-0000-4000-8000-000000000000".into(),
            tenant: "default_tenant".into(),
            database: "default_database".into(),
            metadata: Some(serde_json::json!({"owner": "search"})),
            configuration_json: serde_json::json!({"hnsw": {"space": "l2", "ef_search": 100}}),
            schema: Some(serde_json::json!({"defaults": {}})),
            record_count,
            chunks,
            change_mark: None,
            queries: None,
        }],
        physical: None,
    };
    m.finalize();
    m
}

#[test]
fn manifest_round_trip_and_validation() {
    let codec = Codec::Encrypted(DataKey::generate().expect("rng"));
    let records: Vec<Record> = (0..300).map(|i| synthetic(i, 8)).collect();
    let (chunks, _) = write_chunks(&records, &codec, 8 * 1024);
    let refs: Vec<ChunkRef> = chunks.iter().map(|(r, _)| r.clone()).collect();
    let m = manifest(refs, None);
    m.validate().expect("valid");
    let e = m.encode(&codec).expect("encode");
    let back = Manifest::decode(&e.bytes, &codec, Some(&m.snapshot_id)).expect("decode");
    assert_eq!(back, m);
    assert!(Manifest::decode(&e.bytes, &codec, Some(&sid("ffffffffffffffff"))).is_err());
    assert!(matches!(
        Manifest::decode(&e.bytes, &Codec::Plain, None),
        Err(ManifestError::Format(FormatError::EncryptedNeedsKey))
    ));
    for (r, idx) in &chunks {
        r.check_index(idx).expect("index matches");
    }

    let broken = |f: &dyn Fn(&mut Manifest)| {
        let mut x = m.clone();
        f(&mut x);
        x.validate().expect_err("must be rejected")
    };
    broken(&|x| x.collections[0].record_count += 1);
    broken(&|x| {
        let c = x.collections[0].chunks[0].clone();
        x.collections[0].chunks.push(c);
    });
    broken(&|x| x.collections[0].chunks[0].id = "../../etc/passwd".into());
    broken(&|x| x.collections[0].chunks[0].excluded_ids = vec!["a".into(), "a".into()]);
    broken(&|x| x.metadata.backup_id = sid("0000000000000001"));
    broken(&|x| x.metadata.checksum = "0".repeat(64));
    broken(&|x| x.metadata.backup_type = BackupType::Incremental);
    broken(&|x| x.format_version = 2);
    broken(&|x| x.bytes_referenced += 1);
    broken(&|x| x.metadata.created_at = "yesterday".into());
    // Exclusions are reflected in the count after sealing.
    let mut x = m.clone();
    x.collections[0].chunks[0].excluded_ids = vec!["doc-000000".into()];
    x.collections[0].record_count -= 1;
    x.finalize();
    x.validate().expect("valid with exclusion");
    let idx = &chunks[0].1;
    x.collections[0].chunks[0]
        .check_index(idx)
        .expect("excluded id is in chunk");
    x.collections[0].chunks[0].excluded_ids = vec!["nope".into()];
    assert!(x.collections[0].chunks[0].check_index(idx).is_err());
}

#[test]
fn chunk_refs_read_and_verify_with_and_without_the_key() {
    let codec = Codec::Encrypted(DataKey::generate().expect("rng"));
    let records: Vec<Record> = (0..50).map(|i| synthetic(i, 8)).collect();
    let mut p = ChunkPlanner::new(1 << 30, 10_000);
    for r in &records {
        assert!(p.push(r).expect("push").is_none());
    }
    let planned = p.finish().expect("one chunk");
    let (mut r, chunk, index) = ChunkRef::encode(&planned, &codec).expect("encode");
    r.verify_stored(&chunk.bytes, &index.bytes)
        .expect("no key needed");
    assert_eq!(
        r.verify_with_key(&chunk.bytes, &index.bytes, &codec)
            .expect("key"),
        50
    );
    r.excluded_ids = vec!["doc-000003".into(), "doc-000007".into()];
    let live = r.read_records(&chunk.bytes, &codec).expect("read");
    assert_eq!(live.len(), 48);
    assert!(live
        .iter()
        .all(|x| x.id != "doc-000003" && x.id != "doc-000007"));
    assert!(live[0].bit_eq(&records[0]));
    // Without the key: only the stored-bytes checks are possible.
    assert!(matches!(
        r.read_records(&chunk.bytes, &Codec::Plain),
        Err(ManifestError::Format(FormatError::EncryptedNeedsKey))
    ));
    // Damage is found with and without the key.
    let mut bad = chunk.bytes.clone();
    bad[40] ^= 0x10;
    assert!(r.verify_stored(&bad, &index.bytes).is_err());
    assert!(r.read_records(&bad, &codec).is_err());
    assert!(r
        .verify_stored(&chunk.bytes[..chunk.bytes.len() - 1], &index.bytes)
        .is_err());
    assert!(r.verify_stored(&index.bytes, &chunk.bytes).is_err());
    // An index that lies about the records is caught with the key.
    let mut lying = planned.index.clone();
    lying.entries[5].1 = lying.entries[6].1;
    let li = format::encode(ObjectKind::Index, &lying.encode().expect("idx"), &codec).expect("enc");
    let liar = ChunkRef {
        index_id: li.id.clone(),
        index_checksum: li.checksum.clone(),
        index_stored_size: li.bytes.len() as u64,
        ..r.clone()
    };
    liar.verify_stored(&chunk.bytes, &li.bytes)
        .expect("stored bytes are fine");
    assert!(matches!(
        liar.verify_with_key(&chunk.bytes, &li.bytes, &codec),
        Err(ManifestError::Inconsistent(_))
    ));
}

#[test]
fn newer_manifest_version_is_named() {
    let json = br#"{"format_version":7,"whatever":true}"#;
    let e = format::encode(ObjectKind::Manifest, json, &Codec::Plain).expect("enc");
    let err = Manifest::decode(&e.bytes, &Codec::Plain, None).expect_err("v7");
    assert!(matches!(
        err,
        ManifestError::UnsupportedVersion { found: 7, .. }
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn garbage_manifests_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Manifest::decode(&bytes, &Codec::Plain, None);
        if let Ok(e) = format::encode(ObjectKind::Manifest, &bytes, &Codec::Plain) {
            prop_assert!(Manifest::decode(&e.bytes, &Codec::Plain, None).is_err());
        }
    }

    #[test]
    fn flipped_manifest_bits_are_errors(bit in any::<prop::sample::Index>()) {
        let refs = vec![ChunkRef {
            id: "a".repeat(64), checksum: "b".repeat(64), stored_size: 10, records: 3,
            index_id: "c".repeat(64), index_checksum: "d".repeat(64), index_stored_size: 5,
            excluded_ids: vec![],
        }];
        let m = manifest(refs, None);
        let e = m.encode(&Codec::Plain).expect("enc");
        let mut bytes = e.bytes.clone();
        let b = bit.index(bytes.len() * 8);
        bytes[b / 8] ^= 1 << (b % 8);
        prop_assert!(format::verify_stored(&bytes, &e.checksum).is_err());
        prop_assert!(Manifest::decode(&bytes, &Codec::Plain, None).is_err());
    }
}

fn physical_manifest() -> Manifest {
    let mut m = manifest(vec![], None);
    m.collections.clear();
    m.format_version = PHYSICAL_MANIFEST_FORMAT;
    m.metadata.backup_type = BackupType::Physical;
    let hex = |c: char| c.to_string().repeat(64);
    m.physical = Some(PhysicalContent {
        migrations: vec![MigrationLevel {
            dir: "sysdb".into(),
            version: 10,
        }],
        files: vec![PhysicalFile {
            path: "chroma.sqlite3".into(),
            size: 10,
            sha256: hex('a'),
            blocks: vec![
                BlockRef {
                    id: hex('b'),
                    checksum: hex('c'),
                    stored_size: 7,
                    size: 6,
                },
                BlockRef {
                    id: hex('d'),
                    checksum: hex('e'),
                    stored_size: 5,
                    size: 4,
                },
            ],
        }],
        collections: vec![PhysicalCollection {
            name: "docs".into(),
            id: "c1".into(),
            segment: "s1".into(),
            flushed_seq_id: Some(9),
            records: 12,
        }],
        writer_blocked_ms: 3,
        attempts: 1,
    });
    m.finalize();
    m
}

#[test]
fn a_physical_manifest_round_trips_and_is_checked() {
    let codec = Codec::Encrypted(DataKey::generate().expect("rng"));
    let m = physical_manifest();
    assert_eq!(m.metadata.collections, vec!["docs".to_string()]);
    assert_eq!(m.bytes_referenced, 12);
    assert_eq!(m.record_count(), 12);
    let enc = m.encode(&codec).expect("encode");
    let back = Manifest::decode(&enc.bytes, &codec, Some(&m.snapshot_id)).expect("decode");
    assert_eq!(back, m);

    // Written as format 1 (what an older reader accepts), it is refused.
    let mut old = m.clone();
    old.format_version = MANIFEST_FORMAT;
    assert!(matches!(
        old.validate(),
        Err(ManifestError::UnsupportedVersion { found: 1, .. })
    ));
    // A logical manifest with files, or a physical one with records.
    let mut mixed = manifest(vec![], None);
    mixed.physical = m.physical.clone();
    mixed.format_version = PHYSICAL_MANIFEST_FORMAT;
    mixed.finalize();
    assert!(mixed.validate().is_err());
    // Paths must stay inside the directory; sizes must add up; the
    // database must be there.
    for bad in ["../etc/passwd", "/etc/passwd", "a/./b", "a//b", ""] {
        let mut p = m.clone();
        if let Some(ph) = p.physical.as_mut() {
            ph.files[0].path = bad.into();
        }
        p.finalize();
        assert!(p.validate().is_err(), "{bad:?} accepted");
    }
    let mut short = m.clone();
    if let Some(ph) = short.physical.as_mut() {
        ph.files[0].size = 11;
    }
    short.finalize();
    assert!(short.validate().is_err());
    // Content checksum covers the blocks.
    let mut other = m.clone();
    if let Some(ph) = other.physical.as_mut() {
        ph.files[0].blocks[1].id = "f".repeat(64);
    }
    assert_ne!(other.content_checksum(), m.content_checksum());
}
