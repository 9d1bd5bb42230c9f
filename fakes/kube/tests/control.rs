//! The control API: over HTTP (what the bin offers) and the in-process handle's
//! connection refusal.

mod support;

use std::process::Stdio;

use keelson_fake_kube::{FakeConfig, FakeKube};
use serde_json::{Value, json};
use support::{DEADLINE, get, request};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::timeout;

async fn post(addr: std::net::SocketAddr, path: &str, body: Value) -> Value {
    let (head, reply) = request(addr, "POST", path, &body.to_string()).await;
    assert_eq!(head.status, 200, "{path}: {reply}");
    reply
}

#[tokio::test]
async fn http_control_drives_objects_and_faults_of_the_bin() {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_fake-kube-apiserver"))
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = timeout(DEADLINE, lines.next_line()).await.unwrap().unwrap().unwrap();
    let addr: std::net::SocketAddr = url.strip_prefix("http://").unwrap().parse().unwrap();

    let vs = json!({"apiVersion": "networking.istio.io/v1beta1", "kind": "VirtualService", "metadata": {"name": "r", "namespace": "default"}, "spec": {"hosts": ["r"]}});
    let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1", "labels": {"topology.kubernetes.io/zone": "z1"}}});
    assert_eq!(post(addr, "/_fake/objects", json!([vs, node])).await["changed"], 2);
    // Unchanged content is a no-op, as in the apiserver: no new resourceVersion.
    assert_eq!(post(addr, "/_fake/objects", vs.clone()).await["resourceVersion"], Value::Null);
    let (code, got) = get(addr, "/apis/networking.istio.io/v1/namespaces/default/virtualservices/r").await;
    assert_eq!((code, got["apiVersion"].as_str()), (200, Some("networking.istio.io/v1")));
    assert_eq!(get(addr, "/api/v1/nodes/n1").await.1["metadata"]["labels"]["topology.kubernetes.io/zone"], "z1");

    post(
        addr,
        "/_fake/fault",
        json!({"group": "networking.istio.io", "resource": "virtualservices", "fault": "forbidden"}),
    )
    .await;
    assert_eq!(get(addr, "/apis/networking.istio.io/v1/virtualservices").await.0, 403);
    post(
        addr,
        "/_fake/fault",
        json!({"group": "networking.istio.io", "resource": "virtualservices", "fault": "absent"}),
    )
    .await;
    assert_eq!(get(addr, "/apis/networking.istio.io/v1/virtualservices").await.0, 404);
    post(addr, "/_fake/fault", json!({"group": "networking.istio.io", "resource": "virtualservices", "fault": null}))
        .await;
    assert_eq!(get(addr, "/apis/networking.istio.io/v1/virtualservices").await.0, 200);

    post(addr, "/_fake/delete", json!({"apiVersion": "v1", "kind": "Node", "name": "n1"})).await;
    assert_eq!(get(addr, "/api/v1/nodes/n1").await.0, 404);
    post(addr, "/_fake/down", json!({})).await;
    assert_eq!(get(addr, "/api/v1/nodes").await.0, 503);
    post(addr, "/_fake/up", json!({})).await;
    assert_eq!(get(addr, "/api/v1/nodes").await.0, 200);
    child.kill().await.unwrap();
}

#[tokio::test]
async fn refused_connections_come_back_on_the_same_address() {
    let fake = FakeKube::start(FakeConfig::default()).await.unwrap();
    assert_eq!(get(fake.addr(), "/api/v1/pods").await.0, 200);
    fake.refuse_connections();
    // Aborting the accept loop closes the socket soon after; poll with a deadline.
    timeout(DEADLINE, async {
        while TcpStream::connect(fake.addr()).await.is_ok() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("connections still accepted");
    fake.accept_connections().await.unwrap();
    assert_eq!(get(fake.addr(), "/api/v1/pods").await.0, 200);
}
