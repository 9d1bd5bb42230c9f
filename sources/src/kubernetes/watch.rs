//! One watched (kind, namespace scope) of a cluster: discovery, then the
//! kube-runtime watcher, its events turned into messages for the driver.
//!
//! The watcher is kube-runtime's default list-then-watch (pages of 500, no
//! resourceVersion on the list: a quorum read; bookmarks on) with its
//! default backoff (800 ms doubling to 30 s). Its errors are items, not the
//! end: it relists after a `410 Gone` ERROR event and retries everything
//! else, so this task only reports them (PROTOCOL.md §6). A 404 means the
//! CRD went away (or never came): discovery runs again, every `recheck`,
//! until it is served.

use std::time::Duration;

use keelson_hub::Op;
use keelson_hub::kinds::KindInfo;
use keelson_hub::object::Limits;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

use super::convert::{self, Invalid};
use super::discovery::{Resolved, discovered, resolve};
use super::object::{AllFields, Fields, NodeFields, PodFields, Watched};

/// Which stream a message is about: its index in the driver's table.
pub type StreamId = usize;

/// What a stream tells the driver.
#[derive(Debug)]
pub enum Msg {
    /// A list begins (the first, or a relist).
    Init(StreamId),
    /// An object of the list.
    Listed(StreamId, Result<Op, Invalid>),
    /// The list is complete: what it did not hold is gone.
    InitDone(StreamId),
    /// A change seen by the watch.
    Changed(StreamId, Result<Op, Invalid>),
    Deleted(StreamId, Op),
    /// The stream failed; `permanent` when retrying will not help without
    /// an operator and the failure is this kind's alone (403 RBAC, 404), so
    /// a listing need not wait for it. A 401 is the whole cluster's
    /// credentials: like an outage, it holds the listing.
    Failed {
        stream: StreamId,
        error: String,
        permanent: bool,
    },
    /// The kind's CRD is not installed.
    Absent(StreamId),
}

/// What one stream watches.
#[derive(Clone, Debug)]
pub struct StreamSpec {
    pub id: StreamId,
    pub info: &'static KindInfo,
    /// One namespace, or `None` for all (and for cluster-scoped kinds).
    pub namespace: Option<String>,
    pub label_selector: Option<String>,
    pub cluster: String,
    pub limits: Limits,
    pub recheck: Duration,
}

/// Runs until the driver stops listening.
pub async fn run(client: kube::Client, spec: StreamSpec, tx: mpsc::Sender<Msg>) {
    // Pods and Nodes are decoded with only what their reduction reads.
    match (spec.info.group, spec.info.kind) {
        ("", "Pod") => watch::<PodFields>(client, spec, tx).await,
        ("", "Node") => watch::<NodeFields>(client, spec, tx).await,
        _ => watch::<AllFields>(client, spec, tx).await,
    }
}

async fn watch<F: Fields>(client: kube::Client, spec: StreamSpec, tx: mpsc::Sender<Msg>) {
    let mut retry = Duration::from_millis(800);
    loop {
        let resource = match resolve(&client, spec.info).await {
            Ok(Resolved::Served(resource)) => resource,
            Ok(Resolved::Absent) => {
                if tx.send(Msg::Absent(spec.id)).await.is_err() {
                    return;
                }
                tokio::time::sleep(spec.recheck).await;
                continue;
            }
            Err(e) => {
                let (error, permanent) = describe_client(&e);
                if tx.send(Msg::Failed { stream: spec.id, error, permanent }).await.is_err() {
                    return;
                }
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        retry = Duration::from_millis(800);
        let api: Api<Watched<F>> = match &spec.namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
            None => Api::all_with(client.clone(), &resource),
        };
        let mut config = watcher::Config::default();
        if let Some(selector) = spec.label_selector.as_deref().filter(|_| spec.info.namespaced) {
            config = config.labels(selector);
        }
        // The watcher asks for a list's next page only once this task has
        // taken every item of the current one; a pump task drains it into a
        // page-sized queue, so the API server prepares page N+1 while this
        // task converts page N (a 30,000-Pod first list is 60 pages).
        let (queue, mut items) = mpsc::channel(PAGE_LOOKAHEAD);
        let _pump = AbortOnDrop(tokio::spawn(async move {
            let mut events = Box::pin(watcher(api, config).default_backoff());
            while let Some(item) = events.next().await {
                if queue.send(item).await.is_err() {
                    return;
                }
            }
        }));
        while let Some(item) = items.recv().await {
            let msg = match item {
                Ok(Event::Init) => Msg::Init(spec.id),
                Ok(Event::InitApply(obj)) => Msg::Listed(spec.id, upsert(&spec, &resource, obj)),
                Ok(Event::InitDone) => Msg::InitDone(spec.id),
                Ok(Event::Apply(obj)) => Msg::Changed(spec.id, upsert(&spec, &resource, obj)),
                Ok(Event::Delete(obj)) => Msg::Deleted(spec.id, convert::delete(spec.info, &spec.cluster, &obj)),
                Err(e) => {
                    let (error, permanent, code) = describe_watch(&e);
                    if tx.send(Msg::Failed { stream: spec.id, error, permanent }).await.is_err() {
                        return;
                    }
                    if code == Some(404) && discovered(spec.info) {
                        break; // the CRD is gone: discover it again
                    }
                    continue;
                }
            };
            if tx.send(msg).await.is_err() {
                return;
            }
        }
    }
}

/// Items queued between the watcher and the conversion: one list page.
const PAGE_LOOKAHEAD: usize = 500;

/// Stops the pump when its stream is left (a rediscovery, or the driver gone).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn upsert<F>(spec: &StreamSpec, resource: &kube::core::ApiResource, obj: Watched<F>) -> Result<Op, Invalid> {
    convert::upsert(spec.info, resource, &spec.cluster, obj, &spec.limits)
}

/// A watch error in words, whether it is permanent, and its HTTP code.
fn describe_watch(e: &watcher::Error) -> (String, bool, Option<u16>) {
    let client_error = match e {
        watcher::Error::InitialListFailed(e) | watcher::Error::WatchStartFailed(e) | watcher::Error::WatchFailed(e) => {
            e
        }
        watcher::Error::WatchError(status) => {
            return (format!("watch error {}: {}", status.code, status.message), false, Some(status.code));
        }
        watcher::Error::NoResourceVersion => return (e.to_string(), false, None),
    };
    let (text, permanent) = describe_client(client_error);
    let code = match client_error {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    };
    (text, permanent, code)
}

/// The API server's own message for an API error (`virtualservices.networking.istio.io
/// is forbidden: User "x" cannot list …`), else the transport error.
fn describe_client(e: &kube::Error) -> (String, bool) {
    match e {
        kube::Error::Api(status) => {
            let reason = status.reason.as_str();
            let text = format!("{} {}: {}", status.code, reason, status.message);
            (text, matches!(status.code, 403 | 404))
        }
        other => (other.to_string(), false),
    }
}
