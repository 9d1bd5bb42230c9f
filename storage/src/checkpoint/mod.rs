//! Checkpoints: opaque blobs of materialized state at a seq, so a restart
//! loads one and replays only the log after it.
//!
//! Each checkpoint is one file beside the engine, `DIR/checkpoints/<seq>.ckpt`
//! (seq zero-padded to 20 digits, so names sort as seqs do):
//!
//! ```text
//! "KLCP" | layout u32 | seq u64 | format u32 | blob_len u64 | blob crc32 | header crc32 | blob
//! ```
//!
//! Why files and not sled values (as before, see [`legacy`]): a checkpoint is
//! the whole state, hundreds of MiB for a few hundred thousand objects, and
//! sled keeps what it is handed resident — at 225,000 objects the one
//! checkpoint after the first sync added 340 MiB to the hub for good
//! (docs/benchmarks.md, "Kubernetes source"), and its flush stalled appends
//! that shared the engine's flush. A file is written once, fsynced on its own
//! and leaves only the OS page cache behind.
//!
//! A file is written under a temporary name, fsynced, renamed into place and
//! the directory fsynced, so a crash leaves either the whole checkpoint or
//! none (stray temporaries are removed on open). The newest [`KEEP`] are
//! kept, so one damaged checkpoint falls back to the previous one rather than
//! to a full replay.

pub(crate) mod legacy;

use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::error::{Result, StorageError};
use crate::nanos_since_epoch;
use crate::sled_log::SledEventLog;

pub(crate) const KEEP: usize = 3;

/// The directory under the data directory that holds the checkpoint files.
pub const DIR_NAME: &str = "checkpoints";

const MAGIC: &[u8; 4] = b"KLCP";
const LAYOUT_V1: u32 = 1;
const HEADER_LEN: usize = 36;
const SUFFIX: &str = ".ckpt";
const TEMP_SUFFIX: &str = ".ckpt.tmp";

/// A checkpoint as loaded: the log position it describes and the caller's blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub seq: u64,
    /// The caller's format tag, stored beside the blob so a reader can refuse
    /// a format it does not know instead of misreading it.
    pub format: u32,
    pub blob: Vec<u8>,
}

fn dir(log: &SledEventLog) -> PathBuf {
    log.dir.join(DIR_NAME)
}

fn file_name(seq: u64) -> String {
    format!("{seq:020}{SUFFIX}")
}

fn header(seq: u64, format: u32, blob_len: u64, blob_crc: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(MAGIC);
    h[4..8].copy_from_slice(&LAYOUT_V1.to_be_bytes());
    h[8..16].copy_from_slice(&seq.to_be_bytes());
    h[16..20].copy_from_slice(&format.to_be_bytes());
    h[20..28].copy_from_slice(&blob_len.to_be_bytes());
    h[28..32].copy_from_slice(&blob_crc.to_be_bytes());
    let crc = crc32fast::hash(&h[..32]);
    h[32..36].copy_from_slice(&crc.to_be_bytes());
    h
}

/// Checks a checkpoint file's bytes; the error says what is wrong with it.
fn decode(seq: u64, mut raw: Vec<u8>) -> Result<Checkpoint, String> {
    if raw.len() < HEADER_LEN {
        return Err(format!("file is {} bytes, shorter than its {HEADER_LEN}-byte header", raw.len()));
    }
    let h = &raw[..HEADER_LEN];
    let word = |at: usize| u32::from_be_bytes(h[at..at + 4].try_into().expect("4 bytes"));
    let long = |at: usize| u64::from_be_bytes(h[at..at + 8].try_into().expect("8 bytes"));
    if &h[0..4] != MAGIC {
        return Err("not a Keelson checkpoint file (bad magic)".into());
    }
    if word(32) != crc32fast::hash(&h[..32]) {
        return Err("header checksum mismatch".into());
    }
    if word(4) != LAYOUT_V1 {
        return Err(format!("unknown checkpoint layout {}", word(4)));
    }
    if long(8) != seq {
        return Err(format!("file for seq {seq} holds the checkpoint of seq {}", long(8)));
    }
    let (format, len, crc) = (word(16), long(20), word(28));
    if (raw.len() - HEADER_LEN) as u64 != len {
        return Err(format!("blob is {} bytes, its header says {len}", raw.len() - HEADER_LEN));
    }
    if crc32fast::hash(&raw[HEADER_LEN..]) != crc {
        return Err("blob checksum mismatch".into());
    }
    raw.drain(..HEADER_LEN);
    Ok(Checkpoint { seq, format, blob: raw })
}

/// Writes the checkpoint file for `seq` from the blob's parts in order
/// (a caller can encode a large state part by part, never holding all of
/// it), then drops all but the newest KEEP.
///
/// A failure here is returned, not recorded as a failed log: the records
/// are intact and the next checkpoint may well succeed (disk space freed).
pub(crate) fn write(log: &SledEventLog, seq: u64, format: u32, parts: &mut dyn Iterator<Item = Vec<u8>>) -> Result<()> {
    let dir = dir(log);
    fs::create_dir_all(&dir).map_err(|e| StorageError::from_io(&dir, e))?;
    let temp = dir.join(format!("{seq:020}{TEMP_SUFFIX}"));
    let written = File::create(&temp).and_then(|mut f| {
        // The header goes in last, once the blob's length and CRC are known.
        f.write_all(&[0u8; HEADER_LEN])?;
        let (mut crc, mut len) = (crc32fast::Hasher::new(), 0u64);
        for part in parts {
            crc.update(&part);
            len += part.len() as u64;
            f.write_all(&part)?;
        }
        f.write_all_at(&header(seq, format, len, crc.finalize()), 0)?;
        f.sync_all()
    });
    let placed = written.and_then(|()| fs::rename(&temp, dir.join(file_name(seq))));
    if let Err(e) = placed {
        let _ = fs::remove_file(&temp);
        return Err(StorageError::from_io(&temp, e));
    }
    sync_dir(&dir)?;
    prune(log)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| StorageError::from_io(dir, e))
}

/// Drops all but the newest KEEP checkpoints.
fn prune(log: &SledEventLog) -> Result<()> {
    let dir = dir(log);
    for &seq in list(log)?.iter().rev().skip(KEEP) {
        let path = dir.join(file_name(seq));
        fs::remove_file(&path).map_err(|e| StorageError::from_io(&path, e))?;
    }
    Ok(())
}

/// Seqs of all stored checkpoints, oldest first.
pub(crate) fn list(log: &SledEventLog) -> Result<Vec<u64>> {
    let dir = dir(log);
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StorageError::from_io(&dir, e)),
    };
    let mut seqs = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| StorageError::from_io(&dir, e))?;
        let name = entry.file_name();
        let seq = name.to_str().and_then(|n| n.strip_suffix(SUFFIX)).and_then(|n| n.parse::<u64>().ok());
        seqs.extend(seq);
    }
    seqs.sort_unstable();
    Ok(seqs)
}

/// Removes temporary files a crash during a checkpoint write left behind.
pub(crate) fn remove_temporaries(log: &SledEventLog) -> Result<()> {
    let dir = dir(log);
    let Ok(entries) = fs::read_dir(&dir) else { return Ok(()) };
    for entry in entries.flatten() {
        if entry.file_name().to_str().is_some_and(|n| n.ends_with(TEMP_SUFFIX)) {
            tracing::info!(path = %entry.path().display(), "removing an unfinished checkpoint");
            fs::remove_file(entry.path()).map_err(|e| StorageError::from_io(&entry.path(), e))?;
        }
    }
    Ok(())
}

/// Loads and fully checks the checkpoint at `seq`.
pub(crate) fn load(log: &SledEventLog, seq: u64) -> Result<Result<Checkpoint, String>> {
    let path = dir(log).join(file_name(seq));
    match fs::read(&path) {
        Ok(raw) => Ok(decode(seq, raw)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(Err("file missing".into())),
        Err(e) => Err(StorageError::from_io(&path, e)),
    }
}

pub(crate) fn newest_at_or_before(log: &SledEventLog, seq: u64) -> Result<Option<Checkpoint>> {
    for cp_seq in list(log)?.into_iter().rev().filter(|&s| s <= seq) {
        match load(log, cp_seq)? {
            Ok(cp) => return Ok(Some(cp)),
            Err(reason) => {
                tracing::error!(seq = cp_seq, %reason, "skipping damaged checkpoint; run `keelson verify`");
            }
        }
    }
    Ok(None)
}

/// Moves a damaged checkpoint's file to `DIR/quarantine/` (kept for forensics).
pub(crate) fn quarantine(log: &SledEventLog, seq: u64) -> Result<()> {
    let from = dir(log).join(file_name(seq));
    let aside = log.dir.join("quarantine");
    fs::create_dir_all(&aside).map_err(|e| StorageError::from_io(&aside, e))?;
    let to = aside.join(format!("checkpoint-{seq}.{}", nanos_since_epoch(SystemTime::now())));
    match fs::rename(&from, &to) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StorageError::from_io(&from, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_flipped_bit_is_caught() {
        let blob = b"state at seven".to_vec();
        let raw = [&header(7, 3, blob.len() as u64, crc32fast::hash(&blob))[..], &blob].concat();
        let cp = decode(7, raw.clone()).unwrap();
        assert_eq!((cp.seq, cp.format, cp.blob), (7, 3, blob));
        for byte in 0..raw.len() {
            for bit in 0..8 {
                let mut bad = raw.clone();
                bad[byte] ^= 1 << bit;
                assert!(decode(7, bad).is_err(), "flip at {byte}:{bit} went unnoticed");
            }
        }
    }

    #[test]
    fn truncated_or_misplaced_files_say_what_is_wrong() {
        let raw = [&header(7, 1, 3, crc32fast::hash(b"abc"))[..], b"abc"].concat();
        for len in 0..raw.len() {
            assert!(decode(7, raw[..len].to_vec()).is_err(), "{len} bytes passed");
        }
        assert!(decode(8, raw).unwrap_err().contains("holds the checkpoint of seq 7"));
    }
}
