//! A simulated Envoy on a SotW ADS stream.

use std::collections::BTreeSet;
use std::time::Instant;

use keelson_proto::envoy::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use keelson_proto::envoy::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use keelson_proto::envoy::pb::google::rpc::Status as RpcStatus;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::{Fleet, Kind, ProxyEvent, SessionError, SyncWatch, connect, decode, pump, version_of};

#[derive(Default)]
struct TypeState {
    acked_version: String,
    nonce: String,
    /// Names subscribed (EDS, RDS); CDS and LDS are wildcards.
    names: BTreeSet<String>,
    acked_once: bool,
}

struct Session<'a> {
    fleet: &'a Fleet,
    id: u32,
    tx: mpsc::UnboundedSender<DiscoveryRequest>,
    types: [TypeState; 4],
    first: bool,
    sync: SyncWatch,
}

impl Session<'_> {
    fn request(&mut self, kind: Kind, error: Option<String>) {
        let t = &self.types[kind as usize];
        let req = DiscoveryRequest {
            // Envoy sends the node on the first request of a stream only.
            node: std::mem::take(&mut self.first).then(|| self.fleet.node(self.id)),
            type_url: kind.type_url().into(),
            version_info: t.acked_version.clone(),
            resource_names: t.names.iter().cloned().collect(),
            response_nonce: t.nonce.clone(),
            error_detail: error.map(|message| RpcStatus { code: 13, message, details: vec![] }),
            ..Default::default()
        };
        let _ = self.tx.send(req);
    }

    fn on_response(&mut self, r: DiscoveryResponse) {
        self.fleet.received(r.encoded_len());
        let Some(kind) = Kind::of(&r.type_url) else { return };
        let mut names = Vec::with_capacity(r.resources.len());
        let mut refs = BTreeSet::new();
        let mut error = None;
        for any in &r.resources {
            match decode(kind, &any.value) {
                Ok(d) => {
                    names.push(d.name);
                    refs.extend(d.refs);
                }
                Err(e) => error = Some(format!("cannot decode a {}: {e}", kind.short())),
            }
        }
        if error.is_none() && self.fleet.nack.rejects(&names) {
            error = Some(format!("loadtest NACK policy rejected {}", names.join(",")));
        }
        self.types[kind as usize].nonce = r.nonce;
        if let Some(e) = error {
            self.fleet.emit(ProxyEvent::Nack { proxy: self.id, kind });
            self.request(kind, Some(e));
            return;
        }
        let (version, hash) = version_of(&r.version_info);
        let t = &mut self.types[kind as usize];
        t.acked_version = r.version_info;
        t.acked_once = true;
        self.request(kind, None);
        self.fleet.emit(ProxyEvent::Ack { proxy: self.id, kind, version, hash, at: Instant::now() });
        if let Some(child) = kind.child() {
            // Follow what the parent references, like Envoy's EDS/RDS subscriptions.
            if self.types[child as usize].names != refs {
                self.types[child as usize].names = refs;
                self.request(child, None);
            }
        }
        let types = &self.types;
        self.sync.acked(kind, self.fleet, self.id, |k| types[k as usize].names.is_empty());
    }
}

pub async fn session(fleet: &Fleet, id: u32) -> Result<(), SessionError> {
    let started = Instant::now();
    let channel = connect(fleet).await?;
    let mut client = AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(usize::MAX);
    let (tx, rx) = mpsc::unbounded_channel();
    let mut s = Session { fleet, id, tx, types: Default::default(), first: true, sync: SyncWatch::new(started) };
    s.request(Kind::Cds, None);
    s.request(Kind::Lds, None);
    let stream = client.stream_aggregated_resources(UnboundedReceiverStream::new(rx)).await?.into_inner();
    pump(fleet, id, stream, |r| s.on_response(r)).await
}
