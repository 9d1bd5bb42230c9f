//! The gRPC server: ADS (SotW and Delta), gRPC health and reflection on one
//! port, with limits on new streams, request rates and message sizes.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use keelson_hub::{AckLedger, Snapshot};
use keelson_proto::envoy::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::cache::ResponseCache;
use super::delta::DeltaMachine;
use super::metrics::{StreamLabel, XdsMetrics};
use super::session::{GroupKey, NackRecord, Session, Shared};
use super::sotw::SotwMachine;
use super::stream::{Machine, ResponseStream, StreamLimits, drive};
use crate::xds::generated::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};

/// Settings of the xDS server (`[xds]` in keelson.toml).
#[derive(Clone, Debug)]
pub struct XdsConfig {
    pub group_key: GroupKey,
    /// New streams accepted per second, over all clients (burst as many).
    pub new_streams_per_second: Option<NonZeroU32>,
    pub requests_per_stream_per_second: Option<NonZeroU32>,
    /// Largest request or response message, bytes.
    pub max_message_bytes: usize,
}

impl Default for XdsConfig {
    fn default() -> Self {
        XdsConfig {
            group_key: GroupKey::Cluster,
            new_streams_per_second: NonZeroU32::new(2_000),
            requests_per_stream_per_second: NonZeroU32::new(100),
            max_message_bytes: 64 << 20,
        }
    }
}

/// The ADS service; cheap to clone.
#[derive(Clone)]
pub struct AdsServer {
    shared: Arc<Shared>,
    snapshots: watch::Receiver<Option<Arc<Snapshot>>>,
    new_streams: Option<Arc<DefaultDirectRateLimiter>>,
    limits: StreamLimits,
    max_message_bytes: usize,
}

impl AdsServer {
    /// Builds the service. NACKs flow out through the returned receiver
    /// (the caller appends them to the event log).
    pub fn new(
        cfg: &XdsConfig,
        snapshots: watch::Receiver<Option<Arc<Snapshot>>>,
        ledger: AckLedger,
        metrics: XdsMetrics,
    ) -> (Self, mpsc::Receiver<NackRecord>) {
        let (nacks, nack_rx) = mpsc::channel(1024);
        let shared = Arc::new(Shared {
            ledger,
            metrics,
            cache: ResponseCache::default(),
            group_key: cfg.group_key.clone(),
            nacks,
            closing: watch::channel(false).0,
        });
        let server = AdsServer {
            shared,
            snapshots,
            new_streams: cfg.new_streams_per_second.map(|n| Arc::new(RateLimiter::direct(Quota::per_second(n)))),
            limits: StreamLimits { requests_per_second: cfg.requests_per_stream_per_second },
            max_message_bytes: cfg.max_message_bytes,
        };
        (server, nack_rx)
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    fn admit(&self) -> Result<(), Status> {
        if let Some(l) = &self.new_streams
            && l.check().is_err()
        {
            self.shared.metrics.reject("new_stream_rate");
            return Err(Status::resource_exhausted("too many new xDS streams per second; retry with backoff"));
        }
        Ok(())
    }

    /// Starts a stream's machine on its own task and returns its responses.
    pub fn open<M: Machine + 'static>(
        &self,
        machine: M,
        protocol: &'static str,
        requests: impl tokio_stream::Stream<Item = Result<M::Request, Status>> + Unpin + Send + 'static,
    ) -> ResponseStream {
        // One slot: a response waits here only while the connection is busy;
        // newer snapshots replace what the machine would send next.
        let (tx, rx) = mpsc::channel(1);
        let (shared, snapshots, limits) = (self.shared.clone(), self.snapshots.clone(), self.limits);
        tokio::spawn(async move {
            let gauge = shared.metrics.streams.get_or_create(&StreamLabel { protocol: protocol.into() }).clone();
            gauge.inc();
            drive(machine, shared, snapshots, requests, tx, limits).await;
            gauge.dec();
        });
        ResponseStream(rx)
    }

    /// The tonic service with Keelson's size limits applied.
    pub fn into_service(self) -> AggregatedDiscoveryServiceServer<AdsServer> {
        let max = self.max_message_bytes;
        AggregatedDiscoveryServiceServer::new(self).max_decoding_message_size(max).max_encoding_message_size(max)
    }
}

fn remote(req: &Request<impl Sized>) -> String {
    req.remote_addr().map(|a| a.to_string()).unwrap_or_default()
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsServer {
    type StreamAggregatedResourcesStream = ResponseStream;
    type DeltaAggregatedResourcesStream = ResponseStream;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        self.admit()?;
        let machine = SotwMachine::new(Session::new("sotw", remote(&request)));
        Ok(Response::new(self.open(machine, "sotw", request.into_inner())))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        self.admit()?;
        let machine = DeltaMachine::new(Session::new("delta", remote(&request)));
        Ok(Response::new(self.open(machine, "delta", request.into_inner())))
    }
}

/// How long a shutdown waits for connections to close by themselves.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves ADS, health and reflection on `listener` until `shutdown`.
///
/// On shutdown every stream ends with UNAVAILABLE and connections get
/// `grace` to close. A proxy that stopped reading can keep its connection
/// open forever; after `grace` the remaining connections are dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    ads: AdsServer,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    grace: std::time::Duration,
) -> Result<(), tonic::transport::Error> {
    let shared = ads.shared.clone();
    let mut closing = shared.closing.subscribe();
    let shutdown = async move {
        shutdown.await;
        // End every open stream (UNAVAILABLE: clients reconnect elsewhere),
        // so the graceful shutdown below can finish.
        shared.closing.send_replace(true);
    };
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<AggregatedDiscoveryServiceServer<AdsServer>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(keelson_proto::envoy_descriptor_set())
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("descriptor sets built at compile time are valid");
    let server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(ads.into_service())
        .serve_with_incoming_shutdown(accept_loop(listener), shutdown);
    tokio::select! {
        served = server => served,
        _ = async {
            let _ = closing.wait_for(|c| *c).await;
            tokio::time::sleep(grace).await;
        } => {
            tracing::warn!("xDS connections still open {grace:?} after shutdown began; dropping them");
            Ok(())
        }
    }
}

/// Accepted connections. An accept error (EMFILE when the file limit is
/// reached, a connection reset before accept) is logged and retried after a
/// pause; fed to tonic directly, it would end the whole server.
fn accept_loop(listener: tokio::net::TcpListener) -> ReceiverStream<std::io::Result<tokio::net::TcpStream>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = tx.closed() => return,
            };
            match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    if tx.send(Ok(stream)).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!("xDS accept failed (retrying in 100 ms): {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    });
    ReceiverStream::new(rx)
}

/// The address a bound listener got (for logs and tests).
pub fn local_addr(listener: &tokio::net::TcpListener) -> std::io::Result<SocketAddr> {
    listener.local_addr()
}
