//! The cluster driver: one task per cluster that turns every stream's
//! messages into submissions to the hub.
//!
//! Listings. The first list of every stream of a cluster is one listing,
//! `SyncStart … SyncDone`, so a cold hub is ready once each cluster has
//! listed, and a warm one deletes what went away while it was down. Later,
//! a stream relists on its own (after `410 Gone`, or a watch error the
//! watcher could not resume from); its relist is a listing of its own, whose
//! `SyncDone` keeps every other stream's objects (by location prefix), so
//! the hub deletes exactly this stream's objects that the relist lacked. A
//! relist of unchanged objects appends nothing (the hub drops identical
//! upserts). Only one listing is open at a time — the hub tracks what a
//! listing saw per source — so a stream that relists while another listing
//! is open is buffered until it closes.
//!
//! Failures keep things. A stream that cannot list because of a permanent
//! error of its own (403 RBAC, 404 CRD absent) does not hold a listing up, and its
//! objects are kept, not deleted; an object that does not validate is
//! reported and its last good version kept. An API server that cannot be
//! reached holds the first listing (the hub waits `sync_timeout`, or serves
//! the log's state at once when warm); nothing is deleted.

use std::collections::{BTreeMap, BTreeSet};

use keelson_hub::metrics::Metrics;
use keelson_hub::{HubHandle, Op, SourceId};

use super::convert::{self, Invalid};
use super::watch::{Msg, StreamId, StreamSpec};

/// How a stream is doing, as the source's health shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum StreamHealth {
    Starting,
    Watching,
    Failed(String),
    Absent,
}

struct Stream {
    spec: StreamSpec,
    /// Location prefix of its objects.
    prefix: String,
    health: StreamHealth,
}

impl Stream {
    fn label(&self) -> String {
        match &self.spec.namespace {
            Some(ns) => format!("{} in namespace {ns}", convert::prefix(self.spec.info, None)),
            None => convert::prefix(self.spec.info, None),
        }
    }
}

/// A listing in progress.
#[derive(Default)]
struct Listing {
    /// The streams it lists.
    members: BTreeSet<StreamId>,
    /// Members that have not finished (nor failed permanently).
    remaining: BTreeSet<StreamId>,
    /// Members that failed: their objects are kept.
    failed: BTreeSet<StreamId>,
    /// Objects listed that did not validate: their last good versions are kept.
    invalid: Vec<String>,
}

/// A relist buffered while another listing is open.
#[derive(Default)]
struct Buffered {
    items: Vec<Result<Op, Invalid>>,
    done: bool,
}

pub struct Driver {
    hub: HubHandle,
    id: SourceId,
    streams: Vec<Stream>,
    open: Option<Listing>,
    buffered: BTreeMap<StreamId, Buffered>,
    /// Ops to submit at the next flush.
    pending: Vec<Op>,
    /// Current validation errors, by location.
    invalid: BTreeMap<String, String>,
    synced: bool,
}

impl Driver {
    pub fn new(hub: HubHandle, id: SourceId, specs: Vec<StreamSpec>) -> Self {
        let streams = specs
            .into_iter()
            .map(|spec| Stream {
                prefix: convert::prefix(spec.info, spec.namespace.as_deref()),
                spec,
                health: StreamHealth::Starting,
            })
            .collect::<Vec<_>>();
        let all: BTreeSet<StreamId> = (0..streams.len()).collect();
        // The first listing covers every stream of the cluster.
        let first = Listing { members: all.clone(), remaining: all, ..Listing::default() };
        Driver {
            hub,
            id,
            streams,
            open: Some(first),
            buffered: BTreeMap::new(),
            pending: vec![Op::SyncStart],
            invalid: BTreeMap::new(),
            synced: false,
        }
    }

    /// Takes one message; submissions happen in [`Driver::flush`].
    pub async fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Init(s) => {
                self.healthy(s);
                let prefix = self.streams[s].prefix.clone();
                self.invalid.retain(|loc, _| !under(loc, &prefix));
                match &mut self.open {
                    Some(l) if l.members.contains(&s) => {
                        l.remaining.insert(s);
                        l.failed.remove(&s);
                    }
                    Some(_) => {
                        self.buffered.insert(s, Buffered::default());
                    }
                    None => self.open_listing(s),
                }
            }
            Msg::Listed(s, item) => {
                if let Some(b) = self.buffered.get_mut(&s) {
                    b.items.push(item);
                } else {
                    self.take_listed(item);
                }
            }
            Msg::InitDone(s) => {
                self.healthy(s);
                if let Some(b) = self.buffered.get_mut(&s) {
                    b.done = true;
                } else if let Some(l) = &mut self.open {
                    l.remaining.remove(&s);
                    self.close_if_done().await;
                }
            }
            Msg::Changed(s, item) => {
                self.healthy(s);
                match item {
                    Ok(op) => self.take(op),
                    Err(bad) => self.report_invalid(bad),
                }
            }
            Msg::Deleted(s, op) => {
                self.healthy(s);
                if let Op::Delete { key, .. } = &op {
                    let location = convert::location(self.streams[s].spec.info, &key.namespace, &key.name);
                    self.invalid.remove(&location);
                }
                self.pending.push(op);
            }
            Msg::Failed { stream, error, permanent } => {
                self.set_health(stream, StreamHealth::Failed(error));
                if permanent {
                    self.give_up_listing(stream).await;
                }
            }
            Msg::Absent(s) => {
                self.set_health(s, StreamHealth::Absent);
                self.give_up_listing(s).await;
            }
        }
    }

    fn take_listed(&mut self, item: Result<Op, Invalid>) {
        match item {
            Ok(op) => self.take(op),
            Err(bad) => {
                if let Some(l) = &mut self.open {
                    l.invalid.push(bad.location.clone());
                }
                self.report_invalid(bad);
            }
        }
    }

    fn take(&mut self, op: Op) {
        if let Op::Upsert { location, .. } = &op {
            self.invalid.remove(location);
        }
        self.pending.push(op);
    }

    fn report_invalid(&mut self, bad: Invalid) {
        let source = self.id.to_string();
        if self.invalid.get(&bad.location) != Some(&bad.error) {
            tracing::warn!(source = %source, object = %bad.location, "rejected: {}", bad.error);
            self.hub.metrics().validation_errors.get_or_create(&Metrics::source(&source)).inc();
        }
        self.invalid.insert(bad.location, bad.error);
    }

    fn open_listing(&mut self, s: StreamId) {
        let members = BTreeSet::from([s]);
        self.open = Some(Listing { remaining: members.clone(), members, ..Listing::default() });
        self.pending.push(Op::SyncStart);
    }

    /// A member that cannot list does not hold its listing up.
    async fn give_up_listing(&mut self, s: StreamId) {
        if let Some(b) = self.buffered.get(&s)
            && !b.done
        {
            self.buffered.remove(&s);
        }
        if let Some(l) = &mut self.open
            && l.remaining.remove(&s)
        {
            l.failed.insert(s);
            self.close_if_done().await;
        }
    }

    /// Closes the open listing once every member is done, then opens the
    /// buffered ones in turn.
    async fn close_if_done(&mut self) {
        while let Some(l) = self.open.as_ref().filter(|l| l.remaining.is_empty()) {
            let keep: Vec<String> = self
                .streams
                .iter()
                .enumerate()
                .filter(|(i, _)| !l.members.contains(i) || l.failed.contains(i))
                .map(|(_, s)| s.prefix.clone())
                .chain(l.invalid.iter().cloned())
                .collect();
            self.pending.push(Op::SyncDone);
            self.open = None;
            self.flush_keeping(keep).await;
            if !self.synced {
                self.synced = true;
                tracing::info!(source = %self.id, "initial listing done");
            }
            let Some(s) = self.buffered.keys().next().copied() else { break };
            let buffered = self.buffered.remove(&s).unwrap_or_default();
            self.open_listing(s);
            for item in buffered.items {
                self.take_listed(item);
            }
            if buffered.done
                && let Some(l) = &mut self.open
            {
                l.remaining.clear();
            }
        }
        self.report();
    }

    /// Submits what is pending.
    pub async fn flush(&mut self) {
        self.flush_keeping(Vec::new()).await;
        self.report();
    }

    async fn flush_keeping(&mut self, keep: Vec<String>) {
        if self.pending.is_empty() {
            return;
        }
        let ops = std::mem::take(&mut self.pending);
        match self.hub.submit_keeping(self.id.clone(), ops, keep).await {
            Ok(outcome) if outcome.changed > 0 => {
                let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
                self.hub.update_health(&self.id, |h| h.last_event = Some(now));
            }
            Ok(_) => {}
            Err(e) => tracing::error!(source = %self.id, "the hub refused the changes: {e}"),
        }
    }

    fn healthy(&mut self, s: StreamId) {
        self.set_health(s, StreamHealth::Watching);
    }

    fn set_health(&mut self, s: StreamId, health: StreamHealth) {
        let stream = &mut self.streams[s];
        if stream.health == health {
            return;
        }
        let label = stream.label();
        match (&stream.health, &health) {
            (_, StreamHealth::Failed(e)) => tracing::warn!(source = %self.id, kind = %label, "cannot watch: {e}"),
            (_, StreamHealth::Absent) => tracing::warn!(
                source = %self.id, kind = %label,
                "not served by this cluster (CRD not installed?); looking again every {:?}", stream.spec.recheck
            ),
            (StreamHealth::Failed(_) | StreamHealth::Absent, StreamHealth::Watching) => {
                tracing::info!(source = %self.id, kind = %label, "watching again")
            }
            _ => {}
        }
        stream.health = health;
        self.report();
    }

    /// Shows the streams' state and validation errors in the source's health.
    fn report(&self) {
        let mut errors: Vec<String> = Vec::new();
        let mut last_error = None;
        for s in &self.streams {
            match &s.health {
                StreamHealth::Failed(e) => {
                    errors.push(format!("{}: {e}", s.label()));
                    last_error = Some(format!("{}: {e}", s.label()));
                }
                StreamHealth::Absent => errors.push(format!("{}: not served (CRD not installed)", s.label())),
                _ => {}
            }
        }
        errors.extend(self.invalid.iter().map(|(loc, e)| format!("{loc}: {e}")));
        let up = last_error.is_none();
        let synced = self.synced;
        self.hub.update_health(&self.id, |h| {
            h.up = up;
            h.synced = synced;
            h.last_error = last_error;
            h.errors = errors;
        });
    }
}

fn under(location: &str, prefix: &str) -> bool {
    location.strip_prefix(prefix).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}
