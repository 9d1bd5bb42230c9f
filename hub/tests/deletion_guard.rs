//! The mass-deletion guard (issue 9 item 10): a listing that would delete
//! more than half of a source's objects is held, reported, and applied only
//! once it persists for `confirm_after` or an operator confirms it.

use std::time::{Duration, Instant};

use keelson_hub::guard::DeletionGuard;
use keelson_hub::metrics::Metrics;
use keelson_hub::{EventStore, Hub, HubConfig, HubHandle, Op, SourceId, SourceKind};
use keelson_storage::OpenOptions;

mod support;
use support::cluster;

/// A full listing of `names`, as a source sends after (re)connecting.
fn listing(names: &[String]) -> Vec<Op> {
    let mut ops = vec![Op::SyncStart];
    ops.extend(names.iter().map(|n| cluster(n, "1s", &format!("{n}.yaml:1"))));
    ops.push(Op::SyncDone);
    ops
}

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("c{i}")).collect()
}

fn held_objects(store: &EventStore) -> usize {
    store.state_at(u64::MAX).unwrap().state.resources.len()
}

async fn start(dir: &std::path::Path, guard: DeletionGuard) -> Hub {
    let store = EventStore::open(dir, OpenOptions { create: true, repair: false }).unwrap();
    let cfg = HubConfig { deletion_guard: guard, ..HubConfig::default() };
    Hub::start(store, cfg, Metrics::default()).await.unwrap()
}

fn held_in_health(h: &HubHandle, source: &SourceId) -> Option<usize> {
    h.health().get(&source.to_string()).and_then(|s| s.held_deletions.as_ref()).map(|r| r.count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_listing_is_held_then_applied_after_confirm_after() {
    let dir = tempfile::tempdir().unwrap();
    let guard = DeletionGuard { confirm_after: Duration::from_millis(600), ..DeletionGuard::default() };
    let hub = start(dir.path(), guard).await;
    let h = hub.handle();
    let files = SourceId::new(SourceKind::File, "conf");
    h.submit(files.clone(), listing(&names(10))).await.unwrap();

    // Small deletions pass at once: 2 of 10.
    let small = h.submit(files.clone(), listing(&names(8))).await.unwrap();
    assert_eq!((small.changed, small.held), (2, 0));
    assert_eq!(held_objects(h.store()), 8);

    // The directory comes back empty: nothing is deleted yet, and it shows.
    let wipe = h.submit(files.clone(), listing(&[])).await.unwrap();
    assert_eq!((wipe.changed, wipe.held), (0, 8));
    assert_eq!(held_objects(h.store()), 8);
    assert_eq!(held_in_health(&h, &files), Some(8));
    let mut text = String::new();
    let mut registry = prometheus_client::registry::Registry::default();
    h.metrics().register(&mut registry);
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(text.contains("keelson_deletions_held{source=\"file/conf\"} 8"), "{text}");

    // The same listing persists: after confirm_after, the deletions apply.
    let deadline = Instant::now() + Duration::from_secs(10);
    while held_objects(h.store()) > 0 {
        assert!(Instant::now() < deadline, "held deletions were never applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(held_in_health(&h, &files), None);
    hub.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relisting_releases_a_hold_and_an_operator_can_confirm_one() {
    let dir = tempfile::tempdir().unwrap();
    let guard = DeletionGuard { confirm_after: Duration::from_secs(3600), ..DeletionGuard::default() };
    let hub = start(dir.path(), guard).await;
    let h = hub.handle();
    let files = SourceId::new(SourceKind::File, "conf");
    h.submit(files.clone(), listing(&names(6))).await.unwrap();

    // A briefly empty mount, then the objects are back: nothing was lost.
    assert_eq!(h.submit(files.clone(), listing(&[])).await.unwrap().held, 6);
    let back = h.submit(files.clone(), listing(&names(6))).await.unwrap();
    assert_eq!(back.changed, 0, "an identical relist changes nothing");
    assert_eq!(held_in_health(&h, &files), None, "relisting released the hold");

    // Incremental deletes (how the file source reports removed files) are guarded too.
    let deletes: Vec<Op> = names(6)
        .iter()
        .map(|n| Op::Delete {
            key: keelson_hub::ResourceKey::new("xds.keelson.dev", "Cluster", "", n),
            source_version: String::new(),
            author: String::new(),
        })
        .collect();
    assert_eq!(h.submit(files.clone(), deletes).await.unwrap().held, 6);
    assert_eq!(h.confirm_deletions("file/nope").await.unwrap(), 0);
    assert_eq!(h.confirm_deletions("file/conf").await.unwrap(), 6);
    assert_eq!(held_objects(h.store()), 0);

    // Renaming everything is churn, not a wipe, and is applied at once.
    h.submit(files.clone(), listing(&names(4))).await.unwrap();
    let renamed: Vec<String> = (0..4).map(|i| format!("renamed{i}")).collect();
    let churn = h.submit(files.clone(), listing(&renamed)).await.unwrap();
    assert_eq!((churn.changed, churn.held), (8, 0));

    // Explicit push API deletes are operator actions: never held.
    let api = SourceId::new(SourceKind::Api, "push");
    h.submit(api.clone(), vec![cluster("solo", "1s", "solo.yaml:1")]).await.unwrap();
    let del = Op::Delete {
        key: keelson_hub::ResourceKey::new("xds.keelson.dev", "Cluster", "", "solo"),
        source_version: String::new(),
        author: String::new(),
    };
    assert_eq!(h.submit(api, vec![del]).await.unwrap().changed, 1);
    hub.stop().await.unwrap();
}
