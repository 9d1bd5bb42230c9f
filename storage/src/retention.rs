//! Retention: how much history to keep.
//!
//! The default keeps everything: the log is the audit trail. Operators may
//! bound it by age (a prefix of the log is removed and the low-water mark
//! moves up) or by versions per key (older versions of busy keys become
//! `Compacted` slots, so seqs stay contiguous and verifiable). Neither ever
//! touches a record newer than the latest checkpoint: a restart must always
//! be able to rebuild current state.

use std::time::{Duration, SystemTime};

use crate::error::{Result, StorageError};
use crate::frame::{self, RecordKind};
use crate::sled_log::SledEventLog;
use crate::{EventLog, keys, nanos_since_epoch};

/// A retention policy. `Retention::default()` keeps everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Retention {
    /// Remove records older than this.
    pub max_age: Option<Duration>,
    /// Keep at most this many versions of each key (at least 1).
    pub max_versions_per_key: Option<u32>,
}

/// What a compaction did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactionReport {
    /// Seq of the checkpoint that bounded the compaction (0: none, nothing removed).
    pub horizon: u64,
    /// Records removed from the front of the log by age.
    pub removed_by_age: u64,
    /// Older versions turned into `Compacted` slots.
    pub compacted_versions: u64,
    /// The lowest seq still held afterwards.
    pub first_seq: u64,
}

const BATCH: usize = 10_000;

pub(crate) fn compact(log: &SledEventLog, policy: &Retention, now: SystemTime) -> Result<CompactionReport> {
    let horizon = log.checkpoint_at_or_before(u64::MAX)?.map_or(0, |cp| cp.seq);
    let mut report = CompactionReport { horizon, ..Default::default() };
    if horizon > 0 {
        if let Some(age) = policy.max_age {
            let cutoff = nanos_since_epoch(now).saturating_sub(u64::try_from(age.as_nanos()).unwrap_or(u64::MAX));
            report.removed_by_age = remove_prefix(log, horizon, cutoff)?;
        }
        if let Some(keep) = policy.max_versions_per_key {
            report.compacted_versions = compact_versions(log, horizon, keep.max(1) as usize)?;
        }
    }
    report.first_seq = log.first_seq();
    Ok(report)
}

/// Removes records with seq <= horizon and time < cutoff from the front.
fn remove_prefix(log: &SledEventLog, horizon: u64, cutoff: u64) -> Result<u64> {
    let mut removed = 0;
    loop {
        let mut batch = sled::Batch::default();
        let mut n = 0;
        let mut next_low = None;
        for rec in log.read_from(log.first_seq()).take(BATCH) {
            let rec = rec?;
            if rec.seq > horizon || rec.at_nanos >= cutoff {
                break;
            }
            batch.remove(&keys::log(rec.seq));
            if rec.kind == RecordKind::Event && !rec.key.is_empty() {
                batch.remove(keys::by_key(&rec.key, rec.seq));
            }
            next_low = Some(rec.seq + 1);
            n += 1;
        }
        let Some(low) = next_low else { return Ok(removed) };
        // The low-water mark moves in the same atomic batch as the removals.
        batch.insert(keys::LOW_WATER, &low.to_be_bytes());
        log.log.apply_batch(batch).map_err(|e| log.sled_err(e))?;
        log.note_low_water(low);
        removed += n;
        if n < BATCH as u64 {
            return Ok(removed);
        }
    }
}

/// Turns all but the newest `keep` versions of each key into Compacted slots.
fn compact_versions(log: &SledEventLog, horizon: u64, keep: usize) -> Result<u64> {
    let mut compacted = 0;
    let mut batch = sled::Batch::default();
    let mut pending = 0;
    let mut current: Vec<u8> = Vec::new();
    let mut seqs: Vec<u64> = Vec::new();
    let mut flush_group =
        |key: &[u8], seqs: &mut Vec<u64>, batch: &mut sled::Batch, pending: &mut usize| -> Result<()> {
            if seqs.len() > keep {
                for &seq in &seqs[..seqs.len() - keep] {
                    if seq > horizon {
                        continue;
                    }
                    let raw = log.log.get(keys::log(seq)).map_err(|e| log.sled_err(e))?.ok_or_else(|| {
                        StorageError::Corrupt { seq, reason: "key index points at a record that is not there".into() }
                    })?;
                    let rec = log.decode_entry(seq, raw)?;
                    batch.insert(&keys::log(seq), frame::encode(seq, RecordKind::Compacted, rec.at_nanos, b"", b""));
                    batch.remove(keys::by_key(key, seq));
                    *pending += 1;
                    compacted += 1;
                }
            }
            seqs.clear();
            Ok(())
        };
    for entry in log.log.scan_prefix([keys::BY_KEY]) {
        let (k, _) = entry.map_err(|e| log.sled_err(e))?;
        let (key, seq) =
            keys::parse_by_key(&k).ok_or_else(|| StorageError::Engine(format!("malformed index key {k:?}")))?;
        if key != current.as_slice() {
            flush_group(&current, &mut seqs, &mut batch, &mut pending)?;
            current = key.to_vec();
        }
        seqs.push(seq);
        if pending >= BATCH {
            log.log.apply_batch(std::mem::take(&mut batch)).map_err(|e| log.sled_err(e))?;
            pending = 0;
        }
    }
    flush_group(&current, &mut seqs, &mut batch, &mut pending)?;
    log.log.apply_batch(batch).map_err(|e| log.sled_err(e))?;
    Ok(compacted)
}
