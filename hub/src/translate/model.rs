//! The service model: what every registry's objects mean, independent of
//! where they came from (Pilot's `model.Service` + `IstioEndpoint`).
//!
//! The Kubernetes registry below turns the Services and EndpointSlices of
//! every cluster into one [`Service`] per host, endpoints the union. A
//! registry is a function from the state to services with their inputs; the
//! Consul source adds another beside it, merged by host the same way.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use serde::Deserialize;
use serde_json::Value;

use super::scope;
use crate::event::ResourceKey;
use crate::state::State;

/// What a derived resource read: the inputs present with their versions,
/// the keys it looked for and did not find, and its version (the largest
/// seq of both, including the departures of the scopes it read).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inputs {
    pub read: BTreeSet<ResourceKey>,
    pub missing: BTreeSet<ResourceKey>,
    pub version: u64,
}

impl Inputs {
    pub fn saw(&mut self, key: &ResourceKey, version: u64) {
        self.read.insert(key.clone());
        self.version = self.version.max(version);
    }

    pub fn missed(&mut self, key: ResourceKey) {
        self.missing.insert(key);
    }

    /// Covers the last departure from `scope`.
    pub fn scope(&mut self, state: &State, scope: &str) {
        if let Some(seq) = state.departures.get(scope) {
            self.version = self.version.max(*seq);
        }
    }

    pub fn merge(&mut self, other: &Inputs) {
        self.read.extend(other.read.iter().cloned());
        self.missing.extend(other.missing.iter().cloned());
        self.version = self.version.max(other.version);
    }

    pub fn merged(&self, other: &Inputs) -> Inputs {
        let mut out = self.clone();
        out.merge(other);
        out
    }
}

/// How a port's traffic is handled, istiod's `protocol.Instance` reduced
/// to what translation distinguishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Protocol {
    Http,
    Http2,
    Grpc,
    Tcp,
}

impl Protocol {
    /// istiod's rule (`kube.ConvertProtocol`): `appProtocol` first, else the
    /// port name's prefix before `-`; unknown → TCP.
    pub fn of(name: &str, app_protocol: Option<&str>) -> Protocol {
        let from = |p: &str| match p.to_ascii_lowercase().as_str() {
            "http" => Some(Protocol::Http),
            "http2" | "h2c" | "kubernetes.io/h2c" => Some(Protocol::Http2),
            "grpc" | "grpc-web" => Some(Protocol::Grpc),
            "tcp" | "tls" | "https" | "mongo" | "redis" | "mysql" => Some(Protocol::Tcp),
            _ => None,
        };
        if let Some(p) = app_protocol.and_then(from) {
            return p;
        }
        let prefix = name.split('-').next().unwrap_or_default();
        from(prefix).unwrap_or(Protocol::Tcp)
    }

    pub fn is_http(self) -> bool {
        !matches!(self, Protocol::Tcp)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub name: String,
    pub port: u32,
    pub protocol: Protocol,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub sub_zone: String,
}

/// istiod's `endpointHealthStatus`, minus the states that are not served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Health {
    Healthy,
    /// Serving but terminating: kept for existing connections only.
    Draining,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    pub locality: Locality,
    pub address: String,
    /// The service port this endpoint serves (by name), and where it listens.
    pub service_port: u32,
    pub port: u32,
    pub health: Health,
    pub labels: BTreeMap<String, String>,
    /// Its share within its locality (≥ 1): a ServiceEntry endpoint's or
    /// WorkloadEntry's `weight`; 1 for Kubernetes endpoints.
    pub weight: u32,
}

/// How a proxy finds a host's endpoints (istiod's `model.Resolution`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Resolution {
    /// The control plane lists them (EDS): Kubernetes services and
    /// ServiceEntries with `resolution: STATIC`.
    #[default]
    Endpoints,
    /// The proxy resolves their addresses (`resolution: DNS`): a STRICT_DNS
    /// cluster with the endpoints inline.
    Dns,
    /// The proxy forwards to the address the client dialled
    /// (`resolution: NONE`): an ORIGINAL_DST cluster.
    Passthrough,
}

/// Where a service was declared: it decides the names a sidecar's virtual
/// host answers to (a Kubernetes service also has its short forms).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Registry {
    #[default]
    Kubernetes,
    ServiceEntry,
}

/// One host, as every registry that knows it describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Service {
    pub host: String,
    pub namespace: String,
    pub name: String,
    pub ports: Vec<ServicePort>,
    pub endpoints: Vec<Endpoint>,
    pub resolution: Resolution,
    pub registry: Registry,
    /// What the ports were read from (Services of every cluster).
    pub service_inputs: Inputs,
    /// What the endpoints were read from (slices, pods, nodes).
    pub endpoint_inputs: Inputs,
}

/// The fully qualified host of a Kubernetes service.
pub fn kube_host(namespace: &str, name: &str, domain_suffix: &str) -> String {
    format!("{name}.{namespace}.svc.{domain_suffix}")
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct KubePort {
    #[serde(default)]
    name: String,
    port: u32,
    #[serde(default)]
    app_protocol: Option<String>,
    #[serde(default)]
    protocol: Option<String>,
}

#[derive(Deserialize)]
struct KubeServiceSpec {
    #[serde(default)]
    ports: Vec<KubePort>,
}

#[derive(Deserialize)]
struct KubeService {
    spec: KubeServiceSpec,
}

#[derive(Deserialize)]
struct SlicePort {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    port: Option<u32>,
}

#[derive(Deserialize, Default)]
struct Conditions {
    ready: Option<bool>,
    serving: Option<bool>,
    terminating: Option<bool>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TargetRef {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SliceEndpoint {
    #[serde(default)]
    addresses: Vec<String>,
    #[serde(default)]
    conditions: Conditions,
    #[serde(default)]
    target_ref: Option<TargetRef>,
    #[serde(default)]
    node_name: Option<String>,
    #[serde(default)]
    zone: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Slice {
    #[serde(default)]
    address_type: String,
    #[serde(default)]
    ports: Option<Vec<SlicePort>>,
    #[serde(default)]
    endpoints: Vec<SliceEndpoint>,
}

/// Keys of one kind and name, whatever their cluster, in key order.
pub fn every_cluster<'a>(
    state: &'a State,
    group: &str,
    kind: &str,
    namespace: &str,
    name: &str,
) -> impl Iterator<Item = (&'a ResourceKey, &'a std::sync::Arc<crate::ResourceEntry>)> + 'a {
    let start = ResourceKey::new(group, kind, namespace, name);
    let mut end = start.clone();
    end.name.push('\0');
    state.resources.range((Bound::Included(start), Bound::Excluded(end)))
}

/// istiod's `endpointHealthStatus`: ready unset or true → healthy; serving
/// and terminating → draining; anything else is not served.
fn health(c: &Conditions) -> Option<Health> {
    match (c.ready, c.serving, c.terminating) {
        (None | Some(true), _, _) => Some(Health::Healthy),
        (_, Some(true), Some(true)) => Some(Health::Draining),
        _ => None,
    }
}

/// Locality labels istiod reads of a Node (`getPodLocality`).
const REGION: &str = "topology.kubernetes.io/region";
const ZONE: &str = "topology.kubernetes.io/zone";
const SUBZONE: &str = "topology.istio.io/subzone";

pub fn labels_of(body: &Value) -> BTreeMap<String, String> {
    body.pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|l| l.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
        .unwrap_or_default()
}

/// The Kubernetes service `namespace/name` across every cluster, or `None`
/// if no cluster has its Service. `slices` are the EndpointSlices naming it.
pub fn kube_service(
    state: &State,
    namespace: &str,
    name: &str,
    slices: &BTreeSet<ResourceKey>,
    domain_suffix: &str,
    warn: &mut dyn FnMut(&ResourceKey, String),
) -> Option<Service> {
    let mut svc = Service {
        host: kube_host(namespace, name, domain_suffix),
        namespace: namespace.into(),
        name: name.into(),
        ..Service::default()
    };
    svc.service_inputs.scope(state, &scope::service(namespace, name));
    let mut by_port: BTreeMap<u32, ServicePort> = BTreeMap::new();
    for (key, entry) in every_cluster(state, "", "Service", namespace, name) {
        svc.service_inputs.saw(key, entry.version);
        let Ok(parsed) = serde_json::from_slice::<KubeService>(entry.body.json()) else {
            warn(key, "spec.ports is not a list of ports; the Service is ignored".into());
            continue;
        };
        for p in parsed.spec.ports {
            if p.protocol.as_deref().is_some_and(|p| !p.eq_ignore_ascii_case("TCP")) {
                continue; // UDP and SCTP have no Envoy listener here
            }
            by_port.entry(p.port).or_insert(ServicePort {
                protocol: Protocol::of(&p.name, p.app_protocol.as_deref()),
                name: p.name,
                port: p.port,
            });
        }
    }
    if svc.service_inputs.read.is_empty() {
        return None;
    }
    svc.ports = by_port.into_values().collect();
    svc.endpoint_inputs = svc.service_inputs.clone();
    svc.endpoint_inputs.scope(state, &scope::slices(namespace, name));
    for key in slices {
        let Some(entry) = state.resources.get(key) else { continue };
        svc.endpoint_inputs.saw(key, entry.version);
        let Ok(slice) = serde_json::from_slice::<Slice>(entry.body.json()) else {
            warn(key, "not a readable EndpointSlice; its endpoints are not served".into());
            continue;
        };
        if slice.address_type != "IPv4" && slice.address_type != "IPv6" {
            continue; // FQDN slices are not endpoints Envoy can dial by address
        }
        endpoints_of(state, key, &slice, &mut svc);
    }
    svc.endpoints.sort();
    svc.endpoints.dedup_by(|a, b| a.address == b.address && a.port == b.port && a.service_port == b.service_port);
    Some(svc)
}

fn endpoints_of(state: &State, key: &ResourceKey, slice: &Slice, svc: &mut Service) {
    let cluster = key.cluster.as_str();
    for ep in &slice.endpoints {
        let Some(health) = health(&ep.conditions) else { continue };
        let mut labels = BTreeMap::new();
        let mut locality = Locality { zone: ep.zone.clone().unwrap_or_default(), ..Locality::default() };
        let mut sub_zone = None;
        if let Some(target) = ep.target_ref.as_ref().filter(|t| t.kind == "Pod") {
            let ns = target.namespace.as_deref().unwrap_or(&key.namespace);
            let pod = ResourceKey::new("", "Pod", ns, &target.name).in_cluster(cluster);
            match state.resources.get(&pod) {
                Some(entry) => {
                    svc.endpoint_inputs.saw(&pod, entry.version);
                    labels = labels_of(&entry.body.to_value());
                    // istiod: a pod's own `istio-locality` label (region.zone.subzone) wins.
                    if let Some(l) = labels.get("istio-locality") {
                        let mut parts = l.split('.').map(str::to_string);
                        locality.region = parts.next().unwrap_or_default();
                        locality.zone = parts.next().unwrap_or_default();
                        sub_zone = parts.next();
                    }
                }
                None => {
                    svc.endpoint_inputs.scope(state, &scope::pods(ns));
                    svc.endpoint_inputs.missed(pod);
                }
            }
        }
        if let Some(node_name) = ep.node_name.as_deref() {
            let node = ResourceKey::new("", "Node", "", node_name).in_cluster(cluster);
            match state.resources.get(&node) {
                Some(entry) => {
                    svc.endpoint_inputs.saw(&node, entry.version);
                    let node_labels = labels_of(&entry.body.to_value());
                    if let Some(r) = node_labels.get(REGION) {
                        locality.region = r.clone();
                    }
                    if let Some(z) = node_labels.get(ZONE) {
                        locality.zone = z.clone();
                    }
                    sub_zone = sub_zone.or_else(|| node_labels.get(SUBZONE).cloned());
                }
                None => {
                    svc.endpoint_inputs.scope(state, scope::NODES);
                    svc.endpoint_inputs.missed(node);
                }
            }
        }
        // The Keelson cluster the endpoint was read from is its sub-zone,
        // so localities of two clusters never merge.
        locality.sub_zone = sub_zone.unwrap_or_else(|| cluster.to_string());
        for port in svc.ports.iter() {
            let slice_port = slice.ports.as_deref().unwrap_or_default().iter().find(|p| {
                p.name.as_deref().unwrap_or_default() == port.name
                    || (svc.ports.len() == 1 && slice.ports.as_ref().is_some_and(|ps| ps.len() == 1))
            });
            let Some(number) = slice_port.and_then(|p| p.port) else { continue };
            for address in &ep.addresses {
                svc.endpoints.push(Endpoint {
                    locality: locality.clone(),
                    address: address.clone(),
                    service_port: port.port,
                    port: number,
                    health,
                    labels: labels.clone(),
                    weight: 1,
                });
            }
        }
    }
}
