//! A hub with Kubernetes sources against fake API servers (fakes/kube, a
//! fake checked against kubectl and the Python client in its own tests).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use keelson_fake_kube::{FakeConfig, FakeKube};
use keelson_hub::metrics::Metrics;
use keelson_hub::{Event, EventStore, Hub, HubConfig, HubHandle, LogEntry, Op, SourceHealth, SourceId};
use keelson_sources::Source;
use keelson_sources::kubernetes::{Connection, KubernetesConfig, KubernetesSource};
use keelson_storage::OpenOptions;
use serde_json::{Value, json};
use tokio::sync::watch;

pub const DEADLINE: Duration = Duration::from_secs(30);

/// A fake cluster and a kubeconfig naming it.
pub struct Cluster {
    pub name: String,
    pub fake: FakeKube,
    pub kubeconfig: PathBuf,
}

impl Cluster {
    pub async fn start(name: &str, dir: &Path) -> Cluster {
        let fake = FakeKube::start(FakeConfig::default()).await.unwrap();
        let kubeconfig = dir.join(format!("{name}.kubeconfig"));
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: {name}\n  cluster:\n    server: {url}\nusers:\n- name: u\n  user: {{}}\ncontexts:\n- name: {name}-ctx\n  context:\n    cluster: {name}\n    user: u\ncurrent-context: {name}-ctx\n",
            url = fake.url()
        );
        std::fs::write(&kubeconfig, text).unwrap();
        Cluster { name: name.to_string(), fake, kubeconfig }
    }

    pub fn config(&self) -> KubernetesConfig {
        let mut c = KubernetesConfig::new(
            &self.name,
            Connection::Kubeconfig { path: Some(self.kubeconfig.clone()), context: None },
        );
        c.crd_recheck = Duration::from_millis(300);
        c
    }

    /// Listens again. The old listener closes when its aborted task is
    /// dropped, which may be a moment after `refuse_connections` returns.
    pub async fn accept_again(&self) {
        let end = Instant::now() + DEADLINE;
        while let Err(e) = self.fake.accept_connections().await {
            assert!(Instant::now() < end, "cannot listen again: {e}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn put(&self, object: Value) {
        self.fake.store().upsert(object).unwrap();
    }

    pub fn delete(&self, api_version: &str, kind: &str, ns: &str, name: &str) {
        self.fake.store().delete(api_version, kind, ns, name).unwrap();
    }
}

/// A hub on a data dir, and the sources running into it.
pub struct Running {
    pub hub: Hub,
    pub store: EventStore,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    pub async fn start(data: &Path, configs: Vec<KubernetesConfig>) -> Running {
        Self::start_with(data, configs, HubConfig::default()).await
    }

    pub async fn start_with(data: &Path, configs: Vec<KubernetesConfig>, cfg: HubConfig) -> Running {
        let store = EventStore::open(data, OpenOptions { create: true, repair: false }).unwrap();
        let sources: Vec<KubernetesSource> = configs.into_iter().map(KubernetesSource::new).collect();
        // These tests count what the source wrote: translation (tested in
        // hub/tests/translation.rs and the real-client tests) stays off, or
        // every Service would add its derived clusters and listeners.
        let translate = keelson_hub::translate::TranslateConfig { enabled: false, ..cfg.translate.clone() };
        let cfg = HubConfig { sources: sources.iter().map(|s| s.id().clone()).collect(), translate, ..cfg };
        let hub = Hub::start(store.clone(), cfg, Metrics::default()).await.unwrap();
        let (stop, stop_rx) = watch::channel(false);
        let tasks = sources.into_iter().map(|s| tokio::spawn(Box::new(s).run(hub.handle(), stop_rx.clone()))).collect();
        Running { hub, store, stop, tasks }
    }

    pub fn handle(&self) -> HubHandle {
        self.hub.handle()
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            tokio::time::timeout(DEADLINE, t).await.expect("a source stops when told").unwrap();
        }
        self.hub.stop().await.unwrap();
    }

    /// Every event in the log after `after`.
    pub fn events_after(&self, after: u64) -> Vec<Event> {
        self.store
            .entries_from(after + 1)
            .filter_map(|e| match e.unwrap() {
                LogEntry::Event(ev) => Some(ev),
                _ => None,
            })
            .collect()
    }

    /// [`changes`] among the events after `after`.
    pub fn changes_after(&self, after: u64) -> Vec<String> {
        changes(&self.events_after(after))
    }

    pub fn last_seq(&self) -> u64 {
        self.store.log().last_seq()
    }

    pub fn keys(&self) -> Vec<String> {
        let state = self.store.state_at(u64::MAX).unwrap().state;
        state.resources.keys().map(ToString::to_string).collect()
    }

    pub fn health(&self, source: &str) -> SourceHealth {
        self.handle().health().get(source).cloned().unwrap_or_default()
    }
}

/// Polls `check` until it holds, or fails the test naming `what`.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let end = Instant::now() + DEADLINE;
    while !check() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Upserts and deletes among `events`, as `op key` strings.
pub fn changes(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match &e.op {
            Op::Upsert { key, .. } => Some(format!("upsert {key}")),
            Op::Delete { key, .. } => Some(format!("delete {key}")),
            _ => None,
        })
        .collect()
}

pub fn markers(events: &[Event], origin: &SourceId) -> Vec<&'static str> {
    events.iter().filter(|e| &e.origin == origin).map(|e| e.op.name()).filter(|n| n.starts_with("sync")).collect()
}

pub fn vs(ns: &str, name: &str, host: &str) -> Value {
    json!({ "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": { "name": name, "namespace": ns },
        "spec": { "hosts": [host], "http": [{ "route": [{ "destination": { "host": host } }] }] } })
}

pub fn service(ns: &str, name: &str) -> Value {
    json!({ "apiVersion": "v1", "kind": "Service", "metadata": { "name": name, "namespace": ns },
        "spec": { "selector": { "app": name }, "ports": [{ "name": "http", "port": 9080 }] } })
}

pub fn pod(ns: &str, name: &str, ip: &str, restarts: u64) -> Value {
    json!({ "apiVersion": "v1", "kind": "Pod", "metadata": { "name": name, "namespace": ns, "labels": { "app": "reviews" } },
        "spec": { "nodeName": "node-1", "containers": [{ "name": "app", "image": "reviews:1" }] },
        "status": { "phase": "Running", "podIP": ip, "podIPs": [{ "ip": ip }],
            "conditions": [{ "type": "Ready", "status": "True" }],
            "containerStatuses": [{ "name": "app", "restartCount": restarts }] } })
}
