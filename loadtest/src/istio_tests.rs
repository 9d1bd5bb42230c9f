use std::time::{Duration, SystemTime};

use keelson_hub::ResourceKey;
use serde_json::json;

use super::*;

fn vs_key(ns: &str, name: &str) -> ResourceKey {
    ResourceKey::new("networking.istio.io", "VirtualService", ns, name)
}

/// An MCP item as the hub builds it (keelson_hub::mcp), body of `message`.
fn item(message: &str, key: &ResourceKey, labels: serde_json::Value, spec: &[u8], version: u64) -> Any {
    let body = json!({"metadata": {"name": key.name, "namespace": key.namespace, "labels": labels}});
    let bytes = keelson_hub::mcp::encode_item(message, key, &body, spec, version, SystemTime::UNIX_EPOCH);
    Any::decode(bytes).unwrap()
}

/// A VirtualService body, `hosts: [host]` (field 1), hand-encoded: the
/// Istio messages need not be in the descriptor pool for this.
fn vs_spec(host: &str) -> Vec<u8> {
    let mut b = vec![0x0a, host.len() as u8];
    b.extend_from_slice(host.as_bytes());
    b
}

fn response(type_url: &str, resources: Vec<Any>) -> DiscoveryResponse {
    DiscoveryResponse {
        type_url: type_url.into(),
        version_info: "7".into(),
        nonce: "3".into(),
        resources,
        ..Default::default()
    }
}

#[test]
fn every_requested_type_is_one_the_hub_serves_as_mcp() {
    use keelson_sinks::xds::types::{ItemForm, lookup};
    for version in [IstioVersion::V1_23, IstioVersion::V1_24] {
        let requested: Vec<(&str, Kind)> = version.requested().collect();
        assert_eq!(requested.len(), 15, "MeshConfig and 14 Istio kinds");
        assert_eq!(requested[0], (MESH_CONFIG, Kind::MeshConfig), "MeshConfig first, as adsc asks");
        for (url, kind) in requested {
            let served = lookup(url).unwrap_or_else(|| panic!("{url} is not served"));
            assert!(served.form.is_mcp(), "{url}");
            assert_eq!(served.form == ItemForm::MeshConfig, kind == Kind::MeshConfig, "{url}");
            assert_eq!(kind.short(), served.kind, "{url} maps to its own kind");
            assert_eq!(kind_of(url), Some(kind));
        }
    }
    assert_eq!(IstioVersion::V1_24.type_url(Kind::VirtualService), Some("networking.istio.io/v1/VirtualService"));
    assert_eq!(IstioVersion::V1_23.type_url(Kind::VirtualService), Some("networking.istio.io/v1alpha3/VirtualService"));
    assert_eq!(IstioVersion::V1_23.type_url(Kind::Cds), None);
}

#[test]
fn a_stream_opens_with_meshconfig_then_every_kind_each_with_a_timestamp_nonce() {
    let node = node(4, "canary");
    let stamp = go_time_string(SystemTime::now(), Duration::from_millis(12));
    let requests = initial_requests(IstioVersion::V1_24, &node, &stamp);
    assert_eq!(requests.len(), 15);
    assert_eq!(requests[0].type_url, MESH_CONFIG);
    assert_eq!(requests[0].node.as_ref(), Some(&node), "the node goes on the first request");
    for r in &requests {
        assert_eq!(r.response_nonce, stamp, "adsc sets time.Now().String() on every initial request");
        assert!(r.resource_names.is_empty() && r.version_info.is_empty(), "wildcard, no version: {r:?}");
        assert!(r.error_detail.is_none());
    }
    assert!(requests[1..].iter().all(|r| r.node.is_none()), "only the first request carries the node");
    assert!(requests.iter().all(|r| !r.type_url.starts_with("type.googleapis.com/")), "GVKs have no prefix");
}

#[test]
fn the_node_is_istiods() {
    let n = node(300, "");
    assert_eq!(n.id, "sidecar~10.0.1.45~istiod-300.istio-system~istio-system.svc.cluster.local");
    let meta = n.metadata.unwrap().fields;
    let text = |k: &str| match &meta[k].kind {
        Some(PbKind::StringValue(s)) => s.clone(),
        other => panic!("{k}: {other:?}"),
    };
    assert_eq!(
        (text("GENERATOR"), text("ISTIO_REVISION"), text("ISTIO_VERSION")),
        ("api".into(), String::new(), "65536.65536.65536".into())
    );
}

#[test]
fn the_nonce_looks_like_gos_time_string() {
    let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_694_800_500);
    assert_eq!(go_time_string(at, Duration::from_nanos(12_000_001)), "2025-12-02 17:00:00.5 +0000 UTC m=+0.012000001");
    let whole = SystemTime::UNIX_EPOCH + Duration::from_secs(60);
    assert_eq!(go_time_string(whole, Duration::ZERO), "1970-01-01 00:01:00 +0000 UTC m=+0.000000000");
}

#[test]
fn an_ack_echoes_version_and_nonce_and_carries_the_node() {
    let node = node(0, "");
    let a = ack(&response("networking.istio.io/v1/VirtualService", vec![]), &node);
    assert_eq!(
        (a.type_url.as_str(), a.version_info.as_str(), a.response_nonce.as_str()),
        ("networking.istio.io/v1/VirtualService", "7", "3")
    );
    assert_eq!(a.node, Some(node));
    assert!(a.resource_names.is_empty() && a.error_detail.is_none(), "istiod never NACKs");
}

#[test]
fn a_good_item_is_kept_with_its_name_and_version() {
    let key = vs_key("bookinfo", "reviews");
    let any = item("istio.networking.v1alpha3.VirtualService", &key, json!({}), &vs_spec("reviews"), 42);
    assert_eq!(decode_item(&any, ""), Ok(Item { name: "bookinfo/reviews".into(), version: "42".into() }));
}

#[test]
fn items_istiod_would_drop_are_named() {
    let vs = "istio.networking.v1alpha3.VirtualService";
    let spec = vs_spec("h");
    let three_parts = item(vs, &vs_key("a/b", "c"), json!({}), &spec, 1);
    assert_eq!(decode_item(&three_parts, ""), Err(ItemError::Name("a/b/c".into())));

    let envoy_body = item("envoy.config.cluster.v3.Cluster", &vs_key("a", "b"), json!({}), &[], 1);
    assert!(matches!(decode_item(&envoy_body, ""), Err(ItemError::BodyType { .. })));

    let mut not_wrapped = item(vs, &vs_key("a", "b"), json!({}), &spec, 1);
    not_wrapped.type_url = "type.googleapis.com/istio.networking.v1alpha3.VirtualService".into();
    assert!(matches!(decode_item(&not_wrapped, ""), Err(ItemError::NotAResource(_))));

    let bare = Any { type_url: RESOURCE_TYPE_URL.into(), value: Resource::default().encode_to_vec() };
    assert_eq!(decode_item(&bare, ""), Err(ItemError::NoMetadata));

    let garbage = Any { type_url: RESOURCE_TYPE_URL.into(), value: vec![0x0a, 0x7f] };
    assert!(matches!(decode_item(&garbage, ""), Err(ItemError::Decode(_))));

    let canary = item(vs, &vs_key("a", "b"), json!({"istio.io/rev": "canary"}), &spec, 1);
    assert!(matches!(decode_item(&canary, "stable"), Err(ItemError::Revision { .. })));
    assert!(decode_item(&canary, "canary").is_ok());
    assert!(decode_item(&canary, "").is_ok(), "an istiod without a revision takes everything");
}

/// Bodies whose message is in the descriptor pool are decoded, and unknown
/// fields rejected (the Istio selector types are in the pool already).
#[test]
fn a_body_in_the_pool_is_decoded_strictly() {
    let port_selector = "istio.type.v1beta1.PortSelector";
    let good = item(port_selector, &vs_key("a", "b"), json!({}), &[0x08, 0x50], 1);
    assert!(decode_item(&good, "").is_ok());
    let unknown_field = item(port_selector, &vs_key("a", "b"), json!({}), &[0x08, 0x50, 0xf8, 0x06, 0x01], 1);
    assert!(
        matches!(decode_item(&unknown_field, ""), Err(ItemError::Body { .. })),
        "{:?}",
        decode_item(&unknown_field, "")
    );
}

#[test]
fn a_meshconfig_with_content_is_read_and_not_acked_an_empty_one_is_acked() {
    let mesh = Any { type_url: MESH_CONFIG_TYPE_URL.into(), value: vec![] };
    let checked = CheckedItems::default();
    let full = read(Kind::MeshConfig, &response(MESH_CONFIG, vec![mesh]), "", &checked);
    assert_eq!(full, Reading { ack: false, kept: 0, dropped: vec![] });
    let empty = read(Kind::MeshConfig, &response(MESH_CONFIG, vec![]), "", &checked);
    assert!(empty.ack && empty.dropped.is_empty());
    let wrapped = Any { type_url: RESOURCE_TYPE_URL.into(), value: vec![] };
    let r = read(Kind::MeshConfig, &response(MESH_CONFIG, vec![wrapped]), "", &checked);
    assert!(!r.ack);
    assert_eq!(r.dropped, [ItemError::MeshConfigType(RESOURCE_TYPE_URL.into())]);
}

#[test]
fn a_response_is_acked_even_when_items_are_dropped() {
    let vs = "istio.networking.v1alpha3.VirtualService";
    let good = item(vs, &vs_key("a", "one"), json!({}), &vs_spec("one"), 5);
    let bad = item(vs, &vs_key("a/x", "two"), json!({}), &vs_spec("two"), 6);
    let checked = CheckedItems::default();
    let vs_response = response("networking.istio.io/v1/VirtualService", vec![good.clone(), bad.clone()]);
    let r = read(Kind::VirtualService, &vs_response, "", &checked);
    assert!(r.ack, "istiod never NACKs: it drops the item and ACKs");
    assert_eq!(r.kept, 1);
    assert_eq!(r.dropped, [ItemError::Name("a/x/two".into())]);
    assert_eq!(checked.len(), 1, "only the good item is remembered");
    // The next client (or response) with the same bytes: the good item is
    // known, the bad one is decoded again and dropped again.
    let again = read(Kind::VirtualService, &vs_response, "", &checked);
    assert_eq!((again.kept, again.dropped.len(), checked.len()), (1, 1, 1));
    // One byte different is a different item: decoded in full.
    let mut edited = good;
    *edited.value.last_mut().unwrap() ^= 1;
    let r =
        read(Kind::VirtualService, &response("networking.istio.io/v1/VirtualService", vec![edited, bad]), "", &checked);
    assert_eq!((r.kept, checked.len()), (1, 2));
}
