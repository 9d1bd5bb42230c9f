//! Faults: an API server that cannot be reached, RBAC refusing one kind, a
//! CRD that is not installed, an object that does not validate, a relist
//! that comes back empty. Each keeps what it cannot see.

use std::time::Duration;

use keelson_fake_kube::KindFault;
use keelson_hub::HubConfig;
use keelson_hub::guard::DeletionGuard;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_at_start_a_warm_hub_serves_the_log_and_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let east = Cluster::start("east", dir.path()).await;
    east.put(vs("default", "reviews", "reviews"));
    east.put(service("default", "reviews"));
    let running = Running::start(&data, vec![east.config()]).await;
    let h = running.handle();
    eventually("the first listing", || h.current().is_some_and(|s| s.resources.len() == 2)).await;
    drop(h);
    running.stop().await;

    // Restart with the API server down.
    east.fake.refuse_connections();
    let running = Running::start(&data, vec![east.config()]).await;
    let h = running.handle();
    assert_eq!(h.current().expect("a warm hub serves at once").resources.len(), 2);
    eventually("the source to report the outage", || {
        let health = running.health("k8s/east");
        !health.up && health.last_error.is_some()
    })
    .await;
    let seq = running.last_seq();
    // While it is down, the cluster changes.
    east.put(vs("default", "ratings", "ratings"));
    east.accept_again().await;
    eventually("the reconnect", || h.current().is_some_and(|s| s.resources.len() == 3)).await;
    eventually("the source to be up", || running.health("k8s/east").up).await;
    assert_eq!(running.changes_after(seq), ["upsert networking.istio.io/VirtualService/default/ratings"]);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_kind_is_down_with_the_api_message_and_the_rest_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let east = Cluster::start("east", dir.path()).await;
    east.put(vs("default", "reviews", "reviews"));
    east.put(service("default", "reviews"));
    let running = Running::start(&data, vec![east.config()]).await;
    eventually("the first listing", || running.handle().current().is_some_and(|s| s.resources.len() == 2)).await;
    running.stop().await;

    // RBAC now refuses VirtualServices; a Service is added.
    east.fake.store().set_fault("networking.istio.io", "virtualservices", Some(KindFault::Forbidden));
    east.put(service("default", "ratings"));
    let running = Running::start(&data, vec![east.config()]).await;
    let h = running.handle();
    eventually("the other kinds to sync", || running.health("k8s/east").synced).await;
    eventually("the new Service", || running.keys().contains(&"core/Service/default/ratings@east".to_string())).await;
    let health = running.health("k8s/east");
    let error = health.errors.iter().find(|e| e.starts_with("networking.istio.io/VirtualService")).expect("VS is down");
    assert!(error.contains("403") && error.contains("forbidden"), "{error}");
    assert!(!health.up);
    assert!(
        running.keys().contains(&"networking.istio.io/VirtualService/default/reviews".to_string()),
        "a kind the source cannot read keeps its objects"
    );
    // RBAC fixed: the kind lists, and only its real changes append.
    east.put(vs("default", "reviews", "reviews-v2"));
    let seq = running.last_seq();
    east.fake.store().set_fault("networking.istio.io", "virtualservices", None);
    eventually("the kind to recover", || running.health("k8s/east").up).await;
    eventually("its change", || !running.changes_after(seq).is_empty()).await;
    assert_eq!(running.changes_after(seq), ["upsert networking.istio.io/VirtualService/default/reviews"]);
    assert!(h.current().is_some());
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crd_that_is_not_installed_is_skipped_then_picked_up() {
    let dir = tempfile::tempdir().unwrap();
    let east = Cluster::start("east", dir.path()).await;
    east.fake.store().set_fault("extensions.istio.io", "wasmplugins", Some(KindFault::Absent));
    east.put(service("default", "reviews"));
    let running = Running::start(&dir.path().join("data"), vec![east.config()]).await;
    let h = running.handle();
    eventually("the listing without the CRD", || running.health("k8s/east").synced).await;
    let health = running.health("k8s/east");
    assert!(health.up, "a missing CRD is not an outage: {health:?}");
    assert!(health.errors.iter().any(|e| e.contains("WasmPlugin") && e.contains("not served")), "{health:?}");
    // The CRD is installed and an object created: it arrives.
    east.fake.store().set_fault("extensions.istio.io", "wasmplugins", None);
    east.put(serde_json::json!({ "apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin",
        "metadata": { "name": "auth", "namespace": "default" }, "spec": { "url": "oci://example/auth:1" } }));
    eventually("the WasmPlugin", || {
        h.current().is_some_and(|s| s.of_kind("extensions.istio.io", "WasmPlugin").count() == 1)
    })
    .await;
    eventually("the warning to clear", || running.health("k8s/east").errors.is_empty()).await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_object_is_rejected_alone_and_its_last_good_version_kept() {
    let dir = tempfile::tempdir().unwrap();
    let east = Cluster::start("east", dir.path()).await;
    east.put(vs("default", "reviews", "reviews"));
    east.put(vs("default", "ratings", "ratings"));
    let running = Running::start(&dir.path().join("data"), vec![east.config()]).await;
    let h = running.handle();
    eventually("the listing", || h.current().is_some_and(|s| s.resources.len() == 2)).await;
    let mut broken = vs("default", "reviews", "reviews");
    broken["spec"]["hosts"] = serde_json::json!([]);
    east.put(broken);
    eventually("the error", || running.health("k8s/east").errors.iter().any(|e| e.contains("spec.hosts"))).await;
    // A relist (410 after compaction) must not delete the last good version.
    east.fake.refuse_connections();
    east.put(vs("default", "ratings", "ratings-v2"));
    east.fake.store().compact();
    east.accept_again().await;
    eventually("the relist", || {
        running.changes_after(0).contains(&"upsert networking.istio.io/VirtualService/default/ratings".to_string())
            && h.current().is_some_and(|s| {
                s.of_kind("networking.istio.io", "VirtualService")
                    .any(|(_, e)| e.body.to_value()["spec"]["hosts"][0] == "ratings-v2")
            })
    })
    .await;
    assert!(running.events_after(0).iter().filter(|e| e.op.name() == "sync_done").count() >= 2, "it relisted");
    let state = running.store.state_at(u64::MAX).unwrap().state;
    let reviews = state.resources.iter().find(|(k, _)| k.name == "reviews").expect("kept").1;
    assert_eq!(reviews.body.to_value()["spec"]["hosts"][0], "reviews", "the last good version");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relist_that_comes_back_empty_is_held_by_the_mass_deletion_guard() {
    let dir = tempfile::tempdir().unwrap();
    let east = Cluster::start("east", dir.path()).await;
    for i in 0..10 {
        east.put(vs("default", &format!("vs-{i}"), "h"));
        east.put(service("default", &format!("svc-{i}")));
    }
    for i in 0..40 {
        east.put(pod("default", &format!("pod-{i}"), &format!("10.0.0.{i}"), 0));
    }
    let guard = DeletionGuard { confirm_after: Duration::from_secs(3600), ..DeletionGuard::default() };
    let cfg = HubConfig { deletion_guard: guard, ..HubConfig::default() };
    let running = Running::start_with(&dir.path().join("data"), vec![east.config()], cfg).await;
    let h = running.handle();
    eventually("the listing", || h.current().is_some_and(|s| s.resources.len() == 60)).await;
    // Every VirtualService vanishes across a compaction: one kind's relist
    // comes back empty, a sixth of the cluster's objects.
    east.fake.refuse_connections();
    for i in 0..10 {
        east.delete("networking.istio.io/v1", "VirtualService", "default", &format!("vs-{i}"));
    }
    east.fake.store().compact();
    east.accept_again().await;
    eventually("the held deletions", || running.health("k8s/east").held_deletions.is_some_and(|r| r.count == 10)).await;
    assert_eq!(running.keys().len(), 60, "nothing deleted yet");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_kind_holds_the_first_listing_and_lists_once_let_through() {
    // 429 is the API server's priority-and-fairness answer: transient. The
    // kube client retries it honouring Retry-After (as client-go does), so
    // unlike a 403 it must not close the listing without the kind.
    let dir = tempfile::tempdir().unwrap();
    let east = Cluster::start("east", dir.path()).await;
    east.fake.store().set_fault("", "services", Some(KindFault::Throttled { retry_after: 1 }));
    east.put(service("default", "reviews"));
    east.put(vs("default", "reviews", "reviews"));
    let running = Running::start(&dir.path().join("data"), vec![east.config()]).await;
    // Every other kind lists at once; the listing stays open for Services
    // through a few Retry-After rounds.
    eventually("the other kinds", || running.keys().len() == 1).await;
    let until = std::time::Instant::now() + std::time::Duration::from_millis(2500);
    while std::time::Instant::now() < until {
        assert!(!running.health("k8s/east").synced, "a throttled kind must hold the first listing");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    east.fake.store().set_fault("", "services", None);
    eventually("the listing", || running.health("k8s/east").synced).await;
    assert_eq!(
        running.keys(),
        ["core/Service/default/reviews@east", "networking.istio.io/VirtualService/default/reviews"]
    );
    running.stop().await;
}
