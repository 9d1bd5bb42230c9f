//! Translation scopes: what a derived resource's version must cover when an
//! input it read is no longer there.
//!
//! A derived resource's version is the largest seq among its inputs
//! (DESIGN.md §9). Inputs that are present carry their own seq; an input
//! that was deleted, or updated so it now feeds something else (an
//! EndpointSlice relabelled to another service, a DestinationRule moved to
//! another host), leaves no seq behind. So `State` records, per scope, the
//! seq at which an input last left it ([`departures`]), and a derived
//! resource reads the scopes its inputs come from. Then every event that
//! can change a derived resource's bytes is covered by its version: the same
//! version always means the same bytes, in every process and after every
//! restart (the departures are part of the checkpoint).

use serde::Deserialize;

use crate::event::{Body, ResourceKey};

/// The label an EndpointSlice names its Service by.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Scope of a Kubernetes service `ns/name`: its Service objects.
pub fn service(namespace: &str, name: &str) -> String {
    format!("svc:{namespace}/{name}")
}
/// Services on one port (what that port's listener and routes gather).
pub fn service_port(port: u32) -> String {
    format!("port:{port}")
}
/// Services of one short name, in any namespace (bare domains are only
/// given to a name no other namespace uses).
pub fn service_name(name: &str) -> String {
    format!("name:{name}")
}
/// EndpointSlices of the service `ns/name`.
pub fn slices(namespace: &str, name: &str) -> String {
    format!("eps:{namespace}/{name}")
}
/// Pods of a namespace (read through endpoints' `targetRef`).
pub fn pods(namespace: &str) -> String {
    format!("pod:{namespace}")
}
/// Nodes (read for endpoint localities).
pub const NODES: &str = "node:";
/// DestinationRules aimed at `target` ([`host_target`]).
pub fn rules(target: &str) -> String {
    format!("dr:{target}")
}
/// VirtualServices aimed at `target` ([`host_target`]).
pub fn routes(target: &str) -> String {
    format!("vs:{target}")
}

/// ServiceEntries declaring `host`.
pub fn entry_host(host: &str) -> String {
    format!("se:{host}")
}
/// WorkloadEntries of a namespace (what a `workloadSelector` picks from).
pub fn workload_entries(namespace: &str) -> String {
    format!("we:{namespace}")
}

/// Sidecars of a namespace (what scopes its proxies).
pub fn sidecars(namespace: &str) -> String {
    format!("sidecar:{namespace}")
}

/// The target a host written in an Istio object of `namespace` aims at,
/// independent of the domain suffix: `name.ns` for a Kubernetes service
/// (a short name resolves in the object's namespace, istiod's
/// `ResolveShortnameToFQDN`; `name.ns.svc.<anything>` is that service),
/// `*` for any wildcard, otherwise the host itself.
pub fn host_target(namespace: &str, host: &str) -> String {
    if host == "*" || host.starts_with("*.") {
        return "*".into();
    }
    if !host.contains('.') {
        return format!("{host}.{namespace}");
    }
    match host.split_once(".svc.") {
        Some((name_ns, _)) if name_ns.matches('.').count() == 1 => name_ns.to_string(),
        _ => host.to_string(),
    }
}

#[derive(Deserialize, Default)]
struct Meta {
    #[serde(default)]
    labels: Option<std::collections::BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct Port {
    port: u32,
}

#[derive(Deserialize, Default)]
struct HostSpec {
    #[serde(default)]
    ports: Option<Vec<Port>>,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    hosts: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct Object {
    #[serde(default)]
    metadata: Option<Meta>,
    #[serde(default)]
    spec: Option<HostSpec>,
}

/// The scopes the object at `key`, as `body`, belonged to: recorded as
/// departed when it is deleted or replaced.
pub fn departures(key: &ResourceKey, body: &Body) -> Vec<String> {
    let read = || serde_json::from_slice::<Object>(body.json()).ok();
    let ns = key.namespace.as_str();
    match (key.group.as_str(), key.kind.as_str()) {
        ("", "Service") => {
            let ports = read().and_then(|o| o.spec?.ports).unwrap_or_default();
            let mut scopes = vec![service(ns, &key.name), service_name(&key.name)];
            scopes.extend(ports.iter().map(|p| service_port(p.port)));
            scopes
        }
        ("discovery.k8s.io", "EndpointSlice") => read()
            .and_then(|o| o.metadata?.labels?.remove(SERVICE_NAME_LABEL))
            .map(|svc| vec![slices(ns, &svc)])
            .unwrap_or_default(),
        ("", "Pod") => vec![pods(ns)],
        ("", "Node") => vec![NODES.into()],
        ("networking.istio.io", "DestinationRule") => {
            let host = read().and_then(|o| o.spec?.host);
            host.iter().map(|h| rules(&host_target(ns, h))).collect()
        }
        ("networking.istio.io", "ServiceEntry") => {
            // Read on its own: an entry's ports are not a Service's.
            let body = serde_json::from_slice::<serde_json::Value>(body.json()).unwrap_or_default();
            let mut scopes: Vec<String> = super::service_entry::hosts(&body).iter().map(|h| entry_host(h)).collect();
            let ports = body.pointer("/spec/ports").and_then(serde_json::Value::as_array);
            let numbers = ports.into_iter().flatten().filter_map(|p| p.get("number")?.as_u64());
            scopes.extend(numbers.filter_map(|n| u32::try_from(n).ok()).map(service_port));
            scopes
        }
        ("networking.istio.io", "WorkloadEntry") => vec![workload_entries(ns)],
        ("networking.istio.io", "Sidecar") => vec![sidecars(ns)],
        ("networking.istio.io", "VirtualService") => {
            let hosts = read().and_then(|o| o.spec?.hosts).unwrap_or_default();
            hosts.iter().map(|h| routes(&host_target(ns, h))).collect()
        }
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_resolve_to_targets_like_istiod_short_names() {
        assert_eq!(host_target("default", "reviews"), "reviews.default");
        assert_eq!(host_target("other", "reviews.default.svc.cluster.local"), "reviews.default");
        assert_eq!(host_target("default", "reviews.default"), "reviews.default", "an FQDN as written");
        assert_eq!(host_target("default", "api.example.com"), "api.example.com");
        assert_eq!(host_target("default", "*.example.com"), "*");
    }

    #[test]
    fn a_relabelled_slice_departs_from_the_service_it_fed() {
        let key = ResourceKey::new("discovery.k8s.io", "EndpointSlice", "default", "reviews-abc");
        let body =
            Body::from_value(&serde_json::json!({ "metadata": { "labels": { SERVICE_NAME_LABEL: "reviews" } } }));
        assert_eq!(departures(&key, &body), ["eps:default/reviews"]);
        let vs = ResourceKey::new("networking.istio.io", "VirtualService", "default", "r");
        let body = Body::from_value(&serde_json::json!({ "spec": { "hosts": ["reviews", "x.example.com"] } }));
        assert_eq!(departures(&vs, &body), ["vs:reviews.default", "vs:x.example.com"]);
        // A ServiceEntry leaves its hosts and ports (`number`, not `port`).
        let se = ResourceKey::new("networking.istio.io", "ServiceEntry", "default", "pay");
        let body = Body::from_value(
            &serde_json::json!({ "spec": { "hosts": ["pay.example.com"], "ports": [{ "number": 80 }] } }),
        );
        assert_eq!(departures(&se, &body), ["se:pay.example.com", "port:80"]);
    }
}
