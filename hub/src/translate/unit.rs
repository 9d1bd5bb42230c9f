//! One host's derived resources: its clusters, endpoints, proxyless gRPC
//! listener and route, and the sidecar virtual host it adds to each port's
//! routes. Everything here reads the state and nothing else, so a unit
//! built twice from one state is the same bytes.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde_json::{Value, json};

use super::cluster::{self, cluster_name};
use super::model::{self, Inputs, Protocol, Registry, Resolution, Service};
use super::policy::{self, Warn};
use super::visibility::Visible;
use super::{TranslateConfig, grpc, listener, mcp_registry, route, scope, service_entry};
use crate::event::ResourceKey;
use crate::kinds::ENVOY_GROUP;
use crate::state::Clients;
use crate::state::State;

/// A derived resource before encoding.
pub struct Derived {
    pub key: ResourceKey,
    pub spec: Value,
    pub inputs: Inputs,
    /// Served only to clients that ask for it by name (gRPC API listeners:
    /// an Envoy asking for every listener must not get them).
    pub by_name: bool,
    /// For the per-port tables: the virtual hosts (or services) gathered,
    /// shown instead of every input key.
    pub gathers: Option<Arc<serde_json::value::RawValue>>,
    /// The message, already encoded (the per-port route table is built
    /// from its virtual hosts' bytes rather than transcoded whole).
    pub encoded: Option<bytes::Bytes>,
    /// Who sees it when a Sidecar scopes a namespace.
    pub visible: Visible,
    /// Which kind of client gets it (a cluster's gRPC form, crate::translate::grpc).
    pub clients: Clients,
}

impl Derived {
    pub fn new(key: ResourceKey, spec: Value, inputs: Inputs) -> Self {
        Derived {
            key,
            spec,
            inputs,
            by_name: false,
            gathers: None,
            encoded: None,
            visible: Visible::All,
            clients: Clients::All,
        }
    }
}

/// A sidecar virtual host for one port, gathered into that port's routes.
#[derive(Clone, Debug, PartialEq)]
pub struct VirtualHost {
    pub name: Arc<str>,
    /// `envoy.config.route.v3.VirtualHost`, encoded once per change.
    pub encoded: bytes::Bytes,
    /// Its inputs' version (the keys are the unit's route table's).
    pub version: u64,
}

pub struct Built {
    pub ports: Vec<(u32, Protocol)>,
    pub resources: Vec<Derived>,
    pub vhosts: BTreeMap<u32, VirtualHost>,
    /// Warnings per input object.
    pub warnings: BTreeMap<ResourceKey, Vec<String>>,
    /// Every key read (present or not), for the translator's index.
    pub consulted: BTreeSet<ResourceKey>,
    pub service_version: u64,
    pub host: String,
    pub namespace: String,
    /// What was rebuilt: more than asked when endpoints live in clusters
    /// (a DNS-resolved ServiceEntry's endpoints are inline).
    pub rebuilt: Rebuild,
}

fn key(kind: &str, name: &str) -> ResourceKey {
    ResourceKey::new(ENVOY_GROUP, kind, "", name)
}

/// The Istio object of `kind` (DestinationRule, VirtualService) that
/// applies to `svc`, among `candidates` (the objects aimed at its target):
/// one in the service's own namespace first, then the oldest (istiod
/// prefers the older of two conflicting objects). The others are warned about.
fn pick<'a>(
    state: &'a State,
    kind: &str,
    candidates: &BTreeSet<ResourceKey>,
    svc: &Service,
    cfg: &TranslateConfig,
    warnings: &mut BTreeMap<ResourceKey, Vec<String>>,
) -> Option<(ResourceKey, Value, u64)> {
    let mut found: Vec<(bool, std::time::SystemTime, &ResourceKey, &'a crate::ResourceEntry)> = Vec::new();
    for k in candidates {
        let Some(e) = state.resources.get(k) else { continue };
        let body = e.body.to_value();
        let hosts: Vec<String> = match kind {
            "DestinationRule" => {
                body.pointer("/spec/host").and_then(Value::as_str).map(String::from).into_iter().collect()
            }
            _ => body
                .pointer("/spec/hosts")
                .and_then(Value::as_array)
                .map(|h| h.iter().filter_map(|h| h.as_str().map(String::from)).collect())
                .unwrap_or_default(),
        };
        if kind == "VirtualService" && !bound_to_mesh(&body) {
            continue;
        }
        if hosts.iter().any(|h| resolves_to(h, &k.namespace, &svc.host, cfg)) {
            found.push((k.namespace != svc.namespace, e.created_at, k, e));
        }
    }
    found.sort_by(|a, b| (a.0, a.1, a.2).cmp(&(b.0, b.1, b.2)));
    let (_, _, chosen, entry) = found.first()?;
    for (_, _, other, _) in &found[1..] {
        warnings.entry((*other).clone()).or_default().push(format!(
            "{kind} {chosen} also applies to host {}; only that one is used (it is in the service's namespace or older)",
            svc.host
        ));
    }
    let spec = entry.body.to_value().get("spec").cloned().unwrap_or(Value::Null);
    Some(((*chosen).clone(), spec, entry.version))
}

/// Does a VirtualService apply to sidecars (`gateways` empty or `mesh`)?
fn bound_to_mesh(body: &Value) -> bool {
    match body.pointer("/spec/gateways").and_then(Value::as_array) {
        None => true,
        Some(g) => g.is_empty() || g.iter().any(|g| g == "mesh"),
    }
}

/// Does `host`, written in an object of `namespace`, name `fqdn`? Short
/// names resolve in the object's namespace; `*` and `*.suffix` match by suffix.
pub fn resolves_to(host: &str, namespace: &str, fqdn: &str, cfg: &TranslateConfig) -> bool {
    if host == "*" {
        return true;
    }
    if let Some(suffix) = host.strip_prefix('*') {
        return fqdn.ends_with(suffix);
    }
    resolve(host, namespace, cfg) == fqdn
}

/// istiod's `ResolveShortnameToFQDN`.
pub fn resolve(host: &str, namespace: &str, cfg: &TranslateConfig) -> String {
    if host.contains('.') || host == "*" {
        host.to_string()
    } else {
        model::kube_host(namespace, host, &cfg.domain_suffix)
    }
}

/// The domains of a sidecar virtual host (istiod's
/// `generateVirtualHostDomains`): the FQDN and its shorter forms within the
/// namespace, each also with `:port`. The bare name is added only when no
/// other namespace has a service of that name, since one route table is
/// shared by every proxy.
fn domains(svc: &Service, port: u32, bare_unique: bool) -> Vec<String> {
    if svc.registry == Registry::ServiceEntry {
        return vec![svc.host.clone(), format!("{}:{port}", svc.host)];
    }
    let mut names = vec![
        svc.host.clone(),
        format!("{}.{}.svc", svc.name, svc.namespace),
        format!("{}.{}", svc.name, svc.namespace),
    ];
    if bare_unique {
        names.push(svc.name.clone());
    }
    names.iter().flat_map(|n| [n.clone(), format!("{n}:{port}")]).collect()
}

/// What a change can alter in a unit, by the kind of input it touched: an
/// endpoint change (EndpointSlice, Pod, Node) alters only endpoints, a
/// VirtualService (or a route's destination) only routes; anything else all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rebuild {
    Endpoints,
    Routes,
    All,
}

impl Rebuild {
    pub fn and(self, other: Rebuild) -> Rebuild {
        if self == other { self } else { Rebuild::All }
    }

    /// Does a rebuild of this extent recompute resources of `kind`?
    pub fn covers(self, kind: &str) -> bool {
        match self {
            Rebuild::All => true,
            Rebuild::Endpoints => kind == "ClusterLoadAssignment" || kind == "WorkloadEntry",
            Rebuild::Routes => kind == "RouteConfiguration",
        }
    }
}

/// Where a unit's service is declared, and what the translator indexed for it.
pub enum Declared<'a> {
    /// The Kubernetes service `namespace/name` and the EndpointSlices naming it.
    Kube { namespace: &'a str, name: &'a str, slices: &'a BTreeSet<ResourceKey> },
    /// A host and the ServiceEntries that list it.
    Entries { host: &'a str, declarers: &'a BTreeSet<ResourceKey> },
}

pub struct Lookups<'a> {
    pub declared: Declared<'a>,
    pub rules: &'a BTreeSet<ResourceKey>,
    pub routes: &'a BTreeSet<ResourceKey>,
    /// Namespaces that have a service of this service's name.
    pub namespaces_with_name: usize,
}

/// Builds the unit of one service; `None` when nothing declares it any more.
pub fn build(state: &State, l: &Lookups<'_>, cfg: &TranslateConfig, what: Rebuild) -> Option<Built> {
    let mut warnings: BTreeMap<ResourceKey, Vec<String>> = BTreeMap::new();
    let svc = {
        let mut warn = |k: &ResourceKey, m: String| warnings.entry(k.clone()).or_default().push(m);
        match l.declared {
            Declared::Kube { namespace, name, slices } => {
                model::kube_service(state, namespace, name, slices, &cfg.domain_suffix, &mut warn)?
            }
            Declared::Entries { host, declarers } => service_entry::entry_service(state, host, declarers, &mut warn)?,
        }
    };
    let (namespace, name) = (svc.namespace.as_str(), svc.name.as_str());
    let target = match l.declared {
        Declared::Kube { namespace, name, .. } => scope::host_target(namespace, name),
        Declared::Entries { host, .. } => host.to_string(),
    };
    // Endpoints inline in a cluster are rebuilt with it.
    let what = if svc.resolution == Resolution::Endpoints || what != Rebuild::Endpoints { what } else { Rebuild::All };
    let mut rule_inputs = Inputs::default();
    rule_inputs.scope(state, &scope::rules(&target));
    rule_inputs.scope(state, &scope::rules("*"));
    let rule = pick(state, "DestinationRule", l.rules, &svc, cfg, &mut warnings);
    if let Some((k, _, v)) = &rule {
        rule_inputs.saw(k, *v);
    }
    let mut route_inputs = Inputs::default();
    route_inputs.scope(state, &scope::routes(&target));
    route_inputs.scope(state, &scope::routes("*"));
    let vs = pick(state, "VirtualService", l.routes, &svc, cfg, &mut warnings);
    if let Some((k, _, v)) = &vs {
        route_inputs.saw(k, *v);
    }
    let mut rule_warn = Warn::default();
    let mut route_warn = Warn::default();
    let top = rule.as_ref().and_then(|(_, spec, _)| spec.get("trafficPolicy"));
    let subsets: Vec<(String, BTreeMap<String, String>, Option<&Value>)> = rule
        .as_ref()
        .and_then(|(_, spec, _)| spec.get("subsets")?.as_array())
        .into_iter()
        .flatten()
        .filter_map(|s| {
            let name = s.get("name")?.as_str()?.to_string();
            let labels = s
                .get("labels")
                .and_then(Value::as_object)
                .map(|l| l.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
                .unwrap_or_default();
            Some((name, labels, s.get("trafficPolicy")))
        })
        .collect();
    if let Some((_, spec, _)) = &rule {
        rule_warn.unknown_fields(spec, "spec", &["host", "trafficPolicy", "subsets", "exportTo"]);
    }

    let mut out = Vec::new();
    let mut vhosts = BTreeMap::new();
    let cluster_inputs = svc.service_inputs.merged(&rule_inputs);
    let subset_endpoint_inputs = svc.endpoint_inputs.merged(&rule_inputs);
    let extra_route_inputs = RefCell::new(Inputs::default());
    let hash_for_host = |cluster: &str| {
        let policy = rule.as_ref()?.1.get("trafficPolicy")?;
        cluster.ends_with(&format!("|{}", svc.host)).then(|| policy::hash_policy(policy)).flatten()
    };
    for port in &svc.ports {
        let p = port.port;
        let main = cluster_name(p, "", &svc.host);
        if what.covers("Cluster") {
            let policy = policy::effective(top, None, p);
            let spec = cluster::cluster(&main, &svc, port, &BTreeMap::new(), policy.as_ref(), &mut rule_warn);
            out.push(Derived::new(key("Cluster", &main), spec, cluster_inputs.clone()));
        }
        let eds = svc.resolution == Resolution::Endpoints;
        if eds && what.covers("ClusterLoadAssignment") {
            let cla = cluster::load_assignment(&main, &svc, p, &BTreeMap::new());
            out.push(Derived::new(key("ClusterLoadAssignment", &main), cla, svc.endpoint_inputs.clone()));
        }
        for (subset, labels, subset_policy) in &subsets {
            let name = cluster_name(p, subset, &svc.host);
            if what.covers("Cluster") {
                let policy = policy::effective(top, *subset_policy, p);
                let spec = cluster::cluster(&name, &svc, port, labels, policy.as_ref(), &mut rule_warn);
                out.push(Derived::new(key("Cluster", &name), spec, cluster_inputs.clone()));
            }
            if eds && what.covers("ClusterLoadAssignment") {
                let cla = cluster::load_assignment(&name, &svc, p, labels);
                out.push(Derived::new(key("ClusterLoadAssignment", &name), cla, subset_endpoint_inputs.clone()));
            }
        }
        if !port.protocol.is_http() || !what.covers("RouteConfiguration") {
            continue;
        }
        let vs_spec = vs.as_ref().map(|(_, spec, _)| spec);
        let vs_ns = vs.as_ref().map_or(namespace, |(k, _, _)| k.namespace.as_str()).to_string();
        let resolve_dest = |host: &str| {
            let fqdn = resolve(host, &vs_ns, cfg);
            if fqdn == svc.host {
                return (fqdn, Some(p));
            }
            // Another Kubernetes service: its only port, if it has one.
            let only = fqdn
                .strip_suffix(&format!(".svc.{}", cfg.domain_suffix))
                .and_then(|n| n.split_once('.'))
                .and_then(|(n, ns)| {
                    let mut ports = BTreeSet::new();
                    for (k, e) in model::every_cluster(state, "", "Service", ns, n) {
                        extra_route_inputs.borrow_mut().saw(k, e.version);
                        for port in
                            e.body.to_value().pointer("/spec/ports").and_then(Value::as_array).into_iter().flatten()
                        {
                            ports.extend(port.get("port").and_then(Value::as_u64).and_then(|p| u32::try_from(p).ok()));
                        }
                    }
                    (ports.len() == 1).then(|| ports.into_iter().next()).flatten()
                });
            (fqdn, only)
        };
        let route_for = |grpc: bool, warn: &mut Warn| {
            let cx = route::Context {
                port: p,
                namespace: &vs_ns,
                grpc,
                resolve: &resolve_dest,
                hash_policy: &hash_for_host,
            };
            route::routes(vs_spec, &main, &cx, warn)
        };
        let sidecar_routes = route_for(false, &mut route_warn);
        let grpc_routes = route_for(true, &mut Warn::default());
        let mut inputs =
            svc.service_inputs.merged(&route_inputs).merged(&rule_inputs).merged(&extra_route_inputs.borrow());
        if svc.registry == Registry::Kubernetes {
            // The bare domain depends on whether another namespace has this name.
            inputs.scope(state, &scope::service_name(name));
        }
        let vhost_name = format!("{}:{p}", svc.host);
        let vhost = json!({ "name": vhost_name, "domains": domains(&svc, p, l.namespaces_with_name <= 1), "routes": sidecar_routes });
        match crate::transcode::encode_json("envoy.config.route.v3.VirtualHost", &vhost) {
            Ok(encoded) => {
                vhosts
                    .insert(p, VirtualHost { name: Arc::from(vhost_name.as_str()), encoded, version: inputs.version });
            }
            Err(e) => route_warn
                .messages
                .push(format!("the virtual host {vhost_name} cannot be encoded, so it is not served: {e}")),
        }
        let grpc_vhost = json!({ "name": vhost_name, "domains": [format!("{}:{p}", svc.host), svc.host.clone()], "routes": grpc_routes });
        let route_config = json!({ "name": main, "virtual_hosts": [grpc_vhost] });
        out.push(Derived {
            by_name: true,
            ..Derived::new(key("RouteConfiguration", &main), route_config, inputs.clone())
        });
        if !what.covers("Listener") {
            continue;
        }
        let api_name = format!("{}:{p}", svc.host);
        let api = listener::grpc_api(&api_name, &main);
        out.push(Derived {
            by_name: true,
            ..Derived::new(key("Listener", &api_name), api, svc.service_inputs.clone())
        });
    }
    if let Some((k, _, _)) = &rule {
        warnings.entry(k.clone()).or_default().extend(rule_warn.messages);
    }
    if let Some((k, _, _)) = &vs {
        warnings.entry(k.clone()).or_default().extend(route_warn.messages);
    }
    warnings.retain(|_, m| !m.is_empty());
    for m in warnings.values_mut() {
        m.sort();
        m.dedup();
    }
    // Clusters proxyless gRPC would reject get a form it takes, same name.
    let mut forms = Vec::new();
    for d in out.iter_mut().filter(|d| d.key.kind == "Cluster") {
        if let Some(spec) = grpc::cluster_form(&d.spec) {
            d.clients = Clients::NotGrpc;
            let key = ResourceKey::new(ENVOY_GROUP, "Cluster", grpc::NAMESPACE, &d.key.name);
            forms.push(Derived { clients: Clients::GrpcOnly, ..Derived::new(key, spec, d.inputs.clone()) });
        }
    }
    out.extend(forms);
    if cfg.mcp_registry {
        let objects = mcp_registry::objects(&svc);
        out.extend(objects.into_iter().filter(|d| what.covers(&d.key.kind)));
    }
    let mut consulted = BTreeSet::new();
    let visible = Visible::Host(Arc::from(svc.host.as_str()));
    for d in &mut out {
        d.visible = visible.clone();
        consulted.extend(d.inputs.read.iter().cloned());
        consulted.extend(d.inputs.missing.iter().cloned());
    }
    Some(Built {
        rebuilt: what,
        host: svc.host.clone(),
        namespace: svc.namespace.clone(),
        service_version: svc.service_inputs.version,
        ports: svc.ports.iter().map(|p| (p.port, p.protocol)).collect(),
        resources: out,
        vhosts,
        warnings,
        consulted,
    })
}
