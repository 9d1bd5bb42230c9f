//! When the hub writes checkpoints: not while a cold start is still
//! listing (each would hold a half-built state, and cost the whole state),
//! then once events reach `every_events` or half the objects held.

use std::time::{Duration, Instant};

use keelson_hub::metrics::Metrics;
use keelson_hub::{EventStore, Hub, HubConfig, Op, SourceId, SourceKind};
use keelson_storage::OpenOptions;

mod support;
use support::cluster;

fn checkpointed(store: &EventStore) -> Option<u64> {
    store.log().checkpoint_at_or_before(u64::MAX).unwrap().map(|c| c.seq)
}

/// Checkpoints are written in the background: poll for one.
fn wait_checkpoint(store: &EventStore, at_least: u64) {
    wait_for(&format!("a checkpoint at or after {at_least}"), || checkpointed(store).is_some_and(|s| s >= at_least));
}

/// Polls a condition with a deadline.
fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let end = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A hub with one file source that checkpoints every 10 events.
async fn start_hub(dir: &std::path::Path) -> (EventStore, SourceId, Metrics, Hub) {
    let store = EventStore::open(dir, OpenOptions { create: true, repair: false }).unwrap();
    let files = SourceId::new(SourceKind::File, "conf");
    let cfg = HubConfig { sources: vec![files.clone()], checkpoint_every_events: 10, ..HubConfig::default() };
    let metrics = Metrics::default();
    let hub = Hub::start(store.clone(), cfg, metrics.clone()).await.unwrap();
    (store, files, metrics, hub)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_checkpoint_before_the_first_snapshot_then_one_per_half_the_state() {
    let dir = tempfile::tempdir().unwrap();
    let (store, files, metrics, hub) = start_hub(dir.path()).await;
    let h = hub.handle();
    // A cold start's listing, in pages, far past every_events.
    h.submit(files.clone(), vec![Op::SyncStart]).await.unwrap();
    for page in 0..10 {
        let ops = (0..20).map(|i| cluster(&format!("c{page}-{i}"), "1s", "")).collect();
        h.submit(files.clone(), ops).await.unwrap();
    }
    assert!(h.current().is_none());
    assert_eq!(checkpointed(&store), None, "no checkpoint of a half-listed state");
    // The listing ends: the first snapshot, then one checkpoint of it.
    let done = h.submit(files.clone(), vec![Op::SyncDone]).await.unwrap();
    wait_checkpoint(&store, done.appended.unwrap().1);
    let first = checkpointed(&store).unwrap();
    wait_for("the checkpoint to finish", || metrics.checkpoint_writing.get() == 0);
    assert_eq!(metrics.checkpoints_written.get(), 1);
    assert_eq!((metrics.checkpoint_seq.get() as u64, metrics.checkpoint_writing.get()), (first, 0));
    assert_eq!(metrics.checkpoint_failures.get(), 0);
    // 200 objects and growing: the next checkpoint waits for half the
    // state in events (k new objects since: k >= (200 + k) / 2 at k = 199),
    // not every_events (10).
    for i in 0..150 {
        h.submit(files.clone(), vec![cluster(&format!("n{i}"), "1s", "")]).await.unwrap();
    }
    assert_eq!(checkpointed(&store), Some(first), "150 events < half of 350 objects");
    for i in 150..260 {
        h.submit(files.clone(), vec![cluster(&format!("n{i}"), "1s", "")]).await.unwrap();
    }
    wait_checkpoint(&store, first + 199);
    let second = checkpointed(&store).unwrap();
    assert!(second <= first + 200, "{first} {second}");
    hub.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_that_cannot_be_written_is_counted_and_the_hub_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (store, files, metrics, hub) = start_hub(dir.path()).await;
    let h = hub.handle();
    // The checkpoint directory is unusable: a plain file where it belongs.
    let cps = dir.path().join(keelson_storage::CHECKPOINT_DIR);
    std::fs::write(&cps, b"in the way").unwrap();
    let ops = [vec![Op::SyncStart], (0..20).map(|i| cluster(&format!("c{i}"), "1s", "")).collect(), vec![Op::SyncDone]];
    for ops in ops {
        h.submit(files.clone(), ops).await.unwrap();
    }
    wait_for("a failed checkpoint", || metrics.checkpoint_failures.get() == 1 && metrics.checkpoint_writing.get() == 0);
    assert_eq!(metrics.checkpoints_written.get(), 0);
    let err = store.log().checkpoint_at_or_before(u64::MAX).unwrap_err().to_string();
    assert!(err.contains("checkpoints"), "reading checkpoints names the path in the way: {err}");
    // The hub still appends and publishes.
    let next = h.submit(files.clone(), vec![cluster("after", "1s", "")]).await.unwrap();
    let (_, last) = next.appended.unwrap();
    wait_for("the new snapshot", || h.current().is_some_and(|s| s.version >= last));
    assert!(store.log().failure().is_none(), "a checkpoint failure does not fail the log");
    // Once the way is clear, the next checkpoint is written.
    std::fs::remove_file(&cps).unwrap();
    for i in 0..20 {
        h.submit(files.clone(), vec![cluster(&format!("n{i}"), "1s", "")]).await.unwrap();
    }
    wait_checkpoint(&store, last + 1);
    assert!(metrics.checkpoints_written.get() >= 1);
    hub.stop().await.unwrap();
}
