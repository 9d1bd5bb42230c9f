//! The Istio networking kinds (istio.networking.v1alpha3 and ProxyConfig in
//! v1beta1) compiled into `keelson_proto::descriptors()` carry istio/api's
//! wire format: the doc examples transcode JSON -> protobuf -> JSON
//! losslessly, unknown names are rejected, and hand-encoded bytes built from
//! upstream's field numbers decode to the expected JSON.

#[path = "istio_networking/examples.rs"]
mod examples;
#[path = "istio_networking/wire.rs"]
mod wire;

use prost::Message;
use prost_reflect::{DynamicMessage, MessageDescriptor, SerializeOptions};
use serde_json::{Value, json};
use wire::{double, ld, msg, seconds, string_entry, text, varint};

const V1ALPHA3: &str = "istio.networking.v1alpha3";

fn descriptor(full_name: &str) -> MessageDescriptor {
    keelson_proto::descriptors()
        .get_message_by_name(full_name)
        .unwrap_or_else(|| panic!("{full_name} is not in the descriptor pool"))
}

fn kind(name: &str) -> MessageDescriptor {
    descriptor(&format!("{V1ALPHA3}.{name}"))
}

fn to_json(message: &DynamicMessage) -> Value {
    message.serialize_with_options(serde_json::value::Serializer, &SerializeOptions::new()).expect("serializes to JSON")
}

fn from_json(desc: &MessageDescriptor, input: &Value) -> Result<DynamicMessage, String> {
    DynamicMessage::deserialize(desc.clone(), input.clone()).map_err(|e| e.to_string())
}

/// JSON -> message -> bytes -> message -> JSON.
fn round_trip(desc: &MessageDescriptor, input: &Value) -> Value {
    let parsed = from_json(desc, input).unwrap_or_else(|e| panic!("{} rejected {input}: {e}", desc.full_name()));
    let bytes = parsed.encode_to_vec();
    let decoded = DynamicMessage::decode(desc.clone(), bytes.as_slice()).expect("re-encoded bytes decode");
    // Compared as JSON, not as messages or bytes: an explicit zero (e.g.
    // `location: MESH_EXTERNAL`) is held by the parsed message but never
    // encoded, and map entries encode in no fixed order.
    assert_eq!(to_json(&decoded), to_json(&parsed), "{}: decode(encode(x)) != x", desc.full_name());
    to_json(&decoded)
}

fn assert_round_trip(desc: &MessageDescriptor, input: &Value, expected: &Value) {
    assert_eq!(&round_trip(desc, input), expected, "{} did not survive the round trip", desc.full_name());
}

/// The error names the offending token, so a user can find it.
fn assert_rejected(desc: &MessageDescriptor, input: Value, offending: &str) {
    match from_json(desc, &input) {
        Ok(m) => panic!("{} accepted {input} as {m:?}", desc.full_name()),
        Err(e) => assert!(e.contains(offending), "error for {input} does not mention {offending:?}: {e}"),
    }
}

fn assert_wire(desc: &MessageDescriptor, bytes: &[u8], expected: Value) {
    let decoded = DynamicMessage::decode(desc.clone(), bytes).expect("hand-encoded bytes decode");
    assert!(decoded.unknown_fields().next().is_none(), "{}: some field numbers are unknown", desc.full_name());
    assert_eq!(to_json(&decoded), expected);
}

#[test]
fn every_networking_kind_is_in_the_pool() {
    for name in [
        "VirtualService",
        "DestinationRule",
        "Gateway",
        "ServiceEntry",
        "Sidecar",
        "WorkloadEntry",
        "WorkloadGroup",
        "EnvoyFilter",
    ] {
        kind(name);
    }
    descriptor("istio.networking.v1beta1.ProxyConfig");
}

#[test]
fn virtual_service_examples_round_trip() {
    let vs = kind("VirtualService");
    for example in [examples::virtual_service_reviews(), examples::virtual_service_full()] {
        assert_round_trip(&vs, &example, &example);
    }
    assert_rejected(&vs, json!({"hosts": ["a"], "http": [{"retrys": {"attempts": 3}}]}), "retrys");
    assert_rejected(&vs, json!({"http": [{"redirect": {"derivePort": "FROM_CLIENT"}}]}), "FROM_CLIENT");
    // Two members of one oneof (StringMatch.match_type) cannot both be set.
    assert!(from_json(&vs, &json!({"http": [{"match": [{"uri": {"exact": "/a", "prefix": "/b"}}]}]})).is_err());
}

#[test]
fn destination_rule_examples_round_trip() {
    let dr = kind("DestinationRule");
    let simple = examples::destination_rule_subsets();
    assert_round_trip(&dr, &simple, &simple);
    let (input, expected) = examples::destination_rule_full();
    assert_round_trip(&dr, &input, &expected);
    assert_rejected(&dr, json!({"host": "a", "trafficPolicy": {"loadBalancr": {}}}), "loadBalancr");
    assert_rejected(
        &dr,
        json!({"host": "a", "trafficPolicy": {"loadBalancer": {"simple": "LEAST_CONNECTION"}}}),
        "LEAST_CONNECTION",
    );
    // The workload selector here is istio.type's, keyed matchLabels.
    assert_rejected(&dr, json!({"host": "a", "workloadSelector": {"labels": {"app": "x"}}}), "labels");
}

#[test]
fn gateway_examples_round_trip() {
    let gw = kind("Gateway");
    let example = examples::gateway_full();
    assert_round_trip(&gw, &example, &example);
    assert_rejected(&gw, json!({"servers": [{"port": {"number": 80}, "host": ["*"]}]}), "host");
    assert_rejected(&gw, json!({"servers": [{"tls": {"mode": "STRICT"}}]}), "STRICT");
}

#[test]
fn service_entry_examples_round_trip() {
    let se = kind("ServiceEntry");
    let (input, expected) = examples::service_entry_https();
    assert_round_trip(&se, &input, &expected);
    for example in [examples::service_entry_full(), examples::service_entry_selector()] {
        assert_round_trip(&se, &example, &example);
    }
    assert_rejected(&se, json!({"hosts": ["a"], "endpoint": []}), "endpoint");
    assert_rejected(&se, json!({"hosts": ["a"], "resolution": "DNS_RR"}), "DNS_RR");
}

#[test]
fn sidecar_examples_round_trip() {
    let sc = kind("Sidecar");
    let example = examples::sidecar_full();
    assert_round_trip(&sc, &example, &example);
    assert_rejected(&sc, json!({"egress": [{"hosts": ["./*"], "captureMod": "NONE"}]}), "captureMod");
    assert_rejected(&sc, json!({"egress": [{"hosts": ["./*"], "captureMode": "TPROXY"}]}), "TPROXY");
    // `localhost` was removed upstream and its name reserved.
    assert_rejected(&sc, json!({"localhost": {}}), "localhost");
}

#[test]
fn workload_entry_example_round_trips() {
    let we = kind("WorkloadEntry");
    let example = examples::workload_entry_full();
    assert_round_trip(&we, &example, &example);
    assert_rejected(&we, json!({"address": "1.1.1.1", "serviceAcount": "x"}), "serviceAcount");
    // WorkloadEntry has no enum: a port map value must be a uint32.
    assert!(from_json(&we, &json!({"ports": {"http": "eighty"}})).is_err());
}

#[test]
fn workload_group_examples_round_trip() {
    let wg = kind("WorkloadGroup");
    let example = examples::workload_group_http_probe();
    assert_round_trip(&wg, &example, &example);
    for example in examples::workload_group_other_probes() {
        assert_round_trip(&wg, &example, &example);
    }
    assert_rejected(&wg, json!({"probe": {"httpGet": {"port": 80, "headers": []}}}), "headers");
    // WorkloadGroup has no enum; the probe is a oneof, so two methods fail.
    assert!(from_json(&wg, &json!({"probe": {"tcpSocket": {"port": 1}, "exec": {"command": ["true"]}}})).is_err());
}

#[test]
fn envoy_filter_examples_round_trip() {
    let ef = kind("EnvoyFilter");
    for example in [examples::envoy_filter_selector(), examples::envoy_filter_target_refs()] {
        assert_round_trip(&ef, &example, &example);
    }
    assert_rejected(&ef, json!({"configPatch": []}), "configPatch");
    assert_rejected(&ef, json!({"configPatches": [{"applyTo": "HTTP_FILTERS"}]}), "HTTP_FILTERS");
    assert_rejected(&ef, json!({"configPatches": [{"patch": {"operation": "PREPEND"}}]}), "PREPEND");
}

#[test]
fn proxy_config_examples_round_trip() {
    let pc = descriptor("istio.networking.v1beta1.ProxyConfig");
    for example in [examples::proxy_config_selector(), examples::proxy_config_waypoint()] {
        assert_round_trip(&pc, &example, &example);
    }
    assert_rejected(&pc, json!({"concurency": 2}), "concurency");
    // ProxyConfig has no enum; targetRef is one reference, not a list.
    assert!(from_json(&pc, &json!({"targetRef": [{"kind": "Gateway", "name": "w"}]})).is_err());
}

#[test]
fn virtual_service_field_numbers() {
    let destination = msg(&[text(1, "reviews"), ld(3, &varint(1, 9080))]);
    let route = msg(&[
        text(17, "r1"),
        ld(2, &msg(&[ld(1, &destination), varint(2, 25)])),
        seconds(6, 5),
        ld(22, &msg(&[ld(1, &text(1, "shadow")), ld(2, &double(1, 50.0))])),
        ld(21, &msg(&[varint(1, 503), ld(2, &text(1, "down"))])),
    ]);
    let bytes = msg(&[
        text(1, "reviews"),
        ld(3, &route),
        ld(5, &ld(1, &msg(&[text(1, "a.example.com"), varint(3, 443)]))),
        ld(4, &ld(1, &varint(2, 27017))),
        text(6, "."),
    ]);
    assert_wire(
        &kind("VirtualService"),
        &bytes,
        json!({
            "hosts": ["reviews"],
            "http": [{
                "name": "r1",
                "route": [{"destination": {"host": "reviews", "port": {"number": 9080}}, "weight": 25}],
                "timeout": "5s",
                "mirrors": [{"destination": {"host": "shadow"}, "percentage": {"value": 50.0}}],
                "directResponse": {"status": 503, "body": {"string": "down"}}
            }],
            "tls": [{"match": [{"sniHosts": ["a.example.com"], "port": 443}]}],
            "tcp": [{"match": [{"port": 27017}]}],
            "exportTo": ["."]
        }),
    );
}

#[test]
fn destination_rule_field_numbers() {
    let load_balancer = msg(&[varint(1, 5), seconds(4, 60)]);
    let policy = msg(&[
        ld(1, &load_balancer),
        ld(3, &ld(7, &varint(1, 7))),
        ld(4, &msg(&[varint(1, 3), text(6, "db.local")])),
        ld(7, &varint(1, 1)),
    ]);
    let bytes = msg(&[text(1, "db"), ld(2, &policy), ld(5, &string_entry(1, "app", "db"))]);
    assert_wire(
        &kind("DestinationRule"),
        &bytes,
        json!({
            "host": "db",
            "trafficPolicy": {
                "loadBalancer": {"simple": "LEAST_REQUEST", "warmupDurationSecs": "60s"},
                "outlierDetection": {"consecutive5xxErrors": 7},
                "tls": {"mode": "ISTIO_MUTUAL", "sni": "db.local"},
                "proxyProtocol": {"version": "V2"}
            },
            "workloadSelector": {"matchLabels": {"app": "db"}}
        }),
    );
}

#[test]
fn gateway_field_numbers() {
    let port = msg(&[varint(1, 443), text(2, "HTTPS"), text(3, "https")]);
    let tls = msg(&[varint(2, 5), text(10, "cred"), text(13, "crl.pem"), varint(7, 3)]);
    let server = msg(&[ld(1, &port), text(2, "*.example.com"), ld(3, &tls), text(6, "edge")]);
    let bytes = msg(&[ld(1, &server), string_entry(2, "istio", "ingressgateway")]);
    assert_wire(
        &kind("Gateway"),
        &bytes,
        json!({
            "servers": [{
                "port": {"number": 443, "protocol": "HTTPS", "name": "https"},
                "hosts": ["*.example.com"],
                "tls": {"mode": "OPTIONAL_MUTUAL", "credentialName": "cred", "caCrl": "crl.pem", "minProtocolVersion": "TLSV1_2"},
                "name": "edge"
            }],
            "selector": {"istio": "ingressgateway"}
        }),
    );
}

#[test]
fn service_entry_field_numbers() {
    let bytes = msg(&[
        text(1, "api.example.com"),
        ld(3, &msg(&[varint(1, 80), text(2, "HTTP"), text(3, "http"), varint(4, 8080)])),
        varint(4, 1),
        varint(5, 3),
        ld(6, &msg(&[text(1, "10.0.0.1"), text(7, "sa")])),
        ld(9, &string_entry(1, "app", "api")),
        text(7, "."),
        text(8, "spiffe://x"),
    ]);
    assert_wire(
        &kind("ServiceEntry"),
        &bytes,
        json!({
            "hosts": ["api.example.com"],
            "ports": [{"number": 80, "protocol": "HTTP", "name": "http", "targetPort": 8080}],
            "location": "MESH_INTERNAL",
            "resolution": "DNS_ROUND_ROBIN",
            "endpoints": [{"address": "10.0.0.1", "serviceAccount": "sa"}],
            "workloadSelector": {"labels": {"app": "api"}},
            "exportTo": ["."],
            "subjectAltNames": ["spiffe://x"]
        }),
    );
}

#[test]
fn sidecar_field_numbers() {
    let ingress = msg(&[
        ld(1, &varint(1, 9080)),
        varint(3, 2),
        text(4, "127.0.0.1:8080"),
        ld(7, &varint(2, 1)),
        ld(8, &ld(1, &varint(1, 100))),
    ]);
    let bytes = msg(&[
        ld(1, &string_entry(1, "app", "ratings")),
        ld(2, &ingress),
        ld(3, &text(4, "./*")),
        ld(7, &ld(2, &varint(2, 1024))),
        ld(4, &varint(1, 1)),
    ]);
    assert_wire(
        &kind("Sidecar"),
        &bytes,
        json!({
            "workloadSelector": {"labels": {"app": "ratings"}},
            "ingress": [{
                "port": {"number": 9080},
                "captureMode": "NONE",
                "defaultEndpoint": "127.0.0.1:8080",
                "tls": {"mode": "SIMPLE"},
                "connectionPool": {"tcp": {"maxConnections": 100}}
            }],
            "egress": [{"hosts": ["./*"]}],
            "inboundConnectionPool": {"http": {"http2MaxRequests": 1024}},
            "outboundTrafficPolicy": {"mode": "ALLOW_ANY"}
        }),
    );
}

#[test]
fn workload_entry_field_numbers() {
    let bytes = msg(&[
        text(1, "2.2.2.2"),
        ld(2, &msg(&[text(1, "http"), varint(2, 8080)])),
        text(4, "net"),
        text(5, "us/east"),
        varint(6, 3),
        text(7, "details"),
    ]);
    assert_wire(
        &kind("WorkloadEntry"),
        &bytes,
        json!({"address": "2.2.2.2", "ports": {"http": 8080}, "network": "net", "locality": "us/east", "weight": 3, "serviceAccount": "details"}),
    );
}

#[test]
fn workload_group_field_numbers() {
    let probe = msg(&[varint(2, 5), varint(6, 3), ld(8, &varint(2, 3306))]);
    let bytes = msg(&[
        ld(1, &msg(&[string_entry(1, "app", "db"), string_entry(2, "owner", "a")])),
        ld(2, &text(7, "db")),
        ld(3, &probe),
    ]);
    assert_wire(
        &kind("WorkloadGroup"),
        &bytes,
        json!({
            "metadata": {"labels": {"app": "db"}, "annotations": {"owner": "a"}},
            "template": {"serviceAccount": "db"},
            "probe": {"initialDelaySeconds": 5, "failureThreshold": 3, "tcpSocket": {"port": 3306}}
        }),
    );
}

#[test]
fn envoy_filter_field_numbers() {
    let listener = msg(&[varint(1, 15006), text(5, "envoy.filters.listener.tls_inspector")]);
    let patch = msg(&[
        varint(1, 11),
        ld(2, &msg(&[varint(1, 1), ld(3, &listener)])),
        ld(3, &msg(&[varint(1, 4), varint(3, 2)])),
    ]);
    let target = msg(&[text(1, "gateway.networking.k8s.io"), text(2, "Gateway"), text(3, "waypoint")]);
    // int32 negatives travel as sign-extended 64-bit varints.
    let bytes = msg(&[ld(4, &patch), varint(5, (-10i64) as u64), ld(6, &target)]);
    assert_wire(
        &kind("EnvoyFilter"),
        &bytes,
        json!({
            "configPatches": [{
                "applyTo": "LISTENER_FILTER",
                "match": {"context": "SIDECAR_INBOUND", "listener": {"portNumber": 15006, "listenerFilter": "envoy.filters.listener.tls_inspector"}},
                "patch": {"operation": "INSERT_BEFORE", "filterClass": "AUTHZ"}
            }],
            "priority": -10,
            "targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "waypoint"}]
        }),
    );
}

#[test]
fn proxy_config_field_numbers() {
    let bytes = msg(&[
        ld(1, &string_entry(1, "app", "ratings")),
        ld(2, &varint(1, 2)),
        string_entry(3, "ISTIO_META_X", "1"),
        ld(4, &text(1, "distroless")),
        ld(5, &msg(&[text(2, "Gateway"), text(3, "waypoint")])),
    ]);
    assert_wire(
        &descriptor("istio.networking.v1beta1.ProxyConfig"),
        &bytes,
        json!({
            "selector": {"matchLabels": {"app": "ratings"}},
            "concurrency": 2,
            "environmentVariables": {"ISTIO_META_X": "1"},
            "image": {"imageType": "distroless"},
            "targetRef": {"kind": "Gateway", "name": "waypoint"}
        }),
    );
}
