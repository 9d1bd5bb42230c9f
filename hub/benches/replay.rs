//! Replay and checkpoint costs of the hub's event store.
//!
//! `cargo bench -p keelson-hub --bench replay` prints a markdown table
//! (recorded in docs/benchmarks.md).

use std::time::Instant;

use keelson_hub::{Body, EventStore, LogEntry, Op, ResourceKey, SourceId, SourceKind, State, checkpoint};
use keelson_storage::OpenOptions;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const RESOURCES: usize = 100_000;
const EVENTS: usize = 1_000_000;

fn upsert(i: usize, round: usize) -> Op {
    // ~1 KiB canonical JSON, like a mid-sized VirtualService.
    let body = serde_json::json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": { "name": format!("svc-{i}"), "namespace": "default" },
        "spec": {
            "hosts": [format!("svc-{i}.default.svc.cluster.local")],
            "http": [{ "route": [{ "destination": { "host": format!("svc-{i}"), "subset": format!("v{round}") } }],
                       "timeout": "5s", "retries": { "attempts": 3, "perTryTimeout": "2s" } }],
            "padding": "p".repeat(700),
        }
    });
    Op::Upsert {
        key: ResourceKey::new("networking.istio.io", "VirtualService", "default", &format!("svc-{i}")),
        source_version: round.to_string(),
        body: Body::from_value(&body),
        location: format!("svc-{i}.yaml:1"),
        author: String::new(),
    }
}

fn main() {
    if std::env::args().any(|a| a == "--test") {
        return;
    }
    let dir = tempfile::tempdir_in(
        std::env::var("KEELSON_BENCH_DIR").unwrap_or_else(|_| std::env::temp_dir().display().to_string()),
    )
    .unwrap();
    let store = EventStore::open(dir.path(), OpenOptions { create: true, repair: false }).unwrap();
    let origin = SourceId::new(SourceKind::File, "bench");
    let t = Instant::now();
    let mut batch = Vec::with_capacity(1024);
    for n in 0..EVENTS {
        batch.push(upsert(n % RESOURCES, n / RESOURCES));
        if batch.len() == 1024 {
            store.append(&origin, &batch).unwrap();
            batch.clear();
        }
    }
    store.append(&origin, &batch).unwrap();
    let fill = t.elapsed().as_secs_f64();
    println!("| case | count | time | rate |");
    println!("|---|---:|---:|---:|");
    println!(
        "| fill: encode + durable append, batch 1024 | {EVENTS} events | {fill:.2} s | {:.0} events/s |",
        EVENTS as f64 / fill
    );

    let t = Instant::now();
    let raw = store.log().read_from(1).try_fold(0usize, |n, r| r.map(|_| n + 1)).unwrap();
    let secs = t.elapsed().as_secs_f64();
    println!(
        "| replay: read + CRC only (no decode) | {raw} records | {secs:.2} s | {:.0} records/s |",
        raw as f64 / secs
    );

    let t = Instant::now();
    let decoded = store.entries_from(1).map(|e| matches!(e.unwrap(), LogEntry::Event(_)) as usize).sum::<usize>();
    let secs = t.elapsed().as_secs_f64();
    println!(
        "| replay: read + CRC + decode | {decoded} events | {secs:.2} s | {:.0} events/s |",
        decoded as f64 / secs
    );

    let t = Instant::now();
    let rebuilt = store.state_at(u64::MAX).unwrap();
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(rebuilt.state.resources.len(), RESOURCES);
    println!(
        "| replay: read + decode + apply to State | {EVENTS} events | {secs:.2} s | {:.0} events/s |",
        EVENTS as f64 / secs
    );

    let state: State = rebuilt.state;
    let t = Instant::now();
    let blob = checkpoint::encode(&state);
    let enc = t.elapsed().as_secs_f64();
    println!(
        "| checkpoint encode (rkyv), {RESOURCES} resources | {:.1} MB | {:.0} ms | |",
        blob.len() as f64 / 1e6,
        enc * 1e3
    );
    let t = Instant::now();
    store.write_checkpoint(&state).unwrap();
    let write = t.elapsed().as_secs_f64();
    println!(
        "| checkpoint write (encode in chunks + checkpoint file) | {RESOURCES} resources | {:.0} ms | |",
        write * 1e3
    );
    drop(store);

    // Load as a restart does: open, read the checkpoint, validate, rebuild State, replay the (empty) tail.
    let t = Instant::now();
    let store = EventStore::open(dir.path(), OpenOptions::default()).unwrap();
    let opened = t.elapsed().as_secs_f64();
    let rebuilt = store.state_at(u64::MAX).unwrap();
    let load = t.elapsed().as_secs_f64();
    println!("| restart, first open after the writes (sled recovery) | | {:.0} ms | |", opened * 1e3);
    assert_eq!(rebuilt.from_checkpoint, EVENTS as u64);
    assert_eq!(rebuilt.state, state);
    println!("| restart: open + checkpoint load + tail replay | {RESOURCES} resources | {:.0} ms | |", load * 1e3);
    drop(store);
    let t = Instant::now();
    let store = EventStore::open(dir.path(), OpenOptions::default()).unwrap();
    println!("| restart: open the log only (sled recovery) | | {:.0} ms | |", t.elapsed().as_secs_f64() * 1e3);
    let t = Instant::now();
    let cp = store.log().checkpoint_at_or_before(u64::MAX).unwrap().unwrap();
    println!(
        "| checkpoint read from the log (chunks + CRCs) | {:.1} MB | {:.0} ms | |",
        cp.blob.len() as f64 / 1e6,
        t.elapsed().as_secs_f64() * 1e3
    );
    let t = Instant::now();
    let decoded = checkpoint::decode(cp.format, &cp.blob).unwrap();
    println!(
        "| checkpoint decode only (align + validate + build) | {} resources | {:.0} ms | |",
        decoded.resources.len(),
        t.elapsed().as_secs_f64() * 1e3
    );
}
