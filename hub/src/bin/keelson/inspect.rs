//! `keelson log`, `keelson history`, `keelson verify`: reading a data dir.

use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use keelson_hub::{EventStore, ResourceKey};
use keelson_storage::{OpenOptions, SledEventLog, VerifyReport};

use crate::render;

fn open(data_dir: &Path) -> Result<EventStore> {
    EventStore::open(data_dir, OpenOptions::default())
        .with_context(|| format!("cannot read the event log in {}", data_dir.display()))
}

pub fn log(data_dir: &Path, from: Option<u64>, limit: Option<usize>, json: bool) -> Result<ExitCode> {
    let store = open(data_dir)?;
    let from = from.unwrap_or(store.log().first_seq());
    let mut out = BufWriter::new(io::stdout().lock());
    for entry in store.entries_from(from).take(limit.unwrap_or(usize::MAX)) {
        let entry = entry?;
        let line = if json { render::entry_json(&entry).to_string() } else { render::entry_line(&entry) };
        if !render::emit(&mut out, &line)? {
            return Ok(ExitCode::SUCCESS);
        }
    }
    flush(out)
}

pub fn history(data_dir: &Path, key: &str, json: bool) -> Result<ExitCode> {
    let key = ResourceKey::parse(key).map_err(anyhow::Error::msg)?;
    let store = open(data_dir)?;
    let mut out = BufWriter::new(io::stdout().lock());
    let mut found = false;
    for ev in store.history(&key) {
        let ev = ev?;
        found = true;
        let line = if json { render::event_json(&ev).to_string() } else { render::event_line(&ev) };
        if !render::emit(&mut out, &line)? {
            return Ok(ExitCode::SUCCESS);
        }
    }
    if !found && !json {
        eprintln!("no recorded changes of {key}");
    }
    flush(out)
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
        })),
    })
}
