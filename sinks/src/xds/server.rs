//! The gRPC server: ADS (SotW and Delta), legacy Galley MCP, gRPC health and
//! reflection on one port, with limits on new streams, request rates and message sizes.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use keelson_hub::{AckLedger, Snapshot};
use keelson_proto::envoy::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status, Streaming};

use super::cache::ResponseCache;
use super::conn::{ConnInfo, ConnLimits, accept_loop, default_max_connections};
use super::delta::DeltaMachine;
use super::legacy::{LegacyMachine, MESH_CONFIG_INCREMENTAL, MESH_CONFIG_SOTW, RESOURCE_SOURCE};
use super::metrics::{StreamLabel, XdsMetrics};
use super::nack::{NackGate, NackLimits};
use super::session::{GroupKey, MeshConfigItem, NackRecord, Session, Shared};
use super::sotw::SotwMachine;
use super::stream::{Machine, ResponseStream, StreamLimits, drive};
use super::wire::SotwRequest;
use crate::xds::generated::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use crate::xds::generated::aggregated_mesh_config_service_server::{
    AggregatedMeshConfigService, AggregatedMeshConfigServiceServer,
};
use crate::xds::generated::resource_source_server::{ResourceSource, ResourceSourceServer};
use keelson_proto::mcp::{IncrementalMeshConfigRequest, MeshConfigRequest, RequestResources};

/// Settings of the xDS server (`[xds]` in keelson.toml).
#[derive(Clone, Debug)]
pub struct XdsConfig {
    pub group_key: GroupKey,
    /// New streams accepted per second, over all clients (burst as many).
    pub new_streams_per_second: Option<NonZeroU32>,
    pub requests_per_stream_per_second: Option<NonZeroU32>,
    /// Largest request or response message, bytes.
    pub max_message_bytes: usize,
    /// Which NACKs reach the log, and how often (nack.rs).
    pub nack_limits: NackLimits,
    /// Open connections at most; None = the open-file limit minus
    /// headroom, read when the server starts (conn.rs).
    pub max_connections: Option<usize>,
    /// A connection that opens no stream within this is closed.
    pub handshake_timeout: Duration,
    /// HTTP/2 PING interval, and how long an answer may take before the
    /// connection is dropped as dead.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// What MCP clients get under `core/v1alpha1/MeshConfig` (`[mcp]
    /// mesh_config`; all defaults if none).
    pub mesh_config: MeshConfigItem,
}

impl Default for XdsConfig {
    fn default() -> Self {
        XdsConfig {
            group_key: GroupKey::Cluster,
            new_streams_per_second: NonZeroU32::new(2_000),
            requests_per_stream_per_second: NonZeroU32::new(100),
            max_message_bytes: 64 << 20,
            nack_limits: NackLimits::default(),
            max_connections: None,
            handshake_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            mesh_config: MeshConfigItem::new(&[]),
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
    conn: ConnLimits,
    keepalive: (Duration, Duration),
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
            nack_gate: NackGate::new(cfg.nack_limits),
            mesh_config: cfg.mesh_config.clone(),
            closing: watch::channel(false).0,
        });
        let server = AdsServer {
            shared,
            snapshots,
            new_streams: cfg.new_streams_per_second.map(|n| Arc::new(RateLimiter::direct(Quota::per_second(n)))),
            limits: StreamLimits { requests_per_second: cfg.requests_per_stream_per_second },
            max_message_bytes: cfg.max_message_bytes,
            conn: ConnLimits {
                max_connections: cfg.max_connections.unwrap_or_else(default_max_connections),
                handshake_timeout: cfg.handshake_timeout,
            },
            keepalive: (cfg.keepalive_interval, cfg.keepalive_timeout),
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

    /// Legacy Galley MCP's aggregated service, same limits.
    pub fn mesh_config_service(&self) -> AggregatedMeshConfigServiceServer<AdsServer> {
        let max = self.max_message_bytes;
        AggregatedMeshConfigServiceServer::new(self.clone())
            .max_decoding_message_size(max)
            .max_encoding_message_size(max)
    }

    /// Legacy Galley MCP's `ResourceSource`, same limits.
    pub fn resource_source_service(&self) -> ResourceSourceServer<AdsServer> {
        let max = self.max_message_bytes;
        ResourceSourceServer::new(self.clone()).max_decoding_message_size(max).max_encoding_message_size(max)
    }

    /// Opens a legacy MCP stream of `flavor` on `requests`.
    fn open_legacy<R>(
        &self,
        flavor: &'static super::legacy::Flavor,
        request: Request<Streaming<R>>,
    ) -> Result<Response<ResponseStream>, Status>
    where
        R: Into<super::legacy::LegacyRequest> + Send + 'static,
    {
        self.admit()?;
        let machine = LegacyMachine::<R>::new(Session::new(flavor.stream, remote(&request)), flavor);
        Ok(Response::new(self.open(machine, flavor.stream, request.into_inner())))
    }
}

#[tonic::async_trait]
impl AggregatedMeshConfigService for AdsServer {
    type StreamAggregatedResourcesStream = ResponseStream;
    type IncrementalAggregatedResourcesStream = ResponseStream;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<MeshConfigRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        self.open_legacy(&MESH_CONFIG_SOTW, request)
    }

    async fn incremental_aggregated_resources(
        &self,
        request: Request<Streaming<IncrementalMeshConfigRequest>>,
    ) -> Result<Response<Self::IncrementalAggregatedResourcesStream>, Status> {
        self.open_legacy(&MESH_CONFIG_INCREMENTAL, request)
    }
}

#[tonic::async_trait]
impl ResourceSource for AdsServer {
    type EstablishResourceStreamStream = ResponseStream;

    async fn establish_resource_stream(
        &self,
        request: Request<Streaming<RequestResources>>,
    ) -> Result<Response<Self::EstablishResourceStreamStream>, Status> {
        self.open_legacy(&RESOURCE_SOURCE, request)
    }
}

fn remote(req: &Request<impl Sized>) -> String {
    req.extensions().get::<ConnInfo>().and_then(|c| c.remote).map(|a| a.to_string()).unwrap_or_default()
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsServer {
    type StreamAggregatedResourcesStream = ResponseStream;
    type DeltaAggregatedResourcesStream = ResponseStream;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<SotwRequest>>,
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
    let (conn_limits, (keepalive_interval, keepalive_timeout)) = (ads.conn, ads.keepalive);
    tracing::info!(max_connections = conn_limits.max_connections, "xDS connection cap");
    let incoming = accept_loop(listener, conn_limits, shared.metrics.clone());
    let mut closing = shared.closing.subscribe();
    let shutdown = async move {
        shutdown.await;
        // End every open stream (UNAVAILABLE: clients reconnect elsewhere),
        // so the graceful shutdown below can finish.
        shared.closing.send_replace(true);
    };
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<AggregatedDiscoveryServiceServer<AdsServer>>().await;
    health.set_serving::<AggregatedMeshConfigServiceServer<AdsServer>>().await;
    health.set_serving::<ResourceSourceServer<AdsServer>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(keelson_proto::descriptor_set())
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("descriptor sets built at compile time are valid");
    let server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(keepalive_interval))
        .http2_keepalive_timeout(Some(keepalive_timeout))
        // Any request, on any service, lifts its connection's handshake deadline.
        .layer(tonic::service::InterceptorLayer::new(|req: Request<()>| {
            if let Some(conn) = req.extensions().get::<ConnInfo>() {
                conn.stream_opened();
            }
            Ok(req)
        }))
        .add_service(health_service)
        .add_service(reflection)
        // Legacy Galley MCP on the same port (docs/mcp-legacy.md).
        .add_service(ads.mesh_config_service())
        .add_service(ads.resource_source_service())
        .add_service(ads.into_service())
        .serve_with_incoming_shutdown(incoming, shutdown);
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

/// The address a bound listener got (for logs and tests).
pub fn local_addr(listener: &tokio::net::TcpListener) -> std::io::Result<SocketAddr> {
    listener.local_addr()
}
