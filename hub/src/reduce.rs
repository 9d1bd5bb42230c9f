//! Pods and Nodes, reduced to what translation reads.
//!
//! A cluster has many more Pods than config objects, and their status churns
//! (restarts, probes, container state). Translation needs only a pod's
//! labels (DestinationRule subsets select endpoints by them, reached from an
//! EndpointSlice endpoint's `targetRef`), its IPs, node and readiness, and a
//! node's topology labels (the endpoint's locality, as istiod reads them in
//! `pkg/kube/controllers`/`serviceregistry/kube/controller/pod.go` and
//! `node.go`). Keeping only those makes 30,000 pods cheap, and a status
//! change that touches none of them canonicalizes to the same body, so it
//! appends nothing.

use serde_json::{Map, Value};

/// The node labels that make up a locality: region, zone (Kubernetes
/// well-known labels) and Istio's sub-zone.
pub const NODE_LOCALITY_LABELS: &[&str] =
    &["topology.kubernetes.io/region", "topology.kubernetes.io/zone", "topology.istio.io/subzone"];

/// Which fields of an object a reduction reads: all of a value, or only the
/// named fields of a mapping. A source may drop the rest as it decodes an
/// object, before building it (a Pod's containers and their statuses are
/// most of it); reducing the kept part gives the same body.
#[derive(Clone, Copy, Debug)]
pub enum Keep {
    All,
    Only(&'static [(&'static str, Keep)]),
}

/// What [`reduced`] reads of a Pod besides its metadata.
pub const POD_READS: Keep = Keep::Only(&[
    ("spec", Keep::Only(&[("nodeName", Keep::All)])),
    (
        "status",
        Keep::Only(&[("phase", Keep::All), ("podIP", Keep::All), ("podIPs", Keep::All), ("conditions", Keep::All)]),
    ),
]);

/// What [`reduced`] reads of a Node besides its metadata: nothing.
pub const NODE_READS: Keep = Keep::Only(&[]);

/// What [`reduced`] reads of an object of `group`/`kind` besides its metadata.
pub fn reads(group: &str, kind: &str) -> Keep {
    match (group, kind) {
        ("", "Pod") => POD_READS,
        ("", "Node") => NODE_READS,
        _ => Keep::All,
    }
}

/// The reduced form of a Pod or Node, `None` for every other kind (they keep
/// their whole body, minus metadata noise and status).
pub(crate) fn reduced(group: &str, kind: &str, obj: &Map<String, Value>) -> Option<Map<String, Value>> {
    match (group, kind) {
        ("", "Pod") => Some(pod(obj)),
        ("", "Node") => Some(node(obj)),
        _ => None,
    }
}

fn pod(obj: &Map<String, Value>) -> Map<String, Value> {
    let mut out = header(obj);
    let meta = pick(obj.get("metadata"), &["name", "namespace", "labels", "creationTimestamp"]);
    out.insert("metadata".into(), Value::Object(meta));
    if let Some(node) = obj.get("spec").and_then(|s| s.get("nodeName")) {
        out.insert("spec".into(), Value::Object(Map::from_iter([("nodeName".into(), node.clone())])));
    }
    let mut status = pick(obj.get("status"), &["phase", "podIP", "podIPs"]);
    // Only the Ready condition's value: its timestamps and messages change
    // on every probe flap and mean nothing to an endpoint.
    let ready = obj
        .get("status")
        .and_then(|s| s.get("conditions"))
        .and_then(Value::as_array)
        .and_then(|c| c.iter().find(|c| c.get("type").and_then(Value::as_str) == Some("Ready")))
        .and_then(|c| c.get("status"))
        .cloned();
    if let Some(ready) = ready {
        let condition = Map::from_iter([("type".into(), Value::from("Ready")), ("status".into(), ready)]);
        status.insert("conditions".into(), Value::Array(vec![Value::Object(condition)]));
    }
    if !status.is_empty() {
        out.insert("status".into(), Value::Object(status));
    }
    out
}

fn node(obj: &Map<String, Value>) -> Map<String, Value> {
    let mut out = header(obj);
    let mut meta = pick(obj.get("metadata"), &["name", "creationTimestamp"]);
    let labels: Map<String, Value> = obj
        .get("metadata")
        .and_then(|m| m.get("labels"))
        .and_then(Value::as_object)
        .map(|l| l.iter().filter(|(k, _)| NODE_LOCALITY_LABELS.contains(&k.as_str())))
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if !labels.is_empty() {
        meta.insert("labels".into(), Value::Object(labels));
    }
    out.insert("metadata".into(), Value::Object(meta));
    out
}

fn header(obj: &Map<String, Value>) -> Map<String, Value> {
    pick_from(obj, &["apiVersion", "kind"])
}

fn pick(from: Option<&Value>, fields: &[&str]) -> Map<String, Value> {
    from.and_then(Value::as_object).map(|from| pick_from(from, fields)).unwrap_or_default()
}

fn pick_from(from: &Map<String, Value>, fields: &[&str]) -> Map<String, Value> {
    fields.iter().filter_map(|f| from.get(*f).map(|v| (f.to_string(), v.clone()))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod_with(restarts: u64, ready_since: &str) -> Value {
        json!({ "apiVersion": "v1", "kind": "Pod",
            "metadata": { "name": "reviews-v1-abc", "namespace": "default", "uid": "u1", "resourceVersion": "9",
                "labels": { "app": "reviews", "version": "v1" },
                "annotations": { "kubectl.kubernetes.io/restartedAt": ready_since },
                "ownerReferences": [{ "kind": "ReplicaSet", "name": "reviews-v1" }] },
            "spec": { "nodeName": "node-1", "containers": [{ "name": "app", "image": "reviews:1" }] },
            "status": { "phase": "Running", "podIP": "10.0.0.7", "podIPs": [{ "ip": "10.0.0.7" }],
                "conditions": [
                    { "type": "Ready", "status": "True", "lastTransitionTime": ready_since },
                    { "type": "PodScheduled", "status": "True", "lastTransitionTime": ready_since }],
                "containerStatuses": [{ "name": "app", "restartCount": restarts, "ready": true }] } })
    }

    #[test]
    fn a_pod_keeps_labels_ips_node_and_readiness_only() {
        let pod = reduced("", "Pod", pod_with(0, "2026-01-01T00:00:00Z").as_object().unwrap()).unwrap();
        assert_eq!(
            Value::Object(pod),
            json!({ "apiVersion": "v1", "kind": "Pod",
                "metadata": { "name": "reviews-v1-abc", "namespace": "default", "labels": { "app": "reviews", "version": "v1" } },
                "spec": { "nodeName": "node-1" },
                "status": { "phase": "Running", "podIP": "10.0.0.7", "podIPs": [{ "ip": "10.0.0.7" }],
                    "conditions": [{ "type": "Ready", "status": "True" }] } })
        );
    }

    #[test]
    fn status_churn_reduces_to_the_same_pod() {
        let a = reduced("", "Pod", pod_with(0, "2026-01-01T00:00:00Z").as_object().unwrap());
        let b = reduced("", "Pod", pod_with(7, "2026-02-02T00:00:00Z").as_object().unwrap());
        assert_eq!(a, b);
        let mut unready = pod_with(7, "2026-02-02T00:00:00Z");
        unready["status"]["conditions"][0]["status"] = json!("False");
        assert_ne!(a, reduced("", "Pod", unready.as_object().unwrap()));
    }

    #[test]
    fn a_node_keeps_its_locality_labels_only() {
        let node = json!({ "apiVersion": "v1", "kind": "Node",
            "metadata": { "name": "node-1", "labels": { "topology.kubernetes.io/region": "eu-west-1",
                "topology.kubernetes.io/zone": "eu-west-1a", "kubernetes.io/hostname": "node-1" } },
            "status": { "conditions": [{ "type": "Ready", "lastHeartbeatTime": "2026-01-01T00:00:10Z" }] } });
        let reduced = reduced("", "Node", node.as_object().unwrap()).unwrap();
        assert_eq!(
            Value::Object(reduced),
            json!({ "apiVersion": "v1", "kind": "Node", "metadata": { "name": "node-1",
                "labels": { "topology.kubernetes.io/region": "eu-west-1", "topology.kubernetes.io/zone": "eu-west-1a" } } })
        );
        assert_eq!(super::reduced("", "Service", node.as_object().unwrap()), None);
    }
}
