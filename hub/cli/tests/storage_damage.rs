//! Damage to sled's own files, seen through the `keelson` binary: `verify`
//! exits 1 naming what it can, `--repair` restores what can be restored and
//! says what it did, `serve` refuses a damaged log with a clear message, and
//! no path prints a panic or a backtrace.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use keelson_storage::{EventLog, NewRecord, OpenOptions, SledEventLog, StorageError};
use support::keelson;

/// Waits for the writer's handles to let go of the store, then opens and
/// drops it three times: sled writes a snapshot of its page table when the last
/// handle drops, and after this it surely covers every page even on a
/// loaded machine (else a page may still sit in the tail sled replays on
/// open, and damage shows at open instead of at the read a test is about).
fn settle(dir: &Path) {
    for _ in 0..3 {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            match SledEventLog::open(dir, OpenOptions::default()) {
                Err(StorageError::Locked { .. }) if Instant::now() < end => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                other => break drop(other.unwrap()),
            }
        }
    }
    let end = Instant::now() + Duration::from_secs(10);
    while matches!(SledEventLog::open(dir, OpenOptions::default()), Err(StorageError::Locked { .. })) {
        assert!(Instant::now() < end, "the store stayed locked");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn write_store(dir: &Path, n: u64) {
    {
        let log = SledEventLog::open(dir, OpenOptions { create: true, repair: false }).unwrap();
        for i in 1..=n {
            let payload = format!("payload-{i:04}-MARKER");
            let key = Bytes::from(format!("key-{}", i % 3));
            log.append(&[NewRecord { key, payload: Bytes::from(payload) }]).unwrap();
        }
    }
    settle(dir);
}

/// Flips one bit inside every copy of `record` in sled's `db`: sled may also
/// hold superseded copies of a page, and hitting all of them is sure to hit
/// the live one.
fn flip_every_copy(db: &Path, record: &[u8]) {
    let mut raw = std::fs::read(db).unwrap();
    let copies: Vec<usize> =
        raw.windows(record.len()).enumerate().filter(|(_, w)| *w == record).map(|(i, _)| i).collect();
    assert!(!copies.is_empty(), "record bytes not found in sled/db");
    for pos in copies {
        raw[pos + 10] ^= 0x04;
    }
    std::fs::write(db, raw).unwrap();
}

fn engine_file(dir: &Path, prefix: &str) -> std::path::PathBuf {
    std::fs::read_dir(dir.join("sled"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().unwrap().to_str().unwrap().starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix}* file in {}", dir.display()))
}

/// Runs `keelson` and asserts it printed no panic or backtrace.
fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let out = keelson(args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"), "{args:?} printed a panic:\n{stderr}");
    (out.status.code(), stdout, stderr)
}

fn all_records_intact(dir: &Path, n: u64) {
    let log = SledEventLog::open(dir, OpenOptions::default()).unwrap();
    let payloads: Vec<_> = log.read_from(1).map(|r| r.unwrap().payload).collect();
    assert_eq!(payloads.len() as u64, n);
    for (i, p) in payloads.iter().enumerate() {
        assert_eq!(p.as_ref(), format!("payload-{:04}-MARKER", i + 1).as_bytes());
    }
}

#[test]
fn a_flipped_byte_in_sleds_snapshot_is_repaired_by_setting_it_aside() {
    let dir = tempfile::tempdir().unwrap();
    write_store(dir.path(), 50);
    let d = dir.path().to_str().unwrap();
    let snap = engine_file(dir.path(), "snap.");
    let mut raw = std::fs::read(&snap).unwrap();
    let mid = raw.len() / 2;
    raw[mid] ^= 0x01;
    std::fs::write(&snap, raw).unwrap();

    let (code, stdout, _) = run(&["verify", "--data-dir", d]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("DAMAGED") && stdout.contains("damaged"), "{stdout}");
    let (code, _, stderr) =
        run(&["serve", "--data-dir", d, "--admin-listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("damaged") && stderr.contains("verify --repair"), "{stderr}");

    let (code, stdout, _) = run(&["verify", "--repair", "--data-dir", d]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("set aside to") && stdout.contains("OK:"), "{stdout}");
    // sled wrote a fresh snapshot; the store verifies clean without repair.
    let (code, stdout, _) = run(&["verify", "--data-dir", d]);
    assert_eq!(code, Some(0), "{stdout}");
    assert_eq!(std::fs::read_dir(dir.path().join("quarantine")).unwrap().count(), 1);
    // Nothing was lost: what deleting the file by hand would have given.
    all_records_intact(dir.path(), 50);
}

#[test]
fn a_flipped_bit_in_a_live_page_is_exit_1_and_never_a_backtrace() {
    let dir = tempfile::tempdir().unwrap();
    write_store(dir.path(), 50);
    let d = dir.path().to_str().unwrap();
    let db = dir.path().join("sled/db");
    flip_every_copy(&db, b"payload-0025-MARKE");

    let (code, stdout, _) = run(&["verify", "--data-dir", d]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("DAMAGED"), "{stdout}");
    let (code, _, stderr) =
        run(&["serve", "--data-dir", d, "--admin-listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("verify --repair"), "{stderr}");
    // Repair keeps every record that verifies and writes off the rest as lost.
    let (code, stdout, _) = run(&["verify", "--repair", "--data-dir", d]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("lost seq ranges") && stdout.contains("OK:"), "{stdout}");
    let log = SledEventLog::open(dir.path(), OpenOptions::default()).unwrap();
    for rec in log.read_from(1) {
        let rec = rec.unwrap();
        if rec.kind == keelson_storage::RecordKind::Event {
            assert_eq!(rec.payload.as_ref(), format!("payload-{:04}-MARKER", rec.seq).as_bytes());
        }
    }
    assert_eq!(log.last_seq(), 50, "seqs were reused or dropped");
}

#[test]
fn a_db_truncated_to_half_prints_a_report_and_no_backtrace() {
    let dir = tempfile::tempdir().unwrap();
    write_store(dir.path(), 200);
    let d = dir.path().to_str().unwrap();
    let db = dir.path().join("sled/db");
    // Half of what sled wrote (its segments are zero-padded past the data).
    let raw = std::fs::read(&db).unwrap();
    let end = raw.windows(6).rposition(|w| w == b"MARKER").expect("record bytes in sled/db") + 6;
    std::fs::OpenOptions::new().write(true).open(&db).unwrap().set_len(end as u64 / 2).unwrap();

    let (code, stdout, _) = run(&["verify", "--data-dir", d]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("DAMAGED"), "{stdout}");
    let (code, stdout, _) = run(&["verify", "--repair", "--data-dir", d]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("OK:"), "{stdout}");
}

#[test]
fn verify_of_a_dir_without_a_log_says_so_once() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, stderr) = run(&["verify", "--data-dir", dir.path().to_str().unwrap()]);
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stderr.matches("no Keelson log in this directory").count(), 1, "{stderr}");
}

/// A store big enough that sled keeps older pages only in `db` (not in the
/// tail it replays on open): damage there shows only when a read reaches it.
fn write_big_store(dir: &Path) {
    {
        let log = SledEventLog::open(dir, OpenOptions { create: true, repair: false }).unwrap();
        for b in 0..200u64 {
            let batch: Vec<_> = (1..=100u64)
                .map(|i| {
                    let seq = b * 100 + i;
                    let payload = format!("payload-{seq:05}-MARKER").repeat(4);
                    NewRecord { key: Bytes::from(format!("key-{}", seq % 3)), payload: Bytes::from(payload) }
                })
                .collect();
            log.append(&batch).unwrap();
        }
    }
    settle(dir);
}

#[test]
fn a_flipped_bit_in_an_old_page_is_named_by_seq_and_repaired_by_rebuilding() {
    let dir = tempfile::tempdir().unwrap();
    write_big_store(dir.path());
    let d = dir.path().to_str().unwrap();
    let db = dir.path().join("sled/db");
    flip_every_copy(&db, b"payload-00025-MARK");

    // Exit 1 (damage), naming the seq range the damaged page holds.
    let (code, stdout, _) = run(&["verify", "--data-dir", d]);
    assert_eq!(code, Some(1), "{stdout}");
    let first = stdout.lines().find(|l| l.starts_with("DAMAGED")).unwrap_or_else(|| panic!("{stdout}"));
    assert!(first.contains("cannot be read") && first.contains("seqs "), "{stdout}");
    let range = first.split("seqs ").nth(1).unwrap().split_whitespace().next().unwrap();
    let (lo, hi) = range.split_once("..=").unwrap();
    let (lo, hi): (u64, u64) = (lo.parse().unwrap(), hi.parse().unwrap());
    assert!(lo <= 25 && 25 <= hi, "{range} does not hold the damaged record 25");

    // Repair keeps every record it can read; only that page's seqs are lost.
    let (code, stdout, _) = run(&["verify", "--repair", "--data-dir", d]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains(&format!("lost seq ranges [({lo}, {hi})]")), "{stdout}");
    assert!(stdout.contains("set aside to") && stdout.contains("OK:"), "{stdout}");
    let log = SledEventLog::open(dir.path(), OpenOptions::default()).unwrap();
    let mut events = 0;
    for rec in log.read_from(1) {
        let rec = rec.unwrap();
        if (lo..=hi).contains(&rec.seq) {
            assert_eq!(rec.kind, keelson_storage::RecordKind::Lost);
        } else {
            assert_eq!(rec.payload.as_ref(), format!("payload-{:05}-MARKER", rec.seq).repeat(4).as_bytes());
            events += 1;
        }
    }
    assert_eq!(events, 20_000 - (hi - lo + 1));
    assert_eq!(log.last_seq(), 20_000);
}

/// A hub that starts on a damaged log (the damage lies before its checkpoint)
/// runs degraded: reads that reach the damage explain it, /readyz and
/// /v1/storage show it.
#[test]
fn a_hub_on_a_damaged_log_shows_the_damage_instead_of_bare_500s() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let token = dir.path().join("token");
    std::fs::write(&token, "t0ken").unwrap();
    let args = ["--api-token-file", token.to_str().unwrap()];
    let hub = support::Serve::start(&data, &args);
    hub.wait_for("/readyz", "ready", |s, _| s == 200);
    for name in ["a", "b", "c"] {
        let body = format!(
            r#"{{"apiVersion":"networking.istio.io/v1","kind":"VirtualService","metadata":{{"name":"{name}"}},"spec":{{"hosts":["{name}"]}}}}"#
        );
        let (status, v) =
            hub.put(&format!("/v1/resources/networking.istio.io/VirtualService/default/{name}"), "t0ken", &body);
        assert_eq!(status, 200, "{v}");
    }
    let _ = hub.sigterm(); // writes the final checkpoint
    // Flip a bit in the first record's frame, through sled, as a bad disk would.
    {
        let end = Instant::now() + Duration::from_secs(10);
        let db = loop {
            match sled::open(data.join("sled")) {
                Ok(db) => break db,
                Err(_) if Instant::now() < end => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => panic!("{e}"),
            }
        };
        let t = db.open_tree("log").unwrap();
        let key = [&[b'L'][..], &1u64.to_be_bytes()].concat();
        let mut v = t.get(&key).unwrap().unwrap().to_vec();
        let last = v.len() - 1;
        v[last] ^= 0x01;
        t.insert(key, v).unwrap();
        db.flush().unwrap();
    }
    let end = Instant::now() + Duration::from_secs(10);
    while matches!(SledEventLog::open(&data, OpenOptions::default()), Err(StorageError::Locked { .. })) {
        assert!(Instant::now() < end, "the store stayed locked");
        std::thread::sleep(Duration::from_millis(20));
    }

    let hub = support::Serve::start(&data, &args);
    hub.wait_for("/readyz", "ready", |s, _| s == 200);
    let (status, v) = hub.get("/v1/log?from=1");
    assert_eq!(status, 500, "{v}");
    assert!(v["error"].as_str().unwrap().contains("record 1 is damaged"), "{v}");
    assert!(v["hint"].as_str().unwrap().contains("verify --repair"), "{v}");
    let (status, v) = hub.get("/readyz");
    assert_eq!((status, v["degraded"].as_bool()), (200, Some(true)), "{v}");
    assert!(v["storage_damage"].as_str().unwrap().contains("record 1"), "{v}");
    let (status, v) = hub.get("/v1/storage");
    assert_eq!(status, 200);
    assert!(v["damage"].as_str().unwrap().contains("record 1"), "{v}");
    support::wait_until("the damage logged at ERROR", support::DEADLINE, |_| {
        let log = hub.log.lock().unwrap();
        log.lines().any(|l| l.contains("ERROR") && l.contains("the event log is damaged")).then_some(())
    });
    let _ = hub.sigterm();
}
