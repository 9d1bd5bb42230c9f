//! The HTTP server: the Kubernetes API paths, and the `/_fake` control API.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::api::{self, ListOptions, ResourcePath};
use crate::auth::{self, Auth};
use crate::control::control_routes;
use crate::discovery;
use crate::kinds::{ResourceKind, default_kinds};
use crate::selector::{FieldSelector, LabelSelector, Selector};
use crate::status::ApiError;
use crate::store::{KindFault, Store};
use crate::tls::{ClientCert, Peer, TlsConfig, TlsError, TlsListener, TlsState};
use crate::watch::{self, WatchParams};

/// How to start a fake.
#[derive(Clone, Debug)]
pub struct FakeConfig {
    pub bind: SocketAddr,
    pub kinds: Vec<ResourceKind>,
    /// How often a watch with `allowWatchBookmarks=true` gets a BOOKMARK. The real
    /// server sends about one a minute; tests shorten it.
    pub bookmark_interval: Duration,
    /// HTTPS with a CA and serving certificate made at start; `None` is plain HTTP.
    pub tls: Option<TlsConfig>,
    /// Which credentials the Kubernetes API paths require (`/_fake/*` stays open).
    pub auth: Auth,
}

impl Default for FakeConfig {
    fn default() -> Self {
        FakeConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            kinds: default_kinds(),
            bookmark_interval: Duration::from_secs(60),
            tls: None,
            auth: Auth::none(),
        }
    }
}

pub(crate) struct App {
    pub store: Arc<Store>,
    addr: SocketAddr,
    bookmark_interval: Duration,
    pub auth: Auth,
    pub tls: Option<Arc<TlsState>>,
}

/// A running fake API server; dropping it stops serving.
pub struct FakeKube {
    store: Arc<Store>,
    addr: SocketAddr,
    router: Router,
    task: std::sync::Mutex<Option<JoinHandle<()>>>,
    pub(crate) tls: Option<Arc<TlsState>>,
    pub(crate) auth: Auth,
}

fn spawn_serving(listener: TcpListener, router: Router, tls: Option<&TlsState>) -> std::io::Result<JoinHandle<()>> {
    let service = router.into_make_service_with_connect_info::<Peer>();
    Ok(match tls {
        None => tokio::spawn(async move {
            let _ = axum::serve(listener, service).await;
        }),
        Some(tls) => {
            let listener = TlsListener::new(listener, tls.acceptor.clone())?;
            tokio::spawn(async move {
                let _ = axum::serve(listener, service).await;
            })
        }
    })
}

impl FakeKube {
    /// Binds and serves. With TLS on, the CA and certificates are made here; client
    /// certificate auth without TLS is an `InvalidInput` error.
    pub async fn start(config: FakeConfig) -> std::io::Result<Self> {
        if config.auth.client_certs && config.tls.is_none() {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "client-cert auth needs TLS"));
        }
        let tls = match &config.tls {
            Some(t) => Some(Arc::new(TlsState::new(t).map_err(std::io::Error::other)?)),
            None => None,
        };
        let listener = TcpListener::bind(config.bind).await?;
        let addr = listener.local_addr()?;
        let store = Arc::new(Store::new(config.kinds));
        let app = Arc::new(App {
            store: store.clone(),
            addr,
            bookmark_interval: config.bookmark_interval,
            auth: config.auth.clone(),
            tls: tls.clone(),
        });
        let router = control_routes().fallback(kube_api).with_state(app);
        let task = std::sync::Mutex::new(Some(spawn_serving(listener, router.clone(), tls.as_deref())?));
        Ok(FakeKube { store, addr, router, task, tls, auth: config.auth })
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
        if let Some(old) = task.replace(spawn_serving(listener, self.router.clone(), self.tls.as_deref())?) {
            old.abort();
        }
        drop(task);
        self.store.set_down(false);
        Ok(())
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http(s)://127.0.0.1:PORT`, the kubeconfig `server` value.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The CA certificate (PEM) that signed the serving and client certificates.
    pub fn ca_pem(&self) -> Option<&str> {
        self.tls.as_ref().map(|t| t.ca_pem.as_str())
    }

    /// A client certificate + key for user `common_name` in group `system:masters`,
    /// signed by the fake's CA (what `kubeadm` puts in `admin.conf`).
    pub fn issue_client_cert(&self, common_name: &str) -> Result<ClientCert, TlsError> {
        self.tls.as_ref().ok_or(TlsError::NotEnabled)?.issue_client_cert(common_name, &["system:masters"])
    }

    /// The accepted credentials.
    pub fn auth(&self) -> &Auth {
        &self.auth
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

pub(crate) fn json_response(code: u16, body: &Value) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let bytes = serde_json::to_vec(body).expect("a JSON value always serializes");
    (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response()
}

fn error_response(e: ApiError) -> Response {
    let mut response = json_response(e.code, &e.status);
    if let Some(secs) = e.retry_after {
        response.headers_mut().insert(header::RETRY_AFTER, secs.into());
    }
    response
}

fn parse_rv(s: Option<&String>) -> Result<Option<u64>, ApiError> {
    match s.map(String::as_str) {
        None | Some("") | Some("0") => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| ApiError::bad_request(format!("invalid resource version: {v}"))),
    }
}

async fn kube_api(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    // Authentication comes before everything else, as the apiserver's filter chain runs it.
    if !auth::is_public(uri.path())
        && let Err(e) = auth::authenticate(&app.auth, app.tls.as_deref(), &headers, Some(&peer))
    {
        return error_response(e);
    }
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
    // role), so a kind RBAC forbids (or throttles) is still listed; only an
    // absent CRD is not.
    let absent =
        |k: &&ResourceKind| matches!(inner.faults.get(&(k.group.clone(), k.resource.clone())), Some(KindFault::Absent));
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
