//! Multi-cluster keys and the conflict rule (issue 11 item 5): registry
//! objects are held per cluster; a config key from two configured sources
//! goes to the one listed first, the other's version is kept aside, shown,
//! and takes over when the winner deletes its own.

use keelson_hub::metrics::Metrics;
use keelson_hub::{Hub, HubConfig, HubHandle, Op, ResourceKey, SourceId, SourceKind};
use keelson_storage::OpenOptions;

fn cluster_source(name: &str) -> SourceId {
    SourceId { kind: SourceKind::Kubernetes, name: name.into(), cluster: name.into() }
}

fn vs(host: &str) -> Op {
    vs_named("reviews", host)
}

fn vs_named(name: &str, host: &str) -> Op {
    let obj = serde_json::json!({ "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": { "name": name, "namespace": "default" }, "spec": { "hosts": [host] } });
    let v = keelson_hub::object::parse_object(&obj).unwrap();
    Op::Upsert {
        key: v.key,
        source_version: "1".into(),
        body: v.body,
        location: "vs.yaml:1".into(),
        author: "helm".into(),
    }
}

fn service(cluster: &str, name: &str, port: u32) -> Op {
    let obj = serde_json::json!({ "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": name, "namespace": "default" }, "spec": { "ports": [{ "port": port }] } });
    let v = keelson_hub::object::parse_object(&obj).unwrap();
    Op::Upsert {
        key: v.key.in_cluster(cluster),
        source_version: "1".into(),
        body: v.body,
        location: String::new(),
        author: String::new(),
    }
}

fn vs_key() -> ResourceKey {
    ResourceKey::parse("VirtualService/default/reviews").unwrap()
}

fn delete_vs() -> Op {
    Op::Delete { key: vs_key(), source_version: "2".into(), author: String::new() }
}

/// The host the served VirtualService routes, and who holds it.
fn served(h: &HubHandle) -> Option<(String, String)> {
    let store = h.store().state_at(u64::MAX).unwrap().state;
    let e = store.resources.get(&vs_key())?;
    Some((e.body.to_value()["spec"]["hosts"][0].as_str()?.to_string(), e.origin.name.clone()))
}

fn lost(h: &HubHandle, source: &SourceId) -> usize {
    h.health().get(&source.to_string()).and_then(|s| s.conflicts.as_ref()).map_or(0, |c| c.count)
}

async fn start(dir: &std::path::Path, sources: Vec<SourceId>) -> Hub {
    let store = keelson_hub::EventStore::open(dir, OpenOptions { create: true, repair: false }).unwrap();
    Hub::start(store, HubConfig { sources, ..HubConfig::default() }, Metrics::default()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_listed_cluster_wins_and_the_loser_takes_over_on_delete() {
    let dir = tempfile::tempdir().unwrap();
    let (east, west) = (cluster_source("east"), cluster_source("west"));
    let hub = start(dir.path(), vec![east.clone(), west.clone()]).await;
    let h = hub.handle();
    // Each cluster holds another object, so one delete is not a mass
    // deletion the guard would hold.
    h.submit(east.clone(), vec![vs_named("details", "details")]).await.unwrap();

    // West alone: no conflict, it holds the key.
    h.submit(west.clone(), vec![vs("west.example")]).await.unwrap();
    assert_eq!(served(&h), Some(("west.example".into(), "west".into())));
    // East is listed first: it wins, west's version goes aside and is shown.
    let won = h.submit(east.clone(), vec![vs("east.example")]).await.unwrap();
    assert_eq!(won.changed, 1);
    assert_eq!(served(&h), Some(("east.example".into(), "east".into())));
    assert_eq!(lost(&h, &west), 1);
    let report = &h.health()[&west.to_string()].conflicts.clone().unwrap();
    assert!(report.sample[0].contains("held by k8s/east, listed before k8s/west"), "{report:?}");
    // West updating its version changes nothing served, appends nothing.
    let aside = h.submit(west.clone(), vec![vs("west2.example")]).await.unwrap();
    assert_eq!((aside.changed, aside.appended), (0, None));
    // West deleting a key it does not hold only drops its version aside...
    h.submit(west.clone(), vec![delete_vs()]).await.unwrap();
    assert_eq!(served(&h), Some(("east.example".into(), "east".into())), "west cannot delete east's object");
    assert_eq!(lost(&h, &west), 0);
    // ...and when east deletes its own, the newest version west listed takes over.
    h.submit(west.clone(), vec![vs("west3.example")]).await.unwrap();
    h.submit(east.clone(), vec![delete_vs()]).await.unwrap();
    assert_eq!(served(&h), Some(("west3.example".into(), "west".into())));
    assert_eq!(lost(&h, &west), 0);
    // A partial west listing that keeps the VirtualService's location (as a
    // Kubernetes kind's relist keeps the other kinds) leaves it aside.
    h.submit(east.clone(), vec![vs("east.example")]).await.unwrap();
    assert_eq!(lost(&h, &west), 1);
    h.submit_keeping(west.clone(), vec![Op::SyncStart, Op::SyncDone], vec!["vs.yaml".into()]).await.unwrap();
    assert_eq!(lost(&h, &west), 1, "a kept location stays aside");
    h.submit(east.clone(), vec![delete_vs()]).await.unwrap();
    assert_eq!(served(&h), Some(("west3.example".into(), "west".into())));
    // A west listing that no longer has it forgets it; east's return wins again.
    h.submit(east.clone(), vec![vs("east.example")]).await.unwrap();
    assert_eq!(lost(&h, &west), 1);
    h.submit(west.clone(), vec![Op::SyncStart, Op::SyncDone]).await.unwrap();
    assert_eq!(lost(&h, &west), 0);
    h.submit(east.clone(), vec![delete_vs()]).await.unwrap();
    assert_eq!(served(&h), None, "nothing was left aside to take over");
    hub.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_objects_are_per_cluster_and_never_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let (east, west) = (cluster_source("east"), cluster_source("west"));
    let hub = start(dir.path(), vec![east.clone(), west.clone()]).await;
    let h = hub.handle();
    let listing = |cluster: &str, names: &[&str]| {
        let mut ops = vec![Op::SyncStart];
        ops.extend(names.iter().map(|n| service(cluster, n, 9080)));
        ops.push(Op::SyncDone);
        ops
    };
    h.submit(east.clone(), listing("east", &["reviews", "ratings"])).await.unwrap();
    h.submit(west.clone(), listing("west", &["reviews", "ratings"])).await.unwrap();
    let keys = || -> Vec<String> {
        let state = h.store().state_at(u64::MAX).unwrap().state;
        state.resources.keys().map(ToString::to_string).collect()
    };
    assert_eq!(
        keys(),
        [
            "core/Service/default/ratings@east",
            "core/Service/default/ratings@west",
            "core/Service/default/reviews@east",
            "core/Service/default/reviews@west"
        ]
    );
    assert_eq!((lost(&h, &east), lost(&h, &west)), (0, 0));
    // One cluster's relist without a Service deletes only its own.
    h.submit(west.clone(), listing("west", &["ratings"])).await.unwrap();
    assert_eq!(
        keys(),
        ["core/Service/default/ratings@east", "core/Service/default/ratings@west", "core/Service/default/reviews@east"]
    );
    hub.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_outside_the_configured_order_is_last_writer_wins() {
    let dir = tempfile::tempdir().unwrap();
    let east = cluster_source("east");
    let hub = start(dir.path(), vec![east.clone()]).await;
    let h = hub.handle();
    h.submit(east.clone(), vec![Op::SyncStart, vs("east.example"), Op::SyncDone]).await.unwrap();
    let api = SourceId::new(SourceKind::Api, "push");
    h.submit(api.clone(), vec![vs("pushed.example")]).await.unwrap();
    assert_eq!(served(&h), Some(("pushed.example".into(), "push".into())));
    // The same body from another source still moves the object to it.
    let again = h.submit(east.clone(), vec![vs("pushed.example")]).await.unwrap();
    assert_eq!(again.changed, 1);
    assert_eq!(served(&h), Some(("pushed.example".into(), "east".into())));
    hub.stop().await.unwrap();
}
