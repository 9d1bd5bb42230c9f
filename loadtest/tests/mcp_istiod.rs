//! Simulated istiods (`--mode mcp`) against Keelson's real xDS server on
//! 127.0.0.1, fed hand-built snapshots: the MCP items are built by the hub's
//! own encoder (keelson_hub::mcp) from hand-encoded bodies, so these tests
//! run whether or not the Istio messages are in the descriptor pool yet. The
//! server is the production one; nothing about it is faked.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use clap::Parser;
use keelson_hub::ledger::{Protocol, SyncStatus};
use keelson_hub::{
    AckLedger, Body, ChangeSet, ResourceEntry, ResourceKey, Serving, Snapshot, SourceId, SourceKind, State,
};
use keelson_loadtest::istio::IstioVersion;
use keelson_loadtest::measure::{Target, Tracker};
use keelson_loadtest::options::{Args, Options};
use keelson_loadtest::proxy::{self, Fleet, Kind, Mode, NackPolicy};
use keelson_sinks::xds::metrics::XdsMetrics;
use keelson_sinks::xds::{AdsServer, XdsConfig};
use serde_json::json;
use tokio::sync::{mpsc, watch};

const DEADLINE: Duration = Duration::from_secs(20);
const VS: &str = "istio.networking.v1alpha3.VirtualService";
const DR: &str = "istio.networking.v1alpha3.DestinationRule";

/// The config side: Istio objects put straight into a State (bypassing
/// validation, which needs the Istio descriptors) and published like the
/// hub publishes snapshots.
struct Hand {
    state: State,
    kind_versions: BTreeMap<(String, String), u64>,
    changed: BTreeSet<ResourceKey>,
    published: Option<u64>,
    tx: watch::Sender<Option<Arc<Snapshot>>>,
}

/// A protobuf string field, hand-encoded (`hosts`/`host` are field 1 of
/// VirtualService and DestinationRule).
fn string_field(field: u8, s: &str) -> Vec<u8> {
    let mut b = vec![field << 3 | 2, s.len() as u8];
    b.extend_from_slice(s.as_bytes());
    b
}

impl Hand {
    fn new() -> (Hand, watch::Receiver<Option<Arc<Snapshot>>>) {
        let (tx, rx) = watch::channel(None);
        let hand = Hand {
            state: State::default(),
            kind_versions: BTreeMap::new(),
            changed: BTreeSet::new(),
            published: None,
            tx,
        };
        (hand, rx)
    }

    /// Puts an Istio object at the next seq; `namespace` may hold a "/" to
    /// make an item istiod would drop.
    fn put(&mut self, kind: &str, message: &str, namespace: &str, name: &str, spec: &[u8]) -> u64 {
        let seq = self.state.seq + 1;
        let key = ResourceKey::new("networking.istio.io", kind, namespace, name);
        let body = Body::from_value(&json!({"apiVersion": "networking.istio.io/v1", "kind": kind,
            "metadata": {"name": name, "namespace": namespace}}));
        let now = SystemTime::now();
        let encoded = keelson_hub::mcp::encode_item(message, &key, &body.to_value(), spec, seq, now);
        let entry = ResourceEntry {
            version: seq,
            serving: Serving::of(&body),
            body,
            origin: SourceId::new(SourceKind::File, "hand"),
            source_version: String::new(),
            location: String::new(),
            encoded: Some(encoded),
            created_at: now,
        };
        if self.state.resources.insert(key.clone(), Arc::new(entry)).is_none() {
            *self.state.counts.entry((key.group.clone(), key.kind.clone())).or_default() += 1;
        }
        (self.state.seq, self.state.version) = (seq, seq);
        self.kind_versions.insert((key.group.clone(), key.kind.clone()), seq);
        self.changed.insert(key);
        seq
    }

    fn virtual_service(&mut self, namespace: &str, name: &str, host: &str) -> u64 {
        self.put("VirtualService", VS, namespace, name, &string_field(1, host))
    }

    fn publish(&mut self) {
        let changes = ChangeSet { since: self.published, keys: std::mem::take(&mut self.changed) };
        self.published = Some(self.state.version);
        let kinds = Arc::new(self.kind_versions.clone());
        let snap = Snapshot::with_kind_versions(&self.state, kinds, 0).with_changes(changes);
        self.tx.send_replace(Some(Arc::new(snap)));
    }
}

/// Serves `snapshots` over real gRPC on an OS-chosen loopback port.
async fn serve(snapshots: watch::Receiver<Option<Arc<Snapshot>>>) -> (String, AckLedger) {
    let ledger = AckLedger::default();
    let (server, _nacks) = AdsServer::new(&XdsConfig::default(), snapshots, ledger.clone(), XdsMetrics::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let grace = keelson_sinks::xds::SHUTDOWN_GRACE;
    tokio::spawn(keelson_sinks::xds::serve(listener, server, std::future::pending(), grace));
    (format!("http://{addr}"), ledger)
}

/// `n` simulated istiods of `istio` and the tracker their events fold into.
struct Istiods {
    tracker: Arc<Mutex<Tracker>>,
    _stop: watch::Sender<bool>,
}

fn start_istiods(target: &str, n: usize, istio: IstioVersion, revision: &str) -> Istiods {
    let (events, mut event_rx) = mpsc::unbounded_channel();
    let (stop_tx, stop) = watch::channel(false);
    let fleet = Arc::new(Fleet {
        target: target.into(),
        mode: Mode::Mcp,
        cluster: String::new(),
        namespace: None,
        nack: NackPolicy::default(),
        events,
        stop,
        bytes_received: AtomicU64::new(0),
        istio,
        revision: revision.into(),
        checked: Default::default(),
    });
    let tracker = Arc::new(Mutex::new(Tracker::new(n, Instant::now())));
    let sink = tracker.clone();
    tokio::spawn(async move {
        while let Some(e) = event_rx.recv().await {
            sink.lock().unwrap().event(e);
        }
    });
    for id in 0..n as u32 {
        tokio::spawn(proxy::run(fleet.clone(), id));
    }
    Istiods { tracker, _stop: stop_tx }
}

impl Istiods {
    async fn wait(&self, what: &str, done: impl Fn(&Tracker) -> bool) {
        let end = Instant::now() + DEADLINE;
        while !done(&self.tracker.lock().unwrap()) {
            let t = self.tracker.lock().unwrap();
            assert!(Instant::now() < end, "not within the deadline: {what} (last error {:?})", t.last_error);
            drop(t);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The ledger once `n` clients are in it and every type of each is ACKed
/// at what was sent, or as it is at the deadline (the last ACKs may still be
/// in flight when the clients report ready).
async fn settled(ledger: &AckLedger, n: usize) -> Vec<keelson_hub::ProxyRecord> {
    let end = Instant::now() + DEADLINE;
    loop {
        let records = ledger.records();
        let acked = records.iter().all(|r| r.types.values().all(|t| t.status() == SyncStatus::Synced));
        if (records.len() == n && acked) || Instant::now() > end {
            return records;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn ready_and_acked(istio: IstioVersion) {
    let (mut hand, rx) = Hand::new();
    hand.virtual_service("bookinfo", "reviews", "reviews");
    hand.virtual_service("bookinfo", "ratings", "ratings");
    hand.put("DestinationRule", DR, "bookinfo", "reviews", &string_field(1, "reviews"));
    hand.publish();
    let (target, ledger) = serve(rx).await;
    let istiods = start_istiods(&target, 3, istio, "");
    istiods.wait("3 istiods ready", |t| t.synced_count == 3).await;

    {
        let t = istiods.tracker.lock().unwrap();
        assert_eq!((t.errors, t.dropped_items, t.nacks), (0, 0, 0), "{:?} {:?}", t.last_error, t.last_dropped);
        // Every Istio type ACKed once by each; the non-empty MeshConfig never is.
        assert_eq!(t.acks, 3 * 14, "one ACK per Istio type per istiod");
        assert_eq!(t.sync_times.len(), 3);
        assert!(t.sync_times.iter().all(|d| *d > Duration::ZERO && *d < DEADLINE), "{:?}", t.sync_times);
    }

    // What the server saw: three MCP clients with istiod's node ids, each
    // type requested under this version's GVK and ACKed at what was sent
    // (the last ACKs may still be in flight when the clients report ready).
    let records = settled(&ledger, 3).await;
    assert_eq!(records.len(), 3);
    let wanted: BTreeSet<&str> = istio.requested().filter(|(_, k)| *k != Kind::MeshConfig).map(|(u, _)| u).collect();
    for r in &records {
        assert_eq!(r.protocol, Protocol::Mcp, "{}", r.node);
        assert!(
            r.node.starts_with("sidecar~10.0.0.") && r.node.ends_with(".istio-system~istio-system.svc.cluster.local")
        );
        assert_eq!(r.types.keys().map(String::as_str).collect::<BTreeSet<_>>(), wanted, "{}", r.node);
        for (url, ty) in &r.types {
            assert_eq!(ty.status(), SyncStatus::Synced, "{} {url}", r.node);
        }
    }
    let vs = istio.type_url(Kind::VirtualService).unwrap();
    assert_eq!(records[0].types[vs].acked_version, Some(2), "the VirtualService kind's version: its last seq");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_1_24_istiods_become_ready_and_ack_every_istio_type() {
    ready_and_acked(IstioVersion::V1_24).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_1_23_istiods_become_ready_and_ack_every_istio_type() {
    ready_and_acked(IstioVersion::V1_23).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_virtual_service_edit_converges_on_every_istiod() {
    let (mut hand, rx) = Hand::new();
    hand.virtual_service("a", "one", "one");
    hand.virtual_service("a", "two", "two");
    hand.publish();
    let (target, _ledger) = serve(rx).await;
    let istiods = start_istiods(&target, 4, IstioVersion::V1_24, "");
    istiods.wait("4 istiods ready", |t| t.synced_count == 4).await;
    for n in 1..=3u64 {
        let seq = hand.virtual_service("a", "two", &format!("two-{n}"));
        hand.publish();
        istiods.tracker.lock().unwrap().change(Target::Seqs(vec![(Kind::VirtualService, seq)]), Instant::now());
        istiods.wait("the edit reached every istiod", |t| t.pending() == 0).await;
    }
    let t = istiods.tracker.lock().unwrap();
    assert_eq!(t.results.len(), 3);
    for r in &t.results {
        assert_eq!((r.reached, r.missed), (4, 0), "{r:?}");
    }
    assert_eq!(t.acks, 4 * 14 + 3 * 4, "one more VirtualService ACK per istiod per edit");
    assert_eq!(t.dropped_items, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_istiod_would_drop_are_counted_and_the_response_still_acked() {
    let (mut hand, rx) = Hand::new();
    hand.virtual_service("a", "good", "good");
    // Name "a/b/bad": three parts, which istiod's adsc drops.
    hand.virtual_service("a/b", "bad", "bad");
    hand.publish();
    let (target, ledger) = serve(rx).await;
    let istiods = start_istiods(&target, 2, IstioVersion::V1_24, "");
    istiods.wait("2 istiods ready", |t| t.synced_count == 2).await;
    {
        let t = istiods.tracker.lock().unwrap();
        assert_eq!(t.dropped_items, 2, "one bad item per istiod");
        assert!(t.last_dropped.as_deref().is_some_and(|e| e.contains("a/b/bad")), "{:?}", t.last_dropped);
    }
    for r in settled(&ledger, 2).await {
        let vs = &r.types["networking.istio.io/v1/VirtualService"];
        assert_eq!(vs.status(), SyncStatus::Synced, "istiod never NACKs: {}", r.node);
    }
}

/// The whole run (`keelson_loadtest::run`) in peer mode: each change is a
/// POST to a small trigger server that edits a VirtualService in the
/// hand-built config, and convergence runs to every istiod ACKing a new
/// VirtualService version. The report must say all ready and converged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_mode_run_reports_every_istiod_ready_and_converged() {
    let (mut hand, rx) = Hand::new();
    for i in 0..20 {
        hand.virtual_service("lt", &format!("lt-vs-{i}"), &format!("h{i}"));
        hand.put("DestinationRule", DR, "lt", &format!("lt-dr-{i}"), &string_field(1, &format!("h{i}")));
    }
    hand.publish();
    let (target, _ledger) = serve(rx).await;
    let hand = Arc::new(Mutex::new(hand));
    let trigger = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let trigger_url = format!("http://{}/change", trigger.local_addr().unwrap());
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for (n, conn) in (1u32..).zip(trigger.incoming()) {
            let Ok(mut conn) = conn else { return };
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let mut h = hand.lock().unwrap();
            h.virtual_service("lt", &format!("lt-vs-{}", n % 20), &format!("edit-{n}"));
            h.publish();
            drop(h);
            let _ = write!(conn, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    let args = Args::parse_from([
        "keelson-loadtest",
        "--target",
        &target,
        "--trigger-url",
        &trigger_url,
        "--mode",
        "mcp",
        "--istio-version",
        "1.23",
        "--scenario",
        "istio-churn",
        "--proxies",
        "10",
        "--duration",
        "2s",
        "--interval",
        "400ms",
        "--sync-timeout",
        "30s",
        "--quiet",
    ]);
    let options = Options::resolve(args).unwrap();
    let (report, _) = keelson_loadtest::run(&options).await.unwrap();
    assert!(report.clean(), "{}", report.table());
    assert_eq!((report.mode.as_str(), report.istio_version.as_deref()), ("mcp", Some("1.23")));
    assert_eq!((report.connected, report.synced), (10, 10));
    assert!(report.initial_sync_s.is_some() && report.sync_ms.max > 0.0, "{}", report.table());
    assert!(report.changes >= 3, "{}", report.table());
    assert!(report.per_change.iter().all(|c| (c.reached, c.missed) == (10, 0)), "{}", report.table());
    assert!(report.table().contains("ready per istiod"), "{}", report.table());
}
