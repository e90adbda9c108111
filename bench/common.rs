//! What the benchmarks share (`#[path]`-included by `bench/backup.rs` and
//! `bench/changes.rs`): the seeded records (N × 384, documents of 100–200
//! characters, eight metadata keys), the raw paged read, timing statistics,
//! and peak-memory measurement in a child process (the bench binary
//! re-executed, its `VmHWM` read at the end).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use chromaprod::chroma::{GetRequest, Include, ProductionChromaStore, RecordBatch};
use chromaprod::observe::MetricsCollector;
use serde_json::{json, Map, Value};

pub const DIM: usize = 384;
/// The collection every bench seeds.
pub const COLLECTION: &str = "bench";
/// Records per `get` page of the raw paged read.
pub const PAGE: usize = 1000;

// ---------------------------------------------------------------- data

pub fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Record `i` in `version` (0 = as seeded; 1 = after the 1 % update).
pub fn vector(i: usize, version: u64) -> Vec<f32> {
    let mut s = splitmix(i as u64 ^ (version << 40));
    (0..DIM)
        .map(|_| {
            s = splitmix(s);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

pub const WORDS: &[&str] = &[
    "vector",
    "index",
    "backup",
    "restore",
    "chunk",
    "query",
    "embedding",
    "server",
    "daemon",
    "record",
    "snapshot",
    "metadata",
    "document",
    "collection",
    "shard",
    "replica",
    "latency",
    "the",
    "of",
    "and",
    "a",
    "to",
    "in",
    "is",
    "for",
    "with",
    "on",
    "from",
    "über",
    "café",
];

pub fn document(i: usize, version: u64) -> String {
    let mut s = splitmix(i as u64 * 3 + version);
    let target = 100 + (s % 101) as usize;
    let mut d = format!("doc {i} v{version}:");
    while d.len() < target {
        s = splitmix(s);
        d.push(' ');
        d.push_str(WORDS[(s % WORDS.len() as u64) as usize]);
    }
    d
}

pub fn metadata(i: usize, version: u64) -> Map<String, Value> {
    let s = splitmix(i as u64 * 7 + version);
    let lang = ["en", "de", "fr", "ja"][i % 4];
    json!({
        "source": format!("feed-{}", i % 17),
        "lang": lang,
        "seq": i,
        "version": version,
        "score": (s % 10_000) as f64 / 7.0,
        "weight": i as f64 / 3.0,
        "published": i % 2 == 0,
        "reviewed": s % 3 == 0,
    })
    .as_object()
    .cloned()
    .expect("object")
}

/// Records per seeding upsert.
pub const SEED_BATCH: usize = 1000;

/// Upserts records `from..to` at version 0, [`SEED_BATCH`] a request.
pub async fn seed_range(store: &ProductionChromaStore, coll: &str, from: usize, to: usize) {
    for start in (from..to).step_by(SEED_BATCH) {
        store
            .upsert(coll, &batch(start..(start + SEED_BATCH).min(to), |_| 0))
            .await
            .expect("seed");
    }
}

pub fn batch(range: std::ops::Range<usize>, version_of: impl Fn(usize) -> u64) -> RecordBatch {
    RecordBatch {
        ids: range.clone().map(|i| format!("rec-{i:07}")).collect(),
        embeddings: Some(range.clone().map(|i| vector(i, version_of(i))).collect()),
        documents: Some(
            range
                .clone()
                .map(|i| Some(document(i, version_of(i))))
                .collect(),
        ),
        metadatas: Some(range.map(|i| Some(metadata(i, version_of(i)))).collect()),
        uris: None,
    }
}

// ---------------------------------------------------------------- helpers

pub fn dir_size(p: &Path) -> u64 {
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            n += if m.is_dir() {
                dir_size(&e.path())
            } else {
                m.len()
            };
        }
    }
    n
}

/// Sum of the recorded durations of `operation` (seconds), from the
/// Prometheus text of `metrics`.
pub fn op_seconds(metrics: &MetricsCollector, operation: &str) -> f64 {
    let needle = format!("operation=\"{operation}\"");
    metrics
        .encode()
        .lines()
        .filter(|l| l.contains("request_duration_seconds_sum") && l.contains(&needle))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub fn best(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NAN, f64::min)
}

/// The `GLIBC_TUNABLES` value the systemd unit sets (read from
/// `systemd/chromaprod.service`, so the two cannot drift apart).
pub fn unit_malloc_tunables() -> String {
    let unit = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("systemd/chromaprod.service");
    std::fs::read_to_string(&unit)
        .expect("unit file")
        .lines()
        .find_map(|l| l.strip_prefix("Environment=GLIBC_TUNABLES="))
        .expect("the unit sets GLIBC_TUNABLES")
        .trim()
        .to_string()
}

/// Pages through every record with limit/offset, all fields, decoded and
/// dropped. Returns (records, approximate JSON bytes of the records).
pub async fn raw_read(store: &ProductionChromaStore, id: &str) -> (usize, u64) {
    let mut offset = 0;
    let mut bytes = 0u64;
    loop {
        let page = store
            .get_records(id, &GetRequest::page(offset, PAGE, &Include::RECORD))
            .await
            .expect("get page");
        let got = page.ids.len();
        if offset == 0 {
            // Size of the first page's JSON, scaled (for MB/s only).
            bytes = serde_json::to_vec(&json!({
                "ids": page.ids, "embeddings": page.embeddings,
                "documents": page.documents, "metadatas": page.metadatas
            }))
            .map_or(0, |v| v.len() as u64);
        }
        drop(page);
        offset += got;
        if got < PAGE {
            break;
        }
    }
    (offset, bytes * offset as u64 / PAGE.max(1) as u64)
}

/// The `p`-th percentile (0–100, nearest rank) of `v`.
pub fn percentile(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// The load averages (1, 5, 15 minutes) from `/proc/loadavg`.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

// ---------------------------------------------------------------- child

/// In a child process, after its work: prints the line [`run_child`] reads
/// (`VmHWM_KB <kB> MS <ms> BYTES <n>`), the peak resident set from
/// `/proc/self/status`.
pub fn report_peak(ms: u128, bytes: u64) {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("0")
        .to_string();
    println!("VmHWM_KB {hwm} MS {ms} BYTES {bytes}");
}

/// Runs this bench binary again with `env` (which selects its child mode),
/// with glibc's malloc defaults or `tunables` as `GLIBC_TUNABLES`; the
/// child's peak RSS (kB) and time (ms), as it printed them with
/// [`report_peak`].
pub fn run_child(env: &[(&str, OsString)], tunables: Option<&str>) -> (u64, u64) {
    let mut cmd = Command::new(std::env::current_exe().expect("exe"));
    match tunables {
        Some(t) => cmd.env("GLIBC_TUNABLES", t),
        None => cmd.env_remove("GLIBC_TUNABLES"),
    };
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("child");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed: {}\n{}",
        text,
        String::from_utf8_lossy(&out.stderr)
    );
    let line = text
        .lines()
        .find(|l| l.starts_with("VmHWM_KB"))
        .expect("line");
    let f: Vec<&str> = line.split_whitespace().collect();
    (f[1].parse().expect("kb"), f[3].parse().expect("ms"))
}

/// A backup request: every collection for a full backup, [`COLLECTION`]
/// alone otherwise.
pub fn request(backup_type: chromaprod::backup::BackupType) -> chromaprod::backup::BackupRequest {
    chromaprod::backup::BackupRequest {
        backup_type,
        collections: if backup_type == chromaprod::backup::BackupType::Full {
            vec![]
        } else {
            vec![COLLECTION.into()]
        },
        trigger: chromaprod::backup::Trigger::Command,
    }
}

/// A backup manager for `c`, with metrics of its own.
pub async fn manager(
    c: &std::sync::Arc<chromaprod::config::Config>,
) -> chromaprod::backup::BackupManager {
    let store =
        ProductionChromaStore::new(c, std::sync::Arc::new(MetricsCollector::new())).expect("store");
    chromaprod::backup::BackupManager::open(store, c.clone(), true)
        .await
        .expect("open repository")
}
