//! Keeping Sidecar scoping current: the visibility of every scoped
//! namespace, and the route tables its proxies get per port (the shared
//! table holds every service's virtual host; a scoped namespace's holds
//! only those it sees). Nothing here runs while no Sidecar exists.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde_json::json;

use super::unit::{Derived, VirtualHost};
use super::visibility::{self, Visibility, Visible};
use super::{Inputs, Translator, ports, scope};
use crate::event::ResourceKey;
use crate::kinds::ENVOY_GROUP;
use crate::state::State;

impl Translator {
    /// Recomputes the visibilities of `sidecar_namespaces` (whose Sidecars
    /// changed) or of every scoped namespace when units came, went or moved
    /// ports; rebuilds the scoped route tables of changed visibilities and
    /// of the `ports` just rebuilt. Returns the derived keys that changed.
    pub(super) fn rescope(
        &mut self,
        state: &State,
        sidecar_namespaces: &BTreeSet<String>,
        ports: &BTreeSet<u32>,
    ) -> Vec<ResourceKey> {
        if self.visibilities.is_empty() && sidecar_namespaces.is_empty() {
            self.shape_changed = false;
            return Vec::new();
        }
        let namespaces: BTreeSet<String> = if self.shape_changed {
            self.visibilities.keys().chain(sidecar_namespaces).cloned().collect()
        } else {
            sidecar_namespaces.clone()
        };
        self.shape_changed = false;
        // Every host with its namespace and ports, only when a visibility
        // is recomputed (an endpoint or route change needs none).
        let hosts: BTreeMap<Arc<str>, (String, Vec<u32>)> = match namespaces.is_empty() {
            true => BTreeMap::new(),
            false => self
                .units
                .values()
                .map(|u| (u.host.clone(), (u.namespace.clone(), u.ports.iter().map(|(p, _)| *p).collect())))
                .collect(),
        };
        let mut moved = BTreeSet::new();
        for ns in namespaces {
            let owner = format!("Sidecar {ns}");
            let known = self.warnings.remove(&owner).unwrap_or_default();
            let mut found: BTreeMap<ResourceKey, Vec<String>> = BTreeMap::new();
            let empty = BTreeSet::new();
            let candidates = self.sidecars.get(&ns).unwrap_or(&empty);
            let (sidecar, read) =
                visibility::pick(state, candidates, &mut |k, m| found.entry(k.clone()).or_default().push(m));
            let departed = state.departures.get(&scope::sidecars(&ns)).copied().unwrap_or(0);
            let version = read.max(departed);
            for (k, messages) in found {
                self.warn(&owner, k, messages, &known);
            }
            let vis = visibility::visibility(&ns, sidecar.as_ref(), version, &hosts);
            let current = self.visibilities.get(&ns);
            if current.is_some_and(|c| **c == vis) {
                continue;
            }
            let all = Arc::make_mut(&mut self.visibilities);
            if version == 0 {
                all.remove(&ns); // never scoped: nothing to remember
            } else {
                all.insert(ns.clone(), Arc::new(vis));
            }
            moved.insert(ns);
        }
        let mut changed = Vec::new();
        let scoped: Vec<Arc<Visibility>> = self.visibilities.values().cloned().collect();
        for vis in &scoped {
            let all_ports = moved.contains(&*vis.namespace);
            let held: Vec<u32> = self.variant_ports(&vis.namespace);
            let wanted: BTreeSet<u32> = if all_ports {
                held.iter().copied().chain(vis.ports.iter().copied()).collect()
            } else {
                // A port whose change touched only hosts this namespace does
                // not see leaves its table as it is.
                let touched = |p: &u32| match self.port_changes.get(p) {
                    Some(Some(hosts)) => vis.hosts.as_ref().is_none_or(|seen| hosts.iter().any(|h| seen.contains(h))),
                    _ => true,
                };
                let held_or_seen = |p: &u32| held.contains(p) || vis.ports.contains(p);
                ports.iter().copied().filter(|p| held_or_seen(p) && (!held.contains(p) || touched(p))).collect()
            };
            for port in wanted {
                changed.extend(self.rebuild_variant(state, vis, port));
            }
        }
        // Namespaces no longer scoped lose their tables.
        for ns in moved.iter().filter(|ns| !self.visibilities.contains_key(*ns)) {
            for port in self.variant_ports(ns) {
                let key = variant_key(ns, port);
                if self.aggregates.remove(&key).is_some() {
                    changed.push(key);
                }
            }
        }
        changed
    }

    /// Ports the scoped route tables of `namespace` exist for.
    fn variant_ports(&self, namespace: &str) -> Vec<u32> {
        let start = ResourceKey::new(ENVOY_GROUP, "RouteConfiguration", namespace, "");
        let end = ResourceKey::new(ENVOY_GROUP, "RouteConfiguration", &format!("{namespace}\0"), "");
        self.aggregates.range(start..end).filter_map(|(k, _)| k.name.parse().ok()).collect()
    }

    /// The route table of `port` for the proxies of `vis`: the virtual hosts
    /// of the services they see. Named like the shared one (`<port>`, what
    /// their listener asks for), keyed by the namespace.
    fn rebuild_variant(&mut self, state: &State, vis: &Visibility, port: u32) -> Option<ResourceKey> {
        let key = variant_key(&vis.namespace, port);
        let shared = ResourceKey::new(ENVOY_GROUP, "RouteConfiguration", "", &port.to_string());
        let members = self.ports.get(&port);
        let wanted = vis.restricts() && vis.ports.contains(&port) && self.aggregates.contains_key(&shared);
        let (Some(members), Some(hosts)) = (members.filter(|_| wanted), vis.hosts.as_ref()) else {
            return self.aggregates.remove(&key).map(|_| key);
        };
        // Looked up from the hosts it sees (a namespace's few), not filtered
        // from every virtual host on the port: a route change on a port of
        // 10,000 services rebuilds every scoped namespace's table.
        let mut names: Vec<String> = hosts.iter().map(|h| format!("{h}:{port}")).collect();
        names.sort_unstable();
        let vhosts: Vec<&VirtualHost> =
            names.iter().filter_map(|n| members.vhosts.get(n.as_str())).map(|v| &**v).collect();
        // Its bytes are its virtual hosts' (each versioned by its service's
        // and routes' inputs), the port's membership and the visibility.
        let mut inputs = Inputs::default();
        inputs.scope(state, &scope::service_port(port));
        inputs.version = inputs.version.max(vis.version);
        for v in &vhosts {
            inputs.version = inputs.version.max(v.version);
        }
        let names: Vec<&str> = vhosts.iter().map(|v| &*v.name).collect();
        let gathers = serde_json::value::to_raw_value(&names).expect("names serialize");
        let encoded = ports::route_table(&port.to_string(), &vhosts);
        let spec = json!({ "name": port.to_string(), "validate_clusters": false });
        let d = Derived {
            gathers: Some(Arc::from(gathers)),
            encoded: Some(encoded),
            visible: Visible::Only(vis.namespace.clone()),
            ..Derived::new(key.clone(), spec, inputs)
        };
        let prev = self.aggregates.get(&key).cloned();
        let owner = format!("Sidecar {}", vis.namespace);
        match self.encode(&owner, d, prev.as_ref()) {
            Some(e) if prev.as_ref().is_some_and(|p| Arc::ptr_eq(p, &e)) => None,
            Some(e) => {
                self.aggregates.insert(key.clone(), e);
                Some(key)
            }
            None => self.aggregates.remove(&key).map(|_| key),
        }
    }
}

/// The key of the route table of `port` for the proxies of `namespace`.
pub fn variant_key(namespace: &str, port: u32) -> ResourceKey {
    ResourceKey::new(ENVOY_GROUP, "RouteConfiguration", namespace, &port.to_string())
}
