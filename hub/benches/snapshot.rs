//! Snapshot build cost after a one-resource change, and cold start to
//! serving. `cargo bench -p keelson-hub --bench snapshot` prints markdown
//! tables (recorded in docs/benchmarks.md).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use keelson_hub::metrics::Metrics;
use keelson_hub::object::parse_object;
use keelson_hub::{Event, EventStore, Hub, HubConfig, Op, Snapshot, SourceId, SourceKind, State};
use keelson_storage::OpenOptions;

/// Counts allocations so the table can show them; a bench-only wrapper.
struct Counting;
static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call unchanged to the system allocator; the counter
// has no effect on the memory handed out. Unsafe because GlobalAlloc is.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn cluster(i: usize, timeout: u32) -> Op {
    let v = serde_json::json!({
        "apiVersion": "xds.keelson.dev/v1", "kind": "Cluster",
        "spec": { "name": format!("svc-{i}"), "type": "EDS", "connect_timeout": format!("{timeout}s"),
                  "lb_policy": "ROUND_ROBIN",
                  "eds_cluster_config": { "eds_config": { "ads": {}, "resource_api_version": "V3" } } }
    });
    let o = parse_object(&v).unwrap();
    Op::Upsert {
        key: o.key,
        source_version: String::new(),
        body: o.body,
        location: format!("svc-{i}.yaml:1"),
        author: String::new(),
    }
}

fn event(seq: u64, op: Op) -> Event {
    Event { seq, at: SystemTime::now(), origin: SourceId::new(SourceKind::File, "bench"), op }
}

fn main() {
    if std::env::args().any(|a| a == "--test") {
        return;
    }
    println!("| resources | one change: apply + encode + snapshot, mean | p99 | allocations per change |");
    println!("|---:|---:|---:|---:|");
    for n in [1_000usize, 10_000, 100_000] {
        let mut state = State::default();
        for i in 0..n {
            state.apply(event(i as u64 + 1, cluster(i, 1)));
        }
        let mut seq = n as u64;
        let rounds = 2_000;
        let changes: Vec<Op> = (0..rounds).map(|r| cluster(r * 7919 % n, 2 + (r % 2) as u32)).collect();
        let mut times = Vec::with_capacity(rounds);
        let allocs_before = ALLOCS.load(Ordering::Relaxed);
        let mut keep = Vec::with_capacity(rounds);
        for op in changes {
            seq += 1;
            let t = Instant::now();
            state.apply(event(seq, op));
            let snap = Snapshot::of(&state);
            times.push(t.elapsed().as_secs_f64() * 1e6);
            keep.push(snap); // published snapshots stay alive, as sinks hold them
        }
        let allocs = (ALLOCS.load(Ordering::Relaxed) - allocs_before) as f64 / rounds as f64;
        times.sort_by(f64::total_cmp);
        let mean = times.iter().sum::<f64>() / times.len() as f64;
        println!("| {n} | {mean:.1} µs | {:.1} µs | {allocs:.0} |", times[times.len() * 99 / 100]);
    }

    println!();
    println!("| cold start, 100k Envoy Clusters in the log | time to first snapshot |");
    println!("|---|---:|");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let dir = tempfile::tempdir_in(
        std::env::var("KEELSON_BENCH_DIR").unwrap_or_else(|_| std::env::temp_dir().display().to_string()),
    )
    .unwrap();
    let data = dir.path().join("data");
    {
        let store = EventStore::open(&data, OpenOptions { create: true, repair: false }).unwrap();
        let origin = SourceId::new(SourceKind::File, "bench");
        let ops: Vec<Op> = (0..100_000).map(|i| cluster(i, 1)).collect();
        for chunk in ops.chunks(1024) {
            store.append(&origin, chunk).unwrap();
        }
    }
    let start = |label: &str| {
        let t = Instant::now();
        rt.block_on(async {
            let store = EventStore::open(&data, OpenOptions::default()).unwrap();
            let hub = Hub::start(store, HubConfig::default(), Metrics::default()).await.unwrap();
            let snap = hub.handle().current().expect("a warm start publishes at once");
            assert_eq!(snap.resources.len(), 100_000);
            let elapsed = t.elapsed().as_secs_f64();
            println!("| {label} | {:.2} s |", elapsed);
            hub.stop().await.unwrap(); // writes the checkpoint the next start uses
        });
    };
    start("no checkpoint: replay and encode all 100k events");
    start("from the checkpoint written at the previous stop");
}
