//! What each `MigrationManager` command returns: the results of
//! `chromaprod migrate status|validate|up|down|repair|stamp`, serialized
//! as the control protocol's `result` (docs/control-protocol.md).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `migrate status`: every version, file and record side by side.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrationStatus {
    /// The highest applied (or stamped) version; 0 when none.
    pub version: u32,
    pub migrations: Vec<MigrationRow>,
    /// Versions `up` would apply, in order (empty while there are problems).
    pub pending: Vec<u32>,
    pub problems: Vec<String>,
    /// `migrations.path`.
    pub path: PathBuf,
}

/// One version in `migrate status`; the history fields are `null` for a
/// version never run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrationRow {
    pub version: u32,
    pub name: Option<String>,
    pub state: MigrationState,
    pub applied_at: Option<String>,
    pub applied_by: Option<String>,
    pub duration_ms: Option<u64>,
    pub error: Option<String>,
    pub restore_point: Option<String>,
}

/// Where a version stands, as `migrate status` words it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MigrationState {
    #[serde(rename = "applied")]
    Applied,
    /// Applied, and its file was edited since.
    #[serde(rename = "applied, file changed")]
    AppliedFileChanged,
    /// Applied, and its file is gone.
    #[serde(rename = "applied, file missing")]
    AppliedFileMissing,
    /// Recorded as applied by `migrate stamp`, never run.
    #[serde(rename = "stamped")]
    Stamped,
    #[serde(rename = "failed")]
    Failed,
    /// Recorded as running: a run stopped (crash, cancel, lost lock).
    #[serde(rename = "interrupted")]
    Interrupted,
    #[serde(rename = "pending")]
    Pending,
}

/// `migrate validate`: files and history agree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Validation {
    /// Always `true` (disagreements are errors).
    pub valid: bool,
    /// Migration files found.
    pub files: usize,
    pub version: u32,
    pub pending: Vec<u32>,
}

/// `migrate up`: what was applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrationReport {
    pub applied: Vec<AppliedMigration>,
    /// The highest applied version afterwards.
    pub version: u32,
    /// Present when migrations ran under the lock: the restore point taken
    /// before them (`null` when none was taken). Absent when nothing was
    /// pending.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "serde_with_null"
    )]
    pub restore_point: Option<Option<String>>,
}

/// One migration applied by `up`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppliedMigration {
    pub version: u32,
    pub name: String,
    pub duration_ms: u64,
    /// What each operation did; the fields depend on the operation
    /// (docs/migrations.md).
    pub operations: Vec<Value>,
}

/// `migrate down`: what was undone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownReport {
    pub undone: Vec<UndoneMigration>,
    /// The highest applied version afterwards.
    pub version: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UndoneMigration {
    pub version: u32,
    pub name: String,
    pub duration_ms: u64,
}

/// `migrate repair`: the versions whose records changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairReport {
    /// Applied migrations whose edited file was accepted.
    pub checksums_realigned: Vec<u32>,
    /// Applied migrations whose file is gone, now forgotten.
    pub forgotten: Vec<u32>,
    /// Failed runs cleared, to start again from their first operation.
    pub failures_cleared: Vec<u32>,
}

/// `migrate stamp VERSION`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StampReport {
    pub version: u32,
    /// Versions recorded as stamped.
    pub stamped: Vec<u32>,
    /// Records above `version`, removed.
    pub removed: Vec<u32>,
}

/// A field that is absent (`None`), `null` (`Some(None)`) or a value.
mod serde_with_null {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer, T: Serialize>(
        v: &Option<Option<T>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            Some(inner) => inner.serialize(s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        d: D,
    ) -> Result<Option<Option<T>>, D::Error> {
        Option::<T>::deserialize(d).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn up_reports_keep_the_wire_shape() {
        let nothing = MigrationReport {
            applied: Vec::new(),
            version: 2,
            restore_point: None,
        };
        let ran = MigrationReport {
            applied: vec![AppliedMigration {
                version: 3,
                name: "add".into(),
                duration_ms: 5,
                operations: vec![json!({"collection": "docs", "records_changed": 1})],
            }],
            version: 3,
            restore_point: Some(None),
        };
        let with_point = MigrationReport {
            restore_point: Some(Some("ab12".into())),
            ..ran.clone()
        };
        for (report, wire) in [
            (nothing, json!({"applied": [], "version": 2})),
            (
                ran,
                json!({"applied": [{"version": 3, "name": "add", "duration_ms": 5,
                    "operations": [{"collection": "docs", "records_changed": 1}]}],
                    "version": 3, "restore_point": null}),
            ),
            (
                with_point,
                json!({"applied": [{"version": 3, "name": "add", "duration_ms": 5,
                    "operations": [{"collection": "docs", "records_changed": 1}]}],
                    "version": 3, "restore_point": "ab12"}),
            ),
        ] {
            assert_eq!(serde_json::to_value(&report).expect("json"), wire);
            let back: MigrationReport = serde_json::from_value(wire).expect("reads back");
            assert_eq!(back, report);
        }
    }

    #[test]
    fn states_read_as_status_words_them() {
        let row = MigrationRow {
            version: 1,
            name: Some("init".into()),
            state: MigrationState::AppliedFileChanged,
            applied_at: None,
            applied_by: None,
            duration_ms: None,
            error: None,
            restore_point: None,
        };
        assert_eq!(
            serde_json::to_value(&row).expect("json"),
            json!({"version": 1, "name": "init", "state": "applied, file changed",
                "applied_at": null, "applied_by": null, "duration_ms": null,
                "error": null, "restore_point": null})
        );
    }
}
