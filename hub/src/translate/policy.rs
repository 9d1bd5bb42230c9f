//! DestinationRule traffic policies → Cluster fields (istiod's
//! `cluster_traffic_policy.go`, `cluster_tls.go`). Every field Keelson does
//! not translate is reported by name, never silently dropped.

use serde_json::{Map, Value, json};

pub const HTTP_PROTOCOL_OPTIONS_TYPE: &str =
    "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
const UPSTREAM_TLS_TYPE: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";

/// Warnings about one input object, gathered while it is translated.
#[derive(Debug, Default)]
pub struct Warn {
    pub messages: Vec<String>,
}

impl Warn {
    pub fn unsupported(&mut self, path: &str) {
        self.messages.push(format!("{path} is not supported by Keelson's translation; it is ignored"));
    }

    /// Reports every field of `obj` that is not in `known`, under `path`.
    pub fn unknown_fields(&mut self, obj: &Value, path: &str, known: &[&str]) {
        for k in obj.as_object().into_iter().flat_map(|o| o.keys()) {
            if !known.contains(&k.as_str()) {
                self.unsupported(&format!("{path}.{k}"));
            }
        }
    }
}

/// A duration as Istio writes it (`5s`, `1.5s`, `100ms`, `1m30s`), in
/// proto3 JSON (`90s`); `None` (and a warning) when unreadable.
pub fn duration(v: &Value, path: &str, warn: &mut Warn) -> Option<Value> {
    let text = v.as_str().unwrap_or_default();
    let parsed = text
        .strip_suffix('s')
        .and_then(|n| n.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(std::time::Duration::from_secs_f64)
        .or_else(|| humantime::parse_duration(text).ok());
    match parsed {
        Some(d) => Some(json!(format_duration(d))),
        None => {
            warn.messages.push(format!("{path}: {v} is not a duration; it is ignored"));
            None
        }
    }
}

pub fn format_duration(d: std::time::Duration) -> String {
    match d.subsec_nanos() {
        0 => format!("{}s", d.as_secs()),
        n => format!("{}.{}s", d.as_secs(), format!("{n:09}").trim_end_matches('0')),
    }
}

/// The policy that applies to `port` of a subset: the rule's top-level
/// policy, its port-level settings for `port`, then the subset's policy and
/// its port-level settings, each replacing whole sections (istiod's
/// `MergeTrafficPolicy`).
pub fn effective(top: Option<&Value>, subset: Option<&Value>, port: u32) -> Option<Value> {
    let mut out: Option<Map<String, Value>> = None;
    for policy in [top, subset].into_iter().flatten() {
        let Some(obj) = policy.as_object() else { continue };
        let merged = out.get_or_insert_with(Map::new);
        for (k, v) in obj {
            if k != "portLevelSettings" {
                merged.insert(k.clone(), v.clone());
            }
        }
        let levels = obj.get("portLevelSettings").and_then(Value::as_array);
        let level = levels
            .into_iter()
            .flatten()
            .find(|l| l.pointer("/port/number").and_then(Value::as_u64) == Some(port.into()));
        for (k, v) in level.and_then(Value::as_object).into_iter().flatten() {
            if k != "port" {
                merged.insert(k.clone(), v.clone());
            }
        }
    }
    out.map(Value::Object)
}

/// Applies a merged traffic policy to a cluster being built.
pub fn apply(policy: &Value, c: &mut Value, http: &mut Map<String, Value>, warn: &mut Warn) {
    warn.unknown_fields(policy, "trafficPolicy", &["loadBalancer", "connectionPool", "outlierDetection", "tls"]);
    if let Some(lb) = policy.get("loadBalancer") {
        load_balancer(lb, c, warn);
    }
    if let Some(pool) = policy.get("connectionPool") {
        connection_pool(pool, c, http, warn);
    }
    if let Some(od) = policy.get("outlierDetection") {
        outlier_detection(od, c, warn);
    }
    if let Some(tls) = policy.get("tls") {
        upstream_tls(tls, c, warn);
    }
}

fn load_balancer(lb: &Value, c: &mut Value, warn: &mut Warn) {
    warn.unknown_fields(lb, "trafficPolicy.loadBalancer", &["simple", "consistentHash"]);
    match lb.get("simple").and_then(Value::as_str) {
        None | Some("UNSPECIFIED") => {}
        Some("ROUND_ROBIN") => c["lb_policy"] = json!("ROUND_ROBIN"),
        Some("LEAST_CONN" | "LEAST_REQUEST") => c["lb_policy"] = json!("LEAST_REQUEST"),
        Some("RANDOM") => c["lb_policy"] = json!("RANDOM"),
        Some(other) => warn.unsupported(&format!("trafficPolicy.loadBalancer.simple {other}")),
    }
    if let Some(hash) = lb.get("consistentHash") {
        warn.unknown_fields(
            hash,
            "trafficPolicy.loadBalancer.consistentHash",
            &[
                "httpHeaderName",
                "httpCookie",
                "useSourceIp",
                "httpQueryParameterName",
                "ringHash",
                "maglev",
                "minimumRingSize",
            ],
        );
        if hash.get("maglev").is_some() {
            c["lb_policy"] = json!("MAGLEV");
        } else {
            c["lb_policy"] = json!("RING_HASH");
            let min = hash.pointer("/ringHash/minimumRingSize").or_else(|| hash.get("minimumRingSize"));
            if let Some(min) = min.and_then(Value::as_u64).or_else(|| min.and_then(Value::as_str)?.parse().ok()) {
                c["ring_hash_lb_config"] = json!({ "minimum_ring_size": min });
            }
        }
    }
}

/// The route `hash_policy` a consistent-hash load balancer needs (istiod
/// puts it on every route to the cluster).
pub fn hash_policy(policy: &Value) -> Option<Value> {
    let hash = policy.pointer("/loadBalancer/consistentHash")?;
    if let Some(h) = hash.get("httpHeaderName").and_then(Value::as_str) {
        return Some(json!({ "header": { "header_name": h } }));
    }
    if let Some(cookie) = hash.get("httpCookie") {
        let mut c = json!({ "name": cookie.get("name").cloned().unwrap_or_default() });
        if let Some(path) = cookie.get("path") {
            c["path"] = path.clone();
        }
        if let Some(ttl) = cookie.get("ttl").and_then(|t| duration(t, "ttl", &mut Warn::default())) {
            c["ttl"] = ttl;
        }
        return Some(json!({ "cookie": c }));
    }
    if hash.get("useSourceIp").and_then(Value::as_bool) == Some(true) {
        return Some(json!({ "connection_properties": { "source_ip": true } }));
    }
    if let Some(q) = hash.get("httpQueryParameterName").and_then(Value::as_str) {
        return Some(json!({ "query_parameter": { "name": q } }));
    }
    None
}

fn count(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| v.as_str()?.parse().ok())
}

fn connection_pool(pool: &Value, c: &mut Value, http: &mut Map<String, Value>, warn: &mut Warn) {
    warn.unknown_fields(pool, "trafficPolicy.connectionPool", &["tcp", "http"]);
    let mut thresholds = Map::new();
    if let Some(tcp) = pool.get("tcp") {
        warn.unknown_fields(tcp, "trafficPolicy.connectionPool.tcp", &["maxConnections", "connectTimeout"]);
        if let Some(n) = tcp.get("maxConnections").and_then(count) {
            thresholds.insert("max_connections".into(), json!(n));
        }
        if let Some(d) = tcp.get("connectTimeout").and_then(|d| duration(d, "connectionPool.tcp.connectTimeout", warn))
        {
            c["connect_timeout"] = d;
        }
    }
    if let Some(h) = pool.get("http") {
        let known =
            ["http1MaxPendingRequests", "http2MaxRequests", "maxRequestsPerConnection", "maxRetries", "idleTimeout"];
        warn.unknown_fields(h, "trafficPolicy.connectionPool.http", &known);
        for (field, envoy) in [
            ("http1MaxPendingRequests", "max_pending_requests"),
            ("http2MaxRequests", "max_requests"),
            ("maxRetries", "max_retries"),
        ] {
            if let Some(n) = h.get(field).and_then(count) {
                thresholds.insert(envoy.into(), json!(n));
            }
        }
        let mut common = Map::new();
        if let Some(n) = h.get("maxRequestsPerConnection").and_then(count) {
            common.insert("max_requests_per_connection".into(), json!(n));
        }
        if let Some(d) = h.get("idleTimeout").and_then(|d| duration(d, "connectionPool.http.idleTimeout", warn)) {
            common.insert("idle_timeout".into(), d);
        }
        if !common.is_empty() {
            http.insert("common_http_protocol_options".into(), Value::Object(common));
        }
    }
    if !thresholds.is_empty() {
        c["circuit_breakers"] = json!({ "thresholds": [Value::Object(thresholds)] });
    }
}

fn outlier_detection(od: &Value, c: &mut Value, warn: &mut Warn) {
    let known = [
        "consecutive5xxErrors",
        "consecutiveGatewayErrors",
        "interval",
        "baseEjectionTime",
        "maxEjectionPercent",
        "minHealthPercent",
    ];
    warn.unknown_fields(od, "trafficPolicy.outlierDetection", &known);
    let mut out = Map::new();
    if let Some(n) = od.get("consecutive5xxErrors").and_then(count) {
        out.insert("consecutive_5xx".into(), json!(n));
        out.insert("enforcing_consecutive_5xx".into(), json!(if n > 0 { 100 } else { 0 }));
    }
    if let Some(n) = od.get("consecutiveGatewayErrors").and_then(count) {
        out.insert("consecutive_gateway_failure".into(), json!(n));
        out.insert("enforcing_consecutive_gateway_failure".into(), json!(if n > 0 { 100 } else { 0 }));
    }
    for (field, envoy) in [("interval", "interval"), ("baseEjectionTime", "base_ejection_time")] {
        if let Some(d) = od.get(field).and_then(|d| duration(d, &format!("outlierDetection.{field}"), warn)) {
            out.insert(envoy.into(), d);
        }
    }
    if let Some(n) = od.get("maxEjectionPercent").and_then(count) {
        out.insert("max_ejection_percent".into(), json!(n));
    }
    if let Some(n) = od.get("minHealthPercent").and_then(count) {
        c["common_lb_config"] = json!({ "healthy_panic_threshold": { "value": n } });
    }
    c["outlier_detection"] = Value::Object(out);
}

fn upstream_tls(tls: &Value, c: &mut Value, warn: &mut Warn) {
    let known =
        ["mode", "caCertificates", "clientCertificate", "privateKey", "sni", "subjectAltNames", "insecureSkipVerify"];
    warn.unknown_fields(tls, "trafficPolicy.tls", &known);
    let mode = tls.get("mode").and_then(Value::as_str).unwrap_or("DISABLE");
    if mode == "DISABLE" {
        return;
    }
    if mode == "ISTIO_MUTUAL" {
        warn.messages.push(
            "trafficPolicy.tls.mode ISTIO_MUTUAL is rejected: it needs Istio's CA, which Keelson does not run; \
             use MUTUAL with certificate files (the cluster is built without TLS)"
                .into(),
        );
        return;
    }
    let file = |f: &str| tls.get(f).and_then(Value::as_str).map(|p| json!({ "filename": p }));
    let mut common = Map::new();
    let skip_verify = tls.get("insecureSkipVerify").and_then(Value::as_bool) == Some(true);
    if let Some(ca) = file("caCertificates").filter(|_| !skip_verify) {
        let mut validation = json!({ "trusted_ca": ca });
        if let Some(sans) = tls.get("subjectAltNames").and_then(Value::as_array) {
            let matchers: Vec<Value> =
                sans.iter().map(|s| json!({ "san_type": "DNS", "matcher": { "exact": s } })).collect();
            validation["match_typed_subject_alt_names"] = Value::Array(matchers);
        }
        common.insert("validation_context".into(), validation);
    }
    if mode == "MUTUAL" {
        match (file("clientCertificate"), file("privateKey")) {
            (Some(cert), Some(key)) => {
                common.insert("tls_certificates".into(), json!([{ "certificate_chain": cert, "private_key": key }]));
            }
            _ => warn.messages.push("trafficPolicy.tls.mode MUTUAL needs clientCertificate and privateKey".into()),
        }
    } else if mode != "SIMPLE" {
        warn.unsupported(&format!("trafficPolicy.tls.mode {mode}"));
        return;
    }
    let mut context = json!({ "@type": UPSTREAM_TLS_TYPE, "common_tls_context": Value::Object(common) });
    if let Some(sni) = tls.get("sni") {
        context["sni"] = sni.clone();
    }
    c["transport_socket"] = json!({ "name": "envoy.transport_sockets.tls", "typed_config": context });
}
