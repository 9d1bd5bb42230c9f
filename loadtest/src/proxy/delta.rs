//! A simulated Envoy on a Delta (incremental) ADS stream.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use keelson_proto::envoy::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use keelson_proto::envoy::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use keelson_proto::envoy::pb::google::rpc::Status as RpcStatus;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::{Fleet, Kind, ProxyEvent, SessionError, SyncWatch, connect, decode, pump, version_of};

#[derive(Default)]
struct TypeState {
    /// Held resources: name → names they reference (CDS → EDS, LDS → RDS).
    held: BTreeMap<String, Vec<String>>,
    /// Subscribed names (EDS, RDS); CDS and LDS are wildcards.
    names: BTreeSet<String>,
    acked_once: bool,
}

struct Session<'a> {
    fleet: &'a Fleet,
    id: u32,
    tx: mpsc::UnboundedSender<DeltaDiscoveryRequest>,
    types: [TypeState; 4],
    first: bool,
    sync: SyncWatch,
}

impl Session<'_> {
    fn send(
        &mut self,
        kind: Kind,
        subscribe: Vec<String>,
        unsubscribe: Vec<String>,
        nonce: String,
        error: Option<String>,
    ) {
        let req = DeltaDiscoveryRequest {
            node: std::mem::take(&mut self.first).then(|| self.fleet.node(self.id)),
            type_url: kind.type_url().into(),
            resource_names_subscribe: subscribe,
            resource_names_unsubscribe: unsubscribe,
            response_nonce: nonce,
            error_detail: error.map(|message| RpcStatus { code: 13, message, details: vec![] }),
            ..Default::default()
        };
        let _ = self.tx.send(req);
    }

    fn on_response(&mut self, r: DeltaDiscoveryResponse) {
        self.fleet.received(r.encoded_len());
        let Some(kind) = Kind::of(&r.type_url) else { return };
        let mut decoded = Vec::with_capacity(r.resources.len());
        let mut error = None;
        for res in &r.resources {
            match res.resource.as_ref().map(|any| decode(kind, &any.value)) {
                Some(Ok(d)) => decoded.push(d),
                Some(Err(e)) => error = Some(format!("cannot decode a {}: {e}", kind.short())),
                None => {} // a TTL heartbeat: nothing to apply
            }
        }
        let names: Vec<String> = decoded.iter().map(|d| d.name.clone()).collect();
        if error.is_none() && self.fleet.nack.rejects(&names) {
            error = Some(format!("loadtest NACK policy rejected {}", names.join(",")));
        }
        if let Some(e) = error {
            self.fleet.emit(ProxyEvent::Nack { proxy: self.id, kind });
            self.send(kind, vec![], vec![], r.nonce, Some(e));
            return;
        }
        let t = &mut self.types[kind as usize];
        for d in decoded {
            t.held.insert(d.name, d.refs);
        }
        for gone in &r.removed_resources {
            t.held.remove(gone);
        }
        t.acked_once = true;
        let (version, hash) = version_of(&r.system_version_info);
        self.send(kind, vec![], vec![], r.nonce, None);
        self.fleet.emit(ProxyEvent::Ack { proxy: self.id, kind, version, hash, at: Instant::now() });
        if let Some(child) = kind.child() {
            let want: BTreeSet<String> = self.types[kind as usize].held.values().flatten().cloned().collect();
            let have = &self.types[child as usize].names;
            let subscribe: Vec<String> = want.difference(have).cloned().collect();
            let unsubscribe: Vec<String> = have.difference(&want).cloned().collect();
            if !subscribe.is_empty() || !unsubscribe.is_empty() {
                self.types[child as usize].names = want;
                self.send(child, subscribe, unsubscribe, String::new(), None);
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
    // Wildcard CDS and LDS: Envoy's legacy form, empty subscribe lists.
    s.send(Kind::Cds, vec![], vec![], String::new(), None);
    s.send(Kind::Lds, vec![], vec![], String::new(), None);
    let stream = client.delta_aggregated_resources(UnboundedReceiverStream::new(rx)).await?.into_inner();
    pump(fleet, id, stream, |r| s.on_response(r)).await
}
