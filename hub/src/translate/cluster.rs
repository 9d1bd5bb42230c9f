//! Clusters and ClusterLoadAssignments of a service (istiod's
//! `cluster_builder.go`, `cluster_traffic_policy.go`, `endpoint_builder.go`).

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::model::{Endpoint, Health, Protocol, Resolution, Service, ServicePort};
use super::policy::{self, Warn};

/// istiod's `BuildSubsetKey`: `outbound|<port>|<subset>|<host>`.
pub fn cluster_name(port: u32, subset: &str, host: &str) -> String {
    format!("outbound|{port}|{subset}|{host}")
}

/// istiod's default connect timeout (`meshConfig.connectTimeout`).
const CONNECT_TIMEOUT: &str = "10s";

/// The Cluster of one service port (and subset), with the traffic policy
/// that applies to it. `policy` is already merged for the port and subset
/// (crate::translate::policy::effective). Its type follows the service's
/// resolution (istiod's `buildCluster`): EDS; STRICT_DNS with the endpoints
/// inline (`subset_labels` select them, as for EDS); ORIGINAL_DST.
pub fn cluster(
    name: &str,
    svc: &Service,
    port: &ServicePort,
    subset_labels: &BTreeMap<String, String>,
    policy: Option<&Value>,
    warn: &mut Warn,
) -> Value {
    let mut c = json!({ "name": name, "connect_timeout": CONNECT_TIMEOUT, "lb_policy": "ROUND_ROBIN" });
    match svc.resolution {
        Resolution::Endpoints => {
            c["type"] = json!("EDS");
            c["eds_cluster_config"] =
                json!({ "eds_config": { "ads": {}, "resource_api_version": "V3" }, "service_name": name });
        }
        Resolution::Dns => {
            c["type"] = json!("STRICT_DNS");
            // istiod's default: IPv4 answers only, unless the mesh is dual-stack.
            c["dns_lookup_family"] = json!("V4_ONLY");
            c["load_assignment"] = load_assignment(name, svc, port.port, subset_labels);
        }
        Resolution::Passthrough => {
            c["type"] = json!("ORIGINAL_DST");
            c["lb_policy"] = json!("CLUSTER_PROVIDED");
        }
    }
    let mut http_options = Map::new();
    if matches!(port.protocol, Protocol::Http2 | Protocol::Grpc) {
        http_options.insert("explicit_http_config".into(), json!({ "http2_protocol_options": {} }));
    }
    if let Some(policy) = policy {
        policy::apply(policy, &mut c, &mut http_options, warn);
        if svc.resolution == Resolution::Passthrough && c["lb_policy"] != "CLUSTER_PROVIDED" {
            // Envoy refuses any other policy on an ORIGINAL_DST cluster.
            warn.messages.push(format!(
                "trafficPolicy.loadBalancer does not apply to {}: resolution NONE forwards to the address dialled",
                svc.host
            ));
            c["lb_policy"] = json!("CLUSTER_PROVIDED");
            if let Some(o) = c.as_object_mut() {
                o.remove("ring_hash_lb_config");
                o.remove("maglev_lb_config");
            }
        }
    }
    if !http_options.is_empty() {
        if !http_options.contains_key("explicit_http_config") {
            // Options without a protocol choice keep HTTP/1.1 upstream, as Envoy would.
            http_options.insert("explicit_http_config".into(), json!({ "http_protocol_options": {} }));
        }
        http_options.insert("@type".into(), json!(policy::HTTP_PROTOCOL_OPTIONS_TYPE));
        c["typed_extension_protocol_options"] =
            json!({ "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": Value::Object(http_options) });
    }
    c
}

/// The ClusterLoadAssignment of `name`: the endpoints of `port` whose labels
/// include `subset_labels`, one LocalityLbEndpoints per locality in locality
/// order. Every group sets `locality` and a positive
/// `load_balancing_weight` (the endpoint count), which proxyless gRPC
/// requires (PROTOCOL.md §5).
pub fn load_assignment(name: &str, svc: &Service, port: u32, subset_labels: &BTreeMap<String, String>) -> Value {
    let selected = svc
        .endpoints
        .iter()
        .filter(|e| e.service_port == port)
        .filter(|e| subset_labels.iter().all(|(k, v)| e.labels.get(k) == Some(v)));
    let mut by_locality: BTreeMap<_, Vec<&Endpoint>> = BTreeMap::new();
    for e in selected {
        by_locality.entry(&e.locality).or_default().push(e);
    }
    let groups: Vec<Value> = by_locality
        .into_iter()
        .map(|(l, eps)| {
            let lb_endpoints: Vec<Value> = eps
                .iter()
                .map(|e| {
                    let status = match e.health {
                        Health::Healthy => "HEALTHY",
                        Health::Draining => "DRAINING",
                    };
                    json!({
                        "endpoint": { "address": { "socket_address": { "address": e.address, "port_value": e.port } } },
                        "health_status": status,
                        "load_balancing_weight": e.weight.max(1),
                    })
                })
                .collect();
            // The locality's weight is the sum of its endpoints' (their
            // count for Kubernetes endpoints), so localities share traffic
            // as their endpoints do.
            let weight: u64 = eps.iter().map(|e| u64::from(e.weight.max(1))).sum();
            json!({
                "locality": { "region": l.region, "zone": l.zone, "sub_zone": l.sub_zone },
                "load_balancing_weight": weight.min(u64::from(u32::MAX)),
                "lb_endpoints": lb_endpoints,
            })
        })
        .collect();
    json!({ "cluster_name": name, "endpoints": groups })
}
