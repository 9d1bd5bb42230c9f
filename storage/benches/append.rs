//! Durable append and raw read throughput of the sled event log.
//!
//! `cargo bench -p keelson-storage --bench append` prints a markdown table
//! (docs/benchmarks.md holds the recorded numbers). Every append measured here
//! has returned, so it is on disk (fsync'd), not in a page cache.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use keelson_storage::{EventLog, NewRecord, OpenOptions, SledEventLog};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BODY: usize = 1024;

fn records(n: usize, offset: usize) -> Vec<NewRecord> {
    (0..n)
        .map(|i| NewRecord {
            key: Bytes::from(format!("networking.istio.io/VirtualService/default/svc-{}", (offset + i) % 10_000)),
            payload: Bytes::from(vec![b'x'; BODY]),
        })
        .collect()
}

fn open() -> (tempfile::TempDir, Arc<SledEventLog>) {
    let dir = tempfile::tempdir_in(
        std::env::var("KEELSON_BENCH_DIR").unwrap_or_else(|_| std::env::temp_dir().display().to_string()),
    )
    .unwrap();
    let log = Arc::new(SledEventLog::open(dir.path(), OpenOptions { create: true, repair: false }).unwrap());
    (dir, log)
}

/// `appenders` threads each append `events / appenders` records in batches of `batch`.
fn append_case(batch: usize, appenders: usize, events: usize) -> (f64, f64) {
    let (_dir, log) = open();
    let per_thread = events / appenders;
    let started = Instant::now();
    let threads: Vec<_> = (0..appenders)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut done = 0;
                while done < per_thread {
                    let n = batch.min(per_thread - done);
                    log.append(&records(n, t * per_thread + done)).unwrap();
                    done += n;
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    let total = (per_thread * appenders) as f64;
    (total / secs, total * BODY as f64 / secs / 1e6)
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` would too. Skip quick runs under test.
    if std::env::args().any(|a| a == "--test") {
        return;
    }
    println!("| case | events | events/s | MB/s (bodies) |");
    println!("|---|---:|---:|---:|");
    for (label, batch, appenders, events) in [
        ("batch 1, 1 appender", 1, 1, 2_000),
        ("batch 1, 16 appenders (group commit)", 1, 16, 32_000),
        ("batch 64, 1 appender", 64, 1, 200_000),
        ("batch 1024, 1 appender", 1024, 1, 500_000),
        ("batch 1024, 4 appenders", 1024, 4, 500_000),
    ] {
        let (eps, mbps) = append_case(batch, appenders, events);
        println!("| durable append, {label} | {events} | {eps:.0} | {mbps:.1} |");
    }
    // Raw read: iterate and CRC-check every record.
    let (_dir, log) = open();
    let n = 500_000;
    for chunk in 0..n / 1024 {
        log.append(&records(1024, chunk * 1024)).unwrap();
    }
    let started = Instant::now();
    let mut count = 0u64;
    for rec in log.read_from(1) {
        count += rec.unwrap().payload.len() as u64 / BODY as u64;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "| read + CRC check, seq order | {count} | {:.0} | {:.1} |",
        count as f64 / secs,
        count as f64 * BODY as f64 / secs / 1e6
    );
}
