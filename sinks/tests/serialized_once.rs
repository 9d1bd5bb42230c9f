//! Serialized once (issue 4, item 4): one snapshot change pushed to 1,000
//! streams builds each response body once and copies each changed resource
//! into it once, however many streams receive it.

mod support;

use std::sync::atomic::Ordering;

use keelson_sinks::xds::XdsConfig;
use support::*;

const STREAMS: usize = 1_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_change_to_a_thousand_streams_encodes_each_resource_once() {
    let (mut cfg, rx) = Config::new();
    for i in 0..20 {
        cfg.upsert(cluster(&format!("c{i}"))).upsert(endpoints(&format!("c{i}"), 1000 + i));
    }
    cfg.publish();
    let (server, _ledger, _nacks) =
        server(rx, XdsConfig { requests_per_stream_per_second: None, ..XdsConfig::default() });
    let eds_names: Vec<String> = (0..20).map(|i| format!("c{i}")).collect();
    let eds_names: Vec<&str> = eds_names.iter().map(String::as_str).collect();

    let mut streams = Vec::with_capacity(STREAMS);
    for i in 0..STREAMS {
        let mut s = Sotw::open(&server, node(&format!("p{i}"), "c"));
        s.request(CDS, &[], "", "");
        let r = s.recv().await;
        s.ack(&r, &[]);
        s.request(EDS, &eds_names, "", "");
        let r = s.recv().await;
        s.ack(&r, &eds_names);
        streams.push(s);
    }
    let stats = &server.shared().cache.stats;
    let (bodies0, items0) = (stats.bodies.load(Ordering::Relaxed), stats.items.load(Ordering::Relaxed));
    assert_eq!(bodies0, 2, "the initial CDS and EDS bodies were built once for all {STREAMS} streams");

    // One endpoint change.
    cfg.upsert(endpoints("c7", 9999));
    cfg.publish();
    for s in &mut streams {
        let r = s.recv().await;
        assert_eq!(r.type_url, EDS);
        assert_eq!(names(&r), ["c7"], "EDS is not full-state: only what changed since the ACK");
    }
    let bodies = stats.bodies.load(Ordering::Relaxed) - bodies0;
    let items = stats.items.load(Ordering::Relaxed) - items0;
    assert_eq!(bodies, 1, "one EDS body for {STREAMS} streams");
    // Every stream had ACKed the same version, so they share one partial
    // body: the one changed item copied once; the resource itself was
    // encoded by the hub once, when its version was applied.
    assert_eq!(items, 1);
}
