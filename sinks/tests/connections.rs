//! Issue 9, item 9: connections that never speak are closed, a healthy idle
//! stream is not, and a connection cap holds below the file limit. Real
//! TCP on 127.0.0.1.

mod support;

use std::sync::Arc;
use std::time::Duration;

use keelson_proto::envoy::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use keelson_proto::envoy::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use keelson_sinks::xds::XdsConfig;
use keelson_sinks::xds::session::Shared;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_stream::StreamExt;

/// The client half of an HTTP/2 handshake: the preface and empty SETTINGS.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

async fn start(cfg: XdsConfig) -> (std::net::SocketAddr, Config, Arc<Shared>) {
    serve_on_loopback(cfg).await
}

/// Reads until the server closes the connection (EOF or reset).
async fn closed_by_server(mut tcp: TcpStream) {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(WAIT, async {
        while let Ok(n) = tcp.read(&mut buf).await
            && n > 0
        {}
    })
    .await
    .expect("the server closed the connection within the deadline");
}

/// Still open: reading finds no EOF (the server may have sent SETTINGS).
fn still_open(tcp: &TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    for _ in 0..16 {
        match tcp.try_read(&mut buf) {
            Ok(0) => return false,
            Ok(_) => continue,
            Err(e) => return e.kind() == std::io::ErrorKind::WouldBlock,
        }
    }
    true
}

fn cds_request(id: &str) -> DiscoveryRequest {
    DiscoveryRequest { node: node(id, "c"), type_url: CDS.into(), ..Default::default() }
}

async fn open_stream(
    addr: std::net::SocketAddr,
    id: &str,
) -> Result<tonic::Streaming<DiscoveryResponse>, Box<dyn std::error::Error>> {
    let ch = tonic::transport::Channel::from_shared(format!("http://{addr}"))?.connect().await?;
    let mut client = AggregatedDiscoveryServiceClient::new(ch);
    let requests = tokio_stream::iter([cds_request(id)]).chain(tokio_stream::pending());
    Ok(client.stream_aggregated_resources(requests).await?.into_inner())
}

async fn next(stream: &mut tonic::Streaming<DiscoveryResponse>) -> DiscoveryResponse {
    tokio::time::timeout(WAIT, stream.next()).await.expect("within deadline").expect("open").expect("a response")
}

#[tokio::test]
async fn silent_and_preface_only_connections_are_closed() {
    let cfg = XdsConfig { handshake_timeout: Duration::from_millis(500), ..XdsConfig::default() };
    let (addr, _config, shared) = start(cfg).await;
    let mut conns = Vec::new();
    for i in 0..40 {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        if i % 2 == 1 {
            tcp.write_all(PREFACE).await.unwrap();
        }
        conns.push(tcp);
    }
    // Keepalive (30 s by default) cannot be what closes them within WAIT.
    for tcp in conns {
        closed_by_server(tcp).await;
    }
    assert_eq!(shared.metrics.connections_timed_out.get(), 40);
}

#[tokio::test]
async fn a_healthy_idle_stream_outlives_the_handshake_timeout_and_gets_pushes() {
    let cfg = XdsConfig {
        handshake_timeout: Duration::from_millis(200),
        keepalive_interval: Duration::from_millis(100),
        keepalive_timeout: Duration::from_secs(2),
        ..XdsConfig::default()
    };
    let (addr, mut config, shared) = start(cfg).await;
    let mut stream = open_stream(addr, "idle").await.unwrap();
    assert_eq!(names(&next(&mut stream).await), ["a"]);
    let peer = shared.ledger.records()[0].peer.clone();
    assert!(peer.starts_with("127.0.0.1:"), "the ledger still knows the peer: {peer:?}");
    // Idle for several handshake timeouts and keepalive rounds: there is
    // no event to wait for, the point is that nothing happens.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    config.upsert(cluster("b"));
    config.publish();
    assert_eq!(names(&next(&mut stream).await), ["a", "b"]);
    assert_eq!(shared.metrics.connections_timed_out.get(), 0);
}

#[tokio::test]
async fn connections_over_the_cap_are_refused_and_counted() {
    let cfg = XdsConfig { max_connections: Some(5), ..XdsConfig::default() };
    let (addr, _config, shared) = start(cfg).await;
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    for _ in 0..3 {
        closed_by_server(TcpStream::connect(addr).await.unwrap()).await;
    }
    wait_until("3 refusals counted", || shared.metrics.connections_refused.get() == 3).await;
    assert!(held.iter().all(still_open), "connections under the cap stay open");
    // A slot frees when a connection closes; a proxy then gets in.
    drop(held.pop());
    let end = std::time::Instant::now() + WAIT;
    let mut stream = loop {
        match open_stream(addr, "p").await {
            Ok(s) => break s,
            Err(e) => assert!(std::time::Instant::now() < end, "no slot freed: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(names(&next(&mut stream).await), ["a"]);
}

/// Forwards one connection to `upstream` until `freeze`; then stops reading
/// and writing both sides but keeps them open: a peer that died without a
/// FIN (power loss, a dropped route). Returns the frozen sockets.
async fn freezing_proxy(
    upstream: std::net::SocketAddr,
    freeze: tokio::sync::oneshot::Receiver<()>,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<(TcpStream, TcpStream)>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (mut client, _) = listener.accept().await.unwrap();
        let mut server = TcpStream::connect(upstream).await.unwrap();
        let (mut up, mut down) = ([0u8; 16384], [0u8; 16384]);
        tokio::pin!(freeze);
        loop {
            tokio::select! {
                _ = &mut freeze => return (client, server),
                n = client.read(&mut up) => match n {
                    Ok(n) if n > 0 => server.write_all(&up[..n]).await.unwrap(),
                    _ => return (client, server),
                },
                n = server.read(&mut down) => match n {
                    Ok(n) if n > 0 => client.write_all(&down[..n]).await.unwrap(),
                    _ => return (client, server),
                },
            }
        }
    });
    (addr, task)
}

#[tokio::test]
async fn a_dead_peer_is_dropped_by_keepalive() {
    let cfg = XdsConfig {
        keepalive_interval: Duration::from_millis(100),
        keepalive_timeout: Duration::from_millis(300),
        ..XdsConfig::default()
    };
    let (addr, _config, shared) = start(cfg).await;
    let (freeze, frozen) = tokio::sync::oneshot::channel();
    let (proxy, proxying) = freezing_proxy(addr, frozen).await;
    let mut stream = open_stream(proxy, "doomed").await.unwrap();
    assert_eq!(names(&next(&mut stream).await), ["a"]);
    freeze.send(()).unwrap();
    let (_client_side, server_side) = proxying.await.unwrap();
    // Nobody answers the server's PINGs now; it must close the connection
    // (the default 30 s + 10 s would not fit in the deadline).
    closed_by_server(server_side).await;
    wait_until("the stream's ledger record is gone", || shared.ledger.is_empty()).await;
}
