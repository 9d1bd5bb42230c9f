//! The load-test generator, one-field touches, and the bin's flags.

mod support;

use std::collections::HashMap;
use std::process::Stdio;

use keelson_fake_kube::{FakeConfig, FakeKube};
use serde_json::{Value, json};
use support::https::{self, connector};
use support::{DEADLINE, get, request, watch};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::time::timeout;

async fn post(addr: std::net::SocketAddr, path: &str, body: Value) -> Value {
    let (head, reply) = request(addr, "POST", path, &body.to_string()).await;
    assert_eq!(head.status, 200, "{path}: {reply}");
    reply
}

/// Every item of a paged LIST (limit per page), checking one RV across pages.
async fn list_all(addr: std::net::SocketAddr, path: &str, limit: usize) -> Vec<Value> {
    let (mut items, mut token, mut rv) = (Vec::new(), String::new(), None);
    for _ in 0..10_000 {
        let (code, page) = get(addr, &format!("{path}?limit={limit}&continue={token}")).await;
        assert_eq!(code, 200, "{page}");
        let page_rv = page["metadata"]["resourceVersion"].clone();
        assert_eq!(rv.get_or_insert(page_rv.clone()), &page_rv);
        let batch = page["items"].as_array().unwrap();
        assert!(batch.len() <= limit);
        items.extend(batch.iter().cloned());
        match page["metadata"]["continue"].as_str() {
            Some(t) => token = t.to_owned(),
            None => return items,
        }
    }
    panic!("list never ended");
}

#[tokio::test]
async fn generate_makes_the_requested_cluster_and_pages_list_it_all() {
    let f = FakeKube::start(FakeConfig::default()).await.unwrap();
    let a = f.addr();
    let spec = json!({"namespaces": 3, "services": 40, "slices_per_service": 3, "pods_per_service": 3,
                      "endpoints_per_slice": 1, "virtualservices": 25, "nodes": 5});
    let report = post(a, "/_fake/generate", spec).await;
    assert_eq!(report["endpointslices"], 120);
    assert_eq!(report["changed"], 3 + 5 + 40 + 120 + 120 + 25);
    let count = |items: &Vec<Value>| items.len();
    assert_eq!(count(&list_all(a, "/api/v1/services", 7).await), 40);
    assert_eq!(count(&list_all(a, "/api/v1/nodes", 2).await), 5);
    assert_eq!(count(&list_all(a, "/api/v1/namespaces", 2).await), 3);
    assert_eq!(count(&list_all(a, "/apis/networking.istio.io/v1/virtualservices", 10).await), 25);
    let pods = list_all(a, "/api/v1/pods", 50).await;
    let slices = list_all(a, "/apis/discovery.k8s.io/v1/endpointslices", 50).await;
    assert_eq!((pods.len(), slices.len()), (120, 120));

    // Every endpoint points at a generated pod by name and uid, with that pod's IP and node.
    let by_name: HashMap<&str, &Value> = pods.iter().map(|p| (p["metadata"]["name"].as_str().unwrap(), p)).collect();
    for slice in &slices {
        let svc = slice["metadata"]["labels"]["kubernetes.io/service-name"].as_str().unwrap();
        assert_eq!(
            slice["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"],
            "endpointslice-controller.k8s.io"
        );
        assert_eq!(slice["addressType"], "IPv4");
        for ep in slice["endpoints"].as_array().unwrap() {
            let pod = by_name[ep["targetRef"]["name"].as_str().unwrap()];
            assert_eq!(pod["metadata"]["labels"]["app"], svc);
            assert_eq!(ep["targetRef"]["uid"], pod["metadata"]["uid"]);
            assert_eq!(ep["addresses"][0], pod["status"]["podIP"]);
            assert_eq!(ep["nodeName"], pod["spec"]["nodeName"]);
            assert_eq!(ep["conditions"], json!({"ready": true, "serving": true, "terminating": false}));
        }
    }
    let node = get(a, "/api/v1/nodes/node-0").await.1;
    assert_eq!(node["metadata"]["labels"]["topology.kubernetes.io/zone"], "us-east-1a");
    let vs = get(a, "/apis/networking.istio.io/v1/namespaces/ns-0/virtualservices/vs-0").await.1;
    assert_eq!(vs["spec"]["hosts"][0], "svc-0.ns-0.svc.cluster.local");
    assert_eq!(vs["spec"]["http"][0]["route"][0]["destination"]["host"], "svc-0.ns-0.svc.cluster.local");
    let svc1 = get(a, "/api/v1/namespaces/ns-1/services/svc-1").await.1;
    assert_eq!(svc1["spec"]["ports"][0]["name"], "http");
    assert_eq!(svc1["spec"]["type"], "ClusterIP");
    // Generating the same cluster again changes nothing.
    assert_eq!(post(a, "/_fake/generate", json!({"namespaces": 3, "services": 40, "slices_per_service": 3, "pods_per_service": 3, "endpoints_per_slice": 1, "virtualservices": 25, "nodes": 5})).await["changed"], 0);
    // Unknown fields are a 400, not silently ignored.
    assert_eq!(request(a, "POST", "/_fake/generate", r#"{"service": 1}"#).await.0.status, 400);
}

fn without_volatile(mut v: Value) -> Value {
    let meta = v["metadata"].as_object_mut().unwrap();
    meta.remove("resourceVersion");
    meta.remove("managedFields");
    v
}

#[tokio::test]
async fn touch_changes_one_field_and_sends_one_modified() {
    let f = FakeKube::start(FakeConfig::default()).await.unwrap();
    let a = f.addr();
    post(a, "/_fake/generate", json!({"namespaces": 1, "services": 1, "pods_per_service": 1, "slices_per_service": 1, "endpoints_per_slice": 1})).await;
    let pods = get(a, "/api/v1/pods").await.1;
    let pod = pods["items"][0].clone();
    let name = pod["metadata"]["name"].as_str().unwrap().to_owned();
    let rv = pods["metadata"]["resourceVersion"].as_str().unwrap().to_owned();
    let mut w = watch(a, &format!("/api/v1/pods?watch=true&resourceVersion={rv}")).await;

    let touch = json!({"apiVersion": "v1", "kind": "Pod", "namespace": "ns-0", "name": name,
                       "path": "/status/containerStatuses/0/restartCount", "value": 1});
    let reply = post(a, "/_fake/touch?fieldManager=kubelet", touch).await;
    let event = w.event().await.unwrap();
    assert_eq!(event["type"], "MODIFIED");
    assert_eq!(event["object"]["metadata"]["resourceVersion"], reply["resourceVersion"]);
    let mut expected = without_volatile(pod.clone());
    expected["status"]["containerStatuses"][0]["restartCount"] = json!(1);
    assert_eq!(without_volatile(event["object"].clone()), expected, "only restartCount changed");

    // A new key at the end of the pointer, on an EndpointSlice.
    let slice = get(a, "/apis/discovery.k8s.io/v1/endpointslices").await.1["items"][0].clone();
    let touch = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "namespace": "ns-0",
        "name": slice["metadata"]["name"], "path": "/endpoints/0/conditions/ready", "value": false});
    post(a, "/_fake/touch", touch).await;
    let got = get(
        a,
        &format!(
            "/apis/discovery.k8s.io/v1/namespaces/ns-0/endpointslices/{}",
            slice["metadata"]["name"].as_str().unwrap()
        ),
    )
    .await
    .1;
    assert_eq!(got["endpoints"][0]["conditions"]["ready"], false);
    assert_eq!(got["endpoints"][0]["conditions"]["serving"], true);
    // Bad pointers and missing objects are 400s.
    let bad = json!({"apiVersion": "v1", "kind": "Pod", "namespace": "ns-0", "name": name, "path": "/nope/deeper", "value": 1});
    assert_eq!(request(a, "POST", "/_fake/touch", &bad.to_string()).await.0.status, 400);
    let missing =
        json!({"apiVersion": "v1", "kind": "Pod", "namespace": "ns-0", "name": "ghost", "path": "/x", "value": 1});
    assert_eq!(request(a, "POST", "/_fake/touch", &missing.to_string()).await.0.status, 400);
}

#[tokio::test]
async fn the_bin_serves_tls_with_a_token_writes_its_kubeconfig_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let ca_file = dir.path().join("ca.crt");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_fake-kube-apiserver"))
        .args(["--tls", "--token", "bin-token", "--bookmark-interval", "5", "--kubeconfig"])
        .arg(&kubeconfig)
        .arg("--ca-file")
        .arg(&ca_file)
        .args(["--generate", r#"{"services": 5, "namespaces": 1}"#])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = timeout(DEADLINE, lines.next_line()).await.unwrap().unwrap().unwrap();
    let addr: std::net::SocketAddr = url.strip_prefix("https://").unwrap().parse().unwrap();
    let kc: Value = serde_yaml::from_str(&std::fs::read_to_string(&kubeconfig).unwrap()).unwrap();
    assert_eq!(kc["clusters"][0]["cluster"]["server"], url);
    assert_eq!(kc["users"][0]["user"]["token"], "bin-token");
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD
        .decode(kc["clusters"][0]["cluster"]["certificate-authority-data"].as_str().unwrap())
        .unwrap();
    let ca = std::str::from_utf8(&ca).unwrap();
    assert_eq!(std::fs::read_to_string(&ca_file).unwrap(), ca);
    let tls = connector(ca, None);
    // The control API hands out the CA and client certificates, without credentials.
    let (head, _) = https::request(&tls, addr, "GET", "/_fake/ca", &[], "").await;
    assert_eq!(head.status, 200);
    let (head, cert) = https::request(&tls, addr, "POST", "/_fake/client-cert", &[], r#"{"common_name":"x"}"#).await;
    assert_eq!(head.status, 200);
    assert!(cert["cert_pem"].as_str().unwrap().starts_with("-----BEGIN CERTIFICATE-----"));
    let ok = [("Authorization", "Bearer bin-token")];
    let (head, list) = https::request(&tls, addr, "GET", "/api/v1/services", &ok, "").await;
    assert_eq!((head.status, list["items"].as_array().map(Vec::len)), (200, Some(5)));
    assert_eq!(https::request(&tls, addr, "GET", "/api/v1/services", &[], "").await.0.status, 401);

    let pid = child.id().unwrap().to_string();
    let killed = tokio::process::Command::new("kill").args(["-TERM", &pid]).status().await.unwrap();
    assert!(killed.success());
    let status = timeout(DEADLINE, child.wait()).await.expect("bin did not stop on SIGTERM").unwrap();
    assert!(status.success(), "{status}");
}
