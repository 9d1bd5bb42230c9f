//! The merged registry for istiods over MCP (`[translate] mcp_registry`):
//! every Kubernetes service, its endpoints of every cluster merged, as one
//! ServiceEntry with a `workloadSelector` and one WorkloadEntry per
//! endpoint address, carrying its locality and pod labels. An istiod that
//! takes its config from Keelson (MCP over xDS) then sees the services of
//! every cluster with their localities, and no cluster needs another's
//! credentials (istiod's remote secrets). istiod turns them back into
//! services with `serviceentry/conversion.go`, the reverse of this.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::model::{Endpoint, Health, Protocol, Registry, Service};
use super::unit::Derived;
use crate::event::ResourceKey;

pub const GROUP: &str = "networking.istio.io";
/// The label a derived ServiceEntry selects its WorkloadEntries by.
pub const SERVICE_LABEL: &str = "keelson.dev/service";

/// Names of derived objects: `keelson-<service>` for the ServiceEntry (a
/// prefix no Kubernetes controller uses, so no raw object collides by
/// accident; one that does is shadowed and reported like any other).
pub fn entry_name(service: &str) -> String {
    format!("keelson-{service}")
}

/// A WorkloadEntry's name: the service, the Keelson cluster the endpoint
/// came from and its address, as a DNS-1123 name.
fn workload_name(service: &str, cluster: &str, address: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect()
    };
    match cluster {
        "" => format!("keelson-{service}-{}", clean(address)),
        c => format!("keelson-{service}-{}-{}", clean(c), clean(address)),
    }
}

/// Istio's protocol names (`protocol.Instance`).
fn protocol(p: Protocol) -> &'static str {
    match p {
        Protocol::Http => "HTTP",
        Protocol::Http2 => "HTTP2",
        Protocol::Grpc => "GRPC",
        Protocol::Tcp => "TCP",
    }
}

/// The ServiceEntry and WorkloadEntries of one Kubernetes service.
/// Draining endpoints are left out: a WorkloadEntry has no draining state,
/// and new connections must not reach them.
pub fn objects(svc: &Service) -> Vec<Derived> {
    if svc.registry != Registry::Kubernetes {
        return Vec::new(); // ServiceEntries reach istiod as themselves
    }
    let port_name = |number: u32| {
        let p = svc.ports.iter().find(|p| p.port == number);
        p.map(|p| p.name.clone()).filter(|n| !n.is_empty()).unwrap_or_else(|| format!("port-{number}"))
    };
    let ports: Vec<Value> = svc
        .ports
        .iter()
        .map(|p| json!({ "number": p.port, "name": port_name(p.port), "protocol": protocol(p.protocol) }))
        .collect();
    let entry = json!({
        "hosts": [svc.host],
        "location": "MESH_INTERNAL",
        "resolution": "STATIC",
        "ports": ports,
        "workloadSelector": { "labels": { SERVICE_LABEL: svc.name } },
    });
    let mut out = vec![Derived::new(
        key("ServiceEntry", &svc.namespace, &entry_name(&svc.name)),
        entry,
        svc.service_inputs.clone(),
    )];
    // A workload per (cluster, address), its ports by name, as a pod is.
    // Endpoints that share an address but not labels, or that give one port
    // two numbers (workloads on one host, told apart by port), are workloads
    // of their own, numbered in endpoint order.
    let mut workloads: BTreeMap<(&str, &str), Vec<(Value, &Endpoint)>> = BTreeMap::new();
    for e in svc.endpoints.iter().filter(|e| e.health == Health::Healthy) {
        let groups = workloads.entry((e.locality.sub_zone.as_str(), e.address.as_str())).or_default();
        let name = port_name(e.service_port);
        let fits = |(ports, first): &(Value, &Endpoint)| {
            first.labels == e.labels && ports.get(&name).is_none_or(|p| *p == json!(e.port))
        };
        match groups.iter_mut().find(|g| fits(g)) {
            Some((ports, _)) => ports[&name] = json!(e.port),
            None => groups.push((json!({ name: e.port }), e)),
        }
    }
    let groups = workloads.into_iter().flat_map(|((cluster, address), groups)| {
        groups.into_iter().enumerate().map(move |(i, g)| (cluster, address, i, g))
    });
    for (cluster, address, i, (ports, e)) in groups {
        let mut labels = e.labels.clone();
        labels.insert(SERVICE_LABEL.into(), svc.name.clone());
        let l = &e.locality;
        let spec = json!({
            "address": address,
            "ports": ports,
            "labels": labels,
            "locality": format!("{}/{}/{}", l.region, l.zone, l.sub_zone),
            "weight": e.weight.max(1),
        });
        let name = match i {
            0 => workload_name(&svc.name, cluster, address),
            n => format!("{}-{n}", workload_name(&svc.name, cluster, address)),
        };
        out.push(Derived::new(key("WorkloadEntry", &svc.namespace, &name), spec, svc.endpoint_inputs.clone()));
    }
    out
}

fn key(kind: &str, namespace: &str, name: &str) -> ResourceKey {
    ResourceKey::new(GROUP, kind, namespace, name)
}
