//! The type URLs the xDS server answers, as data.
//!
//! One stream machine serves every entry here; a new family of types (Istio
//! MCP kinds, say) is a new table row plus, if its items are wrapped
//! differently, a new [`ItemForm`] — never a copy of the stream code.

use keelson_hub::kinds::ENVOY_GROUP;

/// How an item of a type goes on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ItemForm {
    /// The resource's own encoded `google.protobuf.Any`.
    EnvoyAny,
    /// An Istio object as an MCP item, `Any(istio.mcp.v1alpha1.Resource)`,
    /// named `<namespace>/<name>`, filtered by the client's revision
    /// (PROTOCOL.md §2a; built once per version by the hub).
    McpResource,
    /// The configured mesh config, one unwrapped
    /// `Any(istio.mesh.v1alpha1.MeshConfig)`: istiod reads it without the
    /// MCP wrapper.
    MeshConfig,
}

impl ItemForm {
    pub fn is_mcp(self) -> bool {
        matches!(self, ItemForm::McpResource | ItemForm::MeshConfig)
    }
}

/// One servable type URL and the hub kind behind it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServedType {
    pub type_url: &'static str,
    /// Short name for tables and metrics labels.
    pub short: &'static str,
    pub group: &'static str,
    pub kind: &'static str,
    /// Items are named `<namespace>/<name>` (MCP) rather than by name alone.
    pub namespaced: bool,
    /// SotW responses hold every subscribed resource (LDS, CDS): a name
    /// missing from one means "deleted" to the client.
    pub full_state: bool,
    /// Push order within one change: make-before-break on ADS is
    /// CDS → EDS → LDS → RDS, so every reference lands after its target.
    pub order: u8,
    /// A push of this type makes the client want a fresh response of the
    /// named type even if unchanged: Envoy warms a cluster until it gets a
    /// new ClusterLoadAssignment after every CDS update.
    pub refreshes: Option<&'static str>,
    pub form: ItemForm,
}

const fn envoy(
    type_url: &'static str,
    short: &'static str,
    kind: &'static str,
    full_state: bool,
    order: u8,
) -> ServedType {
    ServedType {
        type_url,
        short,
        group: ENVOY_GROUP,
        kind,
        namespaced: false,
        full_state,
        order,
        refreshes: None,
        form: ItemForm::EnvoyAny,
    }
}

pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
/// The type URL istiod asks its mesh config under (no `type.googleapis.com/`).
pub const MESH_CONFIG: &str = "core/v1alpha1/MeshConfig";

/// An Istio kind under one of the GVK strings istiod requests it by:
/// `<group>/<version>/<Kind>`, no `type.googleapis.com/` prefix. Both the
/// Istio ≤ 1.23 versions and the ≥ 1.24 ones are rows of their own, keyed
/// to the same hub kind, so whichever a client asks is answered and echoed
/// (PROTOCOL.md §4).
const fn mcp(type_url: &'static str, group: &'static str, kind: &'static str) -> ServedType {
    ServedType {
        type_url,
        short: kind,
        group,
        kind,
        namespaced: true,
        full_state: true,
        order: 6,
        refreshes: None,
        form: ItemForm::McpResource,
    }
}

/// The types the server knows, in push order.
pub const SERVED: &[ServedType] = &[
    ServedType { refreshes: Some(ENDPOINT), ..envoy(CLUSTER, "CDS", "Cluster", true, 0) },
    envoy(ENDPOINT, "EDS", "ClusterLoadAssignment", false, 1),
    envoy(LISTENER, "LDS", "Listener", true, 2),
    envoy(ROUTE, "RDS", "RouteConfiguration", false, 3),
    envoy(SECRET, "SDS", "Secret", false, 4),
    ServedType {
        type_url: MESH_CONFIG,
        short: "MeshConfig",
        group: "",
        kind: "MeshConfig",
        namespaced: false,
        full_state: true,
        order: 5,
        refreshes: None,
        form: ItemForm::MeshConfig,
    },
    // Istio ≥ 1.24 (v1 where the kind has one).
    mcp("networking.istio.io/v1/VirtualService", "networking.istio.io", "VirtualService"),
    mcp("networking.istio.io/v1/DestinationRule", "networking.istio.io", "DestinationRule"),
    mcp("networking.istio.io/v1/Gateway", "networking.istio.io", "Gateway"),
    mcp("networking.istio.io/v1/ServiceEntry", "networking.istio.io", "ServiceEntry"),
    mcp("networking.istio.io/v1/Sidecar", "networking.istio.io", "Sidecar"),
    mcp("networking.istio.io/v1/WorkloadEntry", "networking.istio.io", "WorkloadEntry"),
    mcp("networking.istio.io/v1/WorkloadGroup", "networking.istio.io", "WorkloadGroup"),
    mcp("security.istio.io/v1/AuthorizationPolicy", "security.istio.io", "AuthorizationPolicy"),
    mcp("security.istio.io/v1/PeerAuthentication", "security.istio.io", "PeerAuthentication"),
    mcp("security.istio.io/v1/RequestAuthentication", "security.istio.io", "RequestAuthentication"),
    mcp("telemetry.istio.io/v1/Telemetry", "telemetry.istio.io", "Telemetry"),
    // The same in every version.
    mcp("networking.istio.io/v1alpha3/EnvoyFilter", "networking.istio.io", "EnvoyFilter"),
    mcp("networking.istio.io/v1beta1/ProxyConfig", "networking.istio.io", "ProxyConfig"),
    mcp("extensions.istio.io/v1alpha1/WasmPlugin", "extensions.istio.io", "WasmPlugin"),
    // Istio ≤ 1.23.
    mcp("networking.istio.io/v1alpha3/VirtualService", "networking.istio.io", "VirtualService"),
    mcp("networking.istio.io/v1alpha3/DestinationRule", "networking.istio.io", "DestinationRule"),
    mcp("networking.istio.io/v1alpha3/Gateway", "networking.istio.io", "Gateway"),
    mcp("networking.istio.io/v1alpha3/ServiceEntry", "networking.istio.io", "ServiceEntry"),
    mcp("networking.istio.io/v1alpha3/Sidecar", "networking.istio.io", "Sidecar"),
    mcp("networking.istio.io/v1alpha3/WorkloadEntry", "networking.istio.io", "WorkloadEntry"),
    mcp("networking.istio.io/v1alpha3/WorkloadGroup", "networking.istio.io", "WorkloadGroup"),
    mcp("security.istio.io/v1beta1/AuthorizationPolicy", "security.istio.io", "AuthorizationPolicy"),
    mcp("security.istio.io/v1beta1/PeerAuthentication", "security.istio.io", "PeerAuthentication"),
    mcp("security.istio.io/v1beta1/RequestAuthentication", "security.istio.io", "RequestAuthentication"),
    mcp("telemetry.istio.io/v1alpha1/Telemetry", "telemetry.istio.io", "Telemetry"),
];

/// An Istio kind as the legacy Galley MCP services name it (PROTOCOL.md
/// §2b; docs/mcp-legacy.md). Items are the same MCP `Resource`s the
/// MCP-over-xDS rows serve, so a row names its kind and nothing else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LegacyName {
    /// `istio/<area>/<version>/<plural>`: what `ResourceSource` sinks ask for
    /// (and what Istio 1.1+'s pkg/mcp client put in `type_url`).
    pub collection: &'static str,
    /// `type.googleapis.com/<body message>`: Istio 1.0's `type_url`.
    pub type_url: &'static str,
    pub group: &'static str,
    pub kind: &'static str,
}

/// One [`LegacyName`] row: the collection and the type URL both follow from
/// the body's proto package (`istio.<area>.<version>`).
macro_rules! legacy {
    ($area:literal, $version:literal, $plural:literal, $group:literal, $kind:literal) => {
        LegacyName {
            collection: concat!("istio/", $area, "/", $version, "/", $plural),
            type_url: concat!("type.googleapis.com/istio.", $area, ".", $version, ".", $kind),
            group: $group,
            kind: $kind,
        }
    };
}

/// Every Istio kind under its Galley-era names (plurals from Galley's
/// metadata.yaml; ProxyConfig never had a Galley collection and follows the
/// same pattern).
pub const LEGACY: &[LegacyName] = &[
    legacy!("networking", "v1alpha3", "virtualservices", "networking.istio.io", "VirtualService"),
    legacy!("networking", "v1alpha3", "destinationrules", "networking.istio.io", "DestinationRule"),
    legacy!("networking", "v1alpha3", "gateways", "networking.istio.io", "Gateway"),
    legacy!("networking", "v1alpha3", "serviceentries", "networking.istio.io", "ServiceEntry"),
    legacy!("networking", "v1alpha3", "sidecars", "networking.istio.io", "Sidecar"),
    legacy!("networking", "v1alpha3", "workloadentries", "networking.istio.io", "WorkloadEntry"),
    legacy!("networking", "v1alpha3", "workloadgroups", "networking.istio.io", "WorkloadGroup"),
    legacy!("networking", "v1alpha3", "envoyfilters", "networking.istio.io", "EnvoyFilter"),
    legacy!("networking", "v1beta1", "proxyconfigs", "networking.istio.io", "ProxyConfig"),
    legacy!("security", "v1beta1", "authorizationpolicies", "security.istio.io", "AuthorizationPolicy"),
    legacy!("security", "v1beta1", "peerauthentications", "security.istio.io", "PeerAuthentication"),
    legacy!("security", "v1beta1", "requestauthentications", "security.istio.io", "RequestAuthentication"),
    legacy!("telemetry", "v1alpha1", "telemetries", "telemetry.istio.io", "Telemetry"),
    legacy!("extensions", "v1alpha1", "wasmplugins", "extensions.istio.io", "WasmPlugin"),
];

/// The served row a legacy name's items come from: its kind's MCP row.
pub fn legacy_served(name: &LegacyName) -> &'static ServedType {
    SERVED
        .iter()
        .find(|t| t.form == ItemForm::McpResource && t.group == name.group && t.kind == name.kind)
        .expect("every legacy kind has an MCP row (tested)")
}

/// A legacy name by collection only (`ResourceSource`).
pub fn legacy_collection(collection: &str) -> Option<&'static LegacyName> {
    LEGACY.iter().find(|l| l.collection == collection)
}

/// A legacy name by type URL or collection (`AggregatedMeshConfigService`).
pub fn legacy_type(name: &str) -> Option<&'static LegacyName> {
    LEGACY.iter().find(|l| l.type_url == name || l.collection == name)
}

/// The short name tables and metrics labels use for a known type URL or
/// legacy name; None for anything else (client-chosen strings).
pub fn short_label(type_url: &str) -> Option<&'static str> {
    lookup(type_url).map(|t| t.short).or_else(|| legacy_type(type_url).map(|l| l.kind))
}

/// Order given to type URLs the server does not know: after every known one.
pub const UNKNOWN_ORDER: u8 = u8::MAX;

pub fn lookup(type_url: &str) -> Option<&'static ServedType> {
    SERVED.iter().find(|t| t.type_url == type_url)
}

/// Short name of any type URL: the table's, else the last path segment.
pub fn short_name(type_url: &str) -> &str {
    short_label(type_url).unwrap_or_else(|| type_url.rsplit(['/', '.']).next().unwrap_or(type_url))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_served_type_is_a_known_kind_with_that_type_url() {
        for t in SERVED.iter().filter(|t| t.form == ItemForm::EnvoyAny) {
            let info = keelson_hub::kinds::lookup(t.group, t.kind).expect("kind registered");
            assert_eq!(info.type_url().as_deref(), Some(t.type_url), "{}", t.short);
        }
        assert_eq!(short_name("type.googleapis.com/envoy.service.runtime.v3.Runtime"), "Runtime");
    }

    /// istiod 1.23 and 1.24+ request every Istio kind by these GVKs
    /// (PROTOCOL.md §4): each is served, keyed to its hub kind.
    #[test]
    fn every_istio_kind_is_served_under_both_istio_version_sets() {
        use keelson_hub::kinds::{Encoding, KINDS};
        let both: &[(&str, &str)] = &[("v1alpha3", "v1"), ("v1beta1", "v1"), ("v1alpha1", "v1")];
        for info in KINDS.iter().filter(|k| matches!(k.encoding, Encoding::Istio { .. })) {
            let rows: Vec<&ServedType> =
                SERVED.iter().filter(|t| t.group == info.group && t.kind == info.kind).collect();
            assert!(!rows.is_empty(), "{} is not served over MCP", info.kind);
            for row in &rows {
                assert_eq!(row.form, ItemForm::McpResource);
                let version = row.type_url.split('/').nth(1).unwrap();
                assert_eq!(row.type_url, format!("{}/{version}/{}", info.group, info.kind));
            }
            let versions: Vec<&str> = rows.iter().map(|r| r.type_url.split('/').nth(1).unwrap()).collect();
            let single = ["EnvoyFilter", "ProxyConfig", "WasmPlugin"].contains(&info.kind);
            if single {
                assert_eq!(versions.len(), 1, "{}", info.kind);
            } else {
                assert!(versions.contains(&"v1"), "{} lacks its Istio 1.24 version", info.kind);
                assert!(both.iter().any(|(old, _)| versions.contains(old)), "{} lacks its 1.23 version", info.kind);
            }
        }
        assert_eq!(lookup(MESH_CONFIG).map(|t| t.form), Some(ItemForm::MeshConfig));
    }

    /// Every Istio kind has one legacy row, named from its body's proto
    /// package, and the names do not collide with any other table row.
    #[test]
    fn every_istio_kind_has_its_galley_names() {
        use keelson_hub::kinds::{Encoding, KINDS};
        for info in KINDS.iter().filter(|k| matches!(k.encoding, Encoding::Istio { .. })) {
            let rows: Vec<&LegacyName> =
                LEGACY.iter().filter(|l| l.group == info.group && l.kind == info.kind).collect();
            assert_eq!(rows.len(), 1, "{}", info.kind);
            let row = rows[0];
            let message = info.message().unwrap();
            assert_eq!(row.type_url, format!("type.googleapis.com/{message}"));
            let mut package = message.split('.').skip(1);
            let (area, version) = (package.next().unwrap(), package.next().unwrap());
            let prefix = format!("istio/{area}/{version}/");
            let plural = row.collection.strip_prefix(&prefix).unwrap_or_else(|| panic!("{}", row.collection));
            assert!(plural.chars().all(|c| c.is_ascii_lowercase()), "{plural}");
            assert_eq!(legacy_served(row).kind, info.kind);
            assert_eq!(legacy_collection(row.collection), Some(row));
            assert_eq!(legacy_type(row.type_url), Some(row));
            assert!(lookup(row.collection).is_none() && lookup(row.type_url).is_none());
        }
        assert_eq!(short_name("istio/networking/v1alpha3/virtualservices"), "VirtualService");
        assert_eq!(legacy_collection("type.googleapis.com/istio.networking.v1alpha3.VirtualService"), None);
    }
}
