//! Convergence accounting: for each change, the time from its trigger (the
//! API's durable append, or the peer's trigger POST) to each proxy's ACK of a
//! version that includes it.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::proxy::{Kind, ProxyEvent};

/// What a proxy must ACK for a change to have reached it.
#[derive(Clone, Debug)]
pub enum Target {
    /// Keelson: a version ≥ the seq the API returned, per type.
    Seqs(Vec<(Kind, u64)>),
    /// Peer mode: a version different from what the proxy held at trigger.
    Differs(Vec<Kind>),
}

struct Pending {
    target: Target,
    t0: Instant,
    /// Per proxy: reached yet? (and for `Differs`, the version hashes held at trigger)
    reached: Vec<bool>,
    baseline: Vec<[u64; Kind::COUNT]>,
    latencies: Vec<Duration>,
}

/// One change's outcome.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ChangeResult {
    /// Seconds since the run started.
    pub at_s: f64,
    pub reached: usize,
    pub missed: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

pub struct Tracker {
    start: Instant,
    acked: Vec<[u64; Kind::COUNT]>,
    held: Vec<[u64; Kind::COUNT]>,
    connected: Vec<bool>,
    connected_count: usize,
    synced: Vec<bool>,
    pending: Vec<Pending>,
    pub results: Vec<ChangeResult>,
    /// Every proxy-level latency, microseconds.
    pub all: Histogram<u64>,
    pub acks: u64,
    pub nacks: u64,
    pub errors: u64,
    pub last_error: Option<String>,
    pub synced_count: usize,
    pub last_synced_at: Option<Instant>,
    /// Each sync's time since its session began connecting (an istiod's
    /// readiness), in arrival order.
    pub sync_times: Vec<Duration>,
    /// Items clients could not use, and the last reason.
    pub dropped_items: u64,
    pub last_dropped: Option<String>,
}

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1e3
}

impl Tracker {
    pub fn new(proxies: usize, start: Instant) -> Self {
        Tracker {
            start,
            acked: vec![[0; Kind::COUNT]; proxies],
            held: vec![[0; Kind::COUNT]; proxies],
            connected: vec![false; proxies],
            connected_count: 0,
            synced: vec![false; proxies],
            pending: Vec::new(),
            results: Vec::new(),
            all: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds"),
            acks: 0,
            nacks: 0,
            errors: 0,
            last_error: None,
            synced_count: 0,
            last_synced_at: None,
            sync_times: Vec::new(),
            dropped_items: 0,
            last_dropped: None,
        }
    }

    pub fn connected(&self) -> usize {
        self.connected_count
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// A change was made at `t0`.
    pub fn change(&mut self, target: Target, t0: Instant) {
        let n = self.acked.len();
        let mut p = Pending {
            target,
            t0,
            reached: vec![false; n],
            baseline: self.held.clone(),
            latencies: Vec::with_capacity(n),
        };
        for proxy in 0..n {
            // Already there (a proxy may have ACKed before the API answered).
            if self.reaches(&p, proxy) {
                p.reached[proxy] = true;
                p.latencies.push(Duration::ZERO);
            }
        }
        self.pending.push(p);
        self.finish_complete();
    }

    fn reaches(&self, p: &Pending, proxy: usize) -> bool {
        match &p.target {
            Target::Seqs(seqs) => seqs.iter().all(|(k, seq)| self.acked[proxy][*k as usize] >= *seq),
            Target::Differs(kinds) => {
                kinds.iter().any(|k| self.held[proxy][*k as usize] != p.baseline[proxy][*k as usize])
            }
        }
    }

    pub fn event(&mut self, e: ProxyEvent) {
        match e {
            ProxyEvent::Ack { proxy, kind, version, hash, at } => {
                self.acks += 1;
                let p = proxy as usize;
                if let Some(v) = version {
                    self.acked[p][kind as usize] = self.acked[p][kind as usize].max(v);
                }
                self.held[p][kind as usize] = hash;
                for i in 0..self.pending.len() {
                    if !self.pending[i].reached[p] && self.reaches(&self.pending[i], p) {
                        let pend = &mut self.pending[i];
                        pend.reached[p] = true;
                        pend.latencies.push(at.saturating_duration_since(pend.t0));
                    }
                }
                self.finish_complete();
            }
            ProxyEvent::Nack { .. } => self.nacks += 1,
            ProxyEvent::Synced { proxy, at, took } => {
                if !std::mem::replace(&mut self.synced[proxy as usize], true) {
                    self.synced_count += 1;
                    self.last_synced_at = Some(at);
                    self.sync_times.push(took);
                }
            }
            ProxyEvent::Dropped { count, error, .. } => {
                self.dropped_items += count as u64;
                self.last_dropped = Some(error);
            }
            ProxyEvent::Connected { proxy } => {
                if !std::mem::replace(&mut self.connected[proxy as usize], true) {
                    self.connected_count += 1;
                }
            }
            ProxyEvent::Disconnected { proxy, error } => {
                if std::mem::replace(&mut self.connected[proxy as usize], false) {
                    self.connected_count -= 1;
                }
                // A reconnect must sync again before it counts as synced.
                if std::mem::replace(&mut self.synced[proxy as usize], false) {
                    self.synced_count -= 1;
                }
                self.errors += 1;
                self.last_error = Some(error);
            }
        }
    }

    /// Closes changes every connected proxy has reached. The exact check is
    /// O(proxies), so it runs only once enough proxies have reached a change.
    fn finish_complete(&mut self) {
        let connected_count = self.connected_count;
        let connected = &self.connected;
        let complete = |p: &Pending| {
            p.latencies.len() >= connected_count && p.reached.iter().zip(connected).all(|(r, c)| *r || !*c)
        };
        if !self.pending.iter().any(complete) {
            return;
        }
        let (done, open): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending).into_iter().partition(|p| complete(p));
        self.pending = open;
        for p in done {
            self.close(p);
        }
    }

    /// p50, p90, p99 and max of the sync times, milliseconds.
    pub fn sync_percentiles(&self) -> [f64; 4] {
        let mut sorted = self.sync_times.clone();
        sorted.sort_unstable();
        [0.5, 0.9, 0.99, 1.0].map(|q| percentile(&sorted, q))
    }

    /// Closes every open change: proxies that have not reached it are missed.
    pub fn close_all(&mut self) {
        for p in std::mem::take(&mut self.pending) {
            self.close(p);
        }
    }

    fn close(&mut self, mut p: Pending) {
        p.latencies.sort_unstable();
        for l in &p.latencies {
            let _ = self.all.record((l.as_micros() as u64).max(1));
        }
        let reached = p.latencies.len();
        self.results.push(ChangeResult {
            at_s: p.t0.duration_since(self.start).as_secs_f64(),
            reached,
            missed: p.reached.len() - reached,
            p50_ms: percentile(&p.latencies, 0.50),
            p90_ms: percentile(&p.latencies, 0.90),
            p99_ms: percentile(&p.latencies, 0.99),
            max_ms: p.latencies.last().map_or(0.0, |l| l.as_secs_f64() * 1e3),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(proxy: u32, kind: Kind, version: u64, at: Instant) -> ProxyEvent {
        ProxyEvent::Ack { proxy, kind, version: Some(version), hash: version, at }
    }

    #[test]
    fn a_change_closes_when_every_connected_proxy_acks_its_seq() {
        let t0 = Instant::now();
        let mut t = Tracker::new(3, t0);
        for p in 0..2 {
            t.event(ProxyEvent::Connected { proxy: p });
        }
        t.change(Target::Seqs(vec![(Kind::Eds, 10)]), t0);
        t.event(ack(0, Kind::Eds, 10, t0 + Duration::from_millis(5)));
        t.event(ack(1, Kind::Eds, 9, t0 + Duration::from_millis(6)));
        t.event(ack(1, Kind::Cds, 12, t0 + Duration::from_millis(7)));
        assert_eq!(t.pending(), 1, "proxy 1 has not ACKed EDS ≥ 10");
        t.event(ack(1, Kind::Eds, 11, t0 + Duration::from_millis(20)));
        assert_eq!(t.pending(), 0);
        let r = &t.results[0];
        assert_eq!((r.reached, r.missed), (2, 1), "proxy 2 never connected");
        assert_eq!(r.max_ms, 20.0);
        assert_eq!(r.p50_ms, 5.0);
    }

    #[test]
    fn sync_times_are_kept_once_per_sync_and_summarized() {
        let t0 = Instant::now();
        let mut t = Tracker::new(2, t0);
        for (proxy, ms) in [(0, 7), (1, 30), (0, 99)] {
            t.event(ProxyEvent::Synced { proxy, at: t0, took: Duration::from_millis(ms) });
        }
        assert_eq!(t.sync_times.len(), 2, "a proxy already synced does not count twice");
        assert_eq!(t.sync_percentiles(), [7.0, 30.0, 30.0, 30.0]);
        t.event(ProxyEvent::Dropped { proxy: 1, kind: Some(Kind::VirtualService), count: 3, error: "bad".into() });
        assert_eq!((t.dropped_items, t.last_dropped.as_deref()), (3, Some("bad")));
    }

    #[test]
    fn peer_mode_waits_for_a_different_version() {
        let t0 = Instant::now();
        let mut t = Tracker::new(1, t0);
        t.event(ProxyEvent::Connected { proxy: 0 });
        t.event(ProxyEvent::Ack { proxy: 0, kind: Kind::Rds, version: None, hash: 7, at: t0 });
        t.change(Target::Differs(vec![Kind::Rds]), t0);
        t.event(ProxyEvent::Ack { proxy: 0, kind: Kind::Rds, version: None, hash: 7, at: t0 });
        assert_eq!(t.pending(), 1);
        t.event(ProxyEvent::Ack {
            proxy: 0,
            kind: Kind::Rds,
            version: None,
            hash: 8,
            at: t0 + Duration::from_millis(3),
        });
        assert_eq!(t.pending(), 0);
        assert_eq!(t.results[0].max_ms, 3.0);
    }
}
