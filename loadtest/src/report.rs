//! The run's report: a summary table on stdout and a JSON document whose
//! field names outside scripts rely on.

use std::fmt::Write;

use serde::Serialize;

use crate::hubcost::Sample;
use crate::measure::{ChangeResult, Tracker};
use crate::options::Options;

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub target: String,
    pub proxies: usize,
    pub mode: String,
    /// `--mode mcp`: the Istio version the simulated istiods are.
    pub istio_version: Option<String>,
    pub scenario: String,
    /// Proxies connected at the end of the run.
    pub connected: usize,
    /// Proxies that completed their initial sync.
    pub synced: usize,
    /// From the first connection attempt to the last proxy's initial sync.
    pub initial_sync_s: Option<f64>,
    /// Per proxy, from the start of its connection to its sync (for an
    /// istiod: every requested type answered, its readiness), milliseconds.
    pub sync_ms: Percentiles,
    /// Over every proxy of every change, milliseconds.
    pub convergence_ms: Percentiles,
    pub changes: usize,
    /// Proxy-changes that never converged (a change closed with proxies missing).
    pub missed: usize,
    pub acks: u64,
    pub nacks: u64,
    /// Stream and connection failures (each reconnect counts).
    pub errors: u64,
    pub last_error: Option<String>,
    /// Items a client could not use (an istiod drops them: bad name, wrong
    /// body type, another revision's object…), and the last reason.
    pub dropped_items: u64,
    pub last_dropped_item: Option<String>,
    /// Hub RSS at the end, and its growth from before the proxies connected.
    pub hub_rss_bytes: Option<u64>,
    pub hub_rss_per_proxy_bytes: Option<f64>,
    /// Hub CPU seconds during the change phase, and per change.
    pub hub_cpu_s: Option<f64>,
    pub hub_cpu_s_per_change: Option<f64>,
    /// Hub CPU seconds during connect and initial sync.
    pub hub_sync_cpu_s: Option<f64>,
    pub bytes_received: u64,
    pub bytes_received_per_change: Option<f64>,
    pub per_change: Vec<ChangeResult>,
}

fn opt(v: Option<f64>, unit: &str, scale: f64) -> String {
    v.map_or_else(|| "n/a".to_string(), |v| format!("{:.2} {unit}", v * scale))
}

impl Report {
    /// The report of a finished run. `samples`: the hub before the proxies
    /// connected, after their initial sync, and after the changes.
    pub fn build(
        o: &Options,
        t: &Tracker,
        initial_sync_s: Option<f64>,
        samples: [Option<Sample>; 3],
        bytes: u64,
    ) -> Report {
        let [before, synced, end] = samples;
        let pct = |q: f64| t.all.value_at_quantile(q) as f64 / 1e3;
        let changes = t.results.len();
        let change_cpu = synced.zip(end).map(|(s, e)| e.cpu_s - s.cpu_s);
        let [p50, p90, p99, max] = t.sync_percentiles();
        let mcp = o.mode == crate::proxy::Mode::Mcp;
        Report {
            target: o.target.clone(),
            proxies: o.proxies,
            mode: format!("{:?}", o.mode).to_lowercase(),
            istio_version: mcp.then(|| o.istio.name().to_string()),
            scenario: o.scenario.name().into(),
            connected: t.connected(),
            synced: t.synced_count,
            initial_sync_s,
            sync_ms: Percentiles { p50, p90, p99, max },
            convergence_ms: Percentiles { p50: pct(0.5), p90: pct(0.9), p99: pct(0.99), max: t.all.max() as f64 / 1e3 },
            changes,
            missed: t.results.iter().map(|r| r.missed).sum(),
            acks: t.acks,
            nacks: t.nacks,
            errors: t.errors,
            last_error: t.last_error.clone(),
            dropped_items: t.dropped_items,
            last_dropped_item: t.last_dropped.clone(),
            hub_rss_bytes: end.map(|s| s.rss_bytes),
            hub_rss_per_proxy_bytes: before
                .zip(synced)
                .map(|(b, s)| s.rss_bytes.saturating_sub(b.rss_bytes) as f64 / o.proxies as f64),
            hub_cpu_s: change_cpu,
            hub_cpu_s_per_change: change_cpu.filter(|_| changes > 0).map(|c| c / changes as f64),
            hub_sync_cpu_s: before.zip(synced).map(|(b, s)| s.cpu_s - b.cpu_s),
            bytes_received: bytes,
            bytes_received_per_change: (changes > 0).then(|| bytes as f64 / changes as f64),
            per_change: t.results.clone(),
        }
    }

    /// True when every proxy connected, synced, and converged on every
    /// change, without errors or dropped items.
    pub fn clean(&self) -> bool {
        self.connected == self.proxies
            && self.synced == self.proxies
            && self.missed == 0
            && self.errors == 0
            && self.dropped_items == 0
    }

    pub fn table(&self) -> String {
        let (c, y) = (&self.convergence_ms, &self.sync_ms);
        let mut s = String::new();
        let mode = match &self.istio_version {
            Some(v) => format!("{} (Istio {v})", self.mode),
            None => self.mode.clone(),
        };
        // An istiod's sync is its readiness: every requested type answered.
        let (synced, sync, all) = match self.istio_version {
            Some(_) => ("connected / ready", "ready per istiod p50 / p99 / max", "all ready"),
            None => ("connected / synced", "sync per proxy p50 / p99 / max", "initial sync"),
        };
        let rows: Vec<(&str, String)> = vec![
            ("target", self.target.clone()),
            ("proxies / mode / scenario", format!("{} / {mode} / {}", self.proxies, self.scenario)),
            (synced, format!("{} / {}", self.connected, self.synced)),
            (all, opt(self.initial_sync_s, "s", 1.0)),
            (sync, format!("{:.1} / {:.1} / {:.1} ms", y.p50, y.p99, y.max)),
            ("changes", self.changes.to_string()),
            (
                "convergence p50 / p90 / p99 / max",
                format!("{:.1} / {:.1} / {:.1} / {:.1} ms", c.p50, c.p90, c.p99, c.max),
            ),
            ("missed proxy-changes", self.missed.to_string()),
            ("acks / nacks / errors", format!("{} / {} / {}", self.acks, self.nacks, self.errors)),
            ("dropped items", self.dropped_items.to_string()),
            ("hub RSS (end)", opt(self.hub_rss_bytes.map(|b| b as f64), "MiB", 1.0 / 1048576.0)),
            ("hub RSS per proxy", opt(self.hub_rss_per_proxy_bytes, "KiB", 1.0 / 1024.0)),
            ("hub CPU, sync phase", opt(self.hub_sync_cpu_s, "s", 1.0)),
            ("hub CPU per change", opt(self.hub_cpu_s_per_change, "ms", 1e3)),
            ("bytes received per change", opt(self.bytes_received_per_change, "KiB", 1.0 / 1024.0)),
        ];
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        for (k, v) in rows {
            let _ = writeln!(s, "{k:<width$}  {v}");
        }
        if let Some(e) = &self.last_error {
            let _ = writeln!(s, "{:<width$}  {e}", "last error");
        }
        if let Some(e) = &self.last_dropped_item {
            let _ = writeln!(s, "{:<width$}  {e}", "last dropped item");
        }
        s
    }
}
