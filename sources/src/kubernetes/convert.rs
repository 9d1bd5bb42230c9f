//! Watch objects → log ops, through the one validation path every source uses.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta};
use keelson_hub::kinds::KindInfo;
use keelson_hub::object::{Limits, parse_owned_object};
use keelson_hub::{Op, ResourceKey};
use kube::api::DynamicObject;
use kube::core::ApiResource;
use serde_json::{Map, Value};

/// Where an object sits in its cluster, as the log's `location`: its key
/// without the cluster (`networking.istio.io/VirtualService/default/reviews`),
/// so one kind's objects share the prefix `group/Kind` (and one namespace's
/// `group/Kind/ns`), which a listing can keep whole.
pub fn location(info: &KindInfo, namespace: &str, name: &str) -> String {
    ResourceKey::new(info.group, info.kind, namespace, name).to_string()
}

/// The location prefix of a kind, or of one namespace of it.
pub fn prefix(info: &KindInfo, namespace: Option<&str>) -> String {
    let group = if info.group.is_empty() { "core" } else { info.group };
    match namespace {
        Some(ns) => format!("{group}/{}/{ns}", info.kind),
        None => format!("{group}/{}", info.kind),
    }
}

/// An object the API server sent that does not validate: its location and why.
#[derive(Debug)]
pub struct Invalid {
    pub location: String,
    pub error: String,
}

/// The upsert for a listed or changed object.
pub fn upsert(
    info: &KindInfo,
    resource: &ApiResource,
    cluster: &str,
    obj: DynamicObject,
    limits: &Limits,
) -> Result<Op, Invalid> {
    let DynamicObject { metadata, data, .. } = obj;
    let namespace = metadata.namespace.clone().unwrap_or_default();
    let name = metadata.name.clone().unwrap_or_default();
    let location = location(info, &namespace, &name);
    let source_version = metadata.resource_version.clone().unwrap_or_default();
    let author = newest_manager(metadata.managed_fields.as_deref());
    // The object is converted once, by moving: its data (spec, status…) as
    // kube decoded it, and of its metadata only what the canonical body
    // keeps (object.rs KEPT_METADATA). Serializing the whole DynamicObject
    // back into a Value cost ~15% of the hub's CPU during a first listing.
    let kept = ObjectMeta {
        name: metadata.name,
        namespace: metadata.namespace,
        labels: metadata.labels,
        annotations: metadata.annotations,
        creation_timestamp: metadata.creation_timestamp,
        ..ObjectMeta::default()
    };
    let mut fields = match data {
        Value::Object(fields) => fields,
        _ => Map::new(),
    };
    let kept = serde_json::to_value(kept).map_err(|e| Invalid { location: location.clone(), error: e.to_string() })?;
    fields.insert("metadata".into(), kept);
    // List items of built-in kinds carry no apiVersion/kind of their own.
    fields.insert("apiVersion".into(), resource.api_version.clone().into());
    fields.insert("kind".into(), resource.kind.clone().into());
    let valid = parse_owned_object(Value::Object(fields), limits)
        .map_err(|error| Invalid { location: location.clone(), error })?;
    let key = if info.per_cluster { valid.key.in_cluster(cluster) } else { valid.key };
    Ok(Op::Upsert { key, source_version, body: valid.body, location, author })
}

/// The delete for an object the API server says is gone.
pub fn delete(info: &KindInfo, cluster: &str, obj: &DynamicObject) -> Op {
    let namespace = if info.namespaced { obj.metadata.namespace.clone().unwrap_or_default() } else { String::new() };
    let key = ResourceKey::new(info.group, info.kind, &namespace, obj.metadata.name.as_deref().unwrap_or_default());
    let key = if info.per_cluster { key.in_cluster(cluster) } else { key };
    Op::Delete {
        key,
        source_version: obj.metadata.resource_version.clone().unwrap_or_default(),
        author: newest_manager(obj.metadata.managed_fields.as_deref()),
    }
}

/// Who last wrote the object: the manager of its newest `managedFields`
/// entry (server-side field management records every writer with a time),
/// e.g. `kubectl-client-side-apply`, `helm`, `argocd-controller`.
fn newest_manager(entries: Option<&[ManagedFieldsEntry]>) -> String {
    let entries = entries.unwrap_or_default();
    entries
        .iter()
        .enumerate()
        // Entries are stamped to the second; a later entry wins a tie.
        .max_by(|(i, a), (j, b)| {
            let (ta, tb) = (a.time.as_ref().map(|t| t.0), b.time.as_ref().map(|t| t.0));
            ta.cmp(&tb).then(i.cmp(j))
        })
        .and_then(|(_, e)| e.manager.clone())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::GroupVersionKind;

    fn vs_resource() -> ApiResource {
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("networking.istio.io", "v1", "VirtualService"),
            "virtualservices",
        )
    }

    fn object(value: serde_json::Value) -> DynamicObject {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn an_istio_object_becomes_an_upsert_with_its_provenance() {
        let info = keelson_hub::kinds::lookup("networking.istio.io", "VirtualService").unwrap();
        let obj = object(serde_json::json!({
            "metadata": { "name": "reviews", "namespace": "default", "resourceVersion": "42",
                "managedFields": [
                    { "manager": "helm", "operation": "Update", "time": "2026-01-01T00:00:00Z" },
                    { "manager": "argocd-controller", "operation": "Apply", "time": "2026-01-02T00:00:00Z" },
                    { "manager": "kubectl-edit", "operation": "Update", "time": "2025-12-01T00:00:00Z" }] },
            "spec": { "hosts": ["reviews"] } }));
        let Op::Upsert { key, source_version, location, author, body } =
            upsert(info, &vs_resource(), "east", obj, &Limits::default()).unwrap()
        else {
            panic!("not an upsert")
        };
        assert_eq!(
            key.to_string(),
            "networking.istio.io/VirtualService/default/reviews",
            "config keys have no cluster"
        );
        assert_eq!((source_version.as_str(), author.as_str()), ("42", "argocd-controller"));
        assert_eq!(location, "networking.istio.io/VirtualService/default/reviews");
        assert!(location.starts_with(&prefix(info, None)) && location.starts_with(&prefix(info, Some("default"))));
        assert!(body.to_value()["metadata"].get("managedFields").is_none());
    }

    #[test]
    fn registry_objects_are_keyed_by_cluster_and_invalid_ones_say_why() {
        let svc = keelson_hub::kinds::lookup("", "Service").unwrap();
        let resource = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("", "v1", "Service"), "services");
        let obj = object(serde_json::json!({ "metadata": { "name": "reviews", "namespace": "default" }, "spec": {} }));
        let op = upsert(svc, &resource, "west", obj.clone(), &Limits::default()).unwrap();
        assert_eq!(op.key().unwrap().to_string(), "core/Service/default/reviews@west");
        assert_eq!(delete(svc, "west", &obj).key().unwrap().to_string(), "core/Service/default/reviews@west");
        let info = keelson_hub::kinds::lookup("networking.istio.io", "VirtualService").unwrap();
        let bad = object(serde_json::json!({ "metadata": { "name": "r", "namespace": "default" }, "spec": {} }));
        let err = upsert(info, &vs_resource(), "east", bad, &Limits::default()).unwrap_err();
        assert_eq!(err.location, "networking.istio.io/VirtualService/default/r");
        assert!(err.error.contains("spec.hosts is required"), "{}", err.error);
    }
}
