//! Fan-out cost of the xDS server: N in-process SotW streams (production
//! machines, cache and codec; no sockets), then one EDS change and one
//! full-snapshot change pushed to all of them.
//!
//! Reports, per push: wall time until every stream has its response, process
//! CPU time, bodies and bytes encoded vs bytes written; and RSS per idle stream.
//! Run: `cargo bench -p keelson-sinks --bench fanout [-- STREAMS]`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use keelson_proto::envoy::pb::envoy::service::discovery::v3::DiscoveryRequest;
use keelson_sinks::xds::XdsConfig;
use keelson_sinks::xds::metrics::XdsMetrics;
use keelson_sinks::xds::session::Session;
use keelson_sinks::xds::sotw::SotwMachine;
use keelson_sinks::xds::stream::Machine;
use keelson_sinks::xds::wire::Outbound;
use support::*;

const CLUSTERS: usize = 200;

fn cpu_time() -> Duration {
    // utime + stime of this process, in clock ticks (USER_HZ = 100 on Linux).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    statm.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 4096
}

fn main() {
    let streams: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(1_000);
    server_only(streams);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(run(streams));
}

fn config() -> (Config, tokio::sync::watch::Receiver<Option<std::sync::Arc<keelson_hub::Snapshot>>>) {
    let (mut cfg, rx) = Config::new();
    for i in 0..CLUSTERS {
        cfg.upsert(cluster(&format!("c{i}"))).upsert(endpoints(&format!("c{i}"), 1000 + i as u32));
    }
    cfg.upsert(listener("l", "r")).upsert(route("r", "c0"));
    (cfg, rx)
}

fn full_change(c: &mut Config) {
    for i in 0..CLUSTERS {
        let mut cl = cluster(&format!("c{i}"));
        cl["spec"]["connect_timeout"] = serde_json::json!("3s");
        c.upsert(cl).upsert(endpoints(&format!("c{i}"), 2000 + i as u32));
    }
    c.upsert(route("r", "c1"));
    let mut l = listener("l", "r");
    l["spec"]["address"]["socket_address"]["port_value"] = serde_json::json!(10001);
    c.upsert(l);
}

fn request(t: &str, names: &[&str], version: &str, nonce: &str, id: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        node: node(id, "c"),
        type_url: t.into(),
        resource_names: names.iter().map(|s| s.to_string()).collect(),
        version_info: version.into(),
        response_nonce: nonce.into(),
        ..Default::default()
    }
}

/// The server's own per-stream work, without channels, tasks or clients:
/// the machines driven directly, each response encoded into a reused
/// buffer (what the connection's write does).
fn server_only(n: usize) {
    let (mut cfg, rx) = config();
    let snap = cfg.publish();
    let xds = XdsConfig { requests_per_stream_per_second: None, new_streams_per_second: None, ..XdsConfig::default() };
    let (server, _nacks) =
        keelson_sinks::xds::AdsServer::new(&xds, rx, keelson_hub::AckLedger::default(), XdsMetrics::default());
    let shared = server.shared().clone();
    let names: Vec<String> = (0..CLUSTERS).map(|i| format!("c{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let subs: [(&str, &[&str]); 4] = [(CDS, &[]), (EDS, &names), (LDS, &[]), (RDS, &["r"])];
    let sub_of = |t: &str| subs.iter().find(|(u, _)| *u == t).map(|(_, s)| *s).unwrap();
    let mut buf = Vec::with_capacity(1 << 20);

    let rss0 = rss();
    let mut machines: Vec<SotwMachine> = Vec::with_capacity(n);
    for i in 0..n {
        let mut m = SotwMachine::new(Session::new("sotw", String::new()));
        for (t, sub) in subs {
            m.on_request(request(t, sub, "", "", &format!("p{i}")).into(), &shared).unwrap();
            let Some(Outbound::Sotw { body, nonce }) = m.next(&snap, &shared) else { panic!("no response") };
            m.on_request(request(t, sub, &body.version.to_string(), &nonce.to_string(), "").into(), &shared).unwrap();
        }
        machines.push(m);
    }
    let per_stream = rss().saturating_sub(rss0) as f64 / n as f64;
    println!(
        "server-only, {n} streams, {CLUSTERS} clusters: idle state {:.1} KB per stream (machine + ledger record; no sockets)",
        per_stream / 1024.0
    );

    for (label, full) in [("one EDS change", false), ("full-snapshot change", true)] {
        if full {
            full_change(&mut cfg);
        } else {
            cfg.upsert(endpoints("c7", 9999));
        }
        let snap = cfg.publish();
        let b0 = shared.cache.stats.bodies.load(Ordering::Relaxed);
        let (mut push_time, mut ack_time, mut written, mut responses) =
            (Duration::ZERO, Duration::ZERO, 0usize, 0usize);
        for m in &mut machines {
            let t0 = Instant::now();
            m.on_snapshot(&snap);
            let mut acks = Vec::new();
            while let Some(out) = m.next(&snap, &shared) {
                buf.clear();
                out.encode(&mut buf);
                written += buf.len();
                responses += 1;
                let Outbound::Sotw { body, nonce } = out else { unreachable!() };
                acks.push((body.version, nonce));
            }
            push_time += t0.elapsed();
            // The ACKs, built outside the timing (client work), applied inside.
            let reqs: Vec<DiscoveryRequest> = acks
                .iter()
                .zip(responses_types(full))
                .map(|((v, nonce), t)| request(t, sub_of(t), &v.to_string(), &nonce.to_string(), ""))
                .collect();
            let t1 = Instant::now();
            for r in reqs {
                m.on_request(r.into(), &shared).unwrap();
            }
            ack_time += t1.elapsed();
        }
        println!(
            "server-only {label}: {} responses, bodies built {}, push {:.2} µs per stream, ACK handling {:.2} µs per stream, {} bytes written per stream",
            responses,
            shared.cache.stats.bodies.load(Ordering::Relaxed) - b0,
            push_time.as_secs_f64() * 1e6 / n as f64,
            ack_time.as_secs_f64() * 1e6 / n as f64,
            written / n,
        );
    }
}

/// Types a change pushes, in order.
fn responses_types(full: bool) -> Vec<&'static str> {
    if full { vec![CDS, EDS, RDS, LDS] } else { vec![EDS] }
}

async fn run(n: usize) {
    let (mut cfg, rx) = config();
    cfg.publish();
    let xds = XdsConfig { requests_per_stream_per_second: None, new_streams_per_second: None, ..XdsConfig::default() };
    let metrics = XdsMetrics::default();
    let (server, _nacks) =
        keelson_sinks::xds::AdsServer::new(&xds, rx, keelson_hub::AckLedger::default(), metrics.clone());
    let names: Vec<String> = (0..CLUSTERS).map(|i| format!("c{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();

    let rss0 = rss();
    let mut all = Vec::with_capacity(n);
    for i in 0..n {
        let mut s = Sotw::open(&server, node(&format!("p{i}"), "c"));
        for (t, sub) in [(CDS, &[][..]), (EDS, &names[..]), (LDS, &[][..]), (RDS, &["r"][..])] {
            s.request(t, sub, "", "");
            let r = s.recv_header().await;
            s.ack(&r, sub);
        }
        all.push(s);
    }
    // Let the last ACKs land, then measure the idle streams.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let per_stream = (rss().saturating_sub(rss0)) as f64 / n as f64;
    println!("streams: {n}, clusters: {CLUSTERS} (+1 listener, 1 route)");
    println!("idle memory: {:.1} KB per stream (RSS delta, in-process clients included)", per_stream / 1024.0);

    let stats = &server.shared().cache.stats;
    for (label, expect) in [("one EDS change", 1usize), ("full-snapshot change", 4)] {
        let (b0, i0, e0) = (
            stats.bodies.load(Ordering::Relaxed),
            stats.items.load(Ordering::Relaxed),
            stats.bytes.load(Ordering::Relaxed),
        );
        let sent0 = metrics.bytes_sent.get();
        let (cpu0, t0) = (cpu_time(), Instant::now());
        if expect == 1 {
            cfg.upsert(endpoints("c7", 9999));
        } else {
            full_change(&mut cfg);
        }
        cfg.publish();
        // Each stream gets `expect` responses (full change: CDS, EDS, LDS, RDS).
        for s in &mut all {
            for _ in 0..expect {
                let r = s.recv_header().await;
                let sub: Vec<&str> = if r.type_url == EDS {
                    names.clone()
                } else if r.type_url == RDS {
                    vec!["r"]
                } else {
                    vec![]
                };
                s.ack(&r, &sub);
            }
        }
        let (wall, cpu) = (t0.elapsed(), cpu_time() - cpu0);
        let bodies = stats.bodies.load(Ordering::Relaxed) - b0;
        let items = stats.items.load(Ordering::Relaxed) - i0;
        let encoded = stats.bytes.load(Ordering::Relaxed) - e0;
        let sent = metrics.bytes_sent.get() - sent0;
        println!(
            "{label}: wall {:.1} ms, CPU {:.1} ms ({:.2} µs per stream, clients included); bodies built {bodies}, items copied {items}, bytes encoded {encoded}, bytes written {sent} ({} per stream)",
            wall.as_secs_f64() * 1e3,
            cpu.as_secs_f64() * 1e3,
            cpu.as_secs_f64() * 1e6 / n as f64,
            sent / n as u64,
        );
    }
}
