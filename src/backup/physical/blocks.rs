//! Files as blocks: a file is cut into [`BLOCK_SIZE`] pieces at fixed
//! offsets, each stored as a `blocks/` object under the content address of
//! its plaintext (compressed, encrypted like every object). Chroma's files
//! are written in place at fixed offsets (SQLite pages, HNSW's arrays of
//! fixed-size elements), so fixed offsets find the unchanged parts as well
//! as content-defined cuts would, and an unchanged file costs nothing.

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::path::Path;

use crate::backup::format::{self, ObjectKind};
use crate::backup::manifest::BlockRef;
use crate::backup::repository::{block_key, Repository};
use crate::backup::upload::store_object;
use crate::backup::BackupError;

/// Bytes per block (the last block of a file may be shorter).
pub const BLOCK_SIZE: usize = 4 * 1024 * 1024;

/// Blocks already in the repository, by content address: their stored
/// checksum and size (from earlier physical snapshots' manifests).
pub type Known = HashMap<String, (String, u64)>;

/// What storing a file cost.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stored {
    pub bytes_written: u64,
    pub objects_written: u64,
    pub objects_reused: u64,
}

fn read_block(file: &mut std::fs::File, path: &Path) -> Result<Vec<u8>, BackupError> {
    let mut buf = vec![0u8; BLOCK_SIZE];
    let mut n = 0;
    while n < BLOCK_SIZE {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(BackupError::LocalIo {
                    action: "read",
                    path: path.display().to_string(),
                    why: e.to_string(),
                })
            }
        }
    }
    buf.truncate(n);
    Ok(buf)
}

/// Stores the file at `path` as blocks; returns their references.
pub async fn store_file(
    repo: &Repository,
    path: &Path,
    known: &Known,
    stored: &mut Stored,
) -> Result<Vec<BlockRef>, BackupError> {
    let p = path.to_path_buf();
    let mut file = std::fs::File::open(&p).map_err(|e| BackupError::LocalIo {
        action: "read",
        path: p.display().to_string(),
        why: e.to_string(),
    })?;
    let mut refs = Vec::new();
    loop {
        let (block, f, id) = {
            let p = p.clone();
            let codec = repo.codec.clone();
            tokio::task::spawn_blocking(move || {
                let block = read_block(&mut file, &p)?;
                let id = codec.content_id(&block);
                Ok::<_, BackupError>((block, file, id))
            })
            .await
            .map_err(|e| BackupError::Corrupt(format!("read task failed: {e}")))??
        };
        file = f;
        if block.is_empty() {
            break;
        }
        let size = block.len() as u64;
        let last = block.len() < BLOCK_SIZE;
        if let Some((checksum, stored_size)) = known.get(&id) {
            if repo.exists(&block_key(&id)?).await? {
                stored.objects_reused += 1;
                refs.push(BlockRef {
                    id,
                    checksum: checksum.clone(),
                    stored_size: *stored_size,
                    size,
                });
                if last {
                    break;
                }
                continue;
            }
        }
        let o = store_object(repo, ObjectKind::Block, block).await?;
        if o.written > 0 {
            stored.objects_written += 1;
            stored.bytes_written += o.written;
        } else {
            stored.objects_reused += 1;
        }
        refs.push(BlockRef {
            id: o.id,
            checksum: o.checksum,
            stored_size: o.size,
            size,
        });
        if last {
            break;
        }
    }
    Ok(refs)
}

/// Reads one block, checked: present, its stored checksum, its content
/// address and its size. Errors name the object.
pub async fn fetch_block(repo: &Repository, b: &BlockRef) -> Result<Vec<u8>, BackupError> {
    let key = block_key(&b.id)?;
    let bytes = repo.get(&key, b.stored_size).await?;
    let codec = repo.codec.clone();
    let b2 = b.clone();
    let object = key.as_str().to_string();
    tokio::task::spawn_blocking(move || {
        format::verify_stored(&bytes, &b2.checksum)?;
        let plain = format::decode(&bytes, ObjectKind::Block, &codec, Some(&b2.id))?;
        if plain.len() as u64 != b2.size {
            return Err(format::FormatError::Malformed {
                what: "block".into(),
                why: format!("{} bytes, {} expected", plain.len(), b2.size),
            });
        }
        Ok(plain)
    })
    .await
    .map_err(|e| BackupError::Corrupt(format!("decode task failed: {e}")))?
    .map_err(|e| BackupError::BadObject {
        object,
        why: e.to_string(),
    })
}

/// Writes `plain` to `out` (blocking helper for restores).
pub fn write_all(out: &mut std::fs::File, path: &Path, plain: &[u8]) -> Result<(), BackupError> {
    out.write_all(plain).map_err(|e| BackupError::LocalIo {
        action: "write",
        path: path.display().to_string(),
        why: e.to_string(),
    })
}
