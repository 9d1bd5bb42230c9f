//! Keelson's durable event log.
//!
//! Every config change a source sees is appended here and gets a monotonic
//! sequence number; that number is the config version proxies see. The log is
//! the source of truth, so this crate's one job is to never lose or corrupt an
//! acknowledged record, and to say so clearly when the disk did.
//!
//! Storage knows nothing of xDS or of events: a record is an optional index
//! key plus opaque payload bytes. The hub decides what they mean.
//!
//! * [`EventLog`] is the interface the hub uses; [`SledEventLog`] implements it
//!   on sled 0.34.
//! * Appends are group-committed: concurrent appenders share one flush, and
//!   [`EventLog::append`] returns only once its records are durable.
//! * Reads: by seq range, by key (newest first), by time.
//! * Checkpoints: opaque, versioned blobs of materialized state at a seq, one
//!   file each beside the engine (`DIR/checkpoints/`).
//! * Retention: keep everything (default), or N days / N versions per key,
//!   never past the latest checkpoint.
//! * [`EventLog::verify`] checks every record and index entry; a damaged store
//!   is refused on open, or repaired on request without dropping any record
//!   that verified.
#![forbid(unsafe_code)]

mod checkpoint;
mod error;
mod frame;
mod group_commit;
mod health;
mod keys;
mod rebuild;
mod retention;
mod sled_log;
mod verify;

use std::time::SystemTime;

use bytes::Bytes;

pub use checkpoint::{Checkpoint, DIR_NAME as CHECKPOINT_DIR};
pub use error::{Result, StorageError};
pub use frame::{MAX_KEY_LEN, Record, RecordKind};
pub use health::FLUSH_TIMEOUT;
pub use retention::{CompactionReport, Retention};
pub use sled_log::{OpenOptions, SledEventLog};
pub use verify::{Damage, RepairReport, VerifyReport};

/// A record to append: an optional index key (empty for none) and a payload.
#[derive(Clone, Debug, Default)]
pub struct NewRecord {
    pub key: Bytes,
    pub payload: Bytes,
}

/// The inclusive range of seqs an append was given. Empty when `first > last`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeqRange {
    pub first: u64,
    pub last: u64,
    /// The time every record of the append carries (what a reader gets
    /// back), so a caller that applies them at once uses the same clock.
    pub at: std::time::SystemTime,
}

impl SeqRange {
    pub fn is_empty(&self) -> bool {
        self.first > self.last
    }
    pub fn len(&self) -> u64 {
        if self.is_empty() { 0 } else { self.last - self.first + 1 }
    }
}

pub type RecordIter<'a> = Box<dyn Iterator<Item = Result<Record>> + Send + 'a>;

/// The durable, ordered log of records. Another engine can replace sled by
/// implementing this trait; the hub never sees sled types.
pub trait EventLog: Send + Sync {
    /// Appends `batch` and returns once all of it is durable. Seqs are
    /// contiguous and start at 1. An `Err` means the outcome is unknown for
    /// this batch (it, or a prefix of its records, may surface after a
    /// restart); `Ok` means it is on disk. Each record is written atomically
    /// with its index entries; a batch of more than a thousand records may
    /// be written in parts, so a crash during it can leave a prefix.
    fn append(&self, batch: &[NewRecord]) -> Result<SeqRange>;

    /// Lowest seq still held (retention may have removed older ones).
    fn first_seq(&self) -> u64;

    /// Highest seq appended, 0 for an empty log.
    fn last_seq(&self) -> u64;

    /// Records from `from` on, in seq order. Compacted and lost slots are
    /// returned with their kind so readers see the gaps.
    fn read_from(&self, from: u64) -> RecordIter<'_>;

    /// Every record appended with index key `key`, newest first.
    fn read_key(&self, key: &[u8]) -> RecordIter<'_>;

    /// The first seq appended at or after `at`, if any.
    fn seq_at_or_after(&self, at: SystemTime) -> Result<Option<u64>>;

    /// Stores an opaque state blob describing the log up to `seq`, in caller
    /// format `format`, durably. `seq` must not be ahead of the durable log.
    /// A checkpoint that cannot be written is an error for this call only:
    /// the log keeps taking writes.
    fn write_checkpoint(&self, seq: u64, format: u32, blob: &[u8]) -> Result<()> {
        self.write_checkpoint_parts(seq, format, &mut std::iter::once(blob.to_vec()))
    }

    /// [`EventLog::write_checkpoint`] of the blob made of `parts` in order,
    /// written as they come, so a large state need not be encoded whole.
    fn write_checkpoint_parts(&self, seq: u64, format: u32, parts: &mut dyn Iterator<Item = Vec<u8>>) -> Result<()>;

    /// The newest intact checkpoint at or before `seq` (use `u64::MAX` for the
    /// newest). Damaged checkpoints are skipped and logged.
    fn checkpoint_at_or_before(&self, seq: u64) -> Result<Option<Checkpoint>>;

    /// Applies a retention policy. Never removes records newer than the
    /// latest checkpoint.
    fn compact(&self, policy: &Retention, now: SystemTime) -> Result<CompactionReport>;

    /// Walks every record, index entry and checkpoint.
    fn verify(&self) -> Result<VerifyReport>;

    /// Makes everything appended so far durable.
    fn flush(&self) -> Result<()>;

    /// Why the log stopped taking writes, once it has: after the first failed
    /// write (or a flush stalled past [`FLUSH_TIMEOUT`]) every write fails
    /// fast with [`StorageError::Failed`] until the process restarts.
    fn failure(&self) -> Option<String> {
        None
    }

    /// The first damage a read ran into since open (a damaged record or an
    /// engine page that cannot be read), if any. Reads of intact records
    /// still work; `keelson verify --repair` fixes it with the hub stopped.
    fn damage(&self) -> Option<String> {
        None
    }
}

pub(crate) fn nanos_since_epoch(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)).unwrap_or(0)
}
