//! The xDS server over real gRPC (tonic, HTTP/2 on 127.0.0.1): ADS, health
//! and reflection on one port, and the limits that protect it.

mod support;

use std::num::NonZeroU32;
use std::sync::Arc;

use bytes::{Buf, BufMut};
use keelson_proto::envoy::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use keelson_proto::envoy::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use keelson_sinks::xds::XdsConfig;
use support::*;
use tokio_stream::StreamExt;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Starts the server on an OS-chosen loopback port; stops with the runtime.
async fn start(cfg: XdsConfig) -> (String, Config) {
    let (addr, config, _) = serve_on_loopback(cfg).await;
    (format!("http://{addr}"), config)
}

async fn channel(url: &str) -> Channel {
    Channel::from_shared(url.to_string()).unwrap().connect().await.unwrap()
}

fn cds_request(id: &str) -> DiscoveryRequest {
    DiscoveryRequest { node: node(id, "c"), type_url: CDS.into(), ..Default::default() }
}

/// Opens a SotW stream with `requests` and returns its first message or error.
async fn first_answer(ch: Channel, requests: Vec<DiscoveryRequest>) -> Result<DiscoveryResponse, Status> {
    let mut client = AggregatedDiscoveryServiceClient::new(ch).max_decoding_message_size(64 << 20);
    let mut stream = client
        .stream_aggregated_resources(tokio_stream::iter(requests).chain(tokio_stream::pending()))
        .await?
        .into_inner();
    tokio::time::timeout(WAIT, stream.next()).await.expect("answer within deadline").expect("stream open")
}

#[tokio::test]
async fn serves_ads_health_and_reflection_on_one_port() {
    let (url, _config) = start(XdsConfig::default()).await;
    let ch = channel(&url).await;
    let r = first_answer(ch.clone(), vec![cds_request("p")]).await.unwrap();
    assert_eq!(names(&r), ["a"]);

    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    let req = tonic_health::pb::HealthCheckRequest {
        service: "envoy.service.discovery.v3.AggregatedDiscoveryService".into(),
    };
    let status = health.check(req).await.unwrap().into_inner().status;
    assert_eq!(status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);

    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut reflection = ServerReflectionClient::new(ch);
    let req = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut resp = reflection.server_reflection_info(tokio_stream::iter([req])).await.unwrap().into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.next().await.unwrap().unwrap().message_response else {
        panic!("not a service list")
    };
    let services: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(services.contains(&"envoy.service.discovery.v3.AggregatedDiscoveryService".to_string()), "{services:?}");
    assert!(services.contains(&"grpc.health.v1.Health".to_string()), "{services:?}");
}

/// Sends raw bytes as a request message: what a broken client would.
#[derive(Default)]
struct RawCodec;
struct RawEncoder;
struct RawDecoder;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

async fn raw_stream(ch: Channel, message: Vec<u8>) -> Status {
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static(
        "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources",
    );
    let requests = tokio_stream::iter([message]).chain(tokio_stream::pending());
    let mut stream = match grpc.streaming(tonic::Request::new(requests), path, RawCodec).await {
        Ok(r) => r.into_inner(),
        Err(status) => return status,
    };
    match tokio::time::timeout(WAIT, stream.next()).await.expect("answer within deadline") {
        Some(Err(status)) => status,
        other => panic!("expected the stream to fail, got {other:?}"),
    }
}

#[tokio::test]
async fn a_malformed_request_ends_that_stream_with_invalid_argument() {
    let (url, _config) = start(XdsConfig::default()).await;
    let ch = channel(&url).await;
    // Field 1 (version_info) claims 127 bytes and has 1.
    let status = raw_stream(ch.clone(), vec![0x0a, 0x7f, b'x']).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    // The process and other streams carry on.
    assert_eq!(names(&first_answer(ch, vec![cds_request("p")]).await.unwrap()), ["a"]);
}

#[tokio::test]
async fn an_oversized_request_is_refused_and_the_server_lives() {
    let cfg = XdsConfig { max_message_bytes: 1024, ..XdsConfig::default() };
    let (url, _config) = start(cfg).await;
    let ch = channel(&url).await;
    let mut big = cds_request("p");
    big.resource_names = vec!["x".repeat(4096)];
    let err = first_answer(ch.clone(), vec![big]).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert_eq!(names(&first_answer(ch, vec![cds_request("p")]).await.unwrap()), ["a"]);
}

#[tokio::test]
async fn too_many_new_streams_get_resource_exhausted() {
    let cfg = XdsConfig { new_streams_per_second: NonZeroU32::new(1), ..XdsConfig::default() };
    let (url, _config) = start(cfg).await;
    let ch = channel(&url).await;
    assert!(first_answer(ch.clone(), vec![cds_request("p1")]).await.is_ok());
    let err = first_answer(ch, vec![cds_request("p2")]).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
}

#[tokio::test]
async fn too_many_requests_on_a_stream_get_resource_exhausted() {
    let cfg = XdsConfig { requests_per_stream_per_second: NonZeroU32::new(2), ..XdsConfig::default() };
    let (url, _config) = start(cfg).await;
    let ch = channel(&url).await;
    let mut client = AggregatedDiscoveryServiceClient::new(ch);
    let flood: Vec<DiscoveryRequest> = (0..10).map(|_| cds_request("p")).collect();
    let mut stream = client
        .stream_aggregated_resources(tokio_stream::iter(flood).chain(tokio_stream::pending()))
        .await
        .unwrap()
        .into_inner();
    let end = Arc::new(tokio::sync::Mutex::new(None));
    while let Some(item) = tokio::time::timeout(WAIT, stream.next()).await.expect("within deadline") {
        if let Err(status) = item {
            *end.lock().await = Some(status);
            break;
        }
    }
    let status = end.lock().await.take().expect("the stream ended with a status");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
}

/// A proxy that stops reading keeps its HTTP/2 stream blocked on flow
/// control. Shutdown must still finish: the stream is ended and its
/// connection closed (and past the grace period the server would drop it).
#[tokio::test]
async fn shutdown_does_not_wait_forever_for_a_proxy_that_stopped_reading() {
    let (mut config, rx) = Config::new();
    // A CDS response far larger than HTTP/2's initial 64 KiB window.
    for i in 0..3000 {
        config.upsert(cluster(&format!("cluster-with-a-long-name-to-fill-the-window-{i:05}")));
    }
    config.publish();
    let (server, ledger, _nacks) = server(rx, XdsConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let grace = std::time::Duration::from_millis(500);
    let serving = tokio::spawn(keelson_sinks::xds::serve(
        listener,
        server,
        async {
            let _ = stopped.await;
        },
        grace,
    ));

    let mut client = AggregatedDiscoveryServiceClient::new(channel(&url).await);
    let requests = tokio_stream::iter([cds_request("stuck")]).chain(tokio_stream::pending());
    let _unread = client.stream_aggregated_resources(requests).await.unwrap();
    // The response is on its way (the ledger records the send) and stuck.
    let end = std::time::Instant::now() + WAIT;
    let sent = || ledger.records().first().is_some_and(|r| r.types.get(CDS).is_some_and(|t| t.sent_nonce.is_some()));
    while !sent() {
        assert!(std::time::Instant::now() < end, "the CDS response was never sent");
        tokio::task::yield_now().await;
    }
    let began = std::time::Instant::now();
    stop.send(()).unwrap();
    let served = tokio::time::timeout(grace + WAIT, serving).await.expect("serve returned despite the stuck proxy");
    assert!(served.unwrap().is_ok());
    assert!(began.elapsed() < grace + WAIT);
}

/// Issue 9, item 8, over real HTTP/2: the request stream ends right after
/// the first request; the answer still comes, then the stream ends with OK.
#[tokio::test]
async fn a_half_closed_stream_is_answered_before_it_ends() {
    let (url, _config) = start(XdsConfig::default()).await;
    let ch = channel(&url).await;
    for i in 0..40 {
        let mut client = AggregatedDiscoveryServiceClient::new(ch.clone());
        let requests = tokio_stream::iter([cds_request(&format!("p{i}"))]);
        let mut stream = client.stream_aggregated_resources(requests).await.unwrap().into_inner();
        let first = tokio::time::timeout(WAIT, stream.next()).await.expect("within deadline");
        let first = first.expect("a response before the end").expect("a response, not an error");
        assert_eq!(names(&first), ["a"], "iteration {i}");
        let end = tokio::time::timeout(WAIT, stream.next()).await.expect("within deadline");
        assert!(end.is_none(), "then the stream ends with OK: {end:?}");
    }
}

/// The codec does not decode names a request repeats from the previous one
/// of its type (crate::xds::wire::SotwRequest). A stale request (an older
/// nonce) is ignored but its names are kept: the ACK that follows repeats
/// them, undecoded, and they must still take effect.
#[tokio::test]
async fn names_first_sent_in_a_stale_request_count_when_the_ack_repeats_them() {
    let (url, mut config) = start(XdsConfig { requests_per_stream_per_second: None, ..XdsConfig::default() }).await;
    config.upsert(endpoints("a", 1)).upsert(endpoints("b", 2));
    config.publish();
    let mut client = AggregatedDiscoveryServiceClient::new(channel(&url).await);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut stream = client
        .stream_aggregated_resources(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let eds = |names: &[&str], version: &str, nonce: &str| DiscoveryRequest {
        node: node("p", "c"),
        type_url: EDS.into(),
        resource_names: names.iter().map(|n| n.to_string()).collect(),
        version_info: version.into(),
        response_nonce: nonce.into(),
        ..Default::default()
    };
    let mut next = async || tokio::time::timeout(WAIT, stream.next()).await.expect("in time").unwrap().unwrap();
    tx.send(eds(&["a"], "", "")).unwrap();
    let first = next().await;
    assert_eq!(names(&first), ["a"]);
    // A push the client has not seen yet when it asks for more names.
    config.upsert(endpoints("a", 3));
    config.publish();
    let pushed = next().await;
    assert_eq!(names(&pushed), ["a"]);
    tx.send(eds(&["a", "b"], &first.version_info, &first.nonce)).unwrap(); // stale: ignored
    tx.send(eds(&["a", "b"], &pushed.version_info, &pushed.nonce)).unwrap(); // the same names, undecoded
    let answer = next().await;
    assert_eq!(names(&answer), ["a", "b"], "the names of the stale request took effect with the ACK");
}
