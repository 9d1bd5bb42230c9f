//! Group commit: many appenders, one fsync.
//!
//! Appenders write their batch into the engine (fast, in memory), then wait
//! here until a flush covers their last seq. The first waiter to find no flush
//! in progress becomes the leader: it notes the highest applied seq, flushes
//! the engine, records the durable high-water mark and wakes everyone. Waiters
//! whose records went in while the leader was flushing become the next group.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, PoisonError};

use crate::error::{Result, StorageError};

#[derive(Default)]
struct FlushState {
    durable: u64,
    flushing: bool,
}

pub(crate) struct GroupCommit {
    state: Mutex<FlushState>,
    done: Condvar,
}

impl GroupCommit {
    pub fn new(durable: u64) -> Self {
        GroupCommit { state: Mutex::new(FlushState { durable, flushing: false }), done: Condvar::new() }
    }

    pub fn durable(&self) -> u64 {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).durable
    }

    /// Returns once `seq` is durable. `flush` makes everything applied so far
    /// durable and returns the highest seq it covered.
    pub fn wait_durable(&self, seq: u64, flush: impl Fn() -> Result<u64>) -> Result<()> {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if st.durable >= seq {
                return Ok(());
            }
            if !st.flushing {
                break;
            }
            st = self.done.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
        st.flushing = true;
        drop(st);
        let outcome = flush();
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        st.flushing = false;
        if let Ok(covered) = outcome {
            st.durable = st.durable.max(covered);
        }
        drop(st);
        // On failure the others retry as leaders and see their own error.
        self.done.notify_all();
        outcome.map(|_| ())
    }
}

/// A 16-byte file beside the engine that records the highest seq ever
/// acknowledged as durable: seq (u64 BE), CRC32 of those 8 bytes, padding.
///
/// It exists because sled's recovery after damage may drop the tail of its
/// own log without an error. With the mark, such a loss is detected on open
/// and reported instead of silently reusing the lost sequence numbers.
pub(crate) struct DurableMark {
    path: PathBuf,
    file: File,
}

impl DurableMark {
    pub const FILE_NAME: &'static str = "durable-seq";

    pub fn open(dir: &Path) -> Result<(Self, MarkReading)> {
        let path = dir.join(Self::FILE_NAME);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| StorageError::from_io(&path, e))?;
        let mut buf = [0u8; 16];
        let reading = match file.read_exact_at(&mut buf, 0) {
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => MarkReading::Absent,
            Err(e) => return Err(StorageError::from_io(&path, e)),
            Ok(()) => {
                let seq = u64::from_be_bytes(buf[..8].try_into().expect("8 bytes"));
                let crc = u32::from_be_bytes(buf[8..12].try_into().expect("4 bytes"));
                if crc == crc32fast::hash(&buf[..8]) { MarkReading::Seq(seq) } else { MarkReading::Damaged }
            }
        };
        Ok((DurableMark { path, file }, reading))
    }

    pub fn record(&self, seq: u64) -> Result<()> {
        let mut buf = [0u8; 16];
        buf[..8].copy_from_slice(&seq.to_be_bytes());
        let crc = crc32fast::hash(&buf[..8]);
        buf[8..12].copy_from_slice(&crc.to_be_bytes());
        self.file
            .write_all_at(&buf, 0)
            .and_then(|()| self.file.sync_data())
            .map_err(|e| StorageError::from_io(&self.path, e))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MarkReading {
    Absent,
    Damaged,
    Seq(u64),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn concurrent_waiters_share_flushes() {
        let gc = Arc::new(GroupCommit::new(0));
        let applied = Arc::new(AtomicU64::new(0));
        let flushes = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (gc, applied, flushes) = (gc.clone(), applied.clone(), flushes.clone());
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        let seq = applied.fetch_add(1, Ordering::SeqCst) + 1;
                        gc.wait_durable(seq, || {
                            flushes.fetch_add(1, Ordering::SeqCst);
                            let covered = applied.load(Ordering::SeqCst);
                            std::thread::sleep(std::time::Duration::from_micros(200));
                            Ok(covered)
                        })
                        .unwrap();
                        assert!(gc.durable() >= seq);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(gc.durable(), 1600);
        // 1600 appends; sharing means far fewer flushes than appends.
        assert!(flushes.load(Ordering::SeqCst) < 1600, "no flush was shared");
    }

    #[test]
    fn a_failed_flush_fails_its_waiter_and_the_next_one_retries() {
        let gc = GroupCommit::new(0);
        let err = gc.wait_durable(1, || Err(StorageError::Engine("disk on fire".into())));
        assert!(err.is_err());
        assert_eq!(gc.durable(), 0);
        gc.wait_durable(1, || Ok(1)).unwrap();
        assert_eq!(gc.durable(), 1);
    }

    #[test]
    fn mark_round_trips_and_detects_damage() {
        let dir = tempfile::tempdir().unwrap();
        let (mark, reading) = DurableMark::open(dir.path()).unwrap();
        assert_eq!(reading, MarkReading::Absent);
        mark.record(77).unwrap();
        drop(mark);
        assert_eq!(DurableMark::open(dir.path()).unwrap().1, MarkReading::Seq(77));
        let path = dir.path().join(DurableMark::FILE_NAME);
        let mut raw = std::fs::read(&path).unwrap();
        raw[3] ^= 0x10;
        std::fs::write(&path, raw).unwrap();
        assert_eq!(DurableMark::open(dir.path()).unwrap().1, MarkReading::Damaged);
    }
}
