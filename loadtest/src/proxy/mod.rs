//! Simulated Envoys: each one its own HTTP/2 connection and node identity,
//! behaving as Envoy does on ADS — wildcard CDS and LDS, EDS and RDS by the
//! names those return, ACK after decoding, NACK on policy, reconnect with
//! backoff. The type URLs are data (`Kind`), shared by SotW and Delta.

mod decode;
mod delta;
mod mcp;
mod sotw;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use keelson_proto::envoy::pb::envoy::config::core::v3::{Locality, Node};
use tokio::sync::{mpsc, watch};

pub use decode::decode;

use crate::istio::{CheckedItems, IstioVersion};

/// The types a simulated client subscribes to: the four Envoy ones, in
/// Envoy's order, then MeshConfig and the Istio kinds an istiod requests.
/// Istio kinds have one type URL per Istio version (`istio::IstioVersion`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Kind {
    Cds = 0,
    Eds = 1,
    Lds = 2,
    Rds = 3,
    MeshConfig = 4,
    VirtualService = 5,
    DestinationRule = 6,
    Gateway = 7,
    ServiceEntry = 8,
    Sidecar = 9,
    WorkloadEntry = 10,
    WorkloadGroup = 11,
    EnvoyFilter = 12,
    ProxyConfig = 13,
    AuthorizationPolicy = 14,
    PeerAuthentication = 15,
    RequestAuthentication = 16,
    Telemetry = 17,
    WasmPlugin = 18,
}

impl Kind {
    /// How many kinds there are (per-proxy tables hold one slot each).
    pub const COUNT: usize = 19;
    /// What a simulated Envoy subscribes to.
    pub const ENVOY: [Kind; 4] = [Kind::Cds, Kind::Eds, Kind::Lds, Kind::Rds];
    const SHORT: [&'static str; Kind::COUNT] = [
        "CDS",
        "EDS",
        "LDS",
        "RDS",
        "MeshConfig",
        "VirtualService",
        "DestinationRule",
        "Gateway",
        "ServiceEntry",
        "Sidecar",
        "WorkloadEntry",
        "WorkloadGroup",
        "EnvoyFilter",
        "ProxyConfig",
        "AuthorizationPolicy",
        "PeerAuthentication",
        "RequestAuthentication",
        "Telemetry",
        "WasmPlugin",
    ];

    /// The type URL of an Envoy kind (MCP kinds: `IstioVersion::type_url`).
    pub fn type_url(self) -> &'static str {
        match self {
            Kind::Cds => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            Kind::Eds => "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
            Kind::Lds => "type.googleapis.com/envoy.config.listener.v3.Listener",
            Kind::Rds => "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
            _ => "",
        }
    }

    /// The Envoy kind of a type URL.
    pub fn of(type_url: &str) -> Option<Kind> {
        Kind::ENVOY.into_iter().find(|k| k.type_url() == type_url)
    }

    /// The type that names this one's resources (EDS from CDS, RDS from LDS).
    pub fn child(self) -> Option<Kind> {
        match self {
            Kind::Cds => Some(Kind::Eds),
            Kind::Lds => Some(Kind::Rds),
            _ => None,
        }
    }

    pub fn short(self) -> &'static str {
        Kind::SHORT[self as usize]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Sotw,
    Delta,
    /// Simulated istiods: MCP over xDS on a SotW stream (`--istio-version`).
    Mcp,
}

/// What a proxy reports to the measurement.
#[derive(Clone, Debug)]
pub enum ProxyEvent {
    /// An ACK of `version` (a log seq for Keelson; `hash` identifies any
    /// server's version string, for peer mode).
    Ack {
        proxy: u32,
        kind: Kind,
        version: Option<u64>,
        hash: u64,
        at: Instant,
    },
    Nack {
        proxy: u32,
        kind: Kind,
    },
    /// Every subscribed type was ACKed at least once on this connection
    /// (for an istiod: every requested type answered, its readiness).
    /// `took`: since the session began connecting.
    Synced {
        proxy: u32,
        at: Instant,
        took: Duration,
    },
    /// Items of one response the client could not use (what istiod drops
    /// and logs): `count` of them, the first one's reason.
    Dropped {
        proxy: u32,
        kind: Option<Kind>,
        count: usize,
        error: String,
    },
    Connected {
        proxy: u32,
    },
    Disconnected {
        proxy: u32,
        error: String,
    },
}

/// When a simulated proxy rejects a response.
#[derive(Clone, Debug, Default)]
pub struct NackPolicy {
    /// Probability of NACKing any response.
    pub rate: f64,
    /// NACK responses holding a resource whose name contains this.
    pub pattern: Option<String>,
}

impl NackPolicy {
    fn rejects(&self, names: &[String]) -> bool {
        self.pattern.as_ref().is_some_and(|p| names.iter().any(|n| n.contains(p.as_str())))
            || (self.rate > 0.0 && fastrand::f64() < self.rate)
    }
}

/// Everything the proxies share.
pub struct Fleet {
    pub target: String,
    pub mode: Mode,
    pub cluster: String,
    /// Node metadata `NAMESPACE`, if set (Sidecar scoping).
    pub namespace: Option<String>,
    pub nack: NackPolicy,
    pub events: mpsc::UnboundedSender<ProxyEvent>,
    pub stop: watch::Receiver<bool>,
    pub bytes_received: AtomicU64,
    /// `--mode mcp`: the Istio version the simulated istiods are, and their
    /// `ISTIO_REVISION`.
    pub istio: IstioVersion,
    pub revision: String,
    /// Item encodings the istiods already decoded and found good.
    pub checked: CheckedItems,
}

impl Fleet {
    pub fn node(&self, id: u32) -> Node {
        Node {
            id: format!("loadtest-{id}"),
            cluster: self.cluster.clone(),
            locality: Some(Locality { region: "lt".into(), zone: format!("z{}", id % 3), sub_zone: String::new() }),
            user_agent_name: "keelson-loadtest".into(),
            metadata: self.namespace.as_ref().map(|ns| crate::istio::metadata(&[("NAMESPACE", ns)])),
            ..Node::default()
        }
    }

    fn emit(&self, e: ProxyEvent) {
        let _ = self.events.send(e);
    }

    fn received(&self, bytes: usize) {
        self.bytes_received.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

/// Version string → (the seq it names for Keelson, a hash for any server).
fn version_of(s: &str) -> (Option<u64>, u64) {
    (s.parse().ok(), xxhash(s.as_bytes()))
}

fn xxhash(b: &[u8]) -> u64 {
    // FNV-1a: version strings are short; no need for a dependency.
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| (h ^ u64::from(x)).wrapping_mul(0x100_0000_01b3))
}

/// Runs one simulated Envoy until the fleet stops, reconnecting with
/// exponential backoff (100 ms … 5 s, jittered) like Envoy's ADS client.
pub async fn run(fleet: Arc<Fleet>, id: u32) {
    let mut backoff = Duration::from_millis(100);
    let mut stop = fleet.stop.clone();
    loop {
        if *stop.borrow() {
            return;
        }
        let started = Instant::now();
        let result = match fleet.mode {
            Mode::Sotw => sotw::session(&fleet, id).await,
            Mode::Delta => delta::session(&fleet, id).await,
            Mode::Mcp => mcp::session(&fleet, id).await,
        };
        match result {
            Ok(()) => return, // stopped
            Err(e) => fleet.emit(ProxyEvent::Disconnected { proxy: id, error: e.to_string() }),
        }
        if started.elapsed() > Duration::from_secs(10) {
            backoff = Duration::from_millis(100);
        }
        let jitter = backoff.mul_f64(0.5 + fastrand::f64());
        tokio::select! {
            _ = tokio::time::sleep(jitter) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Errors that end a session (and cause a reconnect).
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("connect: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("stream: {0}")]
    Stream(#[from] tonic::Status),
    #[error("server ended the stream")]
    Ended,
}

/// Once per connection: the proxy has ACKed every type it subscribed to
/// (EDS and RDS count only when CDS and LDS named something).
struct SyncWatch {
    acked: [bool; 4],
    reported: bool,
    started: Instant,
}

impl SyncWatch {
    /// `started`: when the session began connecting.
    fn new(started: Instant) -> Self {
        SyncWatch { acked: [false; 4], reported: false, started }
    }

    /// Records an ACK of `kind`; emits `Synced` the first time all are in.
    /// `child_empty(k)`: no names subscribed for EDS/RDS kind `k`.
    fn acked(&mut self, kind: Kind, fleet: &Fleet, id: u32, child_empty: impl Fn(Kind) -> bool) {
        self.acked[kind as usize] = true;
        let done = |k: Kind| self.acked[k as usize] || (k.child().is_none() && child_empty(k));
        if !self.reported && Kind::ENVOY.into_iter().all(done) {
            self.reported = true;
            let at = Instant::now();
            fleet.emit(ProxyEvent::Synced { proxy: id, at, took: at - self.started });
        }
    }
}

/// Feeds a stream's responses to `on` until the fleet stops or the stream ends.
async fn pump<R>(
    fleet: &Fleet,
    id: u32,
    mut stream: tonic::Streaming<R>,
    mut on: impl FnMut(R),
) -> Result<(), SessionError> {
    fleet.emit(ProxyEvent::Connected { proxy: id });
    let mut stop = fleet.stop.clone();
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return Ok(()),
            msg = stream.message() => match msg? {
                Some(r) => on(r),
                None => return Err(SessionError::Ended),
            },
        }
    }
}

async fn connect(fleet: &Fleet) -> Result<tonic::transport::Channel, SessionError> {
    // One Endpoint per proxy: each simulated Envoy has its own connection.
    // Flow-control windows grow with the measured bandwidth-delay product,
    // as grpc-go's BDP estimation does for istiod (and Envoy's large default
    // windows do for Envoy): a fixed 2 MiB stream window would make every
    // multi-megabyte SotW response wait on WINDOW_UPDATE round trips that no
    // real client waits on.
    let ch = tonic::transport::Endpoint::from_shared(fleet.target.clone())
        .map_err(SessionError::Connect)?
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .http2_adaptive_window(true)
        .connect()
        .await?;
    Ok(ch)
}
