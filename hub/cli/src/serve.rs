//! `keelson serve`: wires sources → hub (log, state, snapshots) → xDS and
//! admin HTTP; NACKs flow back into the log.

use std::sync::Arc;

use anyhow::{Context, Result};
use keelson_hub::metrics::Metrics;
use keelson_hub::{EventStore, Hub, HubConfig, Op, SourceId, SourceKind};
use keelson_sources::Source;
use keelson_sources::file::{FileSource, FileSourceConfig};
use keelson_storage::{OpenOptions, Retention};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use crate::config::{ServeConfig, SourceSpec};
use keelson_sinks::xds::SHUTDOWN_GRACE;

pub fn run(cfg: ServeConfig) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the runtime")?;
    rt.block_on(serve(cfg))
}

fn build_sources(cfg: &ServeConfig) -> Vec<Box<dyn Source>> {
    let mut sources: Vec<Box<dyn Source>> = Vec::new();
    for spec in &cfg.sources {
        match spec {
            SourceSpec::File(root) => {
                let mut fc = FileSourceConfig::new(root.clone());
                fc.rescan = cfg.file_rescan;
                fc.full_check = cfg.file_full_check;
                fc.max_file_bytes = cfg.file_max_file_bytes;
                sources.push(Box::new(FileSource::new(fc)));
            }
            SourceSpec::Kubernetes(config) => {
                sources.push(Box::new(keelson_sources::kubernetes::KubernetesSource::new((**config).clone())));
            }
            other => tracing::warn!(source = ?other, "this build has no driver for this source kind yet; ignoring it"),
        }
    }
    sources
}

async fn serve(cfg: ServeConfig) -> Result<()> {
    // Before anything else: a stop requested during startup (a long replay)
    // is queued and honoured gracefully, not met with the default kill.
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;

    // One socket per connected proxy: use all the open files the hard limit allows.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::info!(limit, "open file limit"),
        Err(e) => tracing::warn!("cannot raise the open file limit: {e}"),
    }
    let store = EventStore::open(&cfg.data_dir, OpenOptions { create: true, repair: false })
        .with_context(|| format!("cannot open the event log in {}", cfg.data_dir.display()))?;
    let token = match &cfg.api_token_file {
        None => None,
        Some(path) => {
            let t = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read [api] token_file {}", path.display()))?;
            let t = t.trim().to_string();
            anyhow::ensure!(!t.is_empty(), "[api] token_file {} is empty", path.display());
            Some(t)
        }
    };
    let metrics = Metrics::default();
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);

    let sources = build_sources(&cfg);
    let hub_cfg = HubConfig {
        quiet: cfg.quiet,
        max_delay: cfg.max_delay,
        sync_timeout: cfg.sync_timeout,
        checkpoint_every_events: cfg.checkpoint_every_events,
        sources: sources.iter().map(|s| s.id().clone()).collect(),
        limits: cfg.limits,
        deletion_guard: cfg.deletion_guard,
        translate: cfg.translate.clone(),
    };
    let hub = Hub::start(store.clone(), hub_cfg, metrics).await?;
    let handle = hub.handle();

    // The xDS server: NACKs it hears go to the log, as audit events.
    let ledger = keelson_hub::AckLedger::default();
    let xds_metrics = keelson_sinks::xds::metrics::XdsMetrics::default();
    xds_metrics.register(&mut registry);
    let (ads, mut nacks) =
        keelson_sinks::xds::AdsServer::new(&cfg.xds, handle.snapshots(), ledger.clone(), xds_metrics);
    let mut nack_log = {
        let handle = handle.clone();
        tokio::spawn(async move {
            let origin = SourceId::new(SourceKind::Hub, "xds");
            while let Some(n) = nacks.recv().await {
                let op = Op::Nack { node: n.node, type_url: n.type_url, version: n.version, error: n.error };
                if let Err(e) = handle.submit(origin.clone(), vec![op]).await {
                    tracing::error!("cannot log a NACK: {e}");
                }
            }
        })
    };
    let grpc_listener = tokio::net::TcpListener::bind(cfg.grpc_listen)
        .await
        .with_context(|| format!("cannot listen on the gRPC address {}", cfg.grpc_listen))?;
    let grpc_addr = grpc_listener.local_addr().context("gRPC listener address")?;

    let listener = tokio::net::TcpListener::bind(cfg.admin_listen)
        .await
        .with_context(|| format!("cannot listen on the admin address {}", cfg.admin_listen))?;
    let admin_addr = listener.local_addr().context("admin listener address")?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let router = keelson_sinks::admin::router(handle.clone(), ledger, Arc::new(registry))
        .merge(keelson_sources::api::router(handle.clone(), token));
    let mut admin_stop = stop_rx.clone();
    let admin = tokio::spawn(keelson_sinks::admin::serve(listener, router, async move {
        let _ = admin_stop.wait_for(|stop| *stop).await;
    }));
    let mut grpc_stop = stop_rx.clone();
    let stopping = async move {
        let _ = grpc_stop.wait_for(|stop| *stop).await;
    };
    let grpc = tokio::spawn(keelson_sinks::xds::serve(grpc_listener, ads, stopping, SHUTDOWN_GRACE));
    let source_tasks: Vec<_> =
        sources.into_iter().map(|s| tokio::spawn(s.run(handle.clone(), stop_rx.clone()))).collect();
    tracing::info!(admin = %admin_addr, grpc = %grpc_addr, data_dir = %display_path(&cfg.data_dir).display(), "serving");

    let mut tick = tokio::time::interval(cfg.maintenance_interval);
    tick.tick().await; // the first tick is immediate
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
            _ = int.recv() => { tracing::info!("SIGINT: shutting down"); break; }
            _ = storage_failed(&store) => break,
            _ = tick.tick() => {
                if cfg.retention != Retention::default() {
                    // Failures are logged, never fatal: the log itself is intact.
                    if let Err(e) = compact(&store, &cfg.retention).await {
                        tracing::error!("retention: {e:#}");
                    }
                }
            }
        }
    }
    let _ = stop_tx.send(true);
    for t in source_tasks {
        let _ = t.await;
    }
    // Streams end when the server stops (within its grace); the NACK queue
    // then drains, also bounded.
    grpc.await.context("gRPC server task")?.context("gRPC server")?;
    if tokio::time::timeout(SHUTDOWN_GRACE, &mut nack_log).await.is_err() {
        tracing::warn!("NACKs still queued {SHUTDOWN_GRACE:?} after shutdown were not logged");
        nack_log.abort();
    }
    stop_hub_bounded(hub, &store).await?;
    admin.await.context("admin server task")?.context("admin server")?;
    tracing::info!("stopped; log flushed");
    Ok(())
}

async fn compact(store: &EventStore, retention: &Retention) -> Result<()> {
    let (store, retention) = (store.clone(), retention.clone());
    let report =
        tokio::task::spawn_blocking(move || store.log().compact(&retention, std::time::SystemTime::now())).await??;
    if report.removed_by_age + report.compacted_versions > 0 {
        tracing::info!(?report, "retention applied");
    }
    Ok(())
}

/// How long after a storage failure the hub keeps serving (reads, xDS, a 503
/// `/readyz` naming the failure) before it exits with [`STORAGE_FAILED_EXIT`].
pub const STORAGE_FAILURE_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Exit code of a hub whose storage failed (docs/storage.md): a restart recovers.
pub const STORAGE_FAILED_EXIT: i32 = 3;

/// Bound on the final checkpoint and flush in shutdown. Above the engine's own
/// flush deadline, so a healthy but slow disk still finishes.
pub const HUB_STOP_TIMEOUT: std::time::Duration =
    keelson_storage::FLUSH_TIMEOUT.saturating_add(std::time::Duration::from_secs(10));

/// Resolves [`STORAGE_FAILURE_GRACE`] after the log failed (it never writes
/// again in-process: docs/storage.md); a signal in the meantime still wins.
async fn storage_failed(store: &EventStore) {
    let mut poll = tokio::time::interval(std::time::Duration::from_millis(200));
    let reason = loop {
        poll.tick().await;
        if let Some(reason) = store.log().failure() {
            break reason;
        }
    };
    tracing::error!(
        "storage failed: {reason}; exiting with code {STORAGE_FAILED_EXIT} in {STORAGE_FAILURE_GRACE:?} \
         so the supervisor restarts the hub (a restart recovers)"
    );
    tokio::time::sleep(STORAGE_FAILURE_GRACE).await;
}

/// Stops the hub (final checkpoint and flush) within [`HUB_STOP_TIMEOUT`].
/// When storage failed or the stop overran, exits with
/// [`STORAGE_FAILED_EXIT`] right away: running destructors would call into
/// an engine that may block forever.
async fn stop_hub_bounded(hub: keelson_hub::Hub, store: &EventStore) -> Result<()> {
    let stopped = tokio::time::timeout(HUB_STOP_TIMEOUT, hub.stop()).await;
    let reason = match (&stopped, store.log().failure()) {
        (_, Some(reason)) => reason,
        (Err(_), None) => format!("the final checkpoint and flush did not finish within {HUB_STOP_TIMEOUT:?}"),
        (Ok(result), None) => return result.as_ref().map(|_| ()).map_err(|e| anyhow::anyhow!("stopping the hub: {e}")),
    };
    tracing::error!("storage failed: {reason}; exiting with code {STORAGE_FAILED_EXIT}; restart to recover");
    std::process::exit(STORAGE_FAILED_EXIT);
}

/// `path` with `.` and `dir/..` removed, lexically (it need not exist), for
/// messages: `examples/../keelson-data` reads as `keelson-data`.
fn display_path(path: &std::path::Path) -> std::path::PathBuf {
    use std::path::Component;
    let mut out = std::path::PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir if matches!(out.components().next_back(), Some(Component::Normal(_))) => {
                out.pop();
            }
            Component::ParentDir if out.has_root() => {} // `/..` is `/`
            other => out.push(other),
        }
    }
    if out.as_os_str().is_empty() { ".".into() } else { out }
}

#[cfg(test)]
mod tests {
    use super::display_path;
    use std::path::Path;

    #[test]
    fn data_dir_is_shown_without_dot_segments() {
        for (raw, shown) in [
            ("examples/../keelson-data", "keelson-data"),
            ("./a/./b/../c", "a/c"),
            ("../up/x/..", "../up"),
            ("/srv/../data", "/data"),
            ("/..", "/"),
            ("a/..", "."),
        ] {
            assert_eq!(display_path(Path::new(raw)), Path::new(shown), "{raw}");
        }
    }
}
