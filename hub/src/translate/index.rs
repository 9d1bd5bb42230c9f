//! The translator's indexes of its inputs: which unit a changed
//! Service, EndpointSlice, ServiceEntry, WorkloadEntry, DestinationRule or
//! VirtualService reaches, so a change rebuilds only those units.

use super::{Dirty, Rebuild, Translator, extent, mark, model, scope, service_entry};
use crate::event::ResourceKey;
use crate::state::State;

impl Translator {
    /// Updates the indexes for one changed input; marks the units it aims at.
    pub(super) fn reindex(&mut self, state: &State, key: &ResourceKey, dirty: &mut Dirty) {
        let entry = state.resources.get(key);
        match (key.group.as_str(), key.kind.as_str()) {
            ("", "Service") => {
                mark(dirty, format!("{}/{}", key.namespace, key.name), Rebuild::All);
                let names = self.names.entry(key.name.clone()).or_default();
                let before = names.len();
                match model::every_cluster(state, "", "Service", &key.namespace, &key.name).count() {
                    0 => names.remove(&key.namespace),
                    n => names.insert(key.namespace.clone(), n),
                };
                if names.len() != before {
                    // Bare domains of every namespace's service of this name change.
                    for ns in names.keys() {
                        mark(dirty, format!("{ns}/{}", key.name), Rebuild::Routes);
                    }
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
                    mark(dirty, old, Rebuild::Endpoints);
                }
                let owner = entry.and_then(|e| {
                    let v = e.body.to_value();
                    v.pointer("/metadata/labels")?.get(scope::SERVICE_NAME_LABEL)?.as_str().map(str::to_string)
                });
                if let Some(svc) = owner {
                    let unit = format!("{}/{svc}", key.namespace);
                    self.slices_of.entry(unit.clone()).or_default().insert(key.clone());
                    self.slice_owner.insert(key.clone(), unit.clone());
                    mark(dirty, unit, Rebuild::Endpoints);
                }
            }
            ("networking.istio.io", "ServiceEntry") => {
                let owner = format!("ServiceEntry {key}");
                let known = self.warnings.remove(&owner).unwrap_or_default();
                for host in self.entry_hosts.remove(key).unwrap_or_default() {
                    if let Some(set) = self.declarers.get_mut(&host) {
                        set.remove(key);
                        if set.is_empty() {
                            self.declarers.remove(&host);
                        }
                    }
                    mark(dirty, host, Rebuild::All);
                }
                let Some(e) = entry else { return };
                let mut hosts = Vec::new();
                let mut refusals = Vec::new();
                for host in service_entry::hosts(&e.body.to_value()) {
                    match service_entry::refused(&host, &self.cfg) {
                        Some(why) => refusals.push(why),
                        None if !hosts.contains(&host) => hosts.push(host),
                        None => {}
                    }
                }
                if !refusals.is_empty() {
                    self.warn(&owner, key.clone(), refusals, &known);
                }
                for host in &hosts {
                    self.declarers.entry(host.clone()).or_default().insert(key.clone());
                    mark(dirty, host.clone(), Rebuild::All);
                }
                self.entry_hosts.insert(key.clone(), hosts);
            }
            ("networking.istio.io", "WorkloadEntry") => {
                // A workload can join any selector of its namespace's entries.
                let start = ResourceKey::new(service_entry::GROUP, "ServiceEntry", &key.namespace, "");
                let end = ResourceKey::new(service_entry::GROUP, "ServiceEntry", &format!("{}\0", key.namespace), "");
                for (se, _) in state.resources.range(start..end) {
                    for host in self.entry_hosts.get(se).into_iter().flatten() {
                        mark(dirty, host.clone(), Rebuild::Endpoints);
                    }
                }
            }
            ("networking.istio.io", "DestinationRule" | "VirtualService") => {
                for aim in self.aims_of.remove(key).unwrap_or_default() {
                    if let Some(set) = self.aimed.get_mut(&aim) {
                        set.remove(key);
                    }
                    self.mark_aim(key, &aim, dirty);
                }
                if let Some(e) = entry {
                    let aims = scope::departures(key, &e.body);
                    for aim in &aims {
                        self.aimed.entry(aim.clone()).or_default().insert(key.clone());
                        self.mark_aim(key, aim, dirty);
                    }
                    self.aims_of.insert(key.clone(), aims);
                }
            }
            _ => {}
        }
    }

    /// Marks the units an aim (`dr:name.ns`, `vs:*`) reaches.
    fn mark_aim(&self, key: &ResourceKey, aim: &str, dirty: &mut Dirty) {
        let target = aim.split_once(':').map_or("", |(_, t)| t);
        let what = extent(key, "");
        if target == "*" {
            for u in self.units.keys() {
                mark(dirty, u.clone(), what);
            }
            for (n, nss) in &self.names {
                for ns in nss.keys() {
                    mark(dirty, format!("{ns}/{n}"), what);
                }
            }
            for host in self.declarers.keys() {
                mark(dirty, host.clone(), what);
            }
            return;
        }
        if let Some((name, ns)) = target.split_once('.').filter(|(_, ns)| !ns.contains('.')) {
            mark(dirty, format!("{ns}/{name}"), what);
        }
        if self.declarers.contains_key(target) {
            mark(dirty, target.to_string(), what);
        }
    }
}
