//! What a physical snapshot's manifest holds (`backup_type` `physical`,
//! manifest format 2): Chroma's persist directory as files cut into
//! content-addressed blocks, with what identifies the Chroma that wrote it.

use serde::{Deserialize, Serialize};

/// The manifest format version of a physical snapshot. A reader that knows
/// only format 1 (logical snapshots) refuses it and says to upgrade.
pub const PHYSICAL_MANIFEST_FORMAT: u32 = 2;

/// Chroma's persist directory as a physical snapshot stores it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PhysicalContent {
    /// Chroma's SQLite migration levels in the copy: a restore onto
    /// another level is refused unless forced.
    pub migrations: Vec<MigrationLevel>,
    /// Every file, `chroma.sqlite3` first, then each vector segment's files.
    pub files: Vec<PhysicalFile>,
    /// The collections in the copy, with their vector segments.
    pub collections: Vec<PhysicalCollection>,
    /// How long the database copy held Chroma's writer back, in ms.
    pub writer_blocked_ms: u64,
    /// Copy rounds taken until no vector segment moved (1: none did).
    pub attempts: u32,
}

/// One of Chroma's migration directories and the highest version applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationLevel {
    pub dir: String,
    pub version: i64,
}

/// One file of the persist directory.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PhysicalFile {
    /// Relative to the persist directory, `/`-separated, no `..`.
    pub path: String,
    pub size: u64,
    /// Hex SHA-256 of the file's bytes.
    pub sha256: String,
    /// The file's bytes, in order.
    pub blocks: Vec<BlockRef>,
}

/// A block of a file: a `blocks/` object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRef {
    /// Content address of the block's plaintext.
    pub id: String,
    /// Hex SHA-256 of the stored bytes.
    pub checksum: String,
    pub stored_size: u64,
    /// Plaintext bytes.
    pub size: u64,
}

/// A collection in a physical snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhysicalCollection {
    pub name: String,
    pub id: String,
    /// Its vector segment (the directory of its index files).
    pub segment: String,
    /// Where the vector segment's files were flushed (`max_seq_id`); Chroma
    /// replays its write-ahead log above it when it starts.
    pub flushed_seq_id: Option<u64>,
    /// Records in its metadata segment.
    pub records: u64,
}

impl PhysicalFile {
    /// Whether `path` is a safe relative path: no root, no `..`, no empty
    /// or `.` component, nothing but `/` as separator.
    pub fn path_is_safe(path: &str) -> bool {
        !path.is_empty()
            && !path.starts_with('/')
            && !path.contains('\\')
            && !path.contains('\0')
            && path
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != "..")
    }
}

impl PhysicalContent {
    /// Stored bytes of every block referenced (a block used twice counts twice).
    pub fn stored_bytes(&self) -> u64 {
        self.files
            .iter()
            .flat_map(|f| &f.blocks)
            .map(|b| b.stored_size)
            .sum()
    }

    /// Checks what a manifest check cannot see from the outside.
    pub fn validate(&self) -> Result<(), String> {
        let mut paths = std::collections::HashSet::new();
        for f in &self.files {
            if !PhysicalFile::path_is_safe(&f.path) {
                return Err(format!(
                    "file path {:?} is not a safe relative path",
                    f.path
                ));
            }
            if !paths.insert(f.path.as_str()) {
                return Err(format!("file {:?} appears twice", f.path));
            }
            if !super::is_hex64(&f.sha256) {
                return Err(format!("file {:?} has no valid sha256", f.path));
            }
            let total: u64 = f.blocks.iter().map(|b| b.size).sum();
            if total != f.size {
                return Err(format!(
                    "file {:?} is {} bytes but its blocks add up to {total}",
                    f.path, f.size
                ));
            }
            for b in &f.blocks {
                if !super::is_hex64(&b.id) || !super::is_hex64(&b.checksum) {
                    return Err(format!("file {:?} has a malformed block reference", f.path));
                }
            }
        }
        if !paths.contains(crate::chroma::local::DB_FILE) {
            return Err(format!("it has no {}", crate::chroma::local::DB_FILE));
        }
        Ok(())
    }
}
