//! Hub memory per object: RSS and live heap after loading 100k Services and
//! 30k EndpointSlice-sized objects through the real hub (log on a temp dir,
//! `Hub::start`, one full listing per kind, as the file source submits), and
//! after deleting them all. `cargo bench -p keelson-hub --bench memory`
//! prints a markdown table (recorded in docs/benchmarks.md).
//!
//! Uses mimalloc, as the `keelson` binary does, so RSS matches what the
//! binary would show; a counting wrapper adds the live heap (bytes the
//! program holds, whatever the allocator keeps cached from the OS).

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use keelson_hub::metrics::Metrics;
use keelson_hub::object::parse_object;
use keelson_hub::{EventStore, Hub, HubConfig, HubHandle, Op, SourceId, SourceKind};
use keelson_storage::OpenOptions;

struct Counting;
static LIVE: AtomicI64 = AtomicI64::new(0);
static MI: mimalloc::MiMalloc = mimalloc::MiMalloc;

// SAFETY: forwards every call unchanged to mimalloc; the counter has no
// effect on the memory handed out. Unsafe because GlobalAlloc is.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        unsafe { MI.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        unsafe { MI.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        unsafe { MI.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        unsafe { MI.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Resident set size of this process, from /proc (0 where there is none).
fn rss_bytes() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn service(i: usize) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": format!("svc-{i}"), "namespace": format!("ns-{}", i % 50),
                      "labels": { "app": format!("svc-{i}") } },
        "spec": { "selector": { "app": format!("svc-{i}") },
                  "ports": [{ "name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP" }] }
    })
}

/// An EndpointSlice of ~1.5 KiB canonical JSON: 8 ready endpoints.
fn endpoint_slice(i: usize) -> serde_json::Value {
    let endpoints: Vec<_> = (0..8)
        .map(|e| {
            serde_json::json!({
                "addresses": [format!("10.{}.{}.{}", (i >> 8) % 256, i % 256, e)],
                "conditions": { "ready": true, "serving": true, "terminating": false },
                "nodeName": format!("node-{}", (i + e) % 500),
                "targetRef": { "kind": "Pod", "namespace": format!("ns-{}", i % 50),
                               "name": format!("svc-{i}-7d9f8c6b5-{e:05}") },
                "zone": format!("zone-{}", e % 3)
            })
        })
        .collect();
    serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": { "name": format!("svc-{i}-abcde"), "namespace": format!("ns-{}", i % 50),
                      "labels": { "kubernetes.io/service-name": format!("svc-{i}") } },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{ "name": "http", "port": 8080, "protocol": "TCP" }]
    })
}

/// One full listing of `n` objects made by `make`; returns the canonical body bytes.
async fn load(hub: &HubHandle, origin: &SourceId, n: usize, make: fn(usize) -> serde_json::Value) -> usize {
    let mut ops = vec![Op::SyncStart];
    let mut body_bytes = 0;
    for i in 0..n {
        let o = parse_object(&make(i)).expect("bench objects validate");
        body_bytes += o.body.json().len();
        ops.push(Op::Upsert {
            key: o.key,
            source_version: String::new(),
            body: o.body,
            location: format!("objects.yaml:{}", i * 12 + 1),
            author: String::new(),
        });
    }
    ops.push(Op::SyncDone);
    hub.submit(origin.clone(), ops).await.expect("submit");
    body_bytes
}

async fn wait_for(hub: &HubHandle, resources: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut rx = hub.snapshots();
    while rx.borrow().as_ref().is_none_or(|s| s.resources.len() != resources) {
        assert!(Instant::now() < deadline, "no snapshot with {resources} resources");
        let _ = tokio::time::timeout(Duration::from_secs(1), rx.changed()).await;
    }
}

/// Waits until the live heap stops moving (background checkpoints written,
/// sled's deferred frees run), so a row shows what stays, not a transient:
/// polls every 250 ms until the heap has stayed within 1 MiB for 3 s, or 60 s.
async fn settle() {
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut low, mut high) = (i64::MAX, i64::MIN);
    let mut since = Instant::now();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = LIVE.load(Ordering::Relaxed);
        (low, high) = (low.min(now), high.max(now));
        if high - low >= 1 << 20 {
            (low, high, since) = (now, now, Instant::now());
        } else if since.elapsed() >= Duration::from_secs(3) {
            return;
        }
    }
}

fn row(phase: &str, objects: usize, body_bytes: usize, base: (i64, i64)) {
    let (rss, live) = (rss_bytes(), LIVE.load(Ordering::Relaxed));
    let per = |total: i64| {
        if objects == 0 {
            "–".to_string()
        } else {
            format!("{:.2}", (total - base.0 - body_bytes as i64) as f64 / objects as f64 / 1024.0)
        }
    };
    let per_live = if objects == 0 {
        "–".to_string()
    } else {
        format!("{:.2}", (live - base.1 - body_bytes as i64) as f64 / objects as f64 / 1024.0)
    };
    println!(
        "| {phase} | {objects} | {:.1} | {:.1} | {:.1} | {} | {} |",
        body_bytes as f64 / 1048576.0,
        rss as f64 / 1048576.0,
        live as f64 / 1048576.0,
        per(rss),
        per_live
    );
}

fn main() {
    if std::env::args().any(|a| a == "--test") {
        return;
    }
    let services: usize = std::env::var("KEELSON_BENCH_SERVICES").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let slices: usize = std::env::var("KEELSON_BENCH_SLICES").ok().and_then(|v| v.parse().ok()).unwrap_or(30_000);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    if std::env::var_os("KEELSON_BENCH_STATE_ONLY").is_some() {
        // The hub's in-memory state alone: the same objects applied, no log.
        let origin = SourceId::new(SourceKind::File, "bench");
        let base = LIVE.load(Ordering::Relaxed);
        let mut state = keelson_hub::State::default();
        let mut body_bytes = 0usize;
        let objects = (0..services).map(service).chain((0..slices).map(endpoint_slice));
        for (i, v) in objects.enumerate() {
            let o = parse_object(&v).unwrap();
            body_bytes += o.body.json().len();
            let op = Op::Upsert {
                key: o.key,
                source_version: String::new(),
                body: o.body,
                location: format!("objects.yaml:{}", i * 12 + 1),
                author: String::new(),
            };
            state.apply(keelson_hub::Event {
                seq: i as u64 + 1,
                at: std::time::SystemTime::now(),
                origin: origin.clone(),
                op,
            });
        }
        let snapshot = keelson_hub::Snapshot::of(&state);
        let n = services + slices;
        let live = LIVE.load(Ordering::Relaxed) - base;
        println!(
            "state + snapshot of {n} objects: live heap {:.1} MiB, bodies {:.1} MiB, overhead {:.2} KiB/object",
            live as f64 / 1048576.0,
            body_bytes as f64 / 1048576.0,
            (live - body_bytes as i64) as f64 / n as f64 / 1024.0
        );
        drop((snapshot, state));
        println!(
            "after dropping them: live heap {:.1} MiB above the start",
            (LIVE.load(Ordering::Relaxed) - base) as f64 / 1048576.0
        );
        return;
    }
    if std::env::var_os("KEELSON_BENCH_LOG_ONLY").is_some() {
        // The event log alone: the same appends, no hub.
        let dir = tempfile::tempdir().unwrap();
        let store = EventStore::open(dir.path(), OpenOptions { create: true, repair: false }).unwrap();
        let origin = SourceId::new(SourceKind::File, "bench");
        let base = LIVE.load(Ordering::Relaxed);
        let ops: Vec<Op> = (0..services)
            .map(|i| {
                let o = parse_object(&service(i)).unwrap();
                Op::Upsert {
                    key: o.key,
                    source_version: String::new(),
                    body: o.body,
                    location: String::new(),
                    author: String::new(),
                }
            })
            .collect();
        let before = LIVE.load(Ordering::Relaxed);
        let chunk = std::env::var("KEELSON_BENCH_APPEND_CHUNK").ok().and_then(|v| v.parse().ok()).unwrap_or(ops.len());
        for part in ops.chunks(chunk.max(1)) {
            store.append(&origin, part).unwrap();
        }
        drop(ops);
        rt.block_on(settle());
        println!(
            "ops {:.1} MiB; after append: live heap {:.1} MiB above the empty log, RSS {:.1} MiB",
            (before - base) as f64 / 1048576.0,
            (LIVE.load(Ordering::Relaxed) - base) as f64 / 1048576.0,
            rss_bytes() as f64 / 1048576.0
        );
        return;
    }
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let store = EventStore::open(dir.path(), OpenOptions { create: true, repair: false }).unwrap();
        let origin = SourceId::new(SourceKind::File, "bench");
        let checkpoint_every_events =
            std::env::var("KEELSON_BENCH_CHECKPOINT_EVERY").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
        let cfg = HubConfig { quiet: Duration::from_millis(20), checkpoint_every_events, ..HubConfig::default() };
        let hub = Hub::start(store, cfg, Metrics::default()).await.unwrap();
        let handle = hub.handle();
        let base = (rss_bytes(), LIVE.load(Ordering::Relaxed));
        println!("Overhead per object = (total − empty hub − canonical bodies) / objects.\n");
        println!("| phase | objects | canonical bodies MiB | RSS MiB | live heap MiB | RSS overhead KiB/object | heap overhead KiB/object |");
        println!("|---|---:|---:|---:|---:|---:|---:|");
        row("empty hub", 0, 0, base);
        let svc_bytes = load(&handle, &origin, services, service).await;
        wait_for(&handle, services).await;
        settle().await;
        row("Services loaded", services, svc_bytes, base);
        let other = SourceId::new(SourceKind::File, "bench-slices");
        let slice_bytes = load(&handle, &other, slices, endpoint_slice).await;
        wait_for(&handle, services + slices).await;
        settle().await;
        row("+ EndpointSlices loaded", services + slices, svc_bytes + slice_bytes, base);
        // Deleting everything: each source lists nothing.
        for o in [&origin, &other] {
            handle.submit(o.clone(), vec![Op::SyncStart, Op::SyncDone]).await.unwrap();
        }
        wait_for(&handle, 0).await;
        settle().await;
        row("all deleted", 0, 0, base);
        println!("\nafter deletion: RSS {:.1} MiB above the empty hub, live heap {:.1} MiB above it",
            (rss_bytes() - base.0) as f64 / 1048576.0, (LIVE.load(Ordering::Relaxed) - base.1) as f64 / 1048576.0);
        hub.stop().await.unwrap();
    });
}
