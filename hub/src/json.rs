//! The stable JSON shape of log entries, shared by `keelson --json` and the
//! admin API (docs/cli.md). Fields are only ever added.

use std::time::{Duration, SystemTime};

use keelson_storage::RecordKind;
use serde_json::{Value, json};

use crate::event::{Event, Op};
use crate::store::LogEntry;

pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_nanos(t).to_string()
}

pub fn event_json(ev: &Event) -> Value {
    let mut v = json!({
        "seq": ev.seq,
        "at": rfc3339(ev.at),
        "origin": { "kind": ev.origin.kind.as_str(), "name": ev.origin.name, "cluster": ev.origin.cluster },
        "op": ev.op.name(),
    });
    let extra = match &ev.op {
        Op::Upsert { key, source_version, body, location, author } => json!({
            "key": key.to_string(),
            "source_version": source_version,
            "location": location,
            "author": author,
            "hash": format!("{:032x}", body.hash()),
            "body": body.to_value(),
        }),
        Op::Delete { key, source_version, author } => {
            json!({ "key": key.to_string(), "source_version": source_version, "author": author })
        }
        Op::Nack { node, type_url, version, error } => {
            json!({ "node": node, "type_url": type_url, "version": version, "error": error })
        }
        Op::SyncStart | Op::SyncDone => json!({}),
    };
    if let (Value::Object(v), Value::Object(extra)) = (&mut v, extra) {
        v.extend(extra);
    }
    v
}

pub fn entry_json(entry: &LogEntry) -> Value {
    match entry {
        LogEntry::Event(ev) => event_json(ev),
        LogEntry::Gap { seq, at_nanos, kind } => json!({
            "seq": seq,
            "at": rfc3339(SystemTime::UNIX_EPOCH + Duration::from_nanos(*at_nanos)),
            "op": gap_name(*kind),
        }),
    }
}

pub fn gap_name(kind: RecordKind) -> &'static str {
    match kind {
        RecordKind::Compacted => "compacted",
        RecordKind::Lost => "lost",
        RecordKind::Event => "event",
    }
}
