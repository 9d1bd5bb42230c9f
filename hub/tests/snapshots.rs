//! What the hub publishes with each snapshot for the sinks: per-kind
//! versions (the xDS `version_info`) and the change set since the previous
//! snapshot (which lets Delta streams diff only what changed).

use std::time::{Duration, Instant};

use keelson_hub::metrics::Metrics;
use keelson_hub::{EventStore, Hub, HubConfig, HubHandle, Op, ResourceKey, Snapshot, SourceId, SourceKind};
use keelson_storage::OpenOptions;

mod support;
use support::cluster;

async fn after(hub: &HubHandle, version: u64) -> std::sync::Arc<Snapshot> {
    let end = Instant::now() + Duration::from_secs(20);
    let mut rx = hub.snapshots();
    loop {
        if let Some(s) = rx.borrow().clone().filter(|s| s.version >= version) {
            return s;
        }
        let left = end.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no snapshot at version {version}");
        let _ = tokio::time::timeout(left, rx.changed()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_carry_kind_versions_and_the_keys_changed_since_the_last() {
    let dir = tempfile::tempdir().unwrap();
    let store = EventStore::open(dir.path(), OpenOptions { create: true, repair: false }).unwrap();
    let hub = Hub::start(store, HubConfig::default(), Metrics::default()).await.unwrap();
    let h = hub.handle();
    let api = SourceId::new(SourceKind::Api, "test");
    let key = |n: &str| ResourceKey::new(keelson_hub::kinds::ENVOY_GROUP, "Cluster", "", n);

    let first = h.submit(api.clone(), vec![cluster("a", "1s", ""), cluster("b", "1s", "")]).await.unwrap();
    let s1 = after(&h, first.version).await;
    assert_eq!(s1.kind_version(keelson_hub::kinds::ENVOY_GROUP, "Cluster"), first.version);
    assert!(s1.changes.keys.contains(&key("a")) && s1.changes.keys.contains(&key("b")));

    let second = h.submit(api.clone(), vec![cluster("b", "2s", "")]).await.unwrap();
    let s2 = after(&h, second.version).await;
    assert_eq!(s2.changes.since, Some(s1.version), "the change set starts at the previous snapshot");
    assert_eq!(s2.changes.keys.iter().collect::<Vec<_>>(), [&key("b")]);
    assert_eq!(s2.kind_version(keelson_hub::kinds::ENVOY_GROUP, "Cluster"), second.version);
    // A kind nothing touched keeps the version the hub started from.
    assert_eq!(s2.kind_version(keelson_hub::kinds::ENVOY_GROUP, "Listener"), 0);

    let gone = h
        .submit(api, vec![Op::Delete { key: key("a"), source_version: String::new(), author: String::new() }])
        .await
        .unwrap();
    let s3 = after(&h, gone.version).await;
    assert_eq!(s3.changes.since, Some(s2.version));
    assert_eq!(s3.changes.keys.iter().collect::<Vec<_>>(), [&key("a")], "deletions are changes too");
    hub.stop().await.unwrap();
}
