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
}

impl ScenarioKind {
    pub fn name(self) -> &'static str {
        match self {
            ScenarioKind::EdsChurn => "eds-churn",
            ScenarioKind::CdsChurn => "cds-churn",
            ScenarioKind::RdsChange => "rds-change",
            ScenarioKind::FullChange => "full-change",
        }
    }

    /// The types a change of this scenario must reach (peer mode watches these).
    pub fn kinds(self) -> &'static [Kind] {
        match self {
            ScenarioKind::EdsChurn => &[Kind::Eds],
            ScenarioKind::CdsChurn => &[Kind::Cds],
            ScenarioKind::RdsChange => &[Kind::Rds],
            ScenarioKind::FullChange => &[Kind::Cds, Kind::Eds, Kind::Lds, Kind::Rds],
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
        }
    }
}
