//! The `/_fake` control API: what tests and the bin use to shape the cluster. It is
//! never behind authentication, so tests can drive a fake whose API needs credentials.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::response::Response;
use serde_json::{Value, json};

use crate::generate::{self, GenerateSpec};
use crate::server::{App, json_response};
use crate::store::DEFAULT_FIELD_MANAGER;

pub(crate) fn control_routes() -> Router<Arc<App>> {
    use axum::routing::post;
    Router::new()
        .route("/_fake/objects", post(control_upsert))
        .route("/_fake/delete", post(control_delete))
        .route(
            "/_fake/compact",
            post(|State(a): State<Arc<App>>| async move {
                json_response(200, &json!({"resourceVersion": a.store.compact().to_string()}))
            }),
        )
        .route(
            "/_fake/drop-watches",
            post(|State(a): State<Arc<App>>| async move {
                a.store.drop_watches();
                json_response(200, &json!({}))
            }),
        )
        .route(
            "/_fake/down",
            post(|State(a): State<Arc<App>>| async move {
                a.store.set_down(true);
                json_response(200, &json!({}))
            }),
        )
        .route(
            "/_fake/up",
            post(|State(a): State<Arc<App>>| async move {
                a.store.set_down(false);
                json_response(200, &json!({}))
            }),
        )
        .route("/_fake/fault", post(control_fault))
        .route("/_fake/touch", post(control_touch))
        .route("/_fake/generate", post(control_generate))
        .route("/_fake/ca", axum::routing::get(control_ca))
        .route("/_fake/client-cert", post(control_client_cert))
}

fn bad(message: String) -> Response {
    json_response(400, &json!({"error": message}))
}

/// `?fieldManager=M`, as on the real API's write verbs.
fn manager(q: &HashMap<String, String>) -> &str {
    q.get("fieldManager").map(String::as_str).filter(|m| !m.is_empty()).unwrap_or(DEFAULT_FIELD_MANAGER)
}

/// Body: one object, or an array of objects (bulk load). `?fieldManager=` names the writer.
async fn control_upsert(
    State(app): State<Arc<App>>,
    Query(q): Query<HashMap<String, String>>,
    body: axum::body::Bytes,
) -> Response {
    let value: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return bad(e.to_string()),
    };
    let result = match value {
        Value::Array(objects) => app.store.bulk_load_as(objects, manager(&q)).map(|n| json!({"changed": n})),
        object => {
            app.store.upsert_as(object, manager(&q)).map(|rv| json!({"resourceVersion": rv.map(|r| r.to_string())}))
        }
    };
    match result {
        Ok(v) => json_response(200, &v),
        Err(e) => bad(e.to_string()),
    }
}

/// Body: `{"apiVersion","kind","namespace","name"}`.
async fn control_delete(State(app): State<Arc<App>>, body: axum::body::Bytes) -> Response {
    let v: Value = serde_json::from_slice(&body).unwrap_or_default();
    let field = |f: &str| v.get(f).and_then(Value::as_str).unwrap_or_default().to_owned();
    match app.store.delete(&field("apiVersion"), &field("kind"), &field("namespace"), &field("name")) {
        Ok(rv) => json_response(200, &json!({"resourceVersion": rv.map(|r| r.to_string())})),
        Err(e) => bad(e.to_string()),
    }
}

/// Body: `{"group","resource","fault": "forbidden" | "absent" | "throttled" | null}`;
/// `"throttled"` takes `"retry_after"` (seconds, default 1).
async fn control_fault(State(app): State<Arc<App>>, body: axum::body::Bytes) -> Response {
    use crate::store::KindFault;
    let v: Value = serde_json::from_slice(&body).unwrap_or_default();
    let field = |f: &str| v.get(f).and_then(Value::as_str).unwrap_or_default().to_owned();
    let fault = match v.get("fault").and_then(Value::as_str) {
        Some("forbidden") => Some(KindFault::Forbidden),
        Some("absent") => Some(KindFault::Absent),
        Some("throttled") => {
            Some(KindFault::Throttled { retry_after: v.get("retry_after").and_then(Value::as_u64).unwrap_or(1) })
        }
        None => None,
        Some(other) => return bad(format!("unknown fault {other}")),
    };
    app.store.set_fault(&field("group"), &field("resource"), fault);
    json_response(200, &json!({}))
}

/// Body: `{"apiVersion","kind","namespace","name","path": JSON pointer,"value"}`: sets one
/// field of one object (one new RV, one MODIFIED event). `?fieldManager=` names the writer.
async fn control_touch(
    State(app): State<Arc<App>>,
    Query(q): Query<HashMap<String, String>>,
    body: axum::body::Bytes,
) -> Response {
    let v: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return bad(e.to_string()),
    };
    let field = |f: &str| v.get(f).and_then(Value::as_str).unwrap_or_default().to_owned();
    let value = v.get("value").cloned().unwrap_or(Value::Null);
    let result = app.store.set_field(
        &field("apiVersion"),
        &field("kind"),
        &field("namespace"),
        &field("name"),
        &field("path"),
        value,
        manager(&q),
    );
    match result {
        Ok(rv) => json_response(200, &json!({"resourceVersion": rv.map(|r| r.to_string())})),
        Err(e) => bad(e.to_string()),
    }
}

/// Body: a [`GenerateSpec`] (every field optional). Answers the counts made per kind.
async fn control_generate(State(app): State<Arc<App>>, body: axum::body::Bytes) -> Response {
    let spec: GenerateSpec = if body.iter().all(u8::is_ascii_whitespace) {
        GenerateSpec::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(s) => s,
            Err(e) => return bad(e.to_string()),
        }
    };
    match generate::generate(&app.store, &spec) {
        Ok(report) => json_response(200, &report),
        Err(e) => bad(e.to_string()),
    }
}

/// The CA certificate (PEM, `text/plain`); 404 without TLS.
async fn control_ca(State(app): State<Arc<App>>) -> Response {
    use axum::response::IntoResponse;
    match &app.tls {
        Some(tls) => tls.ca_pem.clone().into_response(),
        None => json_response(404, &json!({"error": "TLS is not enabled"})),
    }
}

/// Body: `{"common_name": "alice", "organizations": ["system:masters"]}` (both optional);
/// answers `{"cert_pem","key_pem"}` signed by the fake's CA. 404 without TLS.
async fn control_client_cert(State(app): State<Arc<App>>, body: axum::body::Bytes) -> Response {
    let Some(tls) = &app.tls else {
        return json_response(404, &json!({"error": "TLS is not enabled"}));
    };
    let v: Value = serde_json::from_slice(&body).unwrap_or_default();
    let cn = v.get("common_name").and_then(Value::as_str).unwrap_or("admin");
    let orgs: Vec<&str> = match v.get("organizations").and_then(Value::as_array) {
        Some(list) => list.iter().filter_map(Value::as_str).collect(),
        None => vec!["system:masters"],
    };
    match tls.issue_client_cert(cn, &orgs) {
        Ok(c) => json_response(200, &json!({"cert_pem": c.cert_pem, "key_pem": c.key_pem})),
        Err(e) => bad(e.to_string()),
    }
}
