//! What every xDS stream keeps whatever its protocol: who the proxy is, its
//! ledger record, its nonce counter, and how ACKs and NACKs are recorded.

use std::sync::Arc;
use std::time::SystemTime;

use keelson_hub::ledger::LedgerEntry;
use keelson_hub::translate::visibility::Visibility;
use keelson_hub::{AckLedger, ProxyRecord, Snapshot};
use keelson_proto::envoy::pb::envoy::config::core::v3::Node;
use keelson_proto::mcp::SinkNode;
use tokio::sync::mpsc;
use tonic::Status;

use super::metrics::XdsMetrics;
use super::nack::{Verdict, clip, summarize};
use super::types::short_name;

/// Which node field groups proxies (DESIGN.md §5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GroupKey {
    /// `node.cluster` (the default).
    Cluster,
    /// `node.id`.
    Id,
    /// A string field of `node.metadata`.
    Metadata(String),
}

impl std::str::FromStr for GroupKey {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cluster" | "node.cluster" => Ok(GroupKey::Cluster),
            "id" | "node.id" => Ok(GroupKey::Id),
            _ => match s.strip_prefix("node.metadata.").or_else(|| s.strip_prefix("metadata.")) {
                Some(field) if !field.is_empty() => Ok(GroupKey::Metadata(field.to_string())),
                _ => Err(format!("group key {s:?}: expected node.cluster, node.id or node.metadata.<field>")),
            },
        }
    }
}

/// A NACK, on its way to the event log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NackRecord {
    pub node: String,
    pub type_url: String,
    pub version: String,
    pub error: String,
}

/// The client features that ask for TTL-carrying `Resource` wrappers in SotW
/// (the docs name it three ways; PROTOCOL.md §1).
const TTL_FEATURES: &[&str] =
    &["xds.config.resource-in-sotw", "xds.config.supports-resource-in-sotw", "xds.config.supports-resource-ttl"];

/// The proxy on the other end, from the first request's `node`.
#[derive(Clone, Debug)]
pub struct Peer {
    pub id: String,
    pub group: Option<Arc<str>>,
    pub wants_ttl: bool,
    /// `ISTIO_REVISION` from the node metadata: an istiod takes only the
    /// objects of its revision (and unlabelled ones).
    pub revision: Option<Arc<str>>,
    /// The proxy's namespace, for Sidecar scoping: `NAMESPACE` from the node
    /// metadata, else from an Istio node id `type~ip~pod.namespace~domain`
    /// (istiod's `ParseServiceNodeWithMetadata`).
    pub namespace: Option<Arc<str>>,
    /// A proxyless gRPC client (it gets the gRPC form of clusters Envoy
    /// and gRPC take differently, keelson_hub::translate::grpc).
    pub grpc: bool,
}

/// What only proxyless gRPC clients put in their node: the client feature
/// of gRFC A27, or a `user_agent_name` like "gRPC Go", "gRPC C-core".
fn is_grpc(node: &Node) -> bool {
    node.client_features.iter().any(|f| f == "envoy.lb.does_not_support_overprovisioning")
        || node.user_agent_name.starts_with("gRPC")
}

/// The mesh config MCP clients get under `core/v1alpha1/MeshConfig`.
#[derive(Clone, Debug, Default)]
pub struct MeshConfigItem {
    /// `Any(istio.mesh.v1alpha1.MeshConfig)`, encoded.
    pub any: bytes::Bytes,
    /// Its version_info; fixed for the life of the server.
    pub version: u64,
}

impl MeshConfigItem {
    pub const TYPE_URL: &str = "type.googleapis.com/istio.mesh.v1alpha1.MeshConfig";

    /// From an encoded `istio.mesh.v1alpha1.MeshConfig` (empty = all defaults).
    pub fn new(message: &[u8]) -> Self {
        MeshConfigItem { any: keelson_hub::transcode::encode_any(Self::TYPE_URL, message), version: 1 }
    }
}

/// State shared by every stream of the server.
pub struct Shared {
    pub ledger: AckLedger,
    pub metrics: XdsMetrics,
    pub cache: super::cache::ResponseCache,
    pub group_key: GroupKey,
    /// Bounded: a NACK storm never queues without limit (dropped ones are
    /// counted and still shown by the ledger).
    pub nacks: mpsc::Sender<NackRecord>,
    /// Which NACKs reach the log, and how often (dedupe and rate limits).
    pub nack_gate: super::nack::NackGate,
    pub mesh_config: MeshConfigItem,
    /// Set when the server stops: every stream ends (gRPC's graceful
    /// shutdown otherwise waits forever for ADS streams, which never end).
    pub closing: tokio::sync::watch::Sender<bool>,
}

/// Per-stream state common to SotW and Delta.
pub struct Session {
    pub peer: Option<Peer>,
    ledger: Option<LedgerEntry>,
    next_nonce: u64,
    stream: &'static str,
    remote: String,
    /// The dedupe key of the last NACK this stream logged.
    last_nack: Option<u64>,
    /// Made on the first NACK: most streams never send one.
    nack_limiter: Option<governor::DefaultDirectRateLimiter>,
}

impl Session {
    pub fn new(stream: &'static str, remote: String) -> Self {
        Session { peer: None, ledger: None, next_nonce: 0, stream, remote, last_nack: None, nack_limiter: None }
    }

    /// Checks what every request must have: a node on the first one (later
    /// requests may omit it) and, on an aggregated stream, a type URL.
    pub fn admit(&mut self, node: Option<&Node>, type_url: &str, shared: &Shared) -> Result<(), Status> {
        self.identify(node, shared)?;
        if type_url.is_empty() {
            return Err(Status::invalid_argument("type_url is required on an aggregated stream"));
        }
        Ok(())
    }

    /// Takes the node from the first request; later requests may omit it.
    fn identify(&mut self, node: Option<&Node>, shared: &Shared) -> Result<(), Status> {
        if self.peer.is_some() {
            return Ok(());
        }
        let node = node.ok_or_else(|| Status::invalid_argument("the first request on a stream must carry `node`"))?;
        if node.id.is_empty() {
            return Err(Status::invalid_argument("node.id is required"));
        }
        let group = match &shared.group_key {
            GroupKey::Cluster => Some(node.cluster.clone()),
            GroupKey::Id => Some(node.id.clone()),
            GroupKey::Metadata(field) => metadata_string(node, field),
        }
        .filter(|g| !g.is_empty());
        let wants_ttl = node.client_features.iter().any(|f| TTL_FEATURES.contains(&f.as_str()));
        let revision = metadata_string(node, "ISTIO_REVISION").filter(|r| !r.is_empty()).map(Arc::from);
        let mut record = ProxyRecord::new(&node.id, &node.cluster, self.stream);
        record.group = group.clone();
        record.peer = self.remote.clone();
        record.user_agent = user_agent(node);
        self.ledger = Some(shared.ledger.register(record));
        let namespace = metadata_string(node, "NAMESPACE")
            .filter(|n| !n.is_empty())
            .or_else(|| istio_namespace(&node.id))
            .map(Arc::from);
        let grpc = is_grpc(node);
        self.peer =
            Some(Peer { id: node.id.clone(), group: group.map(Arc::from), wants_ttl, revision, namespace, grpc });
        Ok(())
    }

    /// The legacy MCP form of [`Session::admit`]: the sink node comes from
    /// the first request. Galley-era istiod (1.1–1.8) sent an empty id (and
    /// `SinkNode` is "not authoritative" in the MCP design), so an empty or
    /// missing one is accepted and the peer address stands in for it.
    pub fn admit_sink(&mut self, sink: Option<&SinkNode>, shared: &Shared) {
        if self.peer.is_some() {
            return;
        }
        let id = match sink.map(|s| s.id.as_str()) {
            Some(id) if !id.is_empty() => id.to_string(),
            _ if !self.remote.is_empty() => self.remote.clone(),
            _ => "unnamed-mcp-sink".to_string(),
        };
        let annotation = |key: &str| sink.and_then(|s| s.annotations.get(key)).filter(|v| !v.is_empty()).cloned();
        // A sink node has no cluster: only node.id or an annotation can group it.
        let group = match &shared.group_key {
            GroupKey::Cluster => None,
            GroupKey::Id => Some(id.clone()),
            GroupKey::Metadata(field) => annotation(field),
        };
        let revision = annotation("ISTIO_REVISION").map(Arc::from);
        let mut record = ProxyRecord::new(&id, "", self.stream);
        record.group = group.clone();
        record.peer = self.remote.clone();
        record.protocol = keelson_hub::ledger::Protocol::Mcp;
        self.ledger = Some(shared.ledger.register(record));
        self.peer =
            Some(Peer { id, group: group.map(Arc::from), wants_ttl: false, revision, namespace: None, grpc: false });
    }

    pub fn group(&self) -> Option<&str> {
        self.peer.as_ref().and_then(|p| p.group.as_deref())
    }

    /// What this proxy sees under its namespace's Sidecar, if one scopes it.
    pub fn visibility<'a>(&self, snap: &'a Snapshot) -> Option<&'a Visibility> {
        let ns = self.peer.as_ref()?.namespace.as_deref()?;
        snap.visibility(ns).map(|v| &**v)
    }

    pub fn grpc(&self) -> bool {
        self.peer.as_ref().is_some_and(|p| p.grpc)
    }

    pub fn revision(&self) -> Option<&str> {
        self.peer.as_ref().and_then(|p| p.revision.as_deref())
    }

    pub fn wants_ttl(&self) -> bool {
        self.peer.as_ref().is_some_and(|p| p.wants_ttl)
    }

    pub fn nonce(&mut self) -> u64 {
        self.next_nonce += 1;
        self.next_nonce
    }

    pub fn subscribed(&self, type_url: &str) {
        if let Some(l) = &self.ledger {
            let mut record = l.lock();
            if super::types::lookup(type_url).is_some_and(|t| t.form.is_mcp()) {
                // One MCP type makes the client an MCP client (an istiod).
                record.protocol = keelson_hub::ledger::Protocol::Mcp;
            }
            if tracked(type_url) {
                record.subscribed(type_url, short_name(type_url));
            }
        }
    }

    /// The ledger record to book a type's sends and answers in, if tracked.
    fn ledger_for(&self, type_url: &str) -> Option<&LedgerEntry> {
        self.ledger.as_ref().filter(|_| tracked(type_url))
    }

    pub fn sent(&self, shared: &Shared, type_url: &str, version: u64, nonce: u64, bytes: usize) {
        let short = short_name(type_url);
        shared.metrics.sent(type_url, bytes);
        if let Some(l) = self.ledger_for(type_url) {
            l.lock().sent(type_url, short, version, nonce);
        }
    }

    /// An ACK of the response with `nonce`; `published` is when the snapshot
    /// it came from was published (convergence time runs from there).
    pub fn acked(&self, shared: &Shared, type_url: &str, version: u64, nonce: u64, published: SystemTime) {
        let short = short_name(type_url);
        shared.metrics.acked(type_url, published);
        if let Some(l) = self.ledger_for(type_url) {
            l.lock().acked(type_url, short, version, nonce);
        }
    }

    /// A NACK: always counted and shown by the ledger; appended to the log
    /// only the first time (per node, type, version and error) and within
    /// the rate limits (nack.rs).
    pub fn nacked(&mut self, shared: &Shared, type_url: &str, version: u64, nonce: u64, error: &str) {
        let short = short_name(type_url);
        shared.metrics.nacked(type_url);
        let (text, error_hash) = summarize(error);
        if let Some(l) = self.ledger_for(type_url) {
            l.lock().nacked(type_url, short, version, nonce, &text);
        }
        let node = self.peer.as_ref().map(|p| p.id.as_str()).unwrap_or_default();
        let key = super::nack::key(node, type_url, version, error_hash);
        if self.nack_limiter.is_none() {
            self.nack_limiter = shared.nack_gate.limits.stream_limiter();
        }
        let reason = match shared.nack_gate.admit(key, &mut self.last_nack, self.nack_limiter.as_ref()) {
            Verdict::Repeat => {
                shared.metrics.nack_repeats.inc();
                return;
            }
            Verdict::StreamRate => "stream_rate",
            Verdict::GlobalRate => "global_rate",
            Verdict::Append => {
                tracing::warn!(%node, type_url, version, "NACK: {text}");
                let record = NackRecord {
                    node: clip(node),
                    type_url: clip(type_url),
                    version: version.to_string(),
                    error: text,
                };
                if shared.nacks.try_send(record).is_ok() {
                    return;
                }
                shared.metrics.nacks_unlogged.inc();
                "queue_full"
            }
        };
        shared.metrics.nack_dropped(reason);
    }
}

/// Is a type booked in the ledger? Not MeshConfig: istiod never ACKs a
/// non-empty one (adsc skips it), so the ledger would show it stale for ever.
fn tracked(type_url: &str) -> bool {
    type_url != super::types::MESH_CONFIG
}

/// The namespace in an Istio node id, `type~ip~pod.namespace~domain`.
fn istio_namespace(id: &str) -> Option<String> {
    let mut parts = id.split('~');
    let (_kind, _ip, pod, _domain) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let (_, ns) = pod.split_once('.')?;
    (!ns.is_empty() && !ns.contains('.')).then(|| ns.to_string())
}

fn metadata_string(node: &Node, field: &str) -> Option<String> {
    node.metadata.as_ref().and_then(|m| m.fields.get(field)).and_then(|v| match &v.kind {
        Some(keelson_proto::envoy::pb::google::protobuf::value::Kind::StringValue(s)) => Some(s.clone()),
        _ => None,
    })
}

fn user_agent(node: &Node) -> String {
    use keelson_proto::envoy::pb::envoy::config::core::v3::node::UserAgentVersionType;
    let version = match &node.user_agent_version_type {
        Some(UserAgentVersionType::UserAgentVersion(v)) => v.clone(),
        Some(UserAgentVersionType::UserAgentBuildVersion(b)) => {
            b.version.as_ref().map(|v| format!("{}.{}.{}", v.major_number, v.minor_number, v.patch)).unwrap_or_default()
        }
        None => String::new(),
    };
    match (node.user_agent_name.as_str(), version.as_str()) {
        ("", _) => String::new(),
        (name, "") => name.to_string(),
        (name, v) => format!("{name}/{v}"),
    }
}
