//! A full disk and a read-only data dir: clear errors, non-zero exits, no
//! panics, and nothing acknowledged is lost.
//!
//! Uses real filesystems: a small tmpfs that fills up (ENOSPC) and a
//! read-only bind mount (EROFS). Mounting needs root, which the test machines
//! and CI have.

use std::path::{Path, PathBuf};
use std::process::Command;

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
