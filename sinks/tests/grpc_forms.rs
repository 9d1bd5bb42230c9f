//! Clusters proxyless gRPC would reject (keelson_hub::translate::grpc): an
//! Envoy and a gRPC client ask for the same cluster name and each gets the
//! form it takes: Maglev for Envoy, ring hash for gRPC (which NACKs Maglev,
//! as the real clients in hub/cli/tests/translate_proxyless.rs show). A
//! client is proxyless gRPC by the client feature of gRFC A27 or its
//! `user_agent_name`.

mod support;

use keelson_proto::envoy::pb::envoy::config::cluster::v3::Cluster;
use keelson_proto::envoy::pb::envoy::config::core::v3::Node;
use keelson_sinks::xds::XdsConfig;
use prost::Message;
use serde_json::json;
use support::*;

const NAME: &str = "outbound|9080||reviews.default.svc.cluster.local";

fn lb_policies(r: &keelson_proto::envoy::pb::envoy::service::discovery::v3::DiscoveryResponse) -> Vec<(String, i32)> {
    r.resources.iter().map(|a| Cluster::decode(a.value.as_slice()).unwrap()).map(|c| (c.name, c.lb_policy)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_and_grpc_get_the_cluster_form_each_takes_under_one_name() {
    let (mut cfg, rx) = Config::translated();
    cfg.upsert(
        json!({ "apiVersion": "v1", "kind": "Service", "metadata": { "name": "reviews", "namespace": "default" },
        "spec": { "ports": [{ "name": "http", "port": 9080 }] } }),
    );
    cfg.upsert(json!({ "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
        "metadata": { "name": "reviews", "namespace": "default" },
        "spec": { "host": "reviews", "trafficPolicy": { "loadBalancer": { "consistentHash": { "httpHeaderName": "x-user", "maglev": {} } } } } }));
    cfg.publish();
    let (server, _ledger, _nacks) =
        server(rx, XdsConfig { requests_per_stream_per_second: None, ..XdsConfig::default() });
    let grpc_feature = Node {
        id: "grpc-1".into(),
        client_features: vec!["envoy.lb.does_not_support_overprovisioning".into()],
        ..Node::default()
    };
    let grpc_agent = Node { id: "grpc-2".into(), user_agent_name: "gRPC Go".into(), ..Node::default() };
    const MAGLEV: i32 = 5;
    const RING_HASH: i32 = 2;
    let mut envoy = Sotw::open(&server, node("envoy-1", "c"));
    envoy.request(CDS, &[], "", "");
    let r = envoy.recv().await;
    assert_eq!(lb_policies(&r), [(NAME.to_string(), MAGLEV)], "Envoy, wildcard: the Envoy form only");
    for n in [grpc_feature, grpc_agent] {
        let mut grpc = Sotw::open(&server, Some(n));
        grpc.request(CDS, &[NAME], "", "");
        let r = grpc.recv().await;
        assert_eq!(lb_policies(&r), [(NAME.to_string(), RING_HASH)], "gRPC, by name: its form");
        let mut wildcard = Sotw::open(&server, grpc.node.clone());
        wildcard.request(CDS, &[], "", "");
        let r = wildcard.recv().await;
        assert_eq!(lb_policies(&r), [(NAME.to_string(), RING_HASH)], "gRPC, wildcard: one cluster of the name");
    }
}
