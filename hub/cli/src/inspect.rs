//! `keelson log`, `keelson history`, `keelson verify`: reading a data dir.

use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use keelson_hub::names::escaped;
use keelson_hub::{EventStore, ResourceKey};
use keelson_storage::{OpenOptions, SledEventLog, VerifyReport};
use serde_json::Value;

use crate::admin_client;

fn open(data_dir: &Path) -> Result<EventStore> {
    EventStore::open(data_dir, OpenOptions::default()).map_err(|e| {
        let hint = if matches!(e, keelson_hub::HubError::Storage(keelson_storage::StorageError::Locked { .. })) {
            "; read through it instead with --admin http://127.0.0.1:18001"
        } else {
            ""
        };
        anyhow::anyhow!("cannot read the event log in {}: {e}{hint}", data_dir.display())
    })
}

/// Prints JSON values one per line, or as human lines via `line`.
fn print_values(values: &[Value], json: bool, line: impl Fn(&Value) -> String) -> Result<ExitCode> {
    let mut out = BufWriter::new(io::stdout().lock());
    for v in values {
        let text = if json { v.to_string() } else { line(v) };
        if !emit(&mut out, &text)? {
            return Ok(ExitCode::SUCCESS);
        }
    }
    flush(out)
}

/// Writes a line, treating a closed pipe (`keelson log | head`) as a normal end.
fn emit(out: &mut impl Write, line: &str) -> io::Result<bool> {
    match writeln!(out, "{line}") {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e),
    }
}

fn origin(v: &Value) -> String {
    match (v["origin"]["kind"].as_str(), v["origin"]["name"].as_str()) {
        (Some(kind), Some(name)) => format!("{}/{}", escaped(kind), escaped(name)),
        _ => "-".into(),
    }
}

/// The human form of one log entry (the JSON shape of docs/cli.md), the same
/// whether it was read from the data dir or through `--admin`.
fn value_line(v: &Value) -> String {
    // Names, locations and NACK errors were supplied by users and clients:
    // escaped, so none can forge a line of this output.
    let s = |k: &str| escaped(v[k].as_str().unwrap_or_default()).into_owned();
    let detail = match s("op").as_str() {
        "nack" => format!("{} rejected {} v{}: {}", s("node"), s("type_url"), s("version"), s("error")),
        _ => s("key"),
    };
    let location =
        v["location"].as_str().filter(|l| !l.is_empty()).map(|l| format!("  ({})", escaped(l))).unwrap_or_default();
    let seq = v["seq"].as_u64().map_or_else(|| "-".to_string(), |n| n.to_string());
    format!("{seq:>8}  {}  {:<24} {:<10} {detail}{location}{}", s("at"), origin(v), s("op"), provenance(v))
}

/// The source's own version and the author, when the source gave them:
/// `  [rv 4711, by argocd-controller]`.
fn provenance(v: &Value) -> String {
    let field = |k: &str| v[k].as_str().filter(|t| !t.is_empty()).map(escaped);
    let parts: Vec<String> =
        [field("source_version").map(|r| format!("rv {r}")), field("author").map(|a| format!("by {a}"))]
            .into_iter()
            .flatten()
            .collect();
    if parts.is_empty() { String::new() } else { format!("  [{}]", parts.join(", ")) }
}

pub fn log(
    data_dir: &Path,
    from: Option<u64>,
    limit: Option<usize>,
    json: bool,
    admin: Option<&str>,
) -> Result<ExitCode> {
    if let Some(base) = admin {
        return log_through_admin(base, from, limit, json);
    }
    let store = open(data_dir)?;
    let from = from.unwrap_or(store.log().first_seq());
    let mut out = BufWriter::new(io::stdout().lock());
    for entry in store.entries_from(from).take(limit.unwrap_or(usize::MAX)) {
        let v = keelson_hub::json::entry_json(&entry?);
        if !emit(&mut out, &if json { v.to_string() } else { value_line(&v) })? {
            return Ok(ExitCode::SUCCESS);
        }
    }
    flush(out)
}

/// The admin API answers at most this many entries per request
/// (`/v1/log`'s cap); longer reads page through, from the seq after the last.
const ADMIN_LOG_PAGE: usize = 10_000;

fn log_through_admin(base: &str, from: Option<u64>, limit: Option<usize>, json: bool) -> Result<ExitCode> {
    let mut out = BufWriter::new(io::stdout().lock());
    let mut left = limit.unwrap_or(usize::MAX);
    let mut next = from;
    while left > 0 {
        let want = left.min(ADMIN_LOG_PAGE);
        let mut q = format!("/v1/log?limit={want}");
        if let Some(from) = next {
            q.push_str(&format!("&from={from}"));
        }
        let page = admin_client::get_json(base, &q)?;
        let entries = page.as_array().map_or(&[][..], Vec::as_slice);
        for v in entries {
            if !emit(&mut out, &if json { v.to_string() } else { value_line(v) })? {
                return Ok(ExitCode::SUCCESS);
            }
        }
        left -= entries.len();
        match entries.last().and_then(|v| v["seq"].as_u64()) {
            Some(last) if entries.len() == want => next = Some(last + 1),
            _ => break, // a short page: the end of the log
        }
    }
    flush(out)
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum HistoryFormat {
    Lines,
    Json,
    Diff,
}

impl HistoryFormat {
    pub fn from_flags(json: bool, diff: bool) -> Self {
        if json {
            HistoryFormat::Json
        } else if diff {
            HistoryFormat::Diff
        } else {
            HistoryFormat::Lines
        }
    }
}

pub fn history(data_dir: &Path, key: &str, format: HistoryFormat, admin: Option<&str>) -> Result<ExitCode> {
    let key = ResourceKey::parse(key).map_err(anyhow::Error::msg)?;
    let events: Vec<Value> = match admin {
        Some(base) => {
            let v =
                admin_client::get_json(base, &format!("/v1/history?key={}", admin_client::encode(&key.to_string())))?;
            v.as_array().cloned().unwrap_or_default()
        }
        None => {
            let store = open(data_dir)?;
            store.history(&key).map(|ev| ev.map(|ev| keelson_hub::json::event_json(&ev))).collect::<Result<_, _>>()?
        }
    };
    if events.is_empty() && format != HistoryFormat::Json {
        eprintln!("no recorded changes of {key}");
    }
    match format {
        HistoryFormat::Json => print_values(&events, true, value_line),
        HistoryFormat::Lines => print_values(&events, false, value_line),
        HistoryFormat::Diff => {
            let mut out = BufWriter::new(io::stdout().lock());
            // Oldest first, so each diff reads as "what this change did".
            let mut previous = String::new();
            for v in events.iter().rev() {
                let loc = v["location"]
                    .as_str()
                    .filter(|l| !l.is_empty())
                    .map(|l| format!(" from {}", escaped(l)))
                    .unwrap_or_default();
                let header = format!(
                    "=== seq {} {} {} by {}{loc}{}",
                    v["seq"],
                    escaped(v["at"].as_str().unwrap_or_default()),
                    escaped(v["op"].as_str().unwrap_or_default()),
                    origin(v),
                    provenance(v)
                );
                let current = match v.get("body") {
                    Some(body) => serde_yaml::to_string(body).unwrap_or_default(),
                    None => String::new(),
                };
                let diff = similar::TextDiff::from_lines(&previous, &current);
                let text = format!(
                    "{header}\n{}",
                    diff.unified_diff()
                        .context_radius(3)
                        .header(&format!("seq before {}", v["seq"]), &format!("seq {}", v["seq"]))
                );
                if !emit(&mut out, &text)? {
                    return Ok(ExitCode::SUCCESS);
                }
                previous = current;
            }
            flush(out)
        }
    }
}

/// `--at` as a seq (keelson_hub::point).
fn resolve_at(store: &EventStore, at: Option<&str>) -> Result<u64> {
    let Some(at) = at else { return Ok(u64::MAX) };
    keelson_hub::point::resolve(store, at).map_err(|e| anyhow::anyhow!("--at: {e}"))
}

pub fn state(
    data_dir: &Path,
    at: Option<&str>,
    json: bool,
    admin: Option<&str>,
    translate: &keelson_hub::translate::TranslateConfig,
) -> Result<ExitCode> {
    let doc = match admin {
        Some(base) => {
            let q =
                at.map(|a| format!("/v1/state?at={}", admin_client::encode(a))).unwrap_or_else(|| "/v1/state".into());
            admin_client::get_json(base, &q)?
        }
        None => {
            let store = open(data_dir)?;
            let seq = resolve_at(&store, at)?;
            let rebuilt = store.state_at(seq)?;
            keelson_sinks::admin::state_json(&rebuilt, translate)
        }
    };
    if json {
        println!("{doc}");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "version {} (log seq {}), {} resources",
        doc["version"],
        doc["seq"],
        doc["resources"].as_array().map_or(0, Vec::len)
    );
    if let Some(gaps) = doc["gaps"].as_array().filter(|g| !g.is_empty()) {
        println!(
            "warning: rebuilt across {} compacted or lost records; this may differ from what was served",
            gaps.len()
        );
    }
    let rows = doc["resources"].as_array().cloned().unwrap_or_default();
    print_values(&rows, false, |r| {
        format!(
            "{:>8}  {:<64} {}  {}",
            r["version"],
            escaped(r["key"].as_str().unwrap_or_default()),
            escaped(r["origin"].as_str().unwrap_or_default()),
            escaped(r["location"].as_str().unwrap_or_default())
        )
    })
}

pub fn validate(paths: &[std::path::PathBuf], translate: &keelson_hub::translate::TranslateConfig) -> Result<ExitCode> {
    let (checked, errors, warnings) = keelson_sources::file::validate_translated(paths, translate);
    for e in errors.iter().chain(&warnings) {
        println!("{e}");
    }
    if errors.is_empty() {
        println!("OK: {checked} file(s) valid");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("{} error(s) in {checked} file(s)", errors.len());
        Ok(ExitCode::from(1))
    }
}

fn flush(mut out: impl Write) -> Result<ExitCode> {
    match out.flush() {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// Exit 0 when the store is intact, 1 when damage was found (or repair was refused).
pub fn verify(data_dir: &Path, repair: bool, json: bool) -> Result<ExitCode> {
    use keelson_storage::EventLog;
    let log = match SledEventLog::open(data_dir, OpenOptions { create: false, repair }) {
        Ok(log) => log,
        Err(
            e @ (keelson_storage::StorageError::LostAcknowledged { .. } | keelson_storage::StorageError::Engine(_)),
        ) => {
            if json {
                println!("{}", serde_json::json!({ "ok": false, "open_error": e.to_string() }));
            } else {
                println!("DAMAGED: {e}");
            }
            return Ok(ExitCode::from(1));
        }
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", data_dir.display())),
    };
    let repaired = log.repair_report().cloned();
    let report = log.verify()?;
    if json {
        println!("{}", report_json(&report, repaired.as_ref()));
    } else {
        if let Some(r) = &repaired {
            for f in &r.set_aside_engine_files {
                println!("repair: damaged engine files set aside to {}; rebuilt from the engine's log", f.display());
            }
            println!(
                "repair: lost seq ranges {:?}; checkpoints set aside {:?}; {} index entries rebuilt",
                r.lost, r.quarantined_checkpoints, r.index_entries
            );
        }
        print_report(data_dir, &report);
    }
    Ok(if report.is_ok() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn print_report(dir: &Path, r: &VerifyReport) {
    println!("store      {}", dir.display());
    println!("seqs       {}..={} (acknowledged up to {})", r.first_seq, r.last_seq, r.acknowledged_seq);
    println!("records    {} events, {} compacted, {} lost", r.events, r.compacted, r.lost);
    println!("key index  {} entries", r.key_index_entries);
    println!("checkpoints {:?}", r.checkpoints);
    if r.is_ok() {
        println!("OK: every record, index entry and checkpoint verified");
        return;
    }
    let first = r.first_damage().expect("damage_count > 0 means a detail was kept");
    println!("DAMAGED: {} problem(s); first: {first}", r.damage_count);
    for d in &r.damage {
        println!("  {d}");
    }
    if r.damage_count as usize > r.damage.len() {
        println!("  … {} more", r.damage_count as usize - r.damage.len());
    }
    println!("run `keelson verify --repair` to write off damaged records (their bytes are kept in quarantine)");
}

fn report_json(r: &VerifyReport, repaired: Option<&keelson_storage::RepairReport>) -> serde_json::Value {
    serde_json::json!({
        "ok": r.is_ok(),
        "first_seq": r.first_seq,
        "last_seq": r.last_seq,
        "acknowledged_seq": r.acknowledged_seq,
        "events": r.events,
        "compacted": r.compacted,
        "lost": r.lost,
        "key_index_entries": r.key_index_entries,
        "checkpoints": r.checkpoints,
        "damage_count": r.damage_count,
        "damage": r.damage.iter().map(|d| serde_json::json!({ "seq": d.seq, "what": d.what })).collect::<Vec<_>>(),
        "repair": repaired.map(|rep| serde_json::json!({
            "lost": rep.lost.iter().map(|(a, b)| [a, b]).collect::<Vec<_>>(),
            "quarantined_checkpoints": rep.quarantined_checkpoints,
            "index_entries": rep.index_entries,
            "set_aside_engine_files": rep.set_aside_engine_files,
        })),
    })
}
