//! The HTTP server: the Kubernetes API paths, and the `/_fake` control API.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::api::{self, ListOptions, ResourcePath};
use crate::discovery;
use crate::kinds::{ResourceKind, default_kinds};
use crate::selector::{FieldSelector, LabelSelector, Selector};
use crate::status::ApiError;
use crate::store::Store;
use crate::watch::{self, WatchParams};

/// How to start a fake.
#[derive(Clone, Debug)]
pub struct FakeConfig {
    pub bind: SocketAddr,
    pub kinds: Vec<ResourceKind>,
    /// How often a watch with `allowWatchBookmarks=true` gets a BOOKMARK. The real
    /// server sends about one a minute; tests shorten it.
    pub bookmark_interval: Duration,
}

impl Default for FakeConfig {
    fn default() -> Self {
        FakeConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            kinds: default_kinds(),
            bookmark_interval: Duration::from_secs(60),
        }
    }
}

struct App {
    store: Arc<Store>,
    addr: SocketAddr,
    bookmark_interval: Duration,
}

/// A running fake API server; dropping it stops serving.
pub struct FakeKube {
    store: Arc<Store>,
    addr: SocketAddr,
    router: Router,
    task: std::sync::Mutex<Option<JoinHandle<()>>>,
}

fn spawn_serving(listener: TcpListener, router: Router) -> JoinHandle<()> {
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    })
}

impl FakeKube {
    pub async fn start(config: FakeConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind(config.bind).await?;
        let addr = listener.local_addr()?;
        let store = Arc::new(Store::new(config.kinds));
        let app = Arc::new(App { store: store.clone(), addr, bookmark_interval: config.bookmark_interval });
        let router = control_routes().fallback(kube_api).with_state(app);
        let task = std::sync::Mutex::new(Some(spawn_serving(listener, router.clone())));
        Ok(FakeKube { store, addr, router, task })
    }

    /// Down the hard way: the listening socket is closed, so new connections are
    /// refused (an apiserver that is not running), open watches end, and requests on
    /// connections already open get 503. Undo with [`FakeKube::accept_connections`].
    pub fn refuse_connections(&self) {
        self.store.set_down(true);
        if let Some(task) = self.task.lock().unwrap_or_else(|p| p.into_inner()).take() {
            task.abort();
        }
    }

    /// Listens again on the same address and serves normally.
    pub async fn accept_connections(&self) -> std::io::Result<()> {
        let listener = TcpListener::bind(self.addr).await?;
        let mut task = self.task.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = task.replace(spawn_serving(listener, self.router.clone())) {
            old.abort();
        }
        drop(task);
        self.store.set_down(false);
        Ok(())
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, the kubeconfig `server` value.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The control handle: upsert, delete, compact, faults.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        if let Some(task) = self.task.lock().unwrap_or_else(|p| p.into_inner()).take() {
            task.abort();
        }
    }
}

fn json_response(code: u16, body: &Value) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

fn error_response(e: ApiError) -> Response {
    json_response(e.code, &e.status)
}

fn parse_rv(s: Option<&String>) -> Result<Option<u64>, ApiError> {
    match s.map(String::as_str) {
        None | Some("") | Some("0") => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| ApiError::bad_request(format!("invalid resource version: {v}"))),
    }
}

async fn kube_api(
    State(app): State<Arc<App>>,
    method: Method,
    uri: Uri,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    match serve_api(&app, &method, uri.path(), &q) {
        Ok(r) => r,
        Err(e) => error_response(e),
    }
}

fn serve_api(app: &Arc<App>, method: &Method, path: &str, q: &HashMap<String, String>) -> Result<Response, ApiError> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
    if app.store.lock().down {
        return Err(ApiError::unavailable());
    }
    match segments.as_slice() {
        ["healthz"] | ["readyz"] | ["livez"] => return Ok((StatusCode::OK, "ok").into_response()),
        ["version"] => {
            let v =
                json!({"major": "1", "minor": "34", "gitVersion": "v1.34.0-keelson-fake", "platform": "linux/amd64"});
            return Ok(json_response(200, &v));
        }
        _ => {}
    }
    if method != Method::GET {
        return Err(ApiError::method_not_allowed());
    }
    let inner = app.store.lock();
    // Discovery is open to every authenticated user (the system:discovery
    // role), so a kind RBAC forbids is still listed; only an absent CRD is not.
    let absent = |k: &&ResourceKind| {
        inner.faults.get(&(k.group.clone(), k.resource.clone())) == Some(&crate::store::KindFault::Absent)
    };
    let visible: Vec<&ResourceKind> = inner.kinds.iter().filter(|k| !absent(k)).collect();
    let found = |v: Option<Value>| v.map(|v| json_response(200, &v)).ok_or_else(ApiError::path_not_found);
    let (group, version, rest) = match segments.as_slice() {
        ["api"] => return Ok(json_response(200, &discovery::api_versions(&app.addr.to_string()))),
        ["apis"] => return Ok(json_response(200, &discovery::api_group_list(visible.iter().copied()))),
        ["apis", g] => return found(discovery::api_group(visible.iter().copied(), g)),
        ["api", v] => return found(discovery::api_resource_list(visible.iter().copied(), "", v)),
        ["apis", g, v] => return found(discovery::api_resource_list(visible.iter().copied(), g, v)),
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(ApiError::path_not_found()),
    };
    let rpath = ResourcePath::parse(group, version, rest).ok_or_else(ApiError::path_not_found)?;
    if let Some(name) = &rpath.name {
        return Ok(json_response(200, &api::get(&inner, &rpath, name)?));
    }
    let param = |name: &str| q.get(name).map(String::as_str).unwrap_or("");
    let selector = Selector {
        labels: LabelSelector::parse(param("labelSelector")).map_err(|e| ApiError::bad_request(e.to_string()))?,
        fields: FieldSelector::parse(param("fieldSelector")).map_err(|e| ApiError::bad_request(e.to_string()))?,
    };
    let watching = matches!(q.get("watch").map(String::as_str), Some("true" | "1"));
    if !watching {
        let limit = q.get("limit").and_then(|l| l.parse().ok());
        let opts =
            ListOptions { selector, limit, continue_token: q.get("continue").cloned().filter(|c| !c.is_empty()) };
        return Ok(json_response(200, &api::list(&inner, &rpath, &opts)?));
    }
    let kind = api::resolve(&inner, &rpath, "watch")?.clone();
    drop(inner);
    let params = WatchParams {
        path: rpath,
        kind,
        selector,
        since: parse_rv(q.get("resourceVersion"))?,
        timeout: q.get("timeoutSeconds").and_then(|t| t.parse().ok()).map(Duration::from_secs),
        bookmarks: q.get("allowWatchBookmarks").is_some_and(|b| b == "true"),
        bookmark_interval: app.bookmark_interval,
    };
    let body = Body::from_stream(watch::stream(app.store.clone(), params));
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()))
}

fn control_routes() -> Router<Arc<App>> {
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
}

fn bad(message: String) -> Response {
    json_response(400, &json!({"error": message}))
}

/// Body: one object, or an array of objects (bulk load).
async fn control_upsert(State(app): State<Arc<App>>, body: axum::body::Bytes) -> Response {
    let value: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return bad(e.to_string()),
    };
    let result = match value {
        Value::Array(objects) => app.store.bulk_load(objects).map(|n| json!({"changed": n})),
        object => app.store.upsert(object).map(|rv| json!({"resourceVersion": rv.map(|r| r.to_string())})),
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

/// Body: `{"group","resource","fault": "forbidden" | "absent" | null}`.
async fn control_fault(State(app): State<Arc<App>>, body: axum::body::Bytes) -> Response {
    use crate::store::KindFault;
    let v: Value = serde_json::from_slice(&body).unwrap_or_default();
    let field = |f: &str| v.get(f).and_then(Value::as_str).unwrap_or_default().to_owned();
    let fault = match v.get("fault").and_then(Value::as_str) {
        Some("forbidden") => Some(KindFault::Forbidden),
        Some("absent") => Some(KindFault::Absent),
        None => None,
        Some(other) => return bad(format!("unknown fault {other}")),
    };
    app.store.set_fault(&field("group"), &field("resource"), fault);
    json_response(200, &json!({}))
}
