//! The migration plan: a pure function of (files, recorded history).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

use super::file::Migration;
use super::history::{HistoryEntry, Outcome};
use super::MigrationError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Up,
    Down,
}

/// One migration to run, in one direction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    pub version: u32,
    pub name: String,
    pub direction: Direction,
}

/// Why the recorded history and the files disagree (Flyway's `validate`).
pub fn problems(files: &[Migration], history: &[HistoryEntry]) -> Vec<MigrationError> {
    let by_version: HashMap<u32, &Migration> = files.iter().map(|m| (m.version, m)).collect();
    let mut out = Vec::new();
    let mut highest_applied = 0;
    for h in history {
        if h.outcome.is_applied() {
            highest_applied = highest_applied.max(h.version);
        }
        match by_version.get(&h.version) {
            None if h.outcome == Outcome::Baselined => {}
            None => out.push(MigrationError::MissingFile {
                version: h.version,
                name: h.name.clone(),
            }),
            Some(m) if h.outcome != Outcome::Baselined && m.checksum != h.checksum => {
                out.push(MigrationError::Diverged {
                    version: h.version,
                    name: h.name.clone(),
                    recorded: h.checksum.clone(),
                    file: m.checksum.clone(),
                })
            }
            Some(_) => {}
        }
    }
    let applied: BTreeSet<u32> = history
        .iter()
        .filter(|h| h.outcome.is_applied())
        .map(|h| h.version)
        .collect();
    for m in files {
        if !applied.contains(&m.version) && m.version < highest_applied {
            out.push(MigrationError::OutOfOrder {
                version: m.version,
                name: m.name.clone(),
                applied: highest_applied,
            });
        }
    }
    out
}

/// Fails with the first problem, if any.
pub fn check(files: &[Migration], history: &[HistoryEntry]) -> Result<(), MigrationError> {
    match problems(files, history).into_iter().next() {
        Some(p) => Err(p),
        None => Ok(()),
    }
}

/// The migrations to apply to reach `to` (default: all), in an order that
/// respects dependencies (lowest version first among those ready).
pub fn plan_up(
    files: &[Migration],
    history: &[HistoryEntry],
    to: Option<u32>,
) -> Result<Vec<Step>, MigrationError> {
    check(files, history)?;
    let applied: BTreeSet<u32> = history
        .iter()
        .filter(|h| h.outcome.is_applied())
        .map(|h| h.version)
        .collect();
    let target = to.unwrap_or(u32::MAX);
    if let Some(t) = to {
        if t != 0 && !files.iter().any(|m| m.version == t) {
            return Err(MigrationError::NoSuchVersion(t));
        }
    }
    let pending: BTreeMap<u32, &Migration> = files
        .iter()
        .filter(|m| m.version <= target && !applied.contains(&m.version))
        .map(|m| (m.version, m))
        .collect();
    let mut done = applied.clone();
    let mut steps = Vec::new();
    let mut left: BTreeSet<u32> = pending.keys().copied().collect();
    while !left.is_empty() {
        let ready = left
            .iter()
            .copied()
            .find(|v| pending[v].dependencies.iter().all(|d| done.contains(d)));
        let Some(v) = ready else {
            let v = *left.iter().next().unwrap_or(&0);
            let m = pending[&v];
            let missing: Vec<String> = m
                .dependencies
                .iter()
                .filter(|d| !done.contains(d))
                .map(u32::to_string)
                .collect();
            return Err(MigrationError::Unreachable {
                version: v,
                why: format!(
                    "it depends on {} which {} not applied and not planned up to {}",
                    missing.join(", "),
                    if missing.len() == 1 { "is" } else { "are" },
                    to.map_or("the latest".to_string(), |t| t.to_string())
                ),
            });
        };
        left.remove(&v);
        done.insert(v);
        steps.push(Step {
            version: v,
            name: pending[&v].name.clone(),
            direction: Direction::Up,
        });
    }
    Ok(steps)
}

/// The migrations to undo to get back to version `to` (those applied above
/// it), dependents before their dependencies (highest version first).
pub fn plan_down(
    files: &[Migration],
    history: &[HistoryEntry],
    to: u32,
) -> Result<Vec<Step>, MigrationError> {
    check(files, history)?;
    let by_version: HashMap<u32, &Migration> = files.iter().map(|m| (m.version, m)).collect();
    let mut applied: Vec<&HistoryEntry> = history
        .iter()
        .filter(|h| h.outcome.is_applied() && h.version > to)
        .collect();
    applied.sort_by_key(|h| std::cmp::Reverse(h.version));
    let kept: BTreeSet<u32> = history
        .iter()
        .filter(|h| h.outcome.is_applied() && h.version <= to)
        .map(|h| h.version)
        .collect();
    // A migration that stays applied cannot depend on one being undone.
    for v in &kept {
        if let Some(m) = by_version.get(v) {
            if let Some(d) = m.dependencies.iter().find(|d| **d > to) {
                return Err(MigrationError::Unreachable {
                    version: *d,
                    why: format!("migration {v} stays applied and depends on it"),
                });
            }
        }
    }
    let mut steps = Vec::new();
    for h in applied {
        if h.outcome == Outcome::Baselined {
            return Err(MigrationError::Unreachable {
                version: h.version,
                why: "it was stamped (baselined), not applied, so there is nothing to undo; use `chromaprod migrate stamp` to move the recorded version".into(),
            });
        }
        steps.push(Step {
            version: h.version,
            name: h.name.clone(),
            direction: Direction::Down,
        });
    }
    Ok(steps)
}

/// A collection kept by an earlier run that running a migration would delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptInTheWay {
    pub version: u32,
    /// The collection the operation works on.
    pub collection: String,
    /// The kept collection, e.g. `docs.pre-v3`.
    pub kept: String,
}

/// The kept collections that running `m` up would delete if they exist
/// (see [`crate::migrate::Operation::replaces_kept`]): those of the
/// operations still to run, given `earlier` (its recorded entry, if any).
/// A run resumed at its swap made its kept collection itself; that one is
/// not in the way.
pub fn kept_in_the_way(m: &Migration, earlier: Option<&HistoryEntry>) -> Vec<KeptInTheWay> {
    // As the runner resumes: an interrupted or failed run of the same file.
    let resume = earlier.filter(|h| {
        matches!(h.outcome, Outcome::Running | Outcome::Failed) && h.checksum == m.checksum
    });
    let from = resume.map_or(0, |h| h.op_index.min(m.up.len()));
    let swapping = resume
        .and_then(|h| h.checkpoint.as_ref())
        .and_then(|c| c.get("phase"))
        .and_then(serde_json::Value::as_str)
        .is_some_and(|p| p == "swap" || p == "swapped");
    m.up.iter()
        .enumerate()
        .skip(from)
        .filter(|(i, _)| !(*i == from && swapping))
        .filter_map(|(_, op)| op.replaces_kept(m.version))
        .map(|(collection, kept)| KeptInTheWay {
            version: m.version,
            collection: collection.to_string(),
            kept,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migrate::file::{check_set, parse};
    use crate::migrate::operation::Operation;
    use std::path::Path;

    fn m(version: u32, deps: &[u32]) -> Migration {
        Migration {
            version,
            name: format!("m{version}"),
            description: None,
            dependencies: deps.to_vec(),
            up: vec![Operation::RenameCollection {
                from: "aaa".into(),
                to: "bbb".into(),
            }],
            down: None,
            checksum: format!("sum{version}"),
            path: format!("{version:04}_m{version}.toml").into(),
        }
    }

    fn applied(version: u32) -> HistoryEntry {
        HistoryEntry {
            version,
            name: format!("m{version}"),
            checksum: format!("sum{version}"),
            outcome: Outcome::Applied,
            ..HistoryEntry::default()
        }
    }

    fn versions(steps: &[Step]) -> Vec<u32> {
        steps.iter().map(|s| s.version).collect()
    }

    #[test]
    fn up_plans_pending_in_dependency_order() {
        let files = vec![m(1, &[]), m(2, &[3]), m(3, &[]), m(4, &[2])];
        let plan = plan_up(&files, &[applied(1)], None).expect("plan");
        assert_eq!(versions(&plan), vec![3, 2, 4]);
        let to = plan_up(&files, &[applied(1)], Some(3)).expect("plan");
        assert_eq!(versions(&to), vec![3, 2]);
        // Up to 2 needs 3, which is above the target.
        let err = plan_up(&files, &[applied(1)], Some(2)).expect_err("unreachable");
        assert!(err.to_string().contains("depends on 3"), "{err}");
        assert!(plan_up(
            &files,
            &[applied(1), applied(2), applied(3), applied(4)],
            None
        )
        .expect("plan")
        .is_empty());
        assert!(matches!(
            plan_up(&files, &[], Some(9)),
            Err(MigrationError::NoSuchVersion(9))
        ));
    }

    #[test]
    fn failed_and_running_migrations_stay_pending() {
        let files = vec![m(1, &[]), m(2, &[])];
        let mut failed = applied(2);
        failed.outcome = Outcome::Failed;
        let plan = plan_up(&files, &[applied(1), failed.clone()], None).expect("plan");
        assert_eq!(versions(&plan), vec![2]);
        failed.outcome = Outcome::Running;
        assert_eq!(
            versions(&plan_up(&files, &[applied(1), failed], None).expect("plan")),
            vec![2]
        );
    }

    #[test]
    fn a_rebuild_still_to_run_has_its_kept_collection_in_the_way() {
        let rebuild = |c: &str| Operation::Rebuild {
            collection: c.into(),
            configuration: serde_json::json!({"hnsw": {"space": "cosine"}}),
            sample: 1,
            k: 1,
            min_overlap: 0.9,
            max_passes: 1,
            max_lag: 0,
            max_lag_ms: 0,
            settle_ms: 0,
        };
        let mut mig = m(3, &[]);
        mig.up = vec![rebuild("docs"), mig.up[0].clone(), rebuild("news")];
        let kept = |e: Option<&HistoryEntry>| -> Vec<String> {
            kept_in_the_way(&mig, e)
                .into_iter()
                .map(|k| k.kept)
                .collect()
        };
        assert_eq!(kept(None), vec!["docs.pre-v3", "news.pre-v3"]);
        // A run that got past the first rebuild: only the second is to run.
        let mut running = applied(3);
        running.outcome = Outcome::Running;
        running.op_index = 1;
        assert_eq!(kept(Some(&running)), vec!["news.pre-v3"]);
        // Resumed mid-copy, the rebuild will delete; resumed at its swap, the
        // kept collection is the one this run made.
        running.op_index = 2;
        running.checkpoint = Some(serde_json::json!({"phase": "copy", "last_id": "x"}));
        assert_eq!(kept(Some(&running)), vec!["news.pre-v3"]);
        running.checkpoint = Some(serde_json::json!({"phase": "swapped"}));
        assert!(kept(Some(&running)).is_empty());
        // An entry of another file (edited since) is not resumed.
        running.checksum = "other".into();
        assert_eq!(kept(Some(&running)).len(), 2);
        let ours = &kept_in_the_way(&mig, None)[0];
        assert_eq!((ours.version, ours.collection.as_str()), (3, "docs"));
    }

    #[test]
    fn down_undoes_highest_first_and_keeps_dependencies_sound() {
        let files = vec![m(1, &[]), m(2, &[1]), m(3, &[])];
        let h = [applied(1), applied(2), applied(3)];
        assert_eq!(
            versions(&plan_down(&files, &h, 1).expect("plan")),
            vec![3, 2]
        );
        assert_eq!(
            versions(&plan_down(&files, &h, 0).expect("plan")),
            vec![3, 2, 1]
        );
        let files = vec![m(1, &[]), m(2, &[3]), m(3, &[])];
        let err = plan_down(&files, &h, 2).expect_err("2 depends on 3");
        assert!(err.to_string().contains("depends on it"), "{err}");
    }

    #[test]
    fn edited_missing_and_out_of_order_are_refused() {
        let files = vec![m(1, &[]), m(2, &[]), m(3, &[])];
        let mut edited = applied(2);
        edited.checksum = "other".into();
        let err = plan_up(&files, &[applied(1), edited], None).expect_err("diverged");
        assert!(
            matches!(err, MigrationError::Diverged { version: 2, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("repair"), "{err}");

        let err = plan_up(&files[..1], &[applied(1), applied(2)], None).expect_err("missing");
        assert!(
            matches!(err, MigrationError::MissingFile { version: 2, .. }),
            "{err}"
        );

        let err = plan_up(&files, &[applied(1), applied(3)], None).expect_err("out of order");
        assert!(
            matches!(
                err,
                MigrationError::OutOfOrder {
                    version: 2,
                    applied: 3,
                    ..
                }
            ),
            "{err}"
        );

        // A stamped version needs no file and no matching checksum.
        let mut stamped = applied(1);
        stamped.outcome = Outcome::Baselined;
        stamped.checksum = String::new();
        assert_eq!(
            versions(&plan_up(&files[1..], &[stamped], None).expect("plan")),
            vec![2, 3]
        );
    }

    #[test]
    fn set_problems_are_all_reported() {
        let mut a = m(2, &[]);
        a.path = "a/0002_a.toml".into();
        let mut b = m(2, &[]);
        b.path = "b/0002_b.toml".into();
        let files = vec![a, b, m(3, &[7]), m(4, &[5]), m(5, &[4])];
        let p = check_set(&files);
        assert_eq!(p.len(), 3, "{p:#?}");
        assert!(p[0].contains("version 2 is declared by 2 files"));
        assert!(p[1].contains("depends on version 7"));
        assert!(p[2].contains("cycle: 4 → 5 → 4"), "{}", p[2]);
    }

    #[test]
    fn files_parse_with_their_problems_named() {
        let ok = parse(
            Path::new("0002_docs_cosine.toml"),
            b"version = 2\nname = \"docs cosine\"\ndependencies = [1]\n[[up]]\nop = \"rebuild\"\ncollection = \"docs\"\nconfiguration = { hnsw = { space = \"cosine\" } }\n",
        )
        .expect("parses");
        assert_eq!(ok.version, 2);
        assert_eq!(ok.dependencies, vec![1]);
        assert!(matches!(
            &ok.up[0],
            Operation::Rebuild {
                sample: 50,
                k: 10,
                ..
            }
        ));
        // Rebuild's down is derived: swap back with the kept collection.
        assert_eq!(
            ok.down_ops().expect("derived"),
            vec![Operation::SwapCollections {
                a: "docs".into(),
                b: "docs.pre-v2".into()
            }]
        );

        let unknown = parse(
            Path::new("0003_x.toml"),
            b"version = 3\nname = \"x\"\n[[up]]\nop = \"teleport\"\ncollection = \"docs\"\n",
        )
        .expect_err("unknown op");
        assert!(unknown[0].contains("teleport"), "{unknown:?}");

        let mismatch = parse(
            Path::new("0004_x.toml"),
            b"version = 5\nname = \"x\"\n[[up]]\nop = \"drop_collection\"\nname = \"docs\"\nkeep = false\n",
        )
        .expect_err("two problems");
        assert_eq!(mismatch.len(), 2, "{mismatch:?}");
        assert!(mismatch[0].contains("file name says version 4"));
        assert!(mismatch[1].contains("confirm = \"docs\""));

        // No obvious inverse: down must be written.
        let irreversible = parse(
            Path::new("0006_x.toml"),
            b"version = 6\nname = \"x\"\n[[up]]\nop = \"delete_records\"\ncollection = \"docs\"\nwhere = { stale = true }\n",
        )
        .expect("parses");
        let err = irreversible.down_ops().expect_err("irreversible");
        assert!(err.to_string().contains("delete_records"), "{err}");
    }

    #[test]
    fn checksums_ignore_line_endings_only() {
        let a = crate::migrate::file::checksum(b"version = 1\nname = \"a\"\n");
        let b = crate::migrate::file::checksum(b"version = 1\r\nname = \"a\"\r\n");
        let c = crate::migrate::file::checksum(b"version = 1\nname = \"b\"\n");
        assert_eq!(a, b);
        assert_ne!(a, c);
        // Pinned: SHA-256 of the bytes, stable across builds and releases.
        assert_eq!(
            crate::migrate::file::checksum(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
