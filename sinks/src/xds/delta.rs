//! Incremental (Delta) ADS: per type, the subscribed names, the version of
//! each resource the client holds, and what it must hear about next.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::SystemTime;

use keelson_hub::Snapshot;
use keelson_proto::envoy::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use tonic::Status;

use super::cache::{Audience, item, lookup_named, select, wire_name};
use super::session::{Session, Shared};
use super::stream::Machine;
use super::types::{self, ItemForm, ServedType, UNKNOWN_ORDER};
use super::wire::{DeltaResponse, Outbound};

struct TypeState {
    served: Option<&'static ServedType>,
    type_url: Arc<str>,
    wildcard: bool,
    names: BTreeSet<String>,
    /// Resource versions the client holds (sent, or declared on reconnect
    /// through `initial_resource_versions`). 0 = a version Keelson never gave.
    known: HashMap<String, u64>,
    /// Names to answer even if the client holds them already.
    force: BTreeSet<String>,
    /// Removals held back until this round's upserts are out.
    removals: Vec<Arc<str>>,
    /// For a wildcard subscription: the snapshot version `known` matches the
    /// whole kind at. When the next snapshot's change set starts there, only
    /// its keys are diffed, not the whole kind.
    synced_to: Option<u64>,
    /// (nonce, kind version, publish time) of the last response.
    last: Option<(u64, u64, SystemTime)>,
    pending: bool,
}

impl TypeState {
    fn order(&self) -> u8 {
        self.served.map_or(UNKNOWN_ORDER, |t| t.order)
    }

    fn subscribed(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }
}

pub struct DeltaMachine {
    session: Session,
    types: BTreeMap<String, TypeState>,
}

impl DeltaMachine {
    pub fn new(session: Session) -> Self {
        DeltaMachine { session, types: BTreeMap::new() }
    }

    /// The upserts and removals that bring the client to `snap` for a type.
    fn diff(&mut self, shared: &Shared, url: &str, snap: &Arc<Snapshot>) -> (DeltaResponse, Vec<Arc<str>>, u64) {
        let group = self.session.group().map(str::to_string);
        let revision = self.session.revision().map(str::to_string);
        let t = self.types.get_mut(url).expect("type present");
        let mut response = DeltaResponse { type_url: t.type_url.clone(), ..DeltaResponse::default() };
        let mut removed = Vec::new();
        let Some(served) = t.served.filter(|s| s.form != ItemForm::MeshConfig) else {
            // Unknown type, or MeshConfig (served over SotW only, as istiod
            // asks for it): every asked-for name is absent.
            removed.extend(t.force.iter().map(|n| Arc::from(n.as_str())));
            t.force.clear();
            return (response, removed, 0);
        };
        let visibility = self.session.visibility(snap);
        let version = snap.scoped_kind_version(served.group, served.kind, visibility);
        response.system_version_info = version.to_string();
        let grpc = self.session.grpc();
        let audience = Audience { group: group.as_deref(), revision: revision.as_deref(), visibility, grpc };
        // A Sidecar edit since the last sync changes what the proxy sees
        // without changing those resources: a whole diff then. So do names
        // subscribed since (in `force`) and a snapshot this stream skipped.
        let seen = visibility.is_none_or(|v| Some(v.version) <= t.synced_to);
        let incremental = seen && t.force.is_empty() && t.synced_to.is_some() && t.synced_to == snap.changes.since;
        t.synced_to = Some(snap.version);
        if !incremental {
            shared.metrics.delta_full_diffs.inc();
        } else {
            shared.metrics.delta_change_set_diffs.inc();
            // Only the keys that changed: O(changes), not O(resources) for
            // a wildcard nor O(names) for 1,500 named ClusterLoadAssignments.
            let changed = snap.changes.keys.iter().filter(|k| k.group == served.group && k.kind == served.kind);
            for key in changed {
                let wire = wire_name(served, key);
                let name = wire.as_ref();
                let subscribed = t.names.contains(name);
                if !t.wildcard && !subscribed {
                    continue;
                }
                // What this client gets under the name (a scoped route
                // table and the shared one share it), not the key alone.
                let current = lookup_named(snap, served, audience, name).filter(|e| !e.serving.by_name || subscribed);
                match current {
                    Some(entry) if t.known.get(name) != Some(&entry.version) => {
                        t.known.insert(name.to_string(), entry.version);
                        response.resources.push(item(name, entry));
                    }
                    Some(_) => {}
                    None => {
                        if t.known.remove(name).is_some() {
                            removed.push(Arc::from(name));
                        }
                    }
                }
            }
            return (response, removed, version);
        }
        let mut present = BTreeSet::new();
        let current = select(snap, served, audience, (!t.wildcard).then_some(&t.names));
        for (name, entry) in &current {
            let (name, entry) = (name.as_ref(), *entry);
            present.insert(name);
            if t.force.contains(name) || t.known.get(name) != Some(&entry.version) {
                t.known.insert(name.to_string(), entry.version);
                response.resources.push(item(name, entry));
            }
        }
        // Explicitly asked-for names that do not exist, and held names that
        // are gone or no longer subscribed-to-and-present.
        let asked_absent = t.force.iter().filter(|n| !present.contains(n.as_str()));
        removed.extend(asked_absent.map(|n| Arc::from(n.as_str())));
        let gone: Vec<String> = t.known.keys().filter(|n| !present.contains(n.as_str())).cloned().collect();
        for name in gone {
            t.known.remove(&name);
            if t.subscribed(&name) && !t.force.contains(&name) {
                removed.push(name.into());
            }
        }
        t.force.clear();
        (response, removed, version)
    }

    fn send(
        &mut self,
        shared: &Shared,
        snap: &Arc<Snapshot>,
        url: &str,
        response: DeltaResponse,
        version: u64,
    ) -> Outbound {
        let nonce = self.session.nonce();
        let out = Outbound::Delta { response: Box::new(response), nonce };
        self.session.sent(shared, url, version, nonce, out.encoded_len());
        let t = self.types.get_mut(url).expect("type present");
        t.last = Some((nonce, version, snap.built_at));
        if let Some(refreshed) = t.served.and_then(|s| s.refreshes)
            && let Some(child) = self.types.get_mut(refreshed)
        {
            // Envoy warms updated clusters until it hears about their
            // endpoints again: re-send every held ClusterLoadAssignment.
            child.force.extend(child.known.keys().cloned());
            child.pending = true;
        }
        out
    }
}

impl Machine for DeltaMachine {
    type Request = DeltaDiscoveryRequest;

    fn on_request(&mut self, req: DeltaDiscoveryRequest, shared: &Shared) -> Result<(), Status> {
        self.session.admit(req.node.as_ref(), &req.type_url, shared)?;
        let is_new = !self.types.contains_key(&req.type_url);
        if is_new {
            // Reconnect: the client says what it holds; only differences go out.
            let known = req
                .initial_resource_versions
                .iter()
                .map(|(name, v)| (name.clone(), v.parse::<u64>().unwrap_or(0)))
                .collect();
            let legacy_wildcard = req.resource_names_subscribe.is_empty() && req.resource_names_unsubscribe.is_empty();
            self.types.insert(
                req.type_url.clone(),
                TypeState {
                    served: types::lookup(&req.type_url),
                    type_url: req.type_url.as_str().into(),
                    wildcard: legacy_wildcard,
                    names: BTreeSet::new(),
                    known,
                    force: BTreeSet::new(),
                    removals: Vec::new(),
                    synced_to: None,
                    last: None,
                    pending: true,
                },
            );
            self.session.subscribed(&req.type_url);
        }
        let t = self.types.get_mut(&req.type_url).expect("present");
        // An ACK or NACK answers the latest response only; subscription
        // changes count whatever the nonce (PROTOCOL.md §1, Delta).
        if let Some((nonce, version, published)) = t.last
            && !req.response_nonce.is_empty()
        {
            if req.response_nonce.parse() == Ok(nonce) {
                match &req.error_detail {
                    Some(err) => self.session.nacked(shared, &req.type_url, version, nonce, &err.message),
                    None => self.session.acked(shared, &req.type_url, version, nonce, published),
                }
            } else {
                shared.metrics.stale_requests.inc();
            }
        }
        let t = self.types.get_mut(&req.type_url).expect("present");
        for name in &req.resource_names_subscribe {
            if name == "*" {
                t.wildcard = true;
            } else {
                t.names.insert(name.clone());
                // Every subscribed name is answered, even if held already.
                t.force.insert(name.clone());
            }
            t.pending = true;
        }
        for name in &req.resource_names_unsubscribe {
            if name == "*" {
                t.wildcard = false;
            } else if t.names.remove(name) && t.wildcard {
                // Still covered by the wildcard: tell the client it stays.
                t.force.insert(name.clone());
            }
            t.pending = true;
        }
        if !t.wildcard {
            // Unsubscribed names leave the client's view without a removal.
            let names = &t.names;
            t.known.retain(|n, _| names.contains(n));
        }
        Ok(())
    }

    fn on_snapshot(&mut self, snap: &Arc<Snapshot>) {
        let visibility = self.session.visibility(snap);
        for t in self.types.values_mut() {
            let Some(served) = t.served.filter(|s| s.form != ItemForm::MeshConfig) else { continue };
            let now = snap.scoped_kind_version(served.group, served.kind, visibility);
            match t.last {
                Some((_, version, _)) if now != version => t.pending = true,
                // Nothing of this kind changed: what the client holds still
                // matches the whole kind at this snapshot.
                _ if !t.pending && t.synced_to.is_some() && t.synced_to == snap.changes.since => {
                    t.synced_to = Some(snap.version);
                }
                _ => {}
            }
        }
    }

    fn has_pending(&self) -> bool {
        self.types.values().any(|t| t.pending || !t.removals.is_empty())
    }

    fn next(&mut self, snap: &Arc<Snapshot>, shared: &Shared) -> Option<Outbound> {
        // Upserts in make-before-break order; removals only once no type has
        // upserts left, so nothing is removed while something may use it.
        while let Some(url) =
            self.types.values().filter(|t| t.pending).min_by_key(|t| t.order()).map(|t| t.type_url.clone())
        {
            let first = self.types[&*url].last.is_none();
            self.types.get_mut(&*url).expect("picked").pending = false;
            let (mut response, removed, version) = self.diff(shared, &url, snap);
            if first {
                // Answer the first request at once, even if empty; nothing
                // was held yet, so its removals cannot break anything.
                response.removed = removed;
                return Some(self.send(shared, snap, &url, response, version));
            }
            self.types.get_mut(&*url).expect("picked").removals.extend(removed);
            if !response.resources.is_empty() {
                return Some(self.send(shared, snap, &url, response, version));
            }
        }
        let url = self.types.values().filter(|t| !t.removals.is_empty()).min_by_key(|t| t.order())?.type_url.clone();
        let t = self.types.get_mut(&*url).expect("picked");
        let removed = std::mem::take(&mut t.removals);
        let visibility = self.session.visibility(snap);
        let version = t.served.map_or(0, |s| snap.scoped_kind_version(s.group, s.kind, visibility));
        let response = DeltaResponse {
            system_version_info: version.to_string(),
            type_url: t.type_url.clone(),
            resources: Vec::new(),
            removed,
        };
        Some(self.send(shared, snap, &url, response, version))
    }
}
