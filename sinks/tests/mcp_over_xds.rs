//! MCP over xDS (issue 10): the server as istiod's adsc client sees it
//! (PROTOCOL.md §2a; istio/istio `pkg/adsc/adsc.go`). There is no istiod
//! binary on this machine, so the client side here is a faithful copy of
//! what adsc sends — node id, GENERATOR/ISTIO_REVISION metadata, a wildcard
//! request per type with a timestamp nonce, ACKs — and the server under test
//! is the production one; nothing about the server is faked.

mod support;

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use keelson_proto::envoy::pb::envoy::config::core::v3::Node;
use keelson_proto::envoy::pb::envoy::service::discovery::v3::DiscoveryResponse;
use keelson_proto::envoy::pb::google::protobuf::{Struct, Value as PbValue, value::Kind};
use keelson_proto::mcp::Resource;
use keelson_sinks::xds::{MeshConfigItem, XdsConfig};
use prost::Message;
use prost_reflect::DynamicMessage;
use serde_json::{Value, json};
use support::*;

const MESH: &str = "core/v1alpha1/MeshConfig";

/// What istiod 1.24+ requests (after MeshConfig), from `collections.Pilot`.
const ISTIO_1_24: &[&str] = &[
    "security.istio.io/v1/AuthorizationPolicy",
    "networking.istio.io/v1/DestinationRule",
    "networking.istio.io/v1alpha3/EnvoyFilter",
    "networking.istio.io/v1/Gateway",
    "security.istio.io/v1/PeerAuthentication",
    "networking.istio.io/v1beta1/ProxyConfig",
    "security.istio.io/v1/RequestAuthentication",
    "networking.istio.io/v1/ServiceEntry",
    "networking.istio.io/v1/Sidecar",
    "telemetry.istio.io/v1/Telemetry",
    "networking.istio.io/v1/VirtualService",
    "extensions.istio.io/v1alpha1/WasmPlugin",
    "networking.istio.io/v1/WorkloadEntry",
    "networking.istio.io/v1/WorkloadGroup",
];

/// The same for istiod ≤ 1.23.
const ISTIO_1_23: &[&str] = &[
    "security.istio.io/v1beta1/AuthorizationPolicy",
    "networking.istio.io/v1alpha3/DestinationRule",
    "networking.istio.io/v1alpha3/EnvoyFilter",
    "networking.istio.io/v1alpha3/Gateway",
    "security.istio.io/v1beta1/PeerAuthentication",
    "networking.istio.io/v1beta1/ProxyConfig",
    "security.istio.io/v1beta1/RequestAuthentication",
    "networking.istio.io/v1alpha3/ServiceEntry",
    "networking.istio.io/v1alpha3/Sidecar",
    "telemetry.istio.io/v1alpha1/Telemetry",
    "networking.istio.io/v1alpha3/VirtualService",
    "extensions.istio.io/v1alpha1/WasmPlugin",
    "networking.istio.io/v1alpha3/WorkloadEntry",
    "networking.istio.io/v1alpha3/WorkloadGroup",
];

/// istiod's node: `sidecar~<ip>~<pod>.<ns>~<ns>.svc.cluster.local`, with
/// the metadata adsc sets (ISTIO_VERSION is adsc's default).
fn istiod(n: usize, revision: &str) -> Option<Node> {
    let s = |v: &str| PbValue { kind: Some(Kind::StringValue(v.into())) };
    let mut fields = std::collections::BTreeMap::new();
    fields.insert("GENERATOR".to_string(), s("api"));
    fields.insert("ISTIO_REVISION".to_string(), s(revision));
    fields.insert("ISTIO_VERSION".to_string(), s("65536.65536.65536"));
    Some(Node {
        id: format!("sidecar~10.0.0.{n}~istiod-{n}.istio-system~istio-system.svc.cluster.local"),
        metadata: Some(Struct { fields: fields.into_iter().collect() }),
        ..Node::default()
    })
}

fn virtual_service(ns: &str, name: &str, host: &str) -> Value {
    json!({ "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": { "name": name, "namespace": ns, "labels": { "app": name } },
        "spec": { "hosts": [host], "http": [{ "route": [{ "destination": { "host": host, "port": { "number": 9080 } } }] }] } })
}

fn destination_rule(ns: &str, name: &str) -> Value {
    json!({ "apiVersion": "networking.istio.io/v1beta1", "kind": "DestinationRule",
        "metadata": { "name": name, "namespace": ns },
        "spec": { "host": format!("{name}.{ns}.svc.cluster.local"),
                  "trafficPolicy": { "loadBalancer": { "simple": "LEAST_REQUEST" } },
                  "subsets": [{ "name": "v1", "labels": { "version": "v1" } }] } })
}

/// Opens an istiod-like stream: MeshConfig first, then every type, each a
/// wildcard request whose nonce is a timestamp (adsc's ConfigInitialRequests).
fn subscribe(server: &keelson_sinks::xds::AdsServer, node: Option<Node>, types: &[&str]) -> Sotw {
    let s = Sotw::open(server, node);
    let stamp = "2026-12-02 17:00:00.000000001 +0000 UTC m=+0.01";
    s.request(MESH, &[], "", stamp);
    for t in types {
        s.request(t, &[], "", stamp);
    }
    s
}

/// Receives one response per requested type (any order), decoding every
/// item as adsc does; returns them by type_url.
async fn answers(s: &mut Sotw, types: usize) -> std::collections::BTreeMap<String, DiscoveryResponse> {
    let mut got = std::collections::BTreeMap::new();
    while got.len() < types {
        let r = s.recv().await;
        got.insert(r.type_url.clone(), r);
    }
    got
}

/// The items of an MCP response: (name, version, body type, body JSON).
fn items(r: &DiscoveryResponse) -> Vec<(String, String, String, Value)> {
    r.resources
        .iter()
        .map(|any| {
            assert_eq!(any.type_url, "type.googleapis.com/istio.mcp.v1alpha1.Resource");
            let res = Resource::decode(any.value.as_slice()).expect("an MCP Resource");
            let meta = res.metadata.expect("metadata");
            assert_eq!(meta.name.split('/').count(), 2, "istiod drops names that are not ns/name: {}", meta.name);
            let body = res.body.expect("body");
            let message = body.type_url.strip_prefix("type.googleapis.com/").expect("a type.googleapis.com body");
            let desc = keelson_proto::descriptors().get_message_by_name(message).expect("body type in the pool");
            let dynamic = DynamicMessage::decode(desc, body.value.as_slice()).expect("body decodes");
            assert!(!dynamic.unknown_fields().any(|_| true), "body has no unknown fields");
            let json = serde_json::to_value(&dynamic).unwrap();
            (meta.name, meta.version, message.to_string(), json)
        })
        .collect()
}

#[tokio::test]
async fn every_requested_type_is_answered_at_once_for_both_istio_versions() {
    let (mut cfg, rx) = Config::new();
    cfg.upsert(virtual_service("bookinfo", "reviews", "reviews")).upsert(destination_rule("bookinfo", "reviews"));
    cfg.upsert(cluster("envoy-only"));
    cfg.publish();
    let (server, ledger, _nacks) = server(rx, XdsConfig::default());
    let mut open = Vec::new();
    for (n, set) in [ISTIO_1_24, ISTIO_1_23].into_iter().enumerate() {
        let mut s = subscribe(&server, istiod(n, ""), set);
        let got = answers(&mut s, set.len() + 1).await;
        // The type_url is echoed exactly as asked: adsc looks it up verbatim.
        let expected: BTreeSet<&str> = set.iter().copied().chain([MESH]).collect();
        assert_eq!(got.keys().map(String::as_str).collect::<BTreeSet<_>>(), expected);
        let vs = set.iter().find(|t| t.ends_with("/VirtualService")).unwrap();
        let vs_items = items(&got[*vs]);
        assert_eq!(vs_items.len(), 1);
        let (name, version, message, body) = &vs_items[0];
        assert_eq!(name, "bookinfo/reviews");
        assert_eq!(version, &got[*vs].version_info, "the item's version is the seq that last changed it");
        // The body is on its proto package even when the GVK says v1.
        assert_eq!(message, "istio.networking.v1alpha3.VirtualService");
        assert_eq!(body["hosts"], json!(["reviews"]));
        let dr = set.iter().find(|t| t.ends_with("/DestinationRule")).unwrap();
        assert_eq!(items(&got[*dr])[0].3["trafficPolicy"]["loadBalancer"]["simple"], "LEAST_REQUEST");
        // Types with nothing in them are answered too, empty (readiness).
        let gw = set.iter().find(|t| t.ends_with("/Gateway")).unwrap();
        assert!(got[*gw].resources.is_empty());
        // MeshConfig is one unwrapped Any.
        assert_eq!(got[MESH].resources.len(), 1);
        assert_eq!(got[MESH].resources[0].type_url, "type.googleapis.com/istio.mesh.v1alpha1.MeshConfig");
        // A client that ACKs MeshConfig anyway (MeshConfig first, in order)
        // does not make it a tracked type.
        s.ack(&got[MESH], &[]);
        for t in set {
            s.ack(&got[*t], &[]);
        }
        open.push(s);
    }
    wait_until("every Istio type ACKed on both streams", || {
        let records = ledger.records();
        records.len() == 2
            && records
                .iter()
                .all(|r| r.types.values().filter(|t| t.status() == keelson_hub::SyncStatus::Synced).count() == 14)
    })
    .await;
    // Both are MCP clients in the ledger, tracked per Istio type.
    let records = ledger.records();
    assert_eq!(records.len(), 2);
    for r in &records {
        assert_eq!(r.protocol, keelson_hub::ledger::Protocol::Mcp);
        assert_eq!(r.types.len(), 14, "every Istio type tracked, MeshConfig not (istiod never ACKs it)");
    }
}

#[tokio::test]
async fn an_unknown_type_is_answered_empty_so_readiness_never_waits() {
    let (mut cfg, rx) = Config::new();
    cfg.publish();
    let (server, _ledger, _nacks) = server(rx, XdsConfig::default());
    let mut s = subscribe(&server, istiod(0, ""), &["extensions.istio.io/v1alpha1/TrafficExtension"]);
    let got = answers(&mut s, 2).await;
    assert!(got["extensions.istio.io/v1alpha1/TrafficExtension"].resources.is_empty());
}

#[tokio::test]
async fn an_edit_changes_only_that_objects_version_and_a_delete_removes_it() {
    let (mut cfg, rx) = Config::new();
    cfg.upsert(virtual_service("a", "one", "one")).upsert(virtual_service("b", "two", "two"));
    cfg.publish();
    let (server, _ledger, _nacks) = server(rx, XdsConfig::default());
    const VS: &str = "networking.istio.io/v1/VirtualService";
    let mut s = subscribe(&server, istiod(0, ""), &[VS]);
    let got = answers(&mut s, 2).await;
    let before = items(&got[VS]);
    s.ack(&got[VS], &[]);

    cfg.upsert(virtual_service("b", "two", "two-new"));
    cfg.publish();
    let r = s.recv().await;
    assert_eq!(r.type_url, VS);
    let after = items(&r);
    assert_eq!(after.len(), 2, "full state for the type in every response");
    assert_eq!(after[0].1, before[0].1, "a/one untouched keeps its version");
    assert_ne!(after[1].1, before[1].1, "b/two edited gets a new version");
    assert_eq!(after[1].3["hosts"], json!(["two-new"]));
    s.ack(&r, &[]);

    cfg.delete_key(keelson_hub::ResourceKey::new("networking.istio.io", "VirtualService", "a", "one"));
    cfg.publish();
    let r = s.recv().await;
    let names: Vec<String> = items(&r).into_iter().map(|i| i.0).collect();
    assert_eq!(names, ["b/two"], "the deleted object is gone from the next response");
}

#[tokio::test]
async fn a_reconnecting_istiod_gets_the_full_state_again() {
    let (mut cfg, rx) = Config::new();
    cfg.upsert(virtual_service("a", "one", "one"));
    cfg.publish();
    let (server, _ledger, _nacks) = server(rx, XdsConfig::default());
    const VS: &str = "networking.istio.io/v1alpha3/VirtualService";
    let mut first = subscribe(&server, istiod(0, ""), &[VS]);
    let got = answers(&mut first, 2).await;
    first.ack(&got[VS], &[]);
    drop(first);
    // adsc re-runs with empty versions on every type.
    let mut again = subscribe(&server, istiod(0, ""), &[VS]);
    let got = answers(&mut again, 2).await;
    assert_eq!(items(&got[VS]).len(), 1);
}

#[tokio::test]
async fn objects_of_another_revision_are_not_sent() {
    let (mut cfg, rx) = Config::new();
    cfg.upsert(virtual_service("a", "shared", "shared"));
    cfg.upsert(with_meta(virtual_service("a", "canary-only", "c"), "labels", "istio.io/rev", "canary"));
    cfg.upsert(with_meta(virtual_service("a", "stable-only", "s"), "labels", "istio.io/rev", "stable"));
    cfg.publish();
    let (server, _ledger, _nacks) = server(rx, XdsConfig::default());
    const VS: &str = "networking.istio.io/v1/VirtualService";
    let names = |r: &DiscoveryResponse| items(r).into_iter().map(|i| i.0).collect::<Vec<_>>();
    let mut canary = subscribe(&server, istiod(0, "canary"), &[VS]);
    assert_eq!(names(&answers(&mut canary, 2).await[VS]), ["a/canary-only", "a/shared"]);
    let mut stable = subscribe(&server, istiod(1, "stable"), &[VS]);
    assert_eq!(names(&answers(&mut stable, 2).await[VS]), ["a/shared", "a/stable-only"]);
    // No revision: istiod's rule takes everything.
    let mut any = subscribe(&server, istiod(2, ""), &[VS]);
    assert_eq!(names(&answers(&mut any, 2).await[VS]).len(), 3);
}

#[tokio::test]
async fn a_nack_is_recorded_shown_and_that_version_not_resent() {
    let (mut cfg, rx) = Config::new();
    cfg.upsert(virtual_service("a", "one", "one"));
    cfg.publish();
    let (server, ledger, mut nacks) = server(rx, XdsConfig::default());
    const VS: &str = "networking.istio.io/v1/VirtualService";
    let mut s = subscribe(&server, istiod(0, ""), &[VS]);
    let got = answers(&mut s, 2).await;
    s.ack(&got[VS], &[]);
    cfg.upsert(virtual_service("a", "one", "bad-host"));
    cfg.publish();
    let r = s.recv().await;
    s.nack(&r, &[], &got[VS].version_info, "invalid host bad-host");
    let record = tokio::time::timeout(WAIT, nacks.recv()).await.unwrap().unwrap();
    assert_eq!(record.type_url, VS);
    assert_eq!(record.version, r.version_info);
    wait_until("the ledger shows the NACK", || {
        ledger
            .records()
            .iter()
            .any(|p| p.types.get(VS).is_some_and(|t| t.error.as_deref() == Some("invalid host bad-host")))
    })
    .await;
    // An unrelated change elsewhere republishes; the rejected content is
    // not sent again.
    cfg.upsert(cluster("unrelated"));
    cfg.publish();
    s.silent(std::time::Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_istiods_share_one_encoding_per_type() {
    let (mut cfg, rx) = Config::new();
    for i in 0..50 {
        cfg.upsert(virtual_service("bookinfo", &format!("vs{i}"), &format!("h{i}")));
    }
    cfg.publish();
    let mesh = XdsConfig {
        mesh_config: MeshConfigItem::new(&[]),
        requests_per_stream_per_second: None,
        ..XdsConfig::default()
    };
    let (server, _ledger, _nacks) = server(rx, mesh);
    const VS: &str = "networking.istio.io/v1/VirtualService";
    let mut streams = Vec::new();
    for n in 0..100 {
        let mut s = subscribe(&server, istiod(n, ""), ISTIO_1_24);
        let got = answers(&mut s, ISTIO_1_24.len() + 1).await;
        for (t, r) in &got {
            if t != MESH {
                s.ack(r, &[]);
            }
        }
        streams.push(s);
    }
    let stats = &server.shared().cache.stats;
    let bodies0 = stats.bodies.load(Ordering::Relaxed);
    assert_eq!(bodies0 as usize, ISTIO_1_24.len() + 1, "one body per type for 100 istiods");
    cfg.upsert(virtual_service("bookinfo", "vs7", "h7-new"));
    cfg.publish();
    for s in &mut streams {
        let r = s.recv().await;
        assert_eq!(r.type_url, VS);
        assert_eq!(r.resources.len(), 50);
    }
    assert_eq!(stats.bodies.load(Ordering::Relaxed) - bodies0, 1, "one VirtualService body for 100 istiods");
}

/// Delta works for the Istio types too, for a client that asks (istiod
/// itself uses SotW): the same MCP items, named `ns/name`, and a removal by
/// that name.
#[tokio::test]
async fn a_delta_client_gets_the_same_items_and_removals_by_ns_name() {
    let (mut cfg, rx) = Config::new();
    cfg.upsert(virtual_service("a", "one", "one")).upsert(virtual_service("b", "two", "two"));
    cfg.publish();
    let (server, _ledger, _nacks) = server(rx, XdsConfig::default());
    const VS: &str = "networking.istio.io/v1/VirtualService";
    let mut d = Delta::open(&server);
    d.subscribe(VS, &["*"], "");
    let r = d.recv().await;
    let mut names: Vec<&str> = r.resources.iter().map(|res| res.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["a/one", "b/two"]);
    let any = r.resources[0].resource.as_ref().unwrap();
    assert_eq!(any.type_url, "type.googleapis.com/istio.mcp.v1alpha1.Resource");
    let meta = Resource::decode(any.value.as_slice()).unwrap().metadata.unwrap();
    assert_eq!(meta.name, r.resources[0].name);
    assert_eq!(meta.version, r.resources[0].version);
    d.send(keelson_proto::envoy::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest {
        type_url: VS.into(),
        response_nonce: r.nonce.clone(),
        ..Default::default()
    });
    cfg.delete_key(keelson_hub::ResourceKey::new("networking.istio.io", "VirtualService", "a", "one"));
    cfg.publish();
    let r = d.recv().await;
    assert_eq!(r.removed_resources, ["a/one"]);
    assert!(r.resources.is_empty());
}

/// A Delta istiod of one revision, after its first answer, diffs change
/// sets: a changed object of another revision must still be left out (the
/// change-set path filters by revision as the whole diff does).
#[tokio::test]
async fn a_delta_client_of_a_revision_is_not_sent_another_revisions_changes() {
    let (mut cfg, rx) = Config::new();
    cfg.upsert(virtual_service("a", "shared", "shared"));
    cfg.publish();
    let (server, _ledger, _nacks) = server(rx, XdsConfig::default());
    const VS: &str = "networking.istio.io/v1/VirtualService";
    let mut d = Delta::open(&server);
    d.subscribe_as(istiod(0, "stable"), VS, &["*"], "");
    let r = d.recv().await;
    assert_eq!(r.resources.iter().map(|x| x.name.as_str()).collect::<Vec<_>>(), ["a/shared"]);
    d.subscribe_as(None, VS, &[], &r.nonce);
    cfg.upsert(with_meta(virtual_service("a", "canary-only", "c"), "labels", "istio.io/rev", "canary"));
    cfg.publish();
    d.silent(std::time::Duration::from_millis(300)).await;
    cfg.upsert(with_meta(virtual_service("a", "stable-only", "s"), "labels", "istio.io/rev", "stable"));
    cfg.publish();
    let r = d.recv().await;
    assert_eq!(r.resources.iter().map(|x| x.name.as_str()).collect::<Vec<_>>(), ["a/stable-only"]);
}
