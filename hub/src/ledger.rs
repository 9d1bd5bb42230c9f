//! `AckLedger`: which proxy was sent which version of which type, and what it
//! said back (ACK, or NACK with its error).
//!
//! Each connected stream owns one [`ProxyRecord`] behind its own lock, so a
//! stream's bookkeeping never contends with another's; the ledger's map lock
//! is taken only to register, unregister and list. Sinks fill it in; the
//! admin API (`/debug/syncz`) and `keelson status` read it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use serde::Serialize;

/// Sync status of one type on one proxy (the words of `istioctl proxy-status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SyncStatus {
    /// The proxy acknowledged the last response sent.
    Synced,
    /// A response was sent and not answered yet.
    Stale,
    /// The proxy rejected the last response sent.
    Nacked,
    /// The proxy subscribed, nothing was sent yet.
    NotSent,
}

/// What a client speaks: Envoy xDS, or Istio MCP over xDS (an istiod).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub enum Protocol {
    #[default]
    #[serde(rename = "xDS")]
    Xds,
    #[serde(rename = "MCP")]
    Mcp,
}

/// Bookkeeping for one type URL on one proxy.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TypeRecord {
    /// Short name for tables (CDS, LDS…, or the kind for other types).
    pub short: String,
    // Versions (log seqs) and nonces are numbers here, strings on the wire
    // and in JSON: 8 bytes each instead of a heap string, per type, per proxy.
    #[serde(serialize_with = "opt_string")]
    pub sent_version: Option<u64>,
    #[serde(serialize_with = "opt_string")]
    pub sent_nonce: Option<u64>,
    #[serde(with = "opt_time")]
    pub sent_at: Option<SystemTime>,
    #[serde(serialize_with = "opt_string")]
    pub acked_version: Option<u64>,
    #[serde(with = "opt_time")]
    pub acked_at: Option<SystemTime>,
    /// The version the proxy rejected last, and why.
    #[serde(serialize_with = "opt_string")]
    pub nacked_version: Option<u64>,
    pub error: Option<String>,
    /// How many more times the last NACK (same version, same error) came.
    pub nack_repeats: u64,
    /// Does the last NACK answer the last response sent?
    #[serde(skip)]
    last_response_nacked: bool,
    #[serde(skip)]
    acked_nonce: Option<u64>,
}

impl TypeRecord {
    pub fn status(&self) -> SyncStatus {
        match (&self.sent_nonce, &self.acked_nonce) {
            (None, _) => SyncStatus::NotSent,
            _ if self.last_response_nacked => SyncStatus::Nacked,
            (Some(sent), Some(acked)) if sent == acked => SyncStatus::Synced,
            _ => SyncStatus::Stale,
        }
    }
}

/// One connected proxy (one stream).
#[derive(Clone, Debug, Serialize)]
pub struct ProxyRecord {
    pub node: String,
    pub cluster: String,
    /// The proxy group its resources are scoped by, if any.
    pub group: Option<String>,
    /// `sotw` or `delta`.
    pub stream: &'static str,
    pub protocol: Protocol,
    pub user_agent: String,
    pub peer: String,
    #[serde(with = "opt_time")]
    pub connected_at: Option<SystemTime>,
    pub types: BTreeMap<String, TypeRecord>,
}

impl ProxyRecord {
    pub fn new(node: &str, cluster: &str, stream: &'static str) -> Self {
        ProxyRecord {
            node: node.into(),
            cluster: cluster.into(),
            group: None,
            stream,
            protocol: Protocol::Xds,
            user_agent: String::new(),
            peer: String::new(),
            connected_at: Some(SystemTime::now()),
            types: BTreeMap::new(),
        }
    }

    /// The record of a type, created on first use. Called on every send and
    /// ACK, so the common case looks up without allocating a key.
    fn type_mut(&mut self, type_url: &str, short: &str) -> &mut TypeRecord {
        if !self.types.contains_key(type_url) {
            let record = TypeRecord { short: short.to_string(), ..TypeRecord::default() };
            self.types.insert(type_url.to_string(), record);
        }
        self.types.get_mut(type_url).expect("inserted above")
    }

    /// The proxy subscribed to a type.
    pub fn subscribed(&mut self, type_url: &str, short: &str) {
        self.type_mut(type_url, short);
    }

    pub fn sent(&mut self, type_url: &str, short: &str, version: u64, nonce: u64) {
        let t = self.type_mut(type_url, short);
        t.sent_version = Some(version);
        t.sent_nonce = Some(nonce);
        t.sent_at = Some(SystemTime::now());
        t.last_response_nacked = false;
    }

    /// An ACK of the response with `nonce`, which carried `version`.
    pub fn acked(&mut self, type_url: &str, short: &str, version: u64, nonce: u64) {
        let t = self.type_mut(type_url, short);
        t.acked_version = Some(version);
        t.acked_nonce = Some(nonce);
        t.acked_at = Some(SystemTime::now());
    }

    /// A NACK of the response with `nonce`, which carried `version`.
    pub fn nacked(&mut self, type_url: &str, short: &str, version: u64, nonce: u64, error: &str) {
        let t = self.type_mut(type_url, short);
        // Envoy ends its messages with a newline; tables want one line.
        let error = error.trim_end();
        if t.nacked_version == Some(version) && t.error.as_deref() == Some(error) {
            t.nack_repeats += 1;
        } else {
            t.nacked_version = Some(version);
            t.error = Some(error.to_string());
            t.nack_repeats = 0;
        }
        t.last_response_nacked = t.sent_nonce == Some(nonce);
    }
}

/// A stream's handle on its own record; unregisters itself when dropped.
pub struct LedgerEntry {
    ledger: AckLedger,
    id: u64,
    record: Arc<Mutex<ProxyRecord>>,
}

impl LedgerEntry {
    pub fn lock(&self) -> MutexGuard<'_, ProxyRecord> {
        self.record.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for LedgerEntry {
    fn drop(&mut self) {
        self.ledger.inner.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.id);
    }
}

/// Every connected proxy's record. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct AckLedger {
    inner: Arc<Mutex<BTreeMap<u64, Arc<Mutex<ProxyRecord>>>>>,
    next_id: Arc<std::sync::atomic::AtomicU64>,
}

impl AckLedger {
    /// Registers a stream's record; it is listed until the entry drops.
    pub fn register(&self, record: ProxyRecord) -> LedgerEntry {
        let id = self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let record = Arc::new(Mutex::new(record));
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).insert(id, record.clone());
        LedgerEntry { ledger: self.clone(), id, record }
    }

    /// A copy of every record, ordered by node id then connection order.
    pub fn records(&self) -> Vec<ProxyRecord> {
        let all: Vec<_> = self.inner.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        let mut out: Vec<ProxyRecord> =
            all.iter().map(|r| r.lock().unwrap_or_else(|e| e.into_inner()).clone()).collect();
        out.sort_by(|a, b| a.node.cmp(&b.node));
        out
    }

    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn opt_string<S: serde::Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.collect_str(v),
        None => s.serialize_none(),
    }
}

mod opt_time {
    use std::time::SystemTime;

    pub fn serialize<S: serde::Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&humantime::format_rfc3339_millis(*t).to_string()),
            None => s.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";

    #[test]
    fn status_follows_send_ack_nack() {
        let ledger = AckLedger::default();
        let entry = ledger.register(ProxyRecord::new("p1", "c", "sotw"));
        let status = || entry.lock().types[CDS].status();
        entry.lock().subscribed(CDS, "CDS");
        assert_eq!(status(), SyncStatus::NotSent);
        entry.lock().sent(CDS, "CDS", 5, 1);
        assert_eq!(status(), SyncStatus::Stale);
        entry.lock().acked(CDS, "CDS", 5, 1);
        assert_eq!(status(), SyncStatus::Synced);
        entry.lock().sent(CDS, "CDS", 7, 2);
        assert_eq!(status(), SyncStatus::Stale);
        entry.lock().nacked(CDS, "CDS", 7, 2, "bad cluster");
        assert_eq!(status(), SyncStatus::Nacked);
        assert_eq!(entry.lock().types[CDS].acked_version, Some(5), "a NACK keeps the last ACK");
        entry.lock().nacked(CDS, "CDS", 7, 2, "bad cluster\n");
        entry.lock().nacked(CDS, "CDS", 7, 2, "bad cluster");
        assert_eq!(entry.lock().types[CDS].nack_repeats, 2, "the same NACK again is a repeat");
        entry.lock().nacked(CDS, "CDS", 7, 2, "worse cluster");
        assert_eq!(entry.lock().types[CDS].nack_repeats, 0, "another error is a new NACK");
        entry.lock().sent(CDS, "CDS", 9, 3);
        entry.lock().acked(CDS, "CDS", 9, 3);
        assert_eq!(status(), SyncStatus::Synced);
        assert_eq!(entry.lock().types[CDS].nacked_version, Some(7), "the last NACK stays visible");
        let json = serde_json::to_value(&entry.lock().types[CDS]).unwrap();
        assert_eq!(
            (json["sent_version"].as_str(), json["nacked_version"].as_str()),
            (Some("9"), Some("7")),
            "strings in JSON"
        );
    }

    #[test]
    fn records_leave_with_their_stream() {
        let ledger = AckLedger::default();
        let a = ledger.register(ProxyRecord::new("b", "c", "sotw"));
        let b = ledger.register(ProxyRecord::new("a", "c", "delta"));
        assert_eq!(ledger.records().iter().map(|r| r.node.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        drop(a);
        assert_eq!(ledger.len(), 1);
        drop(b);
        assert!(ledger.is_empty());
    }
}
