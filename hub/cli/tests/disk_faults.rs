//! A full disk and a read-only data dir: clear errors, non-zero exits, no
//! panics, and nothing acknowledged is lost.
//!
//! Uses real filesystems: a small tmpfs that fills up (ENOSPC) and a
//! read-only bind mount (EROFS). Mounting needs root, which the test machines
//! and CI have.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use keelson_storage::{EventLog, NewRecord, OpenOptions, SledEventLog, StorageError};

struct Tmpfs {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    /// A read-only bind mount of `src`. Changing only the bind's flags (not the
    /// filesystem's) works even while sled's threads still hold files open.
    fn bind_read_only(src: &Path) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ro");
        std::fs::create_dir(&path).unwrap();
        let run = |args: &[&str]| {
            let out = Command::new("mount").args(args).arg(&path).output().unwrap();
            assert!(out.status.success(), "mount {args:?} needs root: {}", String::from_utf8_lossy(&out.stderr));
        };
        run(&["--bind", src.to_str().unwrap()]);
        run(&["-o", "remount,bind,ro"]);
        Tmpfs { path, _dir: dir }
    }

    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mnt");
        std::fs::create_dir(&path).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "these tests mount a tmpfs and need root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { path, _dir: dir }
    }

    fn remount(&self, opts: &str) {
        let out = Command::new("mount").args(["-o", &format!("remount,{opts}")]).arg(&self.path).output().unwrap();
        assert!(out.status.success(), "remount {opts}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn keelson(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_keelson")).args(args).output().unwrap()
}

fn payload(seq_hint: u64) -> Bytes {
    Bytes::from(format!("{seq_hint:08}").repeat(512)) // 4 KiB
}

#[test]
fn a_full_disk_fails_appends_cleanly_and_keeps_every_acknowledged_record() {
    let fs = Tmpfs::mount("16m");
    let data = fs.path.join("data");
    let mut acked = Vec::new();
    let err = {
        let log = SledEventLog::open(&data, OpenOptions { create: true, repair: false }).unwrap();
        let mut n = 0u64;
        loop {
            assert!(n < 100_000, "16 MiB never filled up");
            let batch: Vec<NewRecord> = (0..8)
                .map(|i| NewRecord { key: Bytes::from(format!("k{}", i % 3)), payload: payload(n + i) })
                .collect();
            match log.append(&batch) {
                Ok(r) => acked.push((r.first, n)),
                Err(e) => break e,
            }
            n += 8;
        }
    };
    assert!(matches!(err, StorageError::NoSpace { .. }), "expected NoSpace, got: {err}");
    assert!(err.to_string().contains("no space left"), "{err}");
    assert!(!acked.is_empty());

    // With the disk still full, the CLI says so and exits non-zero.
    let fresh = fs.path.join("another");
    let out = keelson(&["serve", "--data-dir", fresh.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no space left"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    // Free space: every acknowledged record is there, intact.
    fs.remount("size=64m");
    let log = SledEventLog::open(&data, OpenOptions::default()).unwrap();
    let report = log.verify().unwrap();
    assert!(report.is_ok(), "{:?}", report.damage);
    for (first, hint) in &acked {
        for i in 0..8 {
            let rec = log.read_from(first + i).next().unwrap().unwrap();
            assert_eq!(rec.seq, first + i);
            assert_eq!(rec.payload, payload(hint + i));
        }
    }
    // And the log takes appends again.
    log.append(&[NewRecord { key: Bytes::new(), payload: payload(0) }]).unwrap();
}

fn write_small_store(dir: &Path) {
    let log = SledEventLog::open(dir, OpenOptions { create: true, repair: false }).unwrap();
    log.append(&[NewRecord { key: Bytes::from_static(b"k"), payload: payload(1) }]).unwrap();
}

#[test]
fn a_read_only_data_dir_is_a_clear_error() {
    let src = tempfile::tempdir().unwrap();
    write_small_store(&src.path().join("data"));
    let fs = Tmpfs::bind_read_only(src.path());
    let data = fs.path.join("data");
    let d = data.to_str().unwrap();
    for args in [vec!["serve", "--data-dir", d], vec!["verify", "--data-dir", d], vec!["log", "--data-dir", d]] {
        let out = keelson(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("read-only"), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    // A new data dir on a read-only filesystem: same.
    let out = keelson(&["serve", "--data-dir", fs.path.join("new").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("read-only"));
}

const TOKEN: &str = "t0ken";

/// A VirtualService of about 40 KiB, so a small tmpfs fills in a few hundred PUTs.
fn big_virtual_service(name: &str) -> String {
    let hosts: Vec<String> = (0..2000).map(|i| format!("\"h{i}.{name}.example\"")).collect();
    format!(
        r#"{{"apiVersion":"networking.istio.io/v1","kind":"VirtualService","metadata":{{"name":"{name}"}},"spec":{{"hosts":[{}]}}}}"#,
        hosts.join(",")
    )
}

fn vs_path(name: &str) -> String {
    format!("/v1/resources/networking.istio.io/VirtualService/default/{name}")
}

/// Starts a hub with the push API on `data` and PUTs big objects until one
/// answers 503 (the disk is full); returns the hub and the names acknowledged.
fn fill_through_the_api(data: &Path, token_file: &Path) -> (support::Serve, Vec<String>) {
    let hub = support::Serve::start(data, &["--api-token-file", token_file.to_str().unwrap()]);
    hub.wait_for("/readyz", "the hub to be ready", |status, _| status == 200);
    let mut acked = Vec::new();
    for i in 0..5_000 {
        let name = format!("vs{i:05}");
        let (status, v) = hub.put(&vs_path(&name), TOKEN, &big_virtual_service(&name));
        match status {
            200 => acked.push(name),
            503 => {
                let error = v["error"].as_str().unwrap_or_default();
                assert!(error.contains("no space left") || error.contains("storage failed"), "{v}");
                return (hub, acked);
            }
            other => panic!("PUT {name}: {other} {v}"),
        }
    }
    panic!("the tmpfs never filled up");
}

fn wait_exit(hub: &mut support::Serve, within: Duration) -> std::process::ExitStatus {
    let end = Instant::now() + within;
    loop {
        if let Some(status) = hub.child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < end, "the hub did not exit within {within:?}; log:\n{}", hub.log.lock().unwrap());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_hub_whose_disk_filled_reports_it_exits_3_and_a_restart_serves_every_acknowledged_write() {
    let fs = Tmpfs::mount("8m");
    let data = fs.path.join("data");
    let outside = tempfile::tempdir().unwrap();
    let token_file = outside.path().join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let (mut hub, acked) = fill_through_the_api(&data, &token_file);
    assert!(!acked.is_empty());

    // Storage trouble shows: later writes fail fast, /readyz is 503 with the
    // reason, /v1/storage names it, and it is logged at ERROR.
    let started = Instant::now();
    let (status, v) = hub.put(&vs_path("late"), TOKEN, &big_virtual_service("late"));
    assert_eq!(status, 503, "{v}");
    assert!(v["error"].as_str().unwrap().contains("storage failed"), "{v}");
    assert!(started.elapsed() < Duration::from_secs(2), "a write after the failure did not fail fast");
    let (status, v) = hub.get("/readyz");
    assert_eq!(status, 503, "{v}");
    assert!(v["error"].as_str().unwrap().contains("storage failed"), "{v}");
    let (status, v) = hub.get("/v1/storage");
    assert_eq!((status, v["ok"].as_bool()), (200, Some(false)), "{v}");
    support::wait_until("the failure logged at ERROR", support::DEADLINE, |_| {
        let log = hub.log.lock().unwrap();
        log.lines().any(|l| l.contains("ERROR") && l.contains("storage failed")).then_some(())
    });

    // Free space: the hub does not try the wedged engine again; it exits 3
    // after its grace so the supervisor restarts it.
    fs.remount("size=64m");
    let status = wait_exit(&mut hub, Duration::from_secs(20));
    assert_eq!(status.code(), Some(3), "log:\n{}", hub.log.lock().unwrap());
    let log = hub.log.lock().unwrap().clone();
    assert!(log.contains("exiting with code 3"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    drop(hub);

    // A restart on the freed disk serves everything acknowledged and writes again.
    let hub = support::Serve::start(&data, &["--api-token-file", token_file.to_str().unwrap()]);
    let snapshot = hub.wait_for("/debug/snapshot?resources=1", "the restarted hub's snapshot", |s, _| s == 200);
    let served: std::collections::HashSet<String> = snapshot["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["key"].as_str().map(str::to_string))
        .collect();
    for name in &acked {
        assert!(served.iter().any(|k| k.ends_with(&format!("/default/{name}"))), "{name} was acknowledged but is gone");
    }
    let (status, v) = hub.put(&vs_path("after"), TOKEN, &big_virtual_service("after"));
    assert_eq!(status, 200, "{v}");
    assert_eq!(hub.get("/readyz").0, 200);
    hub.sigterm();
}

#[test]
fn sigterm_ends_a_hub_whose_storage_is_stuck_within_the_grace_period() {
    let fs = Tmpfs::mount("8m");
    let data = fs.path.join("data");
    let outside = tempfile::tempdir().unwrap();
    let token_file = outside.path().join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let (mut hub, _) = fill_through_the_api(&data, &token_file);
    // Space comes back, but the engine is wedged; shutdown's final
    // checkpoint and flush must not wait on it.
    fs.remount("size=64m");
    let started = Instant::now();
    let status = hub.sigterm_within(Duration::from_secs(15));
    let log = hub.log.lock().unwrap().clone();
    let status = status.unwrap_or_else(|| panic!("SIGTERM did not end the hub within 15 s; log:\n{log}"));
    // Exit 3: storage failed, so what was not acknowledged was not flushed.
    assert_eq!(status.code(), Some(3), "log:\n{log}");
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(log.contains("SIGTERM"), "{log}");
}
