//! `keelson-loadtest`: thousands of simulated Envoys (or istiods, over MCP)
//! against an xDS server, measuring how fast config converges and what it
//! costs the server.
//!
//! A run: create the scenario's resources through the push API, connect the
//! proxies at a bounded rate and wait for their initial sync, then make a
//! change every interval for the duration, and for each change measure the
//! time from its durable append to each proxy's ACK of a version ≥ its seq.
#![forbid(unsafe_code)]

pub mod api;
pub mod hubcost;
pub mod istio;
pub mod measure;
pub mod options;
pub mod plot;
pub mod proxy;
pub mod report;
pub mod scenario;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::{mpsc, watch};

use crate::hubcost::Probe;
use crate::measure::{Target, Tracker};
use crate::options::Options;
use crate::proxy::{Fleet, NackPolicy};
use crate::report::Report;
use crate::scenario::{Scenario, ScenarioKind, Step};

#[derive(Debug, thiserror::Error)]
pub enum LoadtestError {
    #[error(
        "{proxies} proxies need about {need} open files, and this process may open only {limit} \
         (hard limit {hard}). Raise it, e.g. `ulimit -n {need}` (root may raise the hard limit in \
         /etc/security/limits.conf), or run fewer proxies."
    )]
    FileLimit { proxies: usize, need: u64, limit: u64, hard: u64 },
    #[error("setting up the scenario: {0}")]
    Setup(api::ApiError),
    #[error("making change {n}: {source}")]
    Change { n: u64, source: api::ApiError },
    #[error(transparent)]
    Plot(#[from] plot::PlotError),
    #[error("writing {path}: {source}")]
    Write { path: String, source: std::io::Error },
}

/// Raises the soft open-file limit as far as the hard limit allows and
/// checks it covers one connection per proxy plus headroom.
pub fn raise_fd_limit(proxies: usize) -> Result<u64, LoadtestError> {
    let need = proxies as u64 + 256;
    let limit = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0);
    let (_, hard) = rlimit::Resource::NOFILE.get().unwrap_or((limit, limit));
    if limit < need {
        return Err(LoadtestError::FileLimit { proxies, need, limit, hard });
    }
    Ok(limit)
}

fn bar(quiet: bool, len: u64, template: &str) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    pb.set_style(ProgressStyle::with_template(template).expect("valid template"));
    pb
}

/// Applies one change (or the setup) through the push API; the seqs it got per type.
async fn apply(o: &Options, steps: &[Step]) -> Result<Vec<(proxy::Kind, u64)>, api::ApiError> {
    let (admin, token) = (o.admin.as_deref().unwrap_or_default(), o.token.as_deref().unwrap_or_default());
    let mut seqs: Vec<(proxy::Kind, u64)> = Vec::new();
    for step in steps {
        let (kind, seq) = match step {
            Step::Put(kind, obj) => (*kind, api::put(admin, token, obj).await?),
            Step::Delete(kind, obj) => (*kind, api::delete(admin, token, obj).await?),
        };
        if let Some(seq) = seq {
            match seqs.iter_mut().find(|(k, _)| *k == kind) {
                Some((_, s)) => *s = (*s).max(seq),
                None => seqs.push((kind, seq)),
            }
        }
    }
    Ok(seqs)
}

/// Applies a setup whose steps do not depend on each other (Istio objects
/// reference hosts, not each other) with up to `width` API calls in
/// flight: 21,000 objects one after the other would take most of a minute.
async fn apply_concurrently(o: &Options, steps: Vec<Step>, width: usize) -> Result<(), api::ApiError> {
    let pb = bar(o.quiet, steps.len() as u64, "setup   [{elapsed_precise}] {wide_bar} {pos}/{len} objects");
    let admin: Arc<str> = o.admin.as_deref().unwrap_or_default().into();
    let token: Arc<str> = o.token.as_deref().unwrap_or_default().into();
    let mut running = tokio::task::JoinSet::new();
    let mut steps = steps.into_iter();
    loop {
        while running.len() < width
            && let Some(step) = steps.next()
        {
            let (admin, token) = (admin.clone(), token.clone());
            running.spawn(async move {
                match step {
                    Step::Put(_, obj) => api::put(&admin, &token, &obj).await,
                    Step::Delete(_, obj) => api::delete(&admin, &token, &obj).await,
                }
            });
        }
        let Some(done) = running.join_next().await else { break };
        // A panicked call is a bug in this crate, not an API answer.
        done.expect("API call task")?;
        pb.inc(1);
    }
    pb.finish();
    Ok(())
}

/// Polls until every proxy has synced or `sync_timeout` passes, with a progress bar.
async fn wait_for_sync(o: &Options, tracker: &Mutex<Tracker>, start: Instant) {
    let pb = bar(o.quiet, o.proxies as u64, "sync    [{elapsed_precise}] {wide_bar} {pos}/{len} synced {msg}");
    let deadline = start + o.sync_timeout;
    loop {
        let (synced, connected, errors) = {
            let t = tracker.lock().unwrap_or_else(|e| e.into_inner());
            (t.synced_count, t.connected(), t.errors)
        };
        pb.set_position(synced as u64);
        pb.set_message(format!("({connected} connected, {errors} errors)"));
        if synced == o.proxies || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pb.finish();
}

/// Makes a change every interval for the duration, then lets the last ones
/// converge (at most 5 intervals, at least 10 s).
async fn change_phase(o: &Options, scenario: &Scenario, tracker: &Mutex<Tracker>) -> Result<(), LoadtestError> {
    let lock = || tracker.lock().unwrap_or_else(|e| e.into_inner());
    let pb = bar(o.quiet, o.duration.as_secs().max(1), "changes [{elapsed_precise}] {wide_bar} {pos}/{len}s {msg}");
    let phase = Instant::now();
    let mut tick = tokio::time::interval(o.interval);
    let mut n = 0u64;
    while phase.elapsed() < o.duration {
        tick.tick().await;
        n += 1;
        let failed = |source| LoadtestError::Change { n, source };
        match &o.trigger_url {
            Some(url) => {
                // Peer mode: the clock starts before the POST that makes the change.
                lock().change(Target::Differs(o.scenario.kinds().to_vec()), Instant::now());
                api::request("POST", url, None, "").await.map_err(failed)?;
            }
            None => {
                let seqs = apply(o, &scenario.change(n)).await.map_err(failed)?;
                lock().change(Target::Seqs(seqs), Instant::now());
            }
        }
        pb.set_position(phase.elapsed().as_secs());
        pb.set_message(format!("{n} changes, {} converging", lock().pending()));
    }
    let drain_end = Instant::now() + (o.interval * 5).max(Duration::from_secs(10));
    while lock().pending() > 0 && Instant::now() < drain_end {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pb.finish();
    Ok(())
}

/// Runs the load test described by `o`.
pub async fn run(o: &Options) -> Result<(Report, hdrhistogram::Histogram<u64>), LoadtestError> {
    raise_fd_limit(o.proxies)?;
    let probe = match (o.hub_pid, &o.admin) {
        (Some(pid), _) => Probe::Proc(pid),
        (None, Some(admin)) => Probe::Metrics(admin.clone()),
        (None, None) => Probe::None,
    };
    let scenario = Scenario { kind: o.scenario, services: o.services, endpoints: o.endpoints, istio: o.istio_objects };
    if o.trigger_url.is_none() {
        let setup = scenario.setup();
        let done = match o.scenario {
            ScenarioKind::IstioChurn => apply_concurrently(o, setup, 16).await,
            _ => apply(o, &setup).await.map(|_| ()),
        };
        done.map_err(LoadtestError::Setup)?;
    }
    let before = probe.sample().await;

    let start = Instant::now();
    let tracker = Arc::new(Mutex::new(Tracker::new(o.proxies, start)));
    let (events, mut event_rx) = mpsc::unbounded_channel();
    let (stop_tx, stop) = watch::channel(false);
    let fleet = Arc::new(Fleet {
        target: o.target.clone(),
        mode: o.mode,
        cluster: o.node_cluster.clone(),
        namespace: o.node_namespace.clone(),
        nack: NackPolicy { rate: o.nack_rate, pattern: o.nack_pattern.clone() },
        events,
        stop,
        bytes_received: Default::default(),
        istio: o.istio,
        revision: o.istio_revision.clone(),
        checked: Default::default(),
    });
    let collector = {
        let tracker = tracker.clone();
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(1024);
            while event_rx.recv_many(&mut batch, 1024).await > 0 {
                let mut t = tracker.lock().unwrap_or_else(|e| e.into_inner());
                for e in batch.drain(..) {
                    t.event(e);
                }
            }
        })
    };
    let spawner = {
        let (fleet, n, rate) = (fleet.clone(), o.proxies, o.connect_rate);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
            let mut handles = Vec::with_capacity(n);
            for id in 0..n as u32 {
                tick.tick().await;
                handles.push(tokio::spawn(proxy::run(fleet.clone(), id)));
            }
            handles
        })
    };

    wait_for_sync(o, &tracker, start).await;
    let mut proxies = spawner.await.unwrap_or_default();
    let initial_sync_s = {
        let t = tracker.lock().unwrap_or_else(|e| e.into_inner());
        (t.synced_count == o.proxies).then(|| t.last_synced_at.map_or(0.0, |at| at.duration_since(start).as_secs_f64()))
    };
    let synced = probe.sample().await;

    let bytes0 = fleet.bytes_received.load(Ordering::Relaxed);
    // The fleet stops below whether or not the changes went through.
    let changed = change_phase(o, &scenario, &tracker).await;
    let end = probe.sample().await;
    let bytes = fleet.bytes_received.load(Ordering::Relaxed) - bytes0;

    let _ = stop_tx.send(true);
    let all_stopped = async {
        for p in &mut proxies {
            let _ = p.await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(10), all_stopped).await.is_err() {
        proxies.iter().for_each(tokio::task::JoinHandle::abort);
    }
    drop(fleet);
    let _ = tokio::time::timeout(Duration::from_secs(5), collector).await;
    changed?;

    let mut t = tracker.lock().unwrap_or_else(|e| e.into_inner());
    t.close_all();
    let report = Report::build(o, &t, initial_sync_s, [before, synced, end], bytes);
    let all = t.all.clone();
    drop(t);
    if let Some(path) = &o.json {
        let text = serde_json::to_string_pretty(&report).expect("report serializes");
        std::fs::write(path, text)
            .map_err(|source| LoadtestError::Write { path: path.display().to_string(), source })?;
    }
    if let Some(path) = &o.plot {
        plot::write(path, &report, &all)?;
    }
    Ok((report, all))
}
