//! Watch objects → log ops, through the one validation path every source uses.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta};
use keelson_hub::kinds::KindInfo;
use keelson_hub::object::{Limits, parse_owned_object};
use keelson_hub::{Op, ResourceKey};
use kube::core::ApiResource;
use serde_json::Value;

use super::object::Watched;

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
pub fn upsert<F>(
    info: &KindInfo,
    resource: &ApiResource,
    cluster: &str,
    obj: Watched<F>,
    limits: &Limits,
) -> Result<Op, Invalid> {
    let Watched { metadata, data: mut fields, .. } = obj;
    let namespace = metadata.namespace.clone().unwrap_or_default();
    let name = metadata.name.clone().unwrap_or_default();
    let location = location(info, &namespace, &name);
    let source_version = metadata.resource_version.clone().unwrap_or_default();
    let author = newest_manager(metadata.managed_fields.as_deref());
    // The object is converted once, by moving: its fields (spec, status…) as
    // decoded (super::object), and of its metadata only what the canonical
    // body keeps (object.rs KEPT_METADATA). Serializing a whole kube
    // DynamicObject back into a Value cost ~15% of the hub's CPU during a
    // first listing.
    let kept = ObjectMeta {
        name: metadata.name,
        namespace: metadata.namespace,
        labels: metadata.labels,
        annotations: metadata.annotations,
        creation_timestamp: metadata.creation_timestamp,
        ..ObjectMeta::default()
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
pub fn delete<F>(info: &KindInfo, cluster: &str, obj: &Watched<F>) -> Op {
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
    use crate::kubernetes::object::{AllFields, NodeFields, PodFields};
    use kube::core::GroupVersionKind;

    fn vs_resource() -> ApiResource {
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("networking.istio.io", "v1", "VirtualService"),
            "virtualservices",
        )
    }

    fn object(value: serde_json::Value) -> Watched<AllFields> {
        serde_json::from_value(value).unwrap()
    }

    /// A Pod decoded with only what its reduction reads gives the same body
    /// as the whole Pod through the one validation path (the file source's).
    #[test]
    fn a_pod_decoded_in_part_validates_to_the_body_of_the_whole_pod() {
        let pod = serde_json::json!({ "apiVersion": "v1", "kind": "Pod",
            "metadata": { "name": "reviews-v1-abc", "namespace": "default", "resourceVersion": "9",
                "labels": { "app": "reviews" }, "creationTimestamp": "2026-01-01T00:00:00Z" },
            "spec": { "nodeName": "node-1", "containers": [{ "name": "app", "image": "reviews:1" }],
                "volumes": [{ "name": "v", "emptyDir": {} }] },
            "status": { "phase": "Running", "podIP": "10.0.0.7", "podIPs": [{ "ip": "10.0.0.7" }],
                "conditions": [{ "type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z" }],
                "containerStatuses": [{ "name": "app", "restartCount": 3, "ready": true }] } });
        let part: Watched<PodFields> = serde_json::from_value(pod.clone()).unwrap();
        assert!(
            part.data["spec"].get("containers").is_none() && part.data["status"].get("containerStatuses").is_none()
        );
        let info = keelson_hub::kinds::lookup("", "Pod").unwrap();
        let resource = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("", "v1", "Pod"), "pods");
        let Op::Upsert { body, .. } = upsert(info, &resource, "east", part, &Limits::default()).unwrap() else {
            panic!("not an upsert")
        };
        assert_eq!(body, keelson_hub::object::parse_object(&pod).unwrap().body);
        // A malformed field is kept as it is, for validation to name.
        let odd: Watched<PodFields> = serde_json::from_value(serde_json::json!({
            "metadata": { "name": "p" }, "spec": "not a mapping", "status": null }))
        .unwrap();
        assert_eq!((odd.data["spec"].as_str(), odd.data["status"].is_null()), (Some("not a mapping"), true));
        let node: Watched<NodeFields> = serde_json::from_value(serde_json::json!({
            "metadata": { "name": "n", "labels": { "topology.kubernetes.io/zone": "a" } },
            "status": { "conditions": [] }, "spec": { "podCIDR": "10.0.0.0/24" } }))
        .unwrap();
        assert!(node.data.is_empty(), "{:?}", node.data);
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
