//! Legacy Galley MCP (issue 10, item 3; PROTOCOL.md §2b): the three
//! `istio.mcp.v1alpha1` services as Galley-era sinks use them. There is no
//! Galley-era istiod (1.1–1.8) on this machine: the client side here sends
//! what istio/istio@1.8.0 `pkg/mcp/sink` and `pkg/mcp/client` send (an empty
//! sink node id, one request per collection, ACK = nonce, NACK = nonce +
//! error_detail); the server is the production one, nothing about it faked.
//! Each §2b rule is one named test.

mod support;

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::atomic::Ordering;
use std::time::Duration;

use keelson_hub::ResourceKey;
use keelson_proto::envoy::pb::google::rpc::Status as RpcStatus;
use keelson_proto::mcp::{
    IncrementalMeshConfigRequest, IncrementalMeshConfigResponse, MeshConfigRequest, MeshConfigResponse,
    RequestResources, Resource, Resources, SinkNode,
};
use keelson_sinks::xds::legacy::{
    Flavor, LegacyMachine, LegacyRequest, MESH_CONFIG_INCREMENTAL, MESH_CONFIG_SOTW, RESOURCE_SOURCE,
};
use keelson_sinks::xds::session::Session;
use keelson_sinks::xds::stream::ResponseStream;
use keelson_sinks::xds::{AdsServer, XdsConfig};
use prost::Message;
use serde_json::{Value, json};
use support::*;
use tokio::sync::mpsc;
use tonic::{Code, Status};

const VS_TYPE: &str = "type.googleapis.com/istio.networking.v1alpha3.VirtualService";
const VS_COLLECTION: &str = "istio/networking/v1alpha3/virtualservices";
/// The peer address the in-process streams pretend to come from.
const PEER: &str = "10.1.2.3:4567";
const QUIET: Duration = Duration::from_millis(200);

/// A VirtualService with only `hosts` (what the schema in this tree holds).
fn vs(ns: &str, name: &str, host: &str) -> Value {
    json!({ "apiVersion": "networking.istio.io/v1alpha3", "kind": "VirtualService",
        "metadata": { "name": name, "namespace": ns }, "spec": { "hosts": [host] } })
}

fn vs_key(ns: &str, name: &str) -> ResourceKey {
    ResourceKey::new("networking.istio.io", "VirtualService", ns, name)
}

fn sink(id: &str) -> Option<SinkNode> {
    Some(SinkNode { id: id.into(), annotations: BTreeMap::new() })
}

fn rpc_error(message: &str) -> Option<RpcStatus> {
    // pkg/mcp/sink NACKs an undecodable body with InvalidArgument (3).
    Some(RpcStatus { code: 3, message: message.into(), details: vec![] })
}

fn sotw(type_url: &str, version: &str, nonce: &str) -> MeshConfigRequest {
    MeshConfigRequest {
        sink_node: sink("pilot-1"),
        type_url: type_url.into(),
        version_info: version.into(),
        response_nonce: nonce.into(),
        error_detail: None,
    }
}

fn source(collection: &str, nonce: &str, incremental: bool) -> RequestResources {
    RequestResources {
        sink_node: sink(""),
        collection: collection.into(),
        response_nonce: nonce.into(),
        incremental,
        ..Default::default()
    }
}

/// One in-process stream of a legacy service: requests `Req`, responses `Resp`.
struct Stream<Req, Resp> {
    tx: mpsc::UnboundedSender<Result<Req, Status>>,
    rx: ResponseStream,
    _resp: PhantomData<fn() -> Resp>,
}

impl<Req, Resp> Stream<Req, Resp>
where
    Req: Into<LegacyRequest> + Send + 'static,
    Resp: Message + Default + std::fmt::Debug,
{
    fn open(server: &AdsServer, flavor: &'static Flavor) -> Self {
        let (tx, req_rx) = mpsc::unbounded_channel();
        let machine = LegacyMachine::<Req>::new(Session::new(flavor.stream, PEER.into()), flavor);
        let rx = server.open(machine, flavor.stream, tokio_stream::wrappers::UnboundedReceiverStream::new(req_rx));
        Stream { tx, rx, _resp: PhantomData }
    }

    fn send(&self, req: Req) {
        self.tx.send(Ok(req)).expect("stream open");
    }

    async fn next(&mut self) -> Option<Result<Resp, Status>> {
        let item =
            tokio::time::timeout(WAIT, tokio_stream::StreamExt::next(&mut self.rx)).await.expect("within deadline");
        item.map(|r| r.map(|out| Resp::decode(encode(&out).as_slice()).expect("decodes as the istio.mcp message")))
    }

    async fn recv(&mut self) -> Resp {
        self.next().await.expect("stream open").expect("a response, not an error")
    }

    async fn recv_err(&mut self) -> Status {
        match self.next().await {
            Some(Err(status)) => status,
            other => panic!("expected the stream to fail, got {other:?}"),
        }
    }

    async fn silent(&mut self) {
        if let Ok(Some(out)) = tokio::time::timeout(QUIET, tokio_stream::StreamExt::next(&mut self.rx)).await {
            panic!("unexpected response: {:?}", out.map(|o| Resp::decode(encode(&o).as_slice())));
        }
    }
}

type SotwStream = Stream<MeshConfigRequest, MeshConfigResponse>;
type SourceStream = Stream<RequestResources, Resources>;
type IncrementalStream = Stream<IncrementalMeshConfigRequest, IncrementalMeshConfigResponse>;

/// (name, version) of each item, checking it is an MCP Resource whose body
/// is a VirtualService that decodes against the schema.
fn items(resources: &[Resource]) -> Vec<(String, String)> {
    let message = keelson_proto::descriptors().get_message_by_name("istio.networking.v1alpha3.VirtualService").unwrap();
    let mut out: Vec<(String, String)> = resources
        .iter()
        .map(|r| {
            let meta = r.metadata.as_ref().expect("metadata");
            let body = r.body.as_ref().expect("body");
            assert_eq!(body.type_url, VS_TYPE);
            let decoded = prost_reflect::DynamicMessage::decode(message.clone(), body.value.as_ref()).unwrap();
            assert!(decoded.get_field_by_name("hosts").is_some());
            assert_eq!(meta.name.split('/').count(), 2, "name is ns/name: {}", meta.name);
            (meta.name.clone(), meta.version.clone())
        })
        .collect();
    out.sort();
    out
}

fn names(resources: &[Resource]) -> Vec<String> {
    items(resources).into_iter().map(|(n, _)| n).collect()
}

fn version_of(resources: &[Resource], name: &str) -> String {
    items(resources).into_iter().find(|(n, _)| n == name).map(|(_, v)| v).expect("item present")
}

/// The ledger's record of `type_url` for the only client.
fn record(ledger: &keelson_hub::AckLedger, type_url: &str) -> (String, keelson_hub::ledger::TypeRecord) {
    let records = ledger.records();
    assert_eq!(records.len(), 1, "one client");
    let r = &records[0];
    assert_eq!(r.protocol, keelson_hub::ledger::Protocol::Mcp);
    (r.node.clone(), r.types.get(type_url).cloned().unwrap_or_default())
}

fn two_services() -> (Config, AdsServer, keelson_hub::AckLedger, mpsc::Receiver<keelson_sinks::xds::NackRecord>) {
    let (mut config, rx) = Config::new();
    config.upsert(vs("default", "reviews", "reviews")).upsert(vs("shop", "cart", "cart"));
    config.publish();
    let (server, ledger, nacks) = server(rx, XdsConfig::default());
    (config, server, ledger, nacks)
}

#[tokio::test]
async fn sotw_ack_is_recorded() {
    let (config, server, ledger, _nacks) = two_services();
    let mut s = SotwStream::open(&server, &MESH_CONFIG_SOTW);
    s.send(sotw(VS_TYPE, "", ""));
    let r = s.recv().await;
    assert_eq!(r.type_url, VS_TYPE, "type_url echoed");
    assert_eq!(r.version_info, config.version().to_string());
    assert_eq!(names(&r.resources), ["default/reviews", "shop/cart"]);
    let (node, t) = record(&ledger, VS_TYPE);
    assert_eq!(node, "pilot-1");
    assert_eq!((t.sent_version, t.acked_version), (Some(config.version()), None));

    s.send(sotw(VS_TYPE, &r.version_info, &r.nonce));
    wait_until("ACK recorded", || record(&ledger, VS_TYPE).1.acked_version == Some(config.version())).await;
    s.silent().await; // an ACK is no reason to resend

    // Istio 1.1+ put the collection name in type_url: served, echoed as asked.
    s.send(sotw(VS_COLLECTION, "", ""));
    let by_collection = s.recv().await;
    assert_eq!(by_collection.type_url, VS_COLLECTION);
    assert_eq!(names(&by_collection.resources), ["default/reviews", "shop/cart"]);
}

#[tokio::test]
async fn sotw_nack_is_recorded_and_that_content_not_resent() {
    let (mut config, rx) = Config::new();
    config.upsert(vs("default", "reviews", "reviews"));
    config.publish();
    let (server, ledger, mut nacks) = server(rx, XdsConfig::default());
    let mut s = SotwStream::open(&server, &MESH_CONFIG_SOTW);
    let mut first = sotw(VS_TYPE, "", "");
    // This sink is istiod revision "stable": canary objects are not its own.
    first.sink_node.as_mut().unwrap().annotations.insert("ISTIO_REVISION".into(), "stable".into());
    s.send(first);
    let r1 = s.recv().await;
    let v1 = config.version();
    s.send(MeshConfigRequest { error_detail: rpc_error("bad hosts"), ..sotw(VS_TYPE, "", &r1.nonce) });
    wait_until("NACK recorded", || record(&ledger, VS_TYPE).1.nacked_version == Some(v1)).await;
    assert_eq!(record(&ledger, VS_TYPE).1.error.as_deref(), Some("bad hosts"));
    let logged = tokio::time::timeout(WAIT, nacks.recv()).await.unwrap().unwrap();
    assert_eq!((logged.node.as_str(), logged.type_url.as_str(), logged.version), ("pilot-1", VS_TYPE, v1.to_string()));

    // The kind changes, but not what this sink gets: the NACKed content
    // would go out again, so nothing does.
    let canary = with_meta(vs("default", "canary-only", "c"), "labels", "istio.io/rev", "canary");
    config.upsert(canary);
    config.publish();
    s.silent().await;

    // New content is sent.
    config.upsert(vs("default", "reviews", "reviews.v2"));
    config.publish();
    let r2 = s.recv().await;
    assert_eq!(r2.version_info, config.version().to_string());
    assert_eq!(version_of(&r2.resources, "default/reviews"), config.version().to_string());
    assert_eq!(names(&r2.resources), ["default/reviews"], "revision filtered");
}

#[tokio::test]
async fn stale_nonce_ignored() {
    let (mut config, server, ledger, _nacks) = two_services();
    let stale = || server.shared().metrics.stale_requests.get();
    let mut s = SourceStream::open(&server, &RESOURCE_SOURCE);
    s.send(source(VS_COLLECTION, "", false));
    let r1 = s.recv().await;
    let v1 = config.version();
    assert_eq!(r1.nonce, "1", "nonces count per stream");
    let before = stale();
    s.send(source(VS_COLLECTION, "42", false));
    wait_until("stale request counted", || stale() == before + 1).await;
    assert_eq!(record(&ledger, VS_COLLECTION).1.acked_version, None, "a stale nonce is no ACK");

    // Still waiting on nonce 1: a change is held back, not sent.
    config.upsert(vs("default", "reviews", "reviews.v2"));
    config.publish();
    s.silent().await;
    s.send(source(VS_COLLECTION, &r1.nonce, false));
    let r2 = s.recv().await;
    assert_eq!(r2.nonce, "2");
    assert_eq!(version_of(&r2.resources, "default/reviews"), config.version().to_string());
    wait_until("the real ACK counts", || record(&ledger, VS_COLLECTION).1.acked_version == Some(v1)).await;
    // An answer to an older nonce, once a newer one is out, is stale too.
    s.send(source(VS_COLLECTION, &r1.nonce, false));
    wait_until("older nonce counted", || stale() == before + 2).await;
}

#[tokio::test]
async fn incremental_after_ack_sends_only_changes_and_removed_resources() {
    let (mut config, rx) = Config::new();
    for name in ["a", "b", "c"] {
        config.upsert(vs("default", name, name));
    }
    config.publish();
    let (server, _ledger, _nacks) = server(rx, XdsConfig::default());
    let mut s = SourceStream::open(&server, &RESOURCE_SOURCE);
    s.send(source(VS_COLLECTION, "", true));
    let r1 = s.recv().await;
    assert!(!r1.incremental, "nothing ACKed yet on this stream: full state");
    assert_eq!(r1.collection, VS_COLLECTION);
    assert_eq!(names(&r1.resources), ["default/a", "default/b", "default/c"]);
    let a1 = version_of(&r1.resources, "default/a");
    s.send(source(VS_COLLECTION, &r1.nonce, true));

    config.upsert(vs("default", "b", "b.v2")).delete_key(vs_key("default", "c")).upsert(vs("default", "d", "d"));
    config.publish();
    let r2 = s.recv().await;
    assert!(r2.incremental);
    assert_eq!(names(&r2.resources), ["default/b", "default/d"], "only what changed");
    assert_eq!(r2.removed_resources, ["default/c"]);
    assert_eq!(r2.system_version_info, config.version().to_string());
    s.send(source(VS_COLLECTION, &r2.nonce, true));

    config.upsert(vs("default", "a", "a.v2"));
    config.publish();
    let r3 = s.recv().await;
    assert!(r3.incremental);
    assert_eq!(names(&r3.resources), ["default/a"]);
    assert_ne!(version_of(&r3.resources, "default/a"), a1);
    assert!(r3.removed_resources.is_empty());

    // A sink that stops asking for diffs gets the full state again.
    s.send(source(VS_COLLECTION, &r3.nonce, false));
    config.upsert(vs("default", "b", "b.v3"));
    config.publish();
    let r4 = s.recv().await;
    assert!(!r4.incremental);
    assert_eq!(names(&r4.resources), ["default/a", "default/b", "default/d"]);
}

#[tokio::test]
async fn new_stream_gets_full_state_with_incremental_false() {
    let (mut config, server, _ledger, _nacks) = two_services();
    let mut first = SourceStream::open(&server, &RESOURCE_SOURCE);
    first.send(source(VS_COLLECTION, "", true));
    let r1 = first.recv().await;
    first.send(source(VS_COLLECTION, &r1.nonce, true));
    config.upsert(vs("default", "reviews", "reviews.v2"));
    config.publish();
    assert!(first.recv().await.incremental, "the first stream is on diffs");

    // A reconnecting sink says what it holds; Galley's source ignores that
    // and so does Keelson: a new stream starts from the full state.
    let mut second = SourceStream::open(&server, &RESOURCE_SOURCE);
    let mut req = source(VS_COLLECTION, "", true);
    req.initial_resource_versions = items(&r1.resources).into_iter().collect();
    second.send(req);
    let r = second.recv().await;
    assert!(!r.incremental);
    assert_eq!(r.nonce, "1", "nonces start again on a new stream");
    assert_eq!(names(&r.resources), ["default/reviews", "shop/cart"]);
}

#[tokio::test]
async fn unknown_collection_fails_with_invalid_argument() {
    let (_config, server, _ledger, _nacks) = two_services();
    for collection in ["istio/networking/v1alpha3/unknowns", VS_TYPE, "istio/mesh/v1alpha1/MeshConfig"] {
        let mut s = SourceStream::open(&server, &RESOURCE_SOURCE);
        s.send(source(collection, "", false));
        let status = s.recv_err().await;
        assert_eq!(status.code(), Code::InvalidArgument, "{collection}: {status:?}");
        assert!(status.message().contains("unsupported collection"), "{}", status.message());
    }
    // The aggregated service too, after a good type on the same stream.
    let mut s = SotwStream::open(&server, &MESH_CONFIG_SOTW);
    s.send(sotw(VS_TYPE, "", ""));
    s.recv().await;
    s.send(sotw("type.googleapis.com/istio.mesh.v1alpha1.MeshConfig", "", ""));
    assert_eq!(s.recv_err().await.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn one_outstanding_response_per_collection() {
    let (mut config, server, _ledger, _nacks) = two_services();
    let mut s = SourceStream::open(&server, &RESOURCE_SOURCE);
    s.send(source(VS_COLLECTION, "", false));
    let r1 = s.recv().await;
    config.upsert(vs("default", "reviews", "reviews.v2"));
    config.publish();
    config.upsert(vs("shop", "cart", "cart.v2"));
    config.publish();
    s.silent().await; // two changes, no ACK yet: nothing goes out

    s.send(source(VS_COLLECTION, &r1.nonce, false));
    let r2 = s.recv().await;
    assert_eq!(r2.system_version_info, config.version().to_string(), "one response, from the newest state");
    assert_eq!(version_of(&r2.resources, "shop/cart"), config.version().to_string());
    s.silent().await;

    // Each collection waits on its own answer: on the aggregated service a
    // type asked by type URL and by collection are two, and one does not
    // hold the other back.
    let mut agg = SotwStream::open(&server, &MESH_CONFIG_SOTW);
    agg.send(sotw(VS_TYPE, "", ""));
    agg.recv().await;
    agg.send(sotw(VS_COLLECTION, "", ""));
    assert_eq!(agg.recv().await.type_url, VS_COLLECTION);
}

#[tokio::test]
async fn empty_sink_node_id_accepted() {
    let (config, server, ledger, _nacks) = two_services();
    let mut s = SourceStream::open(&server, &RESOURCE_SOURCE);
    s.send(source(VS_COLLECTION, "", false)); // sink("") as Galley-era istiod
    let r = s.recv().await;
    assert_eq!(names(&r.resources), ["default/reviews", "shop/cart"]);
    s.send(source(VS_COLLECTION, &r.nonce, false));
    wait_until("ACK recorded", || record(&ledger, VS_COLLECTION).1.acked_version == Some(config.version())).await;
    assert_eq!(record(&ledger, VS_COLLECTION).0, PEER, "the peer address stands in for the id");
}

#[tokio::test]
async fn incremental_aggregated_resources_diff_from_declared_versions() {
    let (mut config, server, ledger, _nacks) = two_services();
    let reviews = config.version() - 1; // upserted first
    let mut s = IncrementalStream::open(&server, &MESH_CONFIG_INCREMENTAL);
    let declared = [("default/reviews", reviews.to_string()), ("default/gone", "3".into())];
    s.send(IncrementalMeshConfigRequest {
        sink_node: sink("pilot-2"),
        type_url: VS_TYPE.into(),
        initial_resource_versions: declared.iter().map(|(n, v)| (n.to_string(), v.clone())).collect(),
        ..Default::default()
    });
    let r1 = s.recv().await;
    assert_eq!(names(&r1.resources), ["shop/cart"], "the sink holds reviews already");
    assert_eq!(r1.removed_resources, ["default/gone"]);
    let ack = |nonce: &str| IncrementalMeshConfigRequest {
        sink_node: sink("pilot-2"),
        type_url: VS_TYPE.into(),
        response_nonce: nonce.into(),
        ..Default::default()
    };
    s.send(ack(&r1.nonce));
    let v1 = config.version();
    wait_until("ACK recorded", || record(&ledger, VS_TYPE).1.acked_version == Some(v1)).await;

    config.delete_key(vs_key("shop", "cart")).upsert(vs("default", "reviews", "reviews.v2"));
    config.publish();
    let r2 = s.recv().await;
    assert_eq!(names(&r2.resources), ["default/reviews"]);
    assert_eq!(r2.removed_resources, ["shop/cart"]);
    s.send(IncrementalMeshConfigRequest { error_detail: rpc_error("no"), ..ack(&r2.nonce) });
    wait_until("NACK recorded", || record(&ledger, VS_TYPE).1.nacked_version == Some(config.version())).await;
    s.silent().await;
}

#[tokio::test]
async fn full_state_bodies_are_built_once_for_every_sink() {
    let (mut config, server, _ledger, _nacks) = two_services();
    let stats = &server.shared().cache.stats;
    let built = || stats.bodies.load(Ordering::Relaxed);
    let before = built();
    let mut sinks: Vec<SotwStream> = (0..20).map(|_| SotwStream::open(&server, &MESH_CONFIG_SOTW)).collect();
    let mut sources: Vec<SourceStream> = (0..20).map(|_| SourceStream::open(&server, &RESOURCE_SOURCE)).collect();
    let mut answers = Vec::new();
    for s in &mut sinks {
        s.send(sotw(VS_TYPE, "", ""));
        answers.push(s.recv().await);
    }
    for s in &mut sources {
        s.send(source(VS_COLLECTION, "", false));
        s.recv().await;
    }
    assert_eq!(built() - before, 2, "one body per (service message, name, kind version, audience)");
    let bytes: Vec<Vec<u8>> =
        answers.iter().map(|r| r.resources.iter().map(Message::encode_to_vec).collect::<Vec<_>>().concat()).collect();
    assert!(bytes.windows(2).all(|w| w[0] == w[1]));

    for (s, r) in sinks.iter_mut().zip(&answers) {
        s.send(sotw(VS_TYPE, &r.version_info, &r.nonce));
    }
    config.upsert(vs("default", "reviews", "reviews.v2"));
    config.publish();
    for s in &mut sinks {
        s.recv().await;
    }
    assert_eq!(built() - before, 3, "one more body for the new version, for all 20");
}

/// A prost codec for the test's own gRPC client.
struct Prost<Req, Resp>(PhantomData<fn(Req) -> Resp>);

impl<Req: Message + Send + 'static, Resp: Message + Default + Send + 'static> tonic::codec::Codec for Prost<Req, Resp> {
    type Encode = Req;
    type Decode = Resp;
    type Encoder = Prost<Req, Resp>;
    type Decoder = Prost<Req, Resp>;
    fn encoder(&mut self) -> Self::Encoder {
        Prost(PhantomData)
    }
    fn decoder(&mut self) -> Self::Decoder {
        Prost(PhantomData)
    }
}

impl<Req: Message, Resp> tonic::codec::Encoder for Prost<Req, Resp> {
    type Item = Req;
    type Error = Status;
    fn encode(&mut self, item: Req, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst).map_err(|e| Status::internal(e.to_string()))
    }
}

impl<Req, Resp: Message + Default> tonic::codec::Decoder for Prost<Req, Resp> {
    type Item = Resp;
    type Error = Status;
    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Resp>, Status> {
        Resp::decode(src).map(Some).map_err(|e| Status::internal(e.to_string()))
    }
}

/// Opens `path` on `ch` with the first request; returns the request sender
/// and the response stream.
async fn call<Req, Resp>(
    ch: &tonic::transport::Channel,
    path: &'static str,
    first: Req,
) -> (mpsc::UnboundedSender<Req>, tonic::Streaming<Resp>)
where
    Req: Message + Send + 'static,
    Resp: Message + Default + Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    tx.send(first).unwrap();
    let mut grpc = tonic::client::Grpc::new(ch.clone());
    grpc.ready().await.unwrap();
    let requests = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
    let path = http::uri::PathAndQuery::from_static(path);
    let response = grpc.streaming(tonic::Request::new(requests), path, Prost::<Req, Resp>(PhantomData)).await;
    (tx, response.expect("stream opened").into_inner())
}

async fn first<T>(s: &mut tonic::Streaming<T>) -> T {
    tokio::time::timeout(WAIT, s.message()).await.expect("within deadline").expect("no error").expect("a message")
}

/// Over real HTTP/2 on 127.0.0.1, on the ADS port: all three services, a
/// Galley-era sink's empty id recorded as its address, and ADS still there.
#[tokio::test]
async fn legacy_services_share_the_ads_port_over_http2() {
    let (addr, mut config, shared) = serve_on_loopback(XdsConfig::default()).await;
    config.upsert(vs("default", "reviews", "reviews"));
    config.publish();
    let ch = tonic::transport::Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();

    let path = "/istio.mcp.v1alpha1.ResourceSource/EstablishResourceStream";
    let (tx, mut rs) = call::<RequestResources, Resources>(&ch, path, source(VS_COLLECTION, "", false)).await;
    let r = first(&mut rs).await;
    assert_eq!((r.collection.as_str(), names(&r.resources)), (VS_COLLECTION, vec!["default/reviews".to_string()]));
    tx.send(source(VS_COLLECTION, &r.nonce, false)).unwrap();
    wait_until("ACK over HTTP/2", || {
        shared
            .ledger
            .records()
            .iter()
            .any(|p| p.types.get(VS_COLLECTION).and_then(|t| t.acked_version) == Some(config.version()))
    })
    .await;
    let records = shared.ledger.records();
    let sink_record = records.iter().find(|p| p.types.contains_key(VS_COLLECTION)).unwrap();
    assert!(sink_record.node.starts_with("127.0.0.1:"), "peer address as id: {}", sink_record.node);
    assert_eq!(sink_record.protocol, keelson_hub::ledger::Protocol::Mcp);

    let path = "/istio.mcp.v1alpha1.AggregatedMeshConfigService/StreamAggregatedResources";
    let (_tx, mut s) = call::<MeshConfigRequest, MeshConfigResponse>(&ch, path, sotw(VS_TYPE, "", "")).await;
    assert_eq!(names(&first(&mut s).await.resources), ["default/reviews"]);

    let path = "/istio.mcp.v1alpha1.AggregatedMeshConfigService/IncrementalAggregatedResources";
    let req = IncrementalMeshConfigRequest { type_url: VS_TYPE.into(), ..Default::default() };
    let (_tx, mut inc) = call::<IncrementalMeshConfigRequest, IncrementalMeshConfigResponse>(&ch, path, req).await;
    assert_eq!(names(&first(&mut inc).await.resources), ["default/reviews"]);

    let path = "/istio.mcp.v1alpha1.ResourceSource/EstablishResourceStream";
    let (_tx, mut bad) = call::<RequestResources, Resources>(&ch, path, source("istio/x/v1/ys", "", false)).await;
    let err = tokio::time::timeout(WAIT, bad.message()).await.unwrap().expect_err("the stream fails");
    assert_eq!(err.code(), Code::InvalidArgument);

    use keelson_proto::envoy::pb::envoy::service::discovery::v3::DiscoveryRequest;
    use keelson_proto::envoy::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
    let cds = DiscoveryRequest { node: node("envoy-1", "c"), type_url: CDS.into(), ..Default::default() };
    let mut ads = AggregatedDiscoveryServiceClient::new(ch);
    // The request stream stays open after its request, as a real client's does.
    let requests = tokio_stream::StreamExt::chain(tokio_stream::iter(vec![cds]), tokio_stream::pending());
    let mut stream = ads.stream_aggregated_resources(requests).await.unwrap().into_inner();
    let r = first(&mut stream).await;
    assert_eq!(support::names(&r), ["a"]);
}
