//! Behaviour of the sled event log through its public interface.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use keelson_storage::{EventLog, NewRecord, OpenOptions, RecordKind, Retention, SledEventLog, StorageError};

fn open(dir: &std::path::Path) -> SledEventLog {
    SledEventLog::open(dir, OpenOptions { create: true, repair: false }).unwrap()
}

fn rec(key: &str, payload: &str) -> NewRecord {
    NewRecord { key: Bytes::copy_from_slice(key.as_bytes()), payload: Bytes::copy_from_slice(payload.as_bytes()) }
}

fn payloads(it: impl Iterator<Item = keelson_storage::Result<keelson_storage::Record>>) -> Vec<String> {
    it.map(|r| String::from_utf8(r.unwrap().payload.to_vec()).unwrap()).collect()
}

#[test]
fn seqs_start_at_one_are_contiguous_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open(dir.path());
        assert_eq!(log.last_seq(), 0);
        let r = log.append(&[rec("a", "1"), rec("b", "2")]).unwrap();
        assert_eq!((r.first, r.last), (1, 2));
        let r = log.append(&[rec("a", "3")]).unwrap();
        assert_eq!((r.first, r.last), (3, 3));
        assert!(log.append(&[]).unwrap().is_empty());
    }
    let log = open(dir.path());
    assert_eq!(log.last_seq(), 3);
    assert_eq!(log.append(&[rec("", "4")]).unwrap().first, 4);
    assert_eq!(payloads(log.read_from(1)), ["1", "2", "3", "4"]);
    assert_eq!(payloads(log.read_from(3)), ["3", "4"]);
}

#[test]
fn reads_by_key_are_newest_first_and_exact() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.append(&[rec("ab", "ab1"), rec("abc", "abc1"), rec("ab", "ab2")]).unwrap();
    log.append(&[rec("ab", "ab3")]).unwrap();
    assert_eq!(payloads(log.read_key(b"ab")), ["ab3", "ab2", "ab1"]);
    assert_eq!(payloads(log.read_key(b"abc")), ["abc1"]);
    assert_eq!(log.read_key(b"a").count(), 0);
}

#[test]
fn time_lookup_finds_the_first_seq_at_or_after() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.append(&[rec("a", "1")]).unwrap();
    std::thread::sleep(Duration::from_millis(5)); // distinct wall-clock times are the point here
    let between = SystemTime::now();
    std::thread::sleep(Duration::from_millis(5));
    log.append(&[rec("a", "2"), rec("b", "3")]).unwrap();
    assert_eq!(log.seq_at_or_after(SystemTime::UNIX_EPOCH).unwrap(), Some(1));
    assert_eq!(log.seq_at_or_after(between).unwrap(), Some(2));
    assert_eq!(log.seq_at_or_after(SystemTime::now() + Duration::from_secs(60)).unwrap(), None);
    let times: Vec<u64> = log.read_from(1).map(|r| r.unwrap().at_nanos).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]));
}

#[test]
fn concurrent_appenders_get_disjoint_contiguous_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let log = std::sync::Arc::new(open(dir.path()));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                (0..50)
                    .map(|i| log.append(&[rec(&format!("k{t}"), &format!("{t}-{i}"))]).unwrap().first)
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut seqs: Vec<u64> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    seqs.sort();
    assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
    assert!(log.verify().unwrap().is_ok());
}

#[test]
fn checkpoints_round_trip_are_pruned_and_may_not_run_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.append(&(0..10).map(|i| rec("k", &i.to_string())).collect::<Vec<_>>()).unwrap();
    assert!(matches!(log.write_checkpoint(11, 1, b"x"), Err(StorageError::CheckpointAhead { seq: 11, last: 10 })));
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect(); // spans several chunks
    for seq in 1..=5 {
        log.write_checkpoint(seq, 7, &big[..big.len() - seq as usize]).unwrap();
    }
    let cp = log.checkpoint_at_or_before(u64::MAX).unwrap().unwrap();
    assert_eq!((cp.seq, cp.format), (5, 7));
    assert_eq!(cp.blob, big[..big.len() - 5]);
    assert_eq!(log.checkpoint_at_or_before(4).unwrap().unwrap().seq, 4);
    // Only the newest three are kept.
    assert!(log.checkpoint_at_or_before(2).unwrap().is_none());
    assert_eq!(log.verify().unwrap().checkpoints, vec![3, 4, 5]);
}

#[test]
fn retention_by_versions_keeps_newest_and_respects_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    for i in 1..=6 {
        log.append(&[rec("busy", &format!("v{i}")), rec("quiet", &format!("q{i}"))]).unwrap();
    }
    // Nothing is removed without a checkpoint to stand on.
    let policy = Retention { max_versions_per_key: Some(2), ..Default::default() };
    assert_eq!(log.compact(&policy, SystemTime::now()).unwrap().compacted_versions, 0);
    log.write_checkpoint(8, 1, b"state@8").unwrap(); // covers busy v1..v4 and quiet q1..q4
    let report = log.compact(&policy, SystemTime::now()).unwrap();
    assert_eq!(report.horizon, 8);
    // busy: 6 versions, keep 2 -> v1..v4 eligible, all <= 8. Same for quiet.
    assert_eq!(report.compacted_versions, 8);
    assert_eq!(payloads(log.read_key(b"busy")), ["v6", "v5"]);
    let kinds: Vec<RecordKind> = log.read_from(1).map(|r| r.unwrap().kind).collect();
    assert_eq!(kinds.iter().filter(|k| **k == RecordKind::Compacted).count(), 8);
    assert_eq!(kinds.len(), 12, "slots stay so seqs stay contiguous");
    assert!(log.verify().unwrap().is_ok());
}

#[test]
fn retention_by_age_removes_a_prefix_up_to_the_checkpoint_only() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open(dir.path());
        for i in 1..=10 {
            log.append(&[rec("k", &i.to_string())]).unwrap();
        }
        log.write_checkpoint(6, 1, b"state@6").unwrap();
        let policy = Retention { max_age: Some(Duration::from_secs(3600)), ..Default::default() };
        // "Now" two hours ahead: every record is too old, but only 1..=6 may go.
        let report = log.compact(&policy, SystemTime::now() + Duration::from_secs(7200)).unwrap();
        assert_eq!((report.removed_by_age, report.first_seq), (6, 7));
        assert_eq!(payloads(log.read_from(1)), ["7", "8", "9", "10"]);
        assert_eq!(payloads(log.read_key(b"k")), ["10", "9", "8", "7"]);
    }
    let log = open(dir.path());
    assert_eq!((log.first_seq(), log.last_seq()), (7, 10));
    // Time lookup starts at the low-water mark.
    assert_eq!(log.seq_at_or_after(SystemTime::UNIX_EPOCH).unwrap(), Some(7));
    assert!(log.verify().unwrap().is_ok(), "{:?}", log.verify().unwrap().damage);
    assert_eq!(log.append(&[rec("k", "11")]).unwrap().first, 11);
}

#[test]
fn a_file_in_place_of_the_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    std::fs::write(&path, b"not a dir").unwrap();
    let err = SledEventLog::open(&path, OpenOptions { create: true, repair: false }).err().unwrap();
    assert!(err.to_string().contains("not a directory"), "{err}");
}

#[test]
fn a_second_opener_is_told_the_store_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let _first = open(dir.path());
    let err = SledEventLog::open(dir.path(), OpenOptions::default()).err().unwrap();
    assert!(matches!(err, StorageError::Locked { .. }), "{err}");
}

#[test]
fn opening_without_create_refuses_an_empty_directory() {
    let dir = tempfile::tempdir().unwrap();
    let err = SledEventLog::open(dir.path(), OpenOptions::default()).err().unwrap();
    assert!(err.to_string().contains("no Keelson log"), "{err}");
}

#[test]
fn a_batch_larger_than_one_engine_write_is_contiguous_indexed_and_durable() {
    // Large batches reach sled in parts (sled_log.rs, SLED_BATCH_RECORDS);
    // to a reader they are one contiguous, fully indexed range.
    let dir = tempfile::tempdir().unwrap();
    let n = 3_000;
    {
        let log = open(dir.path());
        log.append(&[rec("first", "0")]).unwrap();
        let batch: Vec<NewRecord> = (0..n).map(|i| rec(&format!("k{}", i % 7), &i.to_string())).collect();
        let r = log.append(&batch).unwrap();
        assert_eq!((r.first, r.last), (2, n as u64 + 1));
        assert_eq!(log.last_seq(), n as u64 + 1);
    }
    let log = open(dir.path());
    let all = payloads(log.read_from(2));
    assert_eq!(all, (0..n).map(|i| i.to_string()).collect::<Vec<_>>());
    assert_eq!(log.read_key(b"k3").count(), (0..n).filter(|i| i % 7 == 3).count());
    assert_eq!(log.append(&[rec("next", "x")]).unwrap().first, n as u64 + 2);
}
