//! Backups: the stored format (`format`, `records`, `manifest`) and keys
//! (`crypto`). `docs/backup-format.md` describes the repository layout and
//! the bytes; these modules are pure code over bytes and values.

pub mod crypto;
pub mod format;
pub mod manifest;
pub mod records;
