//! A simulated istiod on a SotW ADS stream: MCP over xDS as istiod's config
//! client speaks it. The rules (request order, nonces, node, what is ACKed,
//! what an item must look like) and the type URLs live in `crate::istio`;
//! this is the stream around them.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime};

use keelson_proto::envoy::pb::envoy::config::core::v3::Node;
use keelson_proto::envoy::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use keelson_proto::envoy::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::{Fleet, Kind, ProxyEvent, SessionError, connect, pump, version_of};
use crate::istio;

/// When this process began: the monotonic part of Go's time string.
fn process_start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

struct TypeState {
    type_url: &'static str,
    kind: Kind,
    /// At least one response came for it on this stream.
    answered: bool,
}

struct Session<'a> {
    fleet: &'a Fleet,
    id: u32,
    tx: mpsc::UnboundedSender<DiscoveryRequest>,
    node: Node,
    types: Vec<TypeState>,
    started: Instant,
    ready: bool,
}

impl Session<'_> {
    fn on_response(&mut self, r: DiscoveryResponse) {
        self.fleet.received(r.encoded_len());
        let Some(t) = self.types.iter_mut().find(|t| t.type_url == r.type_url) else {
            // istiod's readiness looks every requested type_url up verbatim:
            // an answer under another string leaves it waiting forever.
            self.fleet.emit(ProxyEvent::Dropped {
                proxy: self.id,
                kind: None,
                count: r.resources.len().max(1),
                error: format!("a response for {:?}, which was not requested", r.type_url),
            });
            let _ = self.tx.send(istio::ack(&r, &self.node));
            return;
        };
        t.answered = true;
        let kind = t.kind;
        let reading = istio::read(kind, &r, &self.fleet.revision, &self.fleet.checked);
        if let Some(first) = reading.dropped.first() {
            self.fleet.emit(ProxyEvent::Dropped {
                proxy: self.id,
                kind: Some(kind),
                count: reading.dropped.len(),
                error: first.to_string(),
            });
        }
        if reading.ack {
            let _ = self.tx.send(istio::ack(&r, &self.node));
            let (version, hash) = version_of(&r.version_info);
            self.fleet.emit(ProxyEvent::Ack { proxy: self.id, kind, version, hash, at: Instant::now() });
        }
        // Ready once every requested type has been answered (adsc's
        // HasSynced, which istiod's start waits on; MeshConfig counts too
        // here: the hub must answer every type it is asked for).
        if !self.ready && self.types.iter().all(|t| t.answered) {
            self.ready = true;
            let at = Instant::now();
            self.fleet.emit(ProxyEvent::Synced { proxy: self.id, at, took: at - self.started });
        }
    }
}

pub async fn session(fleet: &Fleet, id: u32) -> Result<(), SessionError> {
    let started = Instant::now();
    let channel = connect(fleet).await?;
    // adsc's receive limit is MaxInt32: full-state responses of 10,000s of items are large.
    let mut client = AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(usize::MAX);
    let (tx, rx) = mpsc::unbounded_channel();
    let node = istio::node(id, &fleet.revision);
    let nonce = istio::go_time_string(SystemTime::now(), process_start().elapsed());
    for request in istio::initial_requests(fleet.istio, &node, &nonce) {
        let _ = tx.send(request);
    }
    let types = fleet.istio.requested().map(|(type_url, kind)| TypeState { type_url, kind, answered: false }).collect();
    let mut s = Session { fleet, id, tx, node, types, started, ready: false };
    let stream = client.stream_aggregated_resources(UnboundedReceiverStream::new(rx)).await?.into_inner();
    pump(fleet, id, stream, |r| s.on_response(r)).await
}
