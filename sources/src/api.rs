//! The push API source: `PUT` and `DELETE /v1/resources/{group}/{kind}/{namespace}/{name}`
//! on the admin port, for CI/CD pipelines and the loadtest.
//!
//! Disabled unless a bearer token is configured (`[api] token_file`); with
//! one, a request without it gets 401. A response carries the seq the change
//! was durably appended at: the config version that holds it. `core` names
//! the Kubernetes core group and `-` an empty namespace (cluster-scoped
//! Envoy resources); the name is the rest of the path, so it may hold `/`.

use axum::Router;
use axum::body::Bytes;
use axum::extract::Query;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};
use keelson_hub::object::parse_object_within;
use keelson_hub::{HubHandle, Op, ResourceKey, SourceId, SourceKind};
use serde_json::json;

#[derive(Clone)]
struct ApiState {
    hub: HubHandle,
    token: Option<String>,
    id: SourceId,
}

/// The API source's routes, to merge into the admin server.
pub fn router(hub: HubHandle, token: Option<String>) -> Router {
    let body_limit = max_body_bytes(hub.limits().max_resource_bytes);
    let state = ApiState { hub, token, id: SourceId::new(SourceKind::Api, "push") };
    Router::new()
        .route("/v1/resources/{group}/{kind}/{namespace}/{*name}", put(upsert).delete(delete))
        .route("/v1/sources/confirm", post(confirm))
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

/// The largest request body (larger ones get 413): 2 MiB, or room for an
/// object at `[limits] max_resource_bytes` written as indented YAML/JSON,
/// which is up to a few times its canonical size.
pub fn max_body_bytes(max_resource_bytes: usize) -> usize {
    (2 << 20).max(max_resource_bytes.saturating_mul(4))
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

/// The response refusing the request, if it is not authorized.
fn refusal(state: &ApiState, headers: &HeaderMap) -> Option<Response> {
    let Some(token) = &state.token else {
        return Some(error(StatusCode::FORBIDDEN, "the API source is disabled: set [api] token_file"));
    };
    let given =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(t) if t == token => None,
        _ => Some(error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token")),
    }
}

fn path_key((group, kind, namespace, name): (String, String, String, String)) -> ResourceKey {
    let group = if group == "core" { String::new() } else { group };
    let namespace = if namespace == "-" { String::new() } else { namespace };
    ResourceKey::new(&group, &kind, &namespace, &name)
}

fn parse_body(headers: &HeaderMap, body: &[u8]) -> Result<serde_json::Value, String> {
    let yaml = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|c| c.contains("yaml"));
    if yaml {
        serde_yaml::from_slice(body).map_err(|e| format!("body is not valid YAML: {e}"))
    } else {
        serde_json::from_slice(body)
            .or_else(|_| serde_yaml::from_slice(body))
            .map_err(|e| format!("body is neither JSON nor YAML: {e}"))
    }
}

async fn upsert(
    State(state): State<ApiState>,
    Path(path): Path<(String, String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = refusal(&state, &headers) {
        return r;
    }
    let key = path_key(path);
    let object = match parse_body(&headers, &body).and_then(|v| parse_object_within(&v, state.hub.limits())) {
        Ok(o) => o,
        Err(e) => {
            state
                .hub
                .metrics()
                .validation_errors
                .get_or_create(&keelson_hub::metrics::Metrics::source(&state.id.to_string()))
                .inc();
            return error(StatusCode::BAD_REQUEST, e);
        }
    };
    if object.key != key {
        return error(StatusCode::BAD_REQUEST, format!("the body is {} but the path names {key}", object.key));
    }
    let op = Op::Upsert {
        key: key.clone(),
        source_version: String::new(),
        body: object.body,
        location: "api".into(),
        author: String::new(),
    };
    match state.hub.submit(state.id.clone(), vec![op]).await {
        Ok(o) => {
            let seq = o.appended.map(|(_, last)| last);
            let body = json!({ "key": key.to_string(), "seq": seq, "changed": o.changed > 0, "version": o.version });
            (StatusCode::OK, axum::Json(body)).into_response()
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

async fn delete(
    State(state): State<ApiState>,
    Path(path): Path<(String, String, String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = refusal(&state, &headers) {
        return r;
    }
    let key = path_key(path);
    let op = Op::Delete { key: key.clone(), source_version: String::new(), author: String::new() };
    match state.hub.submit(state.id.clone(), vec![op]).await {
        Ok(o) if o.changed == 0 => error(StatusCode::NOT_FOUND, format!("{key} does not exist")),
        Ok(o) => {
            let seq = o.appended.map(|(_, last)| last);
            (StatusCode::OK, axum::Json(json!({ "key": key.to_string(), "seq": seq, "version": o.version })))
                .into_response()
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

#[derive(serde::Deserialize)]
struct ConfirmQuery {
    /// The source as `/debug/sources` names it, e.g. `file/config`.
    source: String,
}

/// `POST /v1/sources/confirm?source=NAME`: apply the deletions the
/// mass-deletion guard holds for a source now (`keelson source confirm`).
async fn confirm(State(state): State<ApiState>, Query(q): Query<ConfirmQuery>, headers: HeaderMap) -> Response {
    if let Some(r) = refusal(&state, &headers) {
        return r;
    }
    match state.hub.confirm_deletions(&q.source).await {
        Ok(0) => error(
            StatusCode::NOT_FOUND,
            format!("no deletions are held for source {}", keelson_hub::names::shown_name(&q.source)),
        ),
        Ok(n) => (StatusCode::OK, axum::Json(json!({ "source": q.source, "deleted": n }))).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}
