//! Listings: the first list is one SyncStart … SyncDone, relists append
//! only real changes, reduced Pods append nothing for status churn.

use serde_json::json;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_list_of_every_kind_is_one_listing_and_a_cold_hub_becomes_ready() {
    let dir = tempfile::tempdir().unwrap();
    let east = Cluster::start("east", dir.path()).await;
    east.put(vs("default", "reviews", "reviews"));
    east.put(service("default", "reviews"));
    east.put(pod("default", "reviews-1", "10.0.0.7", 0));
    east.put(json!({ "apiVersion": "v1", "kind": "Node", "metadata": { "name": "node-1",
        "labels": { "topology.kubernetes.io/zone": "z1", "kubernetes.io/hostname": "node-1" } } }));
    let config = east.config();
    let id = config.id();
    let running = Running::start(&dir.path().join("data"), vec![config]).await;
    let h = running.handle();
    eventually("the first snapshot", || h.current().is_some()).await;
    assert_eq!(
        running.keys(),
        [
            "core/Node//node-1@east",
            "core/Pod/default/reviews-1@east",
            "core/Service/default/reviews@east",
            "networking.istio.io/VirtualService/default/reviews",
        ]
    );
    let events = running.events_after(0);
    assert_eq!(markers(&events, &id), ["sync_start", "sync_done"], "one listing for every kind");
    let first_upsert = events.iter().position(|e| e.op.name() == "upsert").unwrap();
    let done = events.iter().position(|e| e.op.name() == "sync_done").unwrap();
    assert!(events[0].op.name() == "sync_start" && first_upsert < done);
    let health = running.health("k8s/east");
    assert!(health.up && health.synced, "{health:?}");
    // Provenance: the cluster, the resourceVersion.
    let vs_event = events.iter().find(|e| e.op.key().is_some_and(|k| k.kind == "VirtualService")).unwrap();
    assert_eq!(vs_event.origin.cluster, "east");
    let keelson_hub::Op::Upsert { source_version, body, .. } = &vs_event.op else { panic!() };
    assert!(source_version.parse::<u64>().unwrap() > 0);
    assert!(body.to_value()["metadata"].get("resourceVersion").is_none(), "metadata noise is dropped");
    // Pods and Nodes are reduced.
    let state = running.store.state_at(u64::MAX).unwrap().state;
    let pod = state.resources.iter().find(|(k, _)| k.kind == "Pod").unwrap().1.body.to_value();
    assert!(pod["status"].get("containerStatuses").is_none() && pod["status"]["podIP"] == "10.0.0.7");
    let node = state.resources.iter().find(|(k, _)| k.kind == "Node").unwrap().1.body.to_value();
    assert_eq!(node["metadata"]["labels"], json!({ "topology.kubernetes.io/zone": "z1" }));
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relist_after_410_appends_only_what_changed() {
    let dir = tempfile::tempdir().unwrap();
    let east = Cluster::start("east", dir.path()).await;
    for i in 0..20 {
        east.put(vs("default", &format!("vs-{i}"), &format!("h{i}")));
    }
    let running = Running::start(&dir.path().join("data"), vec![east.config()]).await;
    let h = running.handle();
    eventually("the first listing", || h.current().is_some_and(|s| s.resources.len() == 20)).await;
    let before = running.last_seq();

    // The API server goes away; meanwhile one object changes, one is
    // deleted, and etcd compacts past the watch's resourceVersion.
    east.fake.refuse_connections();
    east.put(vs("default", "vs-3", "changed"));
    east.delete("networking.istio.io/v1", "VirtualService", "default", "vs-7");
    east.fake.store().compact();
    east.accept_again().await;

    eventually("the relist", || h.current().is_some_and(|s| s.resources.len() == 19)).await;
    eventually("the change", || {
        running.changes_after(before).contains(&"upsert networking.istio.io/VirtualService/default/vs-3".to_string())
    })
    .await;
    let events = running.events_after(before);
    let id = keelson_hub::SourceId {
        kind: keelson_hub::SourceKind::Kubernetes,
        name: "east".into(),
        cluster: "east".into(),
    };
    // Every kind's watch was too old: each relisted, as its own listing.
    let relists = markers(&events, &id);
    assert!(!relists.is_empty() && relists.chunks(2).all(|p| p == ["sync_start", "sync_done"]), "{relists:?}");
    let mut got = changes(&events);
    got.sort();
    assert_eq!(
        got,
        [
            "delete networking.istio.io/VirtualService/default/vs-7",
            "upsert networking.istio.io/VirtualService/default/vs-3"
        ],
        "a relist of unchanged objects appends nothing"
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_dropped_without_an_error_resumes_and_pod_status_churn_appends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let east = Cluster::start("east", dir.path()).await;
    east.put(pod("default", "reviews-1", "10.0.0.7", 0));
    east.put(vs("default", "reviews", "reviews"));
    let mut config = east.config();
    config.kinds = keelson_sources::kubernetes::config::parse_kinds(&["Pod".into(), "VirtualService".into()]).unwrap();
    let running = Running::start(&dir.path().join("data"), vec![config]).await;
    let h = running.handle();
    eventually("the first listing", || h.current().is_some_and(|s| s.resources.len() == 2)).await;
    let before = running.last_seq();

    east.fake.store().drop_watches();
    // Restarts and probe timestamps change; nothing translation reads does.
    for restarts in 1..=5 {
        east.put(pod("default", "reviews-1", "10.0.0.7", restarts));
    }
    // A change the hub must see, after the churn: once it is in, the churn was read.
    east.put(vs("default", "reviews", "reviews-v2"));
    eventually("the change after the dropped watch", || {
        running.changes_after(before) == ["upsert networking.istio.io/VirtualService/default/reviews"]
    })
    .await;
    // The pod's IP is a real change.
    east.put(pod("default", "reviews-1", "10.0.0.8", 6));
    eventually("the pod's new IP", || running.changes_after(before).len() == 2).await;
    assert_eq!(running.changes_after(before)[1], "upsert core/Pod/default/reviews-1@east");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_and_a_label_selector_narrow_what_is_watched() {
    let dir = tempfile::tempdir().unwrap();
    let east = Cluster::start("east", dir.path()).await;
    for ns in ["a", "b"] {
        let mut labelled = vs(ns, "labelled", "h");
        labelled["metadata"]["labels"] = json!({ "keelson.dev/export": "true" });
        east.put(labelled);
        east.put(vs(ns, "plain", "h"));
    }
    east.put(json!({ "apiVersion": "v1", "kind": "Node", "metadata": { "name": "node-1" } }));
    let mut config = east.config();
    config.namespaces = vec!["a".into()];
    config.label_selector = Some("keelson.dev/export=true".into());
    config.kinds = keelson_sources::kubernetes::config::parse_kinds(&["VirtualService".into(), "Node".into()]).unwrap();
    let running = Running::start(&dir.path().join("data"), vec![config]).await;
    eventually("the listing", || running.health("k8s/east").synced).await;
    assert_eq!(
        running.keys(),
        ["core/Node//node-1@east", "networking.istio.io/VirtualService/a/labelled"],
        "namespace a only, labelled only; Nodes (cluster-scoped) whole"
    );
    running.stop().await;
}
