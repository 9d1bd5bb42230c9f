//! The hub's Prometheus metrics. Every handle is cheap to clone and shares
//! its counters, so sources and sinks record into the same registry.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: String,
}

#[derive(Clone)]
pub struct Metrics {
    pub events_appended: Counter,
    pub snapshot_builds: Counter,
    pub snapshot_build_seconds: Histogram,
    pub snapshot_version: Gauge,
    pub validation_errors: Family<SourceLabel, Counter>,
    pub source_up: Family<SourceLabel, Gauge>,
    pub deletions_held: Family<SourceLabel, Gauge>,
    /// Config objects a source holds that a source listed before it holds
    /// too (crate::conflict), by the losing source.
    pub conflicts: Family<SourceLabel, Gauge>,
    /// Files a file source opened and read (an idle source reads none).
    pub file_reads: Family<SourceLabel, Counter>,
    /// Checkpoints written, and the seq of the newest: a restart replays the
    /// log after it.
    pub checkpoints_written: Counter,
    pub checkpoint_seq: Gauge,
    /// Checkpoints that could not be written (the log itself is intact).
    pub checkpoint_failures: Counter,
    /// 1 while a checkpoint is being written in the background.
    pub checkpoint_writing: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            events_appended: Counter::default(),
            snapshot_builds: Counter::default(),
            snapshot_build_seconds: Histogram::new(exponential_buckets(1e-6, 4.0, 12)),
            snapshot_version: Gauge::default(),
            validation_errors: Family::default(),
            source_up: Family::default(),
            deletions_held: Family::default(),
            conflicts: Family::default(),
            file_reads: Family::default(),
            checkpoints_written: Counter::default(),
            checkpoint_seq: Gauge::default(),
            checkpoint_failures: Counter::default(),
            checkpoint_writing: Gauge::default(),
        }
    }
}

impl Metrics {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("keelson");
        r.register("events_appended", "Events durably appended to the log", self.events_appended.clone());
        r.register("snapshot_builds", "Snapshots built and published", self.snapshot_builds.clone());
        r.register("snapshot_build_seconds", "Time to build a snapshot", self.snapshot_build_seconds.clone());
        r.register("snapshot_version", "Version of the published snapshot", self.snapshot_version.clone());
        r.register("validation_errors", "Objects rejected by validation, by source", self.validation_errors.clone());
        r.register("source_up", "1 when the source is healthy, by source", self.source_up.clone());
        r.register(
            "deletions_held",
            "Deletions held by the mass-deletion guard until confirmed, by source",
            self.deletions_held.clone(),
        );
        r.register(
            "conflicts",
            "Config objects kept aside because a source listed earlier holds the same key, by losing source",
            self.conflicts.clone(),
        );
        r.register("file_reads", "Files read by a file source, by source", self.file_reads.clone());
        r.register("checkpoints_written", "Checkpoints written", self.checkpoints_written.clone());
        r.register("checkpoint_seq", "Seq of the newest checkpoint written", self.checkpoint_seq.clone());
        r.register(
            "checkpoint_failures",
            "Checkpoints that could not be written (the log is intact)",
            self.checkpoint_failures.clone(),
        );
        r.register("checkpoint_writing", "1 while a checkpoint is being written", self.checkpoint_writing.clone());
    }

    pub fn source(name: &str) -> SourceLabel {
        SourceLabel { source: name.to_string() }
    }
}
