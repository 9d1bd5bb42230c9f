//! Two clusters: registry objects per cluster, config conflicts decided by
//! the order of the configured clusters, provenance with the field manager.

use serde_json::json;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clusters_keep_their_registries_apart_and_the_first_wins_a_config_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let east = Cluster::start("east", dir.path()).await;
    let west = Cluster::start("west", dir.path()).await;
    for (cluster, host) in [(&east, "east.example"), (&west, "west.example")] {
        cluster.put(service("default", "reviews"));
        cluster.put(vs("default", "reviews", host));
        cluster.put(vs("default", &format!("only-{}", cluster.name), host));
    }
    let running = Running::start(&dir.path().join("data"), vec![east.config(), west.config()]).await;
    let h = running.handle();
    eventually("both clusters", || running.health("k8s/east").synced && running.health("k8s/west").synced).await;
    eventually("the snapshot", || h.current().is_some()).await;
    let keys = running.keys();
    for key in [
        "core/Service/default/reviews@east",
        "core/Service/default/reviews@west",
        "networking.istio.io/VirtualService/default/only-east",
        "networking.istio.io/VirtualService/default/only-west",
    ] {
        assert!(keys.contains(&key.to_string()), "{key} in {keys:?}");
    }
    let host = |h: &keelson_hub::HubHandle| {
        let state = h.store().state_at(u64::MAX).unwrap().state;
        let key = keelson_hub::ResourceKey::parse("VirtualService/default/reviews").unwrap();
        let e = state.resources.get(&key).cloned();
        e.map(|e| (e.body.to_value()["spec"]["hosts"][0].as_str().unwrap().to_string(), e.origin.name.clone()))
    };
    assert_eq!(host(&h), Some(("east.example".into(), "east".into())), "east is configured first");
    let conflicts = running.health("k8s/west").conflicts.expect("west lost one");
    assert_eq!(conflicts.count, 1);
    assert!(conflicts.sample[0].contains("VirtualService/default/reviews"), "{conflicts:?}");

    // East deletes its VirtualService: west's takes over.
    east.delete("networking.istio.io/v1", "VirtualService", "default", "reviews");
    eventually("west's version", || host(&h) == Some(("west.example".into(), "west".into()))).await;
    eventually("the conflict to clear", || running.health("k8s/west").conflicts.is_none()).await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provenance_records_the_cluster_resource_version_and_field_manager() {
    let dir = tempfile::tempdir().unwrap();
    let east = Cluster::start("east", dir.path()).await;
    // The fake keeps managedFields as kube-apiserver does: one entry per
    // manager, stamped with the write's time, newest last.
    east.fake.store().upsert_as(vs("default", "reviews", "reviews"), "helm").unwrap();
    let mut edited = vs("default", "reviews", "reviews");
    edited["spec"]["hosts"] = json!(["reviews", "reviews.example"]);
    east.fake.store().upsert_as(edited, "argocd-controller").unwrap();
    let running = Running::start(&dir.path().join("data"), vec![east.config()]).await;
    eventually("the object", || running.keys().len() == 1).await;
    let key = keelson_hub::ResourceKey::parse("VirtualService/default/reviews").unwrap();
    let history: Vec<_> = running.store.history(&key).map(Result::unwrap).collect();
    let keelson_hub::Op::Upsert { source_version, author, .. } = &history[0].op else { panic!() };
    assert_eq!(author, "argocd-controller", "the newest managedFields entry");
    assert!(!source_version.is_empty());
    assert_eq!((history[0].origin.name.as_str(), history[0].origin.cluster.as_str()), ("east", "east"));
    running.stop().await;
}
