//! How log entries are shown to people (the JSON form lives in keelson_hub::json).

use std::io::{self, Write};
use std::time::{Duration, SystemTime};

use keelson_hub::json::gap_name;
use keelson_hub::{Event, LogEntry, Op};

fn short_time(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
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
