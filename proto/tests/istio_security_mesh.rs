//! The Istio security, telemetry, extension and mesh kinds in Keelson's
//! descriptor pool carry istio/api's wire format: istio.io's documentation
//! examples decode as proto3 JSON (unknown fields and enum values rejected),
//! survive a protobuf round trip unchanged, and hand-encoded messages using
//! istio/api's field numbers decode to the fields those numbers name.

// The MeshConfig example is one large `json!` literal.
#![recursion_limit = "256"]

use prost::Message;
use prost_reflect::{DynamicMessage, MessageDescriptor, SerializeOptions};
use serde_json::{Value, json};

const AUTHORIZATION_POLICY: &str = "istio.security.v1beta1.AuthorizationPolicy";
const PEER_AUTHENTICATION: &str = "istio.security.v1beta1.PeerAuthentication";
const REQUEST_AUTHENTICATION: &str = "istio.security.v1beta1.RequestAuthentication";
const TELEMETRY: &str = "istio.telemetry.v1alpha1.Telemetry";
const WASM_PLUGIN: &str = "istio.extensions.v1alpha1.WasmPlugin";
const MESH_CONFIG: &str = "istio.mesh.v1alpha1.MeshConfig";
const PROXY_CONFIG: &str = "istio.mesh.v1alpha1.ProxyConfig";

fn descriptor(name: &str) -> MessageDescriptor {
    keelson_proto::descriptors()
        .get_message_by_name(name)
        .unwrap_or_else(|| panic!("{name} is not in keelson_proto::descriptors()"))
}

fn from_json(name: &str, spec: &Value) -> Result<DynamicMessage, String> {
    DynamicMessage::deserialize(descriptor(name), spec.clone()).map_err(|e| e.to_string())
}

fn to_json(message: &DynamicMessage) -> Value {
    message
        .serialize_with_options(serde_json::value::Serializer, &SerializeOptions::new())
        .expect("a decoded message serializes to JSON")
}

/// Decodes `spec`, encodes it to protobuf, decodes that again and returns
/// the JSON of the result. (Map entries encode in hash order, so the bytes
/// are compared by length only; the JSON comparison is exact.)
fn through_protobuf(name: &str, spec: &Value) -> Value {
    let decoded = from_json(name, spec).unwrap_or_else(|e| panic!("{name} rejected {spec}: {e}"));
    let bytes = decoded.encode_to_vec();
    let again = DynamicMessage::decode(descriptor(name), bytes.as_slice()).expect("own encoding decodes");
    assert!(again.unknown_fields().next().is_none(), "{name}: own encoding left unknown fields");
    assert_eq!(again.encode_to_vec().len(), bytes.len(), "{name}: re-encoding changed size");
    assert_eq!(to_json(&again), to_json(&decoded), "{name} changed in a protobuf round trip");
    to_json(&again)
}

fn assert_round_trip(name: &str, spec: Value) {
    assert_eq!(through_protobuf(name, &spec), spec, "{name} JSON changed through protobuf");
}

fn assert_rejected(name: &str, spec: Value, needle: &str) {
    let err = from_json(name, &spec).expect_err(&format!("{name} accepted {spec}"));
    assert!(err.contains(needle), "{name}: error {err:?} does not mention {needle:?}");
}

/// Hand-written protobuf wire encoding, independent of the descriptors, so
/// the spot checks prove field numbers rather than names.
#[derive(Default)]
struct Wire(Vec<u8>);

impl Wire {
    fn raw_varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
    fn varint(mut self, field: u32, v: u64) -> Self {
        self.raw_varint(u64::from(field) << 3);
        self.raw_varint(v);
        self
    }
    fn bytes(mut self, field: u32, data: &[u8]) -> Self {
        self.raw_varint((u64::from(field) << 3) | 2);
        self.raw_varint(data.len() as u64);
        self.0.extend_from_slice(data);
        self
    }
    fn str(self, field: u32, s: &str) -> Self {
        self.bytes(field, s.as_bytes())
    }
    fn msg(self, field: u32, inner: Wire) -> Self {
        self.bytes(field, &inner.0)
    }
}

fn w() -> Wire {
    Wire::default()
}

/// A `map<string, string>` entry (key 1, value 2).
fn entry(key: &str, value: &str) -> Wire {
    w().str(1, key).str(2, value)
}

fn assert_wire(name: &str, wire: Wire, expected: Value) {
    let message = DynamicMessage::decode(descriptor(name), wire.0.as_slice()).expect("hand-encoded bytes decode");
    assert_eq!(to_json(&message), expected, "{name}: a field number does not match istio/api");
}

#[test]
fn every_kind_is_in_the_descriptor_pool() {
    for name in [AUTHORIZATION_POLICY, PEER_AUTHENTICATION, REQUEST_AUTHENTICATION, TELEMETRY, WASM_PLUGIN, MESH_CONFIG]
    {
        assert_eq!(descriptor(name).full_name(), name);
    }
}

#[test]
fn authorization_policy_docs_examples_round_trip() {
    // ALLOW is the enum's zero value: proto3 JSON leaves it out on the way back.
    let allow = json!({
        "action": "ALLOW",
        "rules": [{
            "from": [{"source": {"principals": ["cluster.local/ns/default/sa/sleep"]}}, {"source": {"namespaces": ["test"]}}],
            "to": [{"operation": {"methods": ["GET"], "paths": ["/info*"]}}, {"operation": {"methods": ["POST"], "paths": ["/data"]}}],
            "when": [{"key": "request.auth.claims[iss]", "values": ["https://accounts.google.com"]}]
        }]
    });
    let mut expected = allow.clone();
    expected.as_object_mut().unwrap().remove("action");
    assert_eq!(through_protobuf(AUTHORIZATION_POLICY, &allow), expected);

    assert_round_trip(
        AUTHORIZATION_POLICY,
        json!({
            "action": "DENY",
            "rules": [{"from": [{"source": {"namespaces": ["dev"]}}], "to": [{"operation": {"methods": ["POST"], "ports": ["8080"]}}]}]
        }),
    );
    assert_round_trip(
        AUTHORIZATION_POLICY,
        json!({
            "selector": {"matchLabels": {"app": "myapi"}},
            "action": "AUDIT",
            "rules": [{"to": [{"operation": {"methods": ["GET"], "paths": ["/user/profile/*"]}}]}]
        }),
    );
    assert_round_trip(
        AUTHORIZATION_POLICY,
        json!({
            "selector": {"matchLabels": {"app": "istio-ingressgateway"}},
            "action": "CUSTOM",
            "provider": {"name": "my-custom-authz"},
            "rules": [{"to": [{"operation": {"paths": ["/admin/*"]}}]}]
        }),
    );
    // A waypoint policy exercising every Source, Operation and Condition field.
    assert_round_trip(
        AUTHORIZATION_POLICY,
        json!({
            "targetRefs": [{"kind": "Service", "name": "reviews"}, {"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "waypoint"}],
            "action": "DENY",
            "rules": [{
                "from": [{"source": {
                    "principals": ["cluster.local/ns/a/sa/x"], "notPrincipals": ["cluster.local/ns/a/sa/y"],
                    "requestPrincipals": ["issuer/sub"], "notRequestPrincipals": ["issuer/bad"],
                    "namespaces": ["prod"], "notNamespaces": ["dev"],
                    "ipBlocks": ["203.0.113.0/24"], "notIpBlocks": ["203.0.113.4"],
                    "remoteIpBlocks": ["198.51.100.0/24"], "notRemoteIpBlocks": ["198.51.100.7"],
                    "trustDomains": ["cluster.local"], "notTrustDomains": ["evil.example"]
                }}, {"source": {"serviceAccounts": ["prod/frontend"], "notServiceAccounts": ["prod/legacy"]}}],
                "to": [{"operation": {
                    "hosts": ["*.example.com"], "notHosts": ["admin.example.com"], "ports": ["8080"], "notPorts": ["9090"],
                    "methods": ["GET", "HEAD"], "notMethods": ["DELETE"], "paths": ["/foo/{*}"], "notPaths": ["/admin*"]
                }}],
                "when": [{"key": "request.headers[version]", "values": ["v1"], "notValues": ["v0"]}]
            }]
        }),
    );
    // The singular form older clients send, with the optional namespace.
    assert_round_trip(
        AUTHORIZATION_POLICY,
        json!({
            "targetRef": {"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "ingress", "namespace": "istio-ingress"},
            "action": "DENY",
            "rules": [{}]
        }),
    );
}

#[test]
fn authorization_policy_rejects_typos_and_unknown_enum_values() {
    assert_rejected(AUTHORIZATION_POLICY, json!({"acton": "DENY"}), "acton");
    assert_rejected(AUTHORIZATION_POLICY, json!({"action": "PERMIT"}), "PERMIT");
    assert_rejected(
        AUTHORIZATION_POLICY,
        json!({"rules": [{"from": [{"source": {"principal": ["x"]}}]}]}),
        "principal",
    );
}

#[test]
fn authorization_policy_field_numbers() {
    let source = w().str(14, "evil.example").str(11, "prod/frontend");
    let rule = w()
        .msg(1, w().msg(1, source))
        .msg(2, w().msg(1, w().str(8, "/admin*")))
        .msg(3, w().str(1, "request.headers[x]").str(3, "a"));
    let wire = w()
        .varint(3, 3)
        .msg(4, w().str(1, "my-authz"))
        .msg(6, w().str(1, "gateway.networking.k8s.io").str(2, "Gateway").str(3, "ingress"))
        .msg(2, rule);
    assert_wire(
        AUTHORIZATION_POLICY,
        wire,
        json!({
            "targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "ingress"}],
            "rules": [{
                "from": [{"source": {"serviceAccounts": ["prod/frontend"], "notTrustDomains": ["evil.example"]}}],
                "to": [{"operation": {"notPaths": ["/admin*"]}}],
                "when": [{"key": "request.headers[x]", "notValues": ["a"]}]
            }],
            "action": "CUSTOM",
            "provider": {"name": "my-authz"}
        }),
    );
}

#[test]
fn peer_authentication_docs_examples_round_trip() {
    assert_round_trip(PEER_AUTHENTICATION, json!({"mtls": {"mode": "STRICT"}}));
    assert_round_trip(PEER_AUTHENTICATION, json!({"mtls": {"mode": "PERMISSIVE"}}));
    assert_round_trip(
        PEER_AUTHENTICATION,
        json!({
            "selector": {"matchLabels": {"app": "finance"}},
            "mtls": {"mode": "STRICT"},
            "portLevelMtls": {"8080": {"mode": "DISABLE"}}
        }),
    );
    assert_rejected(PEER_AUTHENTICATION, json!({"mTLS": {"mode": "STRICT"}}), "mTLS");
    assert_rejected(PEER_AUTHENTICATION, json!({"mtls": {"mode": "REQUIRED"}}), "REQUIRED");
}

#[test]
fn peer_authentication_field_numbers() {
    let wire = w()
        .msg(1, w().msg(1, entry("app", "finance")))
        .msg(2, w().varint(1, 3))
        .msg(3, w().varint(1, 8080).msg(2, w().varint(1, 1)));
    assert_wire(
        PEER_AUTHENTICATION,
        wire,
        json!({
            "selector": {"matchLabels": {"app": "finance"}},
            "mtls": {"mode": "STRICT"},
            "portLevelMtls": {"8080": {"mode": "DISABLE"}}
        }),
    );
}

#[test]
fn request_authentication_docs_examples_round_trip() {
    assert_round_trip(
        REQUEST_AUTHENTICATION,
        json!({
            "selector": {"matchLabels": {"app": "httpbin"}},
            "jwtRules": [{"issuer": "issuer-foo", "jwksUri": "https://example.com/.well-known/jwks.json"}]
        }),
    );
    assert_round_trip(
        REQUEST_AUTHENTICATION,
        json!({
            "selector": {"matchLabels": {"app": "httpbin"}},
            "jwtRules": [{
                "issuer": "testing@secure.istio.io",
                "jwksUri": "https://raw.githubusercontent.com/istio/istio/release-1.24/security/tools/jwt/samples/jwks.json",
                "outputClaimToHeaders": [{"header": "x-jwt-claim-foo", "claim": "foo"}]
            }]
        }),
    );
    assert_round_trip(
        REQUEST_AUTHENTICATION,
        json!({
            "targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "bookinfo-gateway"}],
            "jwtRules": [{
                "issuer": "https://example.com",
                "audiences": ["bookstore_android.apps.example.com", "bookstore_web.apps.example.com"],
                "jwks": "{\"keys\":[]}",
                "fromHeaders": [{"name": "x-jwt-assertion", "prefix": "Bearer "}],
                "fromParams": ["my_token"],
                "fromCookies": ["auth-token"],
                "outputPayloadToHeader": "x-jwt-payload",
                "forwardOriginalToken": true,
                "timeout": "10s"
            }]
        }),
    );
    assert_round_trip(
        REQUEST_AUTHENTICATION,
        json!({
            "targetRef": {"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "waypoint"},
            "jwtRules": [{"issuer": "issuer-bar"}]
        }),
    );
    // The CRD also admits `jwks_uri`; it is the proto field name, so it decodes.
    let spec = json!({"jwtRules": [{"issuer": "i", "jwks_uri": "https://example.com/jwks"}]});
    assert_eq!(
        through_protobuf(REQUEST_AUTHENTICATION, &spec),
        json!({"jwtRules": [{"issuer": "i", "jwksUri": "https://example.com/jwks"}]})
    );

    assert_rejected(REQUEST_AUTHENTICATION, json!({"jwtRules": [{"issuer": "i", "jwksUrl": "x"}]}), "jwksUrl");
    assert_rejected(REQUEST_AUTHENTICATION, json!({"jwtRule": []}), "jwtRule");
}

#[test]
fn request_authentication_field_numbers() {
    let rule = w()
        .str(1, "issuer-foo")
        .str(10, "{}")
        .str(12, "auth-token")
        .msg(13, w().varint(1, 5))
        .msg(11, w().str(1, "x-sub").str(2, "sub"))
        .msg(6, w().str(1, "authorization").str(2, "Bearer "))
        .varint(9, 1)
        .str(8, "x-payload");
    let wire = w().msg(4, w().str(2, "Gateway").str(3, "gw")).msg(2, rule);
    assert_wire(
        REQUEST_AUTHENTICATION,
        wire,
        json!({
            "jwtRules": [{
                "issuer": "issuer-foo", "jwks": "{}", "fromHeaders": [{"name": "authorization", "prefix": "Bearer "}],
                "outputPayloadToHeader": "x-payload", "fromCookies": ["auth-token"], "forwardOriginalToken": true,
                "outputClaimToHeaders": [{"header": "x-sub", "claim": "sub"}], "timeout": "5s"
            }],
            "targetRefs": [{"kind": "Gateway", "name": "gw"}]
        }),
    );
}

#[test]
fn telemetry_docs_examples_round_trip() {
    assert_round_trip(TELEMETRY, json!({"tracing": [{"randomSamplingPercentage": 10.0}]}));
    assert_round_trip(
        TELEMETRY,
        json!({
            "selector": {"matchLabels": {"service.istio.io/canonical-name": "foo"}},
            "tracing": [{"disableSpanReporting": true}]
        }),
    );
    assert_round_trip(
        TELEMETRY,
        json!({
            "tracing": [{"match": {"mode": "CLIENT"}, "providers": [{"name": "zipkin"}], "randomSamplingPercentage": 10.0,
                "customTags": {
                    "my_new_foo_tag": {"literal": {"value": "foo"}},
                    "pod": {"environment": {"name": "POD_NAME", "defaultValue": "unknown"}},
                    "user": {"header": {"name": "x-user", "defaultValue": "anonymous"}},
                    "sni": {"formatter": {"value": "%REQUESTED_SERVER_NAME%"}}
                },
                "useRequestIdForTraceSampling": false, "enableIstioTags": true}]
        }),
    );
    assert_round_trip(
        TELEMETRY,
        json!({
            "selector": {"matchLabels": {"istio": "egressgateway"}},
            "tracing": [{"disableContextPropagation": true}]
        }),
    );
    // ALL_METRICS is a zero value, but inside a oneof it keeps its presence.
    assert_round_trip(
        TELEMETRY,
        json!({
            "metrics": [{"providers": [{"name": "prometheus"}], "overrides": [{"match": {"metric": "ALL_METRICS", "mode": "SERVER"}, "disabled": true}]}]
        }),
    );
    assert_round_trip(
        TELEMETRY,
        json!({
            "metrics": [{
                "providers": [{"name": "prometheus"}],
                "overrides": [
                    {"tagOverrides": {"request_method": {"value": "request.method"}, "request_host": {"value": "request.host"}}},
                    {"match": {"metric": "REQUEST_COUNT"}, "tagOverrides": {"response_code": {"operation": "REMOVE"}}},
                    {"match": {"customMetric": "my_custom_metric", "mode": "CLIENT"}, "disabled": false}
                ],
                "reportingInterval": "10s"
            }]
        }),
    );
    assert_round_trip(TELEMETRY, json!({"accessLogging": [{"providers": [{"name": "envoy"}]}]}));
    assert_round_trip(
        TELEMETRY,
        json!({
            "targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "waypoint"}],
            "accessLogging": [{"match": {"mode": "SERVER"}, "providers": [{"name": "otel"}], "disabled": false, "filter": {"expression": "response.code >= 400"}}]
        }),
    );
    assert_round_trip(
        TELEMETRY,
        json!({"targetRef": {"kind": "Gateway", "name": "gw"}, "accessLogging": [{"disabled": true}]}),
    );

    assert_rejected(TELEMETRY, json!({"accessLogs": []}), "accessLogs");
    assert_rejected(
        TELEMETRY,
        json!({"metrics": [{"overrides": [{"match": {"metric": "REQUEST_TOTAL"}}]}]}),
        "REQUEST_TOTAL",
    );
    assert_rejected(TELEMETRY, json!({"tracing": [{"match": {"mode": "BOTH"}}]}), "BOTH");
}

#[test]
fn telemetry_field_numbers() {
    let tracing = w()
        .msg(7, w().varint(1, 2))
        .msg(9, w().varint(1, 1))
        .msg(5, w().str(1, "sni").msg(2, w().msg(4, w().str(1, "%REQUESTED_SERVER_NAME%"))));
    let metrics = w()
        .msg(2, w().msg(1, w().str(2, "my_metric")).msg(3, w().str(1, "code").msg(2, w().varint(1, 1))))
        .msg(3, w().varint(1, 10));
    let logging = w().msg(4, w().varint(1, 1)).msg(3, w().str(1, "response.code >= 400"));
    let wire = w().msg(6, w().str(3, "waypoint")).msg(2, tracing).msg(3, metrics).msg(4, logging);
    assert_wire(
        TELEMETRY,
        wire,
        json!({
            "tracing": [{"customTags": {"sni": {"formatter": {"value": "%REQUESTED_SERVER_NAME%"}}}, "match": {"mode": "SERVER"}, "disableContextPropagation": true}],
            "metrics": [{"overrides": [{"match": {"customMetric": "my_metric"}, "tagOverrides": {"code": {"operation": "REMOVE"}}}], "reportingInterval": "10s"}],
            "accessLogging": [{"filter": {"expression": "response.code >= 400"}, "match": {"mode": "CLIENT"}}],
            "targetRefs": [{"name": "waypoint"}]
        }),
    );
}

#[test]
fn wasm_plugin_docs_examples_round_trip() {
    assert_round_trip(
        WASM_PLUGIN,
        json!({
            "selector": {"matchLabels": {"istio": "ingressgateway"}},
            "url": "file:///opt/filters/openid.wasm",
            "sha256": "1ef0c9a92b0420cf25f7fe5d481b231464bc88f486ca3b9c83ed5cc21d2f6210",
            "phase": "AUTHN",
            "pluginConfig": {"openid_server": "authn", "openid_realm": "ingress"}
        }),
    );
    assert_round_trip(
        WASM_PLUGIN,
        json!({
            "selector": {"matchLabels": {"istio": "ingressgateway"}},
            "url": "oci://private-registry:5000/openid-connect/openid:latest",
            "imagePullPolicy": "IfNotPresent",
            "imagePullSecret": "private-registry-pull-secret",
            "phase": "AUTHN",
            "pluginConfig": {"openid_server": "authn", "openid_realm": "ingress"},
            "vmConfig": {"env": [{"name": "POD_NAME", "valueFrom": "HOST"}, {"name": "TRUST_DOMAIN", "value": "cluster.local"}]}
        }),
    );
    assert_round_trip(
        WASM_PLUGIN,
        json!({
            "selector": {"matchLabels": {"istio": "ingressgateway"}},
            "url": "oci://private-registry:5000/acl-check/acl:latest",
            "imagePullPolicy": "Always",
            "imagePullSecret": "private-registry-pull-secret",
            "phase": "AUTHZ",
            "priority": 1000,
            "pluginConfig": {"acl_server": "some_server", "set_header": "authz_complete", "nested": {"enabled": true, "list": ["a", "b"]}}
        }),
    );
    assert_round_trip(
        WASM_PLUGIN,
        json!({
            "targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "bookinfo-gateway"}],
            "url": "https://private-bucket/filters/basic-auth.wasm",
            "pluginName": "basic_auth",
            "phase": "STATS",
            "failStrategy": "FAIL_OPEN",
            "type": "NETWORK",
            "verificationKey": "unused",
            "match": [{"mode": "SERVER", "ports": [{"number": 80}, {"number": 443}]}]
        }),
    );
    assert_round_trip(
        WASM_PLUGIN,
        json!({"targetRef": {"kind": "Gateway", "name": "gw"}, "url": "oci://r/p:1", "failStrategy": "FAIL_RELOAD", "type": "HTTP"}),
    );

    assert_rejected(WASM_PLUGIN, json!({"url": "oci://x", "imagePullPolicy": "IF_NOT_PRESENT"}), "IF_NOT_PRESENT");
    assert_rejected(WASM_PLUGIN, json!({"url": "oci://x", "phaze": "AUTHN"}), "phaze");
}

#[test]
fn wasm_plugin_field_numbers() {
    let wire = w()
        .str(2, "oci://r/p:1")
        .msg(16, w().str(2, "Gateway").str(3, "gw"))
        .varint(13, 2)
        .varint(14, 2)
        .msg(10, w().varint(1, 7))
        .msg(11, w().msg(1, w().str(1, "POD_NAME").varint(3, 1)))
        .varint(4, 2)
        .varint(9, 3)
        .str(8, "root")
        .msg(12, w().varint(1, 2).msg(2, w().varint(1, 443)));
    assert_wire(
        WASM_PLUGIN,
        wire,
        json!({
            "url": "oci://r/p:1", "imagePullPolicy": "Always", "pluginName": "root", "phase": "STATS", "priority": 7,
            "vmConfig": {"env": [{"name": "POD_NAME", "valueFrom": "HOST"}]},
            "match": [{"mode": "SERVER", "ports": [{"number": 443}]}],
            "failStrategy": "FAIL_RELOAD", "type": "NETWORK",
            "targetRefs": [{"kind": "Gateway", "name": "gw"}]
        }),
    );
}

/// MeshConfig and ProxyConfig, in their own file for length.
#[path = "istio_security_mesh/mesh.rs"]
mod mesh;
