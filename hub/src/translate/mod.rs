//! Translation: registry and Istio objects → the Envoy resources proxies
//! and proxyless gRPC clients understand (DESIGN.md §9, PROTOCOL.md §8).
//!
//! A stage between the reducer and the snapshot. It is a pure function of
//! the state, kept incremental: every Kubernetes service is one unit (its
//! clusters, endpoints, gRPC listener and route, and its sidecar virtual
//! host per port); a change rebuilds only the units whose inputs it
//! touched, then the per-port listeners and routes that gather the units'
//! virtual hosts. Each derived resource's version is the largest seq among
//! its inputs (crate::translate::scope covers inputs that left), so the
//! same state gives the same bytes and versions in every process.

pub mod cluster;
pub mod listener;
pub mod model;
pub mod policy;
pub mod route;
pub mod scope;
mod served;
mod unit;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use serde_json::{Value, json};

use crate::event::{Body, ResourceKey, SourceId, SourceKind};
use crate::kinds::{self, ENVOY_GROUP};
use crate::state::{ResourceEntry, State};
pub use model::Inputs;
pub use served::Served;
use unit::{Built, Derived};

/// `[translate]` in keelson.toml.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TranslateConfig {
    pub enabled: bool,
    /// Kubernetes hosts are `<name>.<namespace>.svc.<domain_suffix>`.
    pub domain_suffix: String,
    /// Where sidecar outbound listeners bind (no traffic capture here).
    pub outbound_address: String,
}

impl Default for TranslateConfig {
    fn default() -> Self {
        TranslateConfig { enabled: true, domain_suffix: "cluster.local".into(), outbound_address: "127.0.0.1".into() }
    }
}

/// Marks a derived resource in its body's metadata.
pub const DERIVED_ANNOTATION: &str = "keelson.dev/derived";
/// Serves a resource only to clients that name it (never in a wildcard
/// answer): proxyless gRPC API listeners, which an Envoy must not get.
pub const BY_NAME_ANNOTATION: &str = "keelson.dev/served-by-name";

/// The origin of derived resources.
pub fn origin() -> SourceId {
    SourceId::new(SourceKind::Hub, "translate")
}

/// A unit's current output.
struct Unit {
    ports: Vec<(u32, model::Protocol)>,
    resources: BTreeMap<ResourceKey, Arc<ResourceEntry>>,
    vhosts: BTreeMap<u32, unit::VirtualHost>,
    consulted: BTreeSet<ResourceKey>,
    /// The version of the Services the unit read.
    service_version: u64,
}

/// The incremental translator. `update` after every batch of changes gives
/// the same derived resources as `full` on the resulting state.
pub struct Translator {
    cfg: TranslateConfig,
    /// EndpointSlices by the service they name (`ns/name`).
    slices_of: BTreeMap<String, BTreeSet<ResourceKey>>,
    slice_owner: HashMap<ResourceKey, String>,
    /// DestinationRules and VirtualServices by scope (`dr:target`, `vs:target`).
    aimed: BTreeMap<String, BTreeSet<ResourceKey>>,
    aims_of: HashMap<ResourceKey, Vec<String>>,
    /// Short service name → namespace → Service objects of it.
    names: BTreeMap<String, BTreeMap<String, usize>>,
    units: BTreeMap<String, Unit>,
    /// Input key → units that read it.
    consumers: HashMap<ResourceKey, BTreeSet<String>>,
    port_units: BTreeMap<u32, BTreeSet<String>>,
    aggregates: BTreeMap<ResourceKey, Arc<ResourceEntry>>,
    /// Current warnings per input object, per unit (or port) that found them.
    warnings: BTreeMap<ResourceKey, BTreeMap<String, Vec<String>>>,
}

impl Translator {
    pub fn new(cfg: TranslateConfig) -> Self {
        Translator {
            cfg,
            slices_of: BTreeMap::new(),
            slice_owner: HashMap::new(),
            aimed: BTreeMap::new(),
            aims_of: HashMap::new(),
            names: BTreeMap::new(),
            units: BTreeMap::new(),
            consumers: HashMap::new(),
            port_units: BTreeMap::new(),
            aggregates: BTreeMap::new(),
            warnings: BTreeMap::new(),
        }
    }

    pub fn config(&self) -> &TranslateConfig {
        &self.cfg
    }

    /// Every derived resource, in key order.
    pub fn derived(&self) -> impl Iterator<Item = (&ResourceKey, &Arc<ResourceEntry>)> {
        let units = self.units.values().flat_map(|u| u.resources.iter());
        let mut all: Vec<_> = units.chain(self.aggregates.iter()).collect();
        all.sort_by(|a, b| a.0.cmp(b.0));
        all.into_iter()
    }

    pub fn get(&self, key: &ResourceKey) -> Option<&Arc<ResourceEntry>> {
        if let Some(e) = self.aggregates.get(key) {
            return Some(e);
        }
        self.units.values().find_map(|u| u.resources.get(key))
    }

    /// Current warnings, per input object.
    pub fn warnings(&self) -> BTreeMap<&ResourceKey, Vec<&str>> {
        let mut out: BTreeMap<&ResourceKey, Vec<&str>> = BTreeMap::new();
        for (k, by_owner) in &self.warnings {
            let mut all: Vec<&str> = by_owner.values().flatten().map(String::as_str).collect();
            all.sort_unstable();
            all.dedup();
            out.insert(k, all);
        }
        out
    }

    /// Translates the whole state; returns the derived keys that changed.
    pub fn full(&mut self, state: &State) -> BTreeSet<ResourceKey> {
        let inputs: BTreeSet<ResourceKey> =
            state.resources.keys().filter(|k| is_input(k)).cloned().chain(self.consumers.keys().cloned()).collect();
        let mut changed = self.update(state, &inputs);
        // Units whose service is gone without any input of theirs listed.
        let stale: Vec<String> = self.units.keys().filter(|u| !has_service(state, u)).cloned().collect();
        for u in stale {
            changed.extend(self.rebuild_unit(state, &u, &mut BTreeSet::new()));
        }
        changed
    }

    /// Brings the derived resources up to `state`, given the keys that
    /// changed since the last call; returns the derived keys that changed.
    pub fn update(&mut self, state: &State, changed: &BTreeSet<ResourceKey>) -> BTreeSet<ResourceKey> {
        let mut dirty: BTreeSet<String> = BTreeSet::new();
        for key in changed.iter().filter(|k| is_input(k)) {
            if let Some(units) = self.consumers.get(key) {
                dirty.extend(units.iter().cloned());
            }
            self.reindex(state, key, &mut dirty);
        }
        let mut out = BTreeSet::new();
        let mut ports = BTreeSet::new();
        for u in &dirty {
            out.extend(self.rebuild_unit(state, u, &mut ports));
        }
        for port in ports {
            out.extend(self.rebuild_port(state, port));
        }
        out
    }

    /// Updates the indexes for one changed input; marks the units it aims at.
    fn reindex(&mut self, state: &State, key: &ResourceKey, dirty: &mut BTreeSet<String>) {
        let entry = state.resources.get(key);
        match (key.group.as_str(), key.kind.as_str()) {
            ("", "Service") => {
                dirty.insert(format!("{}/{}", key.namespace, key.name));
                let names = self.names.entry(key.name.clone()).or_default();
                let before = names.len();
                match model::every_cluster(state, "", "Service", &key.namespace, &key.name).count() {
                    0 => names.remove(&key.namespace),
                    n => names.insert(key.namespace.clone(), n),
                };
                if names.len() != before {
                    // Bare domains of every namespace's service of this name change.
                    dirty.extend(names.keys().map(|ns| format!("{ns}/{}", key.name)));
                }
                if names.is_empty() {
                    self.names.remove(&key.name);
                }
            }
            ("discovery.k8s.io", "EndpointSlice") => {
                if let Some(old) = self.slice_owner.remove(key) {
                    if let Some(set) = self.slices_of.get_mut(&old) {
                        set.remove(key);
                    }
                    dirty.insert(old);
                }
                let owner = entry.and_then(|e| {
                    let v = e.body.to_value();
                    v.pointer("/metadata/labels")?.get(scope::SERVICE_NAME_LABEL)?.as_str().map(str::to_string)
                });
                if let Some(svc) = owner {
                    let unit = format!("{}/{svc}", key.namespace);
                    self.slices_of.entry(unit.clone()).or_default().insert(key.clone());
                    self.slice_owner.insert(key.clone(), unit.clone());
                    dirty.insert(unit);
                }
            }
            ("networking.istio.io", "DestinationRule" | "VirtualService") => {
                for aim in self.aims_of.remove(key).unwrap_or_default() {
                    if let Some(set) = self.aimed.get_mut(&aim) {
                        set.remove(key);
                    }
                    self.mark_aim(&aim, dirty);
                }
                if let Some(e) = entry {
                    let aims = scope::departures(key, &e.body);
                    for aim in &aims {
                        self.aimed.entry(aim.clone()).or_default().insert(key.clone());
                        self.mark_aim(aim, dirty);
                    }
                    self.aims_of.insert(key.clone(), aims);
                }
            }
            _ => {}
        }
    }

    /// Marks the units an aim (`dr:name.ns`, `vs:*`) reaches.
    fn mark_aim(&self, aim: &str, dirty: &mut BTreeSet<String>) {
        let target = aim.split_once(':').map_or("", |(_, t)| t);
        if target == "*" {
            dirty.extend(self.units.keys().cloned());
            dirty.extend(self.names.iter().flat_map(|(n, nss)| nss.keys().map(move |ns| format!("{ns}/{n}"))));
        } else if let Some((name, ns)) = target.split_once('.').filter(|(_, ns)| !ns.contains('.')) {
            dirty.insert(format!("{ns}/{name}"));
        }
    }

    /// The candidates of `prefix` (`dr`, `vs`) for a unit.
    fn aimed_at(&self, prefix: &str, namespace: &str, name: &str) -> BTreeSet<ResourceKey> {
        let target = scope::host_target(namespace, name);
        [format!("{prefix}:{target}"), format!("{prefix}:*")]
            .iter()
            .filter_map(|a| self.aimed.get(a))
            .flatten()
            .cloned()
            .collect()
    }

    /// Rebuilds one unit; returns its changed keys and records changed ports.
    fn rebuild_unit(&mut self, state: &State, unit: &str, ports: &mut BTreeSet<u32>) -> Vec<ResourceKey> {
        let (namespace, name) = unit.split_once('/').expect("units are ns/name");
        let empty = BTreeSet::new();
        let rules = self.aimed_at("dr", namespace, name);
        let routes = self.aimed_at("vs", namespace, name);
        let lookups = unit::Lookups {
            slices: self.slices_of.get(unit).unwrap_or(&empty),
            rules: &rules,
            routes: &routes,
            namespaces_with_name: self.names.get(name).map_or(0, BTreeMap::len),
        };
        let built = unit::build(state, namespace, name, &lookups, &self.cfg);
        let old = self.units.remove(unit);
        if let Some(old) = &old {
            for k in &old.consulted {
                if let Some(set) = self.consumers.get_mut(k) {
                    set.remove(unit);
                    if set.is_empty() {
                        self.consumers.remove(k);
                    }
                }
            }
            for (p, _) in &old.ports {
                if let Some(set) = self.port_units.get_mut(p) {
                    set.remove(unit);
                }
            }
        }
        let old_service_version = old.as_ref().map(|u| u.service_version);
        let (old_resources, old_vhosts, old_ports) = old.map(|u| (u.resources, u.vhosts, u.ports)).unwrap_or_default();
        let mut changed = Vec::new();
        let Some(built) = built else {
            changed.extend(old_resources.into_keys());
            ports.extend(old_ports.iter().map(|(p, _)| *p));
            self.clear_warnings_of(unit);
            return changed;
        };
        let Built { resources, vhosts, warnings, consulted, ports: new_ports, service_version: built_service_version } =
            built;
        let mut entries = BTreeMap::new();
        for d in resources {
            let prev = old_resources.get(&d.key);
            if let Some(entry) = self.encode(unit, d, prev) {
                if prev.is_none_or(|p| !Arc::ptr_eq(p, &entry)) {
                    changed.push(entry_key(&entry));
                }
                entries.insert(entry_key(&entry), entry);
            }
        }
        changed.extend(old_resources.keys().filter(|k| !entries.contains_key(*k)).cloned());
        // The port tables gather virtual hosts and read the Services on
        // them: rebuilt when either moved, not for an endpoint change.
        let service_version = built_service_version;
        if old_ports != new_ports || old_vhosts != vhosts || old_service_version != Some(service_version) {
            ports.extend(old_ports.iter().chain(new_ports.iter()).map(|(p, _)| *p));
        }
        for k in &consulted {
            self.consumers.entry(k.clone()).or_default().insert(unit.to_string());
        }
        for (p, _) in &new_ports {
            self.port_units.entry(*p).or_default().insert(unit.to_string());
        }
        self.clear_warnings_of(unit);
        for (k, messages) in warnings {
            self.warn(unit, k, messages);
        }
        self.units.insert(
            unit.to_string(),
            Unit { ports: new_ports, resources: entries, vhosts, consulted, service_version },
        );
        changed
    }

    fn clear_warnings_of(&mut self, owner: &str) {
        self.warnings.retain(|_, by_owner| {
            by_owner.remove(owner);
            !by_owner.is_empty()
        });
    }

    /// Records an input's warnings found by `owner`, logging new ones.
    fn warn(&mut self, owner: &str, key: ResourceKey, messages: Vec<String>) {
        let known =
            self.warnings.get(&key).map(|o| o.values().flatten().cloned().collect::<BTreeSet<_>>()).unwrap_or_default();
        for m in messages.iter().filter(|m| !known.contains(*m)) {
            tracing::warn!(object = %key, "translation: {m}");
        }
        self.warnings.entry(key).or_default().insert(owner.to_string(), messages);
    }

    /// Encodes a derived resource, reusing `prev` when nothing changed.
    fn encode(&mut self, owner: &str, d: Derived, prev: Option<&Arc<ResourceEntry>>) -> Option<Arc<ResourceEntry>> {
        let body = derived_body(&d);
        if let Some(p) = prev.filter(|p| p.version == d.inputs.version && p.body.hash() == body.hash()) {
            return Some(p.clone());
        }
        let info = kinds::lookup(ENVOY_GROUP, &d.key.kind).expect("derived kinds are Envoy kinds");
        match crate::object::encode_resource(info, &d.key, &body, d.inputs.version, std::time::UNIX_EPOCH) {
            Some(Ok(encoded)) => {
                let serving = crate::state::Serving::of(&body);
                Some(Arc::new(ResourceEntry {
                    version: d.inputs.version,
                    body,
                    origin: origin(),
                    source_version: String::new(),
                    location: String::new(),
                    encoded: Some(encoded),
                    created_at: std::time::UNIX_EPOCH,
                    serving,
                }))
            }
            other => {
                let error = other.and_then(Result::err).unwrap_or_default();
                let blame = d.inputs.read.iter().next_back().cloned().unwrap_or(d.key.clone());
                self.warn(
                    owner,
                    blame,
                    vec![format!(
                        "derived {} {} cannot be encoded, so it is not served: {error}",
                        d.key.kind, d.key.name
                    )],
                );
                None
            }
        }
    }

    /// Rebuilds the outbound listener and route table of one port.
    fn rebuild_port(&mut self, state: &State, port: u32) -> Vec<ResourceKey> {
        let units: Vec<&Unit> =
            self.port_units.get(&port).into_iter().flatten().filter_map(|u| self.units.get(u)).collect();
        let mut vhosts: Vec<unit::VirtualHost> = units.iter().filter_map(|u| u.vhosts.get(&port).cloned()).collect();
        vhosts.sort_by(|a, b| a.json["name"].as_str().cmp(&b.json["name"].as_str()));
        let mut listener_inputs = Inputs::default();
        listener_inputs.scope(state, &scope::service_port(port));
        let mut tcp_clusters = Vec::new();
        for u in &units {
            let svc_keys = u.consulted.iter().filter(|k| k.kind == "Service");
            for k in svc_keys {
                if let Some(e) = state.resources.get(k) {
                    listener_inputs.saw(k, e.version);
                }
            }
            if u.ports.iter().any(|(p, proto)| *p == port && !proto.is_http()) {
                tcp_clusters.extend(
                    u.resources
                        .keys()
                        .filter(|k| k.kind == "Cluster" && k.name.starts_with(&format!("outbound|{port}||")))
                        .map(|k| k.name.clone()),
                );
            }
        }
        drop(units);
        let mut route_inputs = listener_inputs.clone();
        for v in &vhosts {
            route_inputs.merge(&v.inputs);
        }
        let address = self.cfg.outbound_address.clone();
        let owner = format!("port {port}");
        self.clear_warnings_of(&owner);
        let listener_key = ResourceKey::new(ENVOY_GROUP, "Listener", "", &listener::outbound_name(&address, port));
        let route_key = ResourceKey::new(ENVOY_GROUP, "RouteConfiguration", "", &port.to_string());
        let mut wanted = Vec::new();
        if !vhosts.is_empty() {
            let virtual_hosts: Vec<Value> = vhosts.into_iter().map(|v| v.json).collect();
            let spec = json!({ "name": port.to_string(), "virtual_hosts": virtual_hosts, "validate_clusters": false });
            wanted.push(Derived { key: route_key.clone(), spec, inputs: route_inputs, by_name: false });
            if !tcp_clusters.is_empty() {
                self.warn(
                    &owner,
                    listener_key.clone(),
                    vec![format!(
                        "port {port} has HTTP and TCP services; the TCP ones ({}) get no outbound listener",
                        tcp_clusters.join(", ")
                    )],
                );
            }
            wanted.push(Derived {
                key: listener_key.clone(),
                spec: listener::outbound_http(&address, port),
                inputs: listener_inputs,
                by_name: false,
            });
        } else if let Some(first) = tcp_clusters.first() {
            if tcp_clusters.len() > 1 {
                self.warn(
                    &owner,
                    listener_key.clone(),
                    vec![format!("port {port} has several TCP services; its listener proxies to {first} only")],
                );
            }
            wanted.push(Derived {
                key: listener_key.clone(),
                spec: listener::outbound_tcp(&address, port, first),
                inputs: listener_inputs,
                by_name: false,
            });
        }
        let mut changed = Vec::new();
        let mut present = BTreeSet::new();
        for d in wanted {
            let k = d.key.clone();
            let prev = self.aggregates.get(&k).cloned();
            present.insert(k.clone());
            match self.encode(&owner, d, prev.as_ref()) {
                Some(e) => {
                    if prev.as_ref().is_none_or(|p| !Arc::ptr_eq(p, &e)) {
                        changed.push(k.clone());
                    }
                    self.aggregates.insert(k, e);
                }
                None => {
                    if self.aggregates.remove(&k).is_some() {
                        changed.push(k);
                    }
                }
            }
        }
        for k in [listener_key, route_key] {
            if !present.contains(&k) && self.aggregates.remove(&k).is_some() {
                changed.push(k);
            }
        }
        changed
    }
}

fn entry_key(e: &ResourceEntry) -> ResourceKey {
    let v = e.body.to_value();
    let kind = v["kind"].as_str().unwrap_or_default();
    let name = v.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
    ResourceKey::new(ENVOY_GROUP, kind, "", name)
}

fn has_service(state: &State, unit: &str) -> bool {
    let (ns, name) = unit.split_once('/').unwrap_or_default();
    model::every_cluster(state, "", "Service", ns, name).next().is_some()
}

/// Kinds translation reads.
pub fn is_input(key: &ResourceKey) -> bool {
    matches!(
        (key.group.as_str(), key.kind.as_str()),
        ("", "Service" | "Pod" | "Node")
            | ("discovery.k8s.io", "EndpointSlice")
            | ("networking.istio.io", "DestinationRule" | "VirtualService")
    )
}

/// The body of a derived resource: an `xds.keelson.dev/v1` object like a
/// raw one, marked derived, naming its inputs.
fn derived_body(d: &Derived) -> Body {
    let mut annotations = serde_json::Map::new();
    annotations.insert(DERIVED_ANNOTATION.into(), json!("true"));
    if d.by_name {
        annotations.insert(BY_NAME_ANNOTATION.into(), json!("true"));
    }
    let inputs: Vec<String> = d.inputs.read.iter().map(ToString::to_string).collect();
    Body::from_value(&json!({
        "apiVersion": "xds.keelson.dev/v1",
        "kind": d.key.kind,
        "metadata": { "name": d.key.name, "annotations": annotations },
        "derivedFrom": inputs,
        "spec": d.spec,
    }))
}
