//! `State`: the config as of one point in the log, folded from events.
//!
//! Resources live in a persistent ordered map (imbl): cloning a `State` is
//! O(1) and shares structure, so a snapshot after one change costs one
//! O(log n) update, not a copy of 100k resources.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;

use crate::event::{Body, Event, Op, ResourceKey, SourceId};
use crate::kinds;
use crate::object::encode_resource;

/// One object as the state holds it, with its provenance and wire form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceEntry {
    /// Seq of the event that last changed this object: its version.
    pub version: u64,
    pub body: Body,
    pub origin: SourceId,
    pub source_version: String,
    pub location: String,
    /// The encoded `google.protobuf.Any` sinks send, computed once per
    /// version: the resource itself for Envoy kinds, the MCP item for Istio
    /// kinds; `None` for kinds without a protobuf form.
    pub encoded: Option<Bytes>,
    /// When the object was created: its `metadata.creationTimestamp` if the
    /// source gave one, else the time of the event that first put it in the
    /// log. Kept across updates; MCP sends it (istiod breaks ties between
    /// conflicting objects by age).
    pub created_at: SystemTime,
    /// How sinks serve it, read once from the object's metadata.
    pub serving: Serving,
}

/// The label that scopes a resource to one proxy group; unlabelled resources
/// go to every proxy.
pub const PROXY_GROUP_LABEL: &str = "keelson.dev/proxy-group";
/// The annotation that gives a resource an xDS TTL (`30s`, `5m`): clients
/// that support TTLs drop it unless a newer response refreshes it.
pub const TTL_ANNOTATION: &str = "keelson.dev/ttl";

/// The label that assigns an Istio object to one control-plane revision.
pub const ISTIO_REVISION_LABEL: &str = "istio.io/rev";

/// Serving attributes of a resource, derived from its body.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Serving {
    pub proxy_group: Option<Arc<str>>,
    pub ttl: Option<std::time::Duration>,
    /// `istio.io/rev`, if labelled.
    pub revision: Option<Arc<str>>,
    /// Served only to clients that ask for it by name, never in a wildcard
    /// answer (annotation `keelson.dev/served-by-name: "true"`; proxyless
    /// gRPC API listeners, which an Envoy must not get).
    pub by_name: bool,
    /// What a derived resource belongs to, for proxies scoped by a Sidecar
    /// (crate::translate::visibility); raw resources are served to all.
    pub visible: crate::translate::visibility::Visible,
    /// Which kind of client gets it: a derived cluster that proxyless gRPC
    /// cannot take has a gRPC form of the same name (crate::translate::grpc).
    pub clients: Clients,
}

/// The clients a resource is for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Clients {
    #[default]
    All,
    /// Every client but proxyless gRPC, which gets its own form.
    NotGrpc,
    /// Proxyless gRPC only: the form of a resource it can take.
    GrpcOnly,
}

impl Clients {
    pub fn serves(self, grpc: bool) -> bool {
        match self {
            Clients::All => true,
            Clients::NotGrpc => !grpc,
            Clients::GrpcOnly => grpc,
        }
    }
}

impl Serving {
    pub fn of(body: &Body) -> Self {
        Self::stated(MetadataView::of(body).as_ref())
    }

    fn stated(meta: Option<&MetadataView>) -> Self {
        let Some(meta) = meta else { return Serving::default() };
        let label = |k: &str| meta.labels.as_ref().and_then(|l| l.get(k)).map(String::as_str);
        let ttl = meta.annotations.as_ref().and_then(|a| a.get(TTL_ANNOTATION));
        let ttl = ttl.and_then(|t| humantime::parse_duration(t).ok());
        let proxy_group = label(PROXY_GROUP_LABEL).filter(|g| !g.is_empty()).map(Arc::from);
        let revision = label(ISTIO_REVISION_LABEL).map(Arc::from);
        let by_name = meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(crate::translate::BY_NAME_ANNOTATION))
            .is_some_and(|v| v == "true");
        Serving { proxy_group, ttl, revision, by_name, visible: Default::default(), clients: Clients::All }
    }

    /// Does an istiod of revision `rev` take this object? Unlabelled objects
    /// belong to every revision, and an istiod without a revision takes
    /// everything; otherwise the label must match (istiod's
    /// `config.LabelsInRevision`, applied by adsc to MCP items).
    pub fn in_revision(&self, rev: Option<&str>) -> bool {
        match (&self.revision, rev.filter(|r| !r.is_empty())) {
            (None, _) | (_, None) => true,
            (Some(label), Some(rev)) => **label == *rev,
        }
    }

    /// Is a resource with these attributes served to proxies of `group`?
    pub fn serves(&self, group: Option<&str>) -> bool {
        match &self.proxy_group {
            None => true,
            Some(g) => group == Some(&**g),
        }
    }
}

impl ResourceEntry {
    /// Builds an entry and encodes its wire form. Its creation time is the
    /// one the body states (`metadata.creationTimestamp`), else `created_if_unstated`.
    pub fn new(
        key: &ResourceKey,
        version: u64,
        body: Body,
        origin: SourceId,
        source_version: String,
        location: String,
        created_if_unstated: SystemTime,
    ) -> Self {
        // One metadata read serves both (it skips over the whole body).
        let meta = MetadataView::of(&body);
        let created_at = meta.as_ref().and_then(MetadataView::creation).unwrap_or(created_if_unstated);
        let encoded = kinds::lookup(&key.group, &key.kind)
            .and_then(|info| encode_resource(info, key, &body, version, created_at))
            .and_then(|r| r.map_err(|e| tracing::error!(%key, version, "cannot encode a validated object: {e}")).ok());
        let serving = Serving::stated(meta.as_ref());
        ResourceEntry { version, body, origin, source_version, location, encoded, created_at, serving }
    }
}

/// The metadata fields the hub reads of a body. Deserializing only these
/// skips the rest of the object without building it (every upsert is read
/// this way twice: for its serving attributes and its creation time).
#[derive(serde::Deserialize)]
struct MetadataView {
    /// `Option`s, as validation lets `labels: null` through.
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
    #[serde(default, rename = "creationTimestamp")]
    creation_timestamp: Option<String>,
}

impl MetadataView {
    fn creation(&self) -> Option<SystemTime> {
        humantime::parse_rfc3339_weak(self.creation_timestamp.as_deref()?).ok()
    }

    fn of(body: &Body) -> Option<MetadataView> {
        #[derive(serde::Deserialize)]
        struct Object {
            metadata: Option<MetadataView>,
        }
        serde_json::from_slice::<Object>(body.json()).ok()?.metadata
    }
}

/// What applying one event did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    Created,
    Updated,
    Deleted,
    /// An identical re-upsert, a delete of something absent, or a non-resource event.
    Unchanged,
}

pub type ResourceMap = imbl::OrdMap<ResourceKey, Arc<ResourceEntry>>;

/// The materialized config after applying the log up to `seq`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    /// The last seq applied.
    pub seq: u64,
    /// The seq of the last event that changed a resource: the config version.
    /// Markers (sync, NACK audit) move `seq` but not `version`.
    pub version: u64,
    pub resources: ResourceMap,
    /// Resources per `group/kind`, kept as changes apply.
    pub counts: BTreeMap<(String, String), usize>,
    /// Per translation scope, the seq of the last event that took an input
    /// out of it (a delete, or an update that may have moved it elsewhere):
    /// what a derived resource's version must cover when an input it read
    /// is gone (crate::translate::scope). One entry per scope, not per
    /// object, so it stays as small as the set of services.
    pub departures: imbl::OrdMap<String, u64>,
}

impl State {
    /// Would upserting `body` at `key` from `origin` change nothing: does
    /// `origin` already hold exactly `body` there? The same body
    /// from another source still changes the object: its provenance, and
    /// which source's listing reconciles it.
    pub fn holds(&self, key: &ResourceKey, origin: &SourceId, body: &Body) -> bool {
        self.resources.get(key).is_some_and(|e| e.body.hash() == body.hash() && &e.origin == origin)
    }

    /// Applies one event, taking it by value so replay moves keys and bodies
    /// into the map instead of cloning them. Events must come in seq order.
    pub fn apply(&mut self, ev: Event) -> Applied {
        debug_assert!(ev.seq > self.seq, "event {} applied after {}", ev.seq, self.seq);
        self.seq = ev.seq;
        let applied = match ev.op {
            Op::Upsert { key, source_version, body, location, .. } => {
                if self.holds(&key, &ev.origin, &body) {
                    // Same content: the version does not move, so a relist is free.
                    return Applied::Unchanged;
                }
                // Unstated: kept from the version it replaces, else the event's time.
                let created = self.resources.get(&key).map_or(ev.at, |e| e.created_at);
                let entry = ResourceEntry::new(&key, ev.seq, body, ev.origin, source_version, location, created);
                match self.resources.insert(key.clone(), Arc::new(entry)) {
                    Some(old) => {
                        self.depart(&key, &old.body, ev.seq);
                        Applied::Updated
                    }
                    None => {
                        *self.counts.entry((key.group, key.kind)).or_default() += 1;
                        Applied::Created
                    }
                }
            }
            Op::Delete { key, .. } => match self.resources.remove(&key) {
                Some(old) => {
                    self.depart(&key, &old.body, ev.seq);
                    let kind = (key.group, key.kind);
                    if let Some(n) = self.counts.get_mut(&kind) {
                        *n -= 1;
                        if *n == 0 {
                            self.counts.remove(&kind);
                        }
                    }
                    Applied::Deleted
                }
                None => Applied::Unchanged,
            },
            Op::SyncStart | Op::SyncDone | Op::Nack { .. } => Applied::Unchanged,
        };
        if applied != Applied::Unchanged {
            self.version = ev.seq;
        }
        applied
    }

    /// Records that the object at `key`, as `body`, left its translation
    /// scopes at `seq`.
    fn depart(&mut self, key: &ResourceKey, body: &Body, seq: u64) {
        for scope in crate::translate::scope::departures(key, body) {
            self.departures.insert(scope, seq);
        }
    }

    /// Notes that `seq` was passed without an event (a compacted or lost slot).
    pub fn skip_to(&mut self, seq: u64) {
        self.seq = self.seq.max(seq);
    }

    /// Keys of the resources a source put there.
    pub fn keys_from<'a>(&'a self, origin: &'a SourceId) -> impl Iterator<Item = &'a ResourceKey> + 'a {
        self.resources.iter().filter(move |(_, e)| &e.origin == origin).map(|(k, _)| k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::SourceKind;
    use std::time::SystemTime;

    fn ev(seq: u64, op: Op) -> Event {
        Event { seq, at: SystemTime::UNIX_EPOCH, origin: SourceId::new(SourceKind::File, "f"), op }
    }

    fn upsert(name: &str, v: i64) -> Op {
        Op::Upsert {
            key: ResourceKey::new("", "Service", "default", name),
            source_version: String::new(),
            body: Body::from_value(&serde_json::json!({ "v": v })),
            location: String::new(),
            author: String::new(),
        }
    }

    #[test]
    fn metadata_is_read_whatever_else_the_body_holds() {
        let body = Body::from_value(&serde_json::json!({ "metadata": { "labels": null,
            "annotations": { "keelson.dev/ttl": "30s" }, "creationTimestamp": "2026-01-02T03:04:05Z" },
            "spec": { "deep": [{ "x": [1, 2, { "y": null }] }] } }));
        assert_eq!(Serving::of(&body).ttl, Some(std::time::Duration::from_secs(30)));
        assert!(MetadataView::of(&body).and_then(|m| m.creation()).is_some());
        let labelled = Body::from_value(&serde_json::json!({ "metadata": { "labels": { "istio.io/rev": "canary" } } }));
        assert_eq!(Serving::of(&labelled).revision.as_deref(), Some("canary"));
    }

    #[test]
    fn identical_reupsert_keeps_the_version() {
        let mut s = State::default();
        assert_eq!(s.apply(ev(1, upsert("a", 1))), Applied::Created);
        assert_eq!(s.apply(ev(2, upsert("a", 1))), Applied::Unchanged);
        let key = ResourceKey::new("", "Service", "default", "a");
        assert_eq!(s.resources[&key].version, 1);
        assert_eq!((s.seq, s.version), (2, 1));
        assert_eq!(s.apply(ev(3, upsert("a", 2))), Applied::Updated);
        assert_eq!(s.resources[&key].version, 3);
        assert_eq!(s.apply(ev(4, Op::SyncDone)), Applied::Unchanged);
        assert_eq!((s.seq, s.version), (4, 3), "markers do not move the config version");
        assert_eq!(s.counts[&(String::new(), "Service".to_string())], 1);
        assert_eq!(
            s.apply(ev(5, Op::Delete { key: key.clone(), source_version: String::new(), author: String::new() })),
            Applied::Deleted
        );
        assert_eq!(
            s.apply(ev(6, Op::Delete { key, source_version: String::new(), author: String::new() })),
            Applied::Unchanged
        );
        assert!(s.resources.is_empty() && s.counts.is_empty());
        assert_eq!(s.version, 5);
    }

    fn vs(host: &str, created: Option<&str>) -> Op {
        let mut v = serde_json::json!({ "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": { "name": "r", "namespace": "ns", "labels": { "b": "2", "a": "1" } },
            "spec": { "hosts": [host] } });
        if let Some(t) = created {
            v["metadata"]["creationTimestamp"] = serde_json::json!(t);
        }
        let o = crate::object::parse_object(&v).unwrap();
        Op::Upsert {
            key: o.key,
            source_version: String::new(),
            body: o.body,
            location: String::new(),
            author: String::new(),
        }
    }

    fn at(secs: u64, seq: u64, op: Op) -> Event {
        Event { at: SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs), ..ev(seq, op) }
    }

    #[test]
    fn creation_time_is_the_first_event_and_survives_updates_unless_the_body_states_one() {
        let key = ResourceKey::new("networking.istio.io", "VirtualService", "ns", "r");
        let mut s = State::default();
        s.apply(at(100, 1, vs("a", None)));
        s.apply(at(200, 2, vs("b", None)));
        let e = &s.resources[&key];
        assert_eq!((e.version, e.created_at), (2, SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(100)));
        s.apply(at(300, 3, vs("c", Some("2024-01-02T03:04:05Z"))));
        let stated = humantime::parse_rfc3339("2024-01-02T03:04:05Z").unwrap();
        assert_eq!(s.resources[&key].created_at, stated);
        // Deleted and created again: a new object, a new creation time.
        s.apply(at(400, 4, Op::Delete { key: key.clone(), source_version: String::new(), author: String::new() }));
        s.apply(at(500, 5, vs("d", None)));
        assert_eq!(s.resources[&key].created_at, SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(500));
    }

    #[test]
    fn an_istio_entry_is_encoded_once_as_its_mcp_item() {
        use prost::Message;
        let mut s = State::default();
        s.apply(at(100, 7, vs("reviews", None)));
        let key = ResourceKey::new("networking.istio.io", "VirtualService", "ns", "r");
        let encoded = s.resources[&key].encoded.clone().expect("Istio kinds have a wire form");
        let any = prost_types::Any::decode(encoded.as_ref()).unwrap();
        assert_eq!(any.type_url, crate::mcp::RESOURCE_TYPE_URL);
        let res = keelson_proto::mcp::Resource::decode(any.value.as_slice()).unwrap();
        let meta = res.metadata.unwrap();
        assert_eq!((meta.name.as_str(), meta.version.as_str()), ("ns/r", "7"));
        assert_eq!(meta.create_time.unwrap().seconds, 100);
        assert_eq!(meta.labels.keys().collect::<Vec<_>>(), ["a", "b"]);
        let body = res.body.unwrap();
        assert_eq!(body.type_url, "type.googleapis.com/istio.networking.v1alpha3.VirtualService");
        let json = crate::transcode::decode_to_json("istio.networking.v1alpha3.VirtualService", &body.value).unwrap();
        assert_eq!(json["hosts"], serde_json::json!(["reviews"]));
        // Same object, same seq, same time: the same bytes, in any process.
        let mut again = State::default();
        again.apply(at(100, 7, vs("reviews", None)));
        assert_eq!(again.resources[&key].encoded.as_ref(), Some(&encoded));
    }

    #[test]
    fn clones_share_structure_and_diverge_independently() {
        let mut s = State::default();
        for i in 0..100 {
            s.apply(ev(i + 1, upsert(&format!("s{i}"), 0)));
        }
        let before = s.clone();
        s.apply(ev(101, upsert("s0", 1)));
        let key = ResourceKey::new("", "Service", "default", "s0");
        assert_eq!(before.resources[&key].version, 1);
        assert_eq!(s.resources[&key].version, 101);
    }
}
