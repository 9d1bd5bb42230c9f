//! Serialized once: SotW response bodies are built once per (type, kind
//! version, proxy group, subscription set) and shared by every stream that
//! needs one, and every build is counted so tests and benchmarks can prove it.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use keelson_hub::{ResourceEntry, Snapshot};
use xxhash_rust::xxh3::Xxh3;

use super::types::ServedType;
use super::wire::{DeltaItem, SotwBody, put_bytes, put_str, wrapped_any};

/// Everything a SotW body depends on.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct BodyKey {
    /// As the client asked for it (echoed back).
    pub type_url: Arc<str>,
    /// The kind version of the snapshot the body is built from.
    pub version: u64,
    pub group: Option<Arc<str>>,
    /// Hash of the subscribed names; `None` for a wildcard subscription.
    pub subset: Option<u128>,
    /// Items carrying a TTL are wrapped in `Resource` (client advertised it).
    pub wrap_ttl: bool,
    /// Make-before-break: also hold the items the client last got (from the
    /// kind at this version) that the new state removes.
    pub retain_from: Option<u64>,
}

/// Counters of encoding work, over the cache's life.
#[derive(Debug, Default)]
pub struct EncodeStats {
    /// SotW bodies built.
    pub bodies: AtomicU64,
    /// Items copied into a SotW body.
    pub items: AtomicU64,
    /// Bytes of SotW bodies built.
    pub bytes: AtomicU64,
}

/// Bodies beyond this many are dropped wholesale (and rebuilt on demand):
/// a bound, not an expected size.
const MAX_BODIES: usize = 16_384;

#[derive(Default)]
pub struct ResponseCache {
    bodies: Mutex<HashMap<BodyKey, Arc<OnceLock<Arc<SotwBody>>>>>,
    /// (old fingerprint, new fingerprint) → does going from old to new
    /// remove a name? Asked by every stream of a push, answered once.
    removals: Mutex<HashMap<(u128, u128), bool>>,
    /// Subscription sets by hash, shared by the streams that hold them.
    names: Mutex<HashMap<u128, std::sync::Weak<BTreeSet<String>>>>,
    pub stats: EncodeStats,
}

impl ResponseCache {
    /// The shared body for `key`, built by `build` if no stream built it yet.
    /// Concurrent callers wait for the one build instead of repeating it.
    pub fn sotw_body(&self, key: &BodyKey, build: impl FnOnce() -> SotwBody) -> Arc<SotwBody> {
        let cell = {
            let mut bodies = self.bodies.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(cell) = bodies.get(key) {
                cell.clone()
            } else {
                // A newer version of a type makes its older bodies garbage:
                // streams still holding one keep it alive through their Arc.
                bodies.retain(|k, _| k.type_url != key.type_url || k.version >= key.version);
                if bodies.len() >= MAX_BODIES {
                    bodies.clear();
                }
                bodies.entry(key.clone()).or_default().clone()
            }
        };
        cell.get_or_init(|| {
            let body = build();
            self.stats.bodies.fetch_add(1, Ordering::Relaxed);
            self.stats.items.fetch_add(body.names.len() as u64, Ordering::Relaxed);
            self.stats.bytes.fetch_add(body.bytes.len() as u64, Ordering::Relaxed);
            Arc::new(body)
        })
        .clone()
    }

    /// The shared copy of a subscription set (a thousand Envoys subscribed
    /// to the same clusters hold one set, not a thousand).
    pub fn intern_names(&self, hash: u128, names: BTreeSet<String>) -> Arc<BTreeSet<String>> {
        let mut all = self.names.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(shared) = all.get(&hash).and_then(std::sync::Weak::upgrade) {
            return shared;
        }
        if all.len() >= MAX_BODIES {
            all.retain(|_, w| w.strong_count() > 0);
        }
        let names = Arc::new(names);
        all.insert(hash, Arc::downgrade(&names));
        names
    }

    /// Does `new` lack a name `old` had?
    pub fn removes_names(&self, old: &SotwBody, new: &SotwBody) -> bool {
        let key = (old.fingerprint, new.fingerprint);
        let mut memo = self.removals.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&removes) = memo.get(&key) {
            return removes;
        }
        let removes = old.names.iter().any(|n| new.names.binary_search(n).is_err());
        if memo.len() >= MAX_BODIES {
            memo.clear();
        }
        memo.insert(key, removes);
        removes
    }

    pub fn len(&self) -> usize {
        self.bodies.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Hash of a subscription's names (sorted by the set), for [`BodyKey::subset`].
pub fn subset_hash(names: &BTreeSet<String>) -> u128 {
    let mut h = Xxh3::new();
    for n in names {
        h.update(n.as_bytes());
        h.update(&[0]);
    }
    h.digest128()
}

/// Hash of a request's name list as sent (order matters).
pub fn list_hash(names: &[String]) -> u128 {
    let mut h = Xxh3::new();
    h.update(&(names.len() as u64).to_le_bytes());
    for n in names {
        h.update(n.as_bytes());
        h.update(&[0]);
    }
    h.digest128()
}

/// The resources of `ty` a proxy of `group` gets: all of them (wildcard) or
/// the subscribed names that exist, in name order.
pub fn select<'a>(
    snap: &'a Snapshot,
    ty: &ServedType,
    group: Option<&str>,
    names: Option<&'a BTreeSet<String>>,
) -> Vec<(&'a str, &'a Arc<ResourceEntry>)> {
    let served = |e: &&Arc<ResourceEntry>| e.encoded.is_some() && e.serving.serves(group);
    match names {
        None => snap.of_kind(ty.group, ty.kind).filter(|(_, e)| served(e)).map(|(k, e)| (k.name.as_str(), e)).collect(),
        Some(names) => names
            .iter()
            .filter_map(|n| snap.get(ty.group, ty.kind, "", n).filter(served).map(|e| (n.as_str(), e)))
            .collect(),
    }
}

/// The item form of an entry, for Delta and for wrapped SotW items.
pub fn item(name: &str, entry: &ResourceEntry) -> DeltaItem {
    DeltaItem {
        name: name.into(),
        version: entry.version,
        any: entry.encoded.clone().unwrap_or_default(),
        ttl: entry.serving.ttl,
    }
}

/// Builds a SotW body from selected items. `extra` are items kept for
/// make-before-break, appended after the current ones.
pub fn build_sotw(
    key: &BodyKey,
    items: &[(&str, &Arc<ResourceEntry>)],
    extra: &[(&str, &Arc<ResourceEntry>)],
) -> SotwBody {
    let version = key.version.to_string();
    let mut fp = Xxh3::new();
    fp.update(&[u8::from(key.wrap_ttl)]);
    let mut len = version.len() + key.type_url.len() + 16;
    for (_, e) in items.iter().chain(extra) {
        len += e.encoded.as_ref().map_or(0, Bytes::len) + 8;
    }
    let mut buf = Vec::with_capacity(len);
    put_str(1, &version, &mut buf);
    for (name, entry) in items.iter().chain(extra) {
        fp.update(name.as_bytes());
        fp.update(&entry.version.to_le_bytes());
        match (&entry.encoded, entry.serving.ttl) {
            (Some(_), Some(_)) if key.wrap_ttl => put_bytes(2, &wrapped_any(&item(name, entry)), &mut buf),
            (Some(any), _) => put_bytes(2, any, &mut buf),
            (None, _) => {}
        }
    }
    put_str(4, &key.type_url, &mut buf);
    let mut names: Vec<Box<str>> = items.iter().chain(extra).map(|(n, _)| Box::from(*n)).collect();
    names.sort_unstable();
    SotwBody { names, bytes: Bytes::from(buf), version: key.version, fingerprint: fp.digest128() }
}
