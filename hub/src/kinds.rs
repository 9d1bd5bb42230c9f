//! The kinds of object Keelson accepts, and what each needs.

use crate::names::NameRule;

/// How an object of a kind is checked and encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// A raw Envoy resource: `spec` is the message in proto3 JSON.
    /// `name_field` is the message field that holds the resource name.
    Envoy { message: &'static str, name_field: &'static str },
    /// An Istio config object: `spec` is the message in proto3 JSON (the
    /// project's own .proto files, istio/api's wire format) and must hold
    /// `required` fields. `message` is its proto name, which is also the MCP
    /// body's type, whatever API version the object was written in
    /// (PROTOCOL.md §4).
    Istio { message: &'static str, required: &'static [&'static str] },
    /// A Kubernetes object carried for service discovery.
    Kubernetes { required: &'static [&'static str] },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KindInfo {
    pub group: &'static str,
    pub kind: &'static str,
    /// Cluster-scoped kinds (raw Envoy resources) have an empty namespace.
    pub namespaced: bool,
    pub encoding: Encoding,
    /// The rule `metadata.name` follows (crate::names).
    pub name_rule: NameRule,
    /// A registry kind, held per Kubernetes cluster: its keys carry the
    /// cluster (`…@east`), so two clusters' objects never meet. Config
    /// kinds are cluster-less and conflict instead (crate::conflict).
    pub per_cluster: bool,
}

impl KindInfo {
    /// `type.googleapis.com/<message>` for Envoy kinds.
    pub fn type_url(&self) -> Option<String> {
        match self.encoding {
            Encoding::Envoy { message, .. } => Some(format!("type.googleapis.com/{message}")),
            _ => None,
        }
    }

    /// The protobuf message a kind's `spec` transcodes to, if it has one.
    pub fn message(&self) -> Option<&'static str> {
        match self.encoding {
            Encoding::Envoy { message, .. } | Encoding::Istio { message, .. } => Some(message),
            Encoding::Kubernetes { .. } => None,
        }
    }
}

pub const ENVOY_GROUP: &str = "xds.keelson.dev";

const fn envoy(kind: &'static str, message: &'static str, name_field: &'static str) -> KindInfo {
    KindInfo {
        group: ENVOY_GROUP,
        kind,
        namespaced: false,
        encoding: Encoding::Envoy { message, name_field },
        name_rule: NameRule::EnvoyPrintable,
        per_cluster: false,
    }
}

const fn istio(
    group: &'static str,
    kind: &'static str,
    message: &'static str,
    required: &'static [&'static str],
) -> KindInfo {
    KindInfo {
        group,
        kind,
        namespaced: true,
        encoding: Encoding::Istio { message, required },
        name_rule: NameRule::Dns1123Subdomain,
        per_cluster: false,
    }
}

/// A Kubernetes registry kind: translation reads it, no sink serves it.
const fn registry(
    group: &'static str,
    kind: &'static str,
    namespaced: bool,
    required: &'static [&'static str],
    name_rule: NameRule,
) -> KindInfo {
    KindInfo { group, kind, namespaced, encoding: Encoding::Kubernetes { required }, name_rule, per_cluster: true }
}

/// Every kind Keelson knows. Required Istio fields follow what istiod's own
/// validation insists on for a usable object.
pub const KINDS: &[KindInfo] = &[
    envoy("Cluster", "envoy.config.cluster.v3.Cluster", "name"),
    envoy("Listener", "envoy.config.listener.v3.Listener", "name"),
    envoy("RouteConfiguration", "envoy.config.route.v3.RouteConfiguration", "name"),
    envoy("ClusterLoadAssignment", "envoy.config.endpoint.v3.ClusterLoadAssignment", "cluster_name"),
    envoy("Secret", "envoy.extensions.transport_sockets.tls.v3.Secret", "name"),
    istio("networking.istio.io", "VirtualService", "istio.networking.v1alpha3.VirtualService", &["hosts"]),
    istio("networking.istio.io", "DestinationRule", "istio.networking.v1alpha3.DestinationRule", &["host"]),
    istio("networking.istio.io", "Gateway", "istio.networking.v1alpha3.Gateway", &["servers"]),
    istio("networking.istio.io", "ServiceEntry", "istio.networking.v1alpha3.ServiceEntry", &["hosts"]),
    istio("networking.istio.io", "Sidecar", "istio.networking.v1alpha3.Sidecar", &[]),
    istio("networking.istio.io", "WorkloadEntry", "istio.networking.v1alpha3.WorkloadEntry", &[]),
    istio("networking.istio.io", "WorkloadGroup", "istio.networking.v1alpha3.WorkloadGroup", &["template"]),
    istio("networking.istio.io", "EnvoyFilter", "istio.networking.v1alpha3.EnvoyFilter", &[]),
    istio("networking.istio.io", "ProxyConfig", "istio.networking.v1beta1.ProxyConfig", &[]),
    istio("security.istio.io", "AuthorizationPolicy", "istio.security.v1beta1.AuthorizationPolicy", &[]),
    istio("security.istio.io", "PeerAuthentication", "istio.security.v1beta1.PeerAuthentication", &[]),
    istio("security.istio.io", "RequestAuthentication", "istio.security.v1beta1.RequestAuthentication", &[]),
    istio("telemetry.istio.io", "Telemetry", "istio.telemetry.v1alpha1.Telemetry", &[]),
    istio("extensions.istio.io", "WasmPlugin", "istio.extensions.v1alpha1.WasmPlugin", &["url"]),
    // kube-apiserver validates Service names as DNS-1035 labels (ValidateServiceName).
    registry("", "Service", true, &["spec"], NameRule::Dns1035Label),
    registry("discovery.k8s.io", "EndpointSlice", true, &["addressType", "endpoints"], NameRule::Dns1123Subdomain),
    // Pods and Nodes are kept reduced to what translation reads (crate::reduce).
    registry("", "Pod", true, &[], NameRule::Dns1123Subdomain),
    registry("", "Node", false, &[], NameRule::Dns1123Subdomain),
];

pub fn lookup(group: &str, kind: &str) -> Option<&'static KindInfo> {
    KINDS.iter().find(|k| k.group == group && k.kind == kind)
}

/// The group of a kind name, when exactly one known group has it.
pub fn group_of(kind: &str) -> Option<&'static str> {
    let mut groups = KINDS.iter().filter(|k| k.kind == kind).map(|k| k.group);
    let first = groups.next()?;
    groups.next().is_none().then_some(first)
}
