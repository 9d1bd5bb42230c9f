//! What the istiod-like client asks for and what the hub holds in
//! real_mcp.rs: the type URLs per Istio version, each kind's body message,
//! and Istio objects from istio.io's docs.

use std::collections::BTreeSet;

pub use keelson_loadtest::istio::IstioVersion;

pub const MESH: &str = "core/v1alpha1/MeshConfig";

/// What an istiod of `version` requests after MeshConfig: the simulated
/// istiod's list (keelson-loadtest), one source for both clients.
pub fn istio_types(version: IstioVersion) -> Vec<&'static str> {
    version.requested().skip(1).map(|(url, _)| url).collect()
}

/// The body message every kind must arrive as, whatever the GVK's version.
pub fn body_message(kind: &str) -> &'static str {
    match kind {
        "AuthorizationPolicy" => "istio.security.v1beta1.AuthorizationPolicy",
        "PeerAuthentication" => "istio.security.v1beta1.PeerAuthentication",
        "RequestAuthentication" => "istio.security.v1beta1.RequestAuthentication",
        "ProxyConfig" => "istio.networking.v1beta1.ProxyConfig",
        "Telemetry" => "istio.telemetry.v1alpha1.Telemetry",
        "WasmPlugin" => "istio.extensions.v1alpha1.WasmPlugin",
        "VirtualService" => "istio.networking.v1alpha3.VirtualService",
        "DestinationRule" => "istio.networking.v1alpha3.DestinationRule",
        "Gateway" => "istio.networking.v1alpha3.Gateway",
        "ServiceEntry" => "istio.networking.v1alpha3.ServiceEntry",
        "Sidecar" => "istio.networking.v1alpha3.Sidecar",
        "WorkloadEntry" => "istio.networking.v1alpha3.WorkloadEntry",
        "WorkloadGroup" => "istio.networking.v1alpha3.WorkloadGroup",
        "EnvoyFilter" => "istio.networking.v1alpha3.EnvoyFilter",
        other => panic!("no body message for {other}"),
    }
}

pub fn kind_of(type_url: &str) -> &str {
    type_url.rsplit('/').next().unwrap()
}

/// Istio objects as istio.io's task and reference pages write them, one per
/// file so that an edit or a delete touches exactly one object.
pub const OBJECTS: &[(&str, &str)] = &[
    (
        "vs-reviews.yaml",
        r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: bookinfo}
spec:
  hosts: [reviews]
  http:
    - match:
        - headers:
            end-user: {exact: jason}
      route:
        - destination: {host: reviews, subset: v2}
    - route:
        - destination: {host: reviews, subset: v1}
          weight: 50
        - destination: {host: reviews, subset: v3}
          weight: 50
"#,
    ),
    (
        "vs-ratings-canary.yaml",
        r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: ratings-canary
  namespace: bookinfo
  labels: {istio.io/rev: canary}
spec:
  hosts: [ratings]
  http:
    - route:
        - destination: {host: ratings, subset: v1}
"#,
    ),
    (
        "dr-reviews.yaml",
        r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: bookinfo}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {simple: RANDOM}
  subsets:
    - name: v1
      labels: {version: v1}
    - name: v2
      labels: {version: v2}
      trafficPolicy:
        loadBalancer: {simple: ROUND_ROBIN}
    - name: v3
      labels: {version: v3}
"#,
    ),
    (
        "gateway.yaml",
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: bookinfo-gateway, namespace: bookinfo}
spec:
  selector: {istio: ingressgateway}
  servers:
    - port: {number: 80, name: http, protocol: HTTP}
      hosts: [bookinfo.example.com]
    - port: {number: 443, name: https, protocol: HTTPS}
      hosts: [bookinfo.example.com]
      tls: {mode: SIMPLE, credentialName: bookinfo-secret}
"#,
    ),
    (
        "se-external.yaml",
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: external-svc-https, namespace: bookinfo}
spec:
  hosts: [api.dropboxapi.com, www.googleapis.com]
  location: MESH_EXTERNAL
  ports:
    - {number: 443, name: https, protocol: TLS}
  resolution: DNS
"#,
    ),
    (
        "authz-httpbin.yaml",
        r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: httpbin, namespace: foo}
spec:
  selector:
    matchLabels: {app: httpbin, version: v1}
  action: ALLOW
  rules:
    - from:
        - source: {principals: ["cluster.local/ns/default/sa/sleep"]}
        - source: {namespaces: [dev]}
      to:
        - operation: {methods: [GET]}
      when:
        - key: request.auth.claims[iss]
          values: ["https://accounts.google.com"]
"#,
    ),
    (
        "peer-authn.yaml",
        r#"apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec:
  mtls: {mode: STRICT}
"#,
    ),
    (
        "telemetry.yaml",
        r#"apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  tracing:
    - randomSamplingPercentage: 10.0
  accessLogging:
    - providers: [{name: envoy}]
"#,
    ),
];

/// `[mcp] mesh_config`: only non-default values, so that istiod's view
/// (proto3 JSON, defaults omitted) must equal it exactly.
pub const MESH_CONFIG: &str = r#"trustDomain: example.keelson
enableTracing: true
accessLogFile: /dev/stdout
accessLogEncoding: JSON
outboundTrafficPolicy: {mode: ALLOW_ANY}
defaultConfig:
  discoveryAddress: istiod.istio-system.svc:15012
  drainDuration: 45s
  proxyMetadata: {ISTIO_META_DNS_CAPTURE: "true"}
"#;

/// Names each kind holds for an istiod of no revision (it takes everything).
pub fn all_names(kind: &str) -> BTreeSet<String> {
    let names: &[&str] = match kind {
        "VirtualService" => &["bookinfo/ratings-canary", "bookinfo/reviews"],
        "DestinationRule" => &["bookinfo/reviews"],
        "Gateway" => &["bookinfo/bookinfo-gateway"],
        "ServiceEntry" => &["bookinfo/external-svc-https"],
        "AuthorizationPolicy" => &["foo/httpbin"],
        "PeerAuthentication" => &["istio-system/default"],
        "Telemetry" => &["istio-system/mesh-default"],
        _ => &[],
    };
    names.iter().map(|s| s.to_string()).collect()
}
