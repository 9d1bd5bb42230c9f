//! Istio objects as MCP items, the form istiod reads over MCP-over-xDS
//! (PROTOCOL.md §2a, istio/istio `pkg/adsc/adsc.go`):
//! `Any(istio.mcp.v1alpha1.Resource { metadata, body: Any(<proto message>) })`.
//!
//! Built once per object version, in the hub, so every MCP client shares the
//! same bytes.

use std::collections::BTreeMap;
use std::time::SystemTime;

use bytes::Bytes;
use keelson_proto::mcp::{Metadata, Resource};
use prost::Message;
use serde_json::Value;

use crate::event::ResourceKey;

/// `Any.type_url` of every MCP item.
pub const RESOURCE_TYPE_URL: &str = "type.googleapis.com/istio.mcp.v1alpha1.Resource";

/// `<namespace>/<name>`: istiod splits on "/" and drops anything that does
/// not give exactly two parts (adsc `mcpToPilot`).
pub fn item_name(key: &ResourceKey) -> String {
    format!("{}/{}", key.namespace, key.name)
}

/// The MCP item of an Istio object: `spec` is its canonical protobuf, the
/// metadata comes from the canonical body, `version` is the seq that last
/// changed it (istiod updates its copy only when this string changes).
pub fn encode_item(
    message: &str,
    key: &ResourceKey,
    body: &Value,
    spec: &[u8],
    version: u64,
    created_at: SystemTime,
) -> Bytes {
    let strings = |field: &str| -> BTreeMap<String, String> {
        body.pointer(&format!("/metadata/{field}"))
            .and_then(Value::as_object)
            .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
            .unwrap_or_default()
    };
    let since_epoch = created_at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let resource = Resource {
        metadata: Some(Metadata {
            name: item_name(key),
            create_time: Some(prost_types::Timestamp {
                seconds: since_epoch.as_secs() as i64,
                nanos: since_epoch.subsec_nanos() as i32,
            }),
            version: version.to_string(),
            labels: strings("labels"),
            annotations: strings("annotations"),
        }),
        body: Some(prost_types::Any { type_url: format!("type.googleapis.com/{message}"), value: spec.to_vec() }),
    };
    crate::transcode::encode_any(RESOURCE_TYPE_URL, &resource.encode_to_vec())
}
