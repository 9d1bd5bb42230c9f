//! The translation stage against the rules it promises (DESIGN.md §9):
//! incremental translation equals a full one at every step, a version never
//! names two different bytes, an endpoint change touches only endpoints,
//! deleted inputs still move versions, and raw objects never silently
//! replace derived ones.

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use keelson_hub::translate::{Served, TranslateConfig};
use keelson_hub::{Event, Op, ResourceKey, SourceId, SourceKind, State};
use serde_json::{Value, json};

const HOST: &str = "reviews.default.svc.cluster.local";

fn object(v: Value) -> Op {
    let o = keelson_hub::object::parse_object(&v).unwrap_or_else(|e| panic!("{e}: {v}"));
    Op::Upsert {
        key: o.key,
        source_version: String::new(),
        body: o.body,
        location: String::new(),
        author: String::new(),
    }
}

fn service(name: &str, ports: &[(&str, u32)]) -> Op {
    let ports: Vec<Value> = ports.iter().map(|(n, p)| json!({ "name": n, "port": p })).collect();
    object(
        json!({ "apiVersion": "v1", "kind": "Service", "metadata": { "name": name, "namespace": "default" }, "spec": { "ports": ports } }),
    )
}

fn slice(name: &str, svc: &str, port: u32, pod: &str, ready: bool) -> Op {
    object(json!({ "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": { "name": name, "namespace": "default", "labels": { "kubernetes.io/service-name": svc } },
        "addressType": "IPv4", "ports": [{ "name": "http", "port": port }],
        "endpoints": [{ "addresses": ["127.0.0.1"], "conditions": { "ready": ready }, "zone": "z1",
                        "targetRef": { "kind": "Pod", "name": pod, "namespace": "default" } }] }))
}

fn pod(name: &str, version: &str) -> Op {
    object(
        json!({ "apiVersion": "v1", "kind": "Pod", "metadata": { "name": name, "namespace": "default", "labels": { "version": version } } }),
    )
}

fn rule() -> Op {
    object(
        json!({ "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": { "name": "reviews", "namespace": "default" },
        "spec": { "host": "reviews", "subsets": [{ "name": "v1", "labels": { "version": "v1" } }, { "name": "v2", "labels": { "version": "v2" } }] } }),
    )
}

fn routes(v1_weight: u32) -> Op {
    object(
        json!({ "apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": { "name": "reviews", "namespace": "default" },
        "spec": { "hosts": ["reviews"], "http": [{ "route": [
            { "destination": { "host": "reviews", "subset": "v1" }, "weight": v1_weight },
            { "destination": { "host": "reviews", "subset": "v2" }, "weight": 100 - v1_weight } ] }] } }),
    )
}

/// `op` as read from the Kubernetes cluster `cluster` (registry keys carry it).
fn in_cluster(cluster: &str, op: Op) -> Op {
    match op {
        Op::Upsert { key, source_version, body, location, author } => {
            Op::Upsert { key: key.in_cluster(cluster), source_version, body, location, author }
        }
        Op::Delete { key, source_version, author } => {
            Op::Delete { key: key.in_cluster(cluster), source_version, author }
        }
        other => other,
    }
}

fn node(name: &str, zone: &str) -> Op {
    object(json!({ "apiVersion": "v1", "kind": "Node", "metadata": { "name": name,
        "labels": { "topology.kubernetes.io/region": "r1", "topology.kubernetes.io/zone": zone } } }))
}

fn slice_on_node(name: &str, node: &str) -> Op {
    object(json!({ "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": { "name": name, "namespace": "default", "labels": { "kubernetes.io/service-name": "reviews" } },
        "addressType": "IPv4", "ports": [{ "name": "http", "port": 8003 }],
        "endpoints": [{ "addresses": ["127.0.0.2"], "nodeName": node, "conditions": { "serving": true, "terminating": true, "ready": false } }] }))
}

fn delete(group: &str, kind: &str, name: &str) -> Op {
    Op::Delete {
        key: ResourceKey::new(group, kind, "default", name),
        source_version: String::new(),
        author: String::new(),
    }
}

const PAY: &str = "payments.example.com";

/// A ServiceEntry `name` in `default` declaring `hosts` on port 80 (HTTP).
fn entry(name: &str, hosts: &[&str], resolution: &str, rest: Value) -> Op {
    let mut spec = json!({ "hosts": hosts, "resolution": resolution,
        "ports": [{ "number": 80, "name": "http", "protocol": "HTTP", "targetPort": 8080 }] });
    spec.as_object_mut().unwrap().extend(rest.as_object().unwrap().clone());
    object(json!({ "apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
        "metadata": { "name": name, "namespace": "default" }, "spec": spec }))
}

fn workload(name: &str, address: &str, labels: Value, weight: u32) -> Op {
    object(json!({ "apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry",
        "metadata": { "name": name, "namespace": "default" },
        "spec": { "address": address, "labels": labels, "locality": "r1/z1", "weight": weight, "ports": { "http": 9000 } } }))
}

fn pay_rule() -> Op {
    object(
        json!({ "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": { "name": "pay", "namespace": "default" },
        "spec": { "host": PAY, "subsets": [{ "name": "v1", "labels": { "version": "v1" } }, { "name": "v2", "labels": { "version": "v2" } }] } }),
    )
}

fn pay_routes() -> Op {
    object(
        json!({ "apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": { "name": "pay", "namespace": "default" },
        "spec": { "hosts": [PAY], "http": [{ "route": [{ "destination": { "host": PAY, "subset": "v2" } }] }] } }),
    )
}

fn selecting_entry() -> Op {
    entry(
        "payments",
        &[PAY, "*.wild.example.com", HOST],
        "STATIC",
        json!({ "workloadSelector": { "labels": { "app": "pay" } } }),
    )
}

/// A namespace-wide Sidecar of `namespace` importing `hosts`.
fn sidecar(namespace: &str, hosts: &[&str]) -> Op {
    object(json!({ "apiVersion": "networking.istio.io/v1", "kind": "Sidecar",
        "metadata": { "name": "default", "namespace": namespace }, "spec": { "egress": [{ "hosts": hosts }] } }))
}

fn derived(kind: &str, name: &str) -> ResourceKey {
    ResourceKey::new("xds.keelson.dev", kind, "", name)
}

/// Applies ops one by one, translating incrementally after each, and
/// returns the state, the incremental view and each step's changed keys.
struct Run {
    state: State,
    served: Served,
    seq: u64,
}

impl Run {
    fn new() -> Self {
        Run::with(TranslateConfig::default())
    }

    fn with(cfg: TranslateConfig) -> Self {
        let state = State::default();
        let served = Served::of(&state, &cfg);
        Run { state, served, seq: 0 }
    }

    fn apply(&mut self, op: Op) -> BTreeSet<ResourceKey> {
        self.seq += 1;
        let key = op.key().cloned().unwrap();
        let origin = SourceId::new(SourceKind::File, "f");
        self.state.apply(Event { seq: self.seq, at: SystemTime::UNIX_EPOCH, origin, op });
        self.served.update(&self.state, &BTreeSet::from([key]))
    }

    /// (version, encoded bytes, body hash) of every served resource.
    fn view(served: &Served) -> BTreeMap<ResourceKey, (u64, Vec<u8>, u128)> {
        served
            .resources()
            .iter()
            .map(|(k, e)| (k.clone(), (e.version, e.encoded.clone().unwrap_or_default().to_vec(), e.body.hash())))
            .collect()
    }
}

fn script() -> Vec<Op> {
    vec![
        pod("reviews-v1", "v1"),
        service("reviews", &[("http", 9080)]),
        slice("reviews-a", "reviews", 8001, "reviews-v1", true),
        rule(),
        slice("reviews-b", "reviews", 8002, "reviews-v2", true),
        pod("reviews-v2", "v2"),
        routes(80),
        service("ratings", &[("http", 9080), ("grpc", 9090)]),
        routes(50),
        in_cluster("east", service("reviews", &[("http", 9080)])),
        in_cluster("east", slice_on_node("reviews-east", "n1")),
        in_cluster("east", node("n1", "za")),
        in_cluster("east", node("n1", "zb")),
        in_cluster("east", delete("", "Node", "n1")),
        pod("reviews-v1", "v3"),
        slice("reviews-a", "reviews", 8001, "reviews-v1", false),
        slice("reviews-b", "ratings", 8002, "reviews-v2", true),
        delete("", "Pod", "reviews-v2"),
        delete("networking.istio.io", "VirtualService", "reviews"),
        delete("discovery.k8s.io", "EndpointSlice", "reviews-a"),
        service("reviews", &[("http", 9080), ("tcp-db", 5432)]),
        delete("networking.istio.io", "DestinationRule", "reviews"),
        delete("", "Service", "ratings"),
        delete("", "Service", "reviews"),
        in_cluster("east", delete("", "Service", "reviews")),
        // ServiceEntries and WorkloadEntries: a registry like the Kubernetes one.
        workload("pay-1", "10.0.0.1", json!({ "app": "pay", "version": "v1" }), 1),
        selecting_entry(),
        entry("api", &["api.example.com"], "DNS", json!({ "endpoints": [{ "address": "localhost" }] })),
        workload("pay-2", "10.0.0.2", json!({ "app": "pay", "version": "v2" }), 3),
        pay_rule(),
        sidecar("default", &["./api.example.com"]),
        pay_routes(),
        sidecar("other", &["default/*"]),
        workload("pay-1", "10.0.0.1", json!({ "app": "other" }), 1),
        delete("networking.istio.io", "WorkloadEntry", "pay-2"),
        entry(
            "payments-b",
            &[PAY],
            "STATIC",
            json!({ "endpoints": [{ "address": "10.0.1.1", "labels": { "version": "v1" } }] }),
        ),
        entry("payments", &[PAY], "STATIC", json!({ "endpoints": [{ "address": "10.0.0.9" }] })),
        delete("networking.istio.io", "ServiceEntry", "payments"),
        entry("api", &["api.example.com"], "NONE", json!({})),
        sidecar("default", &["*/*"]),
        delete("networking.istio.io", "Sidecar", "default"),
        delete("networking.istio.io", "DestinationRule", "pay"),
        delete("networking.istio.io", "ServiceEntry", "payments-b"),
        delete("networking.istio.io", "VirtualService", "pay"),
        delete("networking.istio.io", "ServiceEntry", "api"),
        delete("networking.istio.io", "WorkloadEntry", "pay-1"),
    ]
}

#[test]
fn incremental_translation_equals_a_full_one_and_a_version_always_means_the_same_bytes() {
    incremental_equals_full(TranslateConfig::default());
}

#[test]
fn the_mcp_registry_is_incremental_and_versioned_like_the_rest() {
    incremental_equals_full(TranslateConfig { mcp_registry: true, ..TranslateConfig::default() });
}

fn incremental_equals_full(cfg: TranslateConfig) {
    let mut run = Run::with(cfg.clone());
    let mut seen: BTreeMap<(ResourceKey, u64), Vec<u8>> = BTreeMap::new();
    let mut previous = Run::view(&run.served);
    for (step, op) in script().into_iter().enumerate() {
        let changed = run.apply(op);
        let incremental = Run::view(&run.served);
        let full = Run::view(&Served::of(&run.state, &cfg));
        let differ: Vec<String> = incremental
            .keys()
            .chain(full.keys())
            .filter(|k| incremental.get(*k) != full.get(*k))
            .map(|k| {
                format!(
                    "{k} (incremental v{:?}, full v{:?})",
                    incremental.get(k).map(|e| e.0),
                    full.get(k).map(|e| e.0)
                )
            })
            .collect();
        assert!(differ.is_empty(), "step {step}: incremental and full translation differ: {differ:#?}");
        let full_scopes = Served::of(&run.state, &cfg).visibilities();
        assert_eq!(run.served.visibilities(), full_scopes, "step {step}: visibilities differ");
        for (key, (version, bytes, _)) in &incremental {
            assert!(*version <= run.seq, "step {step}: {key} has version {version} beyond seq {}", run.seq);
            let earlier = seen.entry((key.clone(), *version)).or_insert_with(|| bytes.clone());
            assert_eq!(earlier, bytes, "step {step}: {key} version {version} names two different encodings");
            // Every resource whose bytes changed is in the change set.
            if previous.get(key).map(|p| &p.1) != Some(bytes) {
                assert!(changed.contains(key), "step {step}: {key} changed but was not reported");
            }
        }
        for key in previous.keys().filter(|k| !incremental.contains_key(*k)) {
            assert!(changed.contains(key), "step {step}: {key} was removed but not reported");
        }
        previous = incremental;
    }
    assert!(previous.keys().all(|k| k.group != "xds.keelson.dev"), "every derived resource is gone with its services");
}

#[test]
fn an_endpoint_change_rebuilds_only_that_services_endpoints() {
    let mut run = Run::new();
    for op in script().into_iter().take(8) {
        run.apply(op);
    }
    let changed = run.apply(slice("reviews-a", "reviews", 8001, "reviews-v1", false));
    let touched: Vec<&ResourceKey> = changed.iter().filter(|k| k.group == "xds.keelson.dev").collect();
    assert!(!touched.is_empty());
    assert!(
        touched.iter().all(|k| k.kind == "ClusterLoadAssignment" && k.name.ends_with(HOST)),
        "only reviews' endpoints: {touched:?}"
    );
    let cla = &run.served.resources()[&derived("ClusterLoadAssignment", &format!("outbound|9080|v1|{HOST}"))];
    assert_eq!(cla.version, run.seq, "the endpoint's version is the slice's seq");
    assert!(
        cla.body.to_value()["spec"]["endpoints"].as_array().unwrap().is_empty(),
        "the not-ready endpoint is not served"
    );
    let cluster = &run.served.resources()[&derived("Cluster", &format!("outbound|9080||{HOST}"))];
    assert!(cluster.version < run.seq, "the cluster kept its version");
}

#[test]
fn deleting_an_input_moves_the_version_of_what_it_fed() {
    let mut run = Run::new();
    for op in script().into_iter().take(7) {
        run.apply(op);
    }
    let name = format!("outbound|9080||{HOST}");
    let before = run.served.resources()[&derived("ClusterLoadAssignment", &name)].version;
    run.apply(delete("discovery.k8s.io", "EndpointSlice", "reviews-a"));
    let after = &run.served.resources()[&derived("ClusterLoadAssignment", &name)];
    assert!(after.version > before && after.version == run.seq, "the deletion's seq: {} → {}", before, after.version);
    // The same state rebuilt elsewhere (a checkpoint, another process) agrees.
    let blob = keelson_hub::checkpoint::encode(&run.state);
    let restored = keelson_hub::checkpoint::decode(keelson_hub::checkpoint::FORMAT_V5, &blob).unwrap();
    let again = Served::of(&restored, &TranslateConfig::default());
    assert_eq!(again.resources()[&derived("ClusterLoadAssignment", &name)].version, run.seq);
    assert_eq!(Run::view(&again), Run::view(&run.served));
}

#[test]
fn names_and_shapes_follow_istiod() {
    let mut run = Run::new();
    for op in script().into_iter().take(8) {
        run.apply(op);
    }
    let r = run.served.resources();
    for name in
        [format!("outbound|9080||{HOST}"), format!("outbound|9080|v1|{HOST}"), format!("outbound|9080|v2|{HOST}")]
    {
        assert!(r.contains_key(&derived("Cluster", &name)), "{name}");
        assert!(r.contains_key(&derived("ClusterLoadAssignment", &name)), "{name}");
    }
    // Proxyless gRPC: a by-name API listener per service port, RDS named like the cluster.
    let api = &r[&derived("Listener", &format!("{HOST}:9080"))];
    assert!(api.serving.by_name, "an Envoy asking for every listener must not get API listeners");
    let hcm = &api.body.to_value()["spec"]["api_listener"]["api_listener"];
    assert_eq!(hcm["rds"]["route_config_name"], format!("outbound|9080||{HOST}"));
    let filters: Vec<&str> =
        hcm["http_filters"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(filters.last(), Some(&"envoy.filters.http.router"), "the router is last");
    // Sidecars: one listener and route table per port, shared by the services on it.
    // Its bytes are its virtual hosts' encodings laid end to end: they must
    // decode as one RouteConfiguration.
    let table = &r[&derived("RouteConfiguration", "9080")];
    let any = <prost_types::Any as prost::Message>::decode(table.encoded.clone().unwrap()).unwrap();
    let table = keelson_hub::transcode::decode_to_json("envoy.config.route.v3.RouteConfiguration", &any.value).unwrap();
    assert_eq!(table["name"], "9080");
    let vhosts: Vec<&str> =
        table["virtual_hosts"].as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(vhosts, ["ratings.default.svc.cluster.local:9080".to_string(), format!("{HOST}:9080")]);
    let body = r[&derived("RouteConfiguration", "9080")].body.to_value();
    assert_eq!(body["gathers"], json!(vhosts), "the table's body names what it gathers");
    assert!(!r[&derived("Listener", "127.0.0.1_9080")].serving.by_name);
    // Every locality group has a locality and a positive weight (gRPC insists).
    let cla = r[&derived("ClusterLoadAssignment", &format!("outbound|9080||{HOST}"))].body.to_value();
    for group in cla["spec"]["endpoints"].as_array().unwrap() {
        assert!(group["locality"].is_object() && group["load_balancing_weight"].as_u64() > Some(0), "{group}");
    }
}

#[test]
fn a_raw_resource_with_a_derived_name_is_not_served_and_translation_can_be_off() {
    let mut run = Run::new();
    for op in script().into_iter().take(3) {
        run.apply(op);
    }
    let name = format!("outbound|9080||{HOST}");
    let raw = object(json!({ "apiVersion": "xds.keelson.dev/v1", "kind": "Cluster", "metadata": { "name": name },
        "spec": { "name": name, "type": "STATIC", "connect_timeout": "1s" } }));
    run.apply(raw);
    let key = derived("Cluster", &name);
    assert!(run.served.shadowed().contains(&key));
    assert_eq!(run.served.resources()[&key].origin, keelson_hub::translate::origin(), "the derived one is served");
    let off = TranslateConfig { enabled: false, ..TranslateConfig::default() };
    let plain = Served::of(&run.state, &off);
    assert_eq!(
        plain.resources()[&key].origin,
        SourceId::new(SourceKind::File, "f"),
        "without translation the raw one is"
    );
    assert!(plain.resources().keys().all(|k| k.kind != "ClusterLoadAssignment"));
}

#[test]
fn unsupported_fields_are_named_in_warnings() {
    let mut run = Run::new();
    run.apply(service("reviews", &[("http", 9080)]));
    run.apply(object(json!({ "apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": { "name": "reviews", "namespace": "default" },
        "spec": { "hosts": ["reviews"], "http": [{ "corsPolicy": { "allowOrigins": [] }, "route": [{ "destination": { "host": "reviews" } }] }] } })));
    run.apply(object(json!({ "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": { "name": "reviews", "namespace": "default" },
        "spec": { "host": "reviews", "trafficPolicy": { "tls": { "mode": "ISTIO_MUTUAL" } } } })));
    let warnings = run.served.translator().unwrap().warnings();
    let vs = ResourceKey::new("networking.istio.io", "VirtualService", "default", "reviews");
    assert!(warnings[&vs].iter().any(|w| w.contains("spec.http[0].corsPolicy")), "{warnings:?}");
    let dr = ResourceKey::new("networking.istio.io", "DestinationRule", "default", "reviews");
    assert!(warnings[&dr].iter().any(|w| w.contains("ISTIO_MUTUAL is rejected")), "{warnings:?}");
}

#[test]
fn endpoints_of_every_cluster_merge_by_host_with_their_locality_and_health() {
    let mut run = Run::new();
    run.apply(service("reviews", &[("http", 9080)]));
    run.apply(slice("reviews-a", "reviews", 8001, "reviews-v1", true));
    run.apply(in_cluster("east", service("reviews", &[("http", 9080)])));
    run.apply(in_cluster("east", node("n1", "za")));
    run.apply(in_cluster("east", slice_on_node("reviews-east", "n1")));
    let cla =
        run.served.resources()[&derived("ClusterLoadAssignment", &format!("outbound|9080||{HOST}"))].body.to_value();
    let groups = cla["spec"]["endpoints"].as_array().unwrap();
    let localities: Vec<&Value> = groups.iter().map(|g| &g["locality"]).collect();
    assert_eq!(
        localities,
        [
            &json!({ "region": "", "zone": "z1", "sub_zone": "" }),
            &json!({ "region": "r1", "zone": "za", "sub_zone": "east" })
        ],
        "the node's topology labels, and the cluster as sub-zone: {cla}"
    );
    assert_eq!(groups[1]["lb_endpoints"][0]["health_status"], "DRAINING", "serving + terminating drains");
    assert_eq!(groups[0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["port_value"], 8001);
}

#[test]
fn a_route_with_a_regex_envoy_would_refuse_is_dropped_alone_and_named() {
    let mut run = Run::new();
    run.apply(service("reviews", &[("http", 9080)]));
    run.apply(service("ratings", &[("http", 9080)]));
    run.apply(object(json!({ "apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": { "name": "reviews", "namespace": "default" },
        "spec": { "hosts": ["reviews"], "http": [
            { "match": [{ "uri": { "regex": "/api/(v1" } }], "route": [{ "destination": { "host": "reviews" } }] },
            { "match": [{ "headers": { "x-canary": {} } }], "route": [{ "destination": { "host": "reviews" } }] },
            { "match": [{ "uri": { "regex": "/api/v[0-9]+/.*" } }], "route": [{ "destination": { "host": "reviews" } }] } ] } })));
    let warnings = run.served.translator().unwrap().warnings();
    let vs = ResourceKey::new("networking.istio.io", "VirtualService", "default", "reviews");
    assert!(
        warnings[&vs].iter().any(|w| w.contains("spec.http[0].match[0].uri.regex") && w.contains("not a valid RE2")),
        "{warnings:?}"
    );
    assert!(
        warnings[&vs].iter().any(|w| w.contains("spec.http[1].match[0].headers.x-canary needs exact, prefix or regex")),
        "{warnings:?}"
    );
    // Only the valid route is left: neither bad one widened to a catch-all.
    let grpc =
        run.served.resources()[&derived("RouteConfiguration", &format!("outbound|9080||{HOST}"))].body.to_value();
    let routes = grpc["spec"]["virtual_hosts"][0]["routes"].as_array().unwrap();
    assert_eq!(routes.len(), 1, "{routes:?}");
    assert_eq!(routes[0]["match"]["safe_regex"]["regex"], "/api/v[0-9]+/.*");
    // The port's table still serves both services.
    assert!(run.served.resources()[&derived("RouteConfiguration", "9080")].encoded.is_some());
}

#[test]
fn service_entries_are_a_registry_with_istiod_names_and_resolutions() {
    let mut run = Run::new();
    run.apply(workload("pay-1", "10.0.0.1", json!({ "app": "pay", "version": "v1" }), 1));
    run.apply(workload("pay-2", "10.0.0.2", json!({ "app": "pay", "version": "v2" }), 3));
    run.apply(workload("db", "10.0.0.3", json!({ "app": "db" }), 1));
    run.apply(selecting_entry());
    run.apply(pay_rule());
    run.apply(entry(
        "api",
        &["api.example.com"],
        "DNS",
        json!({ "endpoints": [{ "address": "localhost", "ports": { "http": 8443 } }] }),
    ));
    run.apply(entry("egress", &["any.example.com"], "NONE", json!({})));
    let r = run.served.resources();
    // STATIC + workloadSelector: EDS, the selected WorkloadEntries as endpoints
    // with their weight, locality (region/zone/subzone) and port by name.
    let cla = r[&derived("ClusterLoadAssignment", &format!("outbound|80||{PAY}"))].body.to_value();
    let group = &cla["spec"]["endpoints"][0];
    assert_eq!(group["locality"], json!({ "region": "r1", "zone": "z1", "sub_zone": "" }), "{cla}");
    assert_eq!(group["load_balancing_weight"], 4, "the locality weighs its endpoints' weights: {cla}");
    let eps: Vec<(String, u64, u64)> = group["lb_endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let a = &e["endpoint"]["address"]["socket_address"];
            (
                a["address"].as_str().unwrap().to_string(),
                a["port_value"].as_u64().unwrap(),
                e["load_balancing_weight"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(eps, [("10.0.0.1".into(), 9000, 1), ("10.0.0.2".into(), 9000, 3)], "db is not selected");
    let v2 = r[&derived("ClusterLoadAssignment", &format!("outbound|80|v2|{PAY}"))].body.to_value();
    assert_eq!(v2["spec"]["endpoints"][0]["lb_endpoints"].as_array().unwrap().len(), 1, "subsets select by label");
    assert_eq!(r[&derived("Cluster", &format!("outbound|80||{PAY}"))].body.to_value()["spec"]["type"], "EDS");
    // DNS: the proxy resolves; endpoints are inline, there is no EDS resource.
    let api = r[&derived("Cluster", "outbound|80||api.example.com")].body.to_value();
    assert_eq!(api["spec"]["type"], "STRICT_DNS");
    let addr =
        &api["spec"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"];
    assert_eq!((addr["address"].as_str(), addr["port_value"].as_u64()), (Some("localhost"), Some(8443)));
    assert!(!r.contains_key(&derived("ClusterLoadAssignment", "outbound|80||api.example.com")));
    // NONE: forward to the address dialled.
    let any = r[&derived("Cluster", "outbound|80||any.example.com")].body.to_value();
    assert_eq!(
        (any["spec"]["type"].as_str(), any["spec"]["lb_policy"].as_str()),
        (Some("ORIGINAL_DST"), Some("CLUSTER_PROVIDED"))
    );
    // Listeners and routes like a Kubernetes service's, answering only to the host.
    assert!(r[&derived("Listener", &format!("{PAY}:80"))].serving.by_name);
    let any_route = r[&derived("RouteConfiguration", "80")].encoded.clone().unwrap();
    let any_route = <prost_types::Any as prost::Message>::decode(any_route).unwrap();
    let table =
        keelson_hub::transcode::decode_to_json("envoy.config.route.v3.RouteConfiguration", &any_route.value).unwrap();
    let pay = table["virtual_hosts"].as_array().unwrap().iter().find(|v| v["name"] == format!("{PAY}:80")).unwrap();
    assert_eq!(pay["domains"], json!([PAY, format!("{PAY}:80")]));
    // Hosts translation cannot own are refused by name, the rest served.
    let warnings = run.served.translator().unwrap().warnings();
    let se = ResourceKey::new("networking.istio.io", "ServiceEntry", "default", "payments");
    assert!(warnings[&se].iter().any(|w| w.contains("wildcard host *.wild.example.com")), "{warnings:?}");
    assert!(
        warnings[&se].iter().any(|w| w.contains(&format!("host {HOST} is a Kubernetes service's"))),
        "{warnings:?}"
    );
    assert!(!r.keys().any(|k| k.name.ends_with("wild.example.com")));

    // A WorkloadEntry change is an endpoint change: it rebuilds the
    // entry's endpoints and nothing else.
    let changed = run.apply(workload("pay-2", "10.0.0.2", json!({ "app": "pay", "version": "v2" }), 5));
    let touched: Vec<&ResourceKey> = changed.iter().filter(|k| k.group == "xds.keelson.dev").collect();
    assert!(!touched.is_empty() && touched.iter().all(|k| k.kind == "ClusterLoadAssignment"), "{touched:?}");
    // A second entry declaring the host is warned about; the older one stays.
    run.apply(entry("payments-b", &[PAY], "STATIC", json!({ "endpoints": [{ "address": "10.9.9.9" }] })));
    let warnings = run.served.translator().unwrap().warnings();
    let b = ResourceKey::new("networking.istio.io", "ServiceEntry", "default", "payments-b");
    assert!(warnings[&b].iter().any(|w| w.contains("also declared by the older ServiceEntry")), "{warnings:?}");
}

#[test]
fn a_sidecar_scopes_what_the_proxies_of_its_namespace_see() {
    use keelson_hub::translate::visibility::Visible;
    let mut run = Run::new();
    run.apply(service("reviews", &[("http", 9080)]));
    run.apply(object(
        json!({ "apiVersion": "v1", "kind": "Service", "metadata": { "name": "ratings", "namespace": "other" },
        "spec": { "ports": [{ "name": "http", "port": 9080 }, { "name": "http-admin", "port": 9999 }] } }),
    ));
    run.apply(sidecar("default", &["./*"]));
    let ratings = "ratings.other.svc.cluster.local";
    let vis = run.served.visibilities()["default"].clone();
    assert_eq!(vis.version, run.seq, "the Sidecar's seq");
    let r = run.served.resources();
    let visible = |k: &ResourceKey| vis.admits(&r[k].serving.visible);
    assert!(visible(&derived("Cluster", &format!("outbound|9080||{HOST}"))));
    assert!(!visible(&derived("Cluster", &format!("outbound|9080||{ratings}"))), "another namespace's service");
    assert!(!visible(&derived("ClusterLoadAssignment", &format!("outbound|9080||{ratings}"))));
    assert!(visible(&derived("Listener", "127.0.0.1_9080")) && !visible(&derived("Listener", "127.0.0.1_9999")));
    // The port's shared table is not theirs; their own, under the same name, holds what they see.
    let shared = derived("RouteConfiguration", "9080");
    let own = ResourceKey::new("xds.keelson.dev", "RouteConfiguration", "default", "9080");
    assert!(!visible(&shared) && visible(&own));
    assert_eq!(r[&own].serving.visible, Visible::Only("default".into()));
    assert!(keelson_hub::translate::visibility::admits(None, &r[&shared].serving.visible), "unscoped proxies get it");
    assert_eq!(r[&own].body.to_value()["gathers"], json!([format!("{HOST}:9080")]));
    assert_eq!(r[&shared].body.to_value()["gathers"], json!([format!("{ratings}:9080"), format!("{HOST}:9080")]));
    // Importing the other namespace: the table and the visibility follow, at the edit's seq.
    run.apply(sidecar("default", &["./*", "other/*"]));
    let vis = run.served.visibilities()["default"].clone();
    let r = run.served.resources();
    assert_eq!(vis.version, run.seq);
    assert!(vis.admits(&r[&derived("Cluster", &format!("outbound|9080||{ratings}"))].serving.visible));
    assert_eq!(r[&own].body.to_value()["gathers"], r[&shared].body.to_value()["gathers"]);
    // No Sidecar: everything again, remembered at the deletion's seq.
    run.apply(delete("networking.istio.io", "Sidecar", "default"));
    let vis = run.served.visibilities()["default"].clone();
    assert!(!vis.restricts() && vis.version == run.seq, "{vis:?}");
    assert!(!run.served.resources().contains_key(&own), "the scoped table is gone");
}

#[test]
fn the_mcp_registry_serves_kubernetes_services_as_service_entries_and_workload_entries() {
    let mut run = Run::with(TranslateConfig { mcp_registry: true, ..TranslateConfig::default() });
    for op in script().into_iter().take(6) {
        run.apply(op);
    }
    run.apply(in_cluster("east", service("reviews", &[("http", 9080)])));
    run.apply(in_cluster("east", node("n1", "za")));
    run.apply(in_cluster("east", slice_on_node("reviews-east", "n1")));
    run.apply(in_cluster("east", slice("reviews-east-2", "reviews", 8003, "reviews-v9", true)));
    let r = run.served.resources();
    let se = &r[&ResourceKey::new("networking.istio.io", "ServiceEntry", "default", "keelson-reviews")];
    assert!(se.encoded.is_some(), "encoded for MCP like a raw ServiceEntry");
    let spec = &se.body.to_value()["spec"];
    assert_eq!(spec["hosts"], json!([HOST]));
    assert_eq!(spec["ports"], json!([{ "name": "http", "number": 9080, "protocol": "HTTP" }]));
    assert_eq!((spec["resolution"].as_str(), spec["location"].as_str()), (Some("STATIC"), Some("MESH_INTERNAL")));
    assert_eq!(spec["workloadSelector"], json!({ "labels": { "keelson.dev/service": "reviews" } }));
    let workloads: BTreeMap<String, Value> = r
        .iter()
        .filter(|(k, e)| k.kind == "WorkloadEntry" && e.origin == keelson_hub::translate::origin())
        .map(|(k, e)| (k.name.clone(), e.body.to_value()["spec"].clone()))
        .collect();
    let names: Vec<&str> = workloads.keys().map(String::as_str).collect();
    // One per (cluster, address); reviews-a's and reviews-b's endpoints share
    // an address but not their pod's labels: two workloads.
    assert_eq!(
        names,
        ["keelson-reviews-127-0-0-1", "keelson-reviews-127-0-0-1-1", "keelson-reviews-east-127-0-0-1"],
        "{workloads:?}"
    );
    assert_eq!(workloads["keelson-reviews-127-0-0-1-1"]["ports"], json!({ "http": 8002 }));
    // east's node-placed endpoint is draining (serving + terminating): not a
    // workload; its ready one is, in the zone its slice names, the cluster
    // as sub-zone.
    let east = &workloads["keelson-reviews-east-127-0-0-1"];
    assert_eq!((&east["locality"], &east["ports"]), (&json!("/z1/east"), &json!({ "http": 8003 })));
    assert_eq!(east["labels"]["keelson.dev/service"], "reviews");
    let local = &workloads["keelson-reviews-127-0-0-1"];
    assert_eq!(local["labels"]["version"], "v1", "pod labels, for DestinationRule subsets");
    assert_eq!(local["ports"], json!({ "http": 8001 }));
}
