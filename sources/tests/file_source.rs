//! The file source against a real hub and log, including the way kubelet
//! updates a mounted ConfigMap: files are symlinks through `..data`, which is
//! itself a symlink swapped atomically to a new timestamped directory.

use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::{Duration, Instant};

use keelson_hub::metrics::Metrics;
use keelson_hub::{EventStore, Hub, HubConfig, HubHandle};
use keelson_sources::Source;
use keelson_sources::file::{FileSource, FileSourceConfig};
use keelson_storage::OpenOptions;

const VS: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: { name: reviews }\nspec:\n  hosts: [reviews]\n  gateways: [GATEWAY]\n";

/// Writes one "atomic writer" generation the way kubelet does.
fn configmap_generation(root: &Path, generation: &str, gateway: &str) {
    let dir = root.join(format!("..{generation}"));
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("reviews.yaml"), VS.replace("GATEWAY", gateway)).unwrap();
    let tmp = root.join("..data_tmp");
    symlink(format!("..{generation}"), &tmp).unwrap();
    std::fs::rename(&tmp, root.join("..data")).unwrap(); // the atomic swap
    if !root.join("reviews.yaml").exists() {
        symlink("..data/reviews.yaml", root.join("reviews.yaml")).unwrap();
    }
}

async fn wait_for(hub: &HubHandle, what: &str, ok: impl Fn(&keelson_hub::Snapshot) -> bool) -> u64 {
    let end = Instant::now() + Duration::from_secs(20);
    let mut rx = hub.snapshots();
    loop {
        if let Some(s) = rx.borrow().clone()
            && ok(&s)
        {
            return s.version;
        }
        let left = end.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "timed out waiting for {what}");
        let _ = tokio::time::timeout(left, rx.changed()).await;
    }
}

fn gateway(s: &keelson_hub::Snapshot) -> String {
    let (_, e) = s.of_kind("networking.istio.io", "VirtualService").next().expect("the VirtualService");
    e.body.to_value()["spec"]["gateways"][0].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_symlink_swap_is_one_new_version() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("mount");
    std::fs::create_dir(&root).unwrap();
    configmap_generation(&root, "2026_11_21_10_00_00.1", "gw-one");

    let store = EventStore::open(&dir.path().join("data"), OpenOptions { create: true, repair: false }).unwrap();
    let mut cfg = FileSourceConfig::new(root.clone());
    cfg.rescan = Duration::from_secs(3600); // the watcher alone must see the swap
    let source = FileSource::new(cfg);
    let hub_cfg = HubConfig { sources: vec![source.id().clone()], ..Default::default() };
    let hub = Hub::start(store.clone(), hub_cfg, Metrics::default()).await.unwrap();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(Box::new(source).run(hub.handle(), stop_rx));

    let first = wait_for(&hub.handle(), "the first sync", |s| s.resources.len() == 1).await;
    assert_eq!(gateway(&hub.handle().current().unwrap()), "gw-one");
    // Hidden ..<timestamp> and ..data copies are not read twice.
    assert_eq!(hub.handle().current().unwrap().resources.len(), 1);

    configmap_generation(&root, "2026_11_21_10_05_00.2", "gw-two");
    let second = wait_for(&hub.handle(), "the swap", |s| gateway(s) == "gw-two").await;
    assert!(second > first);
    let key = keelson_hub::ResourceKey::parse("VirtualService/default/reviews").unwrap();
    assert_eq!(store.history(&key).count(), 2, "exactly one new version");

    let _ = stop_tx.send(true);
    task.await.unwrap();
    hub.stop().await.unwrap();
}
