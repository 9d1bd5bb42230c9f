//! A real Envoy sidecar for the translation tests (translate_envoy.rs,
//! translate_kube.rs): started against a hub, read through its admin
//! endpoint (config dump, endpoints, stats).

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

use super::real::start_envoy;
use super::{Proc, try_http};

/// A real Envoy (support::real::start_envoy) and what its admin endpoint tells.
pub struct Envoy {
    pub proc: Proc,
    /// Its admin address, `127.0.0.1:PORT`.
    pub admin: String,
}

impl Envoy {
    /// Envoy with an ADS bootstrap (`api_type` GRPC or DELTA_GRPC) against
    /// `hub` (`127.0.0.1:PORT`), one worker thread (the machine is small),
    /// its admin endpoint up.
    pub fn start(dir: &Path, hub: &str, node: &str, api_type: &str) -> Envoy {
        // One worker thread (the machine is small). A removed listener
        // drains (and keeps its route configuration) for drain-time-s,
        // 600 s by default: 1 s lets a test see it go.
        let extra = ["--concurrency", "1", "--drain-time-s", "1"];
        let (proc, admin) = start_envoy(dir, hub, node, api_type, &extra);
        Envoy { proc, admin }
    }

    pub fn json(&self, path: &str) -> Value {
        match try_http(&self.admin, path) {
            Ok((200, body)) => serde_json::from_str(&body).unwrap_or(Value::Null),
            _ => Value::Null,
        }
    }

    /// A counter, e.g. `cluster.NAME.upstream_rq_retry` (`/stats?filter=` is
    /// a regex, so the filter is only the name's last segment).
    pub fn stat(&self, name: &str) -> Option<u64> {
        let suffix = name.rsplit('.').next().unwrap();
        let (_, body) = try_http(&self.admin, &format!("/stats?filter={suffix}$")).ok()?;
        body.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(": ")?.trim().parse().ok())
    }

    /// The ClusterLoadAssignment Envoy holds for `cluster` (from
    /// `/config_dump?include_eds`).
    pub fn endpoints(&self, cluster: &str) -> Option<Value> {
        let dump = self.json("/config_dump?include_eds");
        let eds = dump["configs"]
            .as_array()?
            .iter()
            .find(|c| c["@type"].as_str().is_some_and(|t| t.ends_with("EndpointsConfigDump")))?;
        eds["dynamic_endpoint_configs"]
            .as_array()?
            .iter()
            .map(|c| &c["endpoint_config"])
            .find(|cla| cla["cluster_name"] == cluster)
            .cloned()
    }

    /// Names of the active clusters, warmed listeners and route configurations.
    pub fn names(&self) -> [BTreeSet<String>; 3] {
        let dump = self.json("/config_dump");
        let mut out: [BTreeSet<String>; 3] = Default::default();
        for c in dump["configs"].as_array().into_iter().flatten() {
            let ty = c["@type"].as_str().unwrap_or_default();
            let (i, key, name): (usize, &str, fn(&Value) -> &Value) = if ty.ends_with("ClustersConfigDump") {
                (0, "dynamic_active_clusters", |x| &x["cluster"]["name"])
            } else if ty.ends_with("ListenersConfigDump") {
                (1, "dynamic_listeners", |x| if x["active_state"].is_object() { &x["name"] } else { &Value::Null })
            } else if ty.ends_with("RoutesConfigDump") {
                (2, "dynamic_route_configs", |x| &x["route_config"]["name"])
            } else {
                continue;
            };
            out[i].extend(c[key].as_array().into_iter().flatten().filter_map(|x| name(x).as_str().map(String::from)));
        }
        out
    }

    /// The dynamic route configurations and the names of the listeners and
    /// clusters, for failure messages.
    pub fn summary(&self) -> String {
        let dump = self.json("/config_dump");
        let mut out = String::new();
        for c in dump["configs"].as_array().into_iter().flatten() {
            let ty = c["@type"].as_str().unwrap_or_default();
            let names = |key: &str, name: &dyn Fn(&Value) -> Value| -> Vec<Value> {
                c[key].as_array().into_iter().flatten().map(name).collect()
            };
            if ty.ends_with("ListenersConfigDump") {
                let l = names("dynamic_listeners", &|l| {
                    serde_json::json!([l["name"], l["active_state"].is_object(), l["error_state"]])
                });
                out += &format!("listeners [name, active, error]: {}\n", Value::Array(l));
            } else if ty.ends_with("ClustersConfigDump") {
                let c = names("dynamic_active_clusters", &|c| c["cluster"]["name"].clone());
                out += &format!("active clusters: {}\n", Value::Array(c));
            } else if ty.ends_with("RoutesConfigDump") {
                let r = names("dynamic_route_configs", &|r| r["route_config"].clone());
                out += &format!("route configs: {}\n", Value::Array(r));
            }
        }
        out
    }
}

/// `(zone, load_balancing_weight, ports Envoy may send traffic to)`.
pub type Locality = (String, u64, Vec<u64>);

/// The localities of a ClusterLoadAssignment, sorted, with the ports of
/// their HEALTHY or UNKNOWN endpoints (Envoy's load balancer skips the rest).
pub fn localities(cla: &Value) -> Vec<Locality> {
    let mut out: Vec<Locality> = cla["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| {
            let mut ports: Vec<u64> = l["lb_endpoints"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|e| servable(e["health_status"].as_str().unwrap_or("UNKNOWN")))
                .map(|e| e["endpoint"]["address"]["socket_address"]["port_value"].as_u64().unwrap_or(0))
                .collect();
            ports.sort();
            let zone = l["locality"]["zone"].as_str().unwrap_or_default().to_string();
            (zone, l["load_balancing_weight"].as_u64().unwrap_or(0), ports)
        })
        .collect();
    out.sort();
    out
}

pub fn servable(health: &str) -> bool {
    matches!(health, "UNKNOWN" | "HEALTHY")
}
