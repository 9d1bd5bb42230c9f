//! The running hub: one ingest task owns the `State`.
//!
//! Sources submit batches of ops. The ingest task drops the ones that would
//! change nothing (an identical re-upsert, a delete of something absent), so
//! a relist after a restart creates no versions. It appends the rest as one
//! durable batch, applies them, and publishes a snapshot once changes have
//! been quiet for `quiet` (or at most `max_delay` after the first). When a
//! source finishes a listing (`SyncDone`), objects it held but did not list
//! are deleted: that is how a warm restart reconciles.
//!
//! Readiness (DESIGN.md §4): nothing is published until every configured
//! source has synced or `sync_timeout` passes (then the hub is degraded),
//! except on a warm restart, where the state rebuilt from the log is
//! published at once.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::HubError;
use crate::conflict::{Conflicts, Verdict};
use crate::event::{Event, Op, ResourceKey, SourceId};
use crate::guard::{DeletionGuard, HeldDeletions};
use crate::handle::{Command, Shared};
pub use crate::handle::{HubHandle, Outcome, SourceHealth};
use crate::metrics::Metrics;
use crate::snapshot::{ChangeSet, Snapshot};
use crate::state::{Applied, State};
use crate::store::EventStore;

#[derive(Clone, Debug)]
pub struct HubConfig {
    pub quiet: Duration,
    pub max_delay: Duration,
    pub sync_timeout: Duration,
    pub checkpoint_every_events: u64,
    /// The sources readiness waits for.
    pub sources: Vec<SourceId>,
    /// What every source validates objects against (`[limits]`).
    pub limits: crate::object::Limits,
    /// The mass-deletion guard (`[reconcile]`).
    pub deletion_guard: DeletionGuard,
    /// Registry + Istio routing → Envoy resources (`[translate]`).
    pub translate: crate::translate::TranslateConfig,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            quiet: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            sync_timeout: Duration::from_secs(30),
            checkpoint_every_events: 10_000,
            sources: Vec::new(),
            limits: crate::object::Limits::default(),
            deletion_guard: DeletionGuard::default(),
            translate: crate::translate::TranslateConfig::default(),
        }
    }
}

/// The hub process core. `stop` writes a final checkpoint and flushes.
pub struct Hub {
    handle: HubHandle,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), HubError>>,
}

impl Hub {
    /// Rebuilds the state from the log (checkpoint + tail) and starts ingesting.
    pub async fn start(store: EventStore, cfg: HubConfig, metrics: Metrics) -> Result<Hub, HubError> {
        let rebuilt = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || store.state_at(u64::MAX))
                .await
                .map_err(|e| HubError::Task(e.to_string()))??
        };
        if !rebuilt.gaps.is_empty() {
            tracing::warn!(
                gaps = rebuilt.gaps.len(),
                "replay crossed lost or compacted records; sources will reconcile"
            );
        }
        let warm = rebuilt.state.seq > 0;
        tracing::info!(
            version = rebuilt.state.version,
            resources = rebuilt.state.resources.len(),
            checkpoint = rebuilt.from_checkpoint,
            replayed = rebuilt.state.seq - rebuilt.from_checkpoint,
            warm,
            "state rebuilt from the log"
        );
        let (tx, rx) = mpsc::channel(256);
        let (snap_tx, snapshots) = watch::channel(None);
        let shared = Arc::new(Shared {
            store,
            limits: cfg.limits,
            metrics,
            health: RwLock::default(),
            degraded: AtomicBool::new(false),
            translate: cfg.translate.clone(),
        });
        let (stop, stop_rx) = oneshot::channel();
        let mut ingest = Ingest {
            base_version: rebuilt.state.version,
            kind_versions: BTreeMap::new(),
            changed_keys: BTreeSet::new(),
            checkpointed: rebuilt.from_checkpoint,
            state: rebuilt.state,
            ready: warm || cfg.sources.is_empty(),
            shared: shared.clone(),
            snap_tx,
            syncing: BTreeMap::new(),
            synced: BTreeSet::new(),
            pending_since: None,
            last_change: None,
            published: None,
            checkpointing: None,
            held: HeldDeletions::default(),
            conflicts: Conflicts::new(cfg.sources.clone()),
            promotions: Vec::new(),
            served: crate::translate::Served::new(&cfg.translate),
            cfg,
        };
        if ingest.ready {
            // Warm restart (or nothing to wait for): serve the log's state
            // before `start` returns, whatever the sources are doing.
            ingest.publish();
        }
        let task = tokio::spawn(ingest.run(rx, stop_rx));
        Ok(Hub { handle: HubHandle { tx, snapshots, shared }, stop, task })
    }

    pub fn handle(&self) -> HubHandle {
        self.handle.clone()
    }

    /// Stops ingesting, writes a final checkpoint and flushes the log.
    pub async fn stop(self) -> Result<(), HubError> {
        let _ = self.stop.send(());
        self.task.await.map_err(|e| HubError::Task(e.to_string()))?
    }
}

struct Ingest {
    state: State,
    cfg: HubConfig,
    shared: Arc<Shared>,
    snap_tx: watch::Sender<Option<Arc<Snapshot>>>,
    ready: bool,
    /// Sources in the middle of a listing, and the keys listed so far.
    syncing: BTreeMap<SourceId, HashSet<ResourceKey>>,
    synced: BTreeSet<SourceId>,
    pending_since: Option<Instant>,
    last_change: Option<Instant>,
    published: Option<u64>,
    /// The last seq that changed each kind since start; older kinds hold
    /// `base_version` (the state version at start), which is just as exact.
    kind_versions: BTreeMap<(String, String), u64>,
    base_version: u64,
    /// Keys changed since the last publish (the next snapshot's change set).
    changed_keys: BTreeSet<ResourceKey>,
    checkpointed: u64,
    checkpointing: Option<tokio::task::JoinHandle<()>>,
    held: HeldDeletions,
    conflicts: Conflicts,
    /// Versions set aside that take over because their winner deleted its
    /// own (crate::conflict), applied after the submission that caused it.
    promotions: Vec<(SourceId, Op)>,
    /// What the snapshots serve: the state plus derived resources.
    served: crate::translate::Served,
}

impl Ingest {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>, mut stop: oneshot::Receiver<()>) -> Result<(), HubError> {
        let sync_deadline = Instant::now() + self.cfg.sync_timeout;
        loop {
            let publish_at = self.publish_deadline();
            let held_due = self.held.next_due(&self.cfg.deletion_guard);
            tokio::select! {
                _ = &mut stop => break,
                cmd = rx.recv() => match cmd {
                    None => break,
                    Some(Command::Submit(sub)) => {
                        let outcome = self.ingest(sub.origin, sub.ops, &sub.keep_files, true).await;
                        self.promote().await;
                        let _ = sub.reply.send(outcome);
                    }
                    Some(Command::Confirm { source, reply }) => {
                        let applied = match self.held.source_named(&source) {
                            Some(origin) => {
                                tracing::warn!(source = %origin, "held deletions confirmed by an operator");
                                self.apply_held(&origin).await
                            }
                            None => Ok(0),
                        };
                        self.promote().await;
                        let _ = reply.send(applied);
                    }
                },
                _ = tokio::time::sleep_until(held_due.unwrap_or(sync_deadline)), if held_due.is_some() => {
                    for origin in self.held.due(&self.cfg.deletion_guard, Instant::now()) {
                        tracing::warn!(source = %origin, after = ?self.cfg.deletion_guard.confirm_after, "the source still lists none of its held objects; deleting them");
                        if let Err(e) = self.apply_held(&origin).await {
                            tracing::error!(source = %origin, "cannot apply held deletions: {e}");
                        }
                    }
                    self.promote().await;
                }
                _ = tokio::time::sleep_until(publish_at.unwrap_or(sync_deadline)), if publish_at.is_some() => self.publish(),
                _ = tokio::time::sleep_until(sync_deadline), if !self.ready => {
                    let waiting: Vec<String> = self.cfg.sources.iter().filter(|s| !self.synced.contains(s)).map(|s| s.to_string()).collect();
                    tracing::warn!(?waiting, "sync_timeout passed before every source synced; publishing, degraded");
                    self.shared.degraded.store(true, Ordering::Relaxed);
                    self.ready = true;
                    self.publish();
                }
            }
        }
        if let Some(t) = self.checkpointing.take() {
            let _ = t.await;
        }
        if self.state.seq > self.checkpointed {
            let (store, state) = (self.shared.store.clone(), self.state.clone());
            tokio::task::spawn_blocking(move || store.write_checkpoint(&state))
                .await
                .map_err(|e| HubError::Task(e.to_string()))??;
            tracing::info!(seq = self.state.seq, "final checkpoint written");
        }
        let store = self.shared.store.clone();
        tokio::task::spawn_blocking(move || store.log().flush()).await.map_err(|e| HubError::Task(e.to_string()))??;
        Ok(())
    }

    fn publish_deadline(&self) -> Option<Instant> {
        if !self.ready {
            return None;
        }
        let (first, last) = (self.pending_since?, self.last_change?);
        Some((last + self.cfg.quiet).min(first + self.cfg.max_delay))
    }

    fn publish(&mut self) {
        self.pending_since = None;
        self.last_change = None;
        if self.published == Some(self.state.version) {
            return;
        }
        let started = std::time::Instant::now();
        let raw_changes = std::mem::take(&mut self.changed_keys);
        let keys = self.served.update(&self.state, &raw_changes);
        for key in keys.iter().filter(|k| !raw_changes.contains(*k)) {
            // A derived kind changes at the seq that changed its inputs.
            self.kind_versions.insert((key.group.clone(), key.kind.clone()), self.state.version);
        }
        let changes = ChangeSet { since: self.published, keys };
        let kind_versions = Arc::new(self.kind_versions.clone());
        let snapshot = Arc::new(
            Snapshot::serving(&self.state, &self.served, kind_versions, self.base_version).with_changes(changes),
        );
        let m = &self.shared.metrics;
        m.snapshot_build_seconds.observe(started.elapsed().as_secs_f64());
        m.snapshot_builds.inc();
        m.snapshot_version.set(i64::try_from(snapshot.version).unwrap_or(i64::MAX));
        tracing::info!(version = snapshot.version, resources = snapshot.resources.len(), "snapshot published");
        self.published = Some(snapshot.version);
        self.snap_tx.send_replace(Some(snapshot));
    }

    /// Filters, appends and applies one submission.
    async fn ingest(
        &mut self,
        origin: SourceId,
        ops: Vec<Op>,
        keep_files: &[String],
        guarded: bool,
    ) -> Result<Outcome, HubError> {
        // A kept path is a file, or a directory the source could not read.
        let kept = |location: &str| {
            let path = location.rsplit_once(':').map_or(location, |(p, _)| p);
            keep_files
                .iter()
                .any(|f| path.strip_prefix(f.as_str()).is_some_and(|rest| rest.is_empty() || rest.starts_with('/')))
        };
        let mut out = Vec::with_capacity(ops.len());
        let mut released = false;
        let mut conflicts_moved = false;
        for op in ops {
            match &op {
                Op::Upsert { key, .. } if let Err(e) = crate::object::check_key(key) => {
                    // Sources validate first; this keeps one source's bug from
                    // failing its whole batch at the log's key limits.
                    tracing::error!(source = %origin, "rejected an invalid key the source let through: {e}");
                    self.shared.metrics.validation_errors.get_or_create(&Metrics::source(&origin.to_string())).inc();
                }
                Op::Upsert { key, body, .. } => {
                    if self.held.release(&origin, key) {
                        released = true;
                        tracing::info!(source = %origin, %key, "listed again: its held deletion is off");
                    }
                    if let Some(seen) = self.syncing.get_mut(&origin) {
                        seen.insert(key.clone());
                    }
                    let holder = self.state.resources.get(key).map(|e| &**e);
                    let other_holder = holder.is_some_and(|h| h.origin != origin);
                    if self.conflicts.upsert(key, &origin, &op, holder) == Verdict::SetAside {
                        conflicts_moved = true;
                        continue;
                    }
                    conflicts_moved |= other_holder;
                    if !self.state.holds(key, &origin, body) {
                        out.push(op);
                    }
                }
                Op::Delete { key, .. } => match self.state.resources.get(key) {
                    Some(holder) => {
                        if self.conflicts.may_delete(key, &origin, &holder.origin) {
                            out.push(op);
                        } else {
                            conflicts_moved = true;
                        }
                    }
                    None => conflicts_moved |= self.conflicts.forget(key, &origin),
                },
                Op::SyncStart => {
                    self.syncing.insert(origin.clone(), HashSet::new());
                    out.push(op);
                }
                Op::SyncDone => {
                    if let Some(seen) = self.syncing.remove(&origin) {
                        self.conflicts.forget_unlisted(&origin, &seen, kept);
                        conflicts_moved = true;
                        let queued: HashSet<&ResourceKey> = out.iter().filter_map(Op::key).collect();
                        let vanished: Vec<ResourceKey> = self
                            .state
                            .keys_from(&origin)
                            .filter(|k| !seen.contains(*k) && !queued.contains(k))
                            .filter(|k| !kept(&self.state.resources[*k].location))
                            .cloned()
                            .collect();
                        if !vanished.is_empty() {
                            tracing::info!(source = %origin, deleted = vanished.len(), "objects gone from the source since the last sync");
                        }
                        out.extend(vanished.into_iter().map(|key| Op::Delete {
                            key,
                            source_version: "resync".into(),
                            author: String::new(),
                        }));
                    }
                    self.synced.insert(origin.clone());
                    out.push(op);
                }
                Op::Nack { .. } => out.push(op),
            }
        }
        let held = if guarded { self.hold_mass_deletion(&origin, &mut out) } else { 0 };
        if held > 0 || released {
            self.report_held(&origin);
        }
        if conflicts_moved {
            self.report_conflicts();
        }
        let mut outcome = Outcome { appended: None, changed: 0, version: self.state.version, held };
        if out.is_empty() {
            return Ok(outcome);
        }
        let range = {
            let (store, origin, ops) = (self.shared.store.clone(), origin.clone(), out.clone());
            tokio::task::spawn_blocking(move || store.append(&origin, &ops))
                .await
                .map_err(|e| HubError::Task(e.to_string()))??
        };
        self.shared.metrics.events_appended.inc_by(range.len());
        let at = range.at; // the log's time: a replay must build the same entries
        let mut touched = Vec::new();
        for (i, op) in out.into_iter().enumerate() {
            let upserted = match &op {
                Op::Upsert { key, body, .. } => Some((key.clone(), body.clone())),
                _ => None,
            };
            let kind = op.key().map(|k| (k.group.clone(), k.kind.clone()));
            let changed_key = op.key().cloned();
            let ev = Event { seq: range.first + i as u64, at, origin: origin.clone(), op };
            let seq = ev.seq;
            let applied = self.state.apply(ev);
            if applied == Applied::Deleted
                && let Some(key) = &changed_key
                && let Some(successor) = self.conflicts.successor(key)
            {
                self.promotions.push(successor);
            }
            if applied != Applied::Unchanged {
                if let Some(kind) = kind {
                    self.kind_versions.insert(kind, seq);
                    self.changed_keys.extend(changed_key);
                }
                outcome.changed += 1;
                touched.extend(upserted);
            }
        }
        // Checked after the whole batch, so a listing that defines both ends is quiet.
        for (key, body) in &touched {
            for target in crate::lint::references(key, body) {
                if !self.state.resources.contains_key(&target) {
                    tracing::warn!(source = %origin, "{}", crate::lint::dangling_warning(key, &target));
                }
            }
        }
        outcome.appended = Some((range.first, range.last));
        outcome.version = self.state.version;
        if outcome.changed > 0 {
            let now = Instant::now();
            self.pending_since.get_or_insert(now);
            self.last_change = Some(now);
        }
        if !self.ready && self.cfg.sources.iter().all(|s| self.synced.contains(s)) {
            self.ready = true;
            self.publish();
        }
        if self.shared.degraded.load(Ordering::Relaxed) && self.cfg.sources.iter().all(|s| self.synced.contains(s)) {
            self.shared.degraded.store(false, Ordering::Relaxed);
        }
        self.maybe_checkpoint();
        Ok(outcome)
    }

    /// Takes out of `out` the deletions of a submission that would wipe
    /// most of its source (crate::guard), and holds them. Returns how many.
    fn hold_mass_deletion(&mut self, origin: &SourceId, out: &mut Vec<Op>) -> usize {
        if !DeletionGuard::applies_to(origin) || !out.iter().any(|op| matches!(op, Op::Delete { .. })) {
            return 0;
        }
        let ours = |k: &ResourceKey| self.state.resources.get(k).is_some_and(|e| &e.origin == origin);
        let deleting: Vec<ResourceKey> = out
            .iter()
            .filter_map(|op| match op {
                Op::Delete { key, .. } if ours(key) => Some(key.clone()),
                _ => None,
            })
            .collect();
        let adding = out
            .iter()
            .filter(|op| matches!(op, Op::Upsert { key, .. } if !self.state.resources.contains_key(key)))
            .count();
        let total = self.state.keys_from(origin).count();
        let trips = self.cfg.deletion_guard.trips(total, deleting.len(), adding)
            || (origin.kind == crate::SourceKind::Kubernetes && self.kind_wipe(origin, &deleting, out));
        // A new mass deletion holds all of it; otherwise only what is held
        // already stays held (the source repeating a held deletion).
        let hold: HashSet<ResourceKey> =
            deleting.into_iter().filter(|k| trips || self.held.is_held(origin, k)).collect();
        if hold.is_empty() {
            return 0;
        }
        out.retain(|op| !matches!(op, Op::Delete { key, .. } if hold.contains(key)));
        let count = hold.len();
        self.held.hold(origin, hold);
        if !trips {
            return count;
        }
        tracing::warn!(
            source = %origin,
            deleting = count,
            of = total,
            confirm_after = ?self.cfg.deletion_guard.confirm_after,
            "mass deletion held: the source stopped listing more than {:.0}% of its objects; they are deleted if it still does after confirm_after, or now with `keelson source confirm {origin}`",
            self.cfg.deletion_guard.max_delete_fraction * 100.0
        );
        count
    }

    /// Would this submission wipe most of one kind of a Kubernetes source?
    /// A cluster relists kind by kind: one empty relist of VirtualServices
    /// is a small part of a cluster that also holds 30,000 Pods, and still
    /// the mass deletion the guard is for.
    fn kind_wipe(&self, origin: &SourceId, deleting: &[ResourceKey], out: &[Op]) -> bool {
        let kinds: BTreeSet<(&str, &str)> = deleting.iter().map(|k| (k.group.as_str(), k.kind.as_str())).collect();
        kinds.into_iter().any(|(group, kind)| {
            let of_kind = |k: &ResourceKey| k.group == group && k.kind == kind;
            let held = self.state.keys_from(origin).filter(|k| of_kind(k)).count();
            let gone = deleting.iter().filter(|k| of_kind(k)).count();
            let adding = out
                .iter()
                .filter(|op| matches!(op, Op::Upsert { key, .. } if of_kind(key) && !self.state.resources.contains_key(key)))
                .count();
            self.cfg.deletion_guard.trips(held, gone, adding)
        })
    }

    /// Deletes what is held for `origin` (due, or confirmed).
    async fn apply_held(&mut self, origin: &SourceId) -> Result<usize, HubError> {
        let Some(held) = self.held.take(origin) else { return Ok(0) };
        let count = held.keys.len();
        let ops: Vec<Op> = held
            .keys
            .into_iter()
            .filter(|k| self.state.resources.get(k).is_some_and(|e| &e.origin == origin))
            .map(|key| Op::Delete { key, source_version: "mass-deletion confirmed".into(), author: String::new() })
            .collect();
        let applied = self.ingest(origin.clone(), ops, &[], false).await;
        self.report_held(origin);
        applied.map(|_| count)
    }

    /// Applies the versions that take over from a deleted winner, each as
    /// its own source's submission. Each one empties a slot aside, so this ends.
    async fn promote(&mut self) {
        while let Some((origin, op)) = self.promotions.pop() {
            let key = op.key().map(ToString::to_string).unwrap_or_default();
            tracing::info!(source = %origin, %key, "its holder deleted it: the version kept aside takes over");
            if let Err(e) = self.ingest(origin.clone(), vec![op], &[], false).await {
                tracing::error!(source = %origin, %key, "cannot apply the version kept aside: {e}");
            }
        }
        self.report_conflicts();
    }

    /// Shows every configured source's lost conflicts in its health and metrics.
    fn report_conflicts(&self) {
        let holder = |k: &ResourceKey| self.state.resources.get(k).map(|e| e.origin.clone());
        let mut all = self.shared.health.write().unwrap_or_else(|e| e.into_inner());
        for source in self.conflicts.sources() {
            let report = self.conflicts.report(source, holder);
            let name = source.to_string();
            let count = report.as_ref().map_or(0, |r| r.count);
            self.shared.metrics.conflicts.get_or_create(&Metrics::source(&name)).set(count as i64);
            if report.is_some() || all.get(&name).is_some_and(|h| h.conflicts.is_some()) {
                all.entry(name).or_default().conflicts = report;
            }
        }
    }

    /// Shows a source's held deletions in its health and metrics.
    fn report_held(&self, origin: &SourceId) {
        let report = self.held.report(origin, &self.cfg.deletion_guard);
        let name = origin.to_string();
        let count = report.as_ref().map_or(0, |r| r.count);
        self.shared.metrics.deletions_held.get_or_create(&Metrics::source(&name)).set(count as i64);
        let mut all = self.shared.health.write().unwrap_or_else(|e| e.into_inner());
        if report.is_some() || all.get(&name).is_some_and(|h| h.held_deletions.is_some()) {
            all.entry(name).or_default().held_deletions = report;
        }
    }

    /// Writes a checkpoint in the background every `checkpoint_every_events`.
    fn maybe_checkpoint(&mut self) {
        if self.checkpointing.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        // A checkpoint writes the whole state. During a cold start's first
        // listing that state is half built and would be written over and
        // over (at 225,000 objects: 20 checkpoints, 35 s, twice the memory),
        // so none is written before the first snapshot. After it, a
        // checkpoint waits for events in proportion to the state, so its
        // cost per event stays flat however large the state grows; replay
        // after a crash stays bounded by the same count.
        if !self.ready {
            return;
        }
        let due = self.cfg.checkpoint_every_events.max(self.state.resources.len() as u64 / 2);
        if self.state.seq - self.checkpointed < due {
            return;
        }
        let (store, state, metrics) = (self.shared.store.clone(), self.state.clone(), self.shared.metrics.clone());
        self.checkpointed = state.seq;
        metrics.checkpoint_writing.set(1);
        self.checkpointing = Some(tokio::task::spawn_blocking(move || {
            let t = std::time::Instant::now();
            match store.write_checkpoint(&state) {
                Ok(()) => {
                    tracing::info!(seq = state.seq, ms = t.elapsed().as_millis() as u64, "checkpoint written");
                    metrics.checkpoints_written.inc();
                    metrics.checkpoint_seq.set(i64::try_from(state.seq).unwrap_or(i64::MAX));
                }
                Err(e) => {
                    tracing::error!(seq = state.seq, "checkpoint failed (the log is intact): {e}");
                    metrics.checkpoint_failures.inc();
                }
            }
            metrics.checkpoint_writing.set(0);
        }));
    }
}
