//! `keelson serve`: the hub process.
//!
//! Today it opens (or creates) the log, rebuilds the current state from the
//! newest checkpoint plus the tail, keeps checkpoints and retention up to
//! date, and on SIGINT/SIGTERM writes a final checkpoint and flushes the log.
//! Sources and sinks attach to this process as they are built.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use keelson_hub::{EventStore, State};
use keelson_storage::{OpenOptions, Retention};
use tokio::signal::unix::{SignalKind, signal};

use crate::config::ServeConfig;

pub fn run(cfg: ServeConfig) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the runtime")?;
    rt.block_on(serve(cfg))
}

async fn serve(cfg: ServeConfig) -> Result<()> {
    // Before anything else: a stop requested during startup (a long replay)
    // is queued and honoured gracefully, not met with the default kill.
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let store = EventStore::open(&cfg.data_dir, OpenOptions { create: true, repair: false })
        .with_context(|| format!("cannot open the event log in {}", cfg.data_dir.display()))?;
    let started = Instant::now();
    let rebuilt = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.state_at(u64::MAX)).await??
    };
    if !rebuilt.gaps.is_empty() {
        tracing::warn!(gaps = rebuilt.gaps.len(), "replay crossed lost or compacted records; sources will reconcile");
    }
    let state = Arc::new(rebuilt.state);
    tracing::info!(
        version = state.seq,
        resources = state.resources.len(),
        checkpoint = rebuilt.from_checkpoint,
        replayed = state.seq - rebuilt.from_checkpoint,
        ms = started.elapsed().as_millis() as u64,
        data_dir = %cfg.data_dir.display(),
        "state rebuilt from the log"
    );
    for source in &cfg.sources {
        tracing::warn!(?source, "source configured, but this build does not drive sources yet; serving the log as is");
    }
    tracing::info!(grpc = %cfg.grpc_listen, admin = %cfg.admin_listen, "serving");

    let mut checkpointed = rebuilt.from_checkpoint;
    let mut tick = tokio::time::interval(cfg.maintenance_interval);
    tick.tick().await; // the first tick is immediate
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
            _ = int.recv() => { tracing::info!("SIGINT: shutting down"); break; }
            _ = tick.tick() => {
                // Maintenance failures are logged, never fatal: the log itself is intact.
                if let Err(e) = maintain(&store, &state, &cfg, &mut checkpointed, false).await {
                    tracing::error!("maintenance: {e:#}");
                }
            }
        }
    }
    maintain(&store, &state, &cfg, &mut checkpointed, true).await?;
    tracing::info!(version = state.seq, "stopped; log flushed");
    Ok(())
}

/// Writes a checkpoint when enough has changed (or always, at shutdown, when
/// anything has), then applies retention.
async fn maintain(
    store: &EventStore,
    state: &Arc<State>,
    cfg: &ServeConfig,
    checkpointed: &mut u64,
    shutting_down: bool,
) -> Result<()> {
    let behind = state.seq - *checkpointed;
    let write = behind > 0 && (shutting_down || behind >= cfg.checkpoint_every_events);
    let (store, state_now, retention) = (store.clone(), state.clone(), cfg.retention.clone());
    let seq = state.seq;
    tokio::task::spawn_blocking(move || -> Result<()> {
        if write {
            let t = Instant::now();
            store.write_checkpoint(&state_now).context("writing a checkpoint")?;
            tracing::info!(seq, ms = t.elapsed().as_millis() as u64, "checkpoint written");
        }
        if retention != Retention::default() {
            let report = store.log().compact(&retention, std::time::SystemTime::now()).context("applying retention")?;
            if report.removed_by_age + report.compacted_versions > 0 {
                tracing::info!(?report, "retention applied");
            }
        }
        store.log().flush().context("flushing the log")?;
        Ok(())
    })
    .await??;
    if write {
        *checkpointed = seq;
    }
    Ok(())
}
