//! Issue 9, item 5: unauthenticated clients cannot grow the durable log at
//! their pace. One record per (node, type, version, error); repeats are
//! counted; long errors are cut; appends are rate-limited. The records that
//! would be appended are what comes out of the server's NACK channel.

mod support;

use std::num::NonZeroU32;
use std::time::Instant;

use keelson_sinks::xds::metrics::{RejectLabel, TypeLabel};
use keelson_sinks::xds::nack::MAX_ERROR_BYTES;
use keelson_sinks::xds::{AdsServer, NackRecord, XdsConfig};
use support::*;
use tokio::sync::mpsc;

/// No per-stream request limit: a flood would otherwise end the stream.
fn unlimited() -> XdsConfig {
    XdsConfig { requests_per_stream_per_second: None, ..XdsConfig::default() }
}

fn nacks_seen(server: &AdsServer) -> u64 {
    server.shared().metrics.nacks.get_or_create(&TypeLabel { r#type: "CDS" }).get()
}

fn dropped(server: &AdsServer, reason: &str) -> u64 {
    server.shared().metrics.nacks_dropped.get_or_create(&RejectLabel { reason: reason.into() }).get()
}

fn drain(nacks: &mut mpsc::Receiver<NackRecord>) -> Vec<NackRecord> {
    std::iter::from_fn(|| nacks.try_recv().ok()).collect()
}

#[tokio::test]
async fn identical_nacks_are_logged_once_and_their_repeats_counted() {
    let (mut cfg, rx) = Config::new();
    cfg.upsert(cluster("a"));
    cfg.publish();
    let (server, ledger, mut nacks) = server(rx, unlimited());
    let mut s = Sotw::open(&server, node("envoy-1", "c"));
    s.request(CDS, &[], "", "");
    let r = s.recv().await;
    for _ in 0..2000 {
        s.nack(&r, &[], "", "cluster a: rejected\n");
    }
    wait_until("2000 NACKs seen", || nacks_seen(&server) == 2000).await;
    let logged = drain(&mut nacks);
    assert_eq!(logged.len(), 1, "one record for 2000 identical NACKs");
    assert_eq!((logged[0].node.as_str(), logged[0].error.as_str()), ("envoy-1", "cluster a: rejected"));
    assert_eq!(ledger.records()[0].types[CDS].nack_repeats, 1999);
    assert_eq!(server.shared().metrics.nack_repeats.get(), 1999);

    // The same proxy reconnects and rejects the same version again: still
    // the same NACK, already in the log.
    drop(s);
    let mut again = Sotw::open(&server, node("envoy-1", "c"));
    again.request(CDS, &[], "", "");
    let r2 = again.recv().await;
    assert_eq!(r2.version_info, r.version_info);
    again.nack(&r2, &[], "", "cluster a: rejected\n");
    // A different error is a new record.
    again.nack(&r2, &[], "", "cluster a: rejected for another reason");
    wait_until("2002 NACKs seen", || nacks_seen(&server) == 2002).await;
    let logged = drain(&mut nacks);
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert_eq!(logged[0].error, "cluster a: rejected for another reason");
    assert_eq!(server.shared().metrics.nack_repeats.get(), 2000);
}

#[tokio::test]
async fn a_huge_error_detail_is_cut_and_states_its_length() {
    let (mut cfg, rx) = Config::new();
    cfg.upsert(cluster("a"));
    cfg.publish();
    let (server, ledger, mut nacks) = server(rx, unlimited());
    let mut s = Sotw::open(&server, node("envoy-1", "c"));
    s.request(CDS, &[], "", "");
    let r = s.recv().await;
    let huge = "x".repeat(10 << 20);
    s.nack(&r, &[], "", &huge);
    let record = tokio::time::timeout(WAIT, nacks.recv()).await.expect("a record").expect("open");
    assert!(record.error.len() <= MAX_ERROR_BYTES + 64, "{} bytes logged", record.error.len());
    assert!(record.error.starts_with("xxxx"));
    assert!(record.error.contains("(10485760 bytes, xxh3 "), "{}", &record.error[MAX_ERROR_BYTES - 8..]);
    let in_ledger = ledger.records()[0].types[CDS].error.clone().expect("NACK error in the ledger");
    assert_eq!(in_ledger, record.error, "the ledger keeps the cut text, not 10 MiB");
    // A huge node id is cut too.
    let mut s = Sotw::open(&server, node(&"n".repeat(1 << 20), "c"));
    s.request(CDS, &[], "", "");
    let r = s.recv().await;
    s.nack(&r, &[], "", "bad");
    let record = tokio::time::timeout(WAIT, nacks.recv()).await.expect("a record").expect("open");
    assert!(record.node.len() <= keelson_sinks::xds::nack::MAX_FIELD_BYTES + 4, "{}", record.node.len());
}

#[tokio::test]
async fn distinct_nacks_from_many_streams_are_bounded_by_the_global_rate() {
    let (mut cfg, rx) = Config::new();
    cfg.upsert(cluster("a"));
    cfg.publish();
    let mut xds = unlimited();
    xds.nack_limits.global_per_second = NonZeroU32::new(3);
    let (server, _, mut nacks) = server(rx, xds);
    let began = Instant::now();
    let mut streams = Vec::new();
    for i in 0..30 {
        let mut s = Sotw::open(&server, node(&format!("envoy-{i}"), "c"));
        s.request(CDS, &[], "", "");
        let r = s.recv().await;
        s.nack(&r, &[], "", &format!("error {i}"));
        streams.push(s);
    }
    wait_until("30 NACKs seen", || nacks_seen(&server) == 30).await;
    let allowed = 3 + (began.elapsed().as_secs_f64() * 3.0).ceil() as usize;
    let logged = drain(&mut nacks).len();
    assert!(logged <= allowed, "{logged} records, at most {allowed} allowed");
    assert_eq!(logged as u64 + dropped(&server, "global_rate"), 30, "every drop is counted");
    assert!(dropped(&server, "global_rate") > 0);
}

#[tokio::test]
async fn one_stream_cannot_spend_the_global_rate() {
    let (mut cfg, rx) = Config::new();
    cfg.upsert(cluster("a"));
    cfg.publish();
    let (server, _, mut nacks) = server(rx, unlimited());
    let began = Instant::now();
    let mut s = Sotw::open(&server, node("envoy-1", "c"));
    s.request(CDS, &[], "", "");
    let r = s.recv().await;
    for i in 0..40 {
        s.nack(&r, &[], "", &format!("error {i}"));
    }
    wait_until("40 NACKs seen", || nacks_seen(&server) == 40).await;
    // Default per stream: 1/s with a burst of 5.
    let allowed = 5 + began.elapsed().as_secs_f64().ceil() as usize;
    let logged = drain(&mut nacks).len();
    assert!(logged <= allowed, "{logged} records, at most {allowed} allowed");
    assert_eq!(logged as u64 + dropped(&server, "stream_rate"), 40);
}
