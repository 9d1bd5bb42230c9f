//! The file source: a directory tree of YAML/JSON config objects.
//!
//! Each scan reads the whole tree (a full read is simple and always right)
//! but parses only files whose bytes changed, and submits the difference
//! from what it last submitted.
//! A file that fails to parse or validate keeps its last good objects; a
//! missing or unreadable root marks the source down and changes nothing.
//! Scans run on filesystem events (notify, on the root directory, so
//! ConfigMap `..data` symlink swaps are seen) and every `rescan` period.

pub mod parse;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

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
    /// Full rescan period, a safety net for missed filesystem events.
    pub rescan: Duration,
}

impl FileSourceConfig {
    pub fn new(root: PathBuf) -> Self {
        FileSourceConfig { root, rescan: Duration::from_secs(10) }
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
    /// Files broken at the last full listing, whose objects the hub kept.
    kept: BTreeSet<String>,
    errors: Vec<String>,
    cache: parse::ParseCache,
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
            cache: parse::ParseCache::default(),
        }
    }

    async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let (tx, mut events) = mpsc::channel::<()>(1);
        let mut watcher: Option<notify::RecommendedWatcher> = None;
        let mut tick = tokio::time::interval(self.cfg.rescan);
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
            if res.is_ok() {
                let _ = tx.try_send(()); // one pending wake-up is enough
            }
        })
        .ok()?;
        w.watch(&self.cfg.root, notify::RecursiveMode::Recursive).ok()?;
        Some(w)
    }

    async fn scan(&mut self) {
        let (root, mut cache) = (self.cfg.root.clone(), std::mem::take(&mut self.cache));
        let scanned = tokio::task::spawn_blocking(move || {
            let tree = parse::read_tree(&root, &mut cache);
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
        self.last_good.retain(|file, _| tree.contains_key(file));
        let mut errors = Vec::new();
        let mut broken = BTreeSet::new();
        for (file, result) in tree {
            match result {
                Ok(objects) => {
                    self.last_good.insert(file, objects);
                }
                Err(errs) => {
                    errors.extend(errs.iter().map(ToString::to_string));
                    broken.insert(file);
                }
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

    fn report_errors(&mut self, errors: Vec<String>) {
        if errors != self.errors {
            for e in errors.iter().filter(|e| !self.errors.contains(e)) {
                tracing::warn!(source = %self.id, "rejected, last good version kept: {e}");
                self.hub.metrics().validation_errors.get_or_create(&Metrics::source(&self.id.to_string())).inc();
            }
            self.errors = errors.clone();
        }
        self.hub.update_health(&self.id, |h| h.errors = errors);
    }

    fn up(&self) {
        self.hub.update_health(&self.id, |h| {
            h.up = true;
            h.synced = true;
            h.last_error = None;
        });
    }

    fn down(&self, error: String) {
        tracing::error!(source = %self.id, "{error}; serving the last good config");
        self.hub.update_health(&self.id, |h| {
            h.up = false;
            h.last_error = Some(error);
        });
    }
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
    Op::Upsert { key, source_version: String::new(), body, location: o.location.clone() }
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
    ops.extend(
        submitted
            .keys()
            .filter(|k| !desired.contains_key(*k))
            .map(|k| Op::Delete { key: k.clone(), source_version: String::new() }),
    );
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

/// Checks files or directories offline, as `keelson validate` does.
/// Returns the number of files read, errors (file:line: reason) and
/// warnings (references nothing among the given files defines).
pub fn validate_paths(paths: &[PathBuf]) -> (usize, Vec<String>, Vec<String>) {
    let mut errors = Vec::new();
    let mut files: BTreeMap<String, FileResult> = BTreeMap::new();
    for path in paths {
        if path.is_dir() {
            match parse::read_tree(path, &mut parse::ParseCache::default()) {
                Ok(tree) => files.extend(
                    tree.into_iter().map(|(rel, r)| (path.join(&rel).display().to_string(), prefixed(path, r))),
                ),
                Err(e) => errors.push(format!("{}: cannot read: {e}", path.display())),
            }
        } else {
            let display = path.display().to_string();
            let result = match std::fs::read_to_string(path) {
                Ok(text) => parse::parse_file(&display, &text),
                Err(e) => {
                    Err(vec![parse::FileError { path: display.clone(), line: 0, message: format!("cannot read: {e}") }])
                }
            };
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
    let warnings = objects
        .values()
        .flat_map(|o| {
            keelson_hub::lint::references(&o.object.key, &o.object.body)
                .into_iter()
                .filter(|t| !objects.contains_key(t))
                .map(|t| format!("{}: warning: {}", o.location, keelson_hub::lint::dangling_warning(&o.object.key, &t)))
                .collect::<Vec<_>>()
        })
        .collect();
    (checked, errors, warnings)
}
