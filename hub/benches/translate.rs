//! Translation cost at the scale: 10,000 services × 2 ports × 10
//! endpoints, 2,000 VirtualServices, 2,000 DestinationRules with 2 subsets.
//! `cargo bench -p keelson-hub --bench translate` prints a markdown table
//! (recorded in docs/benchmarks.md, "Translation"). With
//! `KEELSON_BENCH_SIDECARS=1` every one of the 50 namespaces also has a
//! Sidecar importing `./*` (what Sidecar scoping costs translation).

use std::collections::BTreeSet;
use std::time::{Instant, SystemTime};

use keelson_hub::object::parse_object;
use keelson_hub::translate::{Served, TranslateConfig};
use keelson_hub::{Event, Op, ResourceKey, SourceId, SourceKind, State};
use serde_json::{Value, json};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SERVICES: usize = 10_000;
const ROUTED: usize = 2_000;
const ENDPOINTS: usize = 10;

fn rss_bytes() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn op(v: Value) -> Op {
    let o = parse_object(&v).unwrap();
    Op::Upsert {
        key: o.key,
        source_version: String::new(),
        body: o.body,
        location: String::new(),
        author: String::new(),
    }
}

fn ns(i: usize) -> String {
    format!("ns-{}", i % 50)
}

fn service(i: usize) -> Op {
    op(json!({ "apiVersion": "v1", "kind": "Service", "metadata": { "name": format!("svc-{i}"), "namespace": ns(i) },
        "spec": { "ports": [{ "name": "http", "port": 80 }, { "name": "grpc", "port": 9090 }] } }))
}

fn pod(i: usize, j: usize) -> Op {
    op(json!({ "apiVersion": "v1", "kind": "Pod", "metadata": { "name": format!("svc-{i}-{j}"), "namespace": ns(i),
        "labels": { "app": format!("svc-{i}"), "version": if j.is_multiple_of(2) { "v1" } else { "v2" } } } }))
}

fn slice(i: usize, ready_until: usize) -> Op {
    let endpoints: Vec<Value> = (0..ENDPOINTS)
        .map(|j| {
            json!({ "addresses": [format!("10.{}.{}.{}", i / 250, i % 250, j + 1)],
            "conditions": { "ready": j < ready_until }, "zone": format!("z{}", j % 3),
            "targetRef": { "kind": "Pod", "name": format!("svc-{i}-{j}"), "namespace": ns(i) } })
        })
        .collect();
    op(json!({ "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": { "name": format!("svc-{i}-abc"), "namespace": ns(i), "labels": { "kubernetes.io/service-name": format!("svc-{i}") } },
        "addressType": "IPv4", "ports": [{ "name": "http", "port": 8080 }, { "name": "grpc", "port": 9091 }], "endpoints": endpoints }))
}

fn rule(i: usize) -> Op {
    op(
        json!({ "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": { "name": format!("svc-{i}"), "namespace": ns(i) },
        "spec": { "host": format!("svc-{i}"), "trafficPolicy": { "connectionPool": { "tcp": { "maxConnections": 100 } } },
                  "subsets": [{ "name": "v1", "labels": { "version": "v1" } }, { "name": "v2", "labels": { "version": "v2" } }] } }),
    )
}

fn routes(i: usize, v1: u32) -> Op {
    op(
        json!({ "apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": { "name": format!("svc-{i}"), "namespace": ns(i) },
        "spec": { "hosts": [format!("svc-{i}")], "http": [
            { "match": [{ "headers": { "end-user": { "exact": "jason" } } }], "route": [{ "destination": { "host": format!("svc-{i}"), "subset": "v2" } }] },
            { "route": [{ "destination": { "host": format!("svc-{i}"), "subset": "v1" }, "weight": v1 },
                        { "destination": { "host": format!("svc-{i}"), "subset": "v2" }, "weight": 100 - v1 }], "timeout": "5s" } ] } }),
    )
}

fn sidecar(n: usize) -> Op {
    op(
        json!({ "apiVersion": "networking.istio.io/v1", "kind": "Sidecar", "metadata": { "name": "default", "namespace": format!("ns-{n}") },
        "spec": { "egress": [{ "hosts": ["./*"] }] } }),
    )
}

struct Fold {
    state: State,
    seq: u64,
}

impl Fold {
    fn apply(&mut self, op: Op) -> ResourceKey {
        self.seq += 1;
        let key = op.key().cloned().unwrap();
        let ev = Event {
            seq: self.seq,
            at: SystemTime::UNIX_EPOCH,
            origin: SourceId::new(SourceKind::Kubernetes, "bench"),
            op,
        };
        self.state.apply(ev);
        key
    }
}

fn median_ms(mut samples: Vec<f64>) -> (f64, f64) {
    samples.sort_by(f64::total_cmp);
    (samples[samples.len() / 2], samples[samples.len() * 99 / 100])
}

fn main() {
    let quick = std::env::args().any(|a| a == "--test");
    let services = if quick { 200 } else { SERVICES };
    let routed = if quick { 40 } else { ROUTED };
    let mut fold = Fold { state: State::default(), seq: 0 };
    for i in 0..services {
        fold.apply(service(i));
        for j in 0..ENDPOINTS {
            fold.apply(pod(i, j));
        }
        fold.apply(slice(i, ENDPOINTS));
    }
    for i in 0..routed {
        fold.apply(rule(i));
        fold.apply(routes(i, 80));
    }
    if std::env::var("KEELSON_BENCH_SIDECARS").is_ok_and(|v| v == "1") {
        for n in 0..50 {
            fold.apply(sidecar(n));
        }
    }
    let objects = fold.state.resources.len();
    let before = rss_bytes();
    let t = Instant::now();
    let mut served = Served::of(&fold.state, &TranslateConfig::default());
    let full = t.elapsed();
    let after = rss_bytes();
    let derived = served.resources().len() - objects;

    // One endpoint turns not ready; then one VirtualService reweights.
    let rounds = if quick { 5 } else { 50 };
    let mut endpoint_ms = Vec::new();
    let mut endpoint_changed = 0;
    for r in 0..rounds {
        let key = fold.apply(slice(r % services, ENDPOINTS - 1 - (r / services) % 2));
        let t = Instant::now();
        let changed = served.update(&fold.state, &BTreeSet::from([key]));
        endpoint_ms.push(t.elapsed().as_secs_f64() * 1e3);
        endpoint_changed = changed.len() - 1;
    }
    let mut route_ms = Vec::new();
    let mut route_changed = 0;
    for r in 0..rounds {
        let key = fold.apply(routes(r % routed, 70 - (r % 2) as u32));
        let t = Instant::now();
        let changed = served.update(&fold.state, &BTreeSet::from([key]));
        route_ms.push(t.elapsed().as_secs_f64() * 1e3);
        route_changed = changed.len() - 1;
    }
    let (ep50, ep99) = median_ms(endpoint_ms);
    let (vs50, vs99) = median_ms(route_ms);
    println!("| input objects | derived resources | full translation | memory (RSS growth) |");
    println!("|---:|---:|---:|---:|");
    println!(
        "| {objects} | {derived} | {:.2} s | {:.0} MiB |",
        full.as_secs_f64(),
        (after - before) as f64 / 1048576.0
    );
    println!();
    println!("| change | derived resources changed | median | p99 |");
    println!("|---|---:|---:|---:|");
    println!("| one endpoint not ready (EndpointSlice update) | {endpoint_changed} | {ep50:.3} ms | {ep99:.3} ms |");
    println!("| one VirtualService reweighted | {route_changed} | {vs50:.3} ms | {vs99:.3} ms |");
}
