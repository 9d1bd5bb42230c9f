//! How events are shown: one line for people, one JSON object for programs.
//! The JSON shape is a documented contract (docs/cli.md); change it only by adding fields.

use std::io::{self, Write};
use std::time::{Duration, SystemTime};

use keelson_hub::{Event, LogEntry, Op};
use keelson_storage::RecordKind;
use serde_json::{Value, json};

pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_nanos(t).to_string()
}

fn short_time(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

pub fn event_json(ev: &Event) -> Value {
    let mut v = json!({
        "seq": ev.seq,
        "at": rfc3339(ev.at),
        "origin": { "kind": ev.origin.kind.as_str(), "name": ev.origin.name, "cluster": ev.origin.cluster },
        "op": ev.op.name(),
    });
    let extra = match &ev.op {
        Op::Upsert { key, source_version, body, location } => json!({
            "key": key.to_string(),
            "source_version": source_version,
            "location": location,
            "hash": format!("{:032x}", body.hash()),
            "body": body.to_value(),
        }),
        Op::Delete { key, source_version } => json!({ "key": key.to_string(), "source_version": source_version }),
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

fn gap_name(kind: RecordKind) -> &'static str {
    match kind {
        RecordKind::Compacted => "compacted",
        RecordKind::Lost => "lost",
        RecordKind::Event => "event",
    }
}

pub fn event_line(ev: &Event) -> String {
    let detail = match &ev.op {
        Op::Upsert { key, location, body, .. } => {
            let at = if location.is_empty() { String::new() } else { format!("  ({location})") };
            format!("{key}  hash {:08x}{at}", (body.hash() >> 96) as u32)
        }
        Op::Delete { key, .. } => key.to_string(),
        Op::Nack { node, type_url, version, error } => format!("{node} rejected {type_url} v{version}: {error}"),
        Op::SyncStart | Op::SyncDone => String::new(),
    };
    format!("{:>8}  {}  {:<24} {:<10} {detail}", ev.seq, short_time(ev.at), ev.origin.to_string(), ev.op.name())
}

pub fn entry_line(entry: &LogEntry) -> String {
    match entry {
        LogEntry::Event(ev) => event_line(ev),
        LogEntry::Gap { seq, at_nanos, kind } => format!(
            "{seq:>8}  {}  {:<24} {}",
            short_time(SystemTime::UNIX_EPOCH + Duration::from_nanos(*at_nanos)),
            "-",
            gap_name(*kind)
        ),
    }
}

/// Writes a line, treating a closed pipe (`keelson log | head`) as a normal end.
pub fn emit(out: &mut impl Write, line: &str) -> io::Result<bool> {
    match writeln!(out, "{line}") {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e),
    }
}
