//! Listeners: outbound listeners for Envoy sidecars without traffic capture
//! (Istio's Sidecar `captureMode: NONE` + `bind` model) and API listeners
//! for proxyless gRPC (istiod's `grpcgen/lds.go`).

use serde_json::{Value, json};

use super::route::FAULT_FILTER;

const HCM_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const TCP_PROXY_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
const ROUTER_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
const FAULT_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault";

/// The HTTP filters every HCM gets: fault (for VirtualService faults, set per
/// route), then the router, last as Envoy and gRPC require.
fn http_filters() -> Value {
    json!([
        { "name": FAULT_FILTER, "typed_config": { "@type": FAULT_TYPE } },
        { "name": "envoy.filters.http.router", "typed_config": { "@type": ROUTER_TYPE } },
    ])
}

fn hcm(stat_prefix: &str, route_config_name: &str) -> Value {
    json!({
        "@type": HCM_TYPE,
        "stat_prefix": stat_prefix,
        "rds": { "route_config_name": route_config_name, "config_source": { "ads": {}, "resource_api_version": "V3" } },
        "http_filters": http_filters(),
    })
}

/// The outbound listener name for a port: istiod names its capture
/// listeners `0.0.0.0_<port>`; ours bind the configured address.
pub fn outbound_name(address: &str, port: u32) -> String {
    format!("{address}_{port}")
}

/// An HTTP outbound listener on `address:port`, routed by RDS `<port>`.
pub fn outbound_http(address: &str, port: u32) -> Value {
    let name = outbound_name(address, port);
    json!({
        "name": name,
        "address": { "socket_address": { "address": address, "port_value": port } },
        "filter_chains": [{ "filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": hcm(&name, &port.to_string()),
        }] }],
        "traffic_direction": "OUTBOUND",
    })
}

/// A TCP outbound listener on `address:port`, proxying to `cluster`.
pub fn outbound_tcp(address: &str, port: u32, cluster: &str) -> Value {
    let name = outbound_name(address, port);
    json!({
        "name": name,
        "address": { "socket_address": { "address": address, "port_value": port } },
        "filter_chains": [{ "filters": [{
            "name": "envoy.filters.network.tcp_proxy",
            "typed_config": { "@type": TCP_PROXY_TYPE, "stat_prefix": name, "cluster": cluster },
        }] }],
        "traffic_direction": "OUTBOUND",
    })
}

/// The API listener `<host>:<port>` a proxyless gRPC client resolves for
/// `xds:///<host>:<port>`, with RDS `route_config_name`.
pub fn grpc_api(name: &str, route_config_name: &str) -> Value {
    json!({
        "name": name,
        "api_listener": { "api_listener": hcm(name, route_config_name) },
    })
}
