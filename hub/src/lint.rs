//! Warnings, not errors: references between Envoy resources that nothing
//! serves yet. A Listener routing through RDS to a RouteConfiguration no one
//! defined, or an EDS Cluster whose ClusterLoadAssignment is missing, is valid
//! config that Envoy will hold warming until the target appears: worth
//! saying, not worth rejecting (the target may come from another source).

use serde_json::Value;

use crate::event::{Body, ResourceKey};
use crate::kinds::ENVOY_GROUP;

/// The resources `key`'s body refers to and needs in order to serve.
pub fn references(key: &ResourceKey, body: &Body) -> Vec<ResourceKey> {
    if key.group != ENVOY_GROUP {
        return Vec::new();
    }
    let v = body.to_value();
    let spec = &v["spec"];
    let named = |kind: &str, name: &str| ResourceKey::new(ENVOY_GROUP, kind, "", name);
    match key.kind.as_str() {
        "Listener" => {
            let chains = spec["filter_chains"]
                .as_array()
                .into_iter()
                .flatten()
                .chain(std::iter::once(&spec["default_filter_chain"]));
            chains
                .flat_map(|c| c["filters"].as_array().into_iter().flatten())
                .filter_map(|f| f.pointer("/typed_config/rds/route_config_name").and_then(Value::as_str))
                .map(|name| named("RouteConfiguration", name))
                .collect()
        }
        "Cluster" => {
            let eds = spec["type"] == "EDS" || spec.get("eds_cluster_config").is_some();
            let service = spec.pointer("/eds_cluster_config/service_name").and_then(Value::as_str);
            match (eds, service.or(Some(&key.name))) {
                (true, Some(name)) => vec![named("ClusterLoadAssignment", name)],
                _ => Vec::new(),
            }
        }
        _ => Vec::new(),
    }
}

/// A sentence for a reference nothing serves.
pub fn dangling_warning(from: &ResourceKey, to: &ResourceKey) -> String {
    format!("{from} refers to {to}, which nothing defines yet: Envoy keeps it warming until it appears")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object::parse_object;

    #[test]
    fn listener_rds_and_cluster_eds_references_are_found() {
        let listener = parse_object(&serde_json::json!({ "apiVersion": "xds.keelson.dev/v1", "kind": "Listener", "spec": {
            "name": "l", "filter_chains": [{ "filters": [{ "name": "hcm", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "s", "rds": { "route_config_name": "local_route", "config_source": { "ads": {} } } } }] }] } }))
        .unwrap();
        assert_eq!(
            references(&listener.key, &listener.body),
            vec![ResourceKey::new(ENVOY_GROUP, "RouteConfiguration", "", "local_route")]
        );
        let cluster = parse_object(&serde_json::json!({ "apiVersion": "xds.keelson.dev/v1", "kind": "Cluster",
            "spec": { "name": "c", "type": "EDS", "eds_cluster_config": { "service_name": "svc" } } }))
        .unwrap();
        assert_eq!(
            references(&cluster.key, &cluster.body),
            vec![ResourceKey::new(ENVOY_GROUP, "ClusterLoadAssignment", "", "svc")]
        );
        let strict_dns = parse_object(&serde_json::json!({ "apiVersion": "xds.keelson.dev/v1", "kind": "Cluster",
            "spec": { "name": "d", "type": "STRICT_DNS" } }))
        .unwrap();
        assert!(references(&strict_dns.key, &strict_dns.body).is_empty());
    }
}
