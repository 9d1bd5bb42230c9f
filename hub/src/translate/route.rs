//! VirtualService `http` routes → Envoy routes (istiod's `route/route.go`:
//! `TranslateRoute`, `TranslateRouteMatch`, `TranslateFault`,
//! `TranslateHeadersOperations`; `route/retry/retry.go`).

use serde_json::{Map, Value, json};

use super::cluster::cluster_name;
use super::policy::{Warn, duration};

const FAULT_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault";
pub const FAULT_FILTER: &str = "envoy.filters.http.fault";
/// istiod's default retry policy (`retry.DefaultPolicy`).
const DEFAULT_RETRY_ON: &str = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes";

/// What route translation needs to know of the world beyond one VirtualService.
pub struct Context<'a> {
    /// The service port the routes are built for.
    pub port: u32,
    /// The namespace short hosts resolve in (the VirtualService's).
    pub namespace: &'a str,
    /// Routes for proxyless gRPC (timeouts as `max_stream_duration`, no
    /// default retries: istiod's grpcgen).
    pub grpc: bool,
    /// Resolves a destination host written in `namespace` to its FQDN and,
    /// if it has exactly one port, that port.
    pub resolve: &'a dyn Fn(&str) -> (String, Option<u32>),
    /// The route `hash_policy` a destination cluster's consistent hash needs.
    pub hash_policy: &'a dyn Fn(&str) -> Option<Value>,
}

/// The routes of one virtual host: the VirtualService's `http` routes bound
/// to this port, or (no VirtualService) one route to the service's cluster.
pub fn routes(vs: Option<&Value>, default_cluster: &str, cx: &Context<'_>, warn: &mut Warn) -> Vec<Value> {
    let Some(spec) = vs else {
        let mut r = json!({ "match": { "prefix": "/" }, "route": { "cluster": default_cluster } });
        finish_action(&mut r, None, None, cx);
        return vec![r];
    };
    warn.unknown_fields(spec, "spec", &["hosts", "gateways", "http", "exportTo"]);
    for field in ["tcp", "tls"] {
        if spec.get(field).is_some() {
            warn.unsupported(&format!("spec.{field}"));
        }
    }
    let mut out = Vec::new();
    for (i, http) in spec.get("http").and_then(Value::as_array).into_iter().flatten().enumerate() {
        out.extend(http_route(http, &format!("spec.http[{i}]"), cx, warn));
    }
    out
}

const ROUTE_FIELDS: &[&str] = &[
    "name",
    "match",
    "route",
    "redirect",
    "rewrite",
    "timeout",
    "retries",
    "fault",
    "mirror",
    "mirrorPercentage",
    "headers",
];

fn http_route(http: &Value, path: &str, cx: &Context<'_>, warn: &mut Warn) -> Vec<Value> {
    warn.unknown_fields(http, path, ROUTE_FIELDS);
    let matches: Vec<Option<&Value>> = match http.get("match").and_then(Value::as_array) {
        Some(list) if !list.is_empty() => list.iter().map(Some).collect(),
        _ => vec![None],
    };
    let mut out = Vec::new();
    for (j, m) in matches.into_iter().enumerate() {
        // A match bound to another port belongs to that port's routes.
        if m.and_then(|m| m.get("port")).and_then(Value::as_u64).is_some_and(|p| p != u64::from(cx.port)) {
            continue;
        }
        let mut r = Map::new();
        if let Some(name) = http.get("name") {
            r.insert("name".into(), name.clone());
        }
        // A match that cannot be read drops its route: ignoring one of its
        // conditions would widen it to traffic it was not meant for.
        let Some(matcher) = route_match(m, &format!("{path}.match[{j}]"), warn) else { continue };
        r.insert("match".into(), matcher);
        let mut r = Value::Object(r);
        if !action(http, &mut r, path, cx, warn) {
            continue;
        }
        decorate(http, &mut r, path, cx, warn);
        out.push(r);
    }
    out
}

/// An Istio StringMatch as Envoy's; `None` (with a warning) when it cannot
/// be served: no known form, or a regex Envoy's RE2 would refuse (checked
/// with the `regex` crate, whose syntax is RE2's; a refused regex NACKs the
/// whole route table, every service on the port).
fn string_match(v: &Value, path: &str, warn: &mut Warn) -> Option<Value> {
    if let Some(s) = v.get("exact") {
        Some(json!({ "exact": s }))
    } else if let Some(s) = v.get("prefix") {
        Some(json!({ "prefix": s }))
    } else if let Some(s) = v.get("regex") {
        let text = s.as_str().unwrap_or_default();
        match regex::Regex::new(text) {
            Ok(_) => Some(json!({ "safe_regex": { "regex": s } })),
            Err(e) => {
                let e = e.to_string().lines().last().unwrap_or_default().trim().to_string();
                warn.messages.push(format!(
                    "{path}.regex {s} is not a valid RE2 regular expression ({e}); its route is not served"
                ));
                None
            }
        }
    } else {
        warn.messages.push(format!("{path} needs exact, prefix or regex; its route is not served"));
        None
    }
}

const MATCH_FIELDS: &[&str] =
    &["name", "uri", "method", "headers", "queryParams", "port", "ignoreUriCase", "withoutHeaders", "gateways"];

fn route_match(m: Option<&Value>, path: &str, warn: &mut Warn) -> Option<Value> {
    let mut out = Map::new();
    let Some(m) = m else {
        return Some(json!({ "prefix": "/" }));
    };
    warn.unknown_fields(m, path, MATCH_FIELDS);
    let uri = match m.get("uri") {
        Some(u) => Some(string_match(u, &format!("{path}.uri"), warn)?),
        None => None,
    };
    match uri {
        Some(u) if u.get("exact").is_some() => out.insert("path".into(), u["exact"].clone()),
        Some(u) if u.get("prefix").is_some() => out.insert("prefix".into(), u["prefix"].clone()),
        Some(u) => out.insert("safe_regex".into(), u["safe_regex"].clone()),
        None => out.insert("prefix".into(), json!("/")),
    };
    if m.get("ignoreUriCase").and_then(Value::as_bool) == Some(true) {
        out.insert("case_sensitive".into(), json!(false));
    }
    let mut headers = Vec::new();
    for (name, v) in m.get("headers").and_then(Value::as_object).into_iter().flatten() {
        let sm = string_match(v, &format!("{path}.headers.{name}"), warn)?;
        headers.push(json!({ "name": name, "string_match": sm }));
    }
    for (name, _) in m.get("withoutHeaders").and_then(Value::as_object).into_iter().flatten() {
        headers.push(json!({ "name": name, "present_match": true, "invert_match": true }));
    }
    if let Some(method) = m.get("method") {
        let method = string_match(method, &format!("{path}.method"), warn)?;
        headers.push(json!({ "name": ":method", "string_match": method }));
    }
    if !headers.is_empty() {
        out.insert("headers".into(), Value::Array(headers));
    }
    let mut params = Vec::new();
    for (name, v) in m.get("queryParams").and_then(Value::as_object).into_iter().flatten() {
        let sm = string_match(v, &format!("{path}.queryParams.{name}"), warn)?;
        params.push(json!({ "name": name, "string_match": sm }));
    }
    if !params.is_empty() {
        out.insert("query_parameters".into(), Value::Array(params));
    }
    Some(Value::Object(out))
}

/// The cluster a `destination` names, from a route of this port.
fn destination_cluster(dest: &Value, cx: &Context<'_>) -> Option<String> {
    let host = dest.get("host")?.as_str()?;
    let (fqdn, only_port) = (cx.resolve)(host);
    let port = dest.pointer("/port/number").and_then(Value::as_u64).and_then(|p| u32::try_from(p).ok());
    let port = port.or(only_port).unwrap_or(cx.port);
    let subset = dest.get("subset").and_then(Value::as_str).unwrap_or_default();
    Some(cluster_name(port, subset, &fqdn))
}

/// Sets the route's action; false when it has none that can be served.
fn action(http: &Value, r: &mut Value, path: &str, cx: &Context<'_>, warn: &mut Warn) -> bool {
    if let Some(redirect) = http.get("redirect") {
        warn.unknown_fields(
            redirect,
            &format!("{path}.redirect"),
            &["uri", "authority", "redirectCode", "scheme", "port"],
        );
        let mut out = Map::new();
        for (field, envoy) in [("uri", "path_redirect"), ("authority", "host_redirect"), ("scheme", "scheme_redirect")]
        {
            if let Some(v) = redirect.get(field) {
                out.insert(envoy.into(), v.clone());
            }
        }
        if let Some(p) = redirect.get("port") {
            out.insert("port_redirect".into(), p.clone());
        }
        let code = match redirect.get("redirectCode").and_then(Value::as_u64) {
            None | Some(301) => "MOVED_PERMANENTLY",
            Some(302) => "FOUND",
            Some(303) => "SEE_OTHER",
            Some(307) => "TEMPORARY_REDIRECT",
            Some(308) => "PERMANENT_REDIRECT",
            Some(other) => {
                warn.messages.push(format!("{path}.redirect.redirectCode {other} is not a redirect code; 301 is used"));
                "MOVED_PERMANENTLY"
            }
        };
        out.insert("response_code".into(), json!(code));
        r["redirect"] = Value::Object(out);
        return true;
    }
    let dests = http.get("route").and_then(Value::as_array).cloned().unwrap_or_default();
    let mut clusters = Vec::new();
    for (k, d) in dests.iter().enumerate() {
        warn.unknown_fields(d, &format!("{path}.route[{k}]"), &["destination", "weight"]);
        match d.get("destination").and_then(|dest| destination_cluster(dest, cx)) {
            Some(c) => clusters.push((c, d.get("weight").and_then(Value::as_u64))),
            None => warn.messages.push(format!("{path}.route[{k}].destination needs a host; it is ignored")),
        }
    }
    let first = match clusters.as_slice() {
        [] => {
            warn.messages.push(format!("{path} has neither route nor redirect; it is ignored"));
            return false;
        }
        [(only, _)] => {
            r["route"] = json!({ "cluster": only });
            only.clone()
        }
        many => {
            let weighted: Vec<Value> = many
                .iter()
                .filter(|(_, w)| *w != Some(0))
                .map(|(c, w)| json!({ "name": c, "weight": w.unwrap_or(if many.len() == 1 { 100 } else { 0 }) }))
                .collect();
            if weighted.iter().all(|w| w["weight"] == 0) {
                warn.messages.push(format!("{path}.route: the weights sum to 0; the route is ignored"));
                return false;
            }
            let weighted: Vec<Value> = weighted.into_iter().filter(|w| w["weight"] != 0).collect();
            let first = weighted[0]["name"].as_str().unwrap_or_default().to_string();
            r["route"] = json!({ "weighted_clusters": { "clusters": weighted } });
            first
        }
    };
    finish_action(r, http.get("timeout"), http.get("retries"), cx);
    if let Some(hash) = (cx.hash_policy)(&first) {
        r["route"]["hash_policy"] = json!([hash]);
    }
    if let Some(rewrite) = http.get("rewrite") {
        warn.unknown_fields(rewrite, &format!("{path}.rewrite"), &["uri", "authority"]);
        if let Some(uri) = rewrite.get("uri") {
            r["route"]["prefix_rewrite"] = uri.clone();
        }
        if let Some(authority) = rewrite.get("authority") {
            r["route"]["host_rewrite_literal"] = authority.clone();
        }
    }
    if let Some(mirror) = http.get("mirror").and_then(|m| destination_cluster(m, cx)) {
        let mut policy = json!({ "cluster": mirror });
        if let Some(pct) = http.pointer("/mirrorPercentage/value").and_then(Value::as_f64) {
            policy["runtime_fraction"] = json!({ "default_value": fraction(pct) });
        }
        r["route"]["request_mirror_policies"] = json!([policy]);
    }
    true
}

/// Timeout and retries of a forwarding route, with istiod's defaults.
fn finish_action(r: &mut Value, timeout: Option<&Value>, retries: Option<&Value>, cx: &Context<'_>) {
    let mut warn = Warn::default();
    let timeout = timeout.and_then(|t| duration(t, "timeout", &mut warn)).unwrap_or(json!("0s"));
    if cx.grpc {
        r["route"]["max_stream_duration"] = json!({ "max_stream_duration": timeout });
    } else {
        r["route"]["timeout"] = timeout;
    }
    let policy = match retries {
        Some(retries) => {
            let attempts = retries.get("attempts").and_then(Value::as_u64).unwrap_or(0);
            if attempts == 0 {
                return;
            }
            let mut p = json!({
                "num_retries": attempts,
                "retry_on": retries.get("retryOn").and_then(Value::as_str).unwrap_or(DEFAULT_RETRY_ON),
            });
            if let Some(t) = retries.get("perTryTimeout").and_then(|t| duration(t, "perTryTimeout", &mut warn)) {
                p["per_try_timeout"] = t;
            }
            p
        }
        None if cx.grpc => return,
        None => json!({ "num_retries": 2, "retry_on": DEFAULT_RETRY_ON }),
    };
    r["route"]["retry_policy"] = policy;
}

/// A percentage (0–100, fractions allowed) as an Envoy FractionalPercent.
fn fraction(pct: f64) -> Value {
    let per_million = (pct.clamp(0.0, 100.0) * 10_000.0).round() as u64;
    json!({ "numerator": per_million, "denominator": "MILLION" })
}

/// Fault injection and header operations of a route.
fn decorate(http: &Value, r: &mut Value, path: &str, _cx: &Context<'_>, warn: &mut Warn) {
    if let Some(fault) = http.get("fault") {
        warn.unknown_fields(fault, &format!("{path}.fault"), &["delay", "abort"]);
        let mut out = json!({ "@type": FAULT_TYPE });
        if let Some(delay) = fault.get("delay") {
            warn.unknown_fields(delay, &format!("{path}.fault.delay"), &["fixedDelay", "percentage", "percent"]);
            if let Some(d) = delay.get("fixedDelay").and_then(|d| duration(d, "fault.delay.fixedDelay", warn)) {
                out["delay"] = json!({ "fixed_delay": d, "percentage": fraction(percentage(delay)) });
            }
        }
        if let Some(abort) = fault.get("abort") {
            warn.unknown_fields(abort, &format!("{path}.fault.abort"), &["httpStatus", "grpcStatus", "percentage"]);
            let mut a = json!({ "percentage": fraction(percentage(abort)) });
            if let Some(code) = abort.get("httpStatus").and_then(Value::as_u64) {
                a["http_status"] = json!(code);
            } else if let Some(code) = abort.get("grpcStatus").and_then(grpc_code) {
                a["grpc_status"] = json!(code);
            }
            out["abort"] = a;
        }
        r["typed_per_filter_config"] = json!({ FAULT_FILTER: out });
    }
    if let Some(headers) = http.get("headers") {
        warn.unknown_fields(headers, &format!("{path}.headers"), &["request", "response"]);
        for (side, add, remove) in [
            ("request", "request_headers_to_add", "request_headers_to_remove"),
            ("response", "response_headers_to_add", "response_headers_to_remove"),
        ] {
            let Some(ops) = headers.get(side) else { continue };
            warn.unknown_fields(ops, &format!("{path}.headers.{side}"), &["set", "add", "remove"]);
            let mut to_add = Vec::new();
            for (op, action) in [("set", "OVERWRITE_IF_EXISTS_OR_ADD"), ("add", "APPEND_IF_EXISTS_OR_ADD")] {
                for (k, v) in ops.get(op).and_then(Value::as_object).into_iter().flatten() {
                    to_add.push(json!({ "header": { "key": k, "value": v }, "append_action": action }));
                }
            }
            if !to_add.is_empty() {
                r[add] = Value::Array(to_add);
            }
            if let Some(rm) = ops.get("remove").and_then(Value::as_array) {
                r[remove] = Value::Array(rm.clone());
            }
        }
    }
}

fn percentage(v: &Value) -> f64 {
    v.pointer("/percentage/value").and_then(Value::as_f64).unwrap_or(100.0)
}

/// A gRPC status as Istio writes it (a code name) → its number.
fn grpc_code(v: &Value) -> Option<u64> {
    const CODES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    v.as_u64().or_else(|| CODES.iter().position(|c| Some(*c) == v.as_str()).map(|i| i as u64))
}
