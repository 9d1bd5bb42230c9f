//! The fake's wire behaviour, checked against PROTOCOL.md §6 over raw HTTP/1.1.

mod support;

use std::time::Duration;

use keelson_fake_kube::{FakeConfig, FakeKube, KindFault};
use serde_json::{Value, json};
use support::{get, request, watch};

fn svc(ns: &str, name: &str, app: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns, "labels": {"app": app}}, "spec": {"ports": [{"port": 80}]}})
}

async fn fake() -> FakeKube {
    let config = FakeConfig { bookmark_interval: Duration::from_millis(200), ..FakeConfig::default() };
    FakeKube::start(config).await.unwrap()
}

#[tokio::test]
async fn discovery_lists_istio_groups_in_several_versions() {
    let f = fake().await;
    let (code, groups) = get(f.addr(), "/apis").await;
    assert_eq!((code, groups["kind"].as_str()), (200, Some("APIGroupList")));
    let net = groups["groups"].as_array().unwrap().iter().find(|g| g["name"] == "networking.istio.io").unwrap();
    let versions: Vec<_> = net["versions"].as_array().unwrap().iter().map(|v| v["version"].as_str().unwrap()).collect();
    assert_eq!(versions, ["v1", "v1beta1", "v1alpha3"]);
    assert_eq!(net["preferredVersion"]["groupVersion"], "networking.istio.io/v1");
    let (_, list) = get(f.addr(), "/apis/networking.istio.io/v1alpha3").await;
    assert_eq!(list["kind"], "APIResourceList");
    assert!(
        list["resources"].as_array().unwrap().iter().any(|r| r["name"] == "envoyfilters" && r["kind"] == "EnvoyFilter")
    );
    let (_, core) = get(f.addr(), "/api/v1").await;
    assert!(core["resources"].as_array().unwrap().iter().any(|r| r["name"] == "nodes" && r["namespaced"] == false));
    assert_eq!(get(f.addr(), "/api").await.1["versions"], json!(["v1"]));
    // A CRD not installed disappears from discovery and its paths 404.
    f.store().set_fault("telemetry.istio.io", "telemetries", Some(KindFault::Absent));
    assert_eq!(get(f.addr(), "/apis/telemetry.istio.io").await.0, 404);
    let (code, status) = get(f.addr(), "/apis/telemetry.istio.io/v1/telemetries").await;
    assert_eq!((code, status["reason"].as_str(), status["code"].as_u64()), (404, Some("NotFound"), Some(404)));
}

#[tokio::test]
async fn paged_list_keeps_one_resource_version_and_expires_after_compaction() {
    let f = fake().await;
    for i in 0..5 {
        f.store().upsert(svc("default", &format!("s{i}"), "web")).unwrap();
    }
    let (_, page1) = get(f.addr(), "/api/v1/services?limit=2").await;
    let rv = page1["metadata"]["resourceVersion"].clone();
    assert_eq!(page1["items"].as_array().unwrap().len(), 2);
    // A change between pages is not seen by the rest of this list (etcd reads at the first page's RV).
    f.store().upsert(svc("default", "s4", "changed")).unwrap();
    f.store().delete("v1", "Service", "default", "s3").unwrap();
    let token = page1["metadata"]["continue"].as_str().unwrap().to_owned();
    let (_, page2) = get(f.addr(), &format!("/api/v1/services?limit=10&continue={token}")).await;
    assert_eq!(page2["metadata"]["resourceVersion"], rv);
    let names: Vec<_> =
        page2["items"].as_array().unwrap().iter().map(|o| o["metadata"]["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["s2", "s3", "s4"]);
    assert_eq!(page2["items"][2]["metadata"]["labels"]["app"], "web");
    assert!(page2["metadata"].get("continue").is_none());
    f.store().compact();
    let (code, status) = get(f.addr(), &format!("/api/v1/services?limit=2&continue={token}")).await;
    assert_eq!((code, status["reason"].as_str(), status["code"].as_u64()), (410, Some("Expired"), Some(410)));
}

#[tokio::test]
async fn selectors_namespaces_and_errors() {
    let f = fake().await;
    f.store().bulk_load(vec![svc("a", "x", "web"), svc("b", "y", "db"), svc("b", "z", "web")]).unwrap();
    let names = |v: &Value| -> Vec<String> {
        v["items"].as_array().unwrap().iter().map(|o| o["metadata"]["name"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(names(&get(f.addr(), "/api/v1/services?labelSelector=app%3Dweb").await.1), ["x", "z"]);
    assert_eq!(names(&get(f.addr(), "/api/v1/services?labelSelector=app%21%3Dweb").await.1), ["y"]);
    assert_eq!(names(&get(f.addr(), "/api/v1/namespaces/b/services").await.1), ["y", "z"]);
    let (code, obj) = get(f.addr(), "/api/v1/namespaces/b/services/z").await;
    assert_eq!((code, obj["kind"].as_str()), (200, Some("Service")));
    let (code, status) = get(f.addr(), "/api/v1/namespaces/b/services/nope").await;
    assert_eq!(code, 404);
    assert_eq!(status["message"], "services \"nope\" not found");
    assert_eq!(status["details"], json!({"kind": "services", "name": "nope"}));
    f.store().set_fault("", "services", Some(KindFault::Forbidden));
    let (code, status) = get(f.addr(), "/api/v1/services").await;
    assert_eq!((code, status["reason"].as_str()), (403, Some("Forbidden")));
    assert!(status["message"].as_str().unwrap().contains("cannot list resource \"services\""));
    // Discovery stays open to every authenticated user (system:discovery):
    // RBAC refusing a kind does not hide it.
    let (code, core) = get(f.addr(), "/api/v1").await;
    assert_eq!(code, 200);
    assert!(core["resources"].as_array().unwrap().iter().any(|r| r["name"] == "services"), "{core}");
    f.store().set_down(true);
    assert_eq!(get(f.addr(), "/api/v1/pods").await.0, 503);
}

#[tokio::test]
async fn watch_sends_changes_after_the_rv_and_selector_exits_as_deleted() {
    let f = fake().await;
    let rv0 = f.store().upsert(svc("default", "old", "web")).unwrap().unwrap();
    let mut w =
        watch(f.addr(), &format!("/api/v1/services?watch=true&resourceVersion={rv0}&labelSelector=app%3Dweb")).await;
    let rv1 = f.store().upsert(svc("default", "a", "web")).unwrap().unwrap();
    f.store().upsert(svc("default", "b", "db")).unwrap();
    let rv2 = f.store().upsert(svc("default", "a", "db")).unwrap().unwrap();
    f.store().upsert(svc("default", "old", "web2")).unwrap();
    let e = w.event().await.unwrap();
    assert_eq!(
        (e["type"].as_str(), e["object"]["metadata"]["resourceVersion"].clone()),
        (Some("ADDED"), json!(rv1.to_string()))
    );
    let e = w.event().await.unwrap();
    assert_eq!(e["type"], "DELETED", "an object leaving the selector is DELETED");
    assert_eq!(e["object"]["metadata"]["resourceVersion"], rv2.to_string());
    assert_eq!(e["object"]["metadata"]["labels"]["app"], "web", "DELETED carries the last matching state");
    assert_eq!(w.event().await.unwrap()["object"]["metadata"]["name"], "old");
    let del = f.store().delete("v1", "Service", "default", "old").unwrap();
    // "old" left the selector already: its deletion is not sent again; a new match is.
    f.store().upsert(svc("default", "c", "web")).unwrap();
    let e = w.event().await.unwrap();
    assert_eq!((e["type"].as_str(), e["object"]["metadata"]["name"].as_str()), (Some("ADDED"), Some("c")));
    assert!(del.is_some());
}

#[tokio::test]
async fn too_old_watch_is_one_error_event_in_a_200_stream() {
    let f = fake().await;
    let rv = f.store().upsert(svc("default", "a", "web")).unwrap().unwrap();
    f.store().upsert(svc("default", "a", "web2")).unwrap();
    let compacted = f.store().compact();
    let mut w = watch(f.addr(), &format!("/api/v1/services?watch=true&resourceVersion={rv}")).await;
    let e = w.event().await.unwrap();
    let expected = json!({"type": "ERROR", "object": {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "reason": "Expired", "code": 410,
        "message": format!("too old resource version: {rv} ({compacted})")}});
    assert_eq!(e, expected);
    assert!(w.event().await.is_none(), "the stream ends after the ERROR event");
}

#[tokio::test]
async fn deletion_bookmarks_timeout_and_drop() {
    let f = fake().await;
    let rv = f.store().upsert(svc("default", "a", "web")).unwrap().unwrap();
    let path = format!("/api/v1/namespaces/default/services?watch=true&resourceVersion={rv}&allowWatchBookmarks=true");
    let mut w = watch(f.addr(), &path).await;
    let del = f.store().delete("v1", "Service", "default", "a").unwrap().unwrap();
    let e = w.event().await.unwrap();
    assert_eq!(
        (e["type"].as_str(), e["object"]["metadata"]["resourceVersion"].clone()),
        (Some("DELETED"), json!(del.to_string()))
    );
    let b = w.event().await.unwrap();
    let bookmark = json!({"type": "BOOKMARK", "object": {"kind": "Service", "apiVersion": "v1", "metadata": {"resourceVersion": del.to_string()}}});
    assert_eq!(b, bookmark);
    f.store().drop_watches();
    loop {
        match w.event().await {
            None => break,
            Some(e) => assert_eq!(e["type"], "BOOKMARK", "a dropped watch ends without an ERROR event"),
        }
    }
    let started = std::time::Instant::now();
    let mut w = watch(f.addr(), "/api/v1/services?watch=true&timeoutSeconds=1").await;
    assert!(w.event().await.is_none(), "no events, the stream just closes at timeoutSeconds");
    assert!(started.elapsed() >= Duration::from_secs(1));
    let (head, _) = request(f.addr(), "POST", "/_fake/compact", "").await;
    assert_eq!(head.status, 200);
}

#[tokio::test]
async fn an_old_istio_cluster_prefers_v1beta1_and_does_not_serve_v1() {
    let kinds = vec![keelson_fake_kube::ResourceKind::new(
        "networking.istio.io",
        &["v1beta1", "v1alpha3"],
        "virtualservices",
        "VirtualService",
        true,
    )];
    let f = FakeKube::start(FakeConfig { kinds, ..FakeConfig::default() }).await.unwrap();
    let (_, group) = get(f.addr(), "/apis/networking.istio.io").await;
    assert_eq!(group["preferredVersion"]["version"], "v1beta1");
    assert_eq!(get(f.addr(), "/apis/networking.istio.io/v1/virtualservices").await.0, 404);
    assert_eq!(get(f.addr(), "/apis/networking.istio.io/v1alpha3/virtualservices").await.0, 200);
}

#[tokio::test]
async fn watch_without_rv_starts_with_current_state_and_field_selectors_apply() {
    let f = fake().await;
    f.store()
        .bulk_load(vec![svc("default", "a", "web"), svc("default", "b", "web"), svc("other", "a", "web")])
        .unwrap();
    let mut w = watch(f.addr(), "/api/v1/services?watch=true&fieldSelector=metadata.name%3Da").await;
    let mut first = Vec::new();
    for _ in 0..2 {
        let e = w.event().await.unwrap();
        assert_eq!(e["type"], "ADDED");
        first.push(e["object"]["metadata"]["namespace"].as_str().unwrap().to_owned());
    }
    assert_eq!(first, ["default", "other"]);
    f.store().upsert(svc("default", "b", "db")).unwrap();
    f.store().upsert(svc("default", "a", "db")).unwrap();
    let e = w.event().await.unwrap();
    assert_eq!((e["type"].as_str(), e["object"]["metadata"]["name"].as_str()), (Some("MODIFIED"), Some("a")));
    let (code, status) = get(f.addr(), "/api/v1/pods?fieldSelector=spec.nodeName%3Dn1").await;
    assert_eq!((code, status["reason"].as_str()), (400, Some("BadRequest")));
}

#[tokio::test]
async fn a_crd_going_away_ends_its_watches_but_rbac_changes_do_not() {
    let f = fake().await;
    let mut svc_watch = watch(f.addr(), "/api/v1/services?watch=true&resourceVersion=1").await;
    let mut vs_watch =
        watch(f.addr(), "/apis/networking.istio.io/v1/virtualservices?watch=true&resourceVersion=1").await;
    f.store().set_fault("", "services", Some(KindFault::Forbidden));
    f.store().set_fault("networking.istio.io", "virtualservices", Some(KindFault::Absent));
    assert!(vs_watch.event().await.is_none(), "the absent CRD's watch ends");
    let rv = f.store().upsert(svc("default", "a", "web")).unwrap().unwrap();
    let e = svc_watch.event().await.unwrap();
    assert_eq!(
        (e["type"].as_str(), e["object"]["metadata"]["resourceVersion"].clone()),
        (Some("ADDED"), json!(rv.to_string()))
    );
}

#[tokio::test]
async fn a_watch_ahead_of_the_store_is_silent_until_reached() {
    let f = fake().await;
    let ahead = f.store().resource_version() + 2;
    let mut w = watch(f.addr(), &format!("/api/v1/services?watch=true&resourceVersion={ahead}")).await;
    f.store().upsert(svc("default", "one", "web")).unwrap();
    f.store().upsert(svc("default", "two", "web")).unwrap();
    let three = f.store().upsert(svc("default", "three", "web")).unwrap().unwrap();
    assert_eq!(three, ahead + 1);
    let e = w.event().await.unwrap();
    assert_eq!((e["type"].as_str(), e["object"]["metadata"]["name"].as_str()), (Some("ADDED"), Some("three")));
}
