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
}

/// One servable type URL and the hub kind behind it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServedType {
    pub type_url: &'static str,
    /// Short name for tables and metrics labels.
    pub short: &'static str,
    pub group: &'static str,
    pub kind: &'static str,
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

/// The types the server knows, in push order.
pub const SERVED: &[ServedType] = &[
    ServedType { refreshes: Some(ENDPOINT), ..envoy(CLUSTER, "CDS", "Cluster", true, 0) },
    envoy(ENDPOINT, "EDS", "ClusterLoadAssignment", false, 1),
    envoy(LISTENER, "LDS", "Listener", true, 2),
    envoy(ROUTE, "RDS", "RouteConfiguration", false, 3),
    envoy(SECRET, "SDS", "Secret", false, 4),
];

/// Order given to type URLs the server does not know: after every known one.
pub const UNKNOWN_ORDER: u8 = u8::MAX;

pub fn lookup(type_url: &str) -> Option<&'static ServedType> {
    SERVED.iter().find(|t| t.type_url == type_url)
}

/// Short name of any type URL: the table's, else the last path segment.
pub fn short_name(type_url: &str) -> &str {
    lookup(type_url).map_or_else(|| type_url.rsplit(['/', '.']).next().unwrap_or(type_url), |t| t.short)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_served_type_is_a_known_kind_with_that_type_url() {
        for t in SERVED {
            let info = keelson_hub::kinds::lookup(t.group, t.kind).expect("kind registered");
            assert_eq!(info.type_url().as_deref(), Some(t.type_url), "{}", t.short);
        }
        assert_eq!(short_name("type.googleapis.com/envoy.service.runtime.v3.Runtime"), "Runtime");
    }
}
