//! Checkpoints as data directories before file checkpoints stored them: in
//! sled's `checkpoints` tree, the blob in 1 MiB CRC-framed chunks plus a
//! manifest:
//!
//! ```text
//! 'M' seq          -> frame(format u32, total_len u64, chunks u32, blob crc32)
//! 'D' seq chunk    -> frame(chunk bytes)
//! ```
//!
//! Opening such a directory moves its checkpoints into files once. They
//! cannot simply be dropped: retention may have compacted records before the
//! newest checkpoint, which then holds the only copy of that state.

use crate::error::Result;
use crate::frame::decode_blob;
use crate::sled_log::SledEventLog;

const MANIFEST: u8 = b'M';
const CHUNK: u8 = b'D';

fn manifest_key(seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = MANIFEST;
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn chunk_key(seq: u64, idx: u32) -> [u8; 13] {
    let mut k = [0u8; 13];
    k[0] = CHUNK;
    k[1..9].copy_from_slice(&seq.to_be_bytes());
    k[9..].copy_from_slice(&idx.to_be_bytes());
    k
}

struct Manifest {
    format: u32,
    total_len: u64,
    chunks: u32,
    crc: u32,
}

impl Manifest {
    fn decode(raw: &[u8]) -> Result<Self, String> {
        let b = decode_blob(raw)?;
        if b.len() != 20 {
            return Err(format!("manifest is {} bytes, expected 20", b.len()));
        }
        Ok(Manifest {
            format: u32::from_be_bytes(b[0..4].try_into().expect("4 bytes")),
            total_len: u64::from_be_bytes(b[4..12].try_into().expect("8 bytes")),
            chunks: u32::from_be_bytes(b[12..16].try_into().expect("4 bytes")),
            crc: u32::from_be_bytes(b[16..20].try_into().expect("4 bytes")),
        })
    }
}

/// Seqs of the checkpoints still in the tree, oldest first.
fn list(log: &SledEventLog) -> Result<Vec<u64>> {
    let mut seqs = Vec::new();
    for entry in log.checkpoints.scan_prefix([MANIFEST]) {
        let (k, _) = entry.map_err(|e| log.sled_err(e))?;
        if k.len() == 9 {
            seqs.push(u64::from_be_bytes(k[1..].try_into().expect("8 bytes")));
        }
    }
    Ok(seqs)
}

/// Loads and fully checks the tree's checkpoint at `seq`: (format, blob).
fn load(log: &SledEventLog, seq: u64) -> Result<Result<(u32, Vec<u8>), String>> {
    let Some(raw) = log.checkpoints.get(manifest_key(seq)).map_err(|e| log.sled_err(e))? else {
        return Ok(Err("manifest missing".into()));
    };
    let m = match Manifest::decode(&raw) {
        Ok(m) => m,
        Err(e) => return Ok(Err(format!("manifest: {e}"))),
    };
    let mut blob = Vec::with_capacity(usize::try_from(m.total_len).unwrap_or(0));
    for idx in 0..m.chunks {
        let Some(raw) = log.checkpoints.get(chunk_key(seq, idx)).map_err(|e| log.sled_err(e))? else {
            return Ok(Err(format!("chunk {idx} of {} missing", m.chunks)));
        };
        match decode_blob(&raw) {
            Ok(bytes) => blob.extend_from_slice(bytes),
            Err(e) => return Ok(Err(format!("chunk {idx}: {e}"))),
        }
    }
    if blob.len() as u64 != m.total_len || crc32fast::hash(&blob) != m.crc {
        return Ok(Err("reassembled blob does not match its manifest".into()));
    }
    Ok(Ok((m.format, blob)))
}

/// Moves every checkpoint of the tree into a file and empties the tree. A
/// damaged one is not moved: its manifest goes to the quarantine tree, as
/// repair always did with damaged in-engine checkpoints.
pub(crate) fn migrate(log: &SledEventLog) -> Result<()> {
    let seqs = list(log)?;
    if seqs.is_empty() && log.checkpoints.is_empty() {
        return Ok(());
    }
    for seq in seqs {
        match load(log, seq)? {
            Ok((format, blob)) => {
                super::write(log, seq, format, &mut std::iter::once(blob))?;
                tracing::info!(seq, "moved a checkpoint out of the engine into its own file");
            }
            Err(reason) => {
                tracing::error!(seq, %reason, "a damaged in-engine checkpoint was set aside, not moved");
                if let Some(raw) = log.checkpoints.get(manifest_key(seq)).map_err(|e| log.sled_err(e))? {
                    let mut k = b"checkpoint/".to_vec();
                    k.extend_from_slice(&seq.to_be_bytes());
                    log.quarantine.insert(k, raw).map_err(|e| log.sled_err(e))?;
                }
            }
        }
    }
    log.checkpoints.clear().map_err(|e| log.sled_err(e))?;
    log.db.flush().map_err(|e| log.sled_err(e))?;
    Ok(())
}

/// Writes a checkpoint the way older versions did, for tests of [`migrate`].
#[cfg(test)]
pub(crate) fn write_for_test(log: &SledEventLog, seq: u64, format: u32, blob: &[u8]) {
    use crate::frame::encode_blob;
    let mut chunks = 0u32;
    for (i, chunk) in blob.chunks(1 << 20).enumerate() {
        log.checkpoints.insert(chunk_key(seq, i as u32), encode_blob(chunk)).unwrap();
        chunks += 1;
    }
    let mut m = Vec::new();
    m.extend_from_slice(&format.to_be_bytes());
    m.extend_from_slice(&(blob.len() as u64).to_be_bytes());
    m.extend_from_slice(&chunks.to_be_bytes());
    m.extend_from_slice(&crc32fast::hash(blob).to_be_bytes());
    log.checkpoints.insert(manifest_key(seq), encode_blob(&m)).unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EventLog, NewRecord, OpenOptions};

    #[test]
    fn in_engine_checkpoints_move_into_files_on_open_and_damaged_ones_are_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let create = OpenOptions { create: true, repair: false };
        {
            let log = SledEventLog::open(dir.path(), create.clone()).unwrap();
            log.append(&vec![NewRecord::default(); 12]).unwrap();
            // Two chunks, so reassembly is exercised.
            let big: Vec<u8> = (0..(1 << 20) + 100).map(|i| (i % 251) as u8).collect();
            write_for_test(&log, 5, 2, &big);
            write_for_test(&log, 9, 2, b"state at nine");
            write_for_test(&log, 11, 2, b"state at eleven");
            // Damage the newest: its chunk's body no longer matches its CRC.
            let key = chunk_key(11, 0);
            let mut v = log.checkpoints.get(key).unwrap().unwrap().to_vec();
            v[6] ^= 0x40;
            log.checkpoints.insert(key, v).unwrap();
            log.flush().unwrap();
        }
        let log = SledEventLog::open(dir.path(), create).unwrap();
        assert!(log.checkpoints.is_empty(), "the tree is emptied");
        assert_eq!(super::super::list(&log).unwrap(), vec![5, 9]);
        let cp = log.checkpoint_at_or_before(u64::MAX).unwrap().unwrap();
        assert_eq!((cp.seq, cp.format, cp.blob.as_slice()), (9, 2, &b"state at nine"[..]));
        let five = log.checkpoint_at_or_before(8).unwrap().unwrap();
        assert_eq!((five.seq, five.blob.len(), five.blob[300]), (5, (1 << 20) + 100, (300 % 251) as u8));
        assert!(log.quarantine.iter().count() == 1, "the damaged manifest is kept aside");
        assert!(log.verify().unwrap().is_ok());
    }
}
