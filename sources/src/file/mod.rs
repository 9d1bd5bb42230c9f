//! The file source: a directory tree of YAML/JSON config objects.
//!
//! Each scan walks the tree and stats every file, but reads only files whose
//! stat changed (every file at a periodic full check), parses only files
//! whose bytes changed, and submits the difference from what it last submitted.
//! A file that fails to parse or validate, or an entry that cannot be read
//! (dangling symlink, symlink loop, unreadable directory), is an error for
//! that path and keeps its last good objects; only a missing or unreadable
//! root marks the source down. Scans run on filesystem events that mean a
//! change (notify, on the root directory, so ConfigMap `..data` symlink swaps
//! are seen; not access/open events, which the scan's own reads cause) and
//! every `rescan` period.

pub mod parse;
pub mod scan;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::{Duration, Instant, SystemTime};

use keelson_hub::metrics::Metrics;
use keelson_hub::object::ValidObject;
use keelson_hub::{HubHandle, Op, ResourceKey, SourceId, SourceKind};
use notify::Watcher;
use tokio::sync::{mpsc, watch};

use crate::Source;
use parse::{FileObject, FileResult};

/// Configuration of one file source (`--source file:PATH`).
#[derive(Clone, Debug)]
pub struct FileSourceConfig {
    pub root: PathBuf,
    /// Rescan period, a safety net for missed filesystem events. A rescan
    /// reads only files whose stat changed.
    pub rescan: Duration,
    /// How often a scan reads every file whatever its stat says, for edits a
    /// stat cannot see (same size within one mtime tick).
    pub full_check: Duration,
    /// Files larger than this are an error (and keep their last good objects).
    pub max_file_bytes: u64,
}

impl FileSourceConfig {
    pub fn new(root: PathBuf) -> Self {
        FileSourceConfig {
            root,
            rescan: Duration::from_secs(10),
            full_check: Duration::from_secs(300),
            max_file_bytes: scan::DEFAULT_MAX_FILE_BYTES,
        }
    }

    /// The source's identity: `file/<root as given>`.
    pub fn id(&self) -> SourceId {
        SourceId::new(SourceKind::File, &self.root.to_string_lossy())
    }
}

pub struct FileSource {
    id: SourceId,
    cfg: FileSourceConfig,
}

impl FileSource {
    pub fn new(cfg: FileSourceConfig) -> Self {
        FileSource { id: cfg.id(), cfg }
    }
}

impl Source for FileSource {
    fn id(&self) -> &SourceId {
        &self.id
    }

    fn run(
        self: Box<Self>,
        hub: HubHandle,
        shutdown: watch::Receiver<bool>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(Driver::new(*self, hub).run(shutdown))
    }
}

struct Driver {
    id: SourceId,
    cfg: FileSourceConfig,
    hub: HubHandle,
    /// Last good objects of every file that ever parsed.
    last_good: BTreeMap<String, Vec<FileObject>>,
    /// What the hub holds from us: key → content hash. `None` until the first sync.
    submitted: Option<BTreeMap<ResourceKey, u128>>,
    /// Paths (files, or directories that could not be read) broken at the
    /// last full listing, whose objects the hub kept.
    kept: BTreeSet<String>,
    errors: Vec<String>,
    /// Why the source is down, logged once per distinct reason.
    down_reason: Option<String>,
    cache: scan::TreeCache,
    last_full_check: Option<Instant>,
}

impl Driver {
    fn new(src: FileSource, hub: HubHandle) -> Self {
        Driver {
            id: src.id,
            cfg: src.cfg,
            hub,
            last_good: BTreeMap::new(),
            submitted: None,
            kept: BTreeSet::new(),
            errors: Vec::new(),
            down_reason: None,
            cache: scan::TreeCache::default(),
            last_full_check: None,
        }
    }

    async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let (tx, mut events) = mpsc::channel::<()>(1);
        let mut watcher: Option<notify::RecommendedWatcher> = None;
        let mut tick = tokio::time::interval(self.cfg.rescan);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // the first tick is immediate; the first scan is below
        loop {
            if watcher.is_none() {
                watcher = self.watch(tx.clone());
            }
            self.scan().await;
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
                Some(()) = events.recv() => {
                    // Editors write in several steps: let a burst settle, then read once.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    while events.try_recv().is_ok() {}
                }
            }
        }
    }

    fn watch(&self, tx: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
        let mut w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            // Errors are not wake-ups (the periodic rescan covers what they lose).
            if res.is_ok_and(|event| means_change(&event)) {
                let _ = tx.try_send(()); // one pending wake-up is enough
            }
        })
        .ok()?;
        w.watch(&self.cfg.root, notify::RecursiveMode::Recursive).ok()?;
        Some(w)
    }

    async fn scan(&mut self) {
        let full_check = self.last_full_check.is_none_or(|at| at.elapsed() >= self.cfg.full_check);
        let opts =
            scan::ScanOptions { max_file_bytes: self.cfg.max_file_bytes, full_check, limits: *self.hub.limits() };
        let (root, mut cache) = (self.cfg.root.clone(), std::mem::take(&mut self.cache));
        let scanned = tokio::task::spawn_blocking(move || {
            let tree = scan::read_tree(&root, &mut cache, opts);
            (cache, tree)
        })
        .await;
        let tree = match scanned {
            Ok((cache, Ok(tree))) => {
                self.cache = cache;
                tree
            }
            Ok((_, Err(e))) => return self.down(format!("cannot read {}: {e}", self.cfg.root.display())),
            Err(e) => return self.down(format!("scan task failed: {e}")),
        };
        if full_check {
            self.last_full_check = Some(Instant::now());
        }
        let label = Metrics::source(&self.id.to_string());
        self.hub.metrics().file_reads.get_or_create(&label).inc_by(tree.read.len() as u64);
        let broken: BTreeSet<String> =
            tree.files.iter().filter(|(_, r)| r.is_err()).map(|(path, _)| path.clone()).collect();
        // A file the scan did not list is gone, unless it is below a
        // directory the scan could not read: then its objects stay.
        self.last_good.retain(|file, _| tree.files.contains_key(file) || broken.iter().any(|b| is_below(file, b)));
        let mut errors = Vec::new();
        for (file, result) in tree.files {
            match result {
                Ok(objects) => {
                    self.last_good.insert(file, objects);
                }
                Err(errs) => errors.extend(errs.iter().map(ToString::to_string)),
            }
        }
        let (desired, duplicates) = merge(&self.last_good);
        errors.extend(duplicates);
        self.report_errors(errors);
        // A full listing when first synced, or when the set of files whose
        // objects the hub keeps for us changed (fixed or deleted while broken).
        let relist = self.submitted.is_none() || (!self.kept.is_empty() && self.kept != broken);
        let ops =
            if relist { full_listing(&desired) } else { diff(self.submitted.as_ref().expect("synced"), &desired) };
        if ops.is_empty() {
            return self.up();
        }
        let keep: Vec<String> = if relist { broken.iter().cloned().collect() } else { Vec::new() };
        match self.hub.submit_keeping(self.id.clone(), ops, keep).await {
            Ok(outcome) => {
                self.submitted = Some(desired.iter().map(|(k, o)| (k.clone(), o.object.body.hash())).collect());
                if relist {
                    self.kept = broken;
                }
                if outcome.changed > 0 {
                    tracing::info!(source = %self.id, changed = outcome.changed, version = outcome.version, "config changed");
                    let now = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
                    self.hub.update_health(&self.id, |h| h.last_event = Some(now));
                }
                self.up();
            }
            Err(e) => self.down(format!("the hub refused the changes: {e}")),
        }
    }

    /// Logs and counts each error once, when it appears, and says when it clears.
    fn report_errors(&mut self, errors: Vec<String>) {
        if errors == self.errors {
            return;
        }
        for e in errors.iter().filter(|e| !self.errors.contains(e)) {
            tracing::warn!(source = %self.id, "rejected, last good version kept: {e}");
            self.hub.metrics().validation_errors.get_or_create(&Metrics::source(&self.id.to_string())).inc();
        }
        for e in self.errors.iter().filter(|e| !errors.contains(e)) {
            tracing::info!(source = %self.id, "error cleared: {e}");
        }
        self.errors = errors.clone();
        self.hub.update_health(&self.id, |h| h.errors = errors);
    }

    fn up(&mut self) {
        if let Some(reason) = self.down_reason.take() {
            tracing::info!(source = %self.id, "source recovered (was: {reason})");
        }
        self.hub.update_health(&self.id, |h| {
            h.up = true;
            h.synced = true;
            h.last_error = None;
        });
    }

    fn down(&mut self, error: String) {
        if self.down_reason.as_ref() != Some(&error) {
            tracing::error!(source = %self.id, "{error}; serving the last good config");
            self.down_reason = Some(error.clone());
        }
        self.hub.update_health(&self.id, |h| {
            h.up = false;
            h.last_error = Some(error);
        });
    }
}

/// Whether a filesystem event may mean the tree changed. Access events
/// (open, read, close after reading) are what a scan itself causes.
fn means_change(event: &notify::Event) -> bool {
    use notify::EventKind;
    use notify::event::{AccessKind, AccessMode};
    match event.kind {
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) | EventKind::Any => true,
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        EventKind::Other => event.need_rescan(),
    }
}

/// Whether `file` lies below the directory `dir` (both relative to the root).
fn is_below(file: &str, dir: &str) -> bool {
    file.strip_prefix(dir).is_some_and(|rest| rest.starts_with('/'))
}

/// One object per key across files; a second definition is an error and the
/// first (in path order) wins.
fn merge(files: &BTreeMap<String, Vec<FileObject>>) -> (BTreeMap<ResourceKey, FileObject>, Vec<String>) {
    let mut out: BTreeMap<ResourceKey, FileObject> = BTreeMap::new();
    let mut errors = Vec::new();
    for obj in files.values().flatten() {
        match out.get(&obj.object.key) {
            Some(first) => {
                errors.push(format!("{}: {} is already defined at {}", obj.location, obj.object.key, first.location))
            }
            None => {
                out.insert(obj.object.key.clone(), obj.clone());
            }
        }
    }
    (out, errors)
}

fn upsert(o: &FileObject) -> Op {
    let ValidObject { key, body } = o.object.clone();
    Op::Upsert { key, source_version: String::new(), body, location: o.location.clone(), author: String::new() }
}

fn full_listing(desired: &BTreeMap<ResourceKey, FileObject>) -> Vec<Op> {
    let mut ops = vec![Op::SyncStart];
    ops.extend(desired.values().map(upsert));
    ops.push(Op::SyncDone);
    ops
}

fn diff(submitted: &BTreeMap<ResourceKey, u128>, desired: &BTreeMap<ResourceKey, FileObject>) -> Vec<Op> {
    let mut ops: Vec<Op> = desired
        .iter()
        .filter(|(k, o)| submitted.get(*k) != Some(&o.object.body.hash()))
        .map(|(_, o)| upsert(o))
        .collect();
    ops.extend(submitted.keys().filter(|k| !desired.contains_key(*k)).map(|k| Op::Delete {
        key: k.clone(),
        source_version: String::new(),
        author: String::new(),
    }));
    ops
}

/// Names a tree's files by their full path instead of relative to the tree.
fn prefixed(root: &std::path::Path, result: FileResult) -> FileResult {
    let full = |p: &str| root.join(p).display().to_string();
    match result {
        Ok(objs) => Ok(objs.into_iter().map(|o| FileObject { location: full(&o.location), ..o }).collect()),
        Err(errs) => Err(errs.into_iter().map(|e| parse::FileError { path: full(&e.path), ..e }).collect()),
    }
}

/// Checks files or directories offline, as `keelson validate` does, with
/// the default `[file] max_file_bytes`.
/// Returns the number of files read, errors (file:line: reason; `path:0:`
/// for entries that cannot be read) and warnings (references nothing among
/// the given files defines).
pub fn validate_paths(paths: &[PathBuf]) -> (usize, Vec<String>, Vec<String>) {
    validate_translated(paths, &keelson_hub::translate::TranslateConfig::default())
}

/// [`validate_paths`], translating the valid objects as a hub with
/// `translate` would: what translation warns about an object is a warning
/// at its location; a raw Envoy resource whose name a derived one takes is
/// an error (the hub would not serve it).
pub fn validate_translated(
    paths: &[PathBuf],
    translate: &keelson_hub::translate::TranslateConfig,
) -> (usize, Vec<String>, Vec<String>) {
    let mut errors = Vec::new();
    let mut files: BTreeMap<String, FileResult> = BTreeMap::new();
    for path in paths {
        if path.is_dir() {
            match scan::read_tree(path, &mut scan::TreeCache::default(), scan::ScanOptions::default()) {
                Ok(tree) => files.extend(
                    tree.files.into_iter().map(|(rel, r)| (path.join(&rel).display().to_string(), prefixed(path, r))),
                ),
                Err(e) => errors.push(format!("{}: cannot read: {e}", path.display())),
            }
        } else {
            let display = path.display().to_string();
            let result = scan::read_file(path, &display, &scan::ScanOptions::default());
            files.insert(display, result);
        }
    }
    let checked = files.len();
    let mut good = BTreeMap::new();
    for (file, result) in files {
        match result {
            Ok(objs) => {
                good.insert(file, objs);
            }
            Err(errs) => errors.extend(errs.iter().map(ToString::to_string)),
        }
    }
    let (objects, duplicates) = merge(&good);
    errors.extend(duplicates);
    let mut warnings: Vec<String> = objects
        .values()
        .flat_map(|o| {
            keelson_hub::lint::references(&o.object.key, &o.object.body)
                .into_iter()
                .filter(|t| !objects.contains_key(t))
                .map(|t| format!("{}: warning: {}", o.location, keelson_hub::lint::dangling_warning(&o.object.key, &t)))
                .collect::<Vec<_>>()
        })
        .collect();
    if translate.enabled {
        let mut state = keelson_hub::State::default();
        let origin = keelson_hub::SourceId::new(keelson_hub::SourceKind::File, "validate");
        for (seq, o) in (1..).zip(objects.values()) {
            let op = upsert(o);
            state.apply(keelson_hub::Event { seq, at: std::time::SystemTime::UNIX_EPOCH, origin: origin.clone(), op });
        }
        let served = keelson_hub::translate::Served::of(&state, translate);
        let at = |k: &keelson_hub::ResourceKey| objects.get(k).map_or_else(|| k.to_string(), |o| o.location.clone());
        for k in served.shadowed() {
            errors.push(format!("{}: {k}: Keelson derives a {} of this name from the service registry; rename it or disable [translate]", at(k), k.kind));
        }
        for (k, messages) in served.translator().map(|t| t.warnings()).unwrap_or_default() {
            warnings.extend(messages.iter().map(|m| format!("{}: warning: {k}: {m}", at(k))));
        }
    }
    (checked, errors, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{AccessKind, AccessMode, CreateKind, DataChange, ModifyKind, RemoveKind, RenameMode};
    use notify::{Event, EventKind};

    #[test]
    fn only_events_that_mean_change_wake_a_scan() {
        let wakes = |kind| means_change(&Event::new(kind));
        // What a scan's own reads cause (inotify IN_OPEN, IN_ACCESS, IN_CLOSE_NOWRITE).
        assert!(!wakes(EventKind::Access(AccessKind::Open(AccessMode::Any))));
        assert!(!wakes(EventKind::Access(AccessKind::Read)));
        assert!(!wakes(EventKind::Access(AccessKind::Close(AccessMode::Read))));
        assert!(!wakes(EventKind::Other), "other events only with the rescan flag");
        assert!(means_change(&Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan)));
        for kind in [
            EventKind::Create(CreateKind::File),
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Modify(ModifyKind::Metadata(notify::event::MetadataKind::Any)),
            EventKind::Remove(RemoveKind::File),
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
        ] {
            assert!(wakes(kind), "{kind:?}");
        }
    }

    #[test]
    fn below_means_inside_a_directory_not_a_name_prefix() {
        assert!(is_below("sub/a.yaml", "sub"));
        assert!(!is_below("subway.yaml", "sub"));
        assert!(!is_below("sub", "sub"));
    }
}
