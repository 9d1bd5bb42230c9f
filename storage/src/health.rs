//! Storage health: the first failed write poisons the log for the rest of
//! the process, and engine flushes run on their own thread with a deadline.
//!
//! Why: after an I/O error during a flush, sled 0.34 wedges (its IO buffers
//! keep the error, and later flushes block forever in `make_stable`). Calling
//! into it again can hang the caller for good, so after the first failure no
//! write reaches sled; the hub reports the failure and exits for its
//! supervisor to restart it, which recovers (sled's recovery on open is sound).

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use crate::error::{Result, StorageError};

/// How long one engine flush (fsync) may take before the log is declared
/// failed. Generous: a healthy flush takes milliseconds, a slow disk seconds.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(20);

/// Set once, by the first write that failed.
#[derive(Default)]
pub(crate) struct Health {
    failure: OnceLock<String>,
    /// The first damage a read ran into (the log still serves the rest).
    damage: OnceLock<String>,
}

impl Health {
    /// Fails fast once the log has failed.
    pub fn check(&self) -> Result<()> {
        match self.failure.get() {
            Some(reason) => Err(StorageError::Failed { reason: reason.clone() }),
            None => Ok(()),
        }
    }

    pub fn failure(&self) -> Option<&str> {
        self.failure.get().map(String::as_str)
    }

    pub fn damage(&self) -> Option<&str> {
        self.damage.get().map(String::as_str)
    }

    /// Remembers the first damage a read met, logged at ERROR once, so a
    /// running hub can show it (`/readyz`, `/v1/storage`) instead of only
    /// failing the read.
    pub fn note_damage(&self, what: &StorageError) {
        if self.damage.get().is_none() && self.damage.set(what.to_string()).is_ok() {
            tracing::error!("the event log is damaged: {what}; stop the hub and run `keelson verify --repair`");
        }
    }

    /// Passes `result` through; an error from a write path marks the log
    /// failed (logged at ERROR once) and is returned as is.
    pub fn guard<T>(&self, result: Result<T>) -> Result<T> {
        if let Err(e) = &result {
            let poisons = !matches!(
                e,
                StorageError::KeyTooLong { .. } | StorageError::CheckpointAhead { .. } | StorageError::Failed { .. }
            );
            if poisons {
                self.fail(e.to_string());
            }
        }
        result
    }

    pub fn fail(&self, reason: String) {
        if self.failure.set(reason).is_ok() {
            let reason = self.failure.get().map(String::as_str).unwrap_or_default();
            tracing::error!("storage failed: {reason}; restart to recover (every later write fails fast)");
        }
    }
}

type Job<T> = Box<dyn FnMut(u64, T) -> Result<u64> + Send>;
pub(crate) type IdleJob = Box<dyn FnMut() + Send>;
type Request<T> = (u64, T, mpsc::SyncSender<Result<u64>>);

/// Runs flushes on a dedicated thread so a caller waits at most a deadline.
/// A flush that overruns leaves that thread stuck inside the engine; the log
/// is marked failed, so nothing queues behind it.
///
/// Each request carries what the job needs (the engine handle) and the job
/// consumes it before replying, so an idle flush thread holds no engine
/// handle: closing the log releases sled's directory lock as before.
pub(crate) struct Flusher<T> {
    requests: Mutex<mpsc::Sender<Request<T>>>,
}

/// How long the flush thread waits for more work before it counts a burst
/// of writes as over and runs its idle job once.
const IDLE_AFTER: Duration = Duration::from_millis(200);

impl<T: Send + 'static> Flusher<T> {
    /// `on_idle` runs once on the flush thread after each burst of flushes
    /// (no request for [`IDLE_AFTER`]); an idle log never wakes the thread.
    pub fn start(name: &str, mut job: Job<T>, mut on_idle: IdleJob) -> Result<Self> {
        let (tx, rx) = mpsc::channel::<Request<T>>();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let mut busy = false;
                loop {
                    let next = if busy {
                        match rx.recv_timeout(IDLE_AFTER) {
                            Ok(request) => Some(request),
                            Err(RecvTimeoutError::Timeout) => {
                                on_idle();
                                busy = false;
                                continue;
                            }
                            Err(RecvTimeoutError::Disconnected) => None,
                        }
                    } else {
                        rx.recv().ok()
                    };
                    // Ends when the log (the only sender) is dropped.
                    let Some((covered, context, reply)) = next else { break };
                    let outcome = job(covered, context);
                    let _ = reply.send(outcome);
                    busy = true;
                }
            })
            .map_err(|e| StorageError::Engine(format!("cannot start the flush thread: {e}")))?;
        Ok(Flusher { requests: Mutex::new(tx) })
    }

    /// Runs the job for `covered` and waits at most `timeout` for it.
    pub fn flush(&self, covered: u64, context: T, timeout: Duration) -> Result<u64> {
        let (reply_tx, reply_rx) = mpsc::sync_channel(1);
        let sent = self.requests.lock().unwrap_or_else(PoisonError::into_inner).send((covered, context, reply_tx));
        if sent.is_err() {
            return Err(StorageError::Engine("the flush thread is gone".into()));
        }
        match reply_rx.recv_timeout(timeout) {
            Ok(outcome) => outcome,
            Err(RecvTimeoutError::Timeout) => Err(StorageError::Engine(format!(
                "a flush did not finish within {timeout:?} (the disk or the engine is stuck)"
            ))),
            Err(RecvTimeoutError::Disconnected) => Err(StorageError::Engine("the flush thread died".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_stuck_flush_times_out_instead_of_hanging_the_caller() {
        let (_never_tx, never_rx) = mpsc::channel::<()>();
        let never_rx = Mutex::new(never_rx);
        let flusher = Flusher::start(
            "test-flusher",
            Box::new(move |_, ()| {
                let _ = never_rx.lock().unwrap().recv(); // blocks: the sender lives on
                Ok(0)
            }),
            Box::new(|| {}),
        )
        .unwrap();
        let started = Instant::now();
        let err = flusher.flush(1, (), Duration::from_millis(200)).unwrap_err();
        assert!(err.to_string().contains("did not finish"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn the_idle_job_runs_once_after_each_burst_and_never_on_an_idle_log() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let idle_runs = Arc::new(AtomicUsize::new(0));
        let counter = idle_runs.clone();
        let flusher = Flusher::start(
            "test-flusher",
            Box::new(|covered, ()| Ok(covered)),
            Box::new(move || {
                counter.fetch_add(1, Ordering::SeqCst);
            }),
        )
        .unwrap();
        let wait_for_runs = |n: usize| {
            let deadline = Instant::now() + Duration::from_secs(10);
            while idle_runs.load(Ordering::SeqCst) < n {
                assert!(Instant::now() < deadline, "the idle job did not run {n} time(s)");
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        // Nothing written yet: the thread sleeps on its queue.
        std::thread::sleep(IDLE_AFTER * 3);
        assert_eq!(idle_runs.load(Ordering::SeqCst), 0, "an idle log woke its flush thread");
        // A burst of flushes (closer together than IDLE_AFTER) is one burst.
        for seq in 1..=20 {
            assert_eq!(flusher.flush(seq, (), Duration::from_secs(5)).unwrap(), seq);
        }
        wait_for_runs(1);
        std::thread::sleep(IDLE_AFTER * 3);
        assert_eq!(idle_runs.load(Ordering::SeqCst), 1, "the idle job ran again with nothing written");
        flusher.flush(21, (), Duration::from_secs(5)).unwrap();
        wait_for_runs(2);
    }

    #[test]
    fn the_first_write_error_fails_every_later_write_fast() {
        let health = Health::default();
        assert!(health.check().is_ok());
        let _ = health.guard::<()>(Err(StorageError::KeyTooLong { len: 9, max: 8 }));
        assert!(health.check().is_ok(), "a caller's mistake is not a storage failure");
        let _ = health.guard::<()>(Err(StorageError::Engine("disk on fire".into())));
        let _ = health.guard::<()>(Err(StorageError::Engine("second".into())));
        let err = health.check().unwrap_err();
        assert_eq!(err.to_string(), "storage failed: storage engine error: disk on fire; restart to recover");
        assert_eq!(health.failure(), Some("storage engine error: disk on fire"));
    }
}
