//! The resource kinds the fake serves, and the versions each is served in.
//!
//! One object is stored once per (group, resource) and answered in whichever
//! served version the request names, as the real apiserver does for a CRD with
//! several `served: true` versions (it converts on read; Istio's CRDs use the
//! `None` conversion strategy, so only `apiVersion` changes).

/// One kind as API discovery describes it (an `APIResource` entry).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceKind {
    /// API group; `""` is the core group served under `/api`.
    pub group: String,
    /// Served versions, the preferred (storage) one first: discovery lists
    /// them in this order and `preferredVersion` is the first.
    pub versions: Vec<String>,
    /// Plural resource name used in paths (`services`, `virtualservices`).
    pub resource: String,
    pub singular: String,
    pub kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
}

impl ResourceKind {
    pub fn new(group: &str, versions: &[&str], resource: &str, kind: &str, namespaced: bool) -> Self {
        ResourceKind {
            group: group.to_owned(),
            versions: versions.iter().map(|v| (*v).to_owned()).collect(),
            resource: resource.to_owned(),
            singular: kind.to_ascii_lowercase(),
            kind: kind.to_owned(),
            namespaced,
            short_names: Vec::new(),
        }
    }

    pub fn with_short_names(mut self, names: &[&str]) -> Self {
        self.short_names = names.iter().map(|n| (*n).to_owned()).collect();
        self
    }

    /// `apiVersion` of this kind in `version`: `v1` for the core group, `group/version` otherwise.
    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() { version.to_owned() } else { format!("{}/{}", self.group, version) }
    }

    /// The resource as RBAC and Status messages name it: `services`, `virtualservices.networking.istio.io`.
    pub fn qualified_resource(&self) -> String {
        if self.group.is_empty() { self.resource.clone() } else { format!("{}.{}", self.resource, self.group) }
    }

    pub fn serves(&self, version: &str) -> bool {
        self.versions.iter().any(|v| v == version)
    }
}

/// Istio ≥ 1.22 serves v1 next to the older versions; the CRDs of Istio 1.2x keep
/// v1beta1 and v1alpha3 served (istio/istio `manifests/charts/base/files/crd-all.gen.yaml`).
const NETWORKING_VERSIONS: &[&str] = &["v1", "v1beta1", "v1alpha3"];
const SECURITY_VERSIONS: &[&str] = &["v1", "v1beta1"];
const TELEMETRY_VERSIONS: &[&str] = &["v1", "v1alpha1"];

/// The default catalog: the registry kinds Keelson reads and the Istio CRDs of a current cluster.
pub fn default_kinds() -> Vec<ResourceKind> {
    let net = "networking.istio.io";
    let mut kinds = vec![
        ResourceKind::new("", &["v1"], "services", "Service", true).with_short_names(&["svc"]),
        ResourceKind::new("", &["v1"], "pods", "Pod", true).with_short_names(&["po"]),
        ResourceKind::new("", &["v1"], "nodes", "Node", false).with_short_names(&["no"]),
        ResourceKind::new("", &["v1"], "namespaces", "Namespace", false).with_short_names(&["ns"]),
        ResourceKind::new("discovery.k8s.io", &["v1"], "endpointslices", "EndpointSlice", true),
    ];
    for (resource, kind, short) in [
        ("virtualservices", "VirtualService", "vs"),
        ("destinationrules", "DestinationRule", "dr"),
        ("gateways", "Gateway", "gw"),
        ("serviceentries", "ServiceEntry", "se"),
        ("sidecars", "Sidecar", ""),
        ("workloadentries", "WorkloadEntry", "we"),
        ("workloadgroups", "WorkloadGroup", "wg"),
    ] {
        let k = ResourceKind::new(net, NETWORKING_VERSIONS, resource, kind, true);
        kinds.push(if short.is_empty() { k } else { k.with_short_names(&[short]) });
    }
    kinds.push(ResourceKind::new(net, &["v1alpha3"], "envoyfilters", "EnvoyFilter", true));
    kinds.push(ResourceKind::new(net, &["v1beta1"], "proxyconfigs", "ProxyConfig", true));
    for (resource, kind, short) in [
        ("authorizationpolicies", "AuthorizationPolicy", "ap"),
        ("peerauthentications", "PeerAuthentication", "pa"),
        ("requestauthentications", "RequestAuthentication", "ra"),
    ] {
        kinds.push(
            ResourceKind::new("security.istio.io", SECURITY_VERSIONS, resource, kind, true).with_short_names(&[short]),
        );
    }
    kinds.push(
        ResourceKind::new("telemetry.istio.io", TELEMETRY_VERSIONS, "telemetries", "Telemetry", true)
            .with_short_names(&["telemetry"]),
    );
    kinds.push(ResourceKind::new("extensions.istio.io", &["v1alpha1"], "wasmplugins", "WasmPlugin", true));
    kinds
}
