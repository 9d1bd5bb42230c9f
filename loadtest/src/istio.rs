//! What a simulated istiod asks for and how it reads the answers: MCP over
//! xDS as istiod's config client (`pkg/adsc/adsc.go`) speaks it, PROTOCOL.md
//! §2a. The type URLs per Istio version are data; the session that drives
//! them is `proxy::mcp`.
//!
//! Rules mirrored here, each from adsc:
//! - one SotW stream; MeshConfig is requested first, then every Istio kind,
//!   each a wildcard request (no names, no version);
//! - every initial request carries `response_nonce = time.Now().String()`
//!   and only the first one carries the node;
//! - an ACK is `{type_url, response_nonce, version_info, node}`: the node
//!   rides on every ACK;
//! - a non-empty MeshConfig response is read and never ACKed (adsc
//!   `continue`s past its ACK); an empty one is ACKed like any type;
//! - istiod never NACKs: items that do not decode are dropped (and logged)
//!   and the response is ACKed anyway. The loadtest counts them instead, so
//!   a server bug fails the run rather than hiding behind an ACK.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use keelson_proto::envoy::pb::envoy::config::core::v3::Node;
use keelson_proto::envoy::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use keelson_proto::envoy::pb::google::protobuf::value::Kind as PbKind;
use keelson_proto::envoy::pb::google::protobuf::{Any, Struct, Value as PbValue};
use keelson_proto::mcp::Resource;
use prost::Message;

use crate::proxy::Kind;

/// The type URL istiod requests its mesh config under (no `type.googleapis.com/`).
pub const MESH_CONFIG: &str = "core/v1alpha1/MeshConfig";
/// `Any.type_url` of every MCP item.
pub const RESOURCE_TYPE_URL: &str = "type.googleapis.com/istio.mcp.v1alpha1.Resource";
/// The Any istiod reads a MeshConfig response's first resource as.
pub const MESH_CONFIG_TYPE_URL: &str = "type.googleapis.com/istio.mesh.v1alpha1.MeshConfig";
/// adsc's default `ISTIO_VERSION` node metadata: istiod never sets another.
pub const ISTIO_VERSION_METADATA: &str = "65536.65536.65536";
/// Bodies are Istio protos, addressed by their proto package.
const BODY_PREFIX: &str = "type.googleapis.com/istio.";
/// The label that scopes an object to one control-plane revision.
const REVISION_LABEL: &str = "istio.io/rev";

/// The Istio version a simulated istiod is: which GVK strings it requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
pub enum IstioVersion {
    /// Istio ≤ 1.23: v1alpha3 networking, v1beta1 security, v1alpha1 telemetry.
    #[value(name = "1.23")]
    #[serde(rename = "1.23")]
    V1_23,
    /// Istio 1.24 and later: `v1` where the kind has one.
    #[value(name = "1.24")]
    #[serde(rename = "1.24")]
    V1_24,
}

/// istiod ≥ 1.24's `collections.Pilot`, as `<group>/<version>/<Kind>`.
const ISTIO_1_24: &[(&str, Kind)] = &[
    ("security.istio.io/v1/AuthorizationPolicy", Kind::AuthorizationPolicy),
    ("networking.istio.io/v1/DestinationRule", Kind::DestinationRule),
    ("networking.istio.io/v1alpha3/EnvoyFilter", Kind::EnvoyFilter),
    ("networking.istio.io/v1/Gateway", Kind::Gateway),
    ("security.istio.io/v1/PeerAuthentication", Kind::PeerAuthentication),
    ("networking.istio.io/v1beta1/ProxyConfig", Kind::ProxyConfig),
    ("security.istio.io/v1/RequestAuthentication", Kind::RequestAuthentication),
    ("networking.istio.io/v1/ServiceEntry", Kind::ServiceEntry),
    ("networking.istio.io/v1/Sidecar", Kind::Sidecar),
    ("telemetry.istio.io/v1/Telemetry", Kind::Telemetry),
    ("networking.istio.io/v1/VirtualService", Kind::VirtualService),
    ("extensions.istio.io/v1alpha1/WasmPlugin", Kind::WasmPlugin),
    ("networking.istio.io/v1/WorkloadEntry", Kind::WorkloadEntry),
    ("networking.istio.io/v1/WorkloadGroup", Kind::WorkloadGroup),
];

/// The same for istiod ≤ 1.23.
const ISTIO_1_23: &[(&str, Kind)] = &[
    ("security.istio.io/v1beta1/AuthorizationPolicy", Kind::AuthorizationPolicy),
    ("networking.istio.io/v1alpha3/DestinationRule", Kind::DestinationRule),
    ("networking.istio.io/v1alpha3/EnvoyFilter", Kind::EnvoyFilter),
    ("networking.istio.io/v1alpha3/Gateway", Kind::Gateway),
    ("security.istio.io/v1beta1/PeerAuthentication", Kind::PeerAuthentication),
    ("networking.istio.io/v1beta1/ProxyConfig", Kind::ProxyConfig),
    ("security.istio.io/v1beta1/RequestAuthentication", Kind::RequestAuthentication),
    ("networking.istio.io/v1alpha3/ServiceEntry", Kind::ServiceEntry),
    ("networking.istio.io/v1alpha3/Sidecar", Kind::Sidecar),
    ("telemetry.istio.io/v1alpha1/Telemetry", Kind::Telemetry),
    ("networking.istio.io/v1alpha3/VirtualService", Kind::VirtualService),
    ("extensions.istio.io/v1alpha1/WasmPlugin", Kind::WasmPlugin),
    ("networking.istio.io/v1alpha3/WorkloadEntry", Kind::WorkloadEntry),
    ("networking.istio.io/v1alpha3/WorkloadGroup", Kind::WorkloadGroup),
];

impl IstioVersion {
    pub fn name(self) -> &'static str {
        match self {
            IstioVersion::V1_23 => "1.23",
            IstioVersion::V1_24 => "1.24",
        }
    }

    /// Every type an istiod of this version requests, in its order:
    /// MeshConfig first, then the Istio kinds.
    pub fn requested(self) -> impl Iterator<Item = (&'static str, Kind)> {
        let kinds = match self {
            IstioVersion::V1_23 => ISTIO_1_23,
            IstioVersion::V1_24 => ISTIO_1_24,
        };
        std::iter::once((MESH_CONFIG, Kind::MeshConfig)).chain(kinds.iter().copied())
    }

    /// The type URL this version requests `kind` under.
    pub fn type_url(self, kind: Kind) -> Option<&'static str> {
        self.requested().find(|(_, k)| *k == kind).map(|(url, _)| url)
    }
}

/// The Istio kind a GVK type URL names, under either Istio version.
pub fn kind_of(type_url: &str) -> Option<Kind> {
    [IstioVersion::V1_23, IstioVersion::V1_24]
        .into_iter()
        .find_map(|v| v.requested().find(|(url, _)| *url == type_url).map(|(_, k)| k))
}

/// Node metadata of string fields.
pub fn metadata(fields: &[(&str, &str)]) -> Struct {
    let s = |v: &str| PbValue { kind: Some(PbKind::StringValue(v.into())) };
    Struct { fields: fields.iter().map(|(k, v)| (k.to_string(), s(v))).collect() }
}

/// istiod's node: `sidecar~<ip>~<pod>.<ns>~<ns>.svc.cluster.local` (adsc
/// `nodeID`), with the metadata istiod's config controller sets.
pub fn node(n: u32, revision: &str) -> Node {
    let fields = [("GENERATOR", "api"), ("ISTIO_REVISION", revision), ("ISTIO_VERSION", ISTIO_VERSION_METADATA)];
    let ip = n + 1;
    Node {
        id: format!(
            "sidecar~10.{}.{}.{}~istiod-{n}.istio-system~istio-system.svc.cluster.local",
            (ip >> 16) & 255,
            (ip >> 8) & 255,
            ip & 255
        ),
        metadata: Some(metadata(&fields)),
        ..Node::default()
    }
}

/// A timestamp in the shape of Go's `time.Now().String()` (what adsc puts
/// in every initial request's nonce): `2026-12-02 17:00:00.123456789 +0000
/// UTC m=+0.012345678`, the last part being time since the process began.
pub fn go_time_string(now: SystemTime, monotonic: Duration) -> String {
    let rfc = humantime::format_rfc3339_nanos(now).to_string();
    let wall = rfc.trim_end_matches('Z').replacen('T', " ", 1);
    // Go's format trims trailing zeros of the fraction, and the dot with them.
    let wall = match wall.split_once('.') {
        Some((secs, frac)) if frac.trim_end_matches('0').is_empty() => secs.to_string(),
        Some((secs, frac)) => format!("{secs}.{}", frac.trim_end_matches('0')),
        None => wall,
    };
    format!("{wall} +0000 UTC m=+{:.9}", monotonic.as_secs_f64())
}

/// The requests a new stream opens with, in order (adsc `Run` over
/// `ConfigInitialRequests`): the node on the first only, a timestamp nonce
/// on each.
pub fn initial_requests(version: IstioVersion, node: &Node, nonce: &str) -> Vec<DiscoveryRequest> {
    version
        .requested()
        .enumerate()
        .map(|(i, (type_url, _))| DiscoveryRequest {
            node: (i == 0).then(|| node.clone()),
            type_url: type_url.into(),
            response_nonce: nonce.into(),
            ..Default::default()
        })
        .collect()
}

/// The ACK of a response (adsc `ack`): no names, the node every time.
pub fn ack(r: &DiscoveryResponse, node: &Node) -> DiscoveryRequest {
    DiscoveryRequest {
        node: Some(node.clone()),
        type_url: r.type_url.clone(),
        version_info: r.version_info.clone(),
        response_nonce: r.nonce.clone(),
        ..Default::default()
    }
}

/// Why istiod would drop an item.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ItemError {
    #[error("item is an Any of {0:?}, not an istio.mcp.v1alpha1.Resource")]
    NotAResource(String),
    #[error("item does not decode as an MCP Resource: {0}")]
    Decode(prost::DecodeError),
    #[error("item has no metadata")]
    NoMetadata,
    #[error("item name {0:?} is not <namespace>/<name>")]
    Name(String),
    #[error("item {0} has no body")]
    NoBody(String),
    #[error("item {name} has a body of type {type_url:?}, not an Istio proto")]
    BodyType { name: String, type_url: String },
    #[error("item {name}: the body does not decode as {message}: {error}")]
    Body { name: String, message: String, error: String },
    #[error("item {name} is labelled for revision {label:?}, this istiod is {revision:?}")]
    Revision { name: String, label: String, revision: String },
    #[error("the MeshConfig is an Any of {0:?}, not an unwrapped istio.mesh.v1alpha1.MeshConfig")]
    MeshConfigType(String),
    #[error("the MeshConfig does not decode: {0}")]
    MeshConfig(String),
}

/// One item as istiod keeps it.
#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    /// `<namespace>/<name>`.
    pub name: String,
    /// The object's version: istiod updates its copy only when this changes.
    pub version: String,
}

/// Decodes `bytes` as `message` when the descriptor pool has it: unknown
/// fields are an error (the body was written for another schema). Bodies
/// of messages the pool lacks are accepted on their type URL alone.
fn check_message(message: &str, bytes: &[u8]) -> Result<(), String> {
    let Some(desc) = keelson_proto::descriptors().get_message_by_name(message) else { return Ok(()) };
    let decoded = prost_reflect::DynamicMessage::decode(desc, bytes).map_err(|e| e.to_string())?;
    if decoded.unknown_fields().next().is_some() {
        return Err("it has fields the schema does not know".into());
    }
    Ok(())
}

/// Reads one MCP item as adsc's `mcpToPilot` does: an
/// `Any(istio.mcp.v1alpha1.Resource)` whose name splits into exactly two
/// parts on "/" and whose body is an Istio proto. Objects labelled for
/// another revision are skipped by istiod; the server should never send
/// them, so here they count as errors.
pub fn decode_item(any: &Any, revision: &str) -> Result<Item, ItemError> {
    if any.type_url != RESOURCE_TYPE_URL {
        return Err(ItemError::NotAResource(any.type_url.clone()));
    }
    let resource = Resource::decode(any.value.as_slice()).map_err(ItemError::Decode)?;
    let meta = resource.metadata.ok_or(ItemError::NoMetadata)?;
    if meta.name.split('/').count() != 2 {
        return Err(ItemError::Name(meta.name));
    }
    let name = meta.name;
    if let Some(label) = meta.labels.get(REVISION_LABEL)
        && !revision.is_empty()
        && label != revision
    {
        return Err(ItemError::Revision { name, label: label.clone(), revision: revision.into() });
    }
    let body = resource.body.ok_or_else(|| ItemError::NoBody(name.clone()))?;
    if !body.type_url.starts_with(BODY_PREFIX) {
        return Err(ItemError::BodyType { name, type_url: body.type_url });
    }
    let message = &body.type_url["type.googleapis.com/".len()..];
    check_message(message, &body.value).map_err(|error| ItemError::Body {
        name: name.clone(),
        message: message.into(),
        error,
    })?;
    Ok(Item { name, version: meta.version })
}

/// The items already decoded and found good, by a hash of their bytes,
/// shared by every istiod of a run. Keelson sends every client the same
/// bytes for an item version (serialized once), and every SotW response
/// holds the full state of its kind, so without this the loadtest would
/// spend its CPU decoding the same 10,000 bodies 100 times per change — CPU
/// the hub under test shares. An item whose exact bytes were checked before
/// is known good; any other is decoded in full. All istiods of a run share
/// one revision, so the revision rule holds for the cache too.
#[derive(Debug, Default)]
pub struct CheckedItems(Mutex<HashSet<u64>>);

impl CheckedItems {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<u64>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many distinct item encodings were checked.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn item_hash(any: &Any) -> u64 {
    // SipHash with fixed keys: the same bytes hash the same in every task.
    let mut h = std::hash::DefaultHasher::new();
    any.type_url.hash(&mut h);
    any.value.hash(&mut h);
    h.finish()
}

/// What a simulated istiod makes of one response.
#[derive(Debug, Default, PartialEq)]
pub struct Reading {
    /// Send an ACK: every response but a non-empty MeshConfig.
    pub ack: bool,
    /// Items kept.
    pub kept: usize,
    /// Items istiod would drop, and why.
    pub dropped: Vec<ItemError>,
}

/// Reads a response of `kind` (MeshConfig or an Istio kind).
pub fn read(kind: Kind, r: &DiscoveryResponse, revision: &str, checked: &CheckedItems) -> Reading {
    if kind == Kind::MeshConfig {
        // Only the first resource is read, as the MeshConfig itself.
        let Some(first) = r.resources.first() else { return Reading { ack: true, ..Reading::default() } };
        let dropped = if first.type_url != MESH_CONFIG_TYPE_URL {
            vec![ItemError::MeshConfigType(first.type_url.clone())]
        } else {
            check_message("istio.mesh.v1alpha1.MeshConfig", &first.value)
                .err()
                .map(ItemError::MeshConfig)
                .into_iter()
                .collect()
        };
        return Reading { ack: false, kept: 0, dropped };
    }
    let mut reading = Reading { ack: true, ..Reading::default() };
    let hashes: Vec<u64> = r.resources.iter().map(item_hash).collect();
    let known: Vec<bool> = {
        let set = checked.lock();
        hashes.iter().map(|h| set.contains(h)).collect()
    };
    let mut good = Vec::new();
    for ((any, hash), known) in r.resources.iter().zip(hashes).zip(known) {
        if known {
            reading.kept += 1;
            continue;
        }
        match decode_item(any, revision) {
            Ok(_) => {
                reading.kept += 1;
                good.push(hash);
            }
            Err(e) => reading.dropped.push(e),
        }
    }
    if !good.is_empty() {
        checked.lock().extend(good);
    }
    reading
}

#[cfg(test)]
#[path = "istio_tests.rs"]
mod tests;
