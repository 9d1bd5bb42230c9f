//! WATCH streams: HTTP 200, chunked, one JSON event per line.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::{Instant, interval_at, sleep_until};
use tokio_stream::wrappers::ReceiverStream;

use crate::api::{ResourcePath, served};
use crate::kinds::ResourceKind;
use crate::selector::Selector;
use crate::status::ApiError;
use crate::store::{Inner, KindFault, KindKey, Store, StoredEvent};

pub struct WatchParams {
    pub path: ResourcePath,
    pub kind: ResourceKind,
    pub selector: Selector,
    /// `None` for `resourceVersion` unset or `"0"`: the real server then starts with a
    /// synthetic ADDED for every current object ("Get State and Start at Most Recent").
    pub since: Option<u64>,
    pub timeout: Option<Duration>,
    pub bookmarks: bool,
    pub bookmark_interval: Duration,
}

fn line(event_type: &str, object: Value) -> Result<Bytes, Infallible> {
    let mut s = json!({"type": event_type, "object": object}).to_string();
    s.push('\n');
    Ok(Bytes::from(s))
}

/// Turns a stored change into what this watcher sees (apiserver `cache_watcher.go`
/// `convertToWatchEvent`): entering the selector is ADDED, staying MODIFIED, leaving
/// (or being deleted) DELETED with the previous content stamped with the event's RV.
fn convert(p: &WatchParams, e: &StoredEvent) -> Option<(&'static str, Value)> {
    if p.path.namespace.as_ref().is_some_and(|ns| *ns != e.key.0) {
        return None;
    }
    let now = !e.deleted && p.selector.matches(&e.object);
    let before = e.previous.as_ref().is_some_and(|prev| p.selector.matches(prev));
    match (now, before) {
        (true, false) => Some(("ADDED", served(&p.kind, &p.path.version, &e.object))),
        (true, true) => Some(("MODIFIED", served(&p.kind, &p.path.version, &e.object))),
        (false, true) => {
            let mut last = served(&p.kind, &p.path.version, e.previous.as_ref()?);
            last["metadata"]["resourceVersion"] = json!(e.rv.to_string());
            Some(("DELETED", last))
        }
        (false, false) => None,
    }
}

/// Why a watch must stop, checked at each wake-up. A CRD that goes away ends its
/// watches; an RBAC change does not (authorization happens once, when the watch starts).
fn ended(inner: &Inner, kind: &KindKey, generation: u64) -> bool {
    inner.down || inner.drop_generation != generation || inner.faults.get(kind) == Some(&KindFault::Absent)
}

fn too_old_event(requested: u64, compacted: u64) -> Result<Bytes, Infallible> {
    line("ERROR", ApiError::too_old(requested, compacted).status)
}

pub fn stream(store: Arc<Store>, p: WatchParams) -> ReceiverStream<Result<Bytes, Infallible>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(run(store, p, tx));
    ReceiverStream::new(rx)
}

async fn run(store: Arc<Store>, p: WatchParams, tx: mpsc::Sender<Result<Bytes, Infallible>>) {
    let kind_key: KindKey = (p.kind.group.clone(), p.kind.resource.clone());
    let mut pulse = store.subscribe();
    let deadline = p.timeout.map(|t| Instant::now() + t);
    let (mut cursor, generation, initial) = {
        let inner = store.lock();
        let generation = inner.drop_generation;
        match p.since {
            // A too-old RV is one ERROR event in a 200 stream, then the end of the stream
            // (`watch_cache.go` returns ResourceExpired; the handler writes it as an event).
            Some(rv) if rv < inner.compacted_rv => (rv, generation, vec![too_old_event(rv, inner.compacted_rv)]),
            Some(rv) => (rv, generation, Vec::new()),
            None => {
                let ns = p.path.namespace.as_deref();
                let objects = inner.objects.get(&kind_key).into_iter().flat_map(|m| m.iter());
                let added: Vec<_> = objects
                    .filter(|(k, o)| ns.is_none_or(|n| k.0 == n) && p.selector.matches(o))
                    .map(|(_, o)| line("ADDED", served(&p.kind, &p.path.version, o)))
                    .collect();
                (inner.rv, generation, added)
            }
        }
    };
    let expired = p.since.is_some() && !initial.is_empty();
    for event in initial {
        if tx.send(event).await.is_err() || expired {
            return;
        }
    }
    let mut bookmark = interval_at(Instant::now() + p.bookmark_interval, p.bookmark_interval);
    loop {
        pulse.borrow_and_update();
        let batch = {
            let inner = store.lock();
            if ended(&inner, &kind_key, generation) {
                return;
            }
            if cursor < inner.compacted_rv {
                // History was compacted past a watcher that had not caught up.
                Err(too_old_event(cursor, inner.compacted_rv))
            } else {
                let start = inner.history.partition_point(|e| e.rv <= cursor);
                let batch: Vec<_> = inner.history[start..]
                    .iter()
                    .filter(|e| e.kind == kind_key)
                    .filter_map(|e| convert(&p, e))
                    .collect();
                cursor = cursor.max(inner.rv);
                Ok(batch)
            }
        };
        let batch = match batch {
            Ok(batch) => batch,
            Err(error_event) => {
                let _ = tx.send(error_event).await;
                return;
            }
        };
        for (event_type, object) in batch {
            if tx.send(line(event_type, object)).await.is_err() {
                return;
            }
        }
        let timeout = async {
            match deadline {
                Some(d) => sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = pulse.changed() => if changed.is_err() { return },
            _ = timeout => return,
            _ = tx.closed() => return,
            _ = bookmark.tick(), if p.bookmarks => {
                // kube-rs needs kind and apiVersion on a BOOKMARK to decode it.
                let object = json!({
                    "kind": p.kind.kind, "apiVersion": p.kind.api_version(&p.path.version),
                    "metadata": {"resourceVersion": cursor.to_string()},
                });
                if tx.send(line("BOOKMARK", object)).await.is_err() {
                    return;
                }
            }
        }
    }
}
