//! Checkpoints: opaque blobs of materialized state at a seq, so a restart
//! loads one and replays only the log after it.
//!
//! A blob is split into 1 MiB chunks (sled handles many moderate values far
//! better than one huge one), each chunk CRC-framed, plus a manifest:
//!
//! ```text
//! 'M' seq          -> frame(format u32, total_len u64, chunks u32, blob crc32)
//! 'D' seq chunk    -> frame(chunk bytes)
//! ```
//!
//! The newest [`KEEP`] checkpoints are kept, so one damaged checkpoint falls
//! back to the previous one rather than to a full replay.

use crate::error::Result;
use crate::frame::{decode_blob, encode_blob};
use crate::sled_log::SledEventLog;

const MANIFEST: u8 = b'M';
const CHUNK: u8 = b'D';
const CHUNK_SIZE: usize = 1 << 20;
pub(crate) const KEEP: usize = 3;

/// A checkpoint as loaded: the log position it describes and the caller's blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub seq: u64,
    /// The caller's format tag, stored beside the blob so a reader can refuse
    /// a format it does not know instead of misreading it.
    pub format: u32,
    pub blob: Vec<u8>,
}

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
    fn encode(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(20);
        body.extend_from_slice(&self.format.to_be_bytes());
        body.extend_from_slice(&self.total_len.to_be_bytes());
        body.extend_from_slice(&self.chunks.to_be_bytes());
        body.extend_from_slice(&self.crc.to_be_bytes());
        encode_blob(&body)
    }

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

pub(crate) fn write(log: &SledEventLog, seq: u64, format: u32, blob: &[u8]) -> Result<()> {
    let mut batch = sled::Batch::default();
    let mut chunks = 0u32;
    for (i, chunk) in blob.chunks(CHUNK_SIZE).enumerate() {
        batch.insert(&chunk_key(seq, i as u32), encode_blob(chunk));
        chunks += 1;
    }
    let manifest = Manifest { format, total_len: blob.len() as u64, chunks, crc: crc32fast::hash(blob) };
    batch.insert(&manifest_key(seq), manifest.encode());
    log.checkpoints.apply_batch(batch).map_err(|e| log.sled_err(e))?;
    prune(log)
}

/// Drops all but the newest KEEP checkpoints.
fn prune(log: &SledEventLog) -> Result<()> {
    let seqs = list(log)?;
    for &seq in seqs.iter().rev().skip(KEEP) {
        remove(log, seq)?;
    }
    Ok(())
}

pub(crate) fn remove(log: &SledEventLog, seq: u64) -> Result<()> {
    let mut batch = sled::Batch::default();
    batch.remove(&manifest_key(seq));
    for entry in log.checkpoints.scan_prefix(&chunk_key(seq, 0)[..9]) {
        let (k, _) = entry.map_err(|e| log.sled_err(e))?;
        batch.remove(k);
    }
    log.checkpoints.apply_batch(batch).map_err(|e| log.sled_err(e))
}

/// Seqs of all stored checkpoints, oldest first.
pub(crate) fn list(log: &SledEventLog) -> Result<Vec<u64>> {
    let mut seqs = Vec::new();
    for entry in log.checkpoints.scan_prefix([MANIFEST]) {
        let (k, _) = entry.map_err(|e| log.sled_err(e))?;
        if k.len() == 9 {
            seqs.push(u64::from_be_bytes(k[1..].try_into().expect("8 bytes")));
        }
    }
    Ok(seqs)
}

/// Loads and fully checks the checkpoint at `seq`.
pub(crate) fn load(log: &SledEventLog, seq: u64) -> Result<Result<Checkpoint, String>> {
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
    Ok(Ok(Checkpoint { seq, format: m.format, blob }))
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

/// Moves a damaged checkpoint's manifest to quarantine and removes it.
pub(crate) fn quarantine(log: &SledEventLog, seq: u64) -> Result<()> {
    if let Some(raw) = log.checkpoints.get(manifest_key(seq)).map_err(|e| log.sled_err(e))? {
        let mut k = b"checkpoint/".to_vec();
        k.extend_from_slice(&seq.to_be_bytes());
        log.quarantine.insert(k, raw).map_err(|e| log.sled_err(e))?;
    }
    remove(log, seq)
}
