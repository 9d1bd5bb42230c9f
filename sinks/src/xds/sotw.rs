//! State-of-the-world ADS: per type, the subscription, what was last sent,
//! and what the proxy rejected. Rules from PROTOCOL.md §1, one method each.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::SystemTime;

use keelson_hub::Snapshot;
use keelson_hub::translate::visibility::Visibility;
use tonic::Status;

use super::cache::{Audience, BodyKey, ResponseCache, build_mesh_config, build_sotw, select, subset_hash};
use super::session::{Session, Shared};
use super::stream::Machine;
use super::types::{self, ItemForm, ServedType, UNKNOWN_ORDER};
use super::wire::{Outbound, SotwBody, SotwRequest};

/// The last response of a type on this stream.
struct Sent {
    nonce: u64,
    body: Arc<SotwBody>,
    published: SystemTime,
    /// The snapshot it came from: make-before-break re-sends items of it.
    snapshot: Arc<Snapshot>,
}

struct TypeState {
    served: Option<&'static ServedType>,
    type_url: Arc<str>,
    wildcard: bool,
    /// Interned: streams subscribed to the same names share one set.
    names: Arc<BTreeSet<String>>,
    /// Hash of the last request's names as sent (order included): an ACK
    /// repeating its subscription is recognised without touching the set.
    request_hash: u128,
    /// Has any request of this type named a resource? (legacy wildcard rule)
    ever_named: bool,
    subset: Option<u128>,
    last: Option<Sent>,
    /// Fingerprint of the last content the proxy rejected: never re-sent.
    nacked: Option<u128>,
    pending: bool,
    /// Send even if unchanged (new names subscribed, parent type pushed).
    force: bool,
    /// A make-before-break push went out; the final state is owed.
    removal_owed: bool,
    /// The kind version of the last response the proxy ACKed, while its
    /// subscription has not changed since: the base of partial answers.
    acked: Option<u64>,
    /// The names of a request that was not applied (a stale nonce), with
    /// their hash: a later request saying "the same names" (the codec does
    /// not decode them twice, crate::xds::wire::SotwRequest) means these.
    unapplied: Option<(u128, Vec<String>)>,
}

impl TypeState {
    fn new(type_url: &str) -> Self {
        TypeState {
            served: types::lookup(type_url),
            type_url: type_url.into(),
            wildcard: false,
            names: Arc::default(),
            request_hash: 0,
            ever_named: false,
            subset: None,
            last: None,
            nacked: None,
            pending: true,
            force: false,
            removal_owed: false,
            acked: None,
            unapplied: None,
        }
    }

    fn order(&self) -> u8 {
        self.served.map_or(UNKNOWN_ORDER, |t| t.order)
    }

    fn names(&self) -> Option<&BTreeSet<String>> {
        (!self.wildcard).then_some(&self.names)
    }

    /// Applies a request's resource_names (`request_hash` identifies the
    /// list). Returns true if anything changed.
    fn subscribe(&mut self, resource_names: &[String], request_hash: u128, cache: &ResponseCache) -> bool {
        if request_hash == self.request_hash && self.last.is_some() {
            return false; // the common case: an ACK repeating the subscription
        }
        self.request_hash = request_hash;
        let named: BTreeSet<String> = resource_names.iter().filter(|n| *n != "*").cloned().collect();
        self.ever_named |= !named.is_empty();
        // "*" is wildcard; so is an empty list until a name was ever set.
        let wildcard = resource_names.iter().any(|n| n == "*") || (resource_names.is_empty() && !self.ever_named);
        let added = named.difference(&self.names).next().is_some();
        let changed = wildcard != self.wildcard || named != *self.names;
        if changed {
            // What the proxy holds no longer matches a subscription: whole answers until it ACKs one.
            self.acked = None;
        }
        // New names must be answered even if their resources are unchanged.
        self.force |= added;
        self.wildcard = wildcard;
        let hash = subset_hash(&named);
        self.names = cache.intern_names(hash, named);
        self.subset = (!wildcard).then_some(hash);
        changed
    }
}

pub struct SotwMachine {
    session: Session,
    types: BTreeMap<String, TypeState>,
}

impl SotwMachine {
    pub fn new(session: Session) -> Self {
        SotwMachine { session, types: BTreeMap::new() }
    }

    fn key(
        &self,
        t: &TypeState,
        version: u64,
        visibility: Option<&Visibility>,
        retain_from: Option<u64>,
        changed_after: Option<u64>,
    ) -> BodyKey {
        let mcp = t.served.is_some_and(|s| s.form.is_mcp());
        BodyKey {
            type_url: t.type_url.clone(),
            version,
            visibility: visibility.filter(|v| v.restricts()).map(|v| v.namespace.clone()),
            grpc: self.session.grpc(),
            group: self.session.group().map(Arc::from),
            revision: if mcp { self.session.revision().map(Arc::from) } else { None },
            subset: t.subset,
            wrap_ttl: self.session.wants_ttl(),
            retain_from,
            changed_after,
            wire: None,
        }
    }

    /// The body this stream should get for a type now, sharing the cache.
    fn body(&self, shared: &Shared, snap: &Arc<Snapshot>, t: &TypeState, retain: Option<&Sent>) -> Arc<SotwBody> {
        let Some(served) = t.served else {
            // An unknown type is answered, empty: clients wait on an answer.
            let key = self.key(t, 0, None, None, None);
            return shared.cache.sotw_body(&key, || build_sotw(&key, &[], &[]));
        };
        if served.form == ItemForm::MeshConfig {
            let key = self.key(t, shared.mesh_config.version, None, None, None);
            return shared.cache.sotw_body(&key, || build_mesh_config(&key, &shared.mesh_config.any));
        }
        let visibility = self.session.visibility(snap);
        let version = snap.scoped_kind_version(served.group, served.kind, visibility);
        let changed_after = self.partial_after(snap, t, retain.is_some());
        let key = self.key(t, version, visibility, retain.map(|s| s.body.version), changed_after);
        let audience =
            Audience { group: self.session.group(), revision: key.revision.as_deref(), visibility, grpc: key.grpc };
        shared.cache.sotw_body(&key, || {
            let mut items = select(snap, served, audience, t.names());
            if let Some(after) = changed_after {
                // A resource's version is the seq that last changed it (for a
                // derived one, the largest of its inputs'), so newer = changed.
                items.retain(|(_, e)| e.version > after);
            }
            let extra = match retain {
                None => Vec::new(),
                Some(prev) => {
                    let now: BTreeSet<&str> = items.iter().map(|(n, _)| n.as_ref()).collect();
                    let then = Audience { visibility: self.session.visibility(&prev.snapshot), ..audience };
                    let mut old = select(&prev.snapshot, served, then, t.names());
                    old.retain(|(n, _)| !now.contains(n.as_ref()));
                    old
                }
            };
            build_sotw(&key, &items, &extra)
        })
    }

    /// The ACKed version a partial answer builds on, if this one may be
    /// partial: a type that is not full-state, a subscription the proxy has
    /// ACKed, no new names, no refresh owed (Envoy warms a cluster until it
    /// gets its endpoints again after CDS), and no change of what the
    /// proxy's Sidecar lets it see since (that can reveal old resources).
    fn partial_after(&self, snap: &Snapshot, t: &TypeState, retaining: bool) -> Option<u64> {
        let served = t.served?;
        let seen_since = |acked: u64| self.session.visibility(snap).is_none_or(|v| v.version <= acked);
        t.acked.filter(|a| !served.full_state && !t.force && !retaining && seen_since(*a))
    }

    /// Would the current state drop names the last response held? Then,
    /// while other pushes of this round may still reference them, they are
    /// kept one more response (make-before-break).
    fn removes_names(&self, shared: &Shared, snap: &Arc<Snapshot>, t: &TypeState) -> bool {
        match (t.served, &t.last) {
            (Some(served), Some(last)) if served.full_state => {
                let now = self.body(shared, snap, t, None);
                shared.cache.removes_names(&last.body, &now)
            }
            _ => false,
        }
    }

    fn send(&mut self, shared: &Shared, snap: &Arc<Snapshot>, url: &str, body: Arc<SotwBody>) -> Outbound {
        let nonce = self.session.nonce();
        let out = Outbound::Sotw { body: body.clone(), nonce };
        self.session.sent(shared, url, body.version, nonce, out.encoded_len());
        let t = self.types.get_mut(url).expect("type present");
        t.last = Some(Sent { nonce, body, published: snap.built_at, snapshot: snap.clone() });
        t.force = false;
        if let Some(refreshed) = t.served.and_then(|s| s.refreshes)
            && let Some(child) = self.types.get_mut(refreshed)
        {
            // Envoy warms a cluster until a new EDS response arrives.
            child.pending = true;
            child.force = child.last.is_some();
        }
        out
    }
}

impl Machine for SotwMachine {
    type Request = SotwRequest;

    fn on_request(&mut self, sotw: SotwRequest, shared: &Shared) -> Result<(), Status> {
        let SotwRequest { request: req, names, names_hash } = sotw;
        self.session.admit(req.node.as_ref(), &req.type_url, shared)?;
        let is_new = !self.types.contains_key(&req.type_url);
        let t = self.types.entry(req.type_url.clone()).or_insert_with(|| TypeState::new(&req.type_url));
        if !is_new && let Some(last) = &t.last {
            // Only an answer to the latest response counts; an older
            // nonce is a request overtaken by a response (PROTOCOL.md §1).
            if req.response_nonce.parse() != Ok(last.nonce) {
                shared.metrics.stale_requests.inc();
                if let Some(names) = names {
                    t.unapplied = Some((names_hash, names));
                }
                return Ok(());
            }
            let (nonce, version, published) = (last.nonce, last.body.version, last.published);
            let fingerprint = last.body.fingerprint;
            match &req.error_detail {
                Some(err) => {
                    t.nacked = Some(fingerprint);
                    self.session.nacked(shared, &req.type_url, version, nonce, &err.message);
                }
                None => {
                    t.acked = Some(version);
                    self.session.acked(shared, &req.type_url, version, nonce, published)
                }
            }
        }
        let t = self.types.get_mut(&req.type_url).expect("inserted above");
        // Names the codec did not decode again are those of the type's
        // previous request: applied already, or kept when it was not.
        let unapplied = t.unapplied.take();
        let names =
            names.or_else(|| unapplied.filter(|(h, _)| *h == names_hash && *h != t.request_hash).map(|(_, n)| n));
        if let Some(names) = names
            && t.subscribe(&names, names_hash, &shared.cache)
        {
            t.pending = true;
        }
        if is_new {
            self.session.subscribed(&req.type_url);
        }
        Ok(())
    }

    fn on_snapshot(&mut self, snap: &Arc<Snapshot>) {
        for t in self.types.values_mut() {
            if let (Some(served), Some(last)) = (t.served, &t.last)
                && served.form != ItemForm::MeshConfig
                && snap.scoped_kind_version(served.group, served.kind, self.session.visibility(snap))
                    != last.body.version
            {
                t.pending = true;
            }
        }
    }

    fn has_pending(&self) -> bool {
        self.types.values().any(|t| t.pending || t.removal_owed)
    }

    fn next(&mut self, snap: &Arc<Snapshot>, shared: &Shared) -> Option<Outbound> {
        loop {
            // Pending pushes in make-before-break order, then owed removals.
            let pick = self
                .types
                .values()
                .filter(|t| t.pending)
                .min_by_key(|t| t.order())
                .map(|t| (t.type_url.clone(), false))
                .or_else(|| {
                    self.types
                        .values()
                        .filter(|t| t.removal_owed)
                        .min_by_key(|t| t.order())
                        .map(|t| (t.type_url.clone(), true))
                })?;
            let (url, final_push) = pick;
            let t = &self.types[&*url];
            let others_pending = self.types.values().any(|o| o.pending && o.order() > t.order());
            let retain = !final_push && others_pending && self.removes_names(shared, snap, t);
            let body = self.body(shared, snap, t, if retain { t.last.as_ref() } else { None });
            let partial = self.partial_after(snap, t, retain).is_some();
            let send = match &t.last {
                None => true, // the first request of a type is answered at once, even if empty
                // A partial answer with nothing in it changes nothing the proxy holds.
                Some(_) if partial && body.names.is_empty() => false,
                Some(last) => {
                    t.force || (body.fingerprint != last.body.fingerprint && Some(body.fingerprint) != t.nacked)
                }
            };
            let t = self.types.get_mut(&*url).expect("picked");
            t.pending = false;
            t.removal_owed = retain;
            if send {
                return Some(self.send(shared, snap, &url, body));
            }
        }
    }
}
