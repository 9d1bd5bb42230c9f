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
mod encode;
pub mod grpc;
mod index;
pub mod listener;
pub mod mcp_registry;
pub mod model;
pub mod policy;
mod ports;
pub mod route;
pub mod scope;
mod scoping;
mod served;
pub mod service_entry;
mod unit;
pub mod visibility;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use crate::event::{ResourceKey, SourceId, SourceKind};
use crate::kinds::ENVOY_GROUP;
use crate::state::{ResourceEntry, State};
pub use model::Inputs;
pub use served::Served;
use unit::{Built, Rebuild};

/// What the proxies of each Sidecar-scoped namespace see, by namespace.
pub type Visibilities = Arc<BTreeMap<String, Arc<visibility::Visibility>>>;

/// Units to rebuild, and how much of each.
type Dirty = BTreeMap<String, Rebuild>;

fn mark(dirty: &mut Dirty, unit: String, what: Rebuild) {
    dirty.entry(unit).and_modify(|w| *w = w.and(what)).or_insert(what);
}

/// What a change of `key` can alter in `unit`, which read it.
fn extent(key: &ResourceKey, unit: &str) -> Rebuild {
    match (key.group.as_str(), key.kind.as_str()) {
        ("discovery.k8s.io", "EndpointSlice") | ("", "Pod" | "Node") | ("networking.istio.io", "WorkloadEntry") => {
            Rebuild::Endpoints
        }
        ("networking.istio.io", "VirtualService") => Rebuild::Routes,
        // Another service read as a route's destination (its only port).
        ("", "Service") if unit.split_once('/') != Some((key.namespace.as_str(), key.name.as_str())) => Rebuild::Routes,
        _ => Rebuild::All,
    }
}

/// `[translate]` in keelson.toml.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TranslateConfig {
    pub enabled: bool,
    /// Kubernetes hosts are `<name>.<namespace>.svc.<domain_suffix>`.
    pub domain_suffix: String,
    /// Where sidecar outbound listeners bind (no traffic capture here).
    pub outbound_address: String,
    /// Also serve every Kubernetes service as a ServiceEntry and
    /// WorkloadEntries, for istiods over MCP (crate::translate::mcp_registry).
    pub mcp_registry: bool,
}

impl Default for TranslateConfig {
    fn default() -> Self {
        TranslateConfig {
            enabled: true,
            domain_suffix: "cluster.local".into(),
            outbound_address: "127.0.0.1".into(),
            mcp_registry: false,
        }
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

/// The services on one port, and their sidecar virtual hosts in name order.
#[derive(Default)]
struct PortMembers {
    /// Unit → (its Services' version, HTTP?, host).
    services: BTreeMap<String, (u64, bool, String)>,
    vhosts: BTreeMap<Arc<str>, Arc<unit::VirtualHost>>,
    /// The virtual hosts' names as JSON, for the table's body; kept until
    /// the set of names changes (a route change keeps it).
    gathered: Option<Arc<serde_json::value::RawValue>>,
}

/// A unit's current output.
struct Unit {
    ports: Vec<(u32, model::Protocol)>,
    resources: BTreeMap<ResourceKey, Arc<ResourceEntry>>,
    vhosts: BTreeMap<u32, unit::VirtualHost>,
    /// Every key it read (present or not), sorted: what `consumers` indexes.
    consulted: Box<[ResourceKey]>,
    /// The version of the Services the unit read.
    service_version: u64,
    /// Its host and the namespace that declares it (what a Sidecar imports).
    host: Arc<str>,
    namespace: String,
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
    /// ServiceEntry hosts → the ServiceEntries listing them; each host is a
    /// unit named by the host itself (Kubernetes units are `ns/name`).
    declarers: BTreeMap<String, BTreeSet<ResourceKey>>,
    entry_hosts: HashMap<ResourceKey, Vec<String>>,
    /// Short service name → namespace → Service objects of it.
    names: BTreeMap<String, BTreeMap<String, usize>>,
    units: BTreeMap<String, Unit>,
    /// Input key → units that read it.
    consumers: HashMap<ResourceKey, BTreeSet<Arc<str>>>,
    /// What each port's listener and route table gather.
    ports: BTreeMap<u32, PortMembers>,
    aggregates: BTreeMap<ResourceKey, Arc<ResourceEntry>>,
    /// Current warnings, per unit (or port) that found them, per input object.
    warnings: BTreeMap<String, BTreeMap<ResourceKey, Vec<String>>>,
    /// Sidecars by namespace, and what the proxies of each scoped
    /// namespace see (published with every snapshot).
    sidecars: BTreeMap<String, BTreeSet<ResourceKey>>,
    visibilities: Arc<BTreeMap<String, Arc<visibility::Visibility>>>,
    /// A unit appeared, went or changed ports since the visibilities were computed.
    shape_changed: bool,
    /// The unit of each derived Istio object (the MCP registry's, whose
    /// names do not carry their host).
    registry_objects: HashMap<ResourceKey, Arc<str>>,
    /// Per port rebuilt in this update, the hosts whose virtual host
    /// changed (`None`: its membership did), for the scoped tables.
    port_changes: BTreeMap<u32, Option<BTreeSet<Arc<str>>>>,
}

impl Translator {
    pub fn new(cfg: TranslateConfig) -> Self {
        Translator {
            cfg,
            slices_of: BTreeMap::new(),
            slice_owner: HashMap::new(),
            aimed: BTreeMap::new(),
            aims_of: HashMap::new(),
            declarers: BTreeMap::new(),
            entry_hosts: HashMap::new(),
            names: BTreeMap::new(),
            units: BTreeMap::new(),
            consumers: HashMap::new(),
            ports: BTreeMap::new(),
            aggregates: BTreeMap::new(),
            warnings: BTreeMap::new(),
            sidecars: BTreeMap::new(),
            visibilities: Arc::default(),
            shape_changed: false,
            registry_objects: HashMap::new(),
            port_changes: BTreeMap::new(),
        }
    }

    /// What the proxies of each Sidecar-scoped namespace see.
    pub fn visibilities(&self) -> &Arc<BTreeMap<String, Arc<visibility::Visibility>>> {
        &self.visibilities
    }

    pub fn config(&self) -> &TranslateConfig {
        &self.cfg
    }

    /// Every derived resource, in key order.
    pub fn derived(&self) -> impl Iterator<Item = (&ResourceKey, &Arc<ResourceEntry>)> {
        let mut all: Vec<_> = self.units.values().flat_map(|u| u.resources.iter()).chain(&self.aggregates).collect();
        all.sort_by(|a, b| a.0.cmp(b.0));
        all.into_iter()
    }

    /// One derived resource. Its name says which unit built it (istiod's
    /// names carry the host), so no index of every derived key is kept.
    pub fn get(&self, key: &ResourceKey) -> Option<&Arc<ResourceEntry>> {
        if let Some(e) = self.aggregates.get(key) {
            return Some(e);
        }
        if key.group != ENVOY_GROUP {
            let unit = self.registry_objects.get(key)?;
            return self.units.get(&**unit)?.resources.get(key);
        }
        let host = match key.kind.as_str() {
            "Listener" => key.name.rsplit_once(':')?.0,
            _ => key.name.strip_prefix("outbound|")?.splitn(3, '|').nth(2)?,
        };
        let unit = match host.strip_suffix(&format!(".svc.{}", self.cfg.domain_suffix)).and_then(|n| n.split_once('.'))
        {
            Some((name, namespace)) => format!("{namespace}/{name}"),
            None => host.to_string(),
        };
        self.units.get(&unit)?.resources.get(key)
    }

    /// Current warnings, per input object.
    pub fn warnings(&self) -> BTreeMap<&ResourceKey, Vec<&str>> {
        let mut out: BTreeMap<&ResourceKey, Vec<&str>> = BTreeMap::new();
        for (k, messages) in self.warnings.values().flatten() {
            out.entry(k).or_default().extend(messages.iter().map(String::as_str));
        }
        for all in out.values_mut() {
            all.sort_unstable();
            all.dedup();
        }
        out
    }

    /// Translates the whole state; returns the derived keys that changed.
    pub fn full(&mut self, state: &State) -> BTreeSet<ResourceKey> {
        let inputs: BTreeSet<ResourceKey> =
            state.resources.keys().filter(|k| is_input(k)).cloned().chain(self.consumers.keys().cloned()).collect();
        let mut changed = self.update(state, &inputs);
        // Units whose service is gone without any input of theirs listed.
        let stale: Vec<String> = self.units.keys().filter(|u| !self.has_service(state, u)).cloned().collect();
        for u in stale {
            changed.extend(self.rebuild_unit(state, &u, Rebuild::All, &mut BTreeSet::new()));
        }
        // Namespaces whose Sidecar is gone keep an unrestricted visibility
        // at the departure's seq, as they do when translated step by step.
        let prefix = scope::sidecars("");
        let departed: BTreeSet<String> = state
            .departures
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k[prefix.len()..].to_string())
            .collect();
        changed.extend(self.rescope(state, &departed, &BTreeSet::new()));
        changed
    }

    /// Brings the derived resources up to `state`, given the keys that
    /// changed since the last call; returns the derived keys that changed.
    pub fn update(&mut self, state: &State, changed: &BTreeSet<ResourceKey>) -> BTreeSet<ResourceKey> {
        let mut dirty = Dirty::new();
        let mut scoped = BTreeSet::new();
        for key in changed.iter().filter(|k| is_input(k)) {
            if key.group == service_entry::GROUP && key.kind == "Sidecar" {
                let set = self.sidecars.entry(key.namespace.clone()).or_default();
                match state.resources.contains_key(key) {
                    true => set.insert(key.clone()),
                    false => set.remove(key),
                };
                if set.is_empty() {
                    self.sidecars.remove(&key.namespace);
                }
                scoped.insert(key.namespace.clone());
                continue;
            }
            for u in self.consumers.get(key).into_iter().flatten() {
                mark(&mut dirty, u.to_string(), extent(key, u));
            }
            self.reindex(state, key, &mut dirty);
        }
        let mut out = BTreeSet::new();
        let mut ports = BTreeSet::new();
        for (u, what) in &dirty {
            out.extend(self.rebuild_unit(state, u, *what, &mut ports));
        }
        for port in &ports {
            out.extend(self.rebuild_port(state, *port));
        }
        out.extend(self.rescope(state, &scoped, &ports));
        self.port_changes.clear();
        out
    }

    /// The candidates of `prefix` (`dr`, `vs`) for a unit's target.
    fn aimed_at(&self, prefix: &str, target: &str) -> BTreeSet<ResourceKey> {
        [format!("{prefix}:{target}"), format!("{prefix}:*")]
            .iter()
            .filter_map(|a| self.aimed.get(a))
            .flatten()
            .cloned()
            .collect()
    }

    /// Rebuilds one unit; returns its changed keys and records changed ports.
    fn rebuild_unit(
        &mut self,
        state: &State,
        unit: &str,
        what: Rebuild,
        ports: &mut BTreeSet<u32>,
    ) -> Vec<ResourceKey> {
        let empty = BTreeSet::new();
        let (declared, target, namespaces_with_name) = match unit.split_once('/') {
            Some((namespace, name)) => {
                let slices = self.slices_of.get(unit).unwrap_or(&empty);
                let same_name = self.names.get(name).map_or(0, BTreeMap::len);
                (unit::Declared::Kube { namespace, name, slices }, scope::host_target(namespace, name), same_name)
            }
            None => {
                let declarers = self.declarers.get(unit).unwrap_or(&empty);
                (unit::Declared::Entries { host: unit, declarers }, unit.to_string(), 0)
            }
        };
        let rules = self.aimed_at("dr", &target);
        let routes = self.aimed_at("vs", &target);
        let lookups = unit::Lookups { declared, rules: &rules, routes: &routes, namespaces_with_name };
        // A partial rebuild needs the rest from the unit as it was.
        let what = if self.units.contains_key(unit) { what } else { Rebuild::All };
        let built = unit::build(state, &lookups, &self.cfg, what);
        let old = self.units.remove(unit);
        let mut removed: Vec<(u32, Arc<str>)> = Vec::new();
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
                if let Some(members) = self.ports.get_mut(p) {
                    members.services.remove(unit);
                    if let Some(v) = old.vhosts.get(p) {
                        members.vhosts.remove(&v.name);
                        removed.push((*p, v.name.clone()));
                    }
                }
            }
        }
        let old_service_version = old.as_ref().map(|u| u.service_version);
        let (old_resources, old_vhosts, old_ports, old_consulted) =
            old.map(|u| (u.resources, u.vhosts, u.ports, u.consulted)).unwrap_or_default();
        let mut changed = Vec::new();
        self.shape_changed |= built.as_ref().map(|b| &b.ports) != Some(&old_ports);
        let Some(built) = built else {
            for k in old_resources.keys().filter(|k| k.group != ENVOY_GROUP) {
                self.registry_objects.remove(k);
            }
            changed.extend(old_resources.into_keys());
            ports.extend(old_ports.iter().map(|(p, _)| *p));
            for (p, _) in &old_ports {
                self.port_changes.insert(*p, None);
            }
            for (p, _) in &removed {
                self.ports.entry(*p).or_default().gathered = None;
            }
            self.clear_warnings_of(unit);
            return changed;
        };
        let Built {
            resources,
            mut vhosts,
            mut warnings,
            mut consulted,
            ports: new_ports,
            service_version,
            host,
            namespace: host_namespace,
            rebuilt,
        } = built;
        let what = rebuilt;
        let known = self.warnings.remove(unit).unwrap_or_default();
        if what != Rebuild::All {
            // What this rebuild did not recompute stays as it was.
            if !what.covers("RouteConfiguration") {
                vhosts = old_vhosts.clone();
            }
            consulted.extend(old_consulted.into_vec());
            for (k, m) in &known {
                let kept = (k.kind == "DestinationRule" && !what.covers("Cluster"))
                    || (k.kind == "VirtualService" && !what.covers("RouteConfiguration"));
                if kept {
                    let all = warnings.entry(k.clone()).or_default();
                    all.extend(m.iter().cloned());
                    all.sort();
                    all.dedup();
                }
            }
        }
        let mut entries = BTreeMap::new();
        for d in resources {
            let key = d.key.clone();
            let prev = old_resources.get(&key);
            if let Some(entry) = self.encode(unit, d, prev) {
                if prev.is_none_or(|p| !Arc::ptr_eq(p, &entry)) {
                    changed.push(key.clone());
                }
                entries.insert(key, entry);
            }
        }
        for (k, e) in old_resources.iter().filter(|(k, _)| !what.covers(&k.kind)) {
            entries.insert(k.clone(), e.clone());
        }
        for k in old_resources.keys().filter(|k| !entries.contains_key(*k)) {
            changed.push(k.clone());
        }
        // The port tables gather virtual hosts and read the Services on
        // them: rebuilt when either moved, not for an endpoint change.
        if old_ports != new_ports || old_vhosts != vhosts || old_service_version != Some(service_version) {
            ports.extend(old_ports.iter().chain(new_ports.iter()).map(|(p, _)| *p));
            // What the scoped tables of those ports must follow: only this
            // host's virtual host, unless the port's membership moved.
            let membership = old_ports != new_ports || old_service_version != Some(service_version);
            for (p, _) in old_ports.iter().chain(new_ports.iter()) {
                let change = self.port_changes.entry(*p).or_insert_with(|| Some(BTreeSet::new()));
                match change {
                    Some(_) if membership => *change = None,
                    Some(hosts) if old_vhosts.get(p) != vhosts.get(p) => drop(hosts.insert(Arc::from(host.as_str()))),
                    _ => {}
                }
            }
        }
        let unit_id: Arc<str> = Arc::from(unit);
        for k in old_resources.keys().filter(|k| k.group != ENVOY_GROUP && !entries.contains_key(*k)) {
            self.registry_objects.remove(k);
        }
        for k in entries.keys().filter(|k| k.group != ENVOY_GROUP) {
            self.registry_objects.insert(k.clone(), unit_id.clone());
        }
        for k in &consulted {
            self.consumers.entry(k.clone()).or_default().insert(unit_id.clone());
        }
        for (p, proto) in &new_ports {
            let members = self.ports.entry(*p).or_default();
            members.services.insert(unit.to_string(), (service_version, proto.is_http(), host.clone()));
            if let Some(v) = vhosts.get(p) {
                let again = removed.iter().position(|(rp, n)| rp == p && *n == v.name);
                match again {
                    Some(i) => drop(removed.swap_remove(i)),
                    None => members.gathered = None,
                }
                members.vhosts.insert(v.name.clone(), Arc::new(v.clone()));
            }
        }
        for (p, _) in &removed {
            self.ports.entry(*p).or_default().gathered = None;
        }
        for (k, messages) in warnings {
            self.warn(unit, k, messages, &known);
        }
        self.units.insert(
            unit.to_string(),
            Unit {
                ports: new_ports,
                resources: entries,
                vhosts,
                consulted: consulted.into_iter().collect(),
                service_version,
                host: Arc::from(host.as_str()),
                namespace: host_namespace,
            },
        );
        changed
    }

    /// Is the unit's service still declared?
    fn has_service(&self, state: &State, unit: &str) -> bool {
        match unit.split_once('/') {
            Some((ns, name)) => model::every_cluster(state, "", "Service", ns, name).next().is_some(),
            None => self.declarers.contains_key(unit),
        }
    }

    fn clear_warnings_of(&mut self, owner: &str) {
        self.warnings.remove(owner);
    }

    /// Records an input's warnings found by `owner`, logging those not in
    /// `known` (what the owner reported last time).
    fn warn(
        &mut self,
        owner: &str,
        key: ResourceKey,
        messages: Vec<String>,
        known: &BTreeMap<ResourceKey, Vec<String>>,
    ) {
        let before = known.get(&key);
        for m in messages.iter().filter(|m| before.is_none_or(|b| !b.contains(m))) {
            tracing::warn!(object = %key, "translation: {m}");
        }
        self.warnings.entry(owner.to_string()).or_default().insert(key, messages);
    }
}

/// Kinds translation reads.
pub fn is_input(key: &ResourceKey) -> bool {
    matches!(
        (key.group.as_str(), key.kind.as_str()),
        ("", "Service" | "Pod" | "Node")
            | ("discovery.k8s.io", "EndpointSlice")
            | (
                "networking.istio.io",
                "DestinationRule" | "VirtualService" | "ServiceEntry" | "WorkloadEntry" | "Sidecar"
            )
    )
}
