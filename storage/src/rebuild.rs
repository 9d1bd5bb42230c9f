//! Repair's last resort: copy everything the engine can still read into a
//! fresh sled directory and swap it in.
//!
//! Why: a damaged page of `sled/db` cannot be rewritten in place (sled must
//! read a page to change it), so writing `Lost` slots over it fails. Copying
//! keeps every readable record; the in-place repair that follows turns the
//! seqs left behind into `Lost` slots and rebuilds the key index. The damaged
//! directory is kept in `DIR/quarantine/` for forensics.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::error::{Result, StorageError};
use crate::group_commit::{DurableMark, MarkReading};
use crate::{keys, nanos_since_epoch};

/// Rebuilds `DIR/sled`; returns where the damaged directory went.
pub(crate) fn rebuild(dir: &Path, engine_dir: &Path, open: impl Fn(&Path) -> Result<sled::Db>) -> Result<PathBuf> {
    let fresh = dir.join("sled.rebuild");
    if fresh.exists() {
        std::fs::remove_dir_all(&fresh).map_err(|e| StorageError::from_io(&fresh, e))?;
    }
    let sled_err = |e| StorageError::from_sled(dir, e);
    {
        let old = open_waiting(engine_dir, &open, Duration::from_secs(10))?;
        let new = open(&fresh)?;
        let acknowledged = match DurableMark::open(dir)?.1 {
            MarkReading::Seq(seq) => seq,
            _ => 0,
        };
        for name in old.tree_names() {
            let (src, dst) = (old.open_tree(&name).map_err(sled_err)?, new.open_tree(&name).map_err(sled_err)?);
            if name.as_ref() == b"log" {
                copy_log(&src, &dst, acknowledged).map_err(sled_err)?;
            } else {
                copy_readable(&src, &dst).map_err(sled_err)?;
            }
        }
        new.flush().map_err(sled_err)?;
    }
    let quarantine = dir.join("quarantine");
    std::fs::create_dir_all(&quarantine).map_err(|e| StorageError::from_io(&quarantine, e))?;
    let aside = quarantine.join(format!("sled-damaged.{}", nanos_since_epoch(SystemTime::now())));
    std::fs::rename(engine_dir, &aside).map_err(|e| StorageError::from_io(&aside, e))?;
    std::fs::rename(&fresh, engine_dir).map_err(|e| StorageError::from_io(engine_dir, e))?;
    tracing::warn!(damaged = %aside.display(), "rebuilt the engine from every record it could read");
    Ok(aside)
}

/// sled's threads release a closed store's lock a moment after the close
/// (longer on a loaded machine), so an open right after a close waits up to
/// `patience` for it; a store another process holds is still `Locked`.
pub(crate) fn open_waiting(
    path: &Path,
    open: &impl Fn(&Path) -> Result<sled::Db>,
    patience: Duration,
) -> Result<sled::Db> {
    let end = Instant::now() + patience;
    loop {
        match open(path) {
            Err(StorageError::Locked { .. }) if Instant::now() < end => std::thread::sleep(Duration::from_millis(20)),
            other => return other,
        }
    }
}

/// Copies records and the low-water mark, stepping over unreadable seqs by
/// point reads; index entries are left to repair, which rebuilds them.
fn copy_log(src: &sled::Tree, dst: &sled::Tree, acknowledged: u64) -> sled::Result<()> {
    if let Ok(Some(w)) = src.get(keys::LOW_WATER) {
        dst.insert(keys::LOW_WATER, w)?;
    }
    let mut from = 1u64;
    'scan: loop {
        for entry in src.range(keys::log(from)..=keys::log(u64::MAX)) {
            match entry {
                Ok((k, v)) => {
                    dst.insert(&k, v)?;
                    from = keys::parse_log(&k).map_or(from, |seq| seq + 1);
                }
                Err(_) => {
                    // Skip at least one seq, then every seq that still fails.
                    let mut next = from + 1;
                    while next <= acknowledged && src.get(keys::log(next)).is_err() {
                        next += 1;
                    }
                    from = next;
                    if from > acknowledged {
                        break 'scan;
                    }
                    continue 'scan;
                }
            }
        }
        break;
    }
    Ok(())
}

fn copy_readable(src: &sled::Tree, dst: &sled::Tree) -> sled::Result<()> {
    for entry in src.iter() {
        let Ok((k, v)) = entry else { break };
        dst.insert(k, v)?;
    }
    Ok(())
}
