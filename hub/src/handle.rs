//! What sources and sinks hold of the running hub: a cheap, cloneable
//! handle that submits ops to the ingest task (crate::runtime) and reads
//! snapshots, source health and metrics.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};

use crate::HubError;
use crate::conflict::ConflictReport;
use crate::event::{Op, SourceId};
use crate::guard::HeldReport;
use crate::metrics::Metrics;
use crate::snapshot::Snapshot;
use crate::store::EventStore;

/// What a source reports about itself.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct SourceHealth {
    pub up: bool,
    pub synced: bool,
    pub last_error: Option<String>,
    /// RFC 3339 time of the last change the source emitted.
    pub last_event: Option<String>,
    /// Current validation errors, e.g. `routes.yaml:12: spec.hosts is required`.
    pub errors: Vec<String>,
    /// Deletions the mass-deletion guard holds (crate::guard).
    pub held_deletions: Option<HeldReport>,
    /// Config objects this source lost to a source listed before it
    /// (crate::conflict): kept aside, not served.
    pub conflicts: Option<ConflictReport>,
}

/// The result of a submission.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Seqs the submission was appended at; `None` when nothing needed appending.
    pub appended: Option<(u64, u64)>,
    /// Resources created, updated or deleted.
    pub changed: usize,
    /// The config version after the submission.
    pub version: u64,
    /// Deletions the mass-deletion guard held back instead of applying.
    pub held: usize,
}

pub(crate) struct Submission {
    pub(crate) origin: SourceId,
    pub(crate) ops: Vec<Op>,
    /// Files whose objects a `SyncDone` in `ops` must not delete: the source
    /// could not read them, which says nothing about their objects.
    pub(crate) keep_files: Vec<String>,
    pub(crate) reply: oneshot::Sender<Result<Outcome, HubError>>,
}

/// What the ingest task is asked to do.
pub(crate) enum Command {
    Submit(Submission),
    /// Apply the deletions held for a source now (an operator confirmed them).
    Confirm {
        source: String,
        reply: oneshot::Sender<Result<usize, HubError>>,
    },
}

pub(crate) struct Shared {
    pub(crate) store: EventStore,
    pub(crate) limits: crate::object::Limits,
    pub(crate) metrics: Metrics,
    pub(crate) health: RwLock<BTreeMap<String, SourceHealth>>,
    pub(crate) degraded: AtomicBool,
    pub(crate) translate: crate::translate::TranslateConfig,
}

/// A cheap, cloneable handle to the running hub.
#[derive(Clone)]
pub struct HubHandle {
    pub(crate) tx: mpsc::Sender<Command>,
    pub(crate) snapshots: watch::Receiver<Option<Arc<Snapshot>>>,
    pub(crate) shared: Arc<Shared>,
}

impl HubHandle {
    /// Submits ops from one source; returns once they are durable and applied.
    pub async fn submit(&self, origin: SourceId, ops: Vec<Op>) -> Result<Outcome, HubError> {
        self.submit_keeping(origin, ops, Vec::new()).await
    }

    /// Like `submit`, for a listing that could not read some files: objects
    /// whose location is in (or below, for a directory) one of `keep_files`
    /// are not reconciled away.
    pub async fn submit_keeping(
        &self,
        origin: SourceId,
        ops: Vec<Op>,
        keep_files: Vec<String>,
    ) -> Result<Outcome, HubError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Submit(Submission { origin, ops, keep_files, reply }))
            .await
            .map_err(|_| HubError::Stopped)?;
        rx.await.map_err(|_| HubError::Stopped)?
    }

    /// Applies the deletions the mass-deletion guard holds for `source`
    /// (named as `/debug/sources` shows it) now; returns how many were held.
    pub async fn confirm_deletions(&self, source: &str) -> Result<usize, HubError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::Confirm { source: source.to_string(), reply }).await.map_err(|_| HubError::Stopped)?;
        rx.await.map_err(|_| HubError::Stopped)?
    }

    /// Published snapshots; `None` until the hub is ready.
    pub fn snapshots(&self) -> watch::Receiver<Option<Arc<Snapshot>>> {
        self.snapshots.clone()
    }

    pub fn current(&self) -> Option<Arc<Snapshot>> {
        self.snapshots.borrow().clone()
    }

    pub fn update_health(&self, origin: &SourceId, f: impl FnOnce(&mut SourceHealth)) {
        let mut all = self.shared.health.write().unwrap_or_else(|e| e.into_inner());
        let h = all.entry(origin.to_string()).or_default();
        f(h);
        self.shared.metrics.source_up.get_or_create(&Metrics::source(&origin.to_string())).set(i64::from(h.up));
    }

    pub fn health(&self) -> BTreeMap<String, SourceHealth> {
        self.shared.health.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// True when the first snapshot went out because `sync_timeout` passed.
    pub fn degraded(&self) -> bool {
        self.shared.degraded.load(Ordering::Relaxed)
    }

    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// The `[translate]` settings the snapshots are built with.
    pub fn translate_config(&self) -> &crate::translate::TranslateConfig {
        &self.shared.translate
    }

    pub fn store(&self) -> &EventStore {
        &self.shared.store
    }

    /// The limits sources must validate objects against.
    pub fn limits(&self) -> &crate::object::Limits {
        &self.shared.limits
    }
}
