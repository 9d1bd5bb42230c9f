//! The ServiceEntry registry: hosts declared by `networking.istio.io`
//! ServiceEntries, with their inline endpoints or the WorkloadEntries their
//! `workloadSelector` picks (istiod's `serviceentry/conversion.go`).
//!
//! Each declared host is one service, like one Kubernetes service: the same
//! clusters, endpoints, routes and listeners are built for it
//! (crate::translate::unit). When several ServiceEntries declare a host, the
//! oldest declares it (istiod prefers the older of conflicting objects) and
//! the others are warned about.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::Deserialize;
use serde_json::Value;

use super::model::{Endpoint, Health, Locality, Protocol, Registry, Resolution, Service, ServicePort};
use super::policy::Warn;
use super::{TranslateConfig, scope};
use crate::event::ResourceKey;
use crate::state::State;

pub const GROUP: &str = "networking.istio.io";

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EntryPort {
    number: u32,
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default)]
    name: String,
    #[serde(default)]
    target_port: Option<u32>,
}

/// A workload: an inline ServiceEntry endpoint or a WorkloadEntry's spec.
#[derive(Deserialize, Default)]
struct Workload {
    #[serde(default)]
    address: String,
    #[serde(default)]
    ports: BTreeMap<String, u32>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    locality: Option<String>,
    #[serde(default)]
    weight: Option<u32>,
}

#[derive(Deserialize, Default)]
struct Selector {
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EntrySpec {
    #[serde(default)]
    ports: Vec<EntryPort>,
    #[serde(default)]
    resolution: Option<String>,
    #[serde(default)]
    endpoints: Option<Vec<Workload>>,
    #[serde(default)]
    workload_selector: Option<Selector>,
}

/// The fields of a ServiceEntry's spec translation knows; the rest is warned.
const KNOWN: &[&str] = &["hosts", "ports", "resolution", "endpoints", "workloadSelector", "location", "exportTo"];
/// Known fields of a workload (`endpoints[]`, a WorkloadEntry's spec).
const KNOWN_WORKLOAD: &[&str] = &["address", "ports", "labels", "locality", "weight"];

/// The hosts a ServiceEntry body lists, as written.
pub fn hosts(body: &Value) -> Vec<String> {
    body.pointer("/spec/hosts")
        .and_then(Value::as_array)
        .map(|h| h.iter().filter_map(|h| h.as_str().map(String::from)).collect())
        .unwrap_or_default()
}

/// Why a ServiceEntry host is not translated, if it is not.
pub fn refused(host: &str, cfg: &TranslateConfig) -> Option<String> {
    if host.is_empty() || host.contains('/') {
        return Some(format!("host {host:?} is not a DNS name"));
    }
    if host.starts_with('*') {
        return Some(format!("wildcard host {host} is not translated (no listener can serve every name under it)"));
    }
    // A Kubernetes service's host belongs to its Service: translation keys
    // it by namespace/name, so a ServiceEntry cannot add to it here.
    let kube = host.strip_suffix(&format!(".svc.{}", cfg.domain_suffix)).is_some_and(|n| n.matches('.').count() == 1);
    kube.then(|| format!("host {host} is a Kubernetes service's; a ServiceEntry cannot declare it"))
}

/// The service `host` as the ServiceEntries in `declarers` declare it, or
/// `None` if none of them is left.
pub fn entry_service(
    state: &State,
    host: &str,
    declarers: &BTreeSet<ResourceKey>,
    warn: &mut dyn FnMut(&ResourceKey, String),
) -> Option<Service> {
    let mut svc = Service { host: host.into(), registry: Registry::ServiceEntry, ..Service::default() };
    svc.service_inputs.scope(state, &scope::entry_host(host));
    let mut present: Vec<(std::time::SystemTime, &ResourceKey, &crate::ResourceEntry)> = Vec::new();
    for k in declarers {
        if let Some(e) = state.resources.get(k) {
            svc.service_inputs.saw(k, e.version);
            present.push((e.created_at, k, e));
        }
    }
    present.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    let (_, key, entry) = *present.first()?;
    for (_, other, _) in &present[1..] {
        warn(other, format!("host {host} is also declared by the older ServiceEntry {key}; only that one is used"));
    }
    let body = entry.body.to_value();
    let spec_value = body.get("spec").cloned().unwrap_or(Value::Null);
    let mut w = Warn::default();
    w.unknown_fields(&spec_value, "spec", KNOWN);
    let Ok(spec) = serde_json::from_value::<EntrySpec>(spec_value.clone()) else {
        warn(key, "spec is not a readable ServiceEntry (ports, endpoints, workloadSelector); it is ignored".into());
        return None;
    };
    svc.namespace = key.namespace.clone();
    svc.name = host.into();
    svc.resolution = match spec.resolution.as_deref().unwrap_or("NONE") {
        "STATIC" => Resolution::Endpoints,
        "DNS" => Resolution::Dns,
        "DNS_ROUND_ROBIN" => {
            w.messages.push("spec.resolution DNS_ROUND_ROBIN is served as DNS (every address, STRICT_DNS)".into());
            Resolution::Dns
        }
        "NONE" => Resolution::Passthrough,
        other => {
            w.messages.push(format!("spec.resolution {other:?} is not NONE, STATIC or DNS; NONE is used"));
            Resolution::Passthrough
        }
    };
    let mut target_ports = BTreeMap::new();
    for p in &spec.ports {
        if svc.ports.iter().any(|q: &ServicePort| q.port == p.number) {
            continue;
        }
        // ServiceEntry ports name their protocol; the name prefix is the fallback.
        svc.ports.push(ServicePort {
            name: p.name.clone(),
            port: p.number,
            protocol: Protocol::of(&p.name, p.protocol.as_deref()),
        });
        target_ports.insert(p.number, p.target_port.filter(|t| *t > 0).unwrap_or(p.number));
    }
    svc.ports.sort_by_key(|p| p.port);
    svc.endpoint_inputs = svc.service_inputs.clone();
    let inline = spec.endpoints.filter(|e| !e.is_empty());
    let mut workloads: Vec<(String, Workload)> = Vec::new();
    match (&inline, &spec.workload_selector) {
        (Some(_), Some(_)) => w
            .messages
            .push("spec.endpoints and spec.workloadSelector exclude each other; the endpoints are used".into()),
        (None, Some(selector)) => {
            svc.endpoint_inputs.scope(state, &scope::workload_entries(&key.namespace));
            workloads.extend(selected(state, &key.namespace, &selector.labels, &mut svc, warn));
        }
        _ => {}
    }
    for (i, ep) in spec_value.get("endpoints").and_then(Value::as_array).into_iter().flatten().enumerate() {
        w.unknown_fields(ep, &format!("spec.endpoints[{i}]"), KNOWN_WORKLOAD);
    }
    workloads.extend(inline.into_iter().flatten().enumerate().map(|(i, e)| (format!("spec.endpoints[{i}]"), e)));
    match svc.resolution {
        Resolution::Passthrough if !workloads.is_empty() => {
            w.messages.push("endpoints are not used with resolution NONE (the address dialled is used)".into());
        }
        Resolution::Passthrough => {}
        // istiod: a DNS entry without endpoints resolves its own host.
        Resolution::Dns if workloads.is_empty() => {
            workloads.push(("spec.hosts".into(), Workload { address: host.into(), ..Workload::default() }));
        }
        _ => {}
    }
    if svc.resolution != Resolution::Passthrough {
        for (path, workload) in &workloads {
            endpoints_of(&mut svc, &key.cluster, path, workload, &target_ports, &mut w);
        }
    }
    svc.endpoints.sort();
    svc.endpoints.dedup_by(|a, b| a.address == b.address && a.port == b.port && a.service_port == b.service_port);
    for m in w.messages {
        warn(key, m);
    }
    Some(svc)
}

/// The WorkloadEntries of `namespace` whose `spec.labels` hold every label
/// of `selector`, read into `svc`'s endpoint inputs.
fn selected(
    state: &State,
    namespace: &str,
    selector: &BTreeMap<String, String>,
    svc: &mut Service,
    warn: &mut dyn FnMut(&ResourceKey, String),
) -> Vec<(String, Workload)> {
    let start = ResourceKey::new(GROUP, "WorkloadEntry", namespace, "");
    let end = ResourceKey::new(GROUP, "WorkloadEntry", &format!("{namespace}\0"), "");
    let mut out = Vec::new();
    for (k, e) in state.resources.range(start..end) {
        let spec = e.body.to_value().get("spec").cloned().unwrap_or(Value::Null);
        let Ok(workload) = serde_json::from_value::<Workload>(spec.clone()) else {
            warn(k, "spec is not a readable WorkloadEntry (address, ports, labels); it is not served".into());
            continue;
        };
        if selector.iter().all(|(l, v)| workload.labels.get(l) == Some(v)) {
            svc.endpoint_inputs.saw(k, e.version);
            let mut w = Warn::default();
            w.unknown_fields(&spec, "spec", KNOWN_WORKLOAD);
            for m in w.messages {
                warn(k, m);
            }
            out.push((format!("WorkloadEntry {k}"), workload));
        }
    }
    out
}

/// One workload's endpoints, one per service port (istiod's
/// `convertEndpoint`: the workload's port of the same name, else the
/// port's `targetPort`, else its number).
fn endpoints_of(
    svc: &mut Service,
    cluster: &str,
    path: &str,
    workload: &Workload,
    target_ports: &BTreeMap<u32, u32>,
    w: &mut Warn,
) {
    let address = workload.address.as_str();
    let is_ip = address.parse::<IpAddr>().is_ok();
    let usable = match svc.resolution {
        Resolution::Endpoints => is_ip,
        _ => !address.is_empty() && !address.contains('/'),
    };
    if !usable {
        let why = if svc.resolution == Resolution::Endpoints { "an IP address (resolution STATIC)" } else { "a host" };
        w.messages.push(format!("{path}.address {address:?} is not {why}; the endpoint is not served"));
        return;
    }
    let mut locality = Locality::default();
    if let Some(l) = workload.locality.as_deref() {
        // Istio writes a locality as region/zone/subzone.
        let mut parts = l.split('/').map(str::to_string);
        locality.region = parts.next().unwrap_or_default();
        locality.zone = parts.next().unwrap_or_default();
        locality.sub_zone = parts.next().unwrap_or_default();
    }
    if locality.sub_zone.is_empty() {
        locality.sub_zone = cluster.to_string();
    }
    for port in &svc.ports {
        let number = workload.ports.get(&port.name).copied().filter(|p| *p > 0);
        let number = number.or_else(|| target_ports.get(&port.port).copied()).unwrap_or(port.port);
        svc.endpoints.push(Endpoint {
            locality: locality.clone(),
            address: address.to_string(),
            service_port: port.port,
            port: number,
            health: Health::Healthy,
            labels: workload.labels.clone(),
            weight: workload.weight.filter(|w| *w > 0).unwrap_or(1),
        });
    }
}
