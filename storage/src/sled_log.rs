//! [`EventLog`] on sled 0.34.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use crate::checkpoint::{self, Checkpoint};
use crate::error::{Result, StorageError};
use crate::frame::{self, MAX_KEY_LEN, Record, RecordKind};
use crate::group_commit::{DurableMark, GroupCommit, MarkReading};
use crate::health::{FLUSH_TIMEOUT, Flusher, Health};
use crate::retention::{self, CompactionReport, Retention};
use crate::verify::{self, RepairReport, VerifyReport};
use crate::{EventLog, NewRecord, RecordIter, SeqRange, keys, nanos_since_epoch};

const FORMAT: &[u8] = b"keelson-log/1";

const META_FORMAT: &[u8] = b"format";

/// How to open a data directory.
#[derive(Clone, Debug, Default)]
pub struct OpenOptions {
    /// Create the directory and an empty log if there is none.
    pub create: bool,
    /// Repair damage found on open instead of refusing: damaged or missing
    /// records become `Lost` slots (their bytes kept in quarantine), indexes
    /// are rebuilt, damaged checkpoints are set aside. Records that verify are
    /// never dropped.
    pub repair: bool,
}

pub(crate) struct AppendState {
    pub next_seq: u64,
    pub last_at: u64,
}

/// The event log on sled. Cheap to share behind an `Arc`.
pub struct SledEventLog {
    pub(crate) dir: PathBuf,
    pub(crate) db: sled::Db,
    /// Records and their indexes, see [`keys`].
    pub(crate) log: sled::Tree,
    /// Where checkpoints lived before they became files; emptied on open
    /// (see `checkpoint::legacy`).
    pub(crate) checkpoints: sled::Tree,
    /// Raw bytes of records and checkpoints that `repair` wrote off.
    pub(crate) quarantine: sled::Tree,
    pub(crate) append: Mutex<AppendState>,
    applied: AtomicU64,
    low_water: AtomicU64,
    commit: GroupCommit,
    mark: Arc<DurableMark>,
    /// Engine flushes, bounded by [`FLUSH_TIMEOUT`].
    flusher: Flusher<sled::Db>,
    health: Health,
    repair_report: Option<RepairReport>,
}

impl SledEventLog {
    pub fn open(dir: impl AsRef<Path>, opts: OpenOptions) -> Result<Self> {
        let dir = dir.as_ref();
        match Self::open_in_place(dir, &opts, false) {
            // The engine could not write over a page it cannot read: copy
            // what it can read into a fresh engine, then repair that.
            Err(StorageError::Engine(reason)) if opts.repair => {
                tracing::warn!(%reason, "in-place repair failed; rebuilding the engine from what it can read");
                let aside = crate::rebuild::rebuild(dir, &dir.join("sled"), |p| open_engine(dir, p))?;
                // The rebuild just closed both engines; wait for their lock.
                let mut log = Self::open_in_place(dir, &opts, true)?;
                if let Some(r) = log.repair_report.as_mut() {
                    r.set_aside_engine_files.push(aside);
                }
                Ok(log)
            }
            other => other,
        }
    }

    fn open_in_place(dir: &Path, opts: &OpenOptions, wait_for_lock: bool) -> Result<Self> {
        let dir = dir.to_path_buf();
        prepare_dir(&dir, opts.create)?;
        let engine_dir = dir.join("sled");
        if !engine_dir.exists() && !opts.create {
            return Err(StorageError::Io {
                path: dir.clone(),
                cause: std::io::Error::new(std::io::ErrorKind::NotFound, "no Keelson log in this directory"),
            });
        }
        let mut set_aside = Vec::new();
        // After a rebuild both engines were just closed; otherwise this
        // process (a restart in place, a test) may just have closed it.
        let patience = if wait_for_lock { Duration::from_secs(10) } else { Duration::from_secs(2) };
        let opened = crate::rebuild::open_waiting(&engine_dir, &|p| open_engine(&dir, p), patience);
        let db = match opened {
            // sled's snapshot (`snap.*`) is a cache of its log: without it,
            // sled rebuilds it by scanning the log. Repair sets a damaged
            // one aside (kept for forensics) and opens again.
            Err(StorageError::Engine(_)) if opts.repair => {
                set_aside = set_aside_snapshots(&dir, &engine_dir)?;
                open_engine(&dir, &engine_dir)?
            }
            other => other?,
        };
        let tree = |name: &str| db.open_tree(name).map_err(|e| StorageError::from_sled(&dir, e));
        let (log, meta) = (tree("log")?, tree("meta")?);
        let (checkpoints, quarantine) = (tree("checkpoints")?, tree("quarantine")?);
        let sled_err = |e| StorageError::from_sled(&dir, e);

        match meta.get(META_FORMAT).map_err(sled_err)? {
            Some(f) if f.as_ref() == FORMAT => {}
            Some(f) => {
                return Err(StorageError::UnknownFormat { path: dir, found: String::from_utf8_lossy(&f).into_owned() });
            }
            None => {
                meta.insert(META_FORMAT, FORMAT).map_err(sled_err)?;
            }
        }
        let low_water = match log.get(keys::LOW_WATER).map_err(sled_err)? {
            Some(v) if v.len() == 8 => u64::from_be_bytes(v.as_ref().try_into().expect("8 bytes")),
            _ => 1,
        };
        let (mark, reading) = DurableMark::open(&dir)?;
        let mark = Arc::new(mark);
        let flusher = {
            let (mark, dir) = (mark.clone(), dir.clone());
            Flusher::start(
                "keelson-flush",
                Box::new(move |covered, db: sled::Db| {
                    db.flush().map_err(|e| StorageError::from_sled(&dir, e))?;
                    if covered > 0 {
                        mark.record(covered)?;
                    }
                    Ok(covered)
                }),
                Box::new(reclaim_sled_garbage),
            )?
        };

        let mut this = SledEventLog {
            dir,
            db,
            log,
            checkpoints,
            quarantine,
            append: Mutex::new(AppendState { next_seq: low_water, last_at: 0 }),
            applied: AtomicU64::new(0),
            low_water: AtomicU64::new(low_water),
            commit: GroupCommit::new(0),
            mark,
            flusher,
            health: Health::default(),
            repair_report: None,
        };
        checkpoint::legacy::migrate(&this)?;
        checkpoint::remove_temporaries(&this)?;
        let (mut last_seq, mut last_at) = this.read_tail()?;
        let acknowledged = match reading {
            MarkReading::Seq(seq) => seq,
            MarkReading::Absent => last_seq,
            MarkReading::Damaged => {
                tracing::warn!(dir = %this.dir.display(), "durable-seq mark is damaged; trusting the log's own tail");
                last_seq
            }
        };
        if opts.repair {
            let mut report = verify::repair(&this, acknowledged)?;
            report.set_aside_engine_files = set_aside;
            (last_seq, last_at) = this.read_tail()?;
            this.repair_report = Some(report);
        } else if acknowledged > last_seq {
            return Err(StorageError::LostAcknowledged { durable: acknowledged, found: last_seq });
        }
        *this.append.lock().unwrap_or_else(PoisonError::into_inner) = AppendState { next_seq: last_seq + 1, last_at };
        this.applied.store(last_seq, Ordering::Release);
        this.commit = GroupCommit::new(last_seq);
        this.mark.record(last_seq)?;
        Ok(this)
    }

    /// What `OpenOptions::repair` did, when it was set.
    pub fn repair_report(&self) -> Option<&RepairReport> {
        self.repair_report.as_ref()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn sled_err(&self, e: sled::Error) -> StorageError {
        let damaged = matches!(e, sled::Error::Corruption { .. });
        let err = StorageError::from_sled(&self.dir, e);
        if damaged {
            self.health.note_damage(&err);
        }
        err
    }

    /// Seq and time of the last slot, or (low_water - 1, 0) for an empty log.
    fn read_tail(&self) -> Result<(u64, u64)> {
        match self.log.scan_prefix([keys::LOG]).next_back() {
            None => Ok((self.low_water.load(Ordering::Acquire) - 1, 0)),
            Some(entry) => {
                let (k, v) = entry.map_err(|e| self.sled_err(e))?;
                let seq =
                    keys::parse_log(&k).ok_or_else(|| StorageError::Engine(format!("malformed log key {k:?}")))?;
                let at = frame::decode(seq, Bytes::from_owner(v)).map(|r| r.at_nanos).unwrap_or(0);
                Ok((seq, at))
            }
        }
    }

    fn slot_time(&self, seq: u64) -> Result<u64> {
        let raw = self
            .log
            .get(keys::log(seq))
            .map_err(|e| self.sled_err(e))?
            .ok_or_else(|| StorageError::Corrupt { seq, reason: "missing from the log".into() })?;
        Ok(self.decode_entry(seq, raw)?.at_nanos)
    }

    pub(crate) fn decode_entry(&self, seq: u64, raw: sled::IVec) -> Result<Record> {
        frame::decode(seq, Bytes::from_owner(raw)).map_err(|reason| {
            let err = StorageError::Corrupt { seq, reason };
            self.health.note_damage(&err);
            err
        })
    }

    /// Records a low-water mark already written (atomically with the removals) to the tree.
    pub(crate) fn note_low_water(&self, low_water: u64) {
        self.low_water.store(low_water, Ordering::Release);
    }

    /// Flushes the engine and records `durable-seq`, waiting at most
    /// [`FLUSH_TIMEOUT`]; any failure fails the log for good.
    fn flush_covering(&self) -> Result<u64> {
        self.health.check()?;
        let covered = self.applied.load(Ordering::Acquire);
        self.health.guard(self.flusher.flush(covered, self.db.clone(), FLUSH_TIMEOUT))
    }

    /// Why the log stopped taking writes, once it has.
    pub fn failure(&self) -> Option<&str> {
        self.health.failure()
    }
}

/// Opens sled, turning its panics on damaged files into errors without
/// printing a panic message or backtrace (damage is reported, not crashed on).
fn open_engine(dir: &Path, engine_dir: &Path) -> Result<sled::Db> {
    // The hook is process-wide; while it is swapped, a panic elsewhere would
    // also go unprinted. Opens are rare (start-up, CLI), so that is accepted.
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let opened = catch_unwind(AssertUnwindSafe(|| {
        sled::Config::new().path(engine_dir).mode(sled::Mode::HighThroughput).cache_capacity(SLED_CACHE_BYTES).open()
    }));
    std::panic::set_hook(previous);
    opened
        .map_err(|_| {
            StorageError::Engine(format!(
                "sled's files in {} are damaged (sled panicked reading them); run `keelson verify --repair`",
                engine_dir.display()
            ))
        })?
        .map_err(|e| StorageError::from_sled(dir, e))
}

/// Moves sled's `snap.*` files into `DIR/quarantine/`; returns where they went.
fn set_aside_snapshots(dir: &Path, engine_dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(engine_dir).map_err(|e| StorageError::from_io(engine_dir, e))?;
    let quarantine = dir.join("quarantine");
    let mut moved = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| StorageError::from_io(engine_dir, e))?;
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with("snap.") {
            continue;
        }
        std::fs::create_dir_all(&quarantine).map_err(|e| StorageError::from_io(&quarantine, e))?;
        let stamp = nanos_since_epoch(SystemTime::now());
        let to = quarantine.join(format!("{}.{stamp}", name.to_string_lossy()));
        std::fs::rename(entry.path(), &to).map_err(|e| StorageError::from_io(&to, e))?;
        tracing::warn!(from = %entry.path().display(), to = %to.display(), "set aside sled's snapshot; sled rebuilds it from its log");
        moved.push(to);
    }
    Ok(moved)
}

fn prepare_dir(dir: &Path, create: bool) -> Result<()> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(StorageError::Io {
            path: dir.to_path_buf(),
            cause: std::io::Error::new(std::io::ErrorKind::NotADirectory, "exists and is not a directory"),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
            std::fs::create_dir_all(dir).map_err(|e| StorageError::from_io(dir, e))
        }
        Err(e) => Err(StorageError::from_io(dir, e)),
    }
}

/// Records per sled `apply_batch` (see `append`); 1,024 measured 12.45 ->
/// 2.65 KiB of resident memory per object for a 100k-object listing.
const SLED_BATCH_RECORDS: usize = 1024;

/// sled's page cache. Its default, 1 GiB, held what it cached of every
/// record written since start; 32 MiB measured 2.0-2.4 KiB per object
/// end to end (docs/benchmarks.md). Reads past it come from the OS page cache.
const SLED_CACHE_BYTES: u64 = 32 << 20;

/// A record's stored time (nanoseconds since the epoch) as a SystemTime.
fn time_of(nanos: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_nanos(nanos)
}

/// Frees what sled replaced during a burst of writes, once the burst is over.
///
/// sled 0.34 frees replaced pages and values through crossbeam-epoch's
/// default collector, and that collector only reclaims when some thread pins
/// it: every 128th pin of a thread collects at most 8 bags of 64 deferred
/// frees. A large listing defers far more than that, so the backlog stayed
/// allocated until the next burst of writes; the 100k-record log bench held
/// 96–128 MiB of live heap after its appends and 40–50 MiB with this
/// (docs/benchmarks.md, "Hub memory per object"). Pinning and flushing the
/// local bag runs the same collection sled's own pins would; with nothing
/// deferred each round is a few atomic operations, and the flush thread runs
/// this once per burst, never while idle.
fn reclaim_sled_garbage() {
    const ROUNDS: usize = 16_384; // up to 8M deferred frees
    for _ in 0..ROUNDS {
        crossbeam_epoch::pin().flush();
    }
}

impl EventLog for SledEventLog {
    fn append(&self, batch: &[NewRecord]) -> Result<SeqRange> {
        if let Some(r) = batch.iter().find(|r| r.key.len() > MAX_KEY_LEN) {
            return Err(StorageError::KeyTooLong { len: r.key.len(), max: MAX_KEY_LEN });
        }
        self.health.check()?;
        let range = {
            let mut st = self.append.lock().unwrap_or_else(PoisonError::into_inner);
            if batch.is_empty() {
                return Ok(SeqRange { first: st.next_seq, last: st.next_seq - 1, at: time_of(st.last_at) });
            }
            // Times never go backwards in the log, so seq order is time order
            // even if the wall clock steps back.
            let at = nanos_since_epoch(SystemTime::now()).max(st.last_at);
            let first = st.next_seq;
            // sled keeps ~10 KiB per record of one huge `apply_batch`
            // resident for good (docs/benchmarks.md, "Hub memory per
            // object"): a 100k-object listing cost a gigabyte. So a large
            // batch goes to sled in chunks, each atomic with its index
            // entries. One durable flush still covers the whole batch before
            // `append` returns; only a crash in the middle of it can leave a
            // prefix of whole records (never acknowledged: the source
            // resubmits), see `EventLog::append`.
            for (c, chunk) in batch.chunks(SLED_BATCH_RECORDS).enumerate() {
                let chunk_first = first + (c * SLED_BATCH_RECORDS) as u64;
                let mut b = sled::Batch::default();
                for (i, rec) in chunk.iter().enumerate() {
                    let seq = chunk_first + i as u64;
                    b.insert(&keys::log(seq), frame::encode(seq, RecordKind::Event, at, &rec.key, &rec.payload));
                    if !rec.key.is_empty() {
                        b.insert(keys::by_key(&rec.key, seq), &[]);
                    }
                }
                self.health.guard(self.log.apply_batch(b).map_err(|e| self.sled_err(e)))?;
                let chunk_last = chunk_first + chunk.len() as u64 - 1;
                st.next_seq = chunk_last + 1;
                self.applied.store(chunk_last, Ordering::Release);
            }
            let last = first + batch.len() as u64 - 1;
            st.next_seq = last + 1;
            st.last_at = at;
            self.applied.store(last, Ordering::Release);
            SeqRange { first, last, at: time_of(at) }
        };
        self.commit.wait_durable(range.last, || self.flush_covering())?;
        Ok(range)
    }

    fn first_seq(&self) -> u64 {
        self.low_water.load(Ordering::Acquire)
    }

    fn last_seq(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    fn read_from(&self, from: u64) -> RecordIter<'_> {
        let start = keys::log(from.max(1));
        let end = keys::log(u64::MAX);
        Box::new(self.log.range(start..=end).map(move |entry| {
            let (k, v) = entry.map_err(|e| self.sled_err(e))?;
            let seq = keys::parse_log(&k).ok_or_else(|| StorageError::Engine(format!("malformed log key {k:?}")))?;
            self.decode_entry(seq, v)
        }))
    }

    fn read_key(&self, key: &[u8]) -> RecordIter<'_> {
        let key = Bytes::copy_from_slice(key);
        Box::new(self.log.scan_prefix(keys::by_key_prefix(&key)).rev().map(move |entry| {
            let (k, _) = entry.map_err(|e| self.sled_err(e))?;
            let (_, seq) =
                keys::parse_by_key(&k).ok_or_else(|| StorageError::Engine(format!("malformed index key {k:?}")))?;
            let raw = self.log.get(keys::log(seq)).map_err(|e| self.sled_err(e))?.ok_or_else(|| {
                StorageError::Corrupt { seq, reason: "key index points at a record that is not there".into() }
            })?;
            let rec = self.decode_entry(seq, raw)?;
            if rec.key != key {
                return Err(StorageError::Corrupt {
                    seq,
                    reason: "key index points at a record of another key".into(),
                });
            }
            Ok(rec)
        }))
    }

    fn seq_at_or_after(&self, at: SystemTime) -> Result<Option<u64>> {
        // Binary search: slot times never decrease along seqs (gap slots keep theirs).
        let target = nanos_since_epoch(at);
        let (mut lo, mut hi) = (self.first_seq(), self.last_seq());
        let mut found = None;
        while lo <= hi {
            let mid = lo + (hi - lo) / 2;
            if self.slot_time(mid)? >= target {
                found = Some(mid);
                hi = mid - 1; // mid >= first_seq >= 1
            } else {
                lo = mid + 1;
            }
        }
        Ok(found)
    }

    fn write_checkpoint_parts(&self, seq: u64, format: u32, parts: &mut dyn Iterator<Item = Vec<u8>>) -> Result<()> {
        let last = self.commit.durable();
        if seq > last {
            return Err(StorageError::CheckpointAhead { seq, last });
        }
        // Not guarded: a checkpoint file that cannot be written leaves the
        // records and the engine as they were (see `checkpoint::write`).
        self.health.check()?;
        checkpoint::write(self, seq, format, parts)
    }

    fn checkpoint_at_or_before(&self, seq: u64) -> Result<Option<Checkpoint>> {
        checkpoint::newest_at_or_before(self, seq)
    }

    fn compact(&self, policy: &Retention, now: SystemTime) -> Result<CompactionReport> {
        self.health.check()?;
        let report = self.health.guard(retention::compact(self, policy, now))?;
        self.flush()?;
        Ok(report)
    }

    fn failure(&self) -> Option<String> {
        self.health.failure().map(str::to_owned)
    }

    fn damage(&self) -> Option<String> {
        self.health.damage().map(str::to_owned)
    }

    fn verify(&self) -> Result<VerifyReport> {
        verify::verify(self, self.commit.durable())
    }

    fn flush(&self) -> Result<()> {
        self.health.check()?;
        let target = self.applied.load(Ordering::Acquire);
        // A zero target still flushes: metadata lives outside the seq order.
        if target == 0 || self.commit.durable() >= target {
            self.health.guard(self.flusher.flush(0, self.db.clone(), FLUSH_TIMEOUT))?;
            return Ok(());
        }
        self.commit.wait_durable(target, || self.flush_covering())
    }
}
