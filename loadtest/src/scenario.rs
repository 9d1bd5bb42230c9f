//! Scenarios: the resources a run creates first (so it runs against any
//! config), and the change it makes every interval. Every object is named
//! `lt-…`, so a run never touches anything else.

use serde_json::{Value, json};

use crate::proxy::Kind;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScenarioKind {
    /// `endpoints` endpoints of one service change every interval.
    EdsChurn,
    /// A cluster is added, then removed, in turns.
    CdsChurn,
    /// The route changes.
    RdsChange,
    /// Every resource of the scenario changes at once (CDS, EDS, LDS, RDS).
    FullChange,
    /// For simulated istiods (`--mode mcp`): VirtualServices,
    /// DestinationRules and ServiceEntries, and one VirtualService edited
    /// per change.
    IstioChurn,
}

impl ScenarioKind {
    pub fn name(self) -> &'static str {
        match self {
            ScenarioKind::EdsChurn => "eds-churn",
            ScenarioKind::CdsChurn => "cds-churn",
            ScenarioKind::RdsChange => "rds-change",
            ScenarioKind::FullChange => "full-change",
            ScenarioKind::IstioChurn => "istio-churn",
        }
    }

    /// The types a change of this scenario must reach (peer mode watches these).
    pub fn kinds(self) -> &'static [Kind] {
        match self {
            ScenarioKind::EdsChurn => &[Kind::Eds],
            ScenarioKind::CdsChurn => &[Kind::Cds],
            ScenarioKind::RdsChange => &[Kind::Rds],
            ScenarioKind::FullChange => &[Kind::Cds, Kind::Eds, Kind::Lds, Kind::Rds],
            ScenarioKind::IstioChurn => &[Kind::VirtualService],
        }
    }
}

/// One API call of a change or a setup.
#[derive(Clone, Debug)]
pub enum Step {
    Put(Kind, Value),
    Delete(Kind, Value),
}

#[derive(Clone, Debug)]
pub struct Scenario {
    pub kind: ScenarioKind,
    /// Services (clusters with endpoints) created by the setup.
    pub services: usize,
    /// Endpoints per service.
    pub endpoints: usize,
    /// Istio objects the istio-churn setup creates.
    pub istio: IstioObjects,
}

/// How many Istio objects of each kind (`istio-churn`).
#[derive(Clone, Copy, Debug, Default)]
pub struct IstioObjects {
    pub virtual_services: usize,
    pub destination_rules: usize,
    pub service_entries: usize,
}

/// The namespace every Istio object of a scenario lives in.
pub const ISTIO_NAMESPACE: &str = "lt";

fn istio(kind: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "networking.istio.io/v1", "kind": kind,
        "metadata": {"name": name, "namespace": ISTIO_NAMESPACE}, "spec": spec})
}

fn service_host(i: usize) -> String {
    format!("lt-svc-{i}.{ISTIO_NAMESPACE}.svc.cluster.local")
}

/// VirtualService `lt-vs-<i>`: one HTTP route to its host. `generation`
/// names the route, so every edit is a real change.
pub fn virtual_service(i: usize, generation: u64) -> Value {
    let host = service_host(i);
    istio(
        "VirtualService",
        &format!("lt-vs-{i}"),
        json!({"hosts": [host], "http": [{"name": format!("g{generation}"), "route": [{"destination": {"host": host}}]}]}),
    )
}

fn destination_rule(i: usize) -> Value {
    istio(
        "DestinationRule",
        &format!("lt-dr-{i}"),
        json!({"host": service_host(i), "trafficPolicy": {"loadBalancer": {"simple": "LEAST_REQUEST"}}}),
    )
}

fn service_entry(i: usize) -> Value {
    istio(
        "ServiceEntry",
        &format!("lt-se-{i}"),
        json!({"hosts": [format!("lt-ext-{i}.example.com")], "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
            "resolution": "DNS", "location": "MESH_EXTERNAL"}),
    )
}

fn envoy(kind: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "xds.keelson.dev/v1", "kind": kind, "metadata": {"name": name}, "spec": spec})
}

fn cluster(name: &str, timeout_ms: u64) -> Value {
    envoy(
        "Cluster",
        name,
        json!({"name": name, "type": "EDS", "connect_timeout": format!("{}s", timeout_ms as f64 / 1000.0),
            "eds_cluster_config": {"eds_config": {"ads": {}, "resource_api_version": "V3"}}}),
    )
}

/// `count` endpoints on 10.x.y.z; `generation` moves their ports so every
/// change is a real change.
fn endpoints(name: &str, count: usize, generation: u64) -> Value {
    let lb: Vec<Value> = (0..count)
        .map(|i| {
            let port = 1024 + (generation as usize * 7 + i) % 60_000;
            json!({"endpoint": {"address": {"socket_address": {"address": format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255), "port_value": port}}}})
        })
        .collect();
    envoy(
        "ClusterLoadAssignment",
        name,
        json!({"cluster_name": name, "endpoints": [{"locality": {"zone": "z1"}, "load_balancing_weight": 1, "lb_endpoints": lb}]}),
    )
}

fn listener(generation: u64) -> Value {
    envoy(
        "Listener",
        "lt-listener",
        json!({"name": "lt-listener", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 10999}},
            "filter_chains": [{"filters": [{"name": "hcm", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": format!("lt{generation}"),
                "rds": {"route_config_name": "lt-route", "config_source": {"ads": {}, "resource_api_version": "V3"}},
                "http_filters": [{"name": "router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]}]}),
    )
}

fn route(generation: u64, services: usize) -> Value {
    let target = format!("lt-svc-{}", generation as usize % services.max(1));
    envoy(
        "RouteConfiguration",
        "lt-route",
        json!({"name": "lt-route", "virtual_hosts": [{"name": "lt", "domains": ["*"],
            "routes": [{"name": format!("g{generation}"), "match": {"prefix": "/"}, "route": {"cluster": target}}]}]}),
    )
}

impl Scenario {
    /// What the run creates before proxies connect.
    pub fn setup(&self) -> Vec<Step> {
        let mut steps = Vec::new();
        if self.kind == ScenarioKind::IstioChurn {
            let n = self.istio;
            steps.extend((0..n.service_entries).map(|i| Step::Put(Kind::ServiceEntry, service_entry(i))));
            steps.extend((0..n.destination_rules).map(|i| Step::Put(Kind::DestinationRule, destination_rule(i))));
            steps.extend((0..n.virtual_services).map(|i| Step::Put(Kind::VirtualService, virtual_service(i, 0))));
            return steps;
        }
        for s in 0..self.services.max(1) {
            let name = format!("lt-svc-{s}");
            // Endpoints before their cluster, so no cluster waits for them.
            steps.push(Step::Put(Kind::Eds, endpoints(&name, self.endpoints, 0)));
            steps.push(Step::Put(Kind::Cds, cluster(&name, 1000)));
        }
        steps.push(Step::Put(Kind::Rds, route(0, self.services)));
        steps.push(Step::Put(Kind::Lds, listener(0)));
        steps
    }

    /// The `n`th change (n from 1).
    pub fn change(&self, n: u64) -> Vec<Step> {
        let services = self.services.max(1);
        match self.kind {
            ScenarioKind::EdsChurn => {
                let name = format!("lt-svc-{}", n as usize % services);
                vec![Step::Put(Kind::Eds, endpoints(&name, self.endpoints, n))]
            }
            ScenarioKind::CdsChurn => {
                // Odd changes add lt-extra, even ones remove it.
                let extra = envoy(
                    "Cluster",
                    "lt-extra",
                    json!({"name": "lt-extra", "type": "STATIC", "connect_timeout": "1s",
                        "load_assignment": {"cluster_name": "lt-extra", "endpoints": [{"lb_endpoints": [
                            {"endpoint": {"address": {"socket_address": {"address": "10.9.9.9", "port_value": 1000 + (n % 1000)}}}}]}]}}),
                );
                if n % 2 == 1 { vec![Step::Put(Kind::Cds, extra)] } else { vec![Step::Delete(Kind::Cds, extra)] }
            }
            ScenarioKind::RdsChange => vec![Step::Put(Kind::Rds, route(n, services))],
            ScenarioKind::FullChange => {
                let mut steps = Vec::new();
                for s in 0..services {
                    let name = format!("lt-svc-{s}");
                    steps.push(Step::Put(Kind::Cds, cluster(&name, 1000 + n % 1000)));
                    steps.push(Step::Put(Kind::Eds, endpoints(&name, self.endpoints, n)));
                }
                steps.push(Step::Put(Kind::Rds, route(n, services)));
                steps.push(Step::Put(Kind::Lds, listener(n)));
                steps
            }
            ScenarioKind::IstioChurn => {
                let i = n as usize % self.istio.virtual_services.max(1);
                vec![Step::Put(Kind::VirtualService, virtual_service(i, n))]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn istio_churn(vs: usize, dr: usize, se: usize) -> Scenario {
        let istio = IstioObjects { virtual_services: vs, destination_rules: dr, service_entries: se };
        Scenario { kind: ScenarioKind::IstioChurn, services: 1, endpoints: 1, istio }
    }

    #[test]
    fn istio_churn_sets_up_every_object_and_edits_one_virtual_service_per_change() {
        let s = istio_churn(3, 2, 1);
        let setup = s.setup();
        let count = |k: Kind| setup.iter().filter(|st| matches!(st, Step::Put(kind, _) if *kind == k)).count();
        assert_eq!(
            (count(Kind::VirtualService), count(Kind::DestinationRule), count(Kind::ServiceEntry), setup.len()),
            (3, 2, 1, 6)
        );
        for step in &setup {
            let Step::Put(_, obj) = step else { panic!("setup only puts") };
            assert_eq!(obj["apiVersion"], "networking.istio.io/v1");
            assert_eq!(obj["metadata"]["namespace"], ISTIO_NAMESPACE);
            assert!(obj["metadata"]["name"].as_str().unwrap().starts_with("lt-"));
        }
        let Step::Put(_, se) = &setup[0] else { unreachable!() };
        assert_eq!(se["spec"]["resolution"], "DNS");
        assert_eq!(se["spec"]["ports"][0]["protocol"], "HTTP");
        // Change n edits lt-vs-<n % 3>; each edit of one object differs from its last.
        let edit = |n: u64| match s.change(n).as_slice() {
            [Step::Put(Kind::VirtualService, obj)] => obj.clone(),
            other => panic!("change {n}: {other:?}"),
        };
        assert_eq!(edit(4)["metadata"]["name"], "lt-vs-1");
        assert_ne!(edit(4)["spec"], edit(1)["spec"], "a real change every time");
        assert_ne!(edit(4)["spec"], virtual_service(1, 0)["spec"]);
        assert_eq!(edit(4)["spec"]["hosts"], json!(["lt-svc-1.lt.svc.cluster.local"]));
    }
}
