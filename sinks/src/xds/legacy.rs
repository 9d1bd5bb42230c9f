//! Legacy Galley MCP (`istio.mcp.v1alpha1`; PROTOCOL.md §2b,
//! docs/mcp-legacy.md): `AggregatedMeshConfigService` (state of the world
//! and incremental) and `ResourceSource`, the services Galley served Pilot
//! and Mixer with in Istio 1.1–1.8. One machine runs all three; what differs
//! between them is data ([`Flavor`]): how a name is looked up, which message
//! answers, and when an answer may be a diff.
//!
//! The rules are Galley's source (istio/istio@1.4.0 `pkg/mcp/source/source.go`)
//! as its sinks (@1.8.0 `pkg/mcp/sink/sink.go`) expect them:
//! * one response outstanding per collection: the next waits for the sink's
//!   ACK or NACK, and is computed from the newest state when it goes out;
//! * nonces count up per stream; a request whose nonce is neither empty nor
//!   the outstanding one is stale: counted and ignored;
//! * a diff only when the sink asked for one (`incremental`), computed
//!   against what it ACKed on this stream; a new stream starts from the full
//!   state;
//! * a collection Keelson does not serve fails the stream (InvalidArgument).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use keelson_hub::Snapshot;
use keelson_proto::mcp::{IncrementalMeshConfigRequest, MeshConfigRequest, RequestResources, SinkNode};
use tonic::Status;

use super::cache::{Audience, BodyKey, build_mcp_full, items_fingerprint, mcp_resource, select};
use super::nack::clip;
use super::session::{Session, Shared};
use super::stream::Machine;
use super::types::{self, LegacyName, ServedType};
use super::wire::{McpDiff, McpMessage, Outbound};

/// What the three request messages have in common.
#[derive(Clone, Debug, Default)]
pub struct LegacyRequest {
    pub sink_node: Option<SinkNode>,
    /// `type_url` (AggregatedMeshConfigService) or `collection` (ResourceSource).
    pub name: String,
    pub response_nonce: String,
    /// `error_detail.message` of a NACK.
    pub error: Option<String>,
    pub incremental: bool,
    pub initial_resource_versions: BTreeMap<String, String>,
}

impl From<MeshConfigRequest> for LegacyRequest {
    fn from(r: MeshConfigRequest) -> Self {
        LegacyRequest {
            sink_node: r.sink_node,
            name: r.type_url,
            response_nonce: r.response_nonce,
            error: r.error_detail.map(|e| e.message),
            incremental: false,
            initial_resource_versions: BTreeMap::new(),
        }
    }
}

impl From<IncrementalMeshConfigRequest> for LegacyRequest {
    fn from(r: IncrementalMeshConfigRequest) -> Self {
        LegacyRequest {
            sink_node: r.sink_node,
            name: r.type_url,
            response_nonce: r.response_nonce,
            error: r.error_detail.map(|e| e.message),
            incremental: true,
            initial_resource_versions: r.initial_resource_versions,
        }
    }
}

impl From<RequestResources> for LegacyRequest {
    fn from(r: RequestResources) -> Self {
        LegacyRequest {
            sink_node: r.sink_node,
            name: r.collection,
            response_nonce: r.response_nonce,
            error: r.error_detail.map(|e| e.message),
            incremental: r.incremental,
            initial_resource_versions: r.initial_resource_versions,
        }
    }
}

/// When an answer may be a diff.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Diffs {
    /// Never: every answer is the full state (`MeshConfigResponse`).
    Never,
    /// Always: `IncrementalMeshConfigResponse` has no flag saying otherwise.
    /// What the sink holds starts as its `initial_resource_versions`.
    Always,
    /// When the sink's latest request asked for one and it has ACKed an
    /// answer on this stream (`Resources.incremental`).
    WhenAsked,
}

/// One legacy service, as data.
#[derive(Debug)]
pub struct Flavor {
    /// The stream's label in the ledger and in metrics.
    pub stream: &'static str,
    pub message: McpMessage,
    pub diffs: Diffs,
    pub lookup: fn(&str) -> Option<&'static LegacyName>,
}

/// `AggregatedMeshConfigService.StreamAggregatedResources`. Requests name a
/// type by its body's type URL (Istio 1.0) or by collection (1.1+ put the
/// collection in `type_url`); either is echoed as asked.
pub const MESH_CONFIG_SOTW: Flavor = Flavor {
    stream: "mcp-sotw",
    message: McpMessage::MeshConfigResponse,
    diffs: Diffs::Never,
    lookup: types::legacy_type,
};

/// `AggregatedMeshConfigService.IncrementalAggregatedResources`.
pub const MESH_CONFIG_INCREMENTAL: Flavor = Flavor {
    stream: "mcp-incremental",
    message: McpMessage::IncrementalMeshConfigResponse,
    diffs: Diffs::Always,
    lookup: types::legacy_type,
};

/// `ResourceSource.EstablishResourceStream`: collections only.
pub const RESOURCE_SOURCE: Flavor = Flavor {
    stream: "mcp-source",
    message: McpMessage::Resources,
    diffs: Diffs::WhenAsked,
    lookup: types::legacy_collection,
};

/// Resource name (`ns/name`) → version, as a sink holds them.
type Held = HashMap<String, u64>;

/// An answer before its nonce: a shared full-state body, or this stream's
/// diff (changed resources, removed names).
enum Answer {
    Full(Arc<super::wire::SotwBody>),
    Diff(Vec<Bytes>, Vec<Arc<str>>),
}

/// The answer a collection waits on.
struct Outstanding {
    nonce: u64,
    version: u64,
    published: SystemTime,
    content: u128,
    /// What the sink holds once it ACKs this; None when not tracked (the
    /// sink did not ask for diffs), so the next answer is full state again.
    held_after: Option<Held>,
}

struct CollectionState {
    served: &'static ServedType,
    /// As the sink asked (echoed back, and the ledger's key).
    name: Arc<str>,
    wants_incremental: bool,
    /// What the sink holds by its ACKs on this stream; None = unknown.
    held: Option<Held>,
    outstanding: Option<Outstanding>,
    /// Content of the last answer sent, and of the last one NACKed: an
    /// answer with either content is not sent again.
    sent: Option<u128>,
    nacked: Option<u128>,
    /// The kind version the latest answer (or decision not to send one)
    /// was computed from.
    computed_at: Option<u64>,
    pending: bool,
    /// Answer even if nothing changed: the sink asked (afresh).
    force: bool,
}

/// The per-stream machine of every legacy MCP service. `R` is the request
/// message the service decodes.
pub struct LegacyMachine<R> {
    session: Session,
    flavor: &'static Flavor,
    collections: BTreeMap<Arc<str>, CollectionState>,
    _request: PhantomData<fn() -> R>,
}

impl<R> LegacyMachine<R> {
    pub fn new(session: Session, flavor: &'static Flavor) -> Self {
        LegacyMachine { session, flavor, collections: BTreeMap::new(), _request: PhantomData }
    }

    /// What the sink says it holds, where that is the baseline of diffs.
    fn declared(&self, req: &LegacyRequest) -> Option<Held> {
        (self.flavor.diffs == Diffs::Always).then(|| {
            // A version Keelson never gave (not a number) matches nothing: re-sent.
            req.initial_resource_versions.iter().map(|(n, v)| (n.clone(), v.parse().unwrap_or(0))).collect()
        })
    }

    /// Computes a collection's answer from `snap`; None if nothing needs saying.
    fn answer(&mut self, snap: &Arc<Snapshot>, shared: &Shared, name: &str) -> Option<Outbound> {
        let group: Option<Arc<str>> = self.session.group().map(Arc::from);
        let revision: Option<Arc<str>> = self.session.revision().map(Arc::from);
        // istiods are not scoped by Sidecars (those scope proxies).
        let audience =
            Audience { group: group.as_deref(), revision: revision.as_deref(), visibility: None, grpc: false };
        let (flavor, c) = (self.flavor, self.collections.get_mut(name).expect("picked"));
        c.pending = false;
        let served = c.served;
        let version = snap.kind_version(served.group, served.kind);
        c.computed_at = Some(version);
        let tracks = match flavor.diffs {
            Diffs::Never => false,
            Diffs::Always => true,
            Diffs::WhenAsked => c.wants_incremental,
        };
        let diff_from = match flavor.diffs {
            Diffs::Never => None,
            Diffs::Always => c.held.as_ref(),
            Diffs::WhenAsked => c.held.as_ref().filter(|_| c.wants_incremental),
        };
        // Per stream only when the sink's holdings are tracked (a diff implies
        // that); a shared body is selected once, by whoever builds it.
        let selected = tracks.then(|| select(snap, served, audience, None));
        let held_after: Option<Held> =
            selected.as_ref().map(|items| items.iter().map(|(n, e)| (n.to_string(), e.version)).collect());
        let (content, answer) = match diff_from {
            // Full state: one body per (name, kind version, audience),
            // shared by every stream that needs it.
            None => {
                let key = BodyKey {
                    visibility: None,
                    grpc: false,
                    type_url: c.name.clone(),
                    version,
                    group: group.clone(),
                    revision: revision.clone(),
                    subset: None,
                    wrap_ttl: false,
                    retain_from: None,
                    changed_after: None,
                    wire: Some(flavor.message),
                };
                let body = shared.cache.sotw_body(&key, || match &selected {
                    Some(items) => build_mcp_full(&key, flavor.message, items),
                    None => build_mcp_full(&key, flavor.message, &select(snap, served, audience, None)),
                });
                (body.fingerprint, Answer::Full(body))
            }
            Some(held) => {
                let items = selected.as_ref().expect("a diff implies tracked holdings");
                let resources: Vec<Bytes> = items
                    .iter()
                    .filter(|(n, e)| held.get(n.as_ref()) != Some(&e.version))
                    .map(|(_, e)| mcp_resource(e))
                    .collect();
                let present: HashSet<&str> = items.iter().map(|(n, _)| n.as_ref()).collect();
                let mut removed: Vec<Arc<str>> =
                    held.keys().filter(|n| !present.contains(n.as_str())).map(|n| Arc::from(n.as_str())).collect();
                removed.sort_unstable();
                (items_fingerprint(items), Answer::Diff(resources, removed))
            }
        };
        let changed = Some(content) != c.sent && Some(content) != c.nacked;
        if !(c.force || changed) {
            return None;
        }
        if let Answer::Diff(resources, removed) = &answer
            && resources.is_empty()
            && removed.is_empty()
            && !c.force
        {
            // The sink holds this state already (it came back to what the
            // sink last ACKed, say, after a NACK).
            c.sent = Some(content);
            return None;
        }
        let nonce = self.session.nonce();
        let out = match answer {
            Answer::Full(body) => Outbound::McpShared { body, nonce, message: flavor.message },
            Answer::Diff(resources, removed) => {
                let diff = McpDiff {
                    message: flavor.message,
                    system_version_info: version.to_string(),
                    name: c.name.clone(),
                    resources,
                    removed,
                    incremental: true,
                };
                Outbound::McpDiff { diff: Box::new(diff), nonce }
            }
        };
        self.session.sent(shared, name, version, nonce, out.encoded_len());
        c.outstanding = Some(Outstanding { nonce, version, published: snap.built_at, content, held_after });
        c.sent = Some(content);
        c.force = false;
        Some(out)
    }
}

impl<R: Into<LegacyRequest> + Send> Machine for LegacyMachine<R> {
    type Request = R;

    fn on_request(&mut self, req: R, shared: &Shared) -> Result<(), Status> {
        let req: LegacyRequest = req.into();
        self.session.admit_sink(req.sink_node.as_ref(), shared);
        if req.name.is_empty() {
            return Err(Status::invalid_argument("a collection (type_url) is required"));
        }
        let Some(legacy) = (self.flavor.lookup)(&req.name) else {
            // As Galley's source: an unsupported collection ends the stream.
            return Err(Status::invalid_argument(format!("unsupported collection {:?}", clip(&req.name))));
        };
        let declared = self.declared(&req);
        let Some(c) = self.collections.get_mut(req.name.as_str()) else {
            // A collection's first request on this stream subscribes,
            // whatever nonce it carries (a nonce of an earlier stream, or
            // none): it is answered at once, with the full state.
            let name: Arc<str> = req.name.as_str().into();
            let state = CollectionState {
                served: types::legacy_served(legacy),
                name: name.clone(),
                wants_incremental: req.incremental,
                held: declared,
                outstanding: None,
                sent: None,
                nacked: None,
                computed_at: None,
                pending: true,
                force: true,
            };
            self.collections.insert(name, state);
            self.session.subscribed(&req.name);
            return Ok(());
        };
        if req.response_nonce.is_empty() {
            // A new request for a collection already served ("New/Update
            // request" in mcp.proto): what is outstanding is superseded, and
            // the sink's state is whatever it now declares.
            c.outstanding = None;
            c.held = declared;
            c.wants_incremental = req.incremental;
            c.pending = true;
            c.force = true;
            return Ok(());
        }
        let Some(answered) = c.outstanding.take_if(|o| req.response_nonce.parse() == Ok(o.nonce)) else {
            shared.metrics.stale_requests.inc();
            return Ok(());
        };
        c.wants_incremental = req.incremental;
        match &req.error {
            Some(message) => {
                // The sink keeps what it had: `held` stays, and this content
                // is not sent again.
                c.nacked = Some(answered.content);
                self.session.nacked(shared, &req.name, answered.version, answered.nonce, message);
            }
            None => {
                c.held = answered.held_after;
                self.session.acked(shared, &req.name, answered.version, answered.nonce, answered.published);
            }
        }
        Ok(())
    }

    fn on_snapshot(&mut self, snap: &Arc<Snapshot>) {
        for c in self.collections.values_mut() {
            if c.computed_at != Some(snap.kind_version(c.served.group, c.served.kind)) {
                c.pending = true;
            }
        }
    }

    /// Only collections with no answer outstanding can be answered.
    fn has_pending(&self) -> bool {
        self.collections.values().any(|c| c.pending && c.outstanding.is_none())
    }

    fn next(&mut self, snap: &Arc<Snapshot>, shared: &Shared) -> Option<Outbound> {
        loop {
            let name = self.collections.values().find(|c| c.pending && c.outstanding.is_none())?.name.clone();
            if let Some(out) = self.answer(snap, shared, &name) {
                return Some(out);
            }
        }
    }
}
