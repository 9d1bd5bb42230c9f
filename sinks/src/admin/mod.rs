//! Admin HTTP (`--admin-listen`, default 127.0.0.1:18001).
//!
//! | path | answer |
//! |---|---|
//! | `GET /healthz` | 200 while the process runs |
//! | `GET /readyz` | 503 until the first snapshot, then 200 `{version, degraded}`; 503 naming the reason once storage failed |
//! | `GET /v1/storage` | `{ok, failure, damage, first_seq, last_seq}`: whether the log takes writes, and the first damage a read met |
//! | `GET /metrics` | Prometheus text |
//! | `GET /debug/snapshot` | `{version, seq, counts}`; `?resources=1` adds every resource with its encoded bytes (base64) |
//! | `GET /debug/sources` | health of each source, with its current validation errors |
//! | `GET /v1/history?key=KEY` | every change of one object, newest first (docs/cli.md shape) |
//! | `GET /v1/log?from=SEQ&limit=N` | log entries in seq order (default limit 100, at most 10000) |
//! | `GET /v1/state?at=SEQ\|RFC3339` | the config as of a seq or time (default: the end of the log), as `keelson state --json` |
//!
//! Other routes (the push API source) are merged in by the binary.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use keelson_hub::{AckLedger, HubHandle, ResourceKey};
use prometheus_client::registry::Registry;
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Clone)]
struct Admin {
    hub: HubHandle,
    ledger: AckLedger,
    registry: Arc<Registry>,
}

pub fn router(hub: HubHandle, ledger: AckLedger, registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/debug/snapshot", get(snapshot))
        .route("/debug/sources", get(sources))
        .route("/debug/syncz", get(syncz))
        .route("/v1/history", get(history))
        .route("/v1/log", get(log))
        .route("/v1/state", get(state))
        .route("/v1/storage", get(storage))
        .with_state(Admin { hub, ledger, registry })
}

/// Serves `router` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}

/// A failed read of the log: a 500 that says why, and what to do when the
/// log is damaged.
fn read_error(a: &Admin, message: String) -> Response {
    match a.hub.store().log().damage() {
        None => error(StatusCode::INTERNAL_SERVER_ERROR, message),
        Some(damage) => {
            let body = json!({
                "error": message,
                "storage_damage": damage,
                "hint": "the event log is damaged; stop the hub and run `keelson verify --repair` (docs/storage.md)",
            });
            (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(body)).into_response()
        }
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

async fn readyz(State(a): State<Admin>) -> Response {
    if let Some(reason) = a.hub.store().log().failure() {
        return error(StatusCode::SERVICE_UNAVAILABLE, format!("storage failed: {reason}; restart to recover"));
    }
    match a.hub.current() {
        None => error(StatusCode::SERVICE_UNAVAILABLE, "no snapshot yet: waiting for sources to sync"),
        Some(s) => {
            // A damaged record does not stop serving the in-memory config;
            // it shows here (and in /v1/storage) so an operator repairs it.
            let damage = a.hub.store().log().damage();
            let degraded = a.hub.degraded() || damage.is_some();
            axum::Json(json!({ "version": s.version, "degraded": degraded, "storage_damage": damage })).into_response()
        }
    }
}

async fn metrics(State(a): State<Admin>) -> Response {
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode_registry(&mut text, &a.registry) {
        return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    }
    text.push_str(&process_metrics());
    if let Err(e) = prometheus_client::encoding::text::encode_eof(&mut text) {
        return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    }
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response()
}

/// Every connected proxy and, per type, what it was sent, what it ACKed and
/// what it rejected; the shape `keelson status` reads.
async fn syncz(State(a): State<Admin>) -> Response {
    axum::Json(syncz_json(a.hub.current().map_or(0, |s| s.version), &a.ledger)).into_response()
}

pub fn syncz_json(version: u64, ledger: &AckLedger) -> Value {
    let proxies: Vec<Value> = ledger
        .records()
        .into_iter()
        .map(|r| {
            let types: Vec<Value> = r
                .types
                .iter()
                .map(|(type_url, t)| {
                    let mut v = serde_json::to_value(t).unwrap_or_default();
                    v["type_url"] = Value::String(type_url.clone());
                    v["status"] = serde_json::to_value(t.status()).unwrap_or_default();
                    v
                })
                .collect();
            let mut v = serde_json::to_value(&r).unwrap_or_default();
            v["types"] = Value::Array(types);
            v["connected"] = Value::Bool(true);
            v
        })
        .collect();
    json!({ "version": version, "proxies": proxies })
}

/// The standard process series (`process_resident_memory_bytes`,
/// `process_cpu_seconds_total`, `process_open_fds`), read from /proc/self at
/// scrape time; empty where /proc is absent.
fn process_metrics() -> String {
    let mut out = String::new();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if let Some(kb) = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()) {
        let bytes = kb.parse::<u64>().unwrap_or(0) * 1024;
        out.push_str(&format!("# HELP process_resident_memory_bytes Resident memory size in bytes.\n# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {bytes}\n"));
    }
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    if let (Some(u), Some(s)) = (fields.get(11), fields.get(12)) {
        // USER_HZ is 100 on Linux.
        let secs = (u.parse::<u64>().unwrap_or(0) + s.parse::<u64>().unwrap_or(0)) as f64 / 100.0;
        out.push_str(&format!("# HELP process_cpu_seconds Total user and system CPU time spent in seconds.\n# TYPE process_cpu_seconds counter\nprocess_cpu_seconds_total {secs}\n"));
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        out.push_str(&format!("# HELP process_open_fds Number of open file descriptors.\n# TYPE process_open_fds gauge\nprocess_open_fds {}\n", fds.count()));
    }
    out
}

#[derive(Deserialize)]
struct SnapshotQuery {
    resources: Option<u8>,
}

async fn snapshot(State(a): State<Admin>, Query(q): Query<SnapshotQuery>) -> Response {
    let Some(s) = a.hub.current() else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "no snapshot yet");
    };
    let counts: BTreeMap<String, usize> =
        s.counts.iter().map(|((g, k), n)| (format!("{}/{k}", if g.is_empty() { "core" } else { g }), *n)).collect();
    let mut body = json!({ "version": s.version, "seq": s.seq, "counts": counts, "degraded": a.hub.degraded() });
    if q.resources.unwrap_or(0) != 0 {
        body["resources"] = Value::Array(s.resources.iter().map(|(k, e)| resource_json(k, e)).collect());
    }
    axum::Json(body).into_response()
}

/// One resource of a snapshot or state; the same shape as `keelson state --json`.
/// One served resource; a derived one says so and names its inputs.
pub fn resource_json(key: &ResourceKey, e: &keelson_hub::ResourceEntry) -> Value {
    let mut v = json!({
        "key": key.to_string(),
        "version": e.version,
        "origin": e.origin.to_string(),
        "location": e.location,
        "hash": format!("{:032x}", e.body.hash()),
        "encoded": e.encoded.as_ref().map(|b| base64::engine::general_purpose::STANDARD.encode(b)),
        "body": e.body.to_value(),
    });
    if e.origin == keelson_hub::translate::origin() {
        v["derived"] = json!(true);
        v["inputs"] = v["body"]["derivedFrom"].clone();
    }
    v
}

async fn sources(State(a): State<Admin>) -> Response {
    axum::Json(json!(a.hub.health())).into_response()
}

#[derive(Deserialize)]
struct HistoryQuery {
    key: String,
}

async fn history(State(a): State<Admin>, Query(q): Query<HistoryQuery>) -> Response {
    let key = match ResourceKey::parse(&q.key) {
        Ok(k) => k,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let store = a.hub.store().clone();
    let result = tokio::task::spawn_blocking(move || {
        store.history(&key).map(|ev| ev.map(|ev| keelson_hub::json::event_json(&ev))).collect::<Result<Vec<_>, _>>()
    })
    .await;
    match result {
        Ok(Ok(events)) => axum::Json(Value::Array(events)).into_response(),
        Ok(Err(e)) => read_error(&a, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[derive(Deserialize)]
struct LogQuery {
    from: Option<u64>,
    limit: Option<usize>,
}

async fn log(State(a): State<Admin>, Query(q): Query<LogQuery>) -> Response {
    let store = a.hub.store().clone();
    let limit = q.limit.unwrap_or(100).min(10_000);
    let result = tokio::task::spawn_blocking(move || {
        let from = q.from.unwrap_or(store.log().first_seq());
        store
            .entries_from(from)
            .take(limit)
            .map(|e| e.map(|e| keelson_hub::json::entry_json(&e)))
            .collect::<Result<Vec<_>, _>>()
    })
    .await;
    match result {
        Ok(Ok(entries)) => axum::Json(Value::Array(entries)).into_response(),
        Ok(Err(e)) => read_error(&a, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// The event log's health; answered from memory, never blocked by the engine.
async fn storage(State(a): State<Admin>) -> Response {
    let log = a.hub.store().log();
    let failure = log.failure();
    axum::Json(json!({
        "ok": failure.is_none(),
        "failure": failure,
        "damage": log.damage(),
        "first_seq": log.first_seq(),
        "last_seq": log.last_seq(),
    }))
    .into_response()
}

/// A rebuilt state as `keelson state --json` and `/v1/state` print it.
/// The state as of a point, translated as the hub serves it: derived
/// resources carry `"derived": true` and the keys of their inputs.
pub fn state_json(r: &keelson_hub::Rebuilt, translate: &keelson_hub::translate::TranslateConfig) -> Value {
    let served = keelson_hub::translate::Served::of(&r.state, translate);
    let resources: Vec<Value> = served.resources().iter().map(|(k, e)| resource_json(k, e)).collect();
    let shadowed: Vec<String> = served.shadowed().iter().map(ToString::to_string).collect();
    json!({
        "version": r.state.version,
        "seq": r.state.seq,
        "from_checkpoint": r.from_checkpoint,
        "gaps": r.gaps,
        "resources": resources,
        "shadowed": shadowed,
    })
}

#[derive(Deserialize)]
struct StateQuery {
    at: Option<String>,
}

async fn state(State(a): State<Admin>, Query(q): Query<StateQuery>) -> Response {
    let store = a.hub.store().clone();
    let translate = a.hub.translate_config().clone();
    let rebuilt = tokio::task::spawn_blocking(move || {
        let seq = match q.at.as_deref() {
            None => u64::MAX,
            Some(at) => match keelson_hub::point::resolve(&store, at) {
                Ok(seq) => seq,
                Err(e @ keelson_hub::point::PointError::Unparsed(_)) => {
                    return Err((StatusCode::BAD_REQUEST, e.to_string()));
                }
                Err(e) => return Err((StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
            },
        };
        let r = store.state_at(seq).map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        Ok(state_json(&r, &translate))
    })
    .await;
    match rebuilt {
        Ok(Ok(doc)) => axum::Json(doc).into_response(),
        Ok(Err((StatusCode::BAD_REQUEST, e))) => error(StatusCode::BAD_REQUEST, e),
        Ok(Err((_, e))) => read_error(&a, e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
