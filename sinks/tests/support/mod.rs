//! In-process harness for the xDS server: a hand-driven config (State folded
//! from events, published like the hub does) and streams fed by channels.
//! The machines, cache and codec under test are the production ones; only
//! the transport (tonic/HTTP2) is left out, and ads_server.rs covers it.

#![allow(dead_code)] // each test binary uses a different part

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use keelson_hub::{AckLedger, Event, Op, ResourceKey, Snapshot, SourceId, SourceKind, State};
use keelson_proto::envoy::pb::envoy::config::core::v3::Node;
use keelson_proto::envoy::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use keelson_sinks::xds::metrics::XdsMetrics;
use keelson_sinks::xds::stream::ResponseStream;
use keelson_sinks::xds::wire::Outbound;
use keelson_sinks::xds::{AdsServer, NackRecord, XdsConfig};
use prost::Message;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tonic::Status;

pub const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const RDS: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
pub const WAIT: Duration = Duration::from_secs(5);

/// The config side: upsert/delete objects, publish snapshots.
pub struct Config {
    state: State,
    kind_versions: BTreeMap<(String, String), u64>,
    /// Keys changed since the last publish, and that publish's version: the
    /// change set the hub attaches to each snapshot.
    changed: std::collections::BTreeSet<ResourceKey>,
    published: Option<u64>,
    tx: watch::Sender<Option<Arc<Snapshot>>>,
    /// With translation on: the state plus derived resources, as the hub serves them.
    served: Option<keelson_hub::translate::Served>,
}

impl Config {
    pub fn new() -> (Config, watch::Receiver<Option<Arc<Snapshot>>>) {
        let (tx, rx) = watch::channel(None);
        let cfg = Config {
            state: State::default(),
            kind_versions: BTreeMap::new(),
            changed: Default::default(),
            published: None,
            tx,
            served: None,
        };
        (cfg, rx)
    }

    /// A config side that translates registry and Istio objects into Envoy
    /// resources before publishing, as the hub does (`[translate]` on).
    pub fn translated() -> (Config, watch::Receiver<Option<Arc<Snapshot>>>) {
        let (mut cfg, rx) = Config::new();
        let translate = keelson_hub::translate::TranslateConfig::default();
        cfg.served = Some(keelson_hub::translate::Served::of(&cfg.state, &translate));
        (cfg, rx)
    }

    fn apply(&mut self, op: Op) {
        let key = op.key().cloned();
        let ev = Event {
            seq: self.state.seq + 1,
            at: SystemTime::now(),
            origin: SourceId::new(SourceKind::File, "test"),
            op,
        };
        let seq = ev.seq;
        if self.state.apply(ev) != keelson_hub::Applied::Unchanged {
            let key = key.expect("resource op");
            let changed = match &mut self.served {
                Some(served) => served.update(&self.state, &[key].into()),
                None => [key].into(),
            };
            for key in changed {
                self.kind_versions.insert((key.group.clone(), key.kind.clone()), seq);
                self.changed.insert(key);
            }
        }
    }

    /// Upserts a Kubernetes-style object (validated like any source's).
    pub fn upsert(&mut self, obj: Value) -> &mut Self {
        let valid = keelson_hub::object::parse_object(&obj).unwrap_or_else(|e| panic!("invalid test object: {e}"));
        self.apply(Op::Upsert {
            key: valid.key,
            source_version: String::new(),
            body: valid.body,
            location: String::new(),
            author: String::new(),
        });
        self
    }

    pub fn delete(&mut self, kind: &str, name: &str) -> &mut Self {
        let key = ResourceKey::new(keelson_hub::kinds::ENVOY_GROUP, kind, "", name);
        self.apply(Op::Delete { key, source_version: String::new(), author: String::new() });
        self
    }

    /// Deletes any object by its key.
    pub fn delete_key(&mut self, key: ResourceKey) -> &mut Self {
        self.apply(Op::Delete { key, source_version: String::new(), author: String::new() });
        self
    }

    pub fn publish(&mut self) -> Arc<Snapshot> {
        let changes = keelson_hub::ChangeSet { since: self.published, keys: std::mem::take(&mut self.changed) };
        self.published = Some(self.state.version);
        let kind_versions = Arc::new(self.kind_versions.clone());
        let snap = match &self.served {
            Some(served) => Snapshot::serving(&self.state, served, kind_versions, 0),
            None => Snapshot::with_kind_versions(&self.state, kind_versions, 0),
        };
        let snap = Arc::new(snap.with_changes(changes));
        self.tx.send_replace(Some(snap.clone()));
        snap
    }

    pub fn version(&self) -> u64 {
        self.state.version
    }
}

fn envoy(kind: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "xds.keelson.dev/v1", "kind": kind, "metadata": {"name": name}, "spec": spec})
}

pub fn cluster(name: &str) -> Value {
    envoy(
        "Cluster",
        name,
        json!({"name": name, "type": "EDS", "connect_timeout": "1s", "eds_cluster_config": {"eds_config": {"ads": {}, "resource_api_version": "V3"}}}),
    )
}

pub fn endpoints(name: &str, port: u32) -> Value {
    envoy(
        "ClusterLoadAssignment",
        name,
        json!({"cluster_name": name, "endpoints": [{"locality": {"zone": "z1"}, "load_balancing_weight": 1,
            "lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}),
    )
}

pub fn listener(name: &str, route: &str) -> Value {
    envoy(
        "Listener",
        name,
        json!({"name": name, "address": {"socket_address": {"address": "127.0.0.1", "port_value": 10000}},
            "filter_chains": [{"filters": [{"name": "hcm", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "in", "rds": {"route_config_name": route, "config_source": {"ads": {}, "resource_api_version": "V3"}},
                "http_filters": [{"name": "router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]}]}),
    )
}

pub fn route(name: &str, cluster: &str) -> Value {
    envoy(
        "RouteConfiguration",
        name,
        json!({"name": name, "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}]}]}),
    )
}

/// Adds a metadata label or annotation to an object.
pub fn with_meta(mut obj: Value, field: &str, key: &str, value: &str) -> Value {
    obj["metadata"][field][key] = json!(value);
    obj
}

pub fn server(
    snapshots: watch::Receiver<Option<Arc<Snapshot>>>,
    cfg: XdsConfig,
) -> (AdsServer, AckLedger, mpsc::Receiver<NackRecord>) {
    let ledger = AckLedger::default();
    let (server, nacks) = AdsServer::new(&cfg, snapshots, ledger.clone(), XdsMetrics::default());
    (server, ledger, nacks)
}

/// Serves one cluster over real HTTP/2 on an OS-chosen loopback port; the
/// server stops with the runtime.
pub async fn serve_on_loopback(
    cfg: XdsConfig,
) -> (std::net::SocketAddr, Config, Arc<keelson_sinks::xds::session::Shared>) {
    let (mut config, rx) = Config::new();
    config.upsert(cluster("a"));
    config.publish();
    let (server, _ledger, _nacks) = server(rx, cfg);
    let shared = server.shared().clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(keelson_sinks::xds::serve(
        listener,
        server,
        std::future::pending(),
        keelson_sinks::xds::SHUTDOWN_GRACE,
    ));
    (addr, config, shared)
}

pub fn node(id: &str, cluster: &str) -> Option<Node> {
    Some(Node { id: id.into(), cluster: cluster.into(), ..Node::default() })
}

/// The next response of a stream, within the deadline.
async fn next_out(rx: &mut ResponseStream) -> Vec<u8> {
    let out = tokio::time::timeout(WAIT, tokio_stream::StreamExt::next(rx))
        .await
        .expect("a response within the deadline")
        .expect("stream open")
        .expect("a response, not an error");
    encode(&out)
}

pub fn encode(out: &Outbound) -> Vec<u8> {
    let mut buf = Vec::new();
    out.encode(&mut buf);
    buf
}

/// A SotW client stream.
pub struct Sotw {
    tx: mpsc::UnboundedSender<Result<DiscoveryRequest, Status>>,
    rx: ResponseStream,
    pub node: Option<Node>,
}

impl Sotw {
    pub fn open(server: &AdsServer, node: Option<Node>) -> Sotw {
        let (tx, req_rx) = mpsc::unbounded_channel();
        let machine = keelson_sinks::xds::sotw::SotwMachine::new(keelson_sinks::xds::session::Session::new(
            "sotw",
            "test".into(),
        ));
        // As the server's codec hands them over (every request's names decoded).
        let requests = tokio_stream::StreamExt::map(
            tokio_stream::wrappers::UnboundedReceiverStream::new(req_rx),
            |r: Result<DiscoveryRequest, Status>| r.map(keelson_sinks::xds::wire::SotwRequest::from),
        );
        let rx = server.open(machine, "sotw", requests);
        Sotw { tx, rx, node }
    }

    pub fn send(&self, req: DiscoveryRequest) {
        self.tx.send(Ok(req)).expect("stream open");
    }

    /// Ends the request stream (gRPC half-close); responses still flow.
    pub fn half_close(&mut self) {
        let (closed, _) = mpsc::unbounded_channel();
        drop(std::mem::replace(&mut self.tx, closed));
    }

    /// Asserts the stream ends (status OK) within the deadline.
    pub async fn recv_end(&mut self) {
        match tokio::time::timeout(WAIT, tokio_stream::StreamExt::next(&mut self.rx))
            .await
            .expect("ended within deadline")
        {
            None => {}
            Some(Ok(out)) => panic!("expected the end, got {:?}", DiscoveryResponse::decode(encode(&out).as_slice())),
            Some(Err(status)) => panic!("expected the end (OK), got {status:?}"),
        }
    }

    pub fn send_err(&self, status: Status) {
        self.tx.send(Err(status)).expect("stream open");
    }

    /// A request; the node rides on every one, as Envoy's do.
    pub fn request(&self, type_url: &str, names: &[&str], version: &str, nonce: &str) {
        self.send(DiscoveryRequest {
            node: self.node.clone(),
            type_url: type_url.into(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            version_info: version.into(),
            response_nonce: nonce.into(),
            ..Default::default()
        });
    }

    pub fn ack(&self, r: &DiscoveryResponse, names: &[&str]) {
        self.request(&r.type_url, names, &r.version_info, &r.nonce);
    }

    pub fn nack(&self, r: &DiscoveryResponse, names: &[&str], accepted: &str, error: &str) {
        self.send(DiscoveryRequest {
            node: self.node.clone(),
            type_url: r.type_url.clone(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            version_info: accepted.into(),
            response_nonce: r.nonce.clone(),
            error_detail: Some(keelson_proto::envoy::pb::google::rpc::Status {
                code: 13,
                message: error.into(),
                details: vec![],
            }),
            ..Default::default()
        });
    }

    pub async fn recv(&mut self) -> DiscoveryResponse {
        let bytes = next_out(&mut self.rx).await;
        DiscoveryResponse::decode(bytes.as_slice()).expect("decodes as Envoy's DiscoveryResponse")
    }

    /// The next response's header only (type_url, version_info, nonce): a
    /// client that skips decoding resources, for benchmarks that should
    /// measure the server.
    pub async fn recv_header(&mut self) -> DiscoveryResponse {
        let h = ResponseHeader::decode(next_out(&mut self.rx).await.as_slice()).expect("decodes");
        DiscoveryResponse { version_info: h.version_info, type_url: h.type_url, nonce: h.nonce, ..Default::default() }
    }

    /// The stream's end status.
    pub async fn recv_err(&mut self) -> Status {
        match tokio::time::timeout(WAIT, tokio_stream::StreamExt::next(&mut self.rx)).await.expect("within deadline") {
            Some(Err(status)) => status,
            Some(Ok(out)) => panic!("expected an error, got {:?}", DiscoveryResponse::decode(encode(&out).as_slice())),
            None => panic!("stream ended without a status"),
        }
    }

    /// Asserts nothing arrives within `window`.
    pub async fn silent(&mut self, window: Duration) {
        if let Ok(Some(Ok(out))) = tokio::time::timeout(window, tokio_stream::StreamExt::next(&mut self.rx)).await {
            panic!("unexpected response: {:?}", DiscoveryResponse::decode(encode(&out).as_slice()));
        }
    }
}

/// Polls `done` until it holds, within the deadline.
pub async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let end = std::time::Instant::now() + WAIT;
    while !done() {
        assert!(std::time::Instant::now() < end, "not within the deadline: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// DiscoveryResponse without its resources (prost skips unknown fields).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ResponseHeader {
    #[prost(string, tag = "1")]
    pub version_info: String,
    #[prost(string, tag = "4")]
    pub type_url: String,
    #[prost(string, tag = "5")]
    pub nonce: String,
}

/// A Delta client stream.
pub struct Delta {
    tx: mpsc::UnboundedSender<Result<DeltaDiscoveryRequest, Status>>,
    rx: ResponseStream,
}

impl Delta {
    pub fn open(server: &AdsServer) -> Delta {
        let (tx, req_rx) = mpsc::unbounded_channel();
        let machine = keelson_sinks::xds::delta::DeltaMachine::new(keelson_sinks::xds::session::Session::new(
            "delta",
            "test".into(),
        ));
        let rx = server.open(machine, "delta", tokio_stream::wrappers::UnboundedReceiverStream::new(req_rx));
        Delta { tx, rx }
    }

    pub fn send(&self, req: DeltaDiscoveryRequest) {
        self.tx.send(Ok(req)).expect("stream open");
    }

    pub fn subscribe(&self, type_url: &str, names: &[&str], nonce: &str) {
        self.subscribe_as(node("delta-1", "test"), type_url, names, nonce)
    }

    /// [`Delta::subscribe`] from the proxy `node`.
    pub fn subscribe_as(&self, node: Option<Node>, type_url: &str, names: &[&str], nonce: &str) {
        self.send(DeltaDiscoveryRequest {
            node,
            type_url: type_url.into(),
            resource_names_subscribe: names.iter().map(|s| s.to_string()).collect(),
            response_nonce: nonce.into(),
            ..Default::default()
        });
    }

    pub async fn recv(&mut self) -> DeltaDiscoveryResponse {
        let bytes = next_out(&mut self.rx).await;
        DeltaDiscoveryResponse::decode(bytes.as_slice()).expect("decodes as Envoy's DeltaDiscoveryResponse")
    }

    pub async fn silent(&mut self, window: Duration) {
        if let Ok(Some(Ok(out))) = tokio::time::timeout(window, tokio_stream::StreamExt::next(&mut self.rx)).await {
            panic!("unexpected response: {:?}", DeltaDiscoveryResponse::decode(encode(&out).as_slice()));
        }
    }
}

/// Names of the resources in a SotW response, decoded by their type.
pub fn names(r: &DiscoveryResponse) -> Vec<String> {
    r.resources.iter().map(|any| resource_name(&any.type_url, &any.value)).collect()
}

pub fn resource_name(type_url: &str, value: &[u8]) -> String {
    use keelson_proto::envoy::pb::envoy::config as c;
    match type_url {
        CDS => c::cluster::v3::Cluster::decode(value).unwrap().name,
        EDS => c::endpoint::v3::ClusterLoadAssignment::decode(value).unwrap().cluster_name,
        LDS => c::listener::v3::Listener::decode(value).unwrap().name,
        RDS => c::route::v3::RouteConfiguration::decode(value).unwrap().name,
        other => panic!("unexpected type {other}"),
    }
}
