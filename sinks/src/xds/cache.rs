//! Serialized once: SotW response bodies are built once per (type, kind
//! version, proxy group, subscription set) and shared by every stream that
//! needs one, and every build is counted so tests and benchmarks can prove it.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use keelson_hub::translate::visibility::{self, Visibility};
use keelson_hub::{ResourceEntry, ResourceKey, Snapshot};
use xxhash_rust::xxh3::Xxh3;

use super::types::ServedType;
use super::wire::{DeltaItem, McpMessage, SotwBody, any_value, put_bytes, put_str, wrapped_any};

/// Everything a SotW body depends on.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct BodyKey {
    /// As the client asked for it (echoed back).
    pub type_url: Arc<str>,
    /// The kind version of the snapshot the body is built from.
    pub version: u64,
    pub group: Option<Arc<str>>,
    /// The client's Istio revision, for MCP types (objects labelled for
    /// another revision are left out).
    pub revision: Option<Arc<str>>,
    /// The namespace whose Sidecar scopes the client: its proxies share
    /// bodies holding only what they see.
    pub visibility: Option<Arc<str>>,
    /// For a proxyless gRPC client (it gets the gRPC form of some clusters).
    pub grpc: bool,
    /// Hash of the subscribed names; `None` for a wildcard subscription.
    pub subset: Option<u128>,
    /// Items carrying a TTL are wrapped in `Resource` (client advertised it).
    pub wrap_ttl: bool,
    /// Make-before-break: also hold the items the client last got (from the
    /// kind at this version) that the new state removes.
    pub retain_from: Option<u64>,
    /// Only the items changed after this kind version (what the client
    /// ACKed): SotW answers of types that are not full-state (EDS, RDS,
    /// SDS) may hold a subset, and the client keeps the rest (PROTOCOL.md
    /// §1). istiod's incremental EDS.
    pub changed_after: Option<u64>,
    /// The legacy MCP message the body is laid out as; None = an xDS
    /// `DiscoveryResponse`. One collection name can be asked on two legacy
    /// services, whose bodies differ.
    pub wire: Option<McpMessage>,
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

/// Who a selection is for: the proxy group, what its namespace's Sidecar
/// lets it see and, for MCP types, the Istio revision of the client.
#[derive(Clone, Copy, Debug, Default)]
pub struct Audience<'a> {
    pub group: Option<&'a str>,
    pub revision: Option<&'a str>,
    pub visibility: Option<&'a Visibility>,
    /// A proxyless gRPC client.
    pub grpc: bool,
}

impl Audience<'_> {
    /// Is this entry served to this audience as an item of `ty`?
    pub fn admits(&self, ty: &ServedType, entry: &ResourceEntry) -> bool {
        entry.encoded.is_some()
            && entry.serving.serves(self.group)
            && visibility::admits(self.visibility, &entry.serving.visible)
            && entry.serving.clients.serves(self.grpc)
            && (!ty.form.is_mcp() || entry.serving.in_revision(self.revision))
    }

    /// The namespace whose scoped resources this audience gets, if any.
    fn scoped_namespace(&self) -> Option<&str> {
        self.visibility.filter(|v| v.restricts()).map(|v| &*v.namespace)
    }

    /// [`Self::admits`], for an answer to a wildcard subscription: entries
    /// served by name only (proxyless gRPC API listeners) are left out.
    pub fn admits_wildcard(&self, ty: &ServedType, entry: &ResourceEntry) -> bool {
        self.admits(ty, entry) && !entry.serving.by_name
    }
}

/// The name an item of `ty` goes by on the wire: `<namespace>/<name>` for
/// MCP kinds (the only form istiod accepts), the resource name otherwise.
pub fn wire_name<'a>(ty: &ServedType, key: &'a ResourceKey) -> Cow<'a, str> {
    if ty.namespaced { Cow::Owned(format!("{}/{}", key.namespace, key.name)) } else { Cow::Borrowed(&key.name) }
}

/// The entry a client of `audience` gets under `name`, if it admits one: for a
/// proxy a Sidecar scopes, its namespace's own route table of that name
/// comes first (crate::translate's scoped tables are keyed by namespace).
pub fn lookup_named<'a>(
    snap: &'a Snapshot,
    ty: &ServedType,
    audience: Audience<'_>,
    name: &str,
) -> Option<&'a Arc<ResourceEntry>> {
    let found = if ty.namespaced {
        let (namespace, name) = name.split_once('/')?;
        snap.get(ty.group, ty.kind, namespace, name)
    } else {
        // gRPC forms (keelson_hub::translate::grpc) are keyed in their own namespace.
        let grpc = audience.grpc.then(|| snap.get(ty.group, ty.kind, keelson_hub::translate::grpc::NAMESPACE, name));
        let scoped = || audience.scoped_namespace().and_then(|ns| snap.get(ty.group, ty.kind, ns, name));
        grpc.flatten().or_else(scoped).or_else(|| snap.get(ty.group, ty.kind, "", name))
    };
    found.filter(|e| audience.admits(ty, e))
}

/// The resources of `ty` an audience gets: all of them (wildcard) or the
/// subscribed names that exist, in name order.
pub fn select<'a>(
    snap: &'a Snapshot,
    ty: &ServedType,
    audience: Audience<'_>,
    names: Option<&'a BTreeSet<String>>,
) -> Vec<(Cow<'a, str>, &'a Arc<ResourceEntry>)> {
    match names {
        None => snap
            .of_kind(ty.group, ty.kind)
            .filter(|(_, e)| audience.admits_wildcard(ty, e))
            .map(|(k, e)| (wire_name(ty, k), e))
            .collect(),
        Some(names) => names
            .iter()
            .filter_map(|n| lookup_named(snap, ty, audience, n).map(|e| (Cow::Borrowed(n.as_str()), e)))
            .collect(),
    }
}

/// The one item of a MeshConfig response: the configured mesh config as an
/// unwrapped `Any(istio.mesh.v1alpha1.MeshConfig)` (PROTOCOL.md §2a).
pub fn build_mesh_config(key: &BodyKey, any: &Bytes) -> SotwBody {
    let version = key.version.to_string();
    let mut buf = Vec::with_capacity(any.len() + version.len() + key.type_url.len() + 16);
    put_str(1, &version, &mut buf);
    put_bytes(2, any, &mut buf);
    put_str(4, &key.type_url, &mut buf);
    let mut fp = Xxh3::new();
    fp.update(any);
    SotwBody {
        names: vec![Box::from("MeshConfig")],
        bytes: Bytes::from(buf),
        version: key.version,
        fingerprint: fp.digest128(),
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
    items: &[(Cow<'_, str>, &Arc<ResourceEntry>)],
    extra: &[(Cow<'_, str>, &Arc<ResourceEntry>)],
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
        let name = name.as_ref();
        match (&entry.encoded, entry.serving.ttl) {
            (Some(_), Some(_)) if key.wrap_ttl => put_bytes(2, &wrapped_any(&item(name, entry)), &mut buf),
            (Some(any), _) => put_bytes(2, any, &mut buf),
            (None, _) => {}
        }
    }
    put_str(4, &key.type_url, &mut buf);
    let mut names: Vec<Box<str>> = items.iter().chain(extra).map(|(n, _)| Box::from(n.as_ref())).collect();
    names.sort_unstable();
    SotwBody { names, bytes: Bytes::from(buf), version: key.version, fingerprint: fp.digest128() }
}

/// What a set of items is, as a fingerprint of its (name, version) pairs:
/// the same set gives the same value whichever legacy message carries it.
pub fn items_fingerprint(items: &[(Cow<'_, str>, &Arc<ResourceEntry>)]) -> u128 {
    let mut fp = Xxh3::new();
    for (name, entry) in items {
        fp.update(name.as_bytes());
        fp.update(&[0]);
        fp.update(&entry.version.to_le_bytes());
    }
    fp.digest128()
}

/// The MCP `Resource` an entry's item wraps (see [`any_value`]).
pub fn mcp_resource(entry: &ResourceEntry) -> Bytes {
    entry.encoded.as_ref().and_then(any_value).unwrap_or_default()
}

/// A legacy MCP full-state body (`MeshConfigResponse`, or `Resources` with
/// `incremental` unset): version, the echoed type URL or collection, and
/// every item as its MCP `Resource`. The nonce is the stream's own.
pub fn build_mcp_full(key: &BodyKey, message: McpMessage, items: &[(Cow<'_, str>, &Arc<ResourceEntry>)]) -> SotwBody {
    let f = message.fields();
    let version = key.version.to_string();
    let len: usize = items.iter().map(|(_, e)| e.encoded.as_ref().map_or(0, Bytes::len) + 8).sum();
    let mut buf = Vec::with_capacity(len + version.len() + key.type_url.len() + 16);
    put_str(f.version, &version, &mut buf);
    if let Some(tag) = f.name {
        put_str(tag, &key.type_url, &mut buf);
    }
    for (_, entry) in items {
        put_bytes(f.resources, &mcp_resource(entry), &mut buf);
    }
    let mut names: Vec<Box<str>> = items.iter().map(|(n, _)| Box::from(n.as_ref())).collect();
    names.sort_unstable();
    SotwBody { names, bytes: Bytes::from(buf), version: key.version, fingerprint: items_fingerprint(items) }
}
