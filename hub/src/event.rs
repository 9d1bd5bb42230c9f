//! The domain events the log records (DESIGN.md §3).

use std::fmt;
use std::time::SystemTime;

use bytes::Bytes;

/// Identifies one configuration object: `group/kind/namespace/name`, and for
/// registry objects read from a Kubernetes cluster, `@cluster`.
///
/// The core Kubernetes group is the empty string and is written `core`.
/// Cluster-scoped objects (raw Envoy resources, Nodes) have an empty namespace.
///
/// Registry kinds (Service, EndpointSlice, Pod, Node: [`crate::kinds::KindInfo::per_cluster`])
/// are held per cluster, so `core/Service/default/reviews@east` and `…@west`
/// are two objects. Config kinds never carry a cluster: the same Istio object
/// from two clusters is one key and a conflict (crate::conflict).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceKey {
    pub group: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// The Kubernetes cluster of a registry object; empty otherwise.
    pub cluster: String,
}

impl ResourceKey {
    pub fn new(group: &str, kind: &str, namespace: &str, name: &str) -> Self {
        ResourceKey {
            group: group.into(),
            kind: kind.into(),
            namespace: namespace.into(),
            name: name.into(),
            cluster: String::new(),
        }
    }

    /// The same key, held for `cluster`.
    pub fn in_cluster(mut self, cluster: &str) -> Self {
        self.cluster = cluster.into();
        self
    }

    /// Parses `group/kind/namespace/name` or `kind/namespace/name` (group
    /// looked up from the kind), each optionally followed by `@cluster` for a
    /// registry kind. The name is the rest of the string, so it may itself
    /// contain `/`. A group is recognised by a `.` or as `core`.
    ///
    /// `@` is read as a cluster only for registry kinds, whose names are DNS
    /// names and cannot hold one; for every other kind it is part of the name.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut key = Self::parse_unclustered(s)?;
        let per_cluster = crate::kinds::lookup(&key.group, &key.kind).is_some_and(|k| k.per_cluster);
        if per_cluster && let Some((name, cluster)) = key.name.rsplit_once('@') {
            crate::names::check_cluster(cluster)?;
            if name.is_empty() {
                return Err(format!("{s:?} has a cluster but no name"));
            }
            key.cluster = cluster.to_string();
            key.name = name.to_string();
        }
        Ok(key)
    }

    fn parse_unclustered(s: &str) -> Result<Self, String> {
        let first = s.split('/').next().unwrap_or_default();
        let explicit_group = first.contains('.') || first == "core";
        let parts: Vec<&str> = s.splitn(if explicit_group { 4 } else { 3 }, '/').collect();
        let bad = || {
            format!(
                "{s:?} is not a resource key: expected group/kind/namespace/name or kind/namespace/name (+ @cluster for registry kinds)"
            )
        };
        match parts.as_slice() {
            [group, kind, ns, name] if !kind.is_empty() && !name.is_empty() => {
                let group = if *group == "core" { "" } else { group };
                Ok(Self::new(group, kind, ns, name))
            }
            [kind, ns, name] if !kind.is_empty() && !name.is_empty() => {
                let group = crate::kinds::group_of(kind)
                    .ok_or_else(|| format!("{}; kind {kind:?} is not one Keelson knows, so give its group", bad()))?;
                Ok(Self::new(group, kind, ns, name))
            }
            _ => Err(bad()),
        }
    }

    /// The bytes the log indexes this key by.
    pub fn index_key(&self) -> Bytes {
        Bytes::from(self.to_string())
    }
}

impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let group = if self.group.is_empty() { "core" } else { &self.group };
        write!(f, "{group}/{}/{}/{}", self.kind, self.namespace, self.name)?;
        if !self.cluster.is_empty() {
            write!(f, "@{}", self.cluster)?;
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SourceKind {
    File,
    Kubernetes,
    Consul,
    Mcp,
    Api,
    /// Written by the hub itself (NACK audit records).
    Hub,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::File => "file",
            SourceKind::Kubernetes => "k8s",
            SourceKind::Consul => "consul",
            SourceKind::Mcp => "mcp",
            SourceKind::Api => "api",
            SourceKind::Hub => "hub",
        }
    }
}

/// Which source saw a change. `cluster` is multi-cluster provenance.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SourceId {
    pub kind: SourceKind,
    pub name: String,
    pub cluster: String,
}

impl SourceId {
    pub fn new(kind: SourceKind, name: &str) -> Self {
        SourceId { kind, name: name.into(), cluster: String::new() }
    }
}

impl fmt::Display for SourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind.as_str(), self.name)?;
        // A Kubernetes source is named after its cluster: `k8s/east`, not `k8s/east@east`.
        if !self.cluster.is_empty() && self.cluster != self.name {
            write!(f, "@{}", self.cluster)?;
        }
        Ok(())
    }
}

/// An object's content: canonical JSON plus its hash. Two bodies with equal
/// hashes are the same object, so a relist that changes nothing is free.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Body {
    json: Bytes,
    hash: u128,
}

impl Body {
    /// Canonical form: compact JSON with object keys sorted (serde_json's
    /// default map is ordered), so equal objects give equal bytes.
    pub fn from_value(value: &serde_json::Value) -> Self {
        let mut json = serde_json::to_vec(value).expect("a JSON value always serializes");
        // The Vec grew by doubling; `Bytes::from` would keep its spare
        // capacity alive as long as the body lives (up to 2x its size).
        json.shrink_to_fit();
        Self::from_canonical(Bytes::from(json))
    }

    pub(crate) fn from_canonical(json: Bytes) -> Self {
        let hash = xxhash_rust::xxh3::xxh3_128(&json);
        Body { json, hash }
    }

    pub(crate) fn from_parts(json: Bytes, hash: u128) -> Self {
        Body { json, hash }
    }

    pub fn json(&self) -> &Bytes {
        &self.json
    }

    pub fn hash(&self) -> u128 {
        self.hash
    }

    pub fn to_value(&self) -> serde_json::Value {
        serde_json::from_slice(&self.json).unwrap_or(serde_json::Value::Null)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Upsert {
        key: ResourceKey,
        source_version: String,
        body: Body,
        location: String,
        /// Who made the change, when the source says (a Kubernetes field
        /// manager); empty otherwise.
        author: String,
    },
    Delete {
        key: ResourceKey,
        source_version: String,
        author: String,
    },
    /// A source began its initial listing.
    SyncStart,
    /// A source finished its initial listing.
    SyncDone,
    /// A proxy rejected a version (xDS NACK), kept for audit.
    Nack {
        node: String,
        type_url: String,
        version: String,
        error: String,
    },
}

impl Op {
    pub fn name(&self) -> &'static str {
        match self {
            Op::Upsert { .. } => "upsert",
            Op::Delete { .. } => "delete",
            Op::SyncStart => "sync_start",
            Op::SyncDone => "sync_done",
            Op::Nack { .. } => "nack",
        }
    }

    pub fn key(&self) -> Option<&ResourceKey> {
        match self {
            Op::Upsert { key, .. } | Op::Delete { key, .. } => Some(key),
            _ => None,
        }
    }
}

/// One entry of the log as the hub sees it: an op, who made it, and the seq
/// and time the log gave it when it became durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub seq: u64,
    pub at: SystemTime,
    pub origin: SourceId,
    pub op: Op,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_print_and_parse() {
        let k = ResourceKey::new("networking.istio.io", "VirtualService", "default", "reviews");
        assert_eq!(k.to_string(), "networking.istio.io/VirtualService/default/reviews");
        assert_eq!(ResourceKey::parse(&k.to_string()).unwrap(), k);
        assert_eq!(ResourceKey::parse("VirtualService/default/reviews").unwrap(), k);
        let svc = ResourceKey::new("", "Service", "default", "reviews");
        assert_eq!(svc.to_string(), "core/Service/default/reviews");
        assert_eq!(ResourceKey::parse("core/Service/default/reviews").unwrap(), svc);
        assert_eq!(ResourceKey::parse("Service/default/reviews").unwrap(), svc);
    }

    #[test]
    fn registry_keys_carry_their_cluster() {
        let east = ResourceKey::new("", "Service", "default", "reviews").in_cluster("east");
        assert_eq!(east.to_string(), "core/Service/default/reviews@east");
        assert_eq!(ResourceKey::parse("core/Service/default/reviews@east").unwrap(), east);
        assert_eq!(ResourceKey::parse("Service/default/reviews@east").unwrap(), east);
        assert_ne!(east, east.clone().in_cluster("west"));
        // Old keys still parse, to the cluster-less object.
        assert_eq!(ResourceKey::parse("Service/default/reviews").unwrap().cluster, "");
        // `@` is a cluster only for registry kinds; an Envoy name may hold one.
        let envoy = ResourceKey::parse("xds.keelson.dev/Cluster//svc@east").unwrap();
        assert_eq!((envoy.name.as_str(), envoy.cluster.as_str()), ("svc@east", ""));
        assert!(ResourceKey::parse("Service/default/reviews@Bad_Cluster").unwrap_err().contains("cluster"));
        assert!(ResourceKey::parse("Service/default/@east").is_err());
    }

    #[test]
    fn cluster_scoped_names_may_hold_slashes() {
        let k = ResourceKey::parse("xds.keelson.dev/RouteConfiguration//local/route").unwrap();
        assert_eq!((k.namespace.as_str(), k.name.as_str()), ("", "local/route"));
        assert_eq!(k.to_string(), "xds.keelson.dev/RouteConfiguration//local/route");
    }

    #[test]
    fn malformed_keys_say_what_is_expected() {
        for bad in ["", "reviews", "default/reviews", "Unknown/ns/name", "a.b/Kind/ns/"] {
            let err = ResourceKey::parse(bad).unwrap_err();
            assert!(err.contains("expected group/kind/namespace/name"), "{bad}: {err}");
        }
    }

    #[test]
    fn bodies_hold_no_spare_capacity() {
        // serde_json grows its output Vec by doubling; a body must not keep
        // that slack alive for as long as the object lives.
        let value =
            serde_json::json!({ "spec": { "hosts": (0..40).map(|i| format!("host-{i}")).collect::<Vec<_>>() } });
        let body = Body::from_value(&value);
        let len = body.json().len();
        let unique = body.json.clone();
        drop(body);
        let buf = unique.try_into_mut().expect("the only reference");
        assert_eq!(buf.capacity(), len, "canonical body of {len} bytes allocated {}", buf.capacity());
    }

    #[test]
    fn bodies_are_canonical() {
        let a = Body::from_value(&serde_json::json!({"b": 1, "a": {"y": 2, "x": 1}}));
        let b = Body::from_value(&serde_json::from_str(r#"{ "a": {"x":1,"y":2}, "b":1 }"#).unwrap());
        assert_eq!(a, b);
        assert_eq!(a.json().as_ref(), br#"{"a":{"x":1,"y":2},"b":1}"#);
        assert_ne!(a.hash(), Body::from_value(&serde_json::json!({"b": 2})).hash());
    }
}
