//! The Kubernetes source: one cluster's Istio config and service registry,
//! watched with kube-rs (issue 11; PROTOCOL.md §6).
//!
//! `config` says which cluster and what to watch, `client` connects (a
//! kubeconfig context or in-cluster), `discovery` picks each kind's served
//! version, `watch` runs one kube-runtime watcher per (kind, namespace
//! scope), `convert` turns objects into ops through the shared validation,
//! and `driver` turns the streams into listings and changes for the hub.

pub mod client;
pub mod config;
pub mod convert;
pub mod discovery;
mod driver;
pub mod object;
pub mod watch;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use keelson_hub::{HubHandle, SourceId};
use tokio::sync::{mpsc, watch as signal};

pub use config::{Connection, KubernetesConfig};

use crate::Source;
use driver::Driver;
use watch::{Msg, StreamSpec};

/// Messages taken from the streams before one submission: a burst (a
/// list page, many changes) becomes one durable batch.
const BATCH: usize = 500;

pub struct KubernetesSource {
    config: KubernetesConfig,
    id: SourceId,
}

impl KubernetesSource {
    pub fn new(config: KubernetesConfig) -> Self {
        let id = config.id();
        KubernetesSource { config, id }
    }
}

impl Source for KubernetesSource {
    fn id(&self) -> &SourceId {
        &self.id
    }

    fn run(
        self: Box<Self>,
        hub: HubHandle,
        shutdown: signal::Receiver<bool>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(run(self.config, self.id, hub, shutdown))
    }
}

async fn run(config: KubernetesConfig, id: SourceId, hub: HubHandle, mut shutdown: signal::Receiver<bool>) {
    let Some(client) = connect(&config, &id, &hub, &mut shutdown).await else { return };
    let specs = stream_specs(&config, &hub);
    let (tx, mut rx) = mpsc::channel::<Msg>(4 * BATCH);
    let mut tasks = tokio::task::JoinSet::new();
    for spec in &specs {
        tasks.spawn(watch::run(client.clone(), spec.clone(), tx.clone()));
    }
    drop(tx);
    let mut driver = Driver::new(hub, id, specs);
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            msg = rx.recv() => {
                let Some(msg) = msg else { break };
                driver.handle(msg).await;
                for _ in 1..BATCH {
                    match rx.try_recv() {
                        Ok(msg) => driver.handle(msg).await,
                        Err(_) => break,
                    }
                }
                driver.flush().await;
            }
        }
    }
    tasks.abort_all();
}

/// Builds the client, retrying (a kubeconfig being written, a token not yet
/// mounted) with backoff while reporting the source down.
async fn connect(
    config: &KubernetesConfig,
    id: &SourceId,
    hub: &HubHandle,
    shutdown: &mut signal::Receiver<bool>,
) -> Option<kube::Client> {
    let mut retry = Duration::from_millis(800);
    loop {
        match client::connect(&config.connection).await {
            Ok(client) => return Some(client),
            Err(e) => {
                tracing::error!(source = %id, "cannot connect: {e}");
                hub.update_health(id, |h| {
                    h.up = false;
                    h.last_error = Some(e.to_string());
                });
            }
        }
        tokio::select! {
            _ = shutdown.changed() => return None,
            _ = tokio::time::sleep(retry) => {}
        }
        retry = (retry * 2).min(Duration::from_secs(30));
    }
}

/// One stream per kind, or per (kind, namespace) when namespaces are listed.
fn stream_specs(config: &KubernetesConfig, hub: &HubHandle) -> Vec<StreamSpec> {
    let mut specs = Vec::new();
    for info in &config.kinds {
        let scopes: Vec<Option<String>> = if info.namespaced && !config.namespaces.is_empty() {
            config.namespaces.iter().cloned().map(Some).collect()
        } else {
            vec![None]
        };
        for namespace in scopes {
            specs.push(StreamSpec {
                id: specs.len(),
                info,
                namespace,
                label_selector: config.label_selector.clone().filter(|s| !s.is_empty()),
                cluster: config.name.clone(),
                limits: *hub.limits(),
                recheck: config.crd_recheck,
            });
        }
    }
    specs
}
