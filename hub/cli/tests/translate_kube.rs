//! Translation fed by Kubernetes (issue 12 with the issue 11 source): two
//! clusters, each a fake API server (fakes/kube, checked against the real
//! Python client and kubectl in its own tests), watched by `keelson serve`
//! through kubeconfigs; one Service in both, a workload in each, routing
//! objects in one. A real Envoy sidecar routes by header to the subset whose
//! endpoints only the other cluster has, sees both clusters' endpoints with
//! their localities (the cluster as sub-zone), and stops sending to an
//! endpoint its EndpointSlice marks not ready, with only EDS pushed; a
//! proxyless gRPC client follows routes over a cluster's Service.
//!
//! Every server binds 127.0.0.1; every process is stopped by PID when its
//! guard drops; every wait polls with a deadline.

mod support;

use std::collections::BTreeMap;
use std::path::Path;

use keelson_fake_kube::{FakeConfig, FakeKube, KubeconfigSpec};
use serde_json::Value;
use support::envoy::{Envoy, localities};
use support::real::*;
use support::translate::*;
use support::{Backend, Serve, free_port};

const NODE: &str = "sidecar~127.0.0.1~envoy-1.default~default.svc.cluster.local";
const SVC: &str = "reviews";

fn yaml(text: &str) -> Value {
    serde_yaml::from_str(text).unwrap_or_else(|e| panic!("{e}:\n{text}"))
}

/// A Node with the topology labels istiod reads for locality.
fn node(name: &str, zone: &str) -> Value {
    yaml(&format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels:\n    topology.kubernetes.io/region: r1\n    topology.kubernetes.io/zone: {zone}\n"
    ))
}

/// One cluster holding the Service `reviews` and one workload.
fn cluster(rt: &tokio::runtime::Runtime, dir: &Path, name: &str, svc_port: u16, w: &Workload) -> FakeKube {
    let fake = fake_cluster(rt, dir, name);
    put_service(&fake, name, SVC, "http", svc_port, std::slice::from_ref(w));
    fake
}

/// A fake API server with a kubeconfig `<dir>/<name>.kubeconfig` for it.
fn fake_cluster(rt: &tokio::runtime::Runtime, dir: &Path, name: &str) -> FakeKube {
    let fake = rt.block_on(FakeKube::start(FakeConfig::default())).unwrap();
    let spec = KubeconfigSpec {
        context: name.into(),
        cluster: name.into(),
        user: "admin".into(),
        credentials: fake.default_credentials().unwrap(),
        namespace: None,
    };
    fake.write_kubeconfig(&dir.join(format!("{name}.kubeconfig")), &spec).unwrap();
    fake
}

/// A Service and its workloads (Pod, EndpointSlice) on a Node of `cluster`,
/// as `kubectl apply` and the endpointslice controller would write them.
fn put_service(fake: &FakeKube, cluster: &str, svc: &str, port_name: &str, svc_port: u16, workloads: &[Workload]) {
    let store = fake.store();
    let node_name = format!("node-{cluster}");
    store.upsert_as(yaml(&service(svc, port_name, svc_port)), "kubectl-client-side-apply").unwrap();
    for w in workloads {
        let mut slice = yaml(&slice(svc, port_name, w));
        slice["endpoints"][0]["nodeName"] = Value::from(node_name.as_str());
        for object in [yaml(&pod(svc, w)), node(&node_name, w.zone), slice] {
            store.upsert_as(object, "kubectl-client-side-apply").unwrap();
        }
    }
}

/// `keelson serve` watching `clusters` through their kubeconfigs in `dir`.
fn serve_clusters(dir: &Path, clusters: &[&str]) -> Serve {
    let mut toml = String::new();
    for c in clusters {
        toml += &format!("[[kubernetes]]\nname = \"{c}\"\nkubeconfig = \"{c}.kubeconfig\"\n");
    }
    toml += "[snapshot]\nquiet = \"20ms\"\n";
    let path = dir.join("keelson.toml");
    std::fs::write(&path, toml).unwrap();
    let serve = Serve::start(&dir.join("data"), &["--config", path.to_str().unwrap()]);
    serve.wait_for("/readyz", "the clusters listed", |status, _| status == 200);
    serve
}

#[test]
fn envoy_routes_over_endpoints_of_two_kubernetes_clusters() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let work = tempfile::tempdir().unwrap();
    let (v1, v2) = (Backend::start("v1"), Backend::start("v2"));
    let svc_port = free_port();
    let workloads = [
        ("east", Workload { pod: "reviews-v1", version: "v1", port: v1.port, zone: "z1" }),
        ("west", Workload { pod: "reviews-v2", version: "v2", port: v2.port, zone: "z2" }),
    ];
    let [east, west] = workloads.map(|(name, w)| cluster(&rt, work.path(), name, svc_port, &w));
    let routes = "  - match: [{headers: {end-user: {exact: jason}}}]\n    route: [{destination: {host: reviews, subset: v2}}]\n\
                  \x20 - route: [{destination: {host: reviews, subset: v1}}]\n";
    east.store().upsert(yaml(&destination_rule(SVC, SVC, &["v1", "v2"]))).unwrap();
    east.store().upsert(yaml(&virtual_service(SVC, SVC, routes))).unwrap();

    let serve = serve_clusters(work.path(), &["east", "west"]);
    let envoy = Envoy::start(work.path(), &serve.grpc, NODE, "GRPC");
    let mut http = HttpClient::new(&format!("127.0.0.1:{svc_port}"));
    let diag = || {
        format!(
            "--- Envoy: {}{}\n{}\n--- syncz: {}",
            envoy.summary(),
            envoy.proc.output(),
            serve_log(&serve),
            syncz(&serve)
        )
    };

    // Header routing to the subset only the west cluster has endpoints for.
    let jason = [("end-user", "jason")];
    poll("Envoy to route end-user: jason to west's v2", WAIT, &diag, |last| {
        let counts = http.tally(1, &fqdn(SVC), &jason);
        *last = format!("{counts:?}");
        counts.contains_key("v2").then_some(())
    });
    assert_eq!(http.tally(20, &fqdn(SVC), &jason), BTreeMap::from([("v2".to_string(), 20)]), "\n{}", diag());
    assert_eq!(http.tally(20, &fqdn(SVC), &[]), BTreeMap::from([("v1".to_string(), 20)]), "\n{}", diag());

    // The service's cluster holds both clusters' endpoints, each locality
    // from its Node's topology labels with its Keelson cluster as sub-zone.
    let cluster = cluster_name(svc_port, "", SVC);
    let cla = envoy.endpoints(&cluster).unwrap_or_default();
    let zones: Vec<(String, String)> = cla["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|g| {
            let l = &g["locality"];
            (l["zone"].as_str().unwrap_or_default().into(), l["sub_zone"].as_str().unwrap_or_default().into())
        })
        .collect();
    assert_eq!(zones, [("z1".into(), "east".into()), ("z2".into(), "west".into())], "{cla}\n{}", diag());
    assert_eq!(localities(&cla).len(), 2);
    poll("syncz: SYNCED for every type", WAIT, &diag, |last| {
        let z = syncz(&serve);
        *last = z.to_string();
        all_synced(&z, NODE, "sotw", &[CDS, EDS, LDS, RDS]).then_some(())
    });

    // east's endpoint goes not ready in its EndpointSlice: the v1 route has
    // no endpoint left (Envoy answers 503), and only EDS was pushed.
    let before = pushes(&serve);
    let w = Workload { pod: "reviews-v1", version: "v1", port: v1.port, zone: "z1" };
    let mut unready = yaml(&slice(SVC, "http", &w).replace("ready: true", "ready: false"));
    unready["endpoints"][0]["nodeName"] = Value::from("node-east");
    east.store().upsert(unready).unwrap();
    poll("the unready endpoint to get no traffic", WAIT, &diag, |last| {
        let counts = http.tally(1, &fqdn(SVC), &[]);
        *last = format!("{counts:?}");
        counts.contains_key("503").then_some(())
    });
    assert_eq!(http.tally(10, &fqdn(SVC), &jason), BTreeMap::from([("v2".to_string(), 10)]), "\n{}", diag());
    let after = pushes(&serve);
    for ty in ["CDS", "LDS", "RDS"] {
        assert_eq!(after.get(ty), before.get(ty), "an endpoint-only change pushed {ty}: {before:?} → {after:?}");
    }
    assert!(after.get("EDS") > before.get("EDS"), "{before:?} → {after:?}");
    drop(http);
    drop(envoy);
    drop(serve);
    drop((east, west));
}

/// Proxyless gRPC (Python grpcio) over a Service of a Kubernetes cluster:
/// `xds:///<host>:<port>` resolves and follows the header route and the
/// default subset, as istio.io's proxyless examples configure.
#[test]
fn proxyless_grpc_routes_over_a_kubernetes_cluster() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let work = tempfile::tempdir().unwrap();
    let ((s1, p1), (s2, p2)) = (who_server("v1"), who_server("v2"));
    let svc_port = free_port();
    let east = fake_cluster(&rt, work.path(), "east");
    let workloads = [
        Workload { pod: "who-v1", version: "v1", port: p1, zone: "z1" },
        Workload { pod: "who-v2", version: "v2", port: p2, zone: "z1" },
    ];
    put_service(&east, "east", "who", "grpc", svc_port, &workloads);
    let host = fqdn("who");
    let routes = format!(
        "  - match: [{{headers: {{x-user: {{exact: jason}}}}}}]\n    route: [{{destination: {{host: {host}, subset: v2}}}}]\n\
         \x20 - route: [{{destination: {{host: {host}, subset: v1}}}}]\n"
    );
    east.store().upsert(yaml(&destination_rule("who", &host, &["v1", "v2"]))).unwrap();
    east.store().upsert(yaml(&virtual_service("who", &host, &routes))).unwrap();
    let serve = serve_clusters(work.path(), &["east"]);
    let node = "sidecar~127.0.0.1~who-client.default~default.svc.cluster.local";
    let bootstrap = serde_json::json!({
        "xds_servers": [{"server_uri": serve.grpc, "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
        "node": {"id": node, "cluster": "test", "locality": {"zone": "z1"}},
    })
    .to_string();
    let script = clients_dir().join("grpc_who_client.py");
    let target = format!("xds:///{host}:{svc_port}");
    let args = [script.to_str().unwrap(), &target, "--calls", "20", "--header-calls", "20", "--timeout", "30"];
    let client =
        support::Proc::start(node, 120, &grpc_python(), &args, &[("GRPC_XDS_BOOTSTRAP_CONFIG", bootstrap.as_str())]);
    let d = || format!("{}\n{}\n{}\n{}", client.output(), s1.output(), s2.output(), serve_log(&serve));
    let st = poll("the client to finish its calls", std::time::Duration::from_secs(100), &d, |_| client.try_status());
    let json: Value = client.stdout().lines().rev().find_map(|l| serde_json::from_str(l).ok()).unwrap_or(Value::Null);
    assert!(st.success(), "exit {st}\n{}", d());
    assert_eq!(
        (&json["plain"], &json["header"]),
        (&serde_json::json!({"v1": 20}), &serde_json::json!({"v2": 20})),
        "{}",
        d()
    );
    drop(east);
}
