//! Prometheus metrics of the xDS server.

use std::time::SystemTime;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    /// CDS, EDS…, or "other": never a client-chosen string, so a client
    /// sending made-up type URLs cannot grow the series without bound.
    pub r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabel {
    pub protocol: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabel {
    pub reason: String,
}

fn convergence_histogram() -> Histogram {
    // 1 ms … ~33 s
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

#[derive(Clone)]
pub struct XdsMetrics {
    pub streams: Family<StreamLabel, Gauge>,
    pub pushes: Family<TypeLabel, Counter>,
    pub acks: Family<TypeLabel, Counter>,
    pub nacks: Family<TypeLabel, Counter>,
    pub bytes_sent: Counter,
    /// Publish-to-ACK time per type.
    pub convergence: Family<TypeLabel, Histogram, fn() -> Histogram>,
    pub rejected: Family<RejectLabel, Counter>,
    pub stale_requests: Counter,
    /// NACKs not appended because the log queue was full.
    pub nacks_unlogged: Counter,
    /// NACKs not appended, by reason (stream_rate, global_rate, queue_full).
    pub nacks_dropped: Family<RejectLabel, Counter>,
    /// NACKs not appended because the same one is already in the log.
    pub nack_repeats: Counter,
    /// Connections closed at accept because `max_connections` were open.
    pub connections_refused: Counter,
    /// Connections closed because they opened no stream in time.
    pub connections_timed_out: Counter,
    /// Delta wildcard diffs from a snapshot's change set (cheap) and over
    /// the whole kind (after a stream missed a snapshot, or first time).
    pub delta_change_set_diffs: Counter,
    pub delta_full_diffs: Counter,
}

impl Default for XdsMetrics {
    fn default() -> Self {
        XdsMetrics {
            streams: Family::default(),
            pushes: Family::default(),
            acks: Family::default(),
            nacks: Family::default(),
            bytes_sent: Counter::default(),
            convergence: Family::new_with_constructor(convergence_histogram),
            rejected: Family::default(),
            stale_requests: Counter::default(),
            nacks_unlogged: Counter::default(),
            nacks_dropped: Family::default(),
            nack_repeats: Counter::default(),
            connections_refused: Counter::default(),
            connections_timed_out: Counter::default(),
            delta_change_set_diffs: Counter::default(),
            delta_full_diffs: Counter::default(),
        }
    }
}

/// The label of a type URL; built per push and ACK, so it allocates nothing.
fn label(type_url: &str) -> TypeLabel {
    TypeLabel { r#type: super::types::short_label(type_url).unwrap_or("other") }
}

impl XdsMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register("keelson_xds_streams", "Open xDS streams", self.streams.clone());
        r.register("keelson_xds_pushes", "xDS responses sent", self.pushes.clone());
        r.register("keelson_xds_acks", "xDS ACKs received", self.acks.clone());
        r.register("keelson_xds_nacks", "xDS NACKs received", self.nacks.clone());
        r.register("keelson_xds_sent_bytes", "Bytes of xDS responses written", self.bytes_sent.clone());
        r.register(
            "keelson_xds_convergence_seconds",
            "Time from snapshot publish to the proxy's ACK",
            self.convergence.clone(),
        );
        r.register("keelson_xds_rejected_streams", "Streams refused or ended by a limit", self.rejected.clone());
        r.register("keelson_xds_stale_requests", "Requests ignored for a stale nonce", self.stale_requests.clone());
        r.register(
            "keelson_xds_nacks_unlogged",
            "NACKs not appended to the log (queue full)",
            self.nacks_unlogged.clone(),
        );
        r.register(
            "keelson_xds_nacks_dropped",
            "NACKs not appended to the log, by reason (rate limits, queue full)",
            self.nacks_dropped.clone(),
        );
        r.register(
            "keelson_xds_nack_repeats",
            "NACKs not appended because the same NACK is already logged",
            self.nack_repeats.clone(),
        );
        r.register(
            "keelson_xds_connections_refused",
            "Connections closed at once because max_connections were open",
            self.connections_refused.clone(),
        );
        r.register(
            "keelson_xds_connections_timed_out",
            "Connections closed because they opened no stream within handshake_timeout",
            self.connections_timed_out.clone(),
        );
    }

    pub fn sent(&self, type_url: &str, bytes: usize) {
        self.pushes.get_or_create(&label(type_url)).inc();
        self.bytes_sent.inc_by(bytes as u64);
    }

    pub fn acked(&self, type_url: &str, published: SystemTime) {
        self.acks.get_or_create(&label(type_url)).inc();
        let secs = SystemTime::now().duration_since(published).unwrap_or_default().as_secs_f64();
        self.convergence.get_or_create(&label(type_url)).observe(secs);
    }

    pub fn nacked(&self, type_url: &str) {
        self.nacks.get_or_create(&label(type_url)).inc();
    }

    pub fn nack_dropped(&self, reason: &str) {
        self.nacks_dropped.get_or_create(&RejectLabel { reason: reason.into() }).inc();
    }

    pub fn reject(&self, reason: &str) {
        self.rejected.get_or_create(&RejectLabel { reason: reason.into() }).inc();
    }
}
