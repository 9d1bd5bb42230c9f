//! Sidecar scoping at the xDS port (issue 12, item 6): a proxy of a
//! namespace a Sidecar scopes gets only the clusters, endpoints, listeners
//! and routes of the hosts it imports, under istiod's names; proxies of
//! one namespace share every body; a Sidecar edit pushes what it changes
//! over SotW and Delta. The namespace comes from the Istio node id
//! (`sidecar~ip~pod.ns~ns.svc.cluster.local`), as istiod reads it.

mod support;

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use keelson_sinks::xds::{AdsServer, XdsConfig};
use serde_json::{Value, json};
use support::*;

const REVIEWS: &str = "outbound|9080||reviews.default.svc.cluster.local";
const RATINGS: &str = "outbound|9080||ratings.other.svc.cluster.local";

fn istio_node(pod: &str, ns: &str) -> Option<keelson_proto::envoy::pb::envoy::config::core::v3::Node> {
    node(&format!("sidecar~10.0.0.1~{pod}.{ns}~{ns}.svc.cluster.local"), "mesh")
}

fn service(ns: &str, name: &str) -> Value {
    json!({ "apiVersion": "v1", "kind": "Service", "metadata": { "name": name, "namespace": ns },
        "spec": { "ports": [{ "name": "http", "port": 9080 }] } })
}

fn slice(ns: &str, name: &str, ip: &str) -> Value {
    json!({ "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": { "name": name, "namespace": ns, "labels": { "kubernetes.io/service-name": name } },
        "addressType": "IPv4", "ports": [{ "name": "http", "port": 8080 }],
        "endpoints": [{ "addresses": [ip], "conditions": { "ready": true } }] })
}

fn sidecar(hosts: &[&str]) -> Value {
    json!({ "apiVersion": "networking.istio.io/v1", "kind": "Sidecar",
        "metadata": { "name": "default", "namespace": "default" }, "spec": { "egress": [{ "hosts": hosts }] } })
}

fn mesh() -> (Config, AdsServer) {
    let (mut cfg, rx) = Config::translated();
    cfg.upsert(service("default", "reviews")).upsert(slice("default", "reviews", "10.1.0.1"));
    cfg.upsert(service("other", "ratings")).upsert(slice("other", "ratings", "10.2.0.1"));
    cfg.upsert(sidecar(&["./*"]));
    cfg.publish();
    let (server, _ledger, _nacks) =
        server(rx, XdsConfig { requests_per_stream_per_second: None, ..XdsConfig::default() });
    (cfg, server)
}

/// The virtual hosts of a RouteConfiguration response's only resource.
fn vhosts(r: &keelson_proto::envoy::pb::envoy::service::discovery::v3::DiscoveryResponse) -> Vec<String> {
    assert_eq!(r.type_url, RDS);
    let json =
        keelson_hub::transcode::decode_to_json("envoy.config.route.v3.RouteConfiguration", &r.resources[0].value)
            .unwrap();
    json["virtual_hosts"].as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_proxies_get_what_they_import_and_share_every_body() {
    let (mut cfg, server) = mesh();
    let mut scoped: Vec<Sotw> = ["a", "b"].iter().map(|p| Sotw::open(&server, istio_node(p, "default"))).collect();
    let mut other = Sotw::open(&server, istio_node("c", "other"));
    let stats = &server.shared().cache.stats;
    let bodies0 = stats.bodies.load(Ordering::Relaxed);
    let mut cds = Vec::new();
    for s in scoped.iter_mut().chain([&mut other]) {
        s.request(CDS, &[], "", "");
        let r = s.recv().await;
        s.ack(&r, &[]);
        cds.push(r);
    }
    assert_eq!(names(&cds[0]), [REVIEWS], "the Sidecar imports ./* only");
    assert_eq!(names(&cds[1]), [REVIEWS]);
    assert_eq!(names(&cds[2]), [RATINGS, REVIEWS], "a namespace without a Sidecar sees every service");
    assert_eq!(stats.bodies.load(Ordering::Relaxed) - bodies0, 2, "one CDS body per scope, not per proxy");
    // Endpoints of a host it does not import are not served, even by name.
    scoped[0].request(EDS, &[REVIEWS, RATINGS], "", "");
    let r = scoped[0].recv().await;
    assert_eq!(names(&r), [REVIEWS]);
    scoped[0].ack(&r, &[REVIEWS, RATINGS]);
    // The port's route table under its istiod name, holding what the scope sees.
    scoped[0].request(RDS, &["9080"], "", "");
    let r = scoped[0].recv().await;
    assert_eq!(vhosts(&r), ["reviews.default.svc.cluster.local:9080"]);
    scoped[0].ack(&r, &["9080"]);
    other.request(RDS, &["9080"], "", "");
    let r = other.recv().await;
    assert_eq!(vhosts(&r), ["ratings.other.svc.cluster.local:9080", "reviews.default.svc.cluster.local:9080"]);
    other.ack(&r, &["9080"]);

    // The Sidecar imports the other namespace: scoped proxies get its cluster
    // at the edit's version; the other namespace's proxy is not pushed.
    cfg.upsert(sidecar(&["./*", "other/*"]));
    cfg.publish();
    for s in &mut scoped {
        let r = s.recv().await;
        assert_eq!((r.type_url.as_str(), names(&r)), (CDS, vec![RATINGS.to_string(), REVIEWS.to_string()]));
        assert_eq!(r.version_info, cfg.version().to_string(), "the Sidecar's seq");
        s.ack(&r, &[]);
    }
    // Its endpoints, whole: the newly imported host's are older than the
    // version it ACKed, so a partial answer (changes since) would miss them.
    let r = scoped[0].recv().await;
    assert_eq!((r.type_url.as_str(), names(&r)), (EDS, vec![RATINGS.to_string(), REVIEWS.to_string()]));
    scoped[0].ack(&r, &[REVIEWS, RATINGS]);
    let r = scoped[0].recv().await;
    assert_eq!(vhosts(&r).len(), 2, "its route table gains the host");
    other.silent(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_edit_reaches_delta_proxies_as_additions_and_removals() {
    let (mut cfg, server) = mesh();
    let mut d = Delta::open(&server);
    d.subscribe_as(istio_node("a", "default"), CDS, &["*"], "");
    let r = d.recv().await;
    let held: BTreeSet<String> = r.resources.iter().map(|x| x.name.clone()).collect();
    assert_eq!(held, BTreeSet::from([REVIEWS.to_string()]));
    d.subscribe_as(None, CDS, &[], &r.nonce);

    cfg.upsert(sidecar(&["./*", "other/*"]));
    cfg.publish();
    let r = d.recv().await;
    let added: Vec<&str> = r.resources.iter().map(|x| x.name.as_str()).collect();
    assert_eq!(added, [RATINGS], "only what the edit revealed");
    d.subscribe_as(None, CDS, &[], &r.nonce);

    cfg.upsert(sidecar(&["other/*"]));
    cfg.publish();
    let r = d.recv().await;
    assert_eq!(r.removed_resources, [REVIEWS], "what it no longer imports is removed");
}
