//! What the server adds on writes (managedFields, uid, creationTimestamp, generation)
//! and the 429 throttling fault, over raw HTTP/1.1.

mod support;

use keelson_fake_kube::{FakeConfig, FakeKube};
use serde_json::{Value, json};
use support::{get, request, watch};

async fn post(addr: std::net::SocketAddr, path: &str, body: Value) -> Value {
    let (head, reply) = request(addr, "POST", path, &body.to_string()).await;
    assert_eq!(head.status, 200, "{path}: {reply}");
    reply
}

fn vs(hosts: &[&str], labels: Value) -> Value {
    json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
           "metadata": {"name": "r", "namespace": "default", "labels": labels}, "spec": {"hosts": hosts}})
}

fn is_rfc3339_seconds(t: &str) -> bool {
    // 2026-12-03T11:53:17Z
    let b = t.as_bytes();
    b.len() == 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'Z'
        && t.chars().filter(char::is_ascii_digit).count() == 14
}

#[tokio::test]
async fn managed_fields_uid_creation_and_generation_like_the_apiserver() {
    let f = FakeKube::start(FakeConfig::default()).await.unwrap();
    let a = f.addr();
    let path = "/apis/networking.istio.io/v1/namespaces/default/virtualservices/r";
    post(a, "/_fake/objects", vs(&["r"], json!({}))).await;
    let created = get(a, path).await.1;
    let meta = &created["metadata"];
    assert_eq!(meta["generation"], 1);
    let uid = meta["uid"].as_str().unwrap().to_owned();
    let created_at = meta["creationTimestamp"].clone();
    let entries = meta["managedFields"].as_array().unwrap();
    assert_eq!(entries.len(), 1);
    let e = &entries[0];
    assert_eq!(
        (e["manager"].as_str(), e["operation"].as_str(), e["apiVersion"].as_str(), e["fieldsType"].as_str()),
        (Some("kubectl-client-side-apply"), Some("Update"), Some("networking.istio.io/v1"), Some("FieldsV1"))
    );
    assert_eq!(e["fieldsV1"], json!({}));
    assert!(is_rfc3339_seconds(e["time"].as_str().unwrap()), "{e}");

    // A spec change by another manager: a second entry, newest last, generation 2.
    post(a, "/_fake/objects?fieldManager=istio-operator", vs(&["r", "r2"], json!({}))).await;
    // A metadata-only change by the first manager: its entry moves last, generation stays.
    post(a, "/_fake/objects?fieldManager=kubectl-client-side-apply", vs(&["r", "r2"], json!({"x": "y"}))).await;
    let got = get(a, path).await.1;
    let meta = &got["metadata"];
    let managers: Vec<_> =
        meta["managedFields"].as_array().unwrap().iter().map(|e| e["manager"].as_str().unwrap()).collect();
    assert_eq!(managers, ["istio-operator", "kubectl-client-side-apply"]);
    assert_eq!(meta["generation"], 2);
    assert_eq!((meta["uid"].as_str(), &meta["creationTimestamp"]), (Some(uid.as_str()), &created_at));

    // A no-op write changes nothing, managedFields included (no new RV).
    let rv = meta["resourceVersion"].clone();
    let again = post(a, "/_fake/objects?fieldManager=someone-else", vs(&["r", "r2"], json!({"x": "y"}))).await;
    assert_eq!(again["resourceVersion"], Value::Null);
    let same = get(a, path).await.1;
    assert_eq!(
        (&same["metadata"]["resourceVersion"], &same["metadata"]["managedFields"]),
        (&rv, &meta["managedFields"])
    );

    // Deleted and created again: a new uid, as a new object.
    post(
        a,
        "/_fake/delete",
        json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "namespace": "default", "name": "r"}),
    )
    .await;
    post(a, "/_fake/objects", vs(&["r"], json!({}))).await;
    assert_ne!(get(a, path).await.1["metadata"]["uid"].as_str(), Some(uid.as_str()));
}

#[tokio::test]
async fn throttled_kind_gets_429_with_retry_after() {
    let f = FakeKube::start(FakeConfig::default()).await.unwrap();
    let a = f.addr();
    let fault =
        |v: Value| json!({"group": "discovery.k8s.io", "resource": "endpointslices", "fault": v, "retry_after": 1});
    post(a, "/_fake/fault", fault(json!("throttled"))).await;
    for path in ["/apis/discovery.k8s.io/v1/endpointslices", "/apis/discovery.k8s.io/v1/endpointslices?watch=true"] {
        let (head, body) = request(a, "GET", path, "").await;
        assert_eq!(head.status, 429, "{path}");
        assert_eq!(head.header("retry-after"), Some("1"));
        assert_eq!(
            (body["kind"].as_str(), body["status"].as_str(), body["reason"].as_str(), body["code"].as_u64()),
            (Some("Status"), Some("Failure"), Some("TooManyRequests"), Some(429))
        );
        assert_eq!(body["details"]["retryAfterSeconds"], 1);
    }
    // Other kinds are served, and the throttled kind stays in discovery.
    assert_eq!(get(a, "/api/v1/services").await.0, 200);
    let (_, group) = get(a, "/apis/discovery.k8s.io/v1").await;
    assert!(group["resources"].as_array().unwrap().iter().any(|r| r["name"] == "endpointslices"));
    post(a, "/_fake/fault", fault(Value::Null)).await;
    let mut w = watch(a, "/apis/discovery.k8s.io/v1/endpointslices?watch=true&timeoutSeconds=1").await;
    assert!(w.event().await.is_none(), "an empty watch that times out");
}
