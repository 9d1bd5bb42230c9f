//! Kubernetes-style config objects: parse, validate, canonicalize.
//!
//! Every source hands objects through [`parse_object`] before anything is
//! appended, so the log only ever holds objects that validated. The file
//! source, the API source and `keelson validate` share it.

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::event::{Body, ResourceKey};
use crate::kinds::{self, Encoding, KindInfo};
use crate::names;
use crate::transcode;

/// Limits every object is held to, whichever source it came from
/// (`[limits]` in keelson.toml).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest encoded object: the protobuf `Any` of an Envoy kind, the
    /// canonical JSON body of any other kind. The default, 1 MiB, keeps one
    /// object far inside the 4 MiB a proxyless gRPC client accepts per
    /// message by default, so no single object can break a stream.
    pub max_resource_bytes: usize,
}

impl Limits {
    pub const DEFAULT_MAX_RESOURCE_BYTES: usize = 1 << 20;
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_resource_bytes: Self::DEFAULT_MAX_RESOURCE_BYTES }
    }
}

/// An object that passed validation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidObject {
    pub key: ResourceKey,
    pub body: Body,
}

/// Metadata fields kept in the canonical body; the rest (resourceVersion,
/// uid, managedFields, timestamps…) changes without the config changing.
/// `creationTimestamp` stays: it changes only when the object is recreated,
/// and MCP sends it.
const KEPT_METADATA: &[&str] = &["name", "namespace", "labels", "annotations", "creationTimestamp"];

/// Annotations that copy the object rather than configure it: kubectl's
/// client-side apply keeps the whole last applied object in one, which
/// would double every body and change with nothing that matters.
const NOISE_ANNOTATIONS: &[&str] = &["kubectl.kubernetes.io/last-applied-configuration"];

fn drop_annotation_noise(meta: &mut Map<String, Value>) {
    if let Some(Value::Object(annotations)) = meta.get_mut("annotations") {
        annotations.retain(|k, _| !NOISE_ANNOTATIONS.contains(&k.as_str()));
        if annotations.is_empty() {
            meta.remove("annotations");
        }
    }
}

/// [`parse_object_within`] the default [`Limits`].
pub fn parse_object(value: &Value) -> Result<ValidObject, String> {
    parse_object_within(value, &Limits::default())
}

/// Validates one object and returns its key and canonical body. The error
/// says what is wrong in terms of the object's own fields.
pub fn parse_object_within(value: &Value, limits: &Limits) -> Result<ValidObject, String> {
    parse_owned_object(value.clone(), limits)
}

/// [`parse_object_within`] for a caller that no longer needs the object: the
/// canonical body is built from it in place instead of from a copy (a
/// Kubernetes listing hands over tens of thousands of them).
pub fn parse_owned_object(value: Value, limits: &Limits) -> Result<ValidObject, String> {
    let Value::Object(mut obj) = value else { return Err("a config object must be a mapping".into()) };
    let info = kind_of(&obj)?;
    let no_metadata = Map::new();
    let meta = match obj.get("metadata") {
        None => &no_metadata,
        Some(Value::Object(m)) => m,
        Some(_) => return Err("metadata must be a mapping".into()),
    };
    let meta_name = meta.get("name").and_then(Value::as_str).unwrap_or_default();
    let kind = info.kind;
    let namespace = match (info.namespaced, meta.get("namespace").and_then(Value::as_str)) {
        (true, Some(ns)) if !ns.is_empty() => ns.to_string(),
        (true, _) => "default".to_string(),
        (false, Some(ns)) if !ns.is_empty() => {
            return Err(format!("{kind} is cluster-scoped: remove metadata.namespace ({ns:?})"));
        }
        (false, _) => String::new(),
    };
    if info.namespaced {
        names::check_namespace(&namespace)?;
    }
    let mut encoded_len = None;
    let name = match info.encoding {
        Encoding::Envoy { message, name_field } => {
            let (name, len) = check_envoy(&obj, message, name_field, meta_name)?;
            encoded_len = Some(len);
            name
        }
        Encoding::Istio { message, required } => {
            let spec = obj.get("spec").filter(|s| s.is_object()).ok_or("spec is required and must be a mapping")?;
            require(spec.as_object().expect("checked above"), required, "spec.")?;
            // Transcoded now, so a misspelled field or a bad enum value is
            // this object's error, not a surprise in every istiod.
            transcode::encode_istio_json(message, spec).map_err(|e| e.to_string())?;
            meta_name.to_string()
        }
        Encoding::Kubernetes { required } => {
            require(&obj, required, "")?;
            meta_name.to_string()
        }
    };
    if name.is_empty() {
        return Err("metadata.name is required".into());
    }
    names::check_name(info.name_rule, &name)?;
    check_serving_metadata(meta)?;
    let mut canonical = match crate::reduce::reduced(info.group, info.kind, &obj) {
        Some(reduced) => reduced,
        None => {
            obj.remove("status");
            obj
        }
    };
    let meta = match canonical.remove("metadata") {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    let mut kept: Map<String, Value> = meta.into_iter().filter(|(k, _)| KEPT_METADATA.contains(&k.as_str())).collect();
    drop_annotation_noise(&mut kept);
    kept.insert("name".into(), Value::String(name.clone()));
    if info.namespaced {
        kept.insert("namespace".into(), Value::String(namespace.clone()));
    }
    canonical.insert("metadata".into(), Value::Object(kept));
    let key = ResourceKey::new(info.group, info.kind, &namespace, &name);
    let body = Body::from_value(&Value::Object(canonical));
    let size = encoded_len.unwrap_or(body.json().len());
    if size > limits.max_resource_bytes {
        let form = if encoded_len.is_some() { "encoded" } else { "canonical JSON" };
        return Err(format!(
            "the object is {size} bytes ({form}), above [limits] max_resource_bytes = {}",
            limits.max_resource_bytes
        ));
    }
    Ok(ValidObject { key, body })
}

/// The kind an object's `apiVersion` and `kind` name.
fn kind_of(obj: &Map<String, Value>) -> Result<&'static KindInfo, String> {
    let api_version = str_field(obj, "apiVersion")?;
    let kind = str_field(obj, "kind")?;
    let group = match api_version.rsplit_once('/') {
        Some((group, _version)) => group,
        None => "", // "v1": the core group
    };
    kinds::lookup(group, kind)
        .ok_or_else(|| format!("unknown kind {kind} in apiVersion {api_version} (Keelson knows: {})", known_kinds()))
}

/// Checks a key against the same rules [`parse_object`] applies, for
/// ops that reach the hub from a source without passing through it.
pub fn check_key(key: &ResourceKey) -> Result<(), String> {
    let info = kinds::lookup(&key.group, &key.kind)
        .ok_or_else(|| format!("unknown kind {}/{}", names::escaped(&key.group), names::escaped(&key.kind)))?;
    if info.namespaced {
        names::check_namespace(&key.namespace)?;
    } else if !key.namespace.is_empty() {
        return Err(format!("{} is cluster-scoped: its namespace must be empty", info.kind));
    }
    names::check_name(info.name_rule, &key.name)
}

fn str_field<'a>(obj: &'a Map<String, Value>, field: &str) -> Result<&'a str, String> {
    match obj.get(field) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(_) => Err(format!("{field} must be a non-empty string")),
        None => Err(format!("{field} is required")),
    }
}

fn require(obj: &Map<String, Value>, fields: &[&str], prefix: &str) -> Result<(), String> {
    for f in fields {
        match obj.get(*f) {
            None | Some(Value::Null) => return Err(format!("{prefix}{f} is required")),
            Some(Value::Array(a)) if a.is_empty() => return Err(format!("{prefix}{f} must not be empty")),
            Some(Value::String(s)) if s.is_empty() => return Err(format!("{prefix}{f} must not be empty")),
            _ => {}
        }
    }
    Ok(())
}

/// Transcodes the spec (so a bad field is caught now, not by every Envoy) and
/// settles the resource name: from the spec, or from metadata.name when the
/// spec leaves it out; both given must agree.
fn check_envoy(
    obj: &Map<String, Value>,
    message: &str,
    name_field: &str,
    meta_name: &str,
) -> Result<(String, usize), String> {
    let spec = obj.get("spec").and_then(Value::as_object).ok_or("spec is required and must be a mapping")?;
    let spec_name = spec.get(name_field).and_then(Value::as_str).unwrap_or_default();
    let name = match (meta_name, spec_name) {
        ("", "") => return Err(format!("spec.{name_field} (or metadata.name) is required")),
        (m, "") => m,
        ("", s) => s,
        (m, s) if m == s => s,
        (m, s) => {
            let (m, s) = (names::shown_name(m), names::shown_name(s));
            return Err(format!("metadata.name {m} and spec.{name_field} {s} differ"));
        }
    };
    let mut spec = spec.clone();
    spec.insert(name_field.to_string(), Value::String(name.to_string()));
    let encoded = transcode::encode_json(message, &Value::Object(spec)).map_err(|e| e.to_string())?;
    // The Any adds the type URL and two short headers to the message.
    let any_len = encoded.len() + message.len() + 32;
    Ok((name.to_string(), any_len))
}

/// The label and annotation the xDS sink reads must make sense now, not
/// surprise a proxy later.
fn check_serving_metadata(meta: &Map<String, Value>) -> Result<(), String> {
    use crate::state::{PROXY_GROUP_LABEL, TTL_ANNOTATION};
    if let Some(created) = meta.get("creationTimestamp")
        && created.as_str().is_none_or(|t| humantime::parse_rfc3339_weak(t).is_err())
    {
        return Err(format!("metadata.creationTimestamp = {created} is not an RFC 3339 time"));
    }
    for field in ["labels", "annotations"] {
        if let Some(map) = meta.get(field) {
            let strings = map.is_null() || map.as_object().is_some_and(|m| m.values().all(Value::is_string));
            if !strings {
                return Err(format!("metadata.{field} must map strings to strings"));
            }
        }
    }
    if let Some(group) = meta.get("labels").and_then(|l| l.get(PROXY_GROUP_LABEL))
        && group.as_str().is_none_or(str::is_empty)
    {
        return Err(format!("metadata.labels.{PROXY_GROUP_LABEL} must be a non-empty string"));
    }
    if let Some(ttl) = meta.get("annotations").and_then(|a| a.get(TTL_ANNOTATION)) {
        let parsed = ttl.as_str().map(humantime::parse_duration);
        if !matches!(parsed, Some(Ok(d)) if !d.is_zero()) {
            return Err(format!("metadata.annotations.{TTL_ANNOTATION} = {ttl} is not a duration (try \"30s\")"));
        }
    }
    Ok(())
}

fn known_kinds() -> String {
    kinds::KINDS.iter().map(|k| k.kind).collect::<Vec<_>>().join(", ")
}

/// The wire form of an object for the sinks, once per version: for Envoy
/// kinds its `google.protobuf.Any`, for Istio kinds its MCP item (crate::mcp);
/// `None` for kinds with no protobuf form.
pub fn encode_resource(
    info: &KindInfo,
    key: &ResourceKey,
    body: &Body,
    version: u64,
    created_at: std::time::SystemTime,
) -> Option<Result<Bytes, String>> {
    // Registry kinds (Services, EndpointSlices, Pods: most objects of a
    // cluster) have no wire form: skip parsing their bodies.
    if let Encoding::Kubernetes { .. } = info.encoding {
        return None;
    }
    let value = body.to_value();
    let mut spec = value.get("spec").and_then(Value::as_object).cloned().unwrap_or_default();
    match info.encoding {
        Encoding::Envoy { message, name_field } => {
            if let Some(name) = value.pointer("/metadata/name") {
                spec.insert(name_field.to_string(), name.clone());
            }
            Some(
                transcode::encode_json(message, &Value::Object(spec))
                    .map(|bytes| transcode::encode_any(&info.type_url().expect("envoy kind"), &bytes))
                    .map_err(|e| e.to_string()),
            )
        }
        Encoding::Istio { message, .. } => Some(
            transcode::encode_istio_json(message, &Value::Object(spec))
                .map(|spec| crate::mcp::encode_item(message, key, &value, &spec, version, created_at))
                .map_err(|e| e.to_string()),
        ),
        Encoding::Kubernetes { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn istio_object_gets_default_namespace_and_loses_noise() {
        let v = json!({ "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": { "name": "r", "resourceVersion": "77", "uid": "x" },
            "spec": { "hosts": ["r"] }, "status": { "x": 1 } });
        let o = parse_object(&v).unwrap();
        assert_eq!(o.key.to_string(), "networking.istio.io/VirtualService/default/r");
        let body = o.body.to_value();
        assert_eq!(body["metadata"], json!({ "name": "r", "namespace": "default" }));
        let mut applied = v.clone();
        applied["metadata"]["annotations"] = json!({ "kubectl.kubernetes.io/last-applied-configuration": "{…}" });
        assert_eq!(parse_object(&applied).unwrap().body, o.body, "kubectl's copy of the object is noise");
        assert!(body.get("status").is_none());
        // A relist with another resourceVersion is the same body.
        let mut again = v.clone();
        again["metadata"]["resourceVersion"] = json!("78");
        assert_eq!(parse_object(&again).unwrap().body, o.body);
    }

    #[test]
    fn envoy_object_is_cluster_scoped_and_named_from_its_spec() {
        let v = json!({ "apiVersion": "xds.keelson.dev/v1", "kind": "ClusterLoadAssignment",
            "spec": { "cluster_name": "reviews", "endpoints": [] } });
        let o = parse_object(&v).unwrap();
        assert_eq!(o.key.to_string(), "xds.keelson.dev/ClusterLoadAssignment//reviews");
        let info = kinds::lookup("xds.keelson.dev", "ClusterLoadAssignment").unwrap();
        let any = encode_resource(info, &o.key, &o.body, 1, std::time::SystemTime::UNIX_EPOCH).unwrap().unwrap();
        let any = <prost_types::Any as prost::Message>::decode(any.as_ref()).unwrap();
        assert_eq!(any.type_url, "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment");
    }

    #[test]
    fn errors_say_which_field() {
        let cases = [
            (json!({ "kind": "VirtualService" }), "apiVersion is required"),
            (json!({ "apiVersion": "v9", "kind": "Gizmo", "metadata": { "name": "g" } }), "unknown kind Gizmo"),
            (
                json!({ "apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": { "name": "r" }, "spec": {} }),
                "spec.hosts is required",
            ),
            (
                json!({ "apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "spec": { "hosts": ["a"] } }),
                "metadata.name is required",
            ),
            (
                json!({ "apiVersion": "xds.keelson.dev/v1", "kind": "Cluster", "metadata": { "name": "a" }, "spec": { "name": "b" } }),
                "differ",
            ),
            (
                json!({ "apiVersion": "xds.keelson.dev/v1", "kind": "Cluster", "spec": { "name": "a", "lb_policy": "SOMETIMES" } }),
                "lb_policy",
            ),
            (
                json!({ "apiVersion": "xds.keelson.dev/v1", "kind": "Cluster", "metadata": { "namespace": "x" }, "spec": { "name": "a" } }),
                "cluster-scoped",
            ),
            (
                json!({ "apiVersion": "xds.keelson.dev/v1", "kind": "Cluster", "metadata": { "annotations": { "keelson.dev/ttl": "soon" } }, "spec": { "name": "a" } }),
                "keelson.dev/ttl",
            ),
            (
                json!({ "apiVersion": "xds.keelson.dev/v1", "kind": "Cluster", "metadata": { "labels": { "keelson.dev/proxy-group": "" } }, "spec": { "name": "a" } }),
                "keelson.dev/proxy-group",
            ),
            (
                json!({ "apiVersion": "xds.keelson.dev/v1", "kind": "Cluster", "spec": {} }),
                "spec.name (or metadata.name) is required",
            ),
        ];
        for (v, want) in cases {
            let err = parse_object(&v).unwrap_err();
            assert!(err.contains(want), "{v}: {err:?} lacks {want:?}");
        }
    }

    fn vs(namespace: &str, name: &str) -> Value {
        json!({ "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": { "name": name, "namespace": namespace }, "spec": { "hosts": ["r"] } })
    }

    #[test]
    fn keys_split_one_way_only() {
        // namespace "a/b" + name "c" and namespace "a" + name "b/c" were one key.
        assert!(parse_object(&vs("a/b", "c")).unwrap_err().contains("metadata.namespace"));
        assert!(parse_object(&vs("a", "b/c")).unwrap_err().contains("name \"b/c\" is invalid"));
        let ok = parse_object(&vs("a", "c")).unwrap();
        assert_eq!(ResourceKey::parse(&ok.key.to_string()).unwrap(), ok.key);
    }

    #[test]
    fn hostile_names_are_refused_with_escaped_errors() {
        let long = "a".repeat(70_000);
        for name in ["../etc", "a\0b", "line\nforged", "tab\tbed", "rtl\u{202E}txt", "   ", long.as_str()] {
            let err = parse_object(&vs("default", name)).unwrap_err();
            assert!(!err.contains('\n') && !err.contains('\0') && !err.contains('\u{202E}'), "{err:?}");
            assert!(err.len() < 400, "error is {} bytes", err.len());
        }
        let envoy =
            |name: &str| json!({ "apiVersion": "xds.keelson.dev/v1", "kind": "Cluster", "spec": { "name": name } });
        assert!(parse_object(&envoy("outbound|9080||reviews.default.svc.cluster.local")).is_ok());
        assert!(parse_object(&envoy("two words")).unwrap_err().contains("not visible ASCII"));
        assert!(parse_object(&envoy(&"c".repeat(70_000))).unwrap_err().contains("longer than 1024"));
        let svc = json!({ "apiVersion": "v1", "kind": "Service", "metadata": { "name": "1st" }, "spec": {} });
        assert!(parse_object(&svc).unwrap_err().contains("DNS-1035"));
    }

    #[test]
    fn oversized_objects_are_refused() {
        let limits = Limits { max_resource_bytes: 4096 };
        let cluster = |n: usize| {
            let hosts: Vec<Value> = (0..n)
                .map(|i| json!({ "endpoint": { "address": { "socket_address": { "address": format!("10.0.{}.{}", i / 250, i % 250), "port_value": 80 } } } }))
                .collect();
            json!({ "apiVersion": "xds.keelson.dev/v1", "kind": "ClusterLoadAssignment",
                "spec": { "cluster_name": "big", "endpoints": [{ "lb_endpoints": hosts }] } })
        };
        assert!(parse_object_within(&cluster(10), &limits).is_ok());
        let err = parse_object_within(&cluster(2000), &limits).unwrap_err();
        assert!(err.contains("above [limits] max_resource_bytes = 4096") && err.contains("(encoded)"), "{err}");
        let mut big_vs = vs("default", "r");
        big_vs["spec"]["hosts"] = json!(vec!["h".repeat(100); 100]);
        assert!(parse_object_within(&big_vs, &limits).unwrap_err().contains("canonical JSON"));
        assert!(check_key(&ResourceKey::new("networking.istio.io", "VirtualService", "a/b", "c")).is_err());
        assert!(check_key(&ResourceKey::new("xds.keelson.dev", "Cluster", "", "a|b")).is_ok());
    }
}
