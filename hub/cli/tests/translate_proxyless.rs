//! Translation (issue 12) with proxyless gRPC clients (Python grpcio's
//! C-core, Node @grpc/grpc-js-xds): a Kubernetes Service with a `grpc` port,
//! its Pods and EndpointSlices, an Istio DestinationRule and VirtualService
//! from a `file:` source become the api_listener `<host>:<port>`, its
//! RouteConfiguration `outbound|<port>||<host>` and the subset clusters
//! (translate-spec), so `xds:///who.default.svc.cluster.local:PORT` routes
//! each RPC: a header match always to v2, the rest 80/20 over v1/v2. The
//! DestinationRule asks for Maglev, which gRPC rejects: the clients get the
//! clusters' gRPC form (ring hash) under the same names, with no NACK.
//!
//! The clients come from `scripts/install-test-deps` (target/test-deps and
//! hub/cli/tests/clients/node/node_modules); without them these tests fail
//! and say so. Every process binds 127.0.0.1 only, runs under `timeout`, and
//! is stopped by PID when its guard drops; every wait polls with a deadline.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::real::*;
use support::translate::*;
use support::{Proc, Serve, free_port, test_dep};

const SVC: &str = "who";
/// RPCs without the header: 80 % of 500 has a standard deviation of 1.8 %,
/// so 72-88 % is about ±4.5 σ (gRPC picks a weighted cluster per RPC).
const CALLS: u32 = 500;
const V1_RANGE: std::ops::RangeInclusive<u64> = 360..=440;
const HEADER_CALLS: u32 = 50;

/// Istio's proxyless examples name hosts by FQDN (the Envoy test uses
/// bookinfo's short names).
fn routes(host: &str) -> String {
    format!(
        r#"  - name: jason
    match: [{{headers: {{x-user: {{exact: jason}}}}}}]
    route: [{{destination: {{host: {host}, subset: v2}}}}]
  - name: split
    route:
    - {{destination: {{host: {host}, subset: v1}}, weight: 80}}
    - {{destination: {{host: {host}, subset: v2}}, weight: 20}}
"#
    )
}

/// Runs one who client (`program script ...`) as node `node` against a hub
/// serving two who servers behind Service `who`, and checks its counts.
fn proxyless_routes_by_header_and_weight(node: &str, program: &Path, script: &Path, timeout: &[&str]) {
    let t0 = Instant::now();
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("config");
    let ((s1, p1), (s2, p2)) = (who_server("v1"), who_server("v2"));
    // Nothing listens on the Service port: proxyless clients dial the
    // endpoints; the port only names the listener and the clusters.
    let svc_port = free_port();
    let host = fqdn(SVC);
    let workloads = [
        Workload { pod: "who-v1", version: "v1", port: p1, zone: "z1" },
        Workload { pod: "who-v2", version: "v2", port: p2, zone: "z1" },
    ];
    write_service(&config, SVC, "grpc", svc_port, &workloads);
    // Maglev, which gRPC NACKs ("LB policy is not supported"): the clients
    // must get the cluster's gRPC form (ring hash, translate::grpc).
    let rule = destination_rule(SVC, &host, &["v1", "v2"])
        + "  trafficPolicy:\n    loadBalancer: {consistentHash: {httpHeaderName: x-user, maglev: {}}}\n";
    write(&config, "destination-rule.yaml", &rule);
    write(&config, "virtual-service.yaml", &virtual_service(SVC, &host, &routes(&host)));
    assert_validates(&[&config], 7);
    let serve: Serve = serve_files(work.path(), &[&config]);

    let bootstrap = serde_json::json!({
        "xds_servers": [{"server_uri": serve.grpc, "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
        "node": {"id": node, "cluster": "test", "locality": {"zone": "z1"}},
    })
    .to_string();
    let target = format!("xds:///{host}:{svc_port}");
    let (calls, header_calls) = (CALLS.to_string(), HEADER_CALLS.to_string());
    let mut args = vec![script.to_str().unwrap(), target.as_str(), "--calls", &calls, "--header-calls", &header_calls];
    args.extend_from_slice(&["--header", "x-user=jason"]);
    args.extend_from_slice(timeout);
    let client = Proc::start(node, 120, program, &args, &[("GRPC_XDS_BOOTSTRAP_CONFIG", bootstrap.as_str())]);
    let d = || {
        format!(
            "{}\n{}\n{}\n{}\n--- syncz: {}",
            client.output(),
            s1.output(),
            s2.output(),
            serve_log(&serve),
            syncz(&serve)
        )
    };
    let st = poll(&format!("{node} to finish its calls"), Duration::from_secs(100), &d, |_| client.try_status());
    let out = client.stdout();
    let json: Value = out.lines().rev().find_map(|l| serde_json::from_str(l).ok()).unwrap_or(Value::Null);
    assert!(st.success() && json["errors"].as_object().is_some_and(|e| e.is_empty()), "{node} exit {st}\n{}", d());

    let counts = |phase: &str| -> BTreeMap<String, u64> {
        json[phase].as_object().into_iter().flatten().map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0))).collect()
    };
    let header = counts("header");
    assert_eq!(header, BTreeMap::from([("v2".to_string(), HEADER_CALLS as u64)]), "x-user: jason\n{}", d());
    let plain = counts("plain");
    let (a, b) = (plain.get("v1").copied().unwrap_or(0), plain.get("v2").copied().unwrap_or(0));
    assert!(
        a + b == CALLS as u64 && plain.len() == 2 && V1_RANGE.contains(&a),
        "80/20 over {CALLS} RPCs: {plain:?}\n{}",
        d()
    );
    // No NACK at all: every cluster it got was one it could take.
    let metrics = support::http_text(&serve.admin, "/metrics");
    let nacks: Vec<&str> = metrics.lines().filter(|l| l.starts_with("keelson_xds_nacks_total{")).collect();
    assert!(nacks.iter().all(|l| l.ends_with(" 0")), "{nacks:?}\n{}", d());
    eprintln!("{node}: plain {plain:?}, header {header:?}; passed in {:?}", t0.elapsed());
}

#[test]
fn grpc_python_proxyless_routes_by_header_and_weight() {
    let script = clients_dir().join("grpc_who_client.py");
    let node = "sidecar~127.0.0.1~who-client-py.default~default.svc.cluster.local";
    proxyless_routes_by_header_and_weight(node, &grpc_python(), &script, &["--timeout", "30"]);
}

#[test]
fn grpc_node_proxyless_routes_by_header_and_weight() {
    test_dep("hub/cli/tests/clients/node/node_modules/@grpc/grpc-js-xds/package.json");
    let script = clients_dir().join("node/who_client.js");
    let node = "sidecar~127.0.0.1~who-client-node.default~default.svc.cluster.local";
    proxyless_routes_by_header_and_weight(node, Path::new("node"), &script, &["--timeout-ms", "30000"]);
}

/// A DNS ServiceEntry (`localhost` as its endpoint): Envoy gets a
/// STRICT_DNS cluster, which gRPC rejects; gRPC gets its LOGICAL_DNS form
/// under the same name and resolves the name itself.
fn proxyless_reaches_a_dns_service_entry(node: &str, program: &Path, script: &Path, timeout: &[&str]) {
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("config");
    std::fs::create_dir_all(&config).unwrap();
    let (server, port) = who_server("dns");
    let svc_port = free_port();
    let entry = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: who, namespace: default}}\n\
         spec:\n  hosts: [who.example.com]\n  resolution: DNS\n\
         \x20 ports: [{{number: {svc_port}, name: grpc, protocol: GRPC}}]\n\
         \x20 endpoints: [{{address: localhost, ports: {{grpc: {port}}}}}]\n"
    );
    write(&config, "service-entry.yaml", &entry);
    assert_validates(&[&config], 1);
    let serve: Serve = serve_files(work.path(), &[&config]);
    let bootstrap = serde_json::json!({
        "xds_servers": [{"server_uri": serve.grpc, "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
        "node": {"id": node, "cluster": "test", "locality": {"zone": "z1"}},
    })
    .to_string();
    let target = format!("xds:///who.example.com:{svc_port}");
    let mut args = vec![script.to_str().unwrap(), target.as_str(), "--calls", "20"];
    args.extend_from_slice(timeout);
    let client = Proc::start(node, 120, program, &args, &[("GRPC_XDS_BOOTSTRAP_CONFIG", bootstrap.as_str())]);
    let d = || format!("{}\n{}\n{}\n--- syncz: {}", client.output(), server.output(), serve_log(&serve), syncz(&serve));
    let st = poll(&format!("{node} to finish its calls"), Duration::from_secs(100), &d, |_| client.try_status());
    let json: Value = client.stdout().lines().rev().find_map(|l| serde_json::from_str(l).ok()).unwrap_or(Value::Null);
    assert!(st.success() && json["plain"]["dns"] == 20, "{node} exit {st}: {json}\n{}", d());
}

#[test]
fn grpc_python_reaches_a_dns_service_entry() {
    let script = clients_dir().join("grpc_who_client.py");
    let node = "sidecar~127.0.0.1~who-dns-py.default~default.svc.cluster.local";
    proxyless_reaches_a_dns_service_entry(node, &grpc_python(), &script, &["--timeout", "30"]);
}

#[test]
fn grpc_node_reaches_a_dns_service_entry() {
    test_dep("hub/cli/tests/clients/node/node_modules/@grpc/grpc-js-xds/package.json");
    let script = clients_dir().join("node/who_client.js");
    let node = "sidecar~127.0.0.1~who-dns-node.default~default.svc.cluster.local";
    proxyless_reaches_a_dns_service_entry(node, Path::new("node"), &script, &["--timeout-ms", "30000"]);
}
