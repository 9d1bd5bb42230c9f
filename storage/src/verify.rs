//! Verification and repair of a whole store.
//!
//! `verify` reads every record, index entry and checkpoint and reports what is
//! wrong, naming seqs. `repair` fixes what verification finds without ever
//! dropping a record that verified: damaged or missing slots become `Lost`
//! (damaged bytes are kept in the quarantine tree for forensics), indexes are
//! rebuilt from the intact records, damaged checkpoints are set aside.

use std::time::SystemTime;

use bytes::Bytes;

use crate::checkpoint;
use crate::error::{Result, StorageError};
use crate::frame::{self, RecordKind};
use crate::sled_log::SledEventLog;
use crate::{EventLog, keys, nanos_since_epoch};

/// One problem found, with the seq it concerns when there is one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    pub seq: Option<u64>,
    pub what: String,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.seq {
            Some(seq) => write!(f, "seq {seq}: {}", self.what),
            None => f.write_str(&self.what),
        }
    }
}

/// What `verify` saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub first_seq: u64,
    pub last_seq: u64,
    /// Highest seq ever acknowledged as durable.
    pub acknowledged_seq: u64,
    pub events: u64,
    pub compacted: u64,
    pub lost: u64,
    pub key_index_entries: u64,
    /// Seqs of the checkpoints that verified.
    pub checkpoints: Vec<u64>,
    /// Problems in the order found; details stop after [`MAX_DETAILS`].
    pub damage: Vec<Damage>,
    /// Total problems found, including those past the detail limit.
    pub damage_count: u64,
}

pub const MAX_DETAILS: usize = 100;

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.damage_count == 0
    }

    pub fn first_damage(&self) -> Option<&Damage> {
        self.damage.first()
    }

    fn found(&mut self, seq: Option<u64>, what: impl Into<String>) {
        self.damage_count += 1;
        if self.damage.len() < MAX_DETAILS {
            self.damage.push(Damage { seq, what: what.into() });
        }
    }
}

/// What `repair` changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RepairReport {
    /// Inclusive seq ranges written off as `Lost`.
    pub lost: Vec<(u64, u64)>,
    /// Checkpoints set aside as damaged.
    pub quarantined_checkpoints: Vec<u64>,
    /// Index entries after rebuilding.
    pub index_entries: u64,
    /// Damaged engine files (sled's `snap.*`) moved into `DIR/quarantine/`
    /// so sled rebuilt them from its log.
    pub set_aside_engine_files: Vec<std::path::PathBuf>,
}

impl RepairReport {
    fn lose(&mut self, seq: u64) {
        match self.lost.last_mut() {
            Some((_, last)) if *last + 1 == seq => *last = seq,
            _ => self.lost.push((seq, seq)),
        }
    }
}

pub(crate) fn verify(log: &SledEventLog, acknowledged: u64) -> Result<VerifyReport> {
    let mut r = VerifyReport { first_seq: log.first_seq(), acknowledged_seq: acknowledged, ..Default::default() };
    let mut expected = r.first_seq;
    let mut prev_at = 0;
    let mut keyed = 0u64;
    let mut from = expected;
    'scan: loop {
        for entry in log.log.range(keys::log(from)..=keys::log(u64::MAX)) {
            let (k, v) = match entry {
                Ok(kv) => kv,
                Err(e) => {
                    // The engine cannot read a page: find which seqs it hides by
                    // point reads, report them, and go on after them.
                    let (first, last) = unreadable_from(log, expected, acknowledged);
                    r.found(Some(first), format!("seqs {first}..={last} cannot be read: {}", log.sled_err(e)));
                    expected = last + 1;
                    from = expected;
                    if last >= acknowledged.max(first) {
                        break 'scan;
                    }
                    continue 'scan;
                }
            };
            let Some(seq) = keys::parse_log(&k) else {
                r.found(None, format!("malformed log key {k:?}"));
                continue;
            };
            if seq > expected {
                let what = format!("seqs {expected}..={} are missing from the log", seq - 1);
                r.found(Some(expected), what);
            }
            expected = seq + 1;
            match frame::decode(seq, Bytes::from_owner(v)) {
                Err(reason) => r.found(Some(seq), reason),
                Ok(rec) => {
                    if rec.at_nanos < prev_at {
                        r.found(Some(seq), "append time goes backwards");
                    }
                    prev_at = rec.at_nanos;
                    match rec.kind {
                        RecordKind::Event => {
                            r.events += 1;
                            keyed += u64::from(!rec.key.is_empty());
                        }
                        RecordKind::Compacted => r.compacted += 1,
                        RecordKind::Lost => r.lost += 1,
                    }
                }
            }
        }
        break;
    }
    r.last_seq = expected - 1;
    if acknowledged > r.last_seq {
        let what =
            format!("seqs {}..={acknowledged} were acknowledged as durable but are not in the log", r.last_seq + 1);
        r.found(Some(r.last_seq + 1), what);
    }
    if let Err(e) = check_indexes(log, &mut r, keyed) {
        r.found(None, format!("the key index cannot be read: {e}"));
    }
    let checkpoints = checkpoint::list(log).unwrap_or_else(|e| {
        r.found(None, format!("the checkpoint list cannot be read: {e}"));
        Vec::new()
    });
    for seq in checkpoints {
        let loaded = checkpoint::load(log, seq).unwrap_or_else(|e| Err(format!("cannot be read: {e}")));
        match loaded {
            Err(reason) => r.found(Some(seq), format!("checkpoint: {reason}")),
            Ok(_) if seq > r.last_seq => r.found(Some(seq), "checkpoint is ahead of the log"),
            Ok(_) => r.checkpoints.push(seq),
        }
    }
    Ok(r)
}

/// The run of seqs from `first` the engine fails to read, as (first, last);
/// at least `first` itself, at most up to `upper` (the acknowledged seq).
fn unreadable_from(log: &SledEventLog, first: u64, upper: u64) -> (u64, u64) {
    let mut last = first;
    while last < upper && log.log.get(keys::log(last + 1)).is_err() {
        last += 1;
    }
    (first, last)
}

/// Every key index entry must point at an intact event of the same key, and
/// there must be exactly one entry per keyed event: together a bijection.
fn check_indexes(log: &SledEventLog, r: &mut VerifyReport, keyed: u64) -> Result<()> {
    let record = |seq: u64| -> Result<Option<frame::Record>> {
        Ok(match log.log.get(keys::log(seq)).map_err(|e| log.sled_err(e))? {
            None => None,
            Some(raw) => frame::decode(seq, Bytes::from_owner(raw)).ok(),
        })
    };
    for entry in log.log.scan_prefix([keys::BY_KEY]) {
        let (k, _) = entry.map_err(|e| log.sled_err(e))?;
        r.key_index_entries += 1;
        match keys::parse_by_key(&k) {
            None => r.found(None, format!("malformed key index entry {k:?}")),
            Some((key, seq)) => match record(seq)? {
                Some(rec) if rec.kind == RecordKind::Event && rec.key == key => {}
                _ => r.found(Some(seq), "key index entry has no matching intact event"),
            },
        }
    }
    if r.key_index_entries != keyed {
        // Find which events lack an entry; only paid for when counts disagree.
        for rec in log.read_from(r.first_seq).filter_map(|rec| rec.ok()) {
            if rec.kind != RecordKind::Event {
                continue;
            }
            let has = |k: &[u8]| log.log.contains_key(k).map_err(|e| log.sled_err(e));
            if !rec.key.is_empty() && !has(&keys::by_key(&rec.key, rec.seq))? {
                r.found(Some(rec.seq), "event is missing from the key index");
            }
        }
    }
    Ok(())
}

pub(crate) fn repair(log: &SledEventLog, acknowledged: u64) -> Result<RepairReport> {
    let mut report = RepairReport::default();
    let mut batch = sled::Batch::default();
    let mut expected = log.first_seq();
    let mut prev_at = 0u64;
    let lost_frame = |seq: u64, at: u64| frame::encode(seq, RecordKind::Lost, at, b"", b"");
    for entry in log.log.scan_prefix([keys::LOG]) {
        let (k, v) = entry.map_err(|e| log.sled_err(e))?;
        let Some(seq) = keys::parse_log(&k) else {
            quarantine(log, b"malformed-key", &k, &v)?;
            batch.remove(k);
            continue;
        };
        for missing in expected..seq {
            batch.insert(&keys::log(missing), lost_frame(missing, prev_at));
            report.lose(missing);
        }
        expected = seq + 1;
        match frame::decode(seq, Bytes::from_owner(v.clone())) {
            Ok(rec) if rec.at_nanos >= prev_at => prev_at = rec.at_nanos,
            _ => {
                quarantine(log, b"record/", &seq.to_be_bytes(), &v)?;
                batch.insert(&keys::log(seq), lost_frame(seq, prev_at));
                report.lose(seq);
            }
        }
    }
    // Acknowledged records the engine no longer has: their seqs must never be reused.
    let tail_at = prev_at.max(nanos_since_epoch(SystemTime::now()));
    for missing in expected..=acknowledged {
        batch.insert(&keys::log(missing), lost_frame(missing, tail_at));
        report.lose(missing);
    }
    log.log.apply_batch(batch).map_err(|e| log.sled_err(e))?;
    report.index_entries = rebuild_indexes(log)?;

    let last = log.log.scan_prefix([keys::LOG]).keys().next_back().transpose().map_err(|e| log.sled_err(e))?;
    let last = last.and_then(|k| keys::parse_log(&k)).unwrap_or(0);
    for seq in checkpoint::list(log)? {
        if checkpoint::load(log, seq)?.is_err() || seq > last {
            checkpoint::quarantine(log, seq)?;
            report.quarantined_checkpoints.push(seq);
        }
    }
    log.db.flush().map_err(|e| log.sled_err(e))?;
    if !report.lost.is_empty() || !report.quarantined_checkpoints.is_empty() {
        tracing::warn!(lost = ?report.lost, checkpoints = ?report.quarantined_checkpoints, "repaired the event log");
    }
    Ok(report)
}

fn quarantine(log: &SledEventLog, kind: &[u8], id: &[u8], raw: &[u8]) -> Result<()> {
    let key = [kind, id].concat();
    log.quarantine.insert(key, raw).map_err(|e| log.sled_err(e))?;
    Ok(())
}

/// Drops every index entry and writes them anew from the intact events.
fn rebuild_indexes(log: &SledEventLog) -> Result<u64> {
    let mut batch = sled::Batch::default();
    for k in log.log.scan_prefix([keys::BY_KEY]).keys() {
        batch.remove(k.map_err(|e| log.sled_err(e))?);
    }
    log.log.apply_batch(batch).map_err(|e| log.sled_err(e))?;
    let mut entries = 0;
    let mut pending = 0;
    let mut batch = sled::Batch::default();
    for entry in log.log.scan_prefix([keys::LOG]) {
        let (k, v) = entry.map_err(|e| log.sled_err(e))?;
        let Some(seq) = keys::parse_log(&k) else { continue };
        let rec = frame::decode(seq, Bytes::from_owner(v)).map_err(|reason| StorageError::Corrupt { seq, reason })?;
        if rec.kind != RecordKind::Event || rec.key.is_empty() {
            continue;
        }
        batch.insert(keys::by_key(&rec.key, seq), &[]);
        entries += 1;
        pending += 1;
        if pending >= 10_000 {
            log.log.apply_batch(std::mem::take(&mut batch)).map_err(|e| log.sled_err(e))?;
            pending = 0;
        }
    }
    log.log.apply_batch(batch).map_err(|e| log.sled_err(e))?;
    Ok(entries)
}
